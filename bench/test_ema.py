"""Teacher EMA: FlatEMA vs torch._foreach_lerp_ vs the per-tensor reference loop, with a plain copy of
the same flat buffer as the memory-traffic yardstick (and, for comparison, a single lerp_ over FlatEMA's
buffers: what the torch backend would cost if it gave up bitwise equality with the reference).

Parameter set with realistic shapes: CUDA: ViT-S/8 + DINO head (Linear 384->2048->2048->256, weight-normed
Linear 256->65536), about 44M parameters. CPU: a 6-block ViT-S/16 without head (about 11M) so that a smoke
run stays quick. bytes_moved: the EMA reads student and teacher and writes the teacher (3N elements), the
copy reads and writes once (2N). Goals (DESIGN.md): CPU >= 1.5x the loop and <= 2x the copy's time;
GPU >= 80% of the HBM floor and >= 10x the loop.
"""

import copy

import pytest
import timm
import torch
from fastdino.kernels import FlatEMA, reference_ema_update
from torch import nn

from bench.utils import devices, record, sync

MOMENTUM = 0.996


def _dino_head(in_dim=384, hidden=2048, bottleneck=256, out_dim=65536) -> nn.Module:
    last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
    last.parametrizations.weight.original0.requires_grad = False  # norm_last_layer=True
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, bottleneck), last)


def _make_model(device: str) -> nn.Module:
    if device == "cuda":
        backbone = timm.create_model("vit_small_patch8_224", num_classes=0)
        return nn.ModuleDict(dict(backbone=backbone, head=_dino_head())).to(device)
    return timm.create_model("vit_small_patch16_224", num_classes=0, depth=6)


_MODELS: dict[str, nn.Module] = {}


def _pair(device: str) -> tuple[nn.Module, nn.Module]:
    """A fresh (student, teacher) pair; the model is built once per device and copied."""
    if device not in _MODELS:
        torch.manual_seed(0)
        _MODELS[device] = _make_model(device)
    student = copy.deepcopy(_MODELS[device])
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def _label(device: str, n: int) -> str:
    model = "vit_s8+dino_head" if device == "cuda" else "vit_s16_depth6"
    return f"ema {device} {model} {n / 1e6:.1f}M params fp32"


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["fastdino", "flat_lerp", "foreach_lerp", "reference", "copy"])
def test_ema(benchmark, device, impl):
    student, teacher = _pair(device)
    n = sum(p.numel() for p in student.parameters())
    itemsize = 4
    group = _label(device, n)

    if impl == "fastdino":
        ema = FlatEMA(student, teacher)
        fn = lambda: ema.update(MOMENTUM)
    elif impl == "flat_lerp":  # one lerp_ per flat buffer: a single pass, but not bitwise equal to the reference
        ema = FlatEMA(student, teacher)
        fn = lambda: [g.teacher.lerp_(g.student, 1 - MOMENTUM) for g in ema.groups]
    elif impl == "foreach_lerp":
        s_params, t_params = list(student.parameters()), list(teacher.parameters())
        fn = lambda: torch._foreach_lerp_(t_params, s_params, 1 - MOMENTUM)
    elif impl == "reference":
        fn = lambda: reference_ema_update(student, teacher, MOMENTUM)
    else:  # the yardstick: one copy of a flat buffer of the same size
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)

    def run():
        fn()
        sync(device)

    record(benchmark, group=group, impl=impl, bytes_moved=(2 if impl == "copy" else 3) * n * itemsize, device=device)
    run()  # warm-up: Triton compile, first-touch page faults
    benchmark(run)
