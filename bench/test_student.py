"""Student forward+backward on DINO-MC views: the packed pass (fastdino) vs the per-size loop (reference).

CUDA: ViT-S/8 on the paper's views (2 x 224 + 184, 164, 144, 124, 104, 84), bf16 autocast, B = 8 and 64.
CPU: ViT-Tiny/16 on the same views at half size (2 x 112 + 92 ... 42: grids 7, 5, 5, 4, 3, 3, 2), B = 1 and 4,
so that one step takes a fraction of a second. Drop-path 0.1 as in DINO-MC; the head is left out (identical
in both paths). Goals (DESIGN.md): CUDA >= 1.5x at B=8, >= 1.2x at B=64; CPU >= 1x.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from bench.utils import devices, peak_memory_bytes, record, sync
from fastdino.models import create_backbone, reference_forward_views

DINO_MC_SIZES = [224, 224, 184, 164, 144, 124, 104, 84]
CASES = {
    "cuda": dict(arch="vit_small", patch_size=8, sizes=DINO_MC_SIZES, batches=(8, 64)),
    "cpu": dict(arch="vit_tiny", patch_size=16, sizes=[s // 2 for s in DINO_MC_SIZES], batches=(1, 4)),
}
PARAMS = [(device, batch) for device in devices() for batch in CASES[device]["batches"]]


@pytest.mark.parametrize("impl", ["fastdino", "reference"])
@pytest.mark.parametrize("device,batch", PARAMS, ids=[f"{d}-B{b}" for d, b in PARAMS])
def test_student_forward_backward(benchmark, device, batch, impl):
    case = CASES[device]
    torch.manual_seed(0)
    model = create_backbone(case["arch"], patch_size=case["patch_size"], drop_path_rate=0.1).to(device).train()
    views = [torch.randn(batch, 3, s, s, device=device) for s in case["sizes"]]
    forward = model.forward_views if impl == "fastdino" else lambda v: reference_forward_views(model, v)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            out = forward(views)
        out.float().sum().backward()
        sync(device)

    peak = None
    if not benchmark.disabled:  # a smoke run (--benchmark-disable) runs the step once, nothing more
        step()  # warm-up: kernel selection, cached position-embedding matrices, allocator
        peak = peak_memory_bytes(step, device)
    name = f"{case['arch']}/{case['patch_size']}"
    record(benchmark, group=f"student fwd+bwd {name} DINO-MC views B={batch} {device}", impl=impl, peak_mem=peak,
           images=batch, device=device)
    benchmark(step)
