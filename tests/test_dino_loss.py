"""The fused DINO loss (fastdino.kernels.loss) against the readable reference (kernels/reference.py).

Every fast backend gets fresh random inputs and must match `reference_dino_loss` (loss and student gradient)
and `reference_center_update` (the centre). The triton backend runs through the Triton interpreter on CPU
(the root conftest sets TRITON_INTERPRET=1), which is slow: its shapes stay small, and a few cases force
small blocks and several K-splits so that the online softmax and the split merge are crossed.
"""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastdino.dataloading import AugmentationSpec
from fastdino.kernels.loss import (
    DINOLoss,
    _torch_forward,
    _triton_backward,
    _triton_forward,
    _triton_row_stats,
    dino_loss,
)
from fastdino.kernels.reference import reference_center_update, reference_dino_loss
from torch import nn

from fastdino.run_config import load_config
from fastdino.train import build_training

BACKENDS = ["torch", "triton"]
# (B images, V = ncrops, G = n_global, K): odd K, G = 1, 2, 3, and V == G (no local view).
SHAPES = [(3, 4, 2, 401), (2, 5, 3, 1271), (3, 3, 1, 64), (2, 2, 2, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (atol, rtol) of the student gradient per input dtype: bf16/fp16 gradients are rounded once from fp32 on
# both sides, so they may differ by one unit in the last place.
GRAD_TOL = {torch.float32: (1e-6, 1e-4), torch.bfloat16: (1e-3, 1.6e-2), torch.float16: (1e-5, 2e-3)}
LOSS_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}  # the loss is fp32 in all cases


def _inputs(batch, views, n_global, k, dtype=torch.float32, spread=1.0):
    student = (torch.randn(views * batch, k) * spread).to(dtype)
    teacher = (torch.randn(n_global * batch, k) * spread).to(dtype)
    center = torch.randn(1, k) * 0.3
    return student, teacher, center


def _reference(student, teacher, center, views, n_global, student_temp=0.1, teacher_temp=0.04, scale=1.0):
    leaf = student.clone().requires_grad_()
    loss = reference_dino_loss(leaf, teacher, center, ncrops=views, n_global=n_global, student_temp=student_temp,
                               teacher_temp=teacher_temp)
    (loss * scale).backward()
    return loss.detach(), leaf.grad


def _fast(student, teacher, center, views, n_global, backend, scale=1.0, **kwargs):
    """The fast loss on a non-leaf copy of `student` (like a head's output), the gradient in place unless the
    caller passes inplace=False; returns (loss, gradient with respect to student)."""
    leaf = student.clone().requires_grad_()
    kwargs.setdefault("inplace", True)  # the trainer's path
    loss = dino_loss(leaf.clone(), teacher, center, ncrops=views, n_global=n_global, backend=backend, **kwargs)
    (loss * scale).backward()
    return loss.detach(), leaf.grad


def _close(actual, expected, atol, rtol):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def _cases():
    for shape in SHAPES:
        for dtype in DTYPES:
            yield pytest.param("torch", shape, dtype, id=f"torch-{shape}-{str(dtype)[6:]}")
            # The interpreter is slow: every shape in fp32, the half types on two shapes.
            if dtype == torch.float32 or shape in SHAPES[:2]:
                yield pytest.param("triton", shape, dtype, id=f"triton-{shape}-{str(dtype)[6:]}")


@pytest.mark.parametrize("backend,shape,dtype", list(_cases()))
def test_loss_and_gradient_match_reference(backend, shape, dtype):
    batch, views, n_global, k = shape
    student, teacher, center = _inputs(batch, views, n_global, k, dtype)
    ref_loss, ref_grad = _reference(student, teacher, center, views, n_global)
    loss, grad = _fast(student, teacher, center, views, n_global, backend)
    assert loss.dtype == torch.float32 and loss.shape == ()
    _close(loss, ref_loss, LOSS_TOL[dtype], LOSS_TOL[dtype])
    assert grad.dtype == dtype
    _close(grad, ref_grad, *GRAD_TOL[dtype])


@pytest.mark.parametrize("block_size,n_splits", [(64, 3), (128, 2), (32, 16)])
def test_triton_blocks_and_splits(block_size, n_splits):
    """Several column blocks per program and several programs per image (the split merge), including more
    splits asked for than there are blocks."""
    batch, views, n_global, k = 2, 4, 2, 401
    student, teacher, center = _inputs(batch, views, n_global, k)
    ref_loss, ref_grad = _reference(student, teacher, center, views, n_global)
    grad, colsum = torch.empty_like(student), torch.empty(k)
    loss = _triton_forward(student, teacher, center, grad, colsum, ncrops=views, n_global=n_global,
                           student_temp=0.1, teacher_temp=0.04, block_size=block_size, n_splits=n_splits)
    _close(loss, ref_loss, 1e-5, 1e-5)
    _close(grad, ref_grad, *GRAD_TOL[torch.float32])
    _close(colsum, teacher.sum(0), 1e-5, 1e-5)


@pytest.mark.parametrize("block_size,n_splits", [(64, 3), (32, 16)])
def test_triton_fp16_deferred_gradient_across_blocks_and_splits(block_size, n_splits):
    """The fp16 path: the forward saves merged row statistics (split merge included), the backward kernel writes
    grad_output x gradient over several blocks and splits, in place into the logits."""
    batch, views, n_global, k = 2, 5, 3, 401
    student, teacher, center = _inputs(batch, views, n_global, k, torch.float16)
    ref_loss, ref_grad = _reference(student, teacher, center, views, n_global, scale=1024.0)  # finite in fp16
    kw = dict(ncrops=views, n_global=n_global, student_temp=0.1, teacher_temp=0.04, block_size=block_size,
              n_splits=n_splits)
    row_stats = _triton_row_stats(student, views, n_global)
    logits = student.clone()
    loss = _triton_forward(logits, teacher, center, None, None, row_stats, **kw)
    _close(loss, ref_loss, 1e-5, 1e-5)
    assert torch.equal(logits, student)
    _triton_backward(logits, teacher, center, row_stats, logits, torch.tensor(1024.0), **kw)
    assert torch.isfinite(logits).all()
    _close(logits, ref_grad, 1e-4, 2e-3)


def test_torch_chunks_cross_the_batch(monkeypatch):
    """The torch path walks the batch in chunks of images: a chunk size that leaves a remainder."""
    import fastdino.kernels.loss as module

    monkeypatch.setitem(module._TORCH_CHUNK_ELEMENTS, "cpu", 3 * 4 * 401)  # 3 images of 4 views per chunk
    batch, views, n_global, k = 7, 4, 2, 401
    student, teacher, center = _inputs(batch, views, n_global, k)
    ref_loss, ref_grad = _reference(student, teacher, center, views, n_global)
    grad, colsum = torch.empty_like(student), torch.empty(k)
    loss = _torch_forward(student, teacher, center, grad, colsum, ncrops=views, n_global=n_global,
                          student_temp=0.1, teacher_temp=0.04)
    _close(loss, ref_loss, 1e-5, 1e-5)
    _close(grad, ref_grad, *GRAD_TOL[torch.float32])
    _close(colsum, teacher.sum(0), 1e-5, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaled_loss_scales_the_gradient(backend):
    """grad_output != 1 (a loss weight, or GradScaler): the saved gradient is multiplied in the backward."""
    student, teacher, center = _inputs(2, 4, 2, 401)
    _, ref_grad = _reference(student, teacher, center, 4, 2)
    _, grad = _fast(student, teacher, center, 4, 2, backend, scale=3.5)
    _close(grad, 3.5 * ref_grad, 1e-6, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_and_temperatures(backend):
    """Logits far apart (exp underflows for most columns) and other temperatures."""
    student, teacher, center = _inputs(2, 3, 2, 300, spread=8.0)
    ref_loss, ref_grad = _reference(student, teacher, center, 3, 2, student_temp=0.2, teacher_temp=0.07)
    loss, grad = _fast(student, teacher, center, 3, 2, backend, student_temp=0.2, teacher_temp=0.07)
    _close(loss, ref_loss, 1e-4, 1e-5)
    _close(grad, ref_grad, 1e-6, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_written_in_place_into_an_intermediate(backend):
    student, teacher, center = _inputs(2, 4, 2, 201)
    _, ref_grad = _reference(student, teacher, center, 4, 2)
    leaf = student.clone().requires_grad_()
    head_out = leaf * 1.0  # an intermediate that owns its memory, like a head's output
    version = head_out._version
    loss = dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=True)
    assert head_out._version > version
    _close(head_out.detach(), ref_grad, 1e-6, 1e-4)  # the logits now hold the gradient
    loss.backward()
    _close(leaf.grad, ref_grad, 1e-6, 1e-4)
    assert torch.equal(leaf.detach(), student)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_kept_when_not_in_place(backend):
    """inplace=False leaves the logits untouched; so do a leaf, a view and a no-grad call with inplace=True."""
    student, teacher, center = _inputs(2, 4, 2, 201)
    _, ref_grad = _reference(student, teacher, center, 4, 2)
    leaf = student.clone().requires_grad_()
    head_out = leaf * 1.0
    dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=False).backward()
    assert torch.equal(head_out.detach(), student)
    _close(leaf.grad, ref_grad, 1e-6, 1e-4)

    dino_loss(leaf, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=True).backward()
    assert torch.equal(leaf.detach(), student)
    _close(leaf.grad, 2 * ref_grad, 1e-6, 1e-4)

    wide = torch.cat([student, student], 1).requires_grad_()
    view = (wide * 1.0)[:, :201]
    dino_loss(view, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=True).backward()
    assert torch.equal(view.detach(), student)
    _close(wide.grad[:, :201], ref_grad, 1e-6, 1e-4)
    assert torch.count_nonzero(wide.grad[:, 201:]) == 0

    with torch.no_grad():
        loss = dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=True)
    assert torch.equal(head_out.detach(), student)
    _close(loss, reference_dino_loss(student, teacher, center, ncrops=4, n_global=2), 1e-5, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_is_caught_when_the_logits_are_needed_elsewhere(backend):
    """An op that saved the logits for its own backward must raise, not compute a wrong gradient."""
    student, teacher, center = _inputs(2, 3, 1, 65)
    leaf = student.clone().requires_grad_()
    logits = leaf.exp()  # exp saves its output for the backward
    loss = dino_loss(logits, teacher, center, ncrops=3, n_global=1, backend=backend, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_backward_twice_is_an_error():
    student, teacher, center = _inputs(2, 3, 1, 65)
    leaf = student.clone().requires_grad_()
    loss = dino_loss(leaf, teacher, center, ncrops=3, n_global=1, backend="torch")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """A transposed student (column stride != 1), a column slice of a wider teacher, a [K] centre."""
    batch, views, n_global, k = 2, 4, 2, 201
    student, teacher, center = _inputs(batch, views, n_global, k)
    ref_loss, ref_grad = _reference(student, teacher, center, views, n_global)
    leaf = student.t().contiguous().t().requires_grad_()
    wide_teacher = torch.cat([teacher, torch.randn_like(teacher)], 1)[:, :k]
    assert leaf.stride(-1) != 1 and not wide_teacher.is_contiguous()
    loss = dino_loss(leaf * 1.0, wide_teacher, center.view(-1), ncrops=views, n_global=n_global, backend=backend)
    loss.backward()
    _close(loss, ref_loss, 1e-5, 1e-5)
    _close(leaf.grad, ref_grad, 1e-6, 1e-4)


def _reference_run(student_steps, teacher_steps, schedule, epochs, views, n_global, momentum):
    """The original DINO module's behaviour, step by step: loss with the current centre, then the update."""
    center = torch.zeros(1, student_steps[0].shape[1])
    losses, centers = [], []
    for student, teacher, epoch in zip(student_steps, teacher_steps, epochs, strict=True):
        losses.append(reference_dino_loss(student, teacher, center, ncrops=views, n_global=n_global,
                                          teacher_temp=float(schedule[epoch])))
        center = reference_center_update(center, teacher, momentum)
        centers.append(center)
    return losses, centers


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_module_centre_and_loss_over_steps(backend):
    batch, views, n_global, k = 2, 5, 3, 129
    module = DINOLoss(k, views, 0.04, 0.07, 2, 4, center_momentum=0.8, n_global=n_global, backend=backend)
    students = [torch.randn(views * batch, k) for _ in range(4)]
    teachers = [torch.randn(n_global * batch, k) + 0.5 * i for i in range(4)]  # a drifting mean
    epochs = [0, 1, 2, 3]
    schedule = np.concatenate((np.linspace(0.04, 0.07, 2), np.ones(2) * 0.07))  # the original DINO schedule
    ref_losses, ref_centers = _reference_run(students, teachers, schedule, epochs, views, n_global, 0.8)
    steps = zip(students, teachers, epochs, ref_losses, ref_centers, strict=True)
    for student, teacher, epoch, ref_loss, ref_center in steps:
        loss = module(student.clone().requires_grad_(), teacher, epoch)
        _close(loss, ref_loss, 1e-5, 1e-5)
        _close(module.center, ref_center, 1e-6, 1e-5)
    assert module.center.shape == (1, k)


def test_teacher_temperature_schedule():
    module = DINOLoss(16, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, nepochs=5)
    expected = [0.04, 0.055, 0.07, 0.07, 0.07]
    assert [module.teacher_temp(e) for e in range(5)] == pytest.approx(expected)
    assert module.teacher_temp(np.int64(1)) == pytest.approx(0.055)
    student, teacher = torch.randn(8, 16), torch.randn(4, 16)
    for epoch in range(5):
        module.center.zero_()
        expected_loss = reference_dino_loss(student, teacher, torch.zeros(1, 16), ncrops=4,
                                            teacher_temp=expected[epoch])
        _close(module(student, teacher, epoch), expected_loss, 1e-5, 1e-5)
    with pytest.raises(ValueError, match=r"epoch 5 is outside the teacher temperature schedule \(epochs 0 to 4\)"):
        module(student, teacher, 5)


def test_state_dict_is_the_original_dinos():
    module = DINOLoss(65, 4, 0.04, 0.04, 0, 10)
    assert list(module.state_dict()) == ["center"] and module.center.shape == (1, 65)
    original = {"center": torch.randn(1, 65)}  # what the original DINOLoss saves
    module.load_state_dict(original)
    assert torch.equal(module.center, original["center"])


@pytest.mark.parametrize("call,message", [
    (lambda: dino_loss(torch.randn(10, 8), torch.randn(4, 8), torch.zeros(1, 8), ncrops=4),
     "student_output has 10 rows, not divisible by ncrops=4"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(5, 8), torch.zeros(1, 8), ncrops=4),
     "teacher_output has 5 rows, not divisible by n_global=2"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(6, 8), torch.zeros(1, 8), ncrops=4),
     "batch sizes differ: student_output has 8 rows = 4 crops x 2 images, teacher_output has 6 rows"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(4, 9), torch.zeros(1, 8), ncrops=4),
     r"mismatched K \(out_dim\): student_output has 8 columns, teacher_output 9, center 8"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(4, 8), torch.zeros(1, 7), ncrops=4),
     "mismatched K .* center 7 values"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(8, 8), torch.zeros(1, 8), ncrops=2, n_global=4),
     "n_global <= ncrops .* got ncrops=2, n_global=4"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(8, 8), torch.zeros(1, 8), ncrops=1, n_global=1),
     "ncrops >= 2"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(4, 8), torch.zeros(1, 8), ncrops=4, teacher_temp=float("nan")),
     "teacher_temp must be a finite temperature > 0, got nan"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(4, 8), torch.zeros(1, 8), ncrops=4, student_temp=math.inf),
     "student_temp must be a finite temperature > 0, got inf"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(4, 8), torch.zeros(1, 8), ncrops=4, student_temp=0.0),
     "student_temp must be a finite temperature > 0, got 0.0"),
    (lambda: dino_loss(torch.randn(8), torch.randn(4, 8), torch.zeros(1, 8), ncrops=4),
     r"must be 2-D \[rows, K\], got shapes \(8,\) and \(4, 8\)"),
    (lambda: dino_loss(torch.randn(8, 8), torch.randn(4, 8), torch.zeros(1, 8), ncrops=4, backend="cuda"),
     "backend must be one of"),
    (lambda: DINOLoss(8, 4, 0.04, float("inf"), 0, 10), "teacher_temp must be a finite temperature"),
    (lambda: DINOLoss(8, 4, 0.04, 0.04, 0, 10, n_global=5), "got ncrops=4, n_global=5"),
    (lambda: DINOLoss(8, 4, 0.04, 0.04, 0, 10, backend="fast"), "backend must be one of"),
])
def test_errors_name_the_sizes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _distributed_worker(rank, world_size, init_file, result_file, student, teacher):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        batch = student.shape[0] // 4
        half = batch // world_size
        rows = slice(rank * half, (rank + 1) * half)
        # This rank's images: the same slice of every view.
        my_student = student.view(4, batch, -1)[:, rows].reshape(4 * half, -1)
        my_teacher = teacher.view(2, batch, -1)[:, rows].reshape(2 * half, -1)
        module = DINOLoss(student.shape[1], 4, 0.04, 0.04, 0, 3, backend="torch")
        losses = [module(my_student, my_teacher + step, step) for step in range(2)]
        torch.save({"center": module.center, "losses": losses}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_distributed_centre_equals_one_process_with_the_whole_batch(tmp_path):
    batch, k = 4, 97
    student, teacher = torch.randn(4 * batch, k), torch.randn(2 * batch, k)
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result"), student, teacher),
             nprocs=2, join=True)
    single = DINOLoss(k, 4, 0.04, 0.04, 0, 3, backend="torch")
    full_losses = [single(student, teacher + step, step) for step in range(2)]
    results = [torch.load(tmp_path / f"result.{rank}") for rank in range(2)]
    for result in results:
        _close(result["center"], single.center, 1e-6, 1e-5)
    for step in range(2):  # equal shares: the mean of the ranks' losses is the whole batch's loss
        _close((results[0]["losses"][step] + results[1]["losses"][step]) / 2, full_losses[step], 1e-5, 1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 8, 2, 65536), (16, 10, 3, 1271), (8, 2, 2, 401), (5, 4, 1, 65537)])
def test_cuda_triton_matches_reference(shape, dtype):
    batch, views, n_global, k = shape
    student, teacher, center = (t.cuda() for t in _inputs(batch, views, n_global, k, dtype))
    ref_loss, ref_grad = _reference(student, teacher, center, views, n_global)
    loss, grad = _fast(student, teacher, center, views, n_global, "auto", scale=2.0)
    _close(loss, ref_loss, 1e-4, 1e-5)
    atol, rtol = GRAD_TOL[dtype]
    _close(grad, 2.0 * ref_grad, 2 * atol, rtol)


@pytest.mark.cuda
def test_cuda_module_centre_and_autocast():
    batch, views, n_global, k = 32, 8, 2, 65536
    module = DINOLoss(k, views, 0.04, 0.07, 2, 4).cuda()
    center = torch.zeros(1, k, device="cuda")
    for epoch in range(3):
        student = torch.randn(views * batch, k, device="cuda", dtype=torch.bfloat16)
        teacher = torch.randn(n_global * batch, k, device="cuda", dtype=torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module(student.clone().requires_grad_(), teacher, epoch)
        ref = reference_dino_loss(student, teacher, center, ncrops=views, teacher_temp=module.teacher_temp(epoch))
        center = reference_center_update(center, teacher, 0.9)
        _close(loss, ref, 1e-4, 1e-5)
        _close(module.center, center, 1e-5, 1e-5)


# ----------------------------------------------------------------------------------------------------
# fp16: DINO's default (--use_fp16 true, facebookresearch/dino main_dino.py L78): the head's logits are fp16 under
# autocast and the loss is scaled before the backward (L337, `fp16_scaler.scale(loss).backward()`). The gradient the
# head receives must be the reference's: computed in fp32, multiplied by the incoming gradient, rounded to fp16 once.
# ----------------------------------------------------------------------------------------------------

FP16_SCALE = 2.0**16  # GradScaler's initial scale


def _head_like(batch, views, n_global, k, dtype, seed=0):
    """Logits like a DINO head's at K=65536 (std 0.06): each softmax entry is about 1/K, so the unscaled gradient
    entries are ~1e-7..1e-5, below fp16's smallest normal number (6.1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(views * batch, k, generator=gen) * 0.06).to(dtype)
    teacher = (torch.randn(n_global * batch, k, generator=gen) * 0.06).to(dtype)
    center = torch.randn(1, k, generator=gen) * 0.01
    return student, teacher, center


def _fp16_gradient_report(grad, ref_grad, exact):
    """(zero entries, relative error against the exact fp32 gradient) of an fp16 gradient and of the reference's."""
    rel = lambda g: ((g.float() - exact).norm() / exact.norm()).item()  # noqa: E731
    return (int((grad == 0).sum()), rel(grad)), (int((ref_grad == 0).sum()), rel(ref_grad))


@pytest.mark.parametrize("backend,shape", [
    ("torch", (32, 10, 2, 65536)),  # the case: B=32, 2+8 views, K=65536
    ("torch", (3, 5, 3, 40001)),
    ("triton", (2, 4, 2, 65536)),  # the interpreter is slow: fewer rows, same K
    ("triton", (2, 5, 3, 20001)),
])
def test_fp16_gradient_under_a_loss_scale(backend, shape):
    batch, views, n_global, k = shape
    student, teacher, center = _head_like(batch, views, n_global, k, torch.float16)
    _, ref_grad = _reference(student, teacher, center, views, n_global, scale=FP16_SCALE)
    _, exact = _reference(student.float(), teacher, center, views, n_global, scale=FP16_SCALE)
    _, grad = _fast(student, teacher, center, views, n_global, backend, scale=FP16_SCALE)
    assert grad.dtype == torch.float16
    (zeros, rel), (ref_zeros, ref_rel) = _fp16_gradient_report(grad, ref_grad, exact)
    # Before the fix (gradient rounded to fp16 in the forward, scaled afterwards) the case had 1.1 M zeros
    # where the reference has 18 and a 1.6e-2 relative error; both now equal the reference's rounding.
    assert zeros <= ref_zeros + 2, (zeros, ref_zeros)
    assert rel <= 1.05 * ref_rel + 1e-6, (rel, ref_rel)
    _close(grad, ref_grad, 1e-6 * FP16_SCALE * 1e-3, 2e-3)  # within an fp16 rounding of the reference


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_autocast_step_with_grad_scaler(backend):
    """What run.precision=fp16 does in fastdino/train.py (and DINO's --use_fp16): the head runs under fp16 autocast,
    GradScaler scales the loss, unscale_ recovers the head's true gradient. Same as with the reference loss."""
    batch, views, n_global, k, dim = 2, 4, 2, 65536, 16

    def head_gradients(loss_fn):
        torch.manual_seed(1)
        head = nn.Linear(dim, k, bias=False)
        feats = torch.randn(views * batch, dim) * 0.1  # logits of std ~0.06, like a DINO head's
        teacher = (torch.randn(n_global * batch, k) * 0.06).half()
        center = torch.randn(1, k) * 0.01
        optimizer = torch.optim.SGD(head.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=FP16_SCALE)
        captured = {}
        with torch.autocast("cpu", dtype=torch.float16):
            logits = head(feats)
            assert logits.dtype == torch.float16
            logits.register_hook(lambda g: captured.setdefault("grad", g.clone()))
            loss = loss_fn(logits, teacher, center)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        return captured["grad"], head.weight.grad

    ref_logit_grad, ref_weight_grad = head_gradients(
        lambda s, t, c: reference_dino_loss(s, t, c, ncrops=views, n_global=n_global))
    logit_grad, weight_grad = head_gradients(
        lambda s, t, c: dino_loss(s, t, c, ncrops=views, n_global=n_global, backend=backend))
    assert int((logit_grad == 0).sum()) <= int((ref_logit_grad == 0).sum()) + 2
    _close(logit_grad, ref_logit_grad, 1e-3, 2e-3)  # scaled gradients, ~1e-1 here
    _close(weight_grad, ref_weight_grad, 1e-7, 2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_when_the_gradient_is_written(backend, dtype):
    """bf16/fp32 (unchanged): the gradient is written into the logits during the forward and the backward multiplies
    it by grad_output exactly as `grad.mul_(grad_output)` does. fp16: the logits are kept until the backward, which
    writes grad_output times the fp32 gradient, rounded once."""
    student, teacher, center = _inputs(2, 4, 2, 201, dtype)
    _, ref_grad = _reference(student, teacher, center, 4, 2, scale=3.5)
    leaf = student.clone().requires_grad_()
    head_out = leaf * 1.0
    loss = dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=True)
    after_forward = head_out.detach().clone()
    (loss * 3.5).backward()
    if dtype == torch.float16:
        assert torch.equal(after_forward, student)  # still the logits
        assert torch.equal(head_out.detach(), leaf.grad)  # the gradient went into their memory in the backward
        _close(leaf.grad, ref_grad, 1e-6, 2e-3)
    else:
        assert not torch.equal(after_forward, student)
        expected = after_forward.mul_(torch.tensor(3.5))
        if backend == "triton" and dtype == torch.bfloat16:
            _close(leaf.grad, expected, 0, 2**-7)  # the interpreter truncates to bf16 (a GPU rounds, like torch)
        else:
            assert torch.equal(leaf.grad, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_backward_reads_nothing_on_the_host(dtype, monkeypatch):
    """The backward must not sync host and device (it used to test grad_output == 1 with torch.equal): every way of
    reading a tensor's value on the host raises while it runs."""
    student, teacher, center = _inputs(2, 4, 2, 201, dtype)
    _, ref_grad = _reference(student, teacher, center, 4, 2, scale=2.0)
    leaf = student.clone().requires_grad_()
    loss = dino_loss(leaf * 1.0, teacher, center, ncrops=4, n_global=2, backend="triton")

    def host_read(*args, **kwargs):
        raise AssertionError("the loss's backward read a tensor's value on the host (a device sync on CUDA)")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, name, host_read)
        m.setattr(torch, "equal", host_read)
        (loss * 2.0).backward()
    _close(leaf.grad, ref_grad, *GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_results_are_bitwise_repeatable(dtype):
    """Loss, gradient and centre statistics are the same bit for bit on every run (the centre's column sum used float
    atomics, whose order changes from run to run on a GPU); several splits per image, so the split merge is used."""
    batch, views, n_global, k = 3, 5, 2, 301
    student, teacher, center = _inputs(batch, views, n_global, k, dtype)

    def run():
        grad, colsum = torch.empty_like(student), torch.empty(k)
        loss = _triton_forward(student, teacher, center, grad, colsum, ncrops=views, n_global=n_global,
                               student_temp=0.1, teacher_temp=0.04, block_size=32, n_splits=4)
        module = DINOLoss(k, views, 0.04, 0.04, 0, 2, backend="triton")
        leaf = student.clone().requires_grad_()
        (module(leaf * 1.0, teacher, 0) * 3.0).backward()
        return loss, grad, colsum, leaf.grad, module.center

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    _close(first[2], teacher.float().sum(0), 1e-5, 1e-5)
    _close(first[4], 0.1 * teacher.float().mean(0, keepdim=True), 1e-6, 1e-5)


# ----------------------------------------------------------------------------------------------------
# The constructors of the original code
# ----------------------------------------------------------------------------------------------------


def test_dino_positional_signature():
    """facebookresearch/dino main_dino.py L364-366: DINOLoss(out_dim, ncrops, warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs, nepochs, student_temp=0.1, center_momentum=0.9)."""
    names = list(inspect.signature(DINOLoss).parameters)[:8]
    assert names == ["out_dim", "ncrops", "warmup_teacher_temp", "teacher_temp", "warmup_teacher_temp_epochs",
                     "nepochs", "student_temp", "center_momentum"]
    module = DINOLoss(65, 6, 0.04, 0.07, 3, 10, 0.2, 0.8)
    assert (module.student_temp, module.center_momentum, module.ncrops, module.n_global) == (0.2, 0.8, 6, 2)


def test_dino_mc_keyword_teacher_crops_number():
    """WennyXY/DINO-MC main_dino_mc.py L269-277 builds the loss with `teacher_crops_number=args.global_crops_number`
    (its constructor, L420-422, takes it after nepochs) and its forward chunks the teacher output into that many
    views (L447): the same as n_global."""
    batch, views, k = 2, 9, 129
    mc = DINOLoss(k, views, 0.04, 0.07, 2, 4, teacher_crops_number=3, backend="torch")
    ours = DINOLoss(k, views, 0.04, 0.07, 2, 4, n_global=3, backend="torch")
    assert mc.n_global == 3
    center = torch.zeros(1, k)
    for epoch in range(3):
        student, teacher = torch.randn(views * batch, k), torch.randn(3 * batch, k) + epoch
        loss_mc, loss_ours = mc(student.clone(), teacher, epoch), ours(student.clone(), teacher, epoch)
        assert torch.equal(loss_mc, loss_ours)
        assert torch.equal(mc.center, ours.center)
        expected = reference_dino_loss(student, teacher, center, ncrops=views, n_global=3,
                                       teacher_temp=ours.teacher_temp(epoch))
        _close(loss_mc, expected, 1e-5, 1e-5)
        center = reference_center_update(center, teacher, 0.9)
    assert DINOLoss(k, views, 0.04, 0.07, 2, 4, teacher_crops_number=2, n_global=2).n_global == 2
    with pytest.raises(ValueError, match="teacher_crops_number=3 and n_global=2 disagree"):
        DINOLoss(k, views, 0.04, 0.07, 2, 4, n_global=2, teacher_crops_number=3)
    with pytest.raises(ValueError, match=r"1 <= n_global <= ncrops .* got ncrops=9, n_global=10"):
        DINOLoss(k, views, 0.04, 0.07, 2, 4, teacher_crops_number=10)


def test_teacher_temperature_schedule_is_the_trainers():
    """kernels/ keeps its own copy of DINO's per-epoch schedule (it imports nothing of fastdino): the same numbers as
    fastdino.schedules, which the trainer uses."""
    from fastdino.kernels.loss import teacher_temp_schedule as in_kernels

    from fastdino.schedules import teacher_temp_schedule as in_trainer

    for args in [(0.04, 0.07, 30, 100), (0.04, 0.04, 0, 10), (0.02, 0.07, 5, 5), (0.04, 0.07, 3, 1)]:
        assert np.array_equal(in_kernels(*args), in_trainer(*args))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_scaled_backward_is_sync_free_and_repeatable(dtype):
    """On the GPU: no host-device sync in the backward (torch's sync debug mode raises on one), the same bits on every
    run (no float atomics), and for fp16 the reference's gradient under DINO's loss scale."""
    batch, views, n_global, k = 32, 10, 2, 65536
    student, teacher, center = (t.cuda() for t in _head_like(batch, views, n_global, k, dtype))
    _, ref_grad = _reference(student, teacher, torch.zeros_like(center), views, n_global, scale=FP16_SCALE)
    runs = []
    for _ in range(2):
        module = DINOLoss(k, views, 0.04, 0.04, 0, 1).cuda()
        leaf = student.clone().requires_grad_()
        loss = module(leaf * 1.0, teacher, 0)
        torch.cuda.set_sync_debug_mode("error")
        try:
            (loss * FP16_SCALE).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runs.append((loss.detach(), leaf.grad, module.center.clone()))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    grad = runs[0][1]
    if dtype == torch.float16:
        assert int((grad == 0).sum()) <= int((ref_grad == 0).sum()) + 4
        _close(grad, ref_grad, 1e-6 * FP16_SCALE * 1e-3, 2e-3)
    else:
        _close(grad, ref_grad, 1e-5, 1.6e-2)  # entries ~2e-2 here; bf16 keeps fp32's range, so only its rounding


# ----------------------------------------------------------------------------------------------------
# A drop-in has no side effects by default
# ----------------------------------------------------------------------------------------------------


def _entropy(logits: torch.Tensor, temp: float = 0.1) -> torch.Tensor:
    """The mean entropy of the student's softmax: what a training loop may log from the logits after the loss."""
    p = torch.softmax(logits.detach().float() / temp, -1)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_module_leaves_the_callers_logits_alone_by_default(backend):
    """Code that reads the student logits after the loss (an entropy log, a second loss) gets the logits, not the
    gradient, unless it opted in with inplace=True."""
    student, teacher, center = _inputs(2, 4, 2, 201)
    _, ref_grad = _reference(student, teacher, torch.zeros(1, 201), 4, 2)
    leaf = student.clone().requires_grad_()
    head_out = leaf * 1.0  # an intermediate that owns its memory, like a head's output
    module = DINOLoss(201, 4, 0.04, 0.04, 0, 1, backend=backend)
    loss = module(head_out, teacher, 0)
    assert torch.equal(head_out.detach(), student)
    torch.testing.assert_close(_entropy(head_out), _entropy(student), rtol=0, atol=0)
    loss.backward()
    assert torch.equal(head_out.detach(), student)
    _close(leaf.grad, ref_grad, *GRAD_TOL[torch.float32])

    functional_out = leaf * 1.0
    dino_loss(functional_out, teacher, center, ncrops=4, n_global=2, backend=backend).backward()
    assert torch.equal(functional_out.detach(), student)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_both_inplace_settings_give_the_reference_gradient(backend, dtype, inplace):
    student, teacher, center = _inputs(2, 4, 2, 201, dtype)
    ref_loss, ref_grad = _reference(student, teacher, center, 4, 2, scale=2.0)
    loss, grad = _fast(student, teacher, center, 4, 2, backend, scale=2.0, inplace=inplace)
    _close(loss, ref_loss, LOSS_TOL[dtype], LOSS_TOL[dtype])
    _close(grad, ref_grad, *GRAD_TOL[dtype])


def test_dino_mc_positional_teacher_crops_number_is_a_type_error():
    """WennyXY/DINO-MC's DINOLoss takes teacher_crops_number 7th (main_dino_mc.py L420-422), DINO's takes student_temp
    there (main_dino.py L364-366): a DINO-MC-shaped positional call must not become student_temp=3."""
    with pytest.raises(TypeError, match=r"student_temp=3 .*DINO-MC.*teacher_crops_number=3"):
        DINOLoss(65, 8, 0.04, 0.04, 0, 100, 3)
    with pytest.raises(TypeError, match=r"student_temp=1\.5 .*teacher_crops_number="):
        DINOLoss(65, 8, 0.04, 0.04, 0, 100, 1.5)
    with pytest.raises(TypeError, match=r"student_temp=1 "):
        DINOLoss(65, 8, 0.04, 0.04, 0, 100, student_temp=1)
    mc = DINOLoss(65, 8, 0.04, 0.04, 0, 100, teacher_crops_number=3)
    assert (mc.n_global, mc.student_temp) == (3, 0.1)
    assert DINOLoss(65, 8, 0.04, 0.04, 0, 100, 1.0).student_temp == 1.0  # a float temperature of 1 is a temperature


def test_the_trainer_opts_in_to_the_in_place_gradient():
    """fastdino's step reads nothing from the student logits after the loss, so it saves their gradient buffer."""
    config = load_config("tiny", overrides={"model": {"depth": 1, "out_dim": 64, "hidden_dim": 32,
                                                      "bottleneck_dim": 16}})
    spec = AugmentationSpec.from_dict(config.augment)
    training = build_training(config, torch.device("cpu"), n_global=spec.n_global, n_views=spec.n_views)
    assert training.dino_loss.inplace is True
    assert DINOLoss(64, spec.n_views, 0.04, 0.04, 0, 1).inplace is False
