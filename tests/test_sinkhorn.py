"""DINOv2's Sinkhorn-Knopp teacher targets (`loss.centering=sinkhorn_knopp`): the centre form
(kernels/sinkhorn.py) against DINOv2's loop (`reference_sinkhorn_knopp`), in the DINO loss (fused backends), in
iBOT's patch loss, across ranks, and in the training step (packed == reference)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from fastdino.kernels import DINOLoss, IBOTPatchLoss, reference_sinkhorn_knopp, sinkhorn_knopp_centre
from test_train import build, fixed_views, quiet_adam, scaled_config

from fastdino.config import ConfigError
from fastdino.models import sample_patch_masks
from fastdino.run_config import load_config


def centre_targets(teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    centre = sinkhorn_knopp_centre(teacher, teacher_temp)
    return F.softmax((teacher.float() - centre) / teacher_temp, dim=-1)


# ---- the centre form ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,k", [(64, 4096), (6, 1271), (1, 5), (40, 7), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
def test_centre_gives_dinov2s_targets(rows, k, dtype, teacher_temp):
    g = torch.Generator().manual_seed(rows * k)
    teacher = (torch.randn(rows, k, generator=g) * 0.5).to(dtype)
    expected = reference_sinkhorn_knopp(teacher, teacher_temp)
    torch.testing.assert_close(centre_targets(teacher, teacher_temp), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_any_number_of_iterations(iterations):
    teacher = torch.randn(9, 33)
    centre = sinkhorn_knopp_centre(teacher, 0.05, n_iterations=iterations)
    torch.testing.assert_close(F.softmax((teacher - centre) / 0.05, -1),
                               reference_sinkhorn_knopp(teacher, 0.05, n_iterations=iterations), rtol=1e-4, atol=1e-6)


def test_targets_spread_over_the_prototypes():
    """What Sinkhorn-Knopp is for: every prototype gets a share of the batch's mass, where a plain sharpened
    softmax piles it on a few; each row stays a distribution. (Three iterations do not converge: measured here,
    the masses' coefficient of variation is 0.54 against the softmax's 1.20, the smallest 0.23 x the mean
    against ~1e-12.)"""
    teacher = torch.randn(256, 64) + torch.linspace(0, 2, 64)  # some prototypes favoured by every row
    targets = centre_targets(teacher, 0.04)
    torch.testing.assert_close(targets.sum(1), torch.ones(256))
    mass, plain = targets.sum(0), F.softmax(teacher / 0.04, -1).sum(0)
    assert mass.min() > 0.1 * mass.mean() and plain.min() < 1e-6 * plain.mean()
    assert mass.std() / mass.mean() < 0.5 * plain.std() / plain.mean()


def test_a_shift_per_prototype_changes_nothing_and_large_logits_stay_finite():
    """Sinkhorn-Knopp removes any factor per prototype, so exp(t / T) may be taken after each prototype's
    maximum is subtracted: logits of +-500 (DINOv2's own exp() would overflow) give finite targets, the same as
    for the shifted logits."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 50, generator=g)
    offset = torch.randn(50, generator=g) * 5
    torch.testing.assert_close(centre_targets(teacher + offset, 0.04), centre_targets(teacher, 0.04),
                               rtol=1e-4, atol=2e-5)  # fp32 rounding of logits / T ~ 100
    big = teacher * 500
    targets = centre_targets(big, 0.04)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets.sum(1), torch.ones(12))


def test_no_rows_gives_a_finite_centre():
    centre = sinkhorn_knopp_centre(torch.zeros(0, 8), 0.07)
    assert centre.shape == (1, 8) and torch.isfinite(centre).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="rows, K"):
        sinkhorn_knopp_centre(torch.zeros(2, 3, 4), 0.04)
    with pytest.raises(ValueError, match="teacher_temp"):
        sinkhorn_knopp_centre(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(8, 4, 0.04, 0.04, 0, 1, centering="sinkhorn")
    with pytest.raises(ValueError, match="centering"):
        IBOTPatchLoss(8, centering="centre")
    with pytest.raises(ConfigError, match="loss.centering"):
        load_config("tiny", overrides=["loss.centering=sk"])


# ---- in the losses --------------------------------------------------------------------------------------------


def dinov2_cls_loss(student: torch.Tensor, targets: torch.Tensor, ncrops: int, n_global: int,
                    student_temp: float = 0.1) -> torch.Tensor:
    """DINO's pair loop over (teacher view g, student view v != g) with given targets (float64)."""
    s = (student.double() / student_temp).chunk(ncrops)
    t = targets.double().chunk(n_global)
    terms = [torch.sum(-t[g] * F.log_softmax(s[v], -1), -1).mean()
             for g in range(n_global) for v in range(ncrops) if v != g]
    return sum(terms) / len(terms)


LOSS_SHAPES = [(3, 4, 2, 401), (2, 5, 3, 127), (4, 2, 2, 33)]  # (B, ncrops, n_global, K): odd K, 3 teachers, no local


def _loss_cases():
    for backend in ("torch", "triton", "reference"):
        for shape in LOSS_SHAPES:
            for dtype in (torch.float32, torch.bfloat16):
                if backend == "triton" and dtype != torch.float32 and shape != LOSS_SHAPES[0]:
                    continue  # the Triton interpreter is slow: bf16 on one shape
                yield pytest.param(backend, *shape, dtype, id=f"{backend}-{shape}-{str(dtype)[6:]}")


@pytest.mark.parametrize("backend,batch,ncrops,n_global,k,dtype", list(_loss_cases()))
def test_dino_loss_with_sinkhorn_knopp_equals_the_loop(backend, batch, ncrops, n_global, k, dtype):
    g = torch.Generator().manual_seed(batch * k)
    student = torch.randn(ncrops * batch, k, generator=g).to(dtype)
    teacher = torch.randn(n_global * batch, k, generator=g).to(dtype)
    module = DINOLoss(k, ncrops, 0.04, 0.04, 0, 2, n_global=n_global, backend=backend, centering="sinkhorn_knopp")
    leaf = student.clone().requires_grad_()
    loss = module(leaf.clone(), teacher, 1)
    loss.backward()
    ref_leaf = student.double().clone().requires_grad_()
    ref = dinov2_cls_loss(ref_leaf, reference_sinkhorn_knopp(teacher, 0.04), ncrops, n_global)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    scale = ref_leaf.grad.abs().max()
    torch.testing.assert_close(leaf.grad.double() / scale, ref_leaf.grad / scale, rtol=0, atol=tol)
    assert not module.center.any()  # DINOv2: no running centre with Sinkhorn-Knopp


@pytest.mark.parametrize("n_global,batch,patches,k", [(2, 3, 16, 64), (1, 4, 9, 257)])
def test_patch_loss_with_sinkhorn_knopp_equals_the_loop(n_global, batch, patches, k):
    """DINOv2's iBOT patch loss: Sinkhorn-Knopp over the masked rows only, then the masked mean per crop."""
    g = torch.Generator().manual_seed(patches + k)
    n = n_global * batch
    masks = sample_patch_masks(n, patches, mask_prob=0.7, ratio=(0.2, 0.6), generator=g)
    masks[0] = False
    student = torch.randn(n, patches, k, generator=g)
    teacher = torch.randn(n, patches, k, generator=g)
    loss_fn = IBOTPatchLoss(k, centering="sinkhorn_knopp")
    rows = student[masks].clone().requires_grad_(True)
    loss = loss_fn(rows, teacher[masks], masks, teacher_temp=0.07, teacher_patch_mean=teacher.mean(1))
    loss.backward()
    targets = reference_sinkhorn_knopp(teacher[masks], 0.07).double()
    ref_rows = student[masks].double().clone().requires_grad_(True)
    per_patch = torch.sum(-targets * F.log_softmax(ref_rows / 0.1, -1), -1)
    weights = (1 / masks.sum(1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]  # DINOv2's masks_weight
    ref = (per_patch * weights).sum() / n
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows.grad.double(), ref_rows.grad, rtol=1e-4, atol=1e-7)
    assert not loss_fn.center.any()


# ---- across ranks ---------------------------------------------------------------------------------------------


def _distributed_worker(rank, world_size, init_file, result_file, teacher, splits):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        mine = teacher[splits[rank]:splits[rank + 1]]
        n_rows = len(teacher)  # all ranks' rows (iBOT passes the all-reduced count of masked patches)
        torch.save({"centre": sinkhorn_knopp_centre(mine, 0.04),
                    "reference": reference_sinkhorn_knopp(mine, 0.04, n_rows=n_rows)}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("splits", [[0, 5, 11], [0, 0, 7]], ids=["uneven", "one-rank-without-rows"])
def test_distributed_equals_one_process_with_all_rows(tmp_path, splits):
    teacher = torch.randn(splits[-1], 97) * 0.5  # DINOv2's exp(t / T) overflows fp32 beyond t / T ~ 88
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result"), teacher, splits),
             nprocs=2, join=True)
    whole = reference_sinkhorn_knopp(teacher, 0.04)
    for rank in range(2):
        result = torch.load(tmp_path / f"result.{rank}")
        rows = teacher[splits[rank]:splits[rank + 1]]
        # the same centre on every rank, and each rank's targets are its rows of the one-process targets
        torch.testing.assert_close(F.softmax((rows - result["centre"]) / 0.04, -1),
                                   whole[splits[rank]:splits[rank + 1]], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result["reference"], whole[splits[rank]:splits[rank + 1]], rtol=1e-4, atol=1e-6)


# ---- in the step ----------------------------------------------------------------------------------------------


def test_sinkhorn_knopp_step_equals_reference_step():
    """loss.centering=sinkhorn_knopp with iBOT and KoLeo: the packed student + fused loss + flat EMA == the
    one-view-at-a-time reference; neither running centre moves."""
    config = scaled_config("tiny", overrides=["loss.centering=sinkhorn_knopp"])
    assert config.loss.ibot_weight > 0 and config.loss.koleo_weight > 0
    views = fixed_views(config, batch=3)
    fast, ref = build(config), build(config, reference=True)
    for tr in (fast, ref):
        quiet_adam(tr)
    for epoch in (0, 1):
        losses = []
        for tr in (fast, ref):
            torch.manual_seed(20 + epoch)  # the masks' draws
            losses.append(tr.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch))
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    for name in ("student", "teacher"):
        fs, rs = getattr(fast, name).state_dict(), getattr(ref, name).state_dict()
        for key in rs:
            torch.testing.assert_close(fs[key], rs[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
    for tr in (fast, ref):
        assert not tr.dino_loss.center.any() and not tr.ibot_loss.center.any()
