"""Fused teacher EMA over flat parameter buffers.

After every optimiser step DINO moves the teacher towards the student:

    teacher <- m * teacher + (1 - m) * student        (m per iteration: cosine 0.996 -> 1,
                                                       fastdino.schedules.cosine_schedule(0.996, 1.0, epochs, iters))

Parameters only, as DINO's loop (main_dino.py L346-350: `zip(student.module.parameters(),
teacher_without_ddp.parameters())`): a BatchNorm teacher keeps the running statistics of its own train-mode
forwards. `buffers="copy"` copies the student's floating-point buffers into the teacher instead, and
`buffers="average"` moves them by the same EMA (integer buffers such as `num_batches_tracked` are never touched).
The original code (`reference.reference_ema_update`) loops over every parameter tensor: a few hundred
small kernels and temporaries per step. `FlatEMA` re-homes each model's floating-point parameters
into one contiguous buffer per (dtype, device), in the same order for both models, and turns every
parameter's `.data` into a view of it; the update is then one Triton kernel per buffer on CUDA and
a handful of torch ops per buffer elsewhere.

Rounding: every backend computes round(round(t * m) + round(s * (1 - m))) with m and 1 - m rounded
to fp32 (fp64 for fp64 buffers), exactly what the reference's `t.mul_(m).add_((1 - m) * s)` computes, so
fp32 results are bitwise equal to the reference (the Triton launch disables fma contraction for that
reason). For bf16/fp16 buffers the torch backend still matches the reference bitwise; the Triton kernel
does the arithmetic in fp32 and rounds once, so it is within an ulp or two of the reference (and closer
to the exact value). Under TRITON_INTERPRET=1 the final bf16 conversion truncates instead of rounding.

Usage contract (what the trainer relies on):
    teacher = copy.deepcopy(student)            # same architecture, on the same device and dtypes
    ema = FlatEMA(student, teacher)             # AFTER SyncBatchNorm conversion, BEFORE the optimiser and DDP
    student = DistributedDataParallel(student)  # optional
    optimizer = torch.optim.AdamW(...)          # ema.check_optimizer(optimizer) verifies it
    ... each step, after optimizer.step(): ema.update(momentum_schedule[it])
Moving or casting either model afterwards (`.to()`, `.half()`), assigning `param.data` or loading a
state dict with `assign=True` breaks the views; `update()` then raises instead of updating a stale copy.
"""

from __future__ import annotations

import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from torch import nn

from .reference import EMA_BUFFERS, reference_ema_update
from .utils import BACKENDS, interpreting, resolve_backend


@triton.jit
def _ema_kernel(T_ptr, S_ptr, n_elements, momentum, one_minus_momentum, BLOCK_SIZE: tl.constexpr):
    """One program per BLOCK_SIZE elements of the flat buffers: T <- momentum * T + (1 - momentum) * S."""
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    t = tl.load(T_ptr + offsets, mask=mask).to(tl.float32)
    s = tl.load(S_ptr + offsets, mask=mask).to(tl.float32)
    out = t * momentum + s * one_minus_momentum
    tl.store(T_ptr + offsets, out.to(T_ptr.dtype.element_ty), mask=mask)


def _settings() -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) of the EMA kernel. A streaming kernel: large blocks with 8 warps keep enough
    loads in flight to saturate HBM (the usual choice for memory-bound elementwise kernels; not yet tuned on
    an H100). The interpreter pays per program, so it gets fewer, larger blocks."""
    if interpreting():
        return 2**16, 4
    return 4096, 8


def ema_update_triton(teacher_flat: torch.Tensor, student_flat: torch.Tensor, momentum: float) -> None:
    """teacher_flat <- momentum * teacher_flat + (1 - momentum) * student_flat, in place, one kernel."""
    n = teacher_flat.numel()
    if n == 0:
        return
    block_size, num_warps = _settings()
    grid = (triton.cdiv(n, block_size),)
    # enable_fp_fusion=False: an fma would round t*m + s*w once and break bitwise equality with the reference
    _ema_kernel[grid](teacher_flat, student_flat, n, momentum, 1.0 - momentum, BLOCK_SIZE=block_size,
                      num_warps=num_warps, enable_fp_fusion=False)


# Elements per chunk: the chunk's temporary stays in cache, so memory sees one read of each buffer and one write
# of the teacher. CPU: 64K (three 256 KiB fp32 slices fit the 1 MiB L2 of the 2-core EPYC CI box; 32K-256K all
# measured alike). CUDA (backend="torch" forced): large chunks, few launches.
_TORCH_CHUNK = {"cpu": 2**16, "cuda": 2**24}
_NUMPY_DTYPES = (torch.float32, torch.float64)
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _cpu_workers() -> int:
    return max(1, torch.get_num_threads())


def _cpu_pool() -> ThreadPoolExecutor:
    """Threads for the NumPy path, one per torch intra-op thread; rebuilt in a forked child."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(_cpu_workers() - 1 or 1, thread_name_prefix="fastdino-ema"))
    return _POOL[1]


def ema_update_torch(teacher_flat: torch.Tensor, student_flat: torch.Tensor, momentum: float,
                     scratch: torch.Tensor) -> None:
    """The reference's three ops (s * (1 - m), t * m, their sum), chunk by chunk over the flat buffers.

    Three separate ops keep the reference's rounding exactly (lerp_ and add_(alpha=...) use another formula or
    an fma and differ in the last bit); chunking keeps the temporary in cache. `scratch`: a reusable buffer of
    the flat buffer's dtype and device, scratch_size() long."""
    if teacher_flat.device.type == "cpu" and teacher_flat.dtype in _NUMPY_DTYPES:
        _ema_update_numpy(teacher_flat.numpy(), student_flat.numpy(), scratch.numpy(), momentum)
        return
    chunk = scratch.numel()
    for start in range(0, teacher_flat.numel(), chunk):
        t = teacher_flat[start:start + chunk]
        tmp = scratch[:t.numel()]
        torch.mul(student_flat[start:start + chunk], 1.0 - momentum, out=tmp)
        t.mul_(momentum).add_(tmp)


def _ema_update_numpy(t_np: np.ndarray, s_np: np.ndarray, scratch: np.ndarray, momentum: float) -> None:
    """CPU fp32/fp64: the same three ops as NumPy ufuncs on zero-copy views, one contiguous span per thread.

    Every torch op opens an OpenMP region, and on a busy machine each region waits until all its threads are
    scheduled: chunked torch ops measured 20-40x slower than this on the shared 2-core box, while this runs at
    the speed of a plain copy. NumPy's IEEE multiply and add round exactly like torch's."""
    n, chunk = len(t_np), _TORCH_CHUNK["cpu"]
    spans = max(1, min(_cpu_workers(), len(scratch) // chunk, n // chunk))  # small buffers: one thread
    bounds = [n * i // spans for i in range(spans + 1)]
    tmps = np.split(scratch[:spans * (len(scratch) // spans)], spans)  # each span's own temporary
    futures = [_cpu_pool().submit(_ema_numpy_span, t_np, s_np, tmps[i], momentum, bounds[i], bounds[i + 1])
               for i in range(1, spans)]
    _ema_numpy_span(t_np, s_np, tmps[0], momentum, bounds[0], bounds[1])
    for f in futures:
        f.result()


def _ema_numpy_span(t_np, s_np, tmp_np, momentum: float, start: int, stop: int) -> None:
    m, w = t_np.dtype.type(momentum), t_np.dtype.type(1.0 - momentum)  # rounded like torch's scalar arguments
    for lo in range(start, stop, len(tmp_np)):
        t = t_np[lo:min(lo + len(tmp_np), stop)]
        tmp = tmp_np[:len(t)]
        np.multiply(s_np[lo:lo + len(t)], w, out=tmp)
        np.multiply(t, m, out=t)
        np.add(t, tmp, out=t)


def scratch_size(numel: int, device: torch.device) -> int:
    """Length of the scratch buffer ema_update_torch needs for a flat buffer of `numel` elements."""
    if device.type == "cpu":
        return max(1, min(numel, _TORCH_CHUNK["cpu"] * _cpu_workers()))
    return max(1, min(numel, _TORCH_CHUNK.get(device.type, _TORCH_CHUNK["cuda"])))


# Each parameter starts on a 64-byte boundary of its flat buffer: a CPU cache line, and enough for the
# 16-byte vector loads and cuBLAS alignment that kernels reading the parameter expect.
_ALIGN_BYTES = 64


@dataclass
class FlatGroup:
    """The flat buffers of one (dtype, device): parameter `names[i]` of each model is a view of the same
    elements of its model's buffer. `scratch`: the torch backend's temporary, allocated on first use."""
    dtype: torch.dtype
    device: torch.device
    names: list[str]
    student: torch.Tensor
    teacher: torch.Tensor
    backend: str
    scratch: torch.Tensor | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameters carry the plain names: DDP/DataParallel (`.module`) and torch.compile
    (`._orig_mod`) wrappers share the parameters of the module they wrap."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_twins(kind: str, student: list[tuple[str, torch.Tensor]], teacher: list[tuple[str, torch.Tensor]]) -> None:
    """Same names, in the same order, with the same shapes, dtypes and devices; no tensor shared."""
    s_names, t_names = [n for n, _ in student], [n for n, _ in teacher]
    if s_names != t_names:
        only_s = sorted(set(s_names) - set(t_names))[:5]
        only_t = sorted(set(t_names) - set(s_names))[:5]
        detail = f"only in student: {only_s}, only in teacher: {only_t}" if only_s or only_t else "different order"
        raise ValueError(f"FlatEMA: student and teacher {kind}s differ ({detail}); the teacher must be a copy of "
                         "the student (copy.deepcopy) with the same architecture")
    for (name, s), (_, t) in zip(student, teacher, strict=True):
        if s is t:
            raise ValueError(f"FlatEMA: student and teacher share the {kind} {name!r}; the teacher must be a copy")
        if s.shape != t.shape or s.dtype != t.dtype or s.device != t.device:
            raise ValueError(f"FlatEMA: {kind} {name!r} is {tuple(s.shape)} {s.dtype} on {s.device} in the student "
                             f"but {tuple(t.shape)} {t.dtype} on {t.device} in the teacher; build both models "
                             "the same way and move/cast them before creating FlatEMA")


def _rehome(params: list[nn.Parameter], offsets: list[int], strides: list[tuple[int, ...]], numel: int,
            dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Copy params into one zero-padded flat buffer and make each parameter's .data a view of it."""
    flat = torch.zeros(numel, dtype=dtype, device=device)
    for p, offset, stride in zip(params, offsets, strides, strict=True):
        view = flat.as_strided(p.shape, stride, offset)
        view.copy_(p.data)
        p.data = view  # same Parameter object: names, hooks, optimisers and DDP keep referring to it
    return flat


class _VerifyOnLoad:
    """load_state_dict post-hook that re-checks the aliasing. Holds the FlatEMA weakly; a copied or
    pickled module gets a hook that does nothing (its parameters are no longer views of the buffers)."""

    def __init__(self, ema: FlatEMA | None):
        self._ema = weakref.ref(ema) if ema is not None else None

    def __call__(self, module, incompatible_keys):
        ema = self._ema() if self._ema is not None else None
        if ema is not None:
            ema.verify()

    def __reduce__(self):
        return _VerifyOnLoad, (None,)


class FlatEMA:
    """Teacher EMA over flat parameter buffers (see the module docstring for the usage contract).

    student, teacher: modules of the same architecture (DDP / torch.compile wrappers are unwrapped), with
    the same parameter names, shapes, dtypes and devices. All floating-point parameters are re-homed,
    frozen ones (requires_grad=False) included. backend: "auto" (Triton for CUDA buffers, torch
    otherwise), "triton", "torch" or "reference" (the per-tensor loop, for comparisons). buffers: what
    happens to the floating-point buffers (BatchNorm running statistics): "none" (DINO: the teacher's stay its
    own), "copy" (the student's are copied in) or "average" (the same EMA as the parameters).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, backend: str = "auto", buffers: str = "none"):
        self.student, self.teacher = _unwrap(student), _unwrap(teacher)
        if backend not in BACKENDS:
            raise ValueError(f"FlatEMA: backend must be one of {BACKENDS}, got {backend!r}")
        if buffers not in EMA_BUFFERS:
            raise ValueError(f"FlatEMA: buffers must be one of {EMA_BUFFERS}, got {buffers!r}")
        self.backend, self.buffers = backend, buffers
        s_named = [(n, p) for n, p in self.student.named_parameters() if p.dtype.is_floating_point]
        t_named = [(n, p) for n, p in self.teacher.named_parameters() if p.dtype.is_floating_point]
        _check_twins("parameter", s_named, t_named)
        s_bufs = [(n, b) for n, b in self.student.named_buffers() if b.dtype.is_floating_point]
        t_bufs = [(n, b) for n, b in self.teacher.named_buffers() if b.dtype.is_floating_point]
        _check_twins("buffer", s_bufs, t_bufs)
        self._buffer_names = [n for n, _ in s_bufs]
        self._student_buffers = [b for _, b in s_bufs]
        self._teacher_buffers = [b for _, b in t_bufs]

        by_key: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, (_, p) in enumerate(s_named):
            by_key.setdefault((p.dtype, p.device), []).append(i)
        backends = {key: resolve_backend(backend, key[1]) for key in by_key}  # errors before anything moves
        order = [i for idx in by_key.values() for i in idx]  # group by group, model order inside a group
        self._names = [s_named[i][0] for i in order]
        self._student_params = tuple(s_named[i][1] for i in order)
        self._teacher_params = tuple(t_named[i][1] for i in order)
        self.groups: list[FlatGroup] = [
            self._build_group(dtype, device, backends[dtype, device], [s_named[i] for i in idx],
                              [t_named[i] for i in idx])
            for (dtype, device), idx in by_key.items()]
        self._expected_ptrs = self._data_ptrs()
        self._param_layout = {id(p): (p.data_ptr(), p.shape, p.stride()) for p in self._params}
        self.verify()
        for module in (self.student, self.teacher):
            module.register_load_state_dict_post_hook(_VerifyOnLoad(self))

    @property
    def _params(self) -> tuple[nn.Parameter, ...]:
        return self._student_params + self._teacher_params

    @staticmethod
    def _build_group(dtype, device, backend, s_named, t_named) -> FlatGroup:
        align = max(_ALIGN_BYTES // dtype.itemsize, 1)
        offsets, strides, end = [], [], 0
        for _, p in s_named:
            offsets.append(end)
            # the student's memory layout (e.g. channels_last) for both models, so element k of the two
            # buffers always belongs to the same parameter entry
            strides.append(torch.empty_like(p, device="meta").stride())
            end += math.ceil(p.numel() / align) * align
        s_flat = _rehome([p for _, p in s_named], offsets, strides, end, dtype, device)
        t_flat = _rehome([p for _, p in t_named], offsets, strides, end, dtype, device)
        return FlatGroup(dtype, device, [n for n, _ in s_named], s_flat, t_flat, backend)

    def _data_ptrs(self) -> tuple[int, ...]:
        return tuple(map(torch.Tensor.data_ptr, self._params))

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student over every flat buffer; the floating-point
        buffers as `buffers` says (by default untouched). Call after each optimiser step."""
        momentum = float(momentum)  # accepts numpy scalars from a schedule array
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"FlatEMA.update: momentum must be in [0, 1], got {momentum}")
        # One pointer per parameter (~25 us for ViT-S/8 + DINO head): catches .to(), .half(), param.data = ...
        if self._data_ptrs() != self._expected_ptrs:
            self.verify()
        if self.backend == "reference":
            reference_ema_update(self.student, self.teacher, momentum, buffers=self.buffers)
            return
        for g in self.groups:
            if g.backend == "triton":
                ema_update_triton(g.teacher, g.student, momentum)
            else:
                if g.scratch is None:
                    g.scratch = torch.empty(scratch_size(g.teacher.numel(), g.device), dtype=g.dtype, device=g.device)
                ema_update_torch(g.teacher, g.student, momentum, g.scratch)
        if self._teacher_buffers and self.buffers == "copy":
            torch._foreach_copy_(self._teacher_buffers, self._student_buffers)
        elif self._teacher_buffers and self.buffers == "average":  # the reference's roundings, buffer by buffer
            torch._foreach_mul_(self._teacher_buffers, momentum)
            torch._foreach_add_(self._teacher_buffers, torch._foreach_mul(self._student_buffers, 1.0 - momentum))

    def verify(self) -> None:
        """Raise RuntimeError unless every parameter of both models is still the recorded view of its flat
        buffer and both modules still hold the same parameter and buffer objects. Runs at construction,
        after every load_state_dict, and from update() when a data pointer moved."""
        for role, module, params, bufs in (("student", self.student, self._student_params, self._student_buffers),
                                           ("teacher", self.teacher, self._teacher_params, self._teacher_buffers)):
            named = {n: p for n, p in module.named_parameters() if p.dtype.is_floating_point}
            for name, p in zip(self._names, params, strict=True):
                if named.get(name) is not p:
                    raise RuntimeError(f"FlatEMA: the {role}'s parameter {name!r} was replaced after FlatEMA was "
                                       "built; create FlatEMA again after changing the model")
                ptr, shape, stride = self._param_layout[id(p)]
                if p.data_ptr() != ptr or p.shape != shape or p.stride() != stride:
                    raise RuntimeError(
                        f"FlatEMA: the {role}'s parameter {name!r} no longer aliases its flat buffer (was the model "
                        "moved or cast with .to()/.half(), param.data assigned, or a state dict loaded with "
                        "assign=True?); updating it would change a stale copy. Move/cast the models before "
                        "creating FlatEMA, or create it again")
            named_bufs = dict(module.named_buffers())
            for name, b in zip(self._buffer_names, bufs, strict=True):
                if named_bufs.get(name) is not b:
                    raise RuntimeError(f"FlatEMA: the {role}'s buffer {name!r} was replaced after FlatEMA was "
                                       "built; create FlatEMA again after changing the model")

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise ValueError unless every tensor the optimiser updates is a student parameter that aliases
        the flat buffer. torch.optim optimisers keep Parameter objects and follow the re-homing either way;
        optimisers that copy or flatten parameters themselves (ZeRO, apex, captured CUDA graphs) must be
        built after FlatEMA, and this catches one built from a teacher or a stale model."""
        self.verify()
        student_ids = {id(p) for p in self._student_params}
        teacher_ids = {id(p) for p in self._teacher_params}
        for i, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) in teacher_ids:
                    raise ValueError(f"FlatEMA.check_optimizer: param group {i} holds a teacher parameter; "
                                     "optimise the student only")
                if id(p) not in student_ids and p.dtype.is_floating_point:
                    raise ValueError(f"FlatEMA.check_optimizer: param group {i} holds a tensor of shape "
                                     f"{tuple(p.shape)} that is not a parameter of the student FlatEMA was built "
                                     "from; build the optimiser from the same student after FlatEMA")

    def __repr__(self) -> str:
        parts = ", ".join(f"{g.dtype}@{g.device}: {len(g.names)} params, {g.teacher.numel()} elements, {g.backend}"
                          for g in self.groups)
        return f"FlatEMA({parts}; buffers={self.buffers})"
