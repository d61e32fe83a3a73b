"""DINOv2's Sinkhorn-Knopp teacher targets: fastdino's centre form (kernels/sinkhorn.py: the centre, then the
softmax the fused loss would compute) against DINOv2's loop as written (`reference_sinkhorn_knopp`), same run.

Shapes: the teacher's CLS rows of DINO-MC (2 global views x B, K = 65536; B = 64 on CUDA, 32 on CPU) and the
masked patch rows of the `tiny` preset's iBOT loss (about 150 rows a rank, K = 4096). Logits uniform in [-1, 1], the
range of DINO's head. Both produce the same [rows, K] targets (tests/test_sinkhorn.py); in training fastdino hands
only the centre to the fused loss, which computes that softmax anyway: "fastdino-centre" times the centre alone.
"""

import pytest
import torch
import torch.nn.functional as F
from fastdino.kernels.reference import reference_sinkhorn_knopp
from fastdino.kernels.sinkhorn import sinkhorn_knopp_centre

from bench.utils import devices, record, sync

SHAPES = {"cls": lambda device: (2 * (64 if device == "cuda" else 32), 65536), "patches": lambda device: (150, 4096)}


def _cases():
    for device in devices():
        for name in SHAPES:
            for impl in ("fastdino", "fastdino-centre", "reference"):
                yield pytest.param(device, name, impl, id=f"{device}-{name}-{impl}")


@pytest.mark.parametrize("device,name,impl", list(_cases()))
def test_sinkhorn_knopp_targets(benchmark, device, name, impl):
    rows, k = SHAPES[name](device)
    teacher = (torch.rand(rows, k, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    temp = 0.04

    def fastdino():
        centre = sinkhorn_knopp_centre(teacher, temp)
        F.softmax((teacher - centre) / temp, dim=-1)
        sync(device)

    def centre_only():  # what a training step adds: the fused loss computes the softmax anyway
        sinkhorn_knopp_centre(teacher, temp)
        sync(device)

    def reference():
        reference_sinkhorn_knopp(teacher, temp)
        sync(device)

    record(benchmark, group=f"sinkhorn_knopp targets {device} {name} rows={rows} K={k} fp32", impl=impl,
           bytes_moved=2 * teacher.numel() * 4, device=device)  # floor: read the logits, write the targets
    call = {"fastdino": fastdino, "fastdino-centre": centre_only, "reference": reference}[impl]
    benchmark.pedantic(call, rounds=10, warmup_rounds=1)
