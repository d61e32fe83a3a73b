"""Multi-tensor helpers that stay on torch's foreach fast path (one kernel for many tensors on CUDA)."""

from __future__ import annotations

import torch


def scale_each_(tensors: list[torch.Tensor], coefs: torch.Tensor) -> None:
    """tensors[i] *= coefs[i] for a device tensor of coefficients, with no host sync and on torch's multi-tensor fast
    path. `_foreach_mul_(tensors, list(coefs.unbind()))` is not on it: torch's CUDA foreach ops take a tensor list as
    the second operand only when its tensors have the sizes and strides of the first (ATen ForeachUtils.h,
    can_use_fast_route), so a list of 0-dim tensors falls back to one kernel per tensor. Here each coefficient is
    spread over its tensor's elements (one repeat_interleave into a buffer the size of the gradients), and the
    multiply is one `_foreach_mul_` of same-shape contiguous pairs: a few kernels instead of one per parameter."""
    numels = [t.numel() for t in tensors]
    if any(not t.is_contiguous() for t in tensors):  # autograd's gradients are contiguous like their parameters
        torch._foreach_mul_(tensors, list(coefs.unbind()))
        return
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
