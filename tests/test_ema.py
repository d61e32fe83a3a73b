"""FlatEMA against the per-tensor reference loop (kernels/reference.py), interleaved with AdamW steps.

Each test builds a student, a teacher that differs from it (so the EMA has work to do), and an identical
pair driven by `reference_ema_update`; after every step both teachers must agree bitwise in fp32.
"""

import copy
import io

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
from fastdino.kernels import FlatEMA, reference_ema_update
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fastdino.schedules import cosine_schedule

BACKENDS = ["torch", "triton"]  # triton runs through the interpreter on CPU (conftest sets TRITON_INTERPRET)
MOMENTA = [0.996, 0.9, 0.99971]


class Toy(nn.Module):
    """Odd sizes, a BatchNorm (float buffers + an int counter), an empty and a frozen parameter, and a
    weight-normed last layer like DINO's head (its magnitude frozen, as with norm_last_layer=True)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(7, 41)
        self.bn = nn.BatchNorm1d(41)
        self.fc2 = nn.Linear(41, 13)
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(13, 101, bias=False))
        self.last.parametrizations.weight.original0.requires_grad = False
        self.empty = nn.Parameter(torch.empty(0))
        self.frozen = nn.Parameter(torch.randn(3, 5), requires_grad=False)

    def forward(self, x):
        h = self.fc2(torch.relu(self.bn(self.fc1(x))))
        return self.last(nn.functional.normalize(h, dim=-1)) + self.frozen.sum() + self.empty.sum()


def _twins(make, seed=0):
    """(student, teacher) with a perturbed teacher, and an identical pair for the reference."""
    torch.manual_seed(seed)
    student = make()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            if p.is_floating_point():
                p.add_(0.1 * torch.randn_like(p))
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher, copy.deepcopy(student), copy.deepcopy(teacher)


def _step(model, opt, x):
    opt.zero_grad(set_to_none=True)
    out = model(x)
    out.float().square().mean().backward()
    opt.step()


def _assert_state_equal(a: nn.Module, b: nn.Module, bf16_ulps=None):
    """Bitwise equal; bf16 tensors within `bf16_ulps` ulps of their largest entry when given."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if bf16_ulps is not None and sa[k].dtype == torch.bfloat16:
            diff = (sa[k].float() - sb[k].float()).abs().max()
            assert diff <= bf16_ulps * _bf16_ulp(sb[k].float().abs().max()), (k, diff)
        else:
            assert torch.equal(sa[k], sb[k]), k


def _run(student, teacher, ref_student, ref_teacher, x_shape, backend, steps=3, lr=1e-2, bf16_ulps=None):
    ema = FlatEMA(student, teacher, backend=backend)
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    ref_opt = torch.optim.AdamW(ref_student.parameters(), lr=lr)
    for it in range(steps):
        x = torch.randn(*x_shape)
        _step(student, opt, x)
        _step(ref_student, ref_opt, x)
        m = MOMENTA[it % len(MOMENTA)]
        ema.update(m)
        reference_ema_update(ref_student, ref_teacher, m)
        _assert_state_equal(student, ref_student)
        _assert_state_equal(teacher, ref_teacher, bf16_ulps)
    return ema


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - 7)


def _aliases(ema: FlatEMA) -> bool:
    """Every parameter of both models lies inside its group's flat buffer."""
    for g in ema.groups:
        for role in ("student", "teacher"):
            flat = getattr(g, role)
            lo, hi = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
            params = dict(getattr(ema, role).named_parameters())
            for name in g.names:
                p = params[name]
                if p.numel() and not (lo <= p.data_ptr() and p.data_ptr() + p.numel() * p.element_size() <= hi):
                    return False
    return True


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_fp32(backend):
    student, teacher, ref_s, ref_t = _twins(Toy)
    ema = _run(student, teacher, ref_s, ref_t, (6, 7), backend)
    assert len(ema.groups) == 1 and ema.groups[0].backend == backend
    assert _aliases(ema)
    assert not torch.equal(teacher.fc1.weight, ref_s.fc1.weight)  # the teacher lags behind the student
    assert not teacher.bn.running_mean.any()  # buffers are the teacher's own (DINO: parameters only)
    assert teacher.bn.num_batches_tracked == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes(backend):
    def make():
        model = Toy()
        model.fc2.to(torch.bfloat16)
        model.fc2.register_forward_pre_hook(lambda mod, args: (args[0].to(torch.bfloat16),))
        model.fc2.register_forward_hook(lambda mod, args, out: out.float())
        return model

    student, teacher, ref_s, ref_t = _twins(make)
    t_before, s_param = teacher.fc2.weight.detach().clone(), student.fc2.weight
    ema = FlatEMA(student, teacher, backend=backend)
    assert sorted(str(g.dtype) for g in ema.groups) == ["torch.bfloat16", "torch.float32"]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    _step(student, opt, torch.randn(6, 7))
    ema.update(0.99)
    if backend == "triton":  # fp32 math, one final rounding (the interpreter truncates, the GPU rounds to nearest)
        exact = t_before.float() * np.float32(0.99) + s_param.detach().float() * np.float32(1 - 0.99)
        assert ((teacher.fc2.weight.float() - exact).abs() <= _bf16_ulp(exact)).all()
    del ema
    # bf16: the torch backend repeats the reference's three roundings (bitwise); Triton rounds once from fp32
    student, teacher, ref_s, ref_t = _twins(make)
    _run(student, teacher, ref_s, ref_t, (6, 7), backend, bf16_ulps=None if backend == "torch" else 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_parameters_follow_the_student(backend):
    student, teacher, ref_s, ref_t = _twins(Toy)
    gap0 = teacher.frozen - student.frozen
    ema = _run(student, teacher, ref_s, ref_t, (6, 7), backend, steps=2)  # momenta 0.996, then 0.9
    params = dict(student.named_parameters())
    assert not params["frozen"].requires_grad and not params["last.parametrizations.weight.original0"].requires_grad
    assert _aliases(ema)
    # the frozen student tensor never changes, so the teacher's gap to it shrinks by m at each step
    torch.testing.assert_close(teacher.frozen - student.frozen, gap0 * 0.996 * 0.9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timm_vit(backend):
    make = lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10)
    _run(*_twins(make), (2, 3, 32, 32), backend, steps=2, lr=1e-3)


def test_timm_resnet_with_batchnorm_buffers():
    # torch backend only: the Triton path is the same kernel as for the ViT, and 11M parameters through the
    # interpreter would dominate the suite's runtime
    make = lambda: timm.create_model("resnet18", num_classes=10)
    student, teacher, ref_s, ref_t = _twins(make)
    _run(student, teacher, ref_s, ref_t, (2, 3, 32, 32), "torch", steps=2, lr=1e-3)
    assert torch.equal(teacher.bn1.running_var, torch.ones_like(teacher.bn1.running_var))  # its own (never ran)
    assert not torch.equal(student.bn1.running_var, torch.ones_like(student.bn1.running_var))


@pytest.mark.parametrize("buffers", ["none", "copy", "average"])
def test_buffers_option_matches_the_reference(buffers):
    """Floating-point buffers: "none" leaves the teacher's own (DINO's loop updates parameters only,
    main_dino.py L349-350), "copy" takes the student's, "average" follows the EMA; bitwise the reference's.
    Integer buffers (num_batches_tracked) are never touched."""
    student, teacher, ref_s, ref_t = _twins(Toy)
    x = torch.randn(6, 7)
    with torch.no_grad():  # the teacher's own running statistics, from a train-mode forward
        teacher(x), ref_t(x)
    own_mean, own_count = teacher.bn.running_mean.clone(), teacher.bn.num_batches_tracked.clone()
    ema = FlatEMA(student, teacher, backend="torch", buffers=buffers)
    opt, ref_opt = torch.optim.AdamW(student.parameters(), lr=1e-2), torch.optim.AdamW(ref_s.parameters(), lr=1e-2)
    for m in MOMENTA:
        x = torch.randn(6, 7)
        _step(student, opt, x)
        _step(ref_s, ref_opt, x)
        before = teacher.bn.running_mean.clone()
        ema.update(m)
        reference_ema_update(ref_s, ref_t, m, buffers=buffers)
        _assert_state_equal(teacher, ref_t)
        want = {"none": own_mean, "copy": student.bn.running_mean,
                "average": before * np.float32(m) + student.bn.running_mean * np.float32(1 - m)}[buffers]
        torch.testing.assert_close(teacher.bn.running_mean, want, rtol=1e-6, atol=0)
    assert torch.equal(teacher.bn.num_batches_tracked, own_count)
    assert f"buffers={buffers}" in repr(ema)


def test_buffers_option_is_checked():
    student, teacher, *_ = _twins(Toy)
    with pytest.raises(ValueError, match="buffers must be one of .*'none', 'copy', 'average'.*'all'"):
        FlatEMA(student, teacher, buffers="all")
    with pytest.raises(ValueError, match="buffers must be one of"):
        reference_ema_update(student, teacher, 0.9, buffers="all")


def test_channels_last_layout_is_kept():
    make = lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 5, 1)).to(
        memory_format=torch.channels_last)
    student, teacher, ref_s, ref_t = _twins(make)
    _run(student, teacher, ref_s, ref_t, (2, 3, 9, 9), "torch", steps=2)
    assert student[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert teacher[0].weight.stride() == student[0].weight.stride()


def test_state_dict_round_trip_keeps_aliasing():
    student, teacher, ref_s, ref_t = _twins(Toy)
    _run(student, teacher, ref_s, ref_t, (6, 7), "torch", steps=2)
    blob = io.BytesIO()
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict()}, blob)

    new_s, new_t, _, _ = _twins(Toy, seed=1)
    ema = FlatEMA(new_s, new_t)
    blob.seek(0)
    ckpt = torch.load(blob)
    new_s.load_state_dict(ckpt["student"])
    new_t.load_state_dict(ckpt["teacher"])  # copies in place: the post-load check passes
    assert _aliases(ema)
    _assert_state_equal(new_t, ref_t)
    new_ref_s = copy.deepcopy(new_s)
    ema.update(0.98)
    reference_ema_update(new_ref_s, ref_t, 0.98)
    _assert_state_equal(new_t, ref_t)
    # loading by assignment replaces the tensors: caught right at load time
    with pytest.raises(RuntimeError, match="FlatEMA: the teacher's parameter '.*' (was replaced|no longer aliases)"):
        new_t.load_state_dict(ckpt["teacher"], assign=True)
    copy.deepcopy(new_s).load_state_dict(ckpt["student"], assign=True)  # a copy is not tied to the EMA


@pytest.mark.parametrize("wrap_first", [False, True], ids=["ema-then-ddp", "ddp-then-ema"])
def test_ddp_wrapped_student(tmp_path, wrap_first):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        student, teacher, ref_s, ref_t = _twins(Toy)
        if wrap_first:
            student = DDP(student)
            ema = FlatEMA(student, teacher)
        else:
            ema = FlatEMA(student, teacher)
            student = DDP(student)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
        ref_opt = torch.optim.AdamW(ref_s.parameters(), lr=1e-2)
        ema.check_optimizer(opt)
        for m in MOMENTA:
            x = torch.randn(6, 7)
            _step(student, opt, x)
            _step(ref_s, ref_opt, x)
            ema.update(m)
            reference_ema_update(ref_s, ref_t, m)
        _assert_state_equal(student.module, ref_s)
        _assert_state_equal(teacher, ref_t)
        assert _aliases(ema)
        assert list(student.state_dict())[0].startswith("module.")  # names unchanged by the re-homing
    finally:
        dist.destroy_process_group()


def test_stale_aliasing_is_detected():
    student, teacher, _, _ = _twins(Toy)
    ema = FlatEMA(student, teacher)
    ema.update(0.99)
    teacher.fc2.weight.data = teacher.fc2.weight.data.clone()  # a middle parameter, not the first or last
    with pytest.raises(RuntimeError, match="teacher's parameter 'fc2.weight' no longer aliases"):
        ema.update(0.99)

    student, teacher, _, _ = _twins(Toy)
    ema = FlatEMA(student, teacher)
    student.to(torch.float64)
    with pytest.raises(RuntimeError, match="student's parameter '.*' no longer aliases"):
        ema.update(0.99)

    student, teacher, _, _ = _twins(Toy)
    ema = FlatEMA(student, teacher)
    student.fc2 = nn.Linear(41, 13)  # module surgery: verify() sees new parameter objects
    with pytest.raises(RuntimeError, match="'fc2.weight' was replaced"):
        ema.verify()


def test_mismatched_models_are_rejected():
    with pytest.raises(ValueError, match="only in teacher"):
        FlatEMA(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"'0.weight' is \(4, 3\) torch.float32 .* \(5, 3\)"):
        FlatEMA(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 5)))
    with pytest.raises(ValueError, match="'0.weight' .* torch.float64"):
        FlatEMA(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 4)).double())
    shared = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="share the parameter"):
        FlatEMA(nn.Sequential(shared), nn.Sequential(shared))
    with pytest.raises(ValueError, match="backend must be one of"):
        FlatEMA(nn.Linear(3, 4), nn.Linear(3, 4), backend="cuda")


def test_check_optimizer():
    student, teacher, _, _ = _twins(Toy)
    ema = FlatEMA(student, teacher)
    ema.check_optimizer(torch.optim.AdamW(student.parameters()))
    with pytest.raises(ValueError, match="teacher parameter"):
        ema.check_optimizer(torch.optim.SGD(teacher.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="not a parameter of the student"):
        ema.check_optimizer(torch.optim.SGD(Toy().parameters(), lr=0.1))


def test_momentum_schedule_and_argument_checks():
    momenta = cosine_schedule(0.996, 1.0, epochs=3, iters_per_epoch=4)  # what the trainer feeds to update()
    assert len(momenta) == 12 and momenta[0] == pytest.approx(0.996)
    assert np.all(np.diff(momenta) >= 0) and 0.9999 < momenta[-1] < 1.0
    student, teacher, ref_s, ref_t = _twins(Toy)
    ema = FlatEMA(student, teacher)
    ema.update(momenta[5])  # a numpy float64
    reference_ema_update(ref_s, ref_t, float(momenta[5]))
    _assert_state_equal(teacher, ref_t)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema.update(1.5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_cuda(dtype):
    make = lambda: Toy().cuda().to(dtype)
    student, teacher, ref_s, ref_t = _twins(make)
    ema = FlatEMA(student, teacher)  # auto -> triton on CUDA
    assert [g.backend for g in ema.groups] == ["triton"]
    for m in MOMENTA:
        with torch.no_grad():
            for p, q in zip(student.parameters(), ref_s.parameters(), strict=True):
                p.add_(torch.randn_like(p))
                q.copy_(p)
        t_before = teacher.fc1.weight.detach().float().clone()  # .float() of an fp32 tensor aliases the teacher
        ema.update(m)
        # fp32 math rounded once to the parameter dtype (round to nearest on the GPU)
        exact = t_before * np.float32(m) + student.fc1.weight.detach().float() * np.float32(1 - m)
        assert torch.equal(teacher.fc1.weight, exact.to(dtype))
        reference_ema_update(ref_s, ref_t, m)
        _assert_state_equal(teacher, ref_t, bf16_ulps=2)
