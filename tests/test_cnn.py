"""CNN (BatchNorm) backbones trained the way facebookresearch/dino trains them.

DINO (main_dino.py at commit cc72fe98, the version read for this file): the teacher is never put in eval mode, so
a BatchNorm teacher normalises with the batch statistics of its own global views and updates its own running
statistics; its parameters follow the student by EMA and its buffers are never copied (L346-350); BatchNorm layers
of student and teacher become SyncBatchNorm under DDP (L196-198); torchvision CNNs are built without drop-path
(L176-177); `--optimizer sgd` is `torch.optim.SGD(params_groups, lr=0, momentum=0.9)` (L229).

The step tests build the config's `resnet50` as a 91K-parameter ResNet (timm's ResNet, one block per stage,
8-64 channels) so that they run in seconds on CPU; everything else about the step is the real one.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torchvision
from fastdino.dataloading import AugmentationSpec
from torch import nn

from fastdino.config import ConfigError
from fastdino.distributed import SINGLE_PROCESS, DistInfo
from fastdino.models import TimmBackbone, create_backbone
from fastdino.run_config import load_config
from fastdino.train import build_training

CPU = torch.device("cpu")
BN_TYPES = nn.modules.batchnorm._BatchNorm


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _micro_create_backbone(arch: str, **kwargs):
    """create_backbone with the CNNs swapped for a micro ResNet (timm's ResNet class and BatchNorm layers; a
    64-channel stem, one basic block per stage of 8-64 channels: 91K parameters); other archs as usual."""
    from fastdino.models import factory

    if arch not in ("resnet50", "wide_resnet50_2"):
        return factory.create_backbone(arch, **kwargs)
    assert kwargs.get("drop_path_rate", 0.0) == 0.0
    return TimmBackbone("resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8,
                        zero_init_last=False)


@pytest.fixture
def micro_resnet(monkeypatch):
    import fastdino.models as models

    monkeypatch.setattr(models, "create_backbone", _micro_create_backbone)


def cnn_config(*overrides: str):
    """The `tiny` preset's views (64 px globals, 48..24 px locals) and a small head on `resnet50` (no ViT depth,
    no iBOT: a CNN has no patch tokens)."""
    return load_config("tiny", overrides=["run.device=cpu", "model.arch=resnet50", "model.patch_size=null",
                                          "model.depth=null", "loss.ibot_weight=0",
                                          "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
                                          *overrides])


def fixed_views(config, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in AugmentationSpec.from_dict(config.augment).view_sizes]


def build(config, *, reference: bool = False, dist_info: DistInfo = SINGLE_PROCESS, seed: int = 0):
    spec = AugmentationSpec.from_dict(config.augment)
    torch.manual_seed(seed)
    return build_training(config, CPU, n_global=spec.n_global, n_views=spec.n_views, reference=reference,
                          dist_info=dist_info)


def bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BN_TYPES)}


def float_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}


# ---- the teacher of a BatchNorm backbone -------------------------------------------------------------------


def test_bn_teacher_normalises_with_its_own_batch_statistics(micro_resnet):
    """The teacher forward runs in train mode on the global views (DINO never calls teacher.eval()), and its
    running statistics are its own: the EMA does not copy the student's buffers."""
    config = cnn_config()
    tr = build(config)
    assert tr.teacher.training and all(m.training for m in bn_layers(tr.teacher).values())
    assert not any(p.requires_grad for p in tr.teacher.parameters())
    views = fixed_views(config, batch=3)
    # what DINO's teacher does with the same weights: a train-mode forward of the global views, under no_grad
    expected = copy.deepcopy(tr.teacher).train()
    with torch.no_grad():
        eval_out = copy.deepcopy(tr.teacher).eval()["backbone"].forward_views(views[:2])
        train_out = expected["backbone"].forward_views(views[:2])
    assert not torch.allclose(train_out, eval_out, atol=1e-3)  # batch statistics matter here
    tr.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=1)
    teacher_bn, expected_bn, student_bn = bn_layers(tr.teacher), bn_layers(expected), bn_layers(tr.student)
    assert len(teacher_bn) == 1 + 2 * 4 + 4  # micro ResNet: stem, 2 per block, a downsample per stage
    for name, bn in teacher_bn.items():
        assert bn.num_batches_tracked.item() == 1, name  # one teacher forward in train mode
        torch.testing.assert_close(bn.running_mean, expected_bn[name].running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, expected_bn[name].running_var, rtol=1e-5, atol=1e-6)
        assert not torch.equal(bn.running_mean, student_bn[name].running_mean), name  # not the student's


def test_bn_teacher_buffers_copy_and_average_options(micro_resnet):
    """loss.ema_buffers=copy / average: after the EMA the teacher's float buffers are the student's / the
    momentum average of its own (after its forward) and the student's."""
    views = fixed_views(cnn_config(), batch=3)
    for option in ("copy", "average"):
        tr = build(cnn_config(f"loss.ema_buffers={option}"))
        own = copy.deepcopy(tr.teacher).train()
        with torch.no_grad():
            own["backbone"].forward_views(views[:2])
        tr.step(views, lr=1e-3, wd=0.04, momentum=0.9, epoch=1)
        own_bufs, student_bufs, teacher_bufs = float_buffers(own), float_buffers(tr.student), float_buffers(tr.teacher)
        assert own_bufs.keys() == teacher_bufs.keys() and len(teacher_bufs) == 2 * 13
        for k, t in teacher_bufs.items():
            want = student_bufs[k] if option == "copy" else own_bufs[k] * 0.9 + student_bufs[k] * (1 - 0.9)
            torch.testing.assert_close(t, want, rtol=1e-6, atol=1e-7, msg=f"{option}: {k}")


@pytest.mark.parametrize("optim,ema_buffers", [("adamw", "none"), ("sgd", "none"), ("sgd", "average")])
def test_fastdino_step_equals_reference_step_on_a_bn_backbone(micro_resnet, optim, ema_buffers):
    """Flat EMA + fused loss + fused optimiser == per-tensor EMA + reference loss + torch's default optimiser
    (DINO's loop), with a train-mode BatchNorm teacher."""
    config = cnn_config(f"optim.name={optim}", f"loss.ema_buffers={ema_buffers}")
    # batch 8: BatchNorm over 3 samples of a 1x1 map (24 px crops at stride 32) would turn fp32 rounding
    # differences of the two losses into 1e-3 relative gradient differences
    views = fixed_views(config, batch=8)
    fast, ref = build(config), build(config, reference=True)
    assert type(fast.optimizer) is type(ref.optimizer) is {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optim]
    for tr in (fast, ref):
        if optim == "adamw":
            for group in tr.optimizer.param_groups:
                group["eps"] = 1e-3  # keep noise-level gradients out of the comparison (see test_train.quiet_adam)
    for epoch in (0, 1):
        lf = fast.step(views, lr=1e-2, wd=1e-4, momentum=0.99, epoch=epoch)
        lr_ = ref.step(views, lr=1e-2, wd=1e-4, momentum=0.99, epoch=epoch)
        torch.testing.assert_close(lf, lr_, rtol=1e-5, atol=1e-5)
    for name in ("student", "teacher"):
        fs, rs = getattr(fast, name).state_dict(), getattr(ref, name).state_dict()
        assert fs.keys() == rs.keys()
        for k in rs:
            torch.testing.assert_close(fs[k], rs[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    assert fast.teacher.training and ref.teacher.training


def test_vit_teacher_and_step_are_unchanged():
    """ViT runs are what they were before the BatchNorm-teacher change: the teacher stays in eval mode (DINO's
    ViT teacher is in train mode but has no stochastic layer, so both compute the same; fastdino's teacher carries
    the student's drop-path modules, which eval mode switches off), and a ViT has no float buffers, so the EMA's
    old copy of buffers and the new default are bitwise the same step."""
    overrides = ["run.device=cpu", "model.out_dim=256", "model.hidden_dim=64",
                 "model.bottleneck_dim=32", "model.drop_path_rate=0.1"]
    new, old = (build(load_config("tiny", overrides=[*overrides, f"loss.ema_buffers={b}"])) for b in ("none", "copy"))
    assert not new.teacher.training and not any(m.training for m in new.teacher.modules())
    assert not bn_layers(new.student) and not float_buffers(new.student) and not float_buffers(new.teacher)
    views = fixed_views(load_config("tiny", overrides=overrides), batch=2)
    for epoch in (0, 1):
        torch.manual_seed(epoch)
        a = new.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        torch.manual_seed(epoch)
        b = old.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        assert torch.equal(a, b)
    for name in ("student", "teacher"):
        sa, sb = getattr(new, name).state_dict(), getattr(old, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb), name


# ---- the CNN recipe ------------------------------------------------------------------------------------------


def test_cnn_backbones_take_no_drop_path():
    """DINO builds torchvision CNNs without stochastic depth (main_dino.py L176-177)."""
    backbone = create_backbone("resnet50")
    assert not any("DropPath" in type(m).__name__ for m in backbone.modules())
    with pytest.raises(ValueError, match="resnet50.*drop_path_rate"):
        create_backbone("resnet50", drop_path_rate=0.1)
    with pytest.raises(ConfigError, match="model.drop_path_rate=0.1.*wide_resnet50_2"):
        load_config("dino-mc-vits8", overrides=["model.arch=wide_resnet50_2", "model.patch_size=null"])
    vit = create_backbone("vit_tiny", drop_path_rate=0.1)  # ViTs keep it
    assert any("DropPath" in type(m).__name__ for m in vit.modules())


def test_cnn_is_torchvisions_architecture_and_initialisation():
    """timm's ResNet with torchvision's names and shapes, and torchvision's initialisation: every BatchNorm weight
    starts at 1 (torchvision's zero_init_residual=False; timm zeroes each block's last BatchNorm by default)."""
    ours = create_backbone("resnet50").timm_model
    tv = torchvision.models.resnet50()
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv_state.items()}
    for name, m in ours.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    ours.load_state_dict(tv_state)  # same weights -> same features as torchvision's (fc removed)
    tv.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), tv.eval()(x), rtol=1e-4, atol=1e-5)
    with torch.device("meta"):  # WRN-50-2: names and shapes only (69M parameters are slow to initialise)
        wide, tv_wide = create_backbone("wide_resnet50_2").timm_model, torchvision.models.wide_resnet50_2()
    assert {k: v.shape for k, v in wide.state_dict().items()} == {
        k: v.shape for k, v in tv_wide.state_dict().items() if not k.startswith("fc.")}


def test_sgd_option_is_dinos_sgd(micro_resnet):
    """optim.name=sgd: torch.optim.SGD(params_groups, lr=0, momentum=0.9) (main_dino.py L229); the schedules
    set lr on every group and weight decay on the first (L309-312)."""
    tr = build(cnn_config("optim.name=sgd"))
    assert isinstance(tr.optimizer, torch.optim.SGD)
    decay, no_decay = tr.optimizer.param_groups
    assert decay["momentum"] == no_decay["momentum"] == 0.9 and not decay["nesterov"]
    assert no_decay["weight_decay"] == 0.0
    tr.step(fixed_views(cnn_config(), batch=2), lr=0.06, wd=1e-4, momentum=0.996, epoch=0)
    assert decay["lr"] == no_decay["lr"] == 0.06 and decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0
    with pytest.raises(ConfigError, match="optim.name='lars'.*adamw, sgd"):
        load_config("tiny", overrides=["optim.name=lars"])


def test_dino_mc_resnet50_preset_is_dinos_resnet50_recipe():
    """facebookresearch/dino README.md, "ResNet-50 and other convnets trainings": `main_dino.py --arch resnet50
    --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4 --global_crops_scale 0.14 1
    --local_crops_scale 0.05 0.14` on 8 GPUs for 100 epochs; the rest are main_dino.py's defaults. The local
    crops are DINO-MC's six sizes (main_dino_mc.py --size_crops)."""
    c = load_config("dino-mc-resnet50")
    m, o, lo, r = c.model, c.optim, c.loss, c.run
    assert (m.arch, m.patch_size, m.drop_path_rate) == ("resnet50", None, 0.0)
    assert (m.out_dim, m.hidden_dim, m.bottleneck_dim, m.nlayers, m.norm_last_layer) == (65536, 2048, 256, 3, True)
    assert (o.name, o.lr, o.weight_decay, o.weight_decay_end) == ("sgd", 0.03, 1e-4, 1e-4)
    assert (o.min_lr, o.warmup_epochs, o.clip_grad, o.freeze_last_layer) == (1e-6, 10, 3.0, 1)
    assert (lo.momentum_teacher, lo.teacher_temp, lo.warmup_teacher_temp, lo.warmup_teacher_temp_epochs) == (
        0.996, 0.04, 0.04, 0)
    assert (lo.student_temp, lo.center_momentum, lo.ema_buffers) == (0.1, 0.9, "none")
    assert (r.epochs, r.batch_size) == (100, 8 * 64)  # 8 GPUs x --batch_size_per_gpu 64
    spec = AugmentationSpec.from_dict(c.augment)
    assert [(g.size, g.count, g.scale) for g in spec.global_views] == [(224, 1, (0.14, 1.0))] * 2
    assert [(g.size, g.count, g.scale) for g in spec.local_views] == [
        (s, 1, (0.05, 0.14)) for s in (184, 164, 144, 124, 104, 84)]
    assert [g.jitter for g in spec.local_views] == [(0.8, 0.8, 0.8, 0.2)] * 6  # DINO-MC's local colour jitter


def test_dino_mc_resnet50_preset_shape_trains_on_a_fixed_batch(micro_resnet):
    """The preset's views (scaled by 64/224), head, SGD and schedules' peak lr on the micro ResNet: the loss of
    a fixed batch goes down (test_train.py does the same for the ViT presets)."""
    c = load_config("dino-mc-resnet50", overrides=["run.device=cpu", "model.out_dim=256", "model.hidden_dim=64",
                                                   "model.bottleneck_dim=32"])
    for group in c.augment["global_views"] + c.augment["local_views"]:
        group["size"] = round(group["size"] * 64 / 224)
    views = fixed_views(c, batch=4)
    tr = build(c)
    lr = c.optim.lr * c.run.batch_size / 256  # the peak of the lr schedule
    losses = [tr.step(views, lr=lr, wd=c.optim.weight_decay, momentum=0.996, epoch=1).item() for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < losses[0] - 0.5, losses


# ---- SyncBatchNorm under DDP ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    # no conv bias before a BatchNorm (as in a ResNet): its gradient is 0 up to rounding noise
    net = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 1, bias=False),
                        nn.BatchNorm2d(5))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


def _sync_bn_forward_backward(net: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> dict:
    """Forward in train mode, backward of sum(y * dy); what each rank (or the single process) observes."""
    x = x.clone().requires_grad_()
    y = net.train()(x)
    (y * dy).sum().backward()
    return dict(y=y.detach(), dx=x.grad, **{f"grad.{n}": p.grad for n, p in net.named_parameters()},
                **{f"buf.{n}": b.clone() for n, b in net.named_buffers()})


# per-rank batch sizes: unequal on purpose (the statistics weigh every sample once)
_SPLIT = (3, 5)


def _rank_main(rank: int, world: int, port: int, device_type: str, data: dict, out: str) -> None:
    import torch.distributed as dist

    import fastdino.models as models
    from fastdino.models import AllReduceBatchNorm, convert_sync_batchnorm

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device_type == "cuda" else "gloo"
    device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        # 1. SyncBatchNorm alone: this rank's slice of the batch
        net = convert_sync_batchnorm(_bn_net().to(device))
        sync_type = nn.SyncBatchNorm if device_type == "cuda" else AllReduceBatchNorm  # torch's on CUDA, as DINO
        assert type(net[1]) is sync_type and type(net[4]) is sync_type
        lo = sum(_SPLIT[:rank])
        mine = slice(lo, lo + _SPLIT[rank])
        result = {"sync_bn": {k: v.cpu() for k, v in _sync_bn_forward_backward(
            net, data["x"][mine].to(device), data["dy"][mine].to(device)).items()}}
        # 2. a whole training step of a BatchNorm backbone (CPU only: the step tests run on CPU)
        if device_type == "cpu":
            models.create_backbone = _micro_create_backbone
            tr = build(data["config"], dist_info=DistInfo(rank, 0, world))
            assert type(tr.student["backbone"].timm_model.bn1) is AllReduceBatchNorm
            assert type(tr.teacher["backbone"].timm_model.bn1) is AllReduceBatchNorm
            per_rank = data["views"][0].shape[0] // world
            views = [v[rank * per_rank:(rank + 1) * per_rank] for v in data["views"]]
            losses = []
            for epoch in (0, 1):
                loss = tr.step(views, lr=1e-2, wd=1e-4, momentum=0.99, epoch=epoch)
                dist.all_reduce(loss)
                losses.append(loss / world)
            result["train"] = dict(losses=torch.stack(losses), student=tr.student.state_dict(),
                                   teacher=tr.teacher.state_dict(), center=tr.dino_loss.center)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path, device_type: str, data: dict) -> list[dict]:
    out = str(tmp_path / "rank")
    mp.spawn(_rank_main, args=(2, _free_port(), device_type, data, out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]


def _sync_bn_data() -> dict:
    g = torch.Generator().manual_seed(0)
    n = sum(_SPLIT)
    return dict(x=torch.randn(n, 3, 7, 6, generator=g) * 2 + 1, dy=torch.randn(n, 5, 5, 4, generator=g))


def _check_sync_bn(ranks: list[dict], data: dict, device: torch.device) -> None:
    """Two ranks with SyncBatchNorm == one process with BatchNorm on the concatenated batch: outputs, input
    gradients, running statistics (every rank), and parameter gradients summed over ranks (DDP then averages)."""
    one = {k: v.cpu() for k, v in _sync_bn_forward_backward(_bn_net().to(device), data["x"].to(device),
                                                            data["dy"].to(device)).items()}
    two = [r["sync_bn"] for r in ranks]
    for k in ("y", "dx"):
        torch.testing.assert_close(torch.cat([t[k] for t in two]), one[k], rtol=1e-5, atol=1e-5, msg=k)
    for k in one:
        if k.startswith("buf."):
            for t in two:
                torch.testing.assert_close(t[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
        elif k.startswith("grad."):  # relative to the largest entry
            scale = one[k].abs().max()
            torch.testing.assert_close((two[0][k] + two[1][k]) / scale, one[k] / scale, rtol=0, atol=1e-5, msg=k)
    assert one["buf.1.num_batches_tracked"] == two[0]["buf.1.num_batches_tracked"] == 1
    assert not torch.equal(one["buf.1.running_var"], torch.ones(6))


def test_two_gloo_ranks_sync_batchnorm_and_train_like_one_process(tmp_path, micro_resnet):
    """DINO converts BatchNorm to SyncBatchNorm under DDP (main_dino.py L196-198). torch's SyncBatchNorm raises
    for CPU tensors (and DDP refuses it in a CPU module), so on CPU fastdino converts to AllReduceBatchNorm, which
    all-reduces the statistics itself (gloo); on CUDA it is torch's SyncBatchNorm. Checked: (1) the layer against
    BatchNorm on the concatenated batch; (2) a whole training step with a BatchNorm backbone on 2 gloo ranks
    against 1 process at the same global batch: losses, centre, student and teacher weights and running
    statistics."""
    # DINO's loss only: the tiny preset's KoLeo term looks for neighbours within each rank's batch, as DINOv2 does
    config = cnn_config("optim.name=sgd", "loss.koleo_weight=0")
    data = dict(_sync_bn_data(), config=config, views=fixed_views(config, batch=4))
    ranks = _two_ranks(tmp_path, "cpu", data)
    _check_sync_bn(ranks, data, CPU)

    one = build(config)
    losses = torch.stack([one.step(data["views"], lr=1e-2, wd=1e-4, momentum=0.99, epoch=e) for e in (0, 1)])
    two = ranks[0]["train"]
    torch.testing.assert_close(two["losses"], losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two["center"], one.dino_loss.center, rtol=1e-5, atol=1e-6)
    for name in ("student", "teacher"):
        for k, v in getattr(one, name).state_dict().items():
            torch.testing.assert_close(two[name][k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL: one rank per GPU)")
def test_two_nccl_ranks_sync_batchnorm_like_one_process(tmp_path):
    """On CUDA the conversion gives torch's SyncBatchNorm (its kernels, NCCL), as in DINO: the same check as on CPU."""
    data = _sync_bn_data()
    _check_sync_bn(_two_ranks(tmp_path, "cuda", data), data, torch.device("cuda:0"))


def test_sync_batchnorm_conversion_and_flat_ema():
    """convert_sync_batchnorm keeps every Parameter and buffer object (DINO converts before DDP; fastdino converts
    before FlatEMA, DDP and the optimiser). FlatEMA re-homes the converted twins, and converting after FlatEMA
    keeps the aliasing too; without a process group the layer is plain BatchNorm."""
    from fastdino.kernels import FlatEMA

    from fastdino.models import AllReduceBatchNorm, convert_sync_batchnorm, has_batchnorms

    student = _micro_create_backbone("resnet50")
    teacher = copy.deepcopy(student)
    params, bufs = list(student.parameters()), list(student.buffers())
    plain = copy.deepcopy(student)
    assert convert_sync_batchnorm(student) is student  # children are replaced in place
    assert [id(p) for p in student.parameters()] == [id(p) for p in params]
    assert [id(b) for b in student.buffers()] == [id(b) for b in bufs]
    assert all(type(m) is AllReduceBatchNorm for m in bn_layers(student).values()) and has_batchnorms(student)
    assert student.state_dict().keys() == plain.state_dict().keys()  # checkpoints load into plain models
    assert not has_batchnorms(create_backbone("vit_tiny"))
    x = torch.randn(4, 3, 24, 24)
    torch.testing.assert_close(student.train()(x), plain.train()(x))  # no process group: BatchNorm
    torch.testing.assert_close(float_buffers(student), float_buffers(plain))

    convert_sync_batchnorm(teacher)
    _check_flat_ema(FlatEMA(student, teacher), student, teacher)
    late_s, late_t = _micro_create_backbone("resnet50"), _micro_create_backbone("resnet50")
    late_ema = FlatEMA(late_s, late_t)
    convert_sync_batchnorm(late_s), convert_sync_batchnorm(late_t)
    assert type(late_s.timm_model.bn1) is AllReduceBatchNorm
    _check_flat_ema(late_ema, late_s, late_t)


def _check_flat_ema(ema, student, teacher) -> None:
    """Every parameter is a view of the flat buffers, and update() moves the teacher as the reference loop does."""
    from fastdino.kernels import reference_ema_update

    ema.verify()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))  # in place: the parameters stay views
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)
    ema.update(0.9)
    reference_ema_update(ref_s, ref_t, 0.9)
    for (name, p), q in zip(teacher.named_parameters(), ref_t.parameters(), strict=True):
        assert torch.equal(p, q), name
    teacher_flat = {g.teacher.untyped_storage().data_ptr() for g in ema.groups}
    assert all(p.untyped_storage().data_ptr() in teacher_flat for p in teacher.parameters())
