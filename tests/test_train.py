"""The training step and loop on CPU with tiny inputs: every preset's shape, fastdino vs the reference step,
resume equality, 2-process gloo vs 1 process, and the non-finite-loss stop."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from fastdino.dataloading import AugmentationSpec, make_synthetic_dataset

from fastdino import checkpoint as ckpt_io
from fastdino.config import PRESETS, Config
from fastdino.distributed import SINGLE_PROCESS, DistInfo
from fastdino.run_config import load_config, validate
from fastdino.train import NonFiniteLossError, build_schedules, build_training, param_groups, train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ViTs on a shared 2-core machine: a second intra-op thread only adds hand-off waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scaled_config(preset: str, *, global_patches: int = 4, overrides: list[str] | None = None) -> Config:
    """A preset's shape (view counts, relative crop sizes, patch size, loss and optimiser settings) on a
    ViT-Tiny with `global_patches` x `global_patches` patch global crops and a small head."""
    c = load_config(preset, overrides=["run.device=cpu", *(overrides or [])])
    patch = c.model.patch_size
    g = c.augment["global_views"][0]["size"]
    for group in c.augment["global_views"] + c.augment["local_views"]:
        group["size"] = max(patch, round(group["size"] * global_patches * patch / g))
    c.model.arch, c.model.img_size = "vit_tiny", global_patches * patch
    c.model.out_dim, c.model.hidden_dim, c.model.bottleneck_dim = 256, 64, 32
    validate(c)
    return c


def quiet_adam(tr) -> None:
    """Adam turns noise-level gradients into +-lr steps (the key bias's gradient is exactly 0 in exact
    arithmetic, ~1e-9 in floats, and its sign depends on summation order): a large eps keeps that noise out
    of parameter comparisons between two ways of computing the same step."""
    for group in tr.optimizer.param_groups:
        group["eps"] = 1e-3


def fixed_views(config: Config, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in AugmentationSpec.from_dict(config.augment).view_sizes]


def build(config: Config, *, reference: bool = False, dist_info: DistInfo = SINGLE_PROCESS, seed: int = 0,
          device: torch.device = CPU):
    spec = AugmentationSpec.from_dict(config.augment)
    torch.manual_seed(seed)
    return build_training(config, device, n_global=spec.n_global, n_views=spec.n_views, reference=reference,
                          dist_info=dist_info)


@pytest.mark.parametrize("preset", [p for p, (_, d) in PRESETS.items() if d["model"]["arch"].startswith("vit")])
def test_preset_shape_trains_on_a_fixed_batch(preset):  # CNN presets: tests/test_cnn.py
    config = scaled_config(preset, global_patches=2)
    views = fixed_views(config, batch=4)
    tr = build(config)
    # epoch 1: past the frozen-last-layer epoch, so every parameter learns; the same seed every step: the same
    # iBOT masks (tiny), so the batch is fixed in full
    losses = []
    for _ in range(5):
        torch.manual_seed(0)
        losses.append(tr.step(views, lr=1e-3, wd=0.04, momentum=0.996, epoch=1).item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < losses[0] - 0.5, losses


def test_param_groups_and_schedules():
    config = scaled_config("dino-mc-vits8", overrides=["run.epochs=4", "optim.warmup_epochs=1", "run.batch_size=512"])
    tr = build(config)
    decay, no_decay = param_groups(tr.student)
    names = {id(p): n for n, p in tr.student.named_parameters()}
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert any(names[id(p)].endswith("norm.weight") for p in no_decay["params"]) and no_decay["weight_decay"] == 0
    assert not any("original0" in names[id(p)] for p in decay["params"] + no_decay["params"])  # frozen gain
    s = build_schedules(config, iters_per_epoch=5)
    assert len(s["lr"]) == len(s["wd"]) == len(s["momentum"]) == 20 and len(s["teacher_temp"]) == 4
    assert s["lr"][4] == pytest.approx(5e-4 * 512 / 256)  # end of warm-up: the batch-scaled peak
    assert s["lr"][0] == 0 and s["lr"][-1] > config.optim.min_lr
    assert s["wd"][0] == pytest.approx(0.04) and s["momentum"][0] == pytest.approx(0.996)


def test_last_layer_frozen_in_the_first_epoch():
    config = scaled_config("tiny", overrides=["optim.freeze_last_layer=1"])  # the tiny preset freezes nothing
    views = fixed_views(config, batch=2)
    tr = build(config)
    v = tr.student["head"].last_layer.parametrizations.weight.original1
    before = v.detach().clone()
    tr.step(views, lr=1e-3, wd=0.04, momentum=0.996, epoch=0)
    assert torch.equal(v, before)
    tr.step(views, lr=1e-3, wd=0.04, momentum=0.996, epoch=1)
    assert not torch.equal(v, before)


def test_teacher_is_frozen_and_follows_the_student_by_ema():
    config = scaled_config("tiny")
    tr = build(config)
    assert not tr.teacher.training and not any(p.requires_grad for p in tr.teacher.parameters())
    t0 = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    tr.step(fixed_views(config, batch=2), lr=1e-3, wd=0.04, momentum=0.9, epoch=1)
    s1, t1 = tr.student.state_dict(), tr.teacher.state_dict()
    for k in t0:  # teacher = 0.9 * old teacher + 0.1 * new student
        torch.testing.assert_close(t1[k], 0.9 * t0[k] + 0.1 * s1[k], rtol=1e-5, atol=1e-6)


def test_fastdino_step_equals_reference_step():
    """Packed student + fused loss + flat EMA == per-size student + reference loss + per-tensor EMA."""
    config = scaled_config("dino-mc-vits8", overrides=["model.drop_path_rate=0"])  # drop-path draws differ
    views = fixed_views(config, batch=3)
    fast, ref = build(config), build(config, reference=True)
    for k, v in ref.student.state_dict().items():  # the same initial state
        assert torch.equal(v, fast.student.state_dict()[k])
    for tr in (fast, ref):
        quiet_adam(tr)
    for epoch in (0, 1):  # frozen last layer, then not
        lf = fast.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        lr_ = ref.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        torch.testing.assert_close(lf, lr_, rtol=1e-5, atol=1e-5)
        for (name, pf), pr in zip(fast.student.named_parameters(), ref.student.parameters(), strict=True):
            if pr.grad is None:
                assert pf.grad is None, name
                continue
            scale = pr.grad.abs().max().item() + 1e-12
            torch.testing.assert_close(pf.grad / scale, pr.grad / scale, rtol=0, atol=1e-4, msg=f"grad {name}")
    for name in ("student", "teacher"):
        fs, rs = getattr(fast, name).state_dict(), getattr(ref, name).state_dict()
        for k in rs:
            torch.testing.assert_close(fs[k], rs[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    torch.testing.assert_close(fast.dino_loss.center, ref.dino_loss.center, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    """run.compile=true (torch.compile of the packed student and teacher, inductor) computes the same step."""
    config = scaled_config("tiny", global_patches=2, overrides=["model.patch_size=8"])
    views = fixed_views(config, batch=2)
    eager = build(config)
    config.run.compile = True
    compiled = build(config)
    for tr in (eager, compiled):
        quiet_adam(tr)
    for epoch in (0, 1):
        losses = []
        for tr in (compiled, eager):
            torch.manual_seed(epoch)  # the training loop re-seeds every step: the same iBOT masks for both
            losses.append(tr.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch))
        torch.testing.assert_close(*losses, rtol=1e-4, atol=1e-4)
    for k, v in eager.teacher.state_dict().items():
        torch.testing.assert_close(compiled.teacher.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_fp16_step_gives_the_head_the_reference_gradient():
    """run.precision=fp16 (DINO's --use_fp16 default): fp16 autocast and a GradScaler. The gradient the head's fp16
    logits receive must be the reference's (fp32 loss gradient x the scale, cast once). Before the fix the fused loss
    rounded it to fp16 in the forward, before the scale: at K=65536 most entries (~3e-6) fell into fp16's
    subnormals and 87,634 of these 2.1 M became 0 (the reference step: 166)."""
    config = scaled_config("dino-mc-vits8", overrides=["model.drop_path_rate=0", "run.precision=fp16"])
    config.model.out_dim = 65536  # the paper's K, where the unscaled entries are below fp16's normal range
    views = fixed_views(config, batch=4)
    fast, ref = build(config), build(config, reference=True)
    assert fast.precision == ref.precision == "fp16" and fast.scaler.is_enabled()
    logit_grads = {}
    for name, tr in (("fast", fast), ("ref", ref)):
        def keep_logit_grad(module, inputs, logits, name=name):
            logits.register_hook(lambda g: logit_grads.__setitem__(name, g.clone()))

        tr.student["head"].register_forward_hook(keep_logit_grad)
        quiet_adam(tr)
        # lr 0: every step computes the gradients of the same weights. Random views overflow fp16 in the backbone's
        # backward at DINO's initial scale 2^16, so the scaler halves it (skipping the step) until they fit.
        for _ in range(12):
            scale = tr.scaler.get_scale()
            tr.step(views, lr=0.0, wd=0.04, momentum=0.99, epoch=1)
            if tr.scaler.get_scale() >= scale:
                break
    assert fast.scaler.get_scale() == ref.scaler.get_scale() < 2.0**16
    fast_grad, ref_grad = logit_grads["fast"], logit_grads["ref"]
    assert fast_grad.dtype == ref_grad.dtype == torch.float16 and ref_grad.shape == (8 * 4, 65536)
    assert torch.isfinite(fast_grad).all()
    assert int((fast_grad == 0).sum()) <= int((ref_grad == 0).sum()) + 64
    # the rest of the difference is the fp16 backbone (packed vs per-size), ~7e-4 relative here
    torch.testing.assert_close((fast_grad.float() - ref_grad.float()).norm() / ref_grad.float().norm(),
                               torch.tensor(0.0), rtol=0, atol=5e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_step_matches_reference(precision):
    """Triton loss and EMA, packed attention, autocast (and the fp16 grad scaler) against the reference step."""
    config = scaled_config("dino-mc-vits8", overrides=["model.drop_path_rate=0", "run.device=cuda",
                                                       f"run.precision={precision}"])
    cuda = torch.device("cuda")
    views = [v.to(cuda) for v in fixed_views(config, batch=8)]
    fast, ref = build(config, device=cuda), build(config, reference=True, device=cuda)
    assert fast.scaler.is_enabled() == (precision == "fp16")
    for tr in (fast, ref):
        quiet_adam(tr)
    for epoch in (0, 1):
        lf = fast.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        lr_ = ref.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        torch.testing.assert_close(lf.float(), lr_.float(), rtol=2e-2, atol=2e-2)
    for k, v in ref.teacher.state_dict().items():
        torch.testing.assert_close(fast.teacher.state_dict()[k], v, rtol=1e-2, atol=1e-4, msg=k)


# ---- the loop: resume, non-finite loss ---------------------------------------------------------------------


def loop_config(tmp_path, epochs: int, extra: list[str] | None = None) -> Config:
    data = make_synthetic_dataset(tmp_path / "data", n_images=8, size=32)
    c = scaled_config("tiny", global_patches=2, overrides=[
        f"data.path={data}", f"run.epochs={epochs}", "run.batch_size=4", "run.log_every=1", "data.backend=torch",
        "data.num_threads=0", "optim.warmup_epochs=1", *(extra or [])])
    return c


def step_losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "step"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    quiet = lambda msg: None  # noqa: E731
    full = tmp_path / "full"
    train(loop_config(tmp_path, 2), full, echo=quiet)
    part = tmp_path / "part"
    train(loop_config(tmp_path, 2), part, echo=quiet, max_steps=2)  # stops after epoch 0 (2 iterations each)
    assert ckpt_io.load_checkpoint(part)["epoch"] == 1
    train(loop_config(tmp_path, 2), part, echo=quiet, resume=True)
    assert len(step_losses(full)) == 4
    assert step_losses(part) == step_losses(full)  # bitwise: same data, same randomness, same state
    a, b = ckpt_io.load_checkpoint(full), ckpt_io.load_checkpoint(part)
    for k in a["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k
    assert (full / "plots" / "curves.png").is_file() and (full / "checkpoints" / "epoch_0002.pt").is_file()


def test_dino_tp_trains_on_a_seco_tree(tmp_path):
    from _data_helpers import seco_tree

    root = seco_tree(tmp_path / "seco", n_locations=4, n_acq=3, size=24)
    c = scaled_config("dino-tp-vits8", global_patches=2, overrides=[
        f"data.path={root}", "run.epochs=1", "run.batch_size=2", "run.log_every=1", "data.backend=torch",
        "data.num_threads=0"])
    summary = train(c, tmp_path / "run", echo=lambda m: None)
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert ckpt_io.load_checkpoint(tmp_path / "run")["config"]["data"]["temporal"] is True


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import fastdino.train as train_module

    real_build = train_module.build_training

    def build_with_nan_at_step_3(*args, **kwargs):
        tr = real_build(*args, **kwargs)
        step, calls = tr.step, []

        def poisoned(*a, **k):
            loss = step(*a, **k)
            calls.append(1)
            return loss * float("nan") if len(calls) == 4 else loss  # iteration 3 (0-based), epoch 1

        tr.step = poisoned
        return tr

    monkeypatch.setattr(train_module, "build_training", build_with_nan_at_step_3)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(epoch 1\).*last.pt"):
        train(loop_config(tmp_path, 3), run, echo=lambda m: None)
    kept = ckpt_io.load_checkpoint(run)
    assert kept["epoch"] == 1  # written after epoch 0; nothing after the NaN
    # the tiny preset keeps every epoch's checkpoint: epoch 0's, and nothing after the NaN
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001.pt", "last.pt"]


# ---- 2 processes (gloo) == 1 process at the same global batch ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, config: Config, views: list[torch.Tensor], out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tr = build(config, dist_info=DistInfo(rank, 0, world))
        quiet_adam(tr)
        per_rank = views[0].shape[0] // world
        mine = [v[rank * per_rank:(rank + 1) * per_rank] for v in views]
        losses = []
        for epoch in (0, 1):
            loss = tr.step(mine, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
            dist.all_reduce(loss)  # the logged loss is the mean over ranks
            losses.append(loss / world)
        if rank == 0:
            torch.save({"losses": torch.stack(losses), "student": tr.student.state_dict(),
                        "center": tr.dino_loss.center}, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    # DINO's loss only: KoLeo (on in the tiny preset) looks for neighbours within each rank's batch, as DINOv2 does,
    # and iBOT's masks are drawn from each rank's own seed (so two ranks draw other masks than one process)
    config = scaled_config("tiny", global_patches=2, overrides=["loss.koleo_weight=0", "loss.ibot_weight=0"])
    views = fixed_views(config, batch=4)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_main, args=(2, _free_port(), config, views, out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    one = build(config)
    quiet_adam(one)
    losses = torch.stack([one.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=e) for e in (0, 1)])
    torch.testing.assert_close(two["losses"], losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two["center"], one.dino_loss.center, rtol=1e-5, atol=1e-6)
    for k, v in one.student.state_dict().items():
        torch.testing.assert_close(two["student"][k], v, rtol=1e-4, atol=1e-5, msg=k)
