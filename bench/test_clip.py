"""Per-parameter gradient clipping (DINO's clip_gradients, clip 3.0): fastdino's form against the original loop.

fastdino:      fastdino.train.clip_gradients(per_param): one multi-tensor norm, then on CUDA the "spread" multiply,
               on CPU the "foreach_0dim" one (fastdino/multi_tensor.py), no host sync either way;
spread:        the multiply by the coefficients spread over same-shape buffers: one multi-tensor multiply on CUDA;
foreach_0dim:  `_foreach_mul_(grads, list(coefs.unbind()))` (fastdino's form before): on CUDA a list of 0-dim tensors
               is not torch's multi-tensor fast path, so it runs one multiply kernel per tensor;
reference:     DINO's utils.clip_gradients: per tensor a norm, a host-side `if coef < 1` (a sync) and a multiply.
Gradients of ViT-S/8 + DINO head (K=65536, ~44M parameters, ~150 tensors) on CUDA, ViT-Ti/16 + a K=4096 head on
CPU; each round starts from the same gradients (restored outside the timing). On CPU every foreach op is a loop
over the tensors, so only the CUDA rows say anything about the fast path.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from bench.utils import devices, record, sync
from fastdino.models import DINOHead
from fastdino.multi_tensor import spread_mul_
from fastdino.train import clip_gradients

CLIP = 3.0


def _grads(device: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    if device == "cuda":
        model = nn.ModuleList([timm.create_model("vit_small_patch8_224", num_classes=0), DINOHead(384)])
    else:
        model = nn.ModuleList([timm.create_model("vit_tiny_patch16_224", num_classes=0),
                               DINOHead(192, out_dim=4096, hidden_dim=512, bottleneck_dim=128)])
    params = [p for p in model.to(device).parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 0.05  # norms from ~1 (biases) to ~300 (large matrices): both sides of 3.0
    return params


def _foreach_0dim(params):
    grads = [p.grad for p in params]
    norms = torch.stack(torch._foreach_norm(grads))
    torch._foreach_mul_(grads, list((CLIP / (norms + 1e-6)).clamp_(max=1.0).unbind()))


def _spread(params):
    grads = [p.grad for p in params]
    norms = torch.stack(torch._foreach_norm(grads))
    spread_mul_(grads, (CLIP / (norms + 1e-6)).clamp_(max=1.0))


def _reference(params):
    for p in params:
        norm = p.grad.norm(2)
        coef = CLIP / (norm + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["fastdino", "spread", "foreach_0dim", "reference"])
def test_clip_per_param(benchmark, device, impl):
    params = _grads(device)
    saved = [p.grad.clone() for p in params]
    fn = {"fastdino": lambda: clip_gradients(params, CLIP, "per_param"), "spread": lambda: _spread(params),
          "foreach_0dim": lambda: _foreach_0dim(params), "reference": lambda: _reference(params)}[impl]

    def restore():
        torch._foreach_copy_([p.grad for p in params], saved)
        sync(device)
        return (), {}

    def run():
        fn()
        sync(device)

    n = sum(p.numel() for p in params)
    record(benchmark, group=f"clip per-param {device} {len(params)} tensors {n / 1e6:.1f}M params fp32", impl=impl,
           bytes_moved=3 * n * 4, device=device)  # floor: read for the norms, read and write for the multiply
    restore()
    run()  # warm-up
    benchmark.pedantic(run, setup=restore, rounds=20 if device == "cuda" else 5, warmup_rounds=1)
