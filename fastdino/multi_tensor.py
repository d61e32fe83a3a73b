"""Multi-tensor helpers that stay on torch's foreach fast path (one kernel for many tensors on CUDA)."""

from __future__ import annotations

import torch


def scale_each_(tensors: list[torch.Tensor], coefs: torch.Tensor) -> None:
    """tensors[i] *= coefs[i] for a device tensor of coefficients (one per tensor), with no host sync. CUDA:
    `spread_mul_`, torch's multi-tensor fast path. Elsewhere torch's foreach ops are a loop over the tensors anyway,
    and multiplying each by its 0-dim coefficient moves the least memory (on 2 shared CPU cores the spread form was
    3-11x slower: bench/test_clip.py)."""
    if tensors[0].is_cuda and all(t.is_contiguous() for t in tensors):  # autograd's gradients are contiguous
        spread_mul_(tensors, coefs)
    else:
        torch._foreach_mul_(tensors, list(coefs.unbind()))


def spread_mul_(tensors: list[torch.Tensor], coefs: torch.Tensor) -> None:
    """scale_each_ on torch's CUDA multi-tensor fast path. `_foreach_mul_(tensors, list(coefs.unbind()))` is not on
    it: torch's CUDA foreach ops take a tensor list as the second operand only when its tensors have the sizes and
    strides of the first (ATen ForeachUtils.h, can_use_fast_route), so 0-dim coefficients fall back to one kernel
    per tensor. Here each coefficient is spread over its tensor's elements (one repeat_interleave into a buffer the
    size of the tensors), and the multiply is one `_foreach_mul_` of same-shape contiguous pairs: a few kernels
    instead of one per tensor, for one more write and read of that buffer. Tensors must be contiguous, one dtype."""
    numels = [t.numel() for t in tensors]
    per_element = coefs.to(tensors[0].dtype).repeat_interleave(_repeats(numels, coefs.device),
                                                                output_size=sum(numels))  # output_size: no sync
    torch._foreach_mul_(tensors, [c.view_as(t) for c, t in zip(per_element.split(numels), tensors, strict=True)])


_REPEATS: dict = {}


def _repeats(numels: list[int], device: torch.device) -> torch.Tensor:
    """numels as a device tensor, copied once per parameter set (a host-to-device copy per step would be wasted)."""
    key = (tuple(numels), device)
    if key not in _REPEATS:
        _REPEATS[key] = torch.tensor(numels, device=device)
    return _REPEATS[key]


def group_by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())
