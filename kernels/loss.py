r"""The fused DINO loss: teacher centre + sharpen softmax, student log-softmax, cross-entropy over every
(teacher view g, student view v != g) pair, and the centre's column sum, in one pass over the logits.

Shapes: student logits S [V*B, K] (V = ncrops views, global views first), teacher logits T [G*B, K]
(G = n_global <= V), centre c [1, K]. Row v*B + b of S is view v of image b.

    q_g = softmax((T_g - c) / tau_t)          s_v = S_v / tau_s          lse_v = logsumexp(s_v)
    loss = 1 / (B * G * (V-1)) * sum_b sum_g sum_{v != g} -<q_g, log_softmax(s_v)>

Each q_g sums to 1, so with Q = sum_g q_g, n_v = G - [v < G] (the number of teachers that view v is
compared with) and S_sum = sum_v s_v, the pair sum of one image collapses to

    sum_{g, v != g} -<q_g, s_v - lse_v> = sum_v n_v * lse_v - <Q, S_sum> + sum_g <q_g, s_g>

and the gradient of the loss with respect to the student logits is

    d loss / d S_v = (n_v * softmax(s_v) - Q + [v < G] q_v) / (tau_s * B * G * (V-1)).

No [V*B, K] intermediate is needed: one pass over S and T gives the statistics (the running maxima and
sums of the online softmax of every row, <e_g, S_sum> and <e_g, s_g> with e_g the teacher's running
unnormalised softmax), a second pass writes the gradient. The teacher gets no gradient, as in DINO where it
runs under no_grad.

When the gradient is computed depends on the logits' dtype:
- fp32 and bf16: in the forward, while the row is in registers (Liger-Kernel's cross-entropy trick); the
  backward multiplies it by grad_output (skipped on the device when grad_output is 1).
- fp16: in the backward. Under DINO's fp16 recipe (`--use_fp16 true`, facebookresearch/dino main_dino.py L78;
  `fp16_scaler.scale(loss).backward()`, L337) the unscaled gradient entries at K=65536 are ~1e-7 to 1e-5, below
  fp16's smallest normal number (6.1e-5): rounded to fp16 before the scaler's factor arrives they lose most of
  their bits or flush to zero. So the forward keeps only per-row statistics (the student rows' log-sum-exp and
  the teacher rows' softmax max and 1/sum, a few floats per row) and a copy of the centre ([K] fp32), and the
  backward computes grad_output * gradient in fp32 and rounds it to fp16 once, as the reference's autograd does.
  The costs: the teacher logits stay alive until the backward (DINO's loop holds them anyway) and the backward
  reads T once more.

In place (opt-in, `inplace=True`; fastdino's trainer uses it): when the student logits are an intermediate result
(not a leaf tensor, not a view), the gradient is written into their memory, as Liger-Kernel does: during the
forward (fp32, bf16) or the backward (fp16). On 2 CPU cores the first touch of a fresh [V*B, K] fp32 tensor costs
more than all the arithmetic, and on a GPU it saves the [V*B, K] buffer. `student_output` then holds the
gradient; its version counter is bumped, so autograd raises instead of computing a wrong gradient if another op
saved it for its backward. The default, inplace=False, leaves the caller's logits as they were: a drop-in must
not change what code after the loss reads from them (an entropy log, a second loss on the same logits).

Centre: c <- m * c + (1 - m) * allreduce(sum of the raw rows of T) / (G * B * world_size), after the
loss, as in DINO. The column sum is one more kernel over T (Triton) or one sum over T (torch).

Repeatable: no float atomics and no host-device sync. Every sum is taken in a fixed order (the column sum by
one program per column block, rows in order; the per-image losses by one sum), so a run gives the same bits
every time, and the backward reads grad_output on the device.

Triton layout: programs (b, split) cover image b and a contiguous range of K, so that B * n_splits
programs fill the GPU. Pass 1 (`_dino_loss_stats_kernel`) stores each program's partial statistics;
pass 2 (`_dino_loss_fwd_kernel`) merges the splits' statistics (the usual max / rescaled-sum merge),
writes the loss of image b (split 0) and either the gradient of its range (fp32, bf16) or the merged per-row
statistics (fp16), which `_dino_loss_bwd_kernel` turns into the gradient in the backward.
`_column_sum_kernel` sums T's columns; `_scale_by_grad_output_kernel` is the backward's multiply.
`kernels/aot.py` compiles every launch configuration ahead of time for real GPUs (no GPU needed).
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch
import torch.distributed as dist
import triton
import triton.language as tl
from torch import nn

from .reference import reference_dino_loss
from .sinkhorn import sinkhorn_knopp_centre
from .utils import BACKENDS, calculate_settings, resolve_backend

CENTERINGS = ("centering", "sinkhorn_knopp")  # DINOv2's names (train.centering, ssl_default_config.yaml)

# Slots of the per-(image, split) statistics written by pass 1, each a vector over the rows of one kind.
_TEACHER_MAX = tl.constexpr(0)  # running max of (T_g - c) / tau_t
_TEACHER_SUM = tl.constexpr(1)  # running sum of exp(... - max)
_CROSS = tl.constexpr(2)  # running sum of exp(... - max) * S_sum: <Q, S_sum> once normalised
_DIAG = tl.constexpr(3)  # running sum of exp(... - max) * s_g: <q_g, s_g> once normalised
_GLOBAL_MAX = tl.constexpr(4)  # online log-sum-exp of the global student rows
_GLOBAL_SUM = tl.constexpr(5)
_LOCAL_MAX = tl.constexpr(6)  # online log-sum-exp of the local student rows
_LOCAL_SUM = tl.constexpr(7)
N_STATS_SLOTS = 8
_N_SLOTS = tl.constexpr(N_STATS_SLOTS)

# Slots of the merged per-image row statistics that pass 2 keeps for the deferred (fp16) backward.
_ROW_LSE_GLOBAL = tl.constexpr(0)  # log-sum-exp of s_g, g < G
_ROW_LSE_LOCAL = tl.constexpr(1)  # log-sum-exp of s_v, v >= G
_ROW_TEACHER_MAX = tl.constexpr(2)  # max of (T_g - c) / tau_t
_ROW_TEACHER_INV_SUM = tl.constexpr(3)  # 1 / sum of exp(... - max)
N_ROW_SLOTS = 4
_N_ROW_SLOTS = tl.constexpr(N_ROW_SLOTS)


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _online_softmax_update(m, d, x):
    """Fold the block x [R, BLOCK] (masked entries -inf) into the running max m [R] and sum d [R] of
    exp(x - m). Returns the new (m, d), the factor the old sums were rescaled by, and exp(x - m_new)."""
    m_new = tl.maximum(m, tl.max(x, 1))
    alpha = tl.exp(m - m_new)
    e = tl.exp(x - m_new[:, None])
    return m_new, d * alpha + tl.sum(e, 1), alpha, e


@triton.jit
def _dino_loss_stats_kernel(
    S_ptr, S_row_stride, T_ptr, T_row_stride, C_ptr, Stats_ptr,
    B, n_cols, cols_per_split, inv_student_temp, inv_teacher_temp,
    N_GLOBAL: tl.constexpr, N_LOCAL: tl.constexpr, G_PAD: tl.constexpr, L_PAD: tl.constexpr,
    STATS_WIDTH: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Pass 1, program (b, split): partial statistics of image b over columns [start, end)."""
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    start = split * cols_per_split
    end = tl.minimum(start + cols_per_split, n_cols)

    g = tl.arange(0, G_PAD)
    g_ok = g < N_GLOBAL
    loc = tl.arange(0, L_PAD)
    l_ok = loc < N_LOCAL
    t_rows = T_ptr + (g * B + b)[:, None] * T_row_stride
    sg_rows = S_ptr + (g * B + b)[:, None] * S_row_stride
    sl_rows = S_ptr + ((N_GLOBAL + loc) * B + b)[:, None] * S_row_stride

    t_max = tl.full([G_PAD], float("-inf"), tl.float32)
    t_sum = tl.zeros([G_PAD], tl.float32)
    cross = tl.zeros([G_PAD], tl.float32)
    diag = tl.zeros([G_PAD], tl.float32)
    sg_max = tl.full([G_PAD], float("-inf"), tl.float32)
    sg_sum = tl.zeros([G_PAD], tl.float32)
    sl_max = tl.full([L_PAD], float("-inf"), tl.float32)
    sl_sum = tl.zeros([L_PAD], tl.float32)

    for k0 in range(start, end, BLOCK_SIZE):
        cols = k0 + tl.arange(0, BLOCK_SIZE)
        c_ok = cols < end
        # Padded rows load as 0 so every row stays finite; their statistics are never stored.
        c = tl.load(C_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
        t_raw = tl.load(t_rows + cols[None, :], mask=g_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        sg = tl.load(sg_rows + cols[None, :], mask=g_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        sl = tl.load(sl_rows + cols[None, :], mask=l_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        sg = sg * inv_student_temp
        sl = sl * inv_student_temp

        t = tl.where(c_ok[None, :], (t_raw - c[None, :]) * inv_teacher_temp, float("-inf"))
        t_max, t_sum, alpha, e = _online_softmax_update(t_max, t_sum, t)
        s_sum = tl.sum(sg, 0) + tl.sum(sl, 0)  # masked columns are 0
        cross = cross * alpha + tl.sum(e * s_sum[None, :], 1)
        diag = diag * alpha + tl.sum(e * sg, 1)

        sg_max, sg_sum, _, _ = _online_softmax_update(sg_max, sg_sum, tl.where(c_ok[None, :], sg, float("-inf")))
        sl_max, sl_sum, _, _ = _online_softmax_update(sl_max, sl_sum, tl.where(c_ok[None, :], sl, float("-inf")))

    base = Stats_ptr + (b * n_splits + split) * (_N_SLOTS * STATS_WIDTH)
    tl.store(base + _TEACHER_MAX * STATS_WIDTH + g, t_max, mask=g_ok)
    tl.store(base + _TEACHER_SUM * STATS_WIDTH + g, t_sum, mask=g_ok)
    tl.store(base + _CROSS * STATS_WIDTH + g, cross, mask=g_ok)
    tl.store(base + _DIAG * STATS_WIDTH + g, diag, mask=g_ok)
    tl.store(base + _GLOBAL_MAX * STATS_WIDTH + g, sg_max, mask=g_ok)
    tl.store(base + _GLOBAL_SUM * STATS_WIDTH + g, sg_sum, mask=g_ok)
    tl.store(base + _LOCAL_MAX * STATS_WIDTH + loc, sl_max, mask=l_ok)
    tl.store(base + _LOCAL_SUM * STATS_WIDTH + loc, sl_sum, mask=l_ok)


@triton.jit
def _load_split_stats(base, slot, splits, s_ok, r, r_ok, STATS_WIDTH: tl.constexpr, other):
    """Slot `slot` of every split of one image: [SPLIT_PAD, R] (padded splits and rows -> other)."""
    ptrs = base + splits[:, None] * (_N_SLOTS * STATS_WIDTH) + slot * STATS_WIDTH + r[None, :]
    return tl.load(ptrs, mask=s_ok[:, None] & r_ok[None, :], other=other)


@triton.jit
def _merge_max_sum(m, d, r_ok):
    """Merge per-split running (max, sum) [SPLIT_PAD, R] into one per row; also returns the per-split
    rescale factors exp(m_split - m). Padded rows get (0, 1) so that later logs and divisions stay finite."""
    m_all = tl.where(r_ok, tl.max(m, 0), 0.0)
    w = tl.exp(m - m_all[None, :])  # a split that saw no columns has m = -inf -> weight 0
    d_all = tl.where(r_ok, tl.sum(d * w, 0), 1.0)
    return m_all, d_all, w


@triton.jit
def _write_gradient(S_ptr, S_row_stride, T_ptr, T_row_stride, C_ptr, dS_ptr, dS_row_stride, B, b, start, end,
                    lse_g, lse_l, t_max, inv_t_sum, inv_student_temp, inv_teacher_temp, grad_scale,
                    N_GLOBAL: tl.constexpr, N_LOCAL: tl.constexpr, G_PAD: tl.constexpr, L_PAD: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr):
    """dS of the student rows of image b over columns [start, end): grad_scale * (n_v p_v - Q + [v < G] q_v),
    computed in fp32 and rounded once to dS's dtype. dS may be S itself (each block is read before it is written)."""
    g = tl.arange(0, G_PAD)
    g_ok = g < N_GLOBAL
    loc = tl.arange(0, L_PAD)
    l_ok = loc < N_LOCAL
    t_rows = T_ptr + (g * B + b)[:, None] * T_row_stride
    sg_rows = (g * B + b)[:, None]
    sl_rows = ((N_GLOBAL + loc) * B + b)[:, None]
    g_mask = g_ok[:, None]
    l_mask = l_ok[:, None]
    for k0 in range(start, end, BLOCK_SIZE):
        cols = k0 + tl.arange(0, BLOCK_SIZE)
        c_ok = cols < end
        c = tl.load(C_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
        t = tl.load(t_rows + cols[None, :], mask=g_mask & c_ok[None, :], other=0.0).to(tl.float32)
        q = tl.exp((t - c[None, :]) * inv_teacher_temp - t_max[:, None]) * inv_t_sum[:, None]
        q = tl.where(g_mask, q, 0.0)
        big_q = tl.sum(q, 0)

        sg = tl.load(S_ptr + sg_rows * S_row_stride + cols[None, :], mask=g_mask & c_ok[None, :], other=0.0)
        p = tl.exp(sg.to(tl.float32) * inv_student_temp - lse_g[:, None])
        grad = ((N_GLOBAL - 1) * p - big_q[None, :] + q) * grad_scale
        tl.store(dS_ptr + sg_rows * dS_row_stride + cols[None, :], grad.to(dS_ptr.dtype.element_ty),
                 mask=g_mask & c_ok[None, :])

        sl = tl.load(S_ptr + sl_rows * S_row_stride + cols[None, :], mask=l_mask & c_ok[None, :], other=0.0)
        p = tl.exp(sl.to(tl.float32) * inv_student_temp - lse_l[:, None])
        grad = (N_GLOBAL * p - big_q[None, :]) * grad_scale
        tl.store(dS_ptr + sl_rows * dS_row_stride + cols[None, :], grad.to(dS_ptr.dtype.element_ty),
                 mask=l_mask & c_ok[None, :])


@triton.jit
def _dino_loss_fwd_kernel(
    S_ptr, S_row_stride, T_ptr, T_row_stride, C_ptr, Stats_ptr, dS_ptr, dS_row_stride, Loss_ptr, RowStats_ptr,
    B, n_cols, cols_per_split, inv_student_temp, inv_teacher_temp, loss_scale, grad_scale,
    N_GLOBAL: tl.constexpr, N_LOCAL: tl.constexpr, G_PAD: tl.constexpr, L_PAD: tl.constexpr,
    STATS_WIDTH: tl.constexpr, SPLIT_PAD: tl.constexpr, COMPUTE_GRAD: tl.constexpr, SAVE_ROW_STATS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """Pass 2, program (b, split): merge the splits' statistics of image b, write the loss of image b
    (split 0) and either the gradient of the student rows of image b over this split's columns (COMPUTE_GRAD)
    or, for the deferred backward, the merged row statistics (SAVE_ROW_STATS, split 0)."""
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)

    g = tl.arange(0, G_PAD)
    g_ok = g < N_GLOBAL
    loc = tl.arange(0, L_PAD)
    l_ok = loc < N_LOCAL
    splits = tl.arange(0, SPLIT_PAD)
    s_ok = splits < n_splits
    base = Stats_ptr + b * n_splits * (_N_SLOTS * STATS_WIDTH)

    t_max, t_sum, w = _merge_max_sum(
        _load_split_stats(base, _TEACHER_MAX, splits, s_ok, g, g_ok, STATS_WIDTH, float("-inf")),
        _load_split_stats(base, _TEACHER_SUM, splits, s_ok, g, g_ok, STATS_WIDTH, 0.0), g_ok)
    sg_max, sg_sum, _ = _merge_max_sum(
        _load_split_stats(base, _GLOBAL_MAX, splits, s_ok, g, g_ok, STATS_WIDTH, float("-inf")),
        _load_split_stats(base, _GLOBAL_SUM, splits, s_ok, g, g_ok, STATS_WIDTH, 0.0), g_ok)
    sl_max, sl_sum, _ = _merge_max_sum(
        _load_split_stats(base, _LOCAL_MAX, splits, s_ok, loc, l_ok, STATS_WIDTH, float("-inf")),
        _load_split_stats(base, _LOCAL_SUM, splits, s_ok, loc, l_ok, STATS_WIDTH, 0.0), l_ok)
    lse_g = sg_max + tl.log(sg_sum)
    lse_l = sl_max + tl.log(sl_sum)
    inv_t_sum = 1.0 / t_sum

    if split == 0:
        # The cross terms were accumulated against each split's own running max: rescale by w too.
        cross = tl.sum(_load_split_stats(base, _CROSS, splits, s_ok, g, g_ok, STATS_WIDTH, 0.0) * w, 0)
        diag = tl.sum(_load_split_stats(base, _DIAG, splits, s_ok, g, g_ok, STATS_WIDTH, 0.0) * w, 0)
        per_global = (N_GLOBAL - 1) * lse_g - (cross - diag) * inv_t_sum
        loss = tl.sum(tl.where(g_ok, per_global, 0.0), 0) + tl.sum(tl.where(l_ok, N_GLOBAL * lse_l, 0.0), 0)
        tl.store(Loss_ptr + b, loss * loss_scale)
        if SAVE_ROW_STATS:
            rows = RowStats_ptr + b * (_N_ROW_SLOTS * STATS_WIDTH)
            tl.store(rows + _ROW_LSE_GLOBAL * STATS_WIDTH + g, lse_g, mask=g_ok)
            tl.store(rows + _ROW_LSE_LOCAL * STATS_WIDTH + loc, lse_l, mask=l_ok)
            tl.store(rows + _ROW_TEACHER_MAX * STATS_WIDTH + g, t_max, mask=g_ok)
            tl.store(rows + _ROW_TEACHER_INV_SUM * STATS_WIDTH + g, inv_t_sum, mask=g_ok)

    if COMPUTE_GRAD:
        start = split * cols_per_split
        end = tl.minimum(start + cols_per_split, n_cols)
        _write_gradient(S_ptr, S_row_stride, T_ptr, T_row_stride, C_ptr, dS_ptr, dS_row_stride, B, b, start, end,
                        lse_g, lse_l, t_max, inv_t_sum, inv_student_temp, inv_teacher_temp, grad_scale,
                        N_GLOBAL, N_LOCAL, G_PAD, L_PAD, BLOCK_SIZE)


@triton.jit
def _dino_loss_bwd_kernel(
    S_ptr, S_row_stride, T_ptr, T_row_stride, C_ptr, RowStats_ptr, dS_ptr, dS_row_stride, GradOut_ptr,
    B, n_cols, cols_per_split, inv_student_temp, inv_teacher_temp, grad_scale,
    N_GLOBAL: tl.constexpr, N_LOCAL: tl.constexpr, G_PAD: tl.constexpr, L_PAD: tl.constexpr,
    STATS_WIDTH: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Deferred backward (fp16 logits), program (b, split): the gradient of image b's student rows over this
    split's columns from the row statistics pass 2 saved, multiplied by grad_output (read here, on the device)
    in fp32 before the single rounding to dS's dtype."""
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    g = tl.arange(0, G_PAD)
    g_ok = g < N_GLOBAL
    loc = tl.arange(0, L_PAD)
    l_ok = loc < N_LOCAL
    rows = RowStats_ptr + b * (_N_ROW_SLOTS * STATS_WIDTH)
    lse_g = tl.load(rows + _ROW_LSE_GLOBAL * STATS_WIDTH + g, mask=g_ok, other=0.0)
    lse_l = tl.load(rows + _ROW_LSE_LOCAL * STATS_WIDTH + loc, mask=l_ok, other=0.0)
    t_max = tl.load(rows + _ROW_TEACHER_MAX * STATS_WIDTH + g, mask=g_ok, other=0.0)
    inv_t_sum = tl.load(rows + _ROW_TEACHER_INV_SUM * STATS_WIDTH + g, mask=g_ok, other=1.0)
    scale = grad_scale * tl.load(GradOut_ptr).to(tl.float32)
    start = split * cols_per_split
    end = tl.minimum(start + cols_per_split, n_cols)
    _write_gradient(S_ptr, S_row_stride, T_ptr, T_row_stride, C_ptr, dS_ptr, dS_row_stride, B, b, start, end,
                    lse_g, lse_l, t_max, inv_t_sum, inv_student_temp, inv_teacher_temp, scale,
                    N_GLOBAL, N_LOCAL, G_PAD, L_PAD, BLOCK_SIZE)


@triton.jit
def _column_sum_kernel(X_ptr, X_row_stride, Out_ptr, n_rows, n_cols, ROWS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Program j: Out[block j of columns] = sum of X's rows, taken in a fixed order (no atomics), in fp32."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    c_ok = cols < n_cols
    acc = tl.zeros([BLOCK_SIZE], tl.float32)
    for r0 in range(0, n_rows, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        x = tl.load(X_ptr + rows.to(tl.int64)[:, None] * X_row_stride + cols[None, :],
                    mask=(rows < n_rows)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), 0)
    tl.store(Out_ptr + cols, acc, mask=c_ok)


@triton.jit
def _scale_by_grad_output_kernel(X_ptr, X_row_stride, GradOut_ptr, n_cols, BLOCK_SIZE: tl.constexpr):
    """Program (row, j): X[row, block j] *= grad_output, with grad_output read on the device (no host sync).
    When it is 1 nothing is read or written, so the gradient keeps the forward's bits; otherwise the product is
    taken in fp32 and rounded once, as torch's `X.mul_(grad_output)` does."""
    go = tl.load(GradOut_ptr).to(tl.float32)
    if go != 1.0:
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        c_ok = cols < n_cols
        ptrs = X_ptr + row * X_row_stride + cols
        x = tl.load(ptrs, mask=c_ok, other=0.0).to(tl.float32)
        tl.store(ptrs, (x * go).to(X_ptr.dtype.element_ty), mask=c_ok)


# ----------------------------------------------------------------------------------------------------
# Launchers (kernels/aot.py records what they launch, to compile it ahead of time for real GPUs)
# ----------------------------------------------------------------------------------------------------


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device; None elsewhere (the interpreter runs programs one by one)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def _default_splits(batch: int, n_blocks: int, sm_count: int | None) -> int:
    if sm_count is None:  # the interpreter runs programs one after another: splitting only adds work
        return 1
    return max(1, min(math.ceil(2 * sm_count / batch), n_blocks))  # about two programs per SM


def _loss_settings(batch, n_cols, ncrops, n_global, *, sm_count, block_size=None, n_splits=None) -> dict:
    """Block size, warps and the K-split of the loss kernels (block_size and n_splits: the tests' overrides)."""
    n_local = ncrops - n_global
    g_pad, l_pad = _next_power_of_2(n_global), _next_power_of_2(max(n_local, 1))
    # Pass 1 holds about 2 * G_PAD + L_PAD live tiles of BLOCK_SIZE fp32 values.
    default_block, num_warps = calculate_settings(n_cols, rows_per_block=2 * g_pad + l_pad)
    block = block_size or default_block
    n_blocks = triton.cdiv(n_cols, block)
    splits = n_splits or _default_splits(batch, n_blocks, sm_count)
    cols_per_split = triton.cdiv(n_blocks, min(splits, n_blocks)) * block
    splits = triton.cdiv(n_cols, cols_per_split)  # no split without columns
    shared = dict(N_GLOBAL=n_global, N_LOCAL=n_local, G_PAD=g_pad, L_PAD=l_pad, STATS_WIDTH=max(g_pad, l_pad),
                  BLOCK_SIZE=block, num_warps=num_warps)
    return dict(splits=splits, cols_per_split=cols_per_split, shared=shared)


# The column sum: one program per 256 columns (256 programs at K=65536, about two per SM of an H100) walking the
# rows 16 at a time: a [16, 256] tile over 4 warps is 32 fp32 values a thread. Not yet tuned on a GPU.
_COLSUM_ROWS, _COLSUM_BLOCK, _COLSUM_WARPS = 16, 256, 4
# The grad_output multiply: a streaming kernel over [rows, K], 2048 columns a program over 8 warps.
_SCALE_BLOCK, _SCALE_WARPS = 2048, 8


def _column_sum_triton(x, out) -> None:
    """out <- x.sum(0) in fp32, deterministic."""
    n_rows, n_cols = x.shape
    _column_sum_kernel[(triton.cdiv(n_cols, _COLSUM_BLOCK),)](
        x, x.stride(0), out, n_rows, n_cols, ROWS=_COLSUM_ROWS, BLOCK_SIZE=_COLSUM_BLOCK, num_warps=_COLSUM_WARPS)


def _scale_by_grad_output_triton(grad, grad_output) -> None:
    """grad *= grad_output (0-d, on grad's device), without reading grad_output on the host."""
    rows, n_cols = grad.shape
    _scale_by_grad_output_kernel[(rows, triton.cdiv(n_cols, _SCALE_BLOCK))](
        grad, grad.stride(0), grad_output, n_cols, BLOCK_SIZE=_SCALE_BLOCK, num_warps=_SCALE_WARPS)


def _triton_forward(student, teacher, center, grad, colsum, row_stats=None, *, ncrops, n_global, student_temp,
                    teacher_temp, block_size=None, n_splits=None, sm_count=None):
    """Loss (a 0-d fp32 tensor); the gradient into `grad` (None: not in the forward), the teacher's column sum into
    `colsum` (None: none), the merged row statistics into `row_stats` (from _triton_row_stats(); for the
    deferred backward). sm_count: the GPU's, read from student's device when None (kernels/aot.py passes a target's)."""
    batch, n_cols = student.shape[0] // ncrops, student.shape[1]
    if sm_count is None:
        sm_count = _sm_count(student.device)
    settings = _loss_settings(batch, n_cols, ncrops, n_global, sm_count=sm_count, block_size=block_size,
                              n_splits=n_splits)
    splits, cols_per_split, shared = settings["splits"], settings["cols_per_split"], settings["shared"]

    center = center.reshape(-1).float().contiguous()
    stats = torch.empty(batch, splits, N_STATS_SLOTS, shared["STATS_WIDTH"], dtype=torch.float32,
                        device=student.device)
    loss_rows = torch.empty(batch, dtype=torch.float32, device=student.device)
    loss_scale = 1.0 / (batch * n_global * (ncrops - 1))
    _dino_loss_stats_kernel[(batch, splits)](
        student, student.stride(0), teacher, teacher.stride(0), center, stats,
        batch, n_cols, cols_per_split, 1.0 / student_temp, 1.0 / teacher_temp, **shared)
    _dino_loss_fwd_kernel[(batch, splits)](
        student, student.stride(0), teacher, teacher.stride(0), center, stats,
        grad if grad is not None else student, grad.stride(0) if grad is not None else 0, loss_rows,
        row_stats if row_stats is not None else stats,  # unused unless SAVE_ROW_STATS
        batch, n_cols, cols_per_split, 1.0 / student_temp, 1.0 / teacher_temp, loss_scale, loss_scale / student_temp,
        SPLIT_PAD=_next_power_of_2(splits), COMPUTE_GRAD=grad is not None, SAVE_ROW_STATS=row_stats is not None,
        **shared)
    if colsum is not None:
        _column_sum_triton(teacher, colsum)
    return loss_rows.sum()


def _triton_row_stats(student, ncrops, n_global) -> torch.Tensor:
    """The buffer _triton_forward fills for the deferred backward: [B, N_ROW_SLOTS, max(G_PAD, L_PAD)] fp32."""
    width = max(_next_power_of_2(n_global), _next_power_of_2(max(ncrops - n_global, 1)))
    return torch.empty(student.shape[0] // ncrops, N_ROW_SLOTS, width, dtype=torch.float32, device=student.device)


def _triton_backward(student, teacher, center, row_stats, grad, grad_output, *, ncrops, n_global, student_temp,
                     teacher_temp, block_size=None, n_splits=None, sm_count=None):
    """The deferred gradient (fp16 logits): grad <- grad_output * dloss/dS, rounded once. `grad` may be student."""
    batch, n_cols = student.shape[0] // ncrops, student.shape[1]
    if sm_count is None:
        sm_count = _sm_count(student.device)
    settings = _loss_settings(batch, n_cols, ncrops, n_global, sm_count=sm_count, block_size=block_size,
                              n_splits=n_splits)
    grad_scale = 1.0 / (batch * n_global * (ncrops - 1)) / student_temp
    _dino_loss_bwd_kernel[(batch, settings["splits"])](
        student, student.stride(0), teacher, teacher.stride(0), center.reshape(-1).float().contiguous(),
        row_stats, grad, grad.stride(0), grad_output, batch, n_cols, settings["cols_per_split"],
        1.0 / student_temp, 1.0 / teacher_temp, grad_scale, **settings["shared"])


# The torch path walks the student logits in chunks of images (~8 passes over each chunk). CPU: 32 MiB of fp32
# logits per chunk. On 2 AMD EPYC cores one thread ran as fast with 8 MiB to 128 MiB chunks (cache size barely
# matters), but with two threads on a shared machine every multi-threaded op waits for a preempted thread (a
# scheduler slice, ~10 ms), so fewer, bigger ops won 2-5x. GPU: big chunks, since every pass is a kernel launch.
_TORCH_CHUNK_ELEMENTS = {"cpu": 1 << 23}
_TORCH_CHUNK_ELEMENTS_OTHER = 1 << 26


# exp() on the CPU is ~40x slower when its result is subnormal (x < -87) and ~15x slower when it underflows:
# clamping the shifted logits at -80 first changes each softmax term by less than 2e-35.
_EXP_FLOOR = -80.0


def _exp_shifted_(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x <- exp(scale * (x - max x)) over the last dimension, in place; returns (x, max x). scale > 0."""
    m = x.amax(-1, keepdim=True)
    torch.add(m * -scale, x, alpha=scale, out=x).clamp_min_(_EXP_FLOOR).exp_()
    return x, m


def _softmax_(x: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * x) over the last dimension, in place (no temporary of x's size)."""
    x, _ = _exp_shifted_(x, scale)
    return x.div_(x.sum(-1, keepdim=True))


def _torch_forward(student, teacher, center, grad, colsum, row_stats=None, *, ncrops, n_global, student_temp,
                   teacher_temp):
    """The same algebra with torch ops, chunk by chunk of images. Computes in fp32 inside `grad` when it is
    an fp32 tensor (so an in-place fp32 call allocates nothing of the student's size), else in a work buffer.
    row_stats ([V, B, 1] fp32, or None): receives every student row's log-sum-exp, for the deferred backward."""
    with torch.autocast(student.device.type, enabled=False):  # autocast would run the dot products in bf16
        return _torch_forward_fp32(student, teacher, center, grad, colsum, row_stats, ncrops=ncrops,
                                   n_global=n_global, student_temp=student_temp, teacher_temp=teacher_temp)


def _torch_forward_fp32(student, teacher, center, grad, colsum, lse_out, *, ncrops, n_global, student_temp,
                        teacher_temp):
    views, n_global, dev = ncrops, n_global, student.device
    batch, n_cols = student.shape[0] // views, student.shape[1]
    inv_ts, inv_tt = 1.0 / student_temp, 1.0 / teacher_temp
    loss_scale = 1.0 / (batch * n_global * (views - 1))
    grad_scale = loss_scale * inv_ts
    chunk = max(1, _TORCH_CHUNK_ELEMENTS.get(dev.type, _TORCH_CHUNK_ELEMENTS_OTHER) // (views * n_cols))
    chunk = min(chunk, batch)

    s3, t3 = student.unflatten(0, (views, batch)), teacher.unflatten(0, (n_global, batch))
    g3 = grad.unflatten(0, (views, batch)) if grad is not None else None
    compute_in_grad = grad is not None and grad.dtype == torch.float32
    center = center.reshape(1, n_cols).float()
    # n_v: how many teacher views each student view is compared with.
    n_v = torch.full((views, 1, 1), float(n_global), device=dev)
    n_v[:n_global] -= 1
    # The teacher in one go (G*B*K fp32, a quarter of the student's size): fewer, bigger ops than per chunk,
    # which matters when the two cores are shared and every multi-threaded op waits for both threads.
    q_all = _softmax_(torch.sub(t3, center), inv_tt)  # q_g, [G, B, K]
    if colsum is not None:
        colsum.copy_(teacher.sum(0, dtype=torch.float32))
    big_q_buf = torch.empty(chunk, n_cols, device=dev)  # Q = sum_g q_g of one chunk, reused
    x_buf = None if compute_in_grad else torch.empty(views, chunk, n_cols, device=dev)
    total = torch.zeros((), dtype=torch.float64, device=dev)

    for b0 in range(0, batch, chunk):
        b1 = min(b0 + chunk, batch)
        s_src, q = s3[:, b0:b1], q_all[:, b0:b1]
        big_q = big_q_buf[: b1 - b0].copy_(q[0])
        for g in range(1, n_global):  # an add per view: sum(dim=0, out=) zero-fills first, a pass more
            big_q.add_(q[g])
        if compute_in_grad:
            x = g3[:, b0:b1]
            if grad.data_ptr() != student.data_ptr():
                x.copy_(s_src)
        else:
            x = x_buf[:, : b1 - b0].copy_(s_src)

        # Loss terms on the raw logits (s = x / tau_s): <Q, S_sum> and sum_g <q_g, s_g>. Each view's rows of a
        # chunk are contiguous: flat dot products, no copies (einsum would permute x into a contiguous copy).
        cross = torch.dot(x.sum(0).view(-1), big_q.view(-1))
        diag = sum(torch.dot(x[g].reshape(-1), q[g].reshape(-1)) for g in range(n_global))
        x, m = _exp_shifted_(x, inv_ts)  # exp(s - max s): the softmax numerator
        d = x.sum(-1, keepdim=True)
        lse = m * inv_ts + d.log()
        total += (n_v * lse).sum(dtype=torch.float64) - inv_ts * (cross.double() - diag.double())
        if lse_out is not None:
            lse_out[:, b0:b1].copy_(lse)

        if grad is not None:
            # dS_v = coef_v * exp(s_v - max) - scale * (Q - [v < G] q_v), coef_v = n_v * scale / sum
            coef = n_v * grad_scale / d
            q.sub_(big_q).mul_(grad_scale)
            big_q.mul_(-grad_scale)
            torch.addcmul(q, x[:n_global], coef[:n_global], out=x[:n_global])
            torch.addcmul(big_q, x[n_global:], coef[n_global:], out=x[n_global:])
            if not compute_in_grad:
                g3[:, b0:b1].copy_(x)
    return (total * loss_scale).float()


def _torch_row_stats(student, ncrops, n_global) -> torch.Tensor:
    """The buffer _torch_forward fills for the deferred backward: each student row's log-sum-exp, [V, B, 1] fp32."""
    return torch.empty(ncrops, student.shape[0] // ncrops, 1, dtype=torch.float32, device=student.device)


def _torch_backward(student, teacher, center, row_stats, grad, grad_output, *, ncrops, n_global, student_temp,
                    teacher_temp):
    """The deferred gradient (fp16 logits): grad <- grad_output * dloss/dS in fp32, rounded once into `grad` (which
    may be student). Recomputes the teacher softmax and, from the saved log-sum-exps, the student softmax."""
    with torch.autocast(student.device.type, enabled=False):
        views, dev = ncrops, student.device
        batch, n_cols = student.shape[0] // views, student.shape[1]
        inv_ts, inv_tt = 1.0 / student_temp, 1.0 / teacher_temp
        # grad_output stays on the device: a 0-d tensor operand, no host read.
        scale = grad_output.detach().reshape(()).float() * (1.0 / (batch * n_global * (views - 1)) * inv_ts)
        chunk = min(batch, max(1, _TORCH_CHUNK_ELEMENTS.get(dev.type, _TORCH_CHUNK_ELEMENTS_OTHER) // (views * n_cols)))
        s3, g3 = student.unflatten(0, (views, batch)), grad.unflatten(0, (views, batch))
        n_v = torch.full((views, 1, 1), float(n_global), device=dev)
        n_v[:n_global] -= 1
        coef = n_v * scale
        q_all = _softmax_(torch.sub(teacher.unflatten(0, (n_global, batch)), center.reshape(1, n_cols).float()),
                          inv_tt)
        big_q_buf = torch.empty(chunk, n_cols, device=dev)
        x_buf = torch.empty(views, chunk, n_cols, device=dev)
        for b0 in range(0, batch, chunk):
            b1 = min(b0 + chunk, batch)
            q = q_all[:, b0:b1]
            big_q = big_q_buf[: b1 - b0].copy_(q[0])
            for g in range(1, n_global):
                big_q.add_(q[g])
            x = x_buf[:, : b1 - b0].copy_(s3[:, b0:b1])
            # p_v = exp(x_v / tau_s - lse_v), clamped like the forward's exponent; one op for the shift
            torch.add(row_stats[:, b0:b1].neg(), x, alpha=inv_ts, out=x).clamp_min_(_EXP_FLOOR).exp_()
            # dS_v = coef_v * p_v - scale * (Q - [v < G] q_v)
            q.sub_(big_q).mul_(scale)
            big_q.mul_(-scale)
            torch.addcmul(q, x[:n_global], coef[:n_global], out=x[:n_global])
            torch.addcmul(big_q, x[n_global:], coef[n_global:], out=x[n_global:])
            g3[:, b0:b1].copy_(x)


def _scale_by_grad_output_(grad, grad_output, backend) -> None:
    """grad *= grad_output, without a host-device sync, bit for bit as `grad.mul_(grad_output)`."""
    if backend == "triton":
        _scale_by_grad_output_triton(grad, grad_output)  # skips the pass on the device when grad_output == 1
    elif grad_output.device.type == "cpu":
        if grad_output.item() != 1.0:  # a CPU value: reading it syncs nothing, and skipping saves a pass
            grad.mul_(grad_output)
    else:
        grad.mul_(grad_output)  # torch backend on a GPU: always, reading the value would sync


def defers_gradient(dtype: torch.dtype) -> bool:
    """True when the loss computes the student gradient in the backward rather than in the forward: fp16 logits,
    whose unscaled gradient entries would underflow (see the module docstring)."""
    return dtype == torch.float16


_FORWARDS = {"triton": _triton_forward, "torch": _torch_forward}
_BACKWARDS = {"triton": _triton_backward, "torch": _torch_backward}
_ROW_STATS = {"triton": _triton_row_stats, "torch": _torch_row_stats}


class DINOLossFunction(torch.autograd.Function):
    """fp32/bf16: loss and student gradient in the forward, the backward only scales the saved gradient.
    fp16: loss and per-row statistics in the forward, the gradient (times grad_output) in the backward."""

    @staticmethod
    def forward(ctx, student, teacher, center, colsum, ncrops, n_global, student_temp, teacher_temp, backend,
                inplace, need_grad):
        # Overwrite only an intermediate result that owns its memory. A leaf is the caller's own data (and
        # would end up equal to its .grad); a view shares memory with its base, and autograd regenerates a
        # view's grad_fn after an in-place change. A copy made here (Triton needs unit column stride) is ours.
        writable = inplace and not student.is_leaf and not student._is_view() and student.stride(-1) == 1
        if backend == "triton" and student.stride(-1) != 1:
            student, writable = student.contiguous(), True
        if backend == "triton" and teacher.stride(-1) != 1:
            teacher = teacher.contiguous()
        deferred = need_grad and defers_gradient(student.dtype)
        grad = row_stats = None
        if deferred:
            row_stats = _ROW_STATS[backend](student, ncrops, n_global)
        elif need_grad:
            grad = student if writable else torch.empty_like(student, memory_format=torch.contiguous_format)
        kwargs = dict(ncrops=ncrops, n_global=n_global, student_temp=student_temp, teacher_temp=teacher_temp)
        loss = _FORWARDS[backend](student, teacher, center, grad, colsum, row_stats, **kwargs)
        if grad is student:
            torch.autograd.graph.increment_version(student)  # Triton writes behind autograd's back
        ctx.grad_student, ctx.row_stats, ctx.writable = grad, row_stats, writable
        ctx.backend, ctx.kwargs = backend, kwargs
        if deferred:
            # The centre is updated in place right after the loss: keep the one this loss used ([K] fp32).
            # save_for_backward checks that nobody changes the logits or the teacher output before the backward.
            ctx.save_for_backward(student, teacher, center.detach().reshape(-1).float().clone())
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad, row_stats = ctx.grad_student, ctx.row_stats
        if grad is None and row_stats is None:
            raise RuntimeError("dino_loss: backward ran twice through the same loss; its gradient is computed once "
                               "(call the loss again instead of retain_graph=True)")
        ctx.grad_student = ctx.row_stats = None
        if row_stats is not None:
            student, teacher, center = ctx.saved_tensors
            grad = student if ctx.writable else torch.empty_like(student, memory_format=torch.contiguous_format)
            _BACKWARDS[ctx.backend](student, teacher, center, row_stats, grad, grad_output, **ctx.kwargs)
            if grad is student:
                torch.autograd.graph.increment_version(student)  # an op that saved the logits must now raise
        else:
            _scale_by_grad_output_(grad, grad_output, ctx.backend)  # e.g. GradScaler or a loss weight
        return grad, None, None, None, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------
# Functional form and module
# ----------------------------------------------------------------------------------------------------


def _check_temperature(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite temperature > 0, got {value}")
    return value


def _check_views(ncrops: int, n_global: int) -> None:
    if n_global < 1 or ncrops < 2 or n_global > ncrops:
        raise ValueError(f"DINO loss needs ncrops >= 2 and 1 <= n_global <= ncrops (the global views are the first "
                         f"n_global student views), got ncrops={ncrops}, n_global={n_global}")


def _check_inputs(student, teacher, center, ncrops, n_global) -> None:
    _check_views(ncrops, n_global)
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(f"student_output and teacher_output must be 2-D [rows, K], got shapes "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise ValueError(f"DINO loss needs floating-point logits, got {student.dtype} and {teacher.dtype}")
    if student.shape[0] % ncrops:
        raise ValueError(f"student_output has {student.shape[0]} rows, not divisible by ncrops={ncrops}")
    if teacher.shape[0] % n_global:
        raise ValueError(f"teacher_output has {teacher.shape[0]} rows, not divisible by n_global={n_global}")
    if student.shape[0] // ncrops != teacher.shape[0] // n_global:
        raise ValueError(f"batch sizes differ: student_output has {student.shape[0]} rows = {ncrops} crops x "
                         f"{student.shape[0] // ncrops} images, teacher_output has {teacher.shape[0]} rows = "
                         f"{n_global} global views x {teacher.shape[0] // n_global} images")
    if student.shape[0] == 0:
        raise ValueError("student_output is empty")
    k = student.shape[1]
    if teacher.shape[1] != k or center.numel() != k:
        raise ValueError(f"mismatched K (out_dim): student_output has {k} columns, teacher_output "
                         f"{teacher.shape[1]}, center {center.numel()} values (shape {tuple(center.shape)})")
    if not (student.device == teacher.device == center.device):
        raise ValueError(f"student_output, teacher_output and center must be on one device, got {student.device}, "
                         f"{teacher.device}, {center.device}")


def _dino_loss(student_output, teacher_output, center, colsum, *, ncrops, n_global, student_temp, teacher_temp,
               backend, inplace):
    """dino_loss, plus the teacher's column sum written into `colsum` (fp32 [K]) when it is not None."""
    student_temp = _check_temperature("student_temp", student_temp)
    teacher_temp = _check_temperature("teacher_temp", teacher_temp)
    _check_inputs(student_output, teacher_output, center, ncrops, n_global)
    backend = resolve_backend(backend, student_output.device)
    if backend == "reference":
        if colsum is not None:
            colsum.copy_(teacher_output.detach().float().sum(0))
        return reference_dino_loss(student_output, teacher_output.detach(), center, ncrops=ncrops, n_global=n_global,
                                   student_temp=student_temp, teacher_temp=teacher_temp)
    # Inside Function.forward grad mode is always off, and needs_input_grad ignores torch.no_grad(): decide here.
    need_grad = torch.is_grad_enabled() and student_output.requires_grad
    return DINOLossFunction.apply(student_output, teacher_output.detach(), center.detach(), colsum, ncrops, n_global,
                                  student_temp, teacher_temp, backend, inplace, need_grad)


def dino_loss(student_output: torch.Tensor, teacher_output: torch.Tensor, center: torch.Tensor, *, ncrops: int,
              n_global: int = 2, student_temp: float = 0.1, teacher_temp: float = 0.04, backend: str = "auto",
              inplace: bool = False) -> torch.Tensor:
    """The DINO loss without centre update (for code that manages the centre itself).

    student_output [ncrops*B, K] (global views first), teacher_output [n_global*B, K], center [1, K] or [K];
    any float dtype, computed in fp32. Returns a 0-d fp32 tensor equal to
    `reference_dino_loss(...)`. inplace=True writes the gradient into student_output's memory (when it is an
    intermediate, non-leaf tensor) instead of a new buffer of its size; see the module docstring.
    """
    return _dino_loss(student_output, teacher_output, center, None, ncrops=ncrops, n_global=n_global,
                      student_temp=student_temp, teacher_temp=teacher_temp, backend=backend, inplace=inplace)


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int,
                          nepochs: int) -> np.ndarray:
    """DINO's per-epoch teacher temperature: linear warm-up, then constant (facebookresearch/dino main_dino.py
    L374-377). The same as fastdino.schedules.teacher_temp_schedule (a test keeps them equal): kernels/ imports
    nothing of fastdino, so that it can be vendored with torch and triton only."""
    warmup = np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
    return np.concatenate((warmup, np.ones(max(nepochs - warmup_teacher_temp_epochs, 0)) * teacher_temp))


def _resolve_n_global(n_global: int | None, teacher_crops_number: int | None) -> int:
    """n_global (fastdino's name) or teacher_crops_number (DINO-MC's, main_dino_mc.py L276): the number of teacher
    (global) views; 2 when neither is given, as in DINO."""
    if n_global is not None and teacher_crops_number is not None and n_global != teacher_crops_number:
        raise ValueError(f"DINOLoss: teacher_crops_number={teacher_crops_number} and n_global={n_global} disagree; "
                         "both name the number of teacher (global) views (teacher_crops_number is DINO-MC's name): "
                         "pass one of them")
    if n_global is not None:
        return operator.index(n_global)
    return operator.index(teacher_crops_number) if teacher_crops_number is not None else 2


def _check_not_a_teacher_crops_number(student_temp) -> None:
    """DINO-MC's DINOLoss takes teacher_crops_number where DINO's (and this one) takes student_temp: the 7th
    positional argument (WennyXY/DINO-MC main_dino_mc.py L420-422 at commit ac31459; facebookresearch/dino
    main_dino.py L364-366 at commit cc72fe9). A count there is a DINO-MC-shaped call, not a temperature: DINO's
    student temperature is 0.1, and one above 1 flattens the student's softmax."""
    if isinstance(student_temp, numbers.Integral) or (isinstance(student_temp, numbers.Real) and student_temp > 1):
        raise TypeError(
            f"DINOLoss: student_temp={student_temp!r} (the 7th positional argument) is not a student temperature "
            f"(DINO: 0.1, a float <= 1). DINO-MC's DINOLoss takes teacher_crops_number in that place; here pass it "
            f"by keyword: DINOLoss(out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, "
            f"nepochs, teacher_crops_number={student_temp!r})")


class DINOLoss(nn.Module):
    """Drop-in for the original DINO loss module: same constructor (facebookresearch/dino main_dino.py L364-366,
    positional arguments included), `center` buffer [1, out_dim] (state dicts load both ways), forward(
    student_output, teacher_output, epoch) -> loss, centre updated after the loss from the raw teacher logits and
    all-reduced across ranks. DINO-MC's keyword `teacher_crops_number` (main_dino_mc.py L276) is accepted as the
    same thing as `n_global`; n_global=3 serves DINO-TP. Passed positionally in DINO-MC's order (7th) it would land
    on student_temp: an int or a student_temp > 1 is a TypeError saying so.

    inplace=False (default): the caller's student_output is left as it was. inplace=True writes the gradient into
    its memory instead of a buffer of its size (fastdino's trainer; see the module docstring and docs/loss.md)."""

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9, *, n_global: int | None = None, teacher_crops_number: int | None = None,
                 backend: str = "auto", inplace: bool = False, centering: str = "centering"):
        super().__init__()
        _check_not_a_teacher_crops_number(student_temp)
        n_global = _resolve_n_global(n_global, teacher_crops_number)
        _check_views(ncrops, n_global)
        if nepochs < 1 or warmup_teacher_temp_epochs < 0:
            raise ValueError(f"DINOLoss needs nepochs >= 1 and warmup_teacher_temp_epochs >= 0, got {nepochs} and "
                             f"{warmup_teacher_temp_epochs}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temp = _check_temperature("student_temp", student_temp)
        _check_temperature("warmup_teacher_temp", warmup_teacher_temp)
        _check_temperature("teacher_temp", teacher_temp)
        self.center_momentum = center_momentum
        self.ncrops, self.n_global = ncrops, n_global
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.backend, self.inplace, self.centering = backend, inplace, centering
        self.register_buffer("center", torch.zeros(1, out_dim))
        # One value per epoch: linear warm-up, then constant (as in DINO).
        self.teacher_temp_schedule = teacher_temp_schedule(warmup_teacher_temp, teacher_temp,
                                                           warmup_teacher_temp_epochs, nepochs)

    def teacher_temp(self, epoch: int) -> float:
        epoch = operator.index(epoch)
        if not 0 <= epoch < len(self.teacher_temp_schedule):
            raise ValueError(f"epoch {epoch} is outside the teacher temperature schedule (epochs 0 to "
                             f"{len(self.teacher_temp_schedule) - 1}); build DINOLoss with nepochs > {epoch}")
        return float(self.teacher_temp_schedule[epoch])

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        teacher_temp = self.teacher_temp(epoch)
        sinkhorn = self.centering == "sinkhorn_knopp"
        # DINOv2's Sinkhorn-Knopp targets are a softmax around a per-batch centre (kernels/sinkhorn.py); the
        # running centre then stays as it is, as in DINOv2.
        center = sinkhorn_knopp_centre(teacher_output, teacher_temp) if sinkhorn else self.center
        colsum = torch.empty(teacher_output.shape[-1], dtype=torch.float32, device=teacher_output.device)
        loss = _dino_loss(student_output, teacher_output, center, colsum, ncrops=self.ncrops,
                          n_global=self.n_global, student_temp=self.student_temp,
                          teacher_temp=teacher_temp, backend=self.backend, inplace=self.inplace)
        if not sinkhorn:
            self._update_center_from_sum(colsum, teacher_output.shape[0])
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """The original DINO method: EMA of the batch mean of the raw teacher logits."""
        self._update_center_from_sum(teacher_output.float().sum(0), teacher_output.shape[0])

    @torch.no_grad()
    def _update_center_from_sum(self, colsum: torch.Tensor, n_rows: int) -> None:
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(colsum)
            world_size = dist.get_world_size()
        batch_center = colsum.view(1, -1) / (n_rows * world_size)
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype), alpha=1 - self.center_momentum)

    def extra_repr(self) -> str:
        return (f"out_dim={self.center.shape[1]}, ncrops={self.ncrops}, n_global={self.n_global}, "
                f"student_temp={self.student_temp}, center_momentum={self.center_momentum}, backend={self.backend!r}, "
                f"centering={self.centering!r}")
