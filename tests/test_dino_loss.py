"""The fused DINO loss (fastdino.kernels.loss) against the readable reference (kernels/reference.py).

Every fast backend gets fresh random inputs and must match `reference_dino_loss` (loss and student gradient)
and `reference_center_update` (the centre). The triton backend runs through the Triton interpreter on CPU
(the root conftest sets TRITON_INTERPRET=1), which is slow: its shapes stay small, and a few cases force
small blocks and several K-splits so that the online softmax and the split merge are crossed.
"""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastdino.kernels.loss import DINOLoss, _torch_forward, _triton_forward, dino_loss
from fastdino.kernels.reference import reference_center_update, reference_dino_loss

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


def _reference(student, teacher, center, views, n_global, student_temp=0.1, teacher_temp=0.04):
    leaf = student.clone().requires_grad_()
    loss = reference_dino_loss(leaf, teacher, center, ncrops=views, n_global=n_global, student_temp=student_temp,
                               teacher_temp=teacher_temp)
    loss.backward()
    return loss.detach(), leaf.grad


def _fast(student, teacher, center, views, n_global, backend, scale=1.0, **kwargs):
    """The fast loss on a non-leaf copy of `student` (like a head's output, so the gradient goes in place);
    returns (loss, gradient with respect to student)."""
    leaf = student.clone().requires_grad_()
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
    loss = dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend)
    assert head_out._version > version
    _close(head_out.detach(), ref_grad, 1e-6, 1e-4)  # the logits now hold the gradient
    loss.backward()
    _close(leaf.grad, ref_grad, 1e-6, 1e-4)
    assert torch.equal(leaf.detach(), student)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_kept_when_not_in_place(backend):
    """inplace=False, a leaf, a view and a no-grad call leave the logits untouched."""
    student, teacher, center = _inputs(2, 4, 2, 201)
    _, ref_grad = _reference(student, teacher, center, 4, 2)
    leaf = student.clone().requires_grad_()
    head_out = leaf * 1.0
    dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend, inplace=False).backward()
    assert torch.equal(head_out.detach(), student)
    _close(leaf.grad, ref_grad, 1e-6, 1e-4)

    dino_loss(leaf, teacher, center, ncrops=4, n_global=2, backend=backend).backward()
    assert torch.equal(leaf.detach(), student)
    _close(leaf.grad, 2 * ref_grad, 1e-6, 1e-4)

    wide = torch.cat([student, student], 1).requires_grad_()
    view = (wide * 1.0)[:, :201]
    dino_loss(view, teacher, center, ncrops=4, n_global=2, backend=backend).backward()
    assert torch.equal(view.detach(), student)
    _close(wide.grad[:, :201], ref_grad, 1e-6, 1e-4)
    assert torch.count_nonzero(wide.grad[:, 201:]) == 0

    with torch.no_grad():
        loss = dino_loss(head_out, teacher, center, ncrops=4, n_global=2, backend=backend)
    assert torch.equal(head_out.detach(), student)
    _close(loss, reference_dino_loss(student, teacher, center, ncrops=4, n_global=2), 1e-5, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_is_caught_when_the_logits_are_needed_elsewhere(backend):
    """An op that saved the logits for its own backward must raise, not compute a wrong gradient."""
    student, teacher, center = _inputs(2, 3, 1, 65)
    leaf = student.clone().requires_grad_()
    logits = leaf.exp()  # exp saves its output for the backward
    loss = dino_loss(logits, teacher, center, ncrops=3, n_global=1, backend=backend)
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
