"""What users would pick instead of fastdino, timed beside it in the same run at the same shapes and threads.

Peers (optional extra: `pip install -e ".[peers]"`; without it their rows are skipped with the reason):
- lightly (`lightly.loss.DINOLoss`, `lightly.models.utils.update_momentum`, and a hand-written lightly DINO step as
  in lightly's `examples/pytorch/dino.py`: the same ViT, `DINOProjectionHead`, one forward per view, `DINOLoss`,
  `update_momentum`, AdamW).
- DINO's own code (facebookresearch/dino `main_dino.py`, commit 04c0ad9): `DINOLoss.forward` (the pairwise loop
  plus `update_center`) and the EMA loop of `train_one_epoch` (`param_k.data.mul_(m).add_((1 - m) * param_q...)`).
  These are `fastdino.kernels.reference` (`reference_dino_loss` + `reference_center_update`, and
  `reference_ema_update`), so they are the `reference` rows of each group: every ratio printed is "x vs DINO's".

Groups (CPU; on CUDA the same shapes, fastdino on its Triton kernels):
- loss + centre update, fwd+bwd, B=32 (CUDA 64), 2 + 6 views, K=65536, fp32 logits in [-1, 1];
- teacher EMA of ViT-S/16 + DINO head (K=65536; 44M fp32 parameters);
- whole step of the `tiny` preset's model and views (ViT-Tiny/16, 2 x 64 + 48, 40, 32, 24 px, K=4096), batch 16,
  on prefetched views (the data pipeline is not in it): fastdino, fastdino's reference step (DINO's code paths),
  the lightly hand loop.
Whole training (pipeline, loop, logging) against lightly-train's DINO: bench/test_peers_train.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fastdino.kernels import DINOLoss, FlatEMA, reference_ema_update
from fastdino.kernels.reference import reference_center_update, reference_dino_loss
from torch import nn

from bench.test_ema import _dino_head
from bench.utils import devices, record, sync

VIEWS, N_GLOBAL, K = 8, 2, 65536
MOMENTUM = 0.996


def _lightly(module: str = "lightly"):
    """A lightly module, or a skip that says how to get it."""
    return pytest.importorskip(module, reason='peer benchmarks need the extra: pip install -e ".[peers]"')


# ---- loss + centre -------------------------------------------------------------------------------------------


class _DINOsLoss(nn.Module):
    """main_dino.py's DINOLoss: pairwise loop, then the centre EMA (both from kernels/reference.py)."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student, teacher, epoch):
        loss = reference_dino_loss(student, teacher, self.center, ncrops=VIEWS, n_global=N_GLOBAL)
        self.center = reference_center_update(self.center, teacher, 0.9)
        return loss


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["fastdino", "reference", "lightly"])
def test_peer_dino_loss(benchmark, device, impl):
    batch = 64 if device == "cuda" else 32
    gen = torch.Generator().manual_seed(0)
    base = (torch.rand(VIEWS * batch, K, generator=gen) * 2 - 1).to(device).requires_grad_()
    teacher = (torch.rand(N_GLOBAL * batch, K, generator=gen) * 2 - 1).to(device)
    if impl == "lightly":
        loss_module = _lightly("lightly.loss").DINOLoss(output_dim=K, warmup_teacher_temp_epochs=0).to(device)
        # lightly takes one tensor per view (it stacks them again inside)
        loss_fn = lambda s: loss_module(list(teacher.chunk(N_GLOBAL)), list(s.chunk(VIEWS)), epoch=0)
    elif impl == "reference":
        loss_module = _DINOsLoss(K).to(device)
        loss_fn = lambda s: loss_module(s, teacher, 0)
    else:
        # in place, as fastdino's trainer runs it (the default copies the logits first: docs/loss.md)
        loss_module = DINOLoss(K, VIEWS, 0.04, 0.04, 0, 1, n_global=N_GLOBAL, inplace=True).to(device)
        loss_fn = lambda s: loss_module(s, teacher, 0)

    def fresh_logits():
        return (base.clone(),), {}  # an intermediate result that owns its memory, like a head's output

    def step(student):
        torch.autograd.grad(loss_fn(student), student)
        sync(device)

    record(benchmark, group=f"peers: DINO loss + centre fwd+bwd {device} B={batch} 2+6 views K={K} fp32", impl=impl,
           device=device, threads=torch.get_num_threads())
    benchmark.pedantic(step, setup=fresh_logits, rounds=10 if device == "cuda" else 5, warmup_rounds=1)


# ---- teacher EMA ---------------------------------------------------------------------------------------------

_MODEL: dict[str, nn.Module] = {}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["fastdino", "reference", "lightly"])
def test_peer_ema(benchmark, device, impl):
    import timm

    if device not in _MODEL:
        torch.manual_seed(0)
        _MODEL[device] = nn.ModuleDict(dict(backbone=timm.create_model("vit_small_patch16_224", num_classes=0),
                                            head=_dino_head())).to(device)
    student = copy.deepcopy(_MODEL[device])
    teacher = copy.deepcopy(student).requires_grad_(False)
    n = sum(p.numel() for p in student.parameters())
    if impl == "fastdino":
        ema = FlatEMA(student, teacher)
        fn = lambda: ema.update(MOMENTUM)
    elif impl == "reference":
        fn = lambda: reference_ema_update(student, teacher, MOMENTUM)
    else:
        update_momentum = _lightly("lightly.models.utils").update_momentum
        fn = lambda: update_momentum(student, teacher, MOMENTUM)

    def run():
        fn()
        sync(device)

    record(benchmark, group=f"peers: teacher EMA {device} ViT-S/16 + DINO head {n / 1e6:.1f}M params fp32", impl=impl,
           bytes_moved=3 * n * 4, device=device, threads=torch.get_num_threads())
    run()  # warm-up: first-touch page faults, Triton compile
    benchmark(run)


# ---- whole step ----------------------------------------------------------------------------------------------


def _lightly_step(config, device: torch.device):
    """The step a lightly user writes (lightly examples/pytorch/dino.py), at the tiny preset's shapes."""
    _lightly()
    from lightly.loss import DINOLoss as LightlyDINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from fastdino.config import backbone_kwargs
    from fastdino.models import create_backbone

    m = config.model
    torch.manual_seed(0)
    # fastdino's ViT (timm's blocks; it floors 40 px to 2 x 2 patches where timm's ViT refuses sizes that are not
    # a multiple of the patch): the same model FLOPs, so the rows differ by the loop, loss, EMA and optimiser only
    backbone = create_backbone(**backbone_kwargs(m))
    head = DINOProjectionHead(backbone.embed_dim, m.hidden_dim, m.bottleneck_dim, m.out_dim, freeze_last_layer=1)
    # lightly's example builds the teacher head anew (a weight_norm module cannot be deep-copied)
    teacher_head = DINOProjectionHead(backbone.embed_dim, m.hidden_dim, m.bottleneck_dim, m.out_dim)
    teacher_head.load_state_dict(head.state_dict())
    student = nn.Sequential(backbone, head).to(device)
    teacher = nn.Sequential(copy.deepcopy(backbone), teacher_head).to(device)
    deactivate_requires_grad(teacher)
    criterion = LightlyDINOLoss(output_dim=m.out_dim, warmup_teacher_temp_epochs=0).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def step(views, momentum, epoch):
        update_momentum(student, teacher, m=momentum)
        teacher_out = [teacher(v) for v in views[:2]]
        student_out = [student(v) for v in views]
        loss = criterion(teacher_out, student_out, epoch=epoch)
        loss.backward()
        head.cancel_last_layer_gradients(current_epoch=epoch)
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    return step


@pytest.mark.parametrize("impl", ["fastdino", "reference", "lightly"])
def test_peer_train_step(benchmark, impl):
    from fastdino.dataloading import AugmentationSpec

    from fastdino.run_config import load_config
    from fastdino.train import build_training

    device, batch = torch.device("cpu"), 16
    # DINO's loss alone (no KoLeo term): the same work as the lightly step
    config = load_config("tiny", overrides=["run.device=cpu", f"run.batch_size={batch}", "loss.koleo_weight=0"])
    spec = AugmentationSpec.from_dict(config.augment)
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, s, s, generator=gen) for s in spec.view_sizes]
    if impl == "lightly":
        lightly_step = _lightly_step(config, device)
        fn = lambda: lightly_step(views, MOMENTUM, 1)
    else:
        torch.manual_seed(0)
        tr = build_training(config, device, n_global=spec.n_global, n_views=spec.n_views,
                            reference=impl == "reference")
        fn = lambda: tr.step(views, lr=1e-4, wd=0.04, momentum=MOMENTUM, epoch=1)
    record(benchmark, group=f"peers: train step tiny B={batch} cpu, prefetched views", impl=impl, images=batch,
           device=device, threads=torch.get_num_threads())
    fn()  # warm-up: allocator, first Adam step
    benchmark(fn)
