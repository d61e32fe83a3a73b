"""Readable references for every fused op in fastdino.kernels.

These are the original DINO code paths, written for clarity, not speed. The tests compare every
fast backend against them on fresh random inputs, and the benchmarks time them in the same run.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def reference_dino_loss(
    student_output: torch.Tensor,
    teacher_output: torch.Tensor,
    center: torch.Tensor,
    *,
    ncrops: int,
    n_global: int = 2,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """The DINO loss as the original code computes it: a loop over (teacher view, student view) pairs.

    student_output: [ncrops * B, K], global views first; teacher_output: [n_global * B, K];
    center: [1, K] (or [K]). Returns the mean over pairs of the batch-mean cross-entropy
    -sum_k q_g[k] * log p_v[k], pairs with v == g left out. Computed in fp32: for bf16/fp16 logits autograd
    computes the gradient in fp32, multiplied by the incoming gradient (e.g. a GradScaler's factor), and
    rounds it to the logits' dtype once, at the `.float()` cast. The fused loss's gradients are tested
    against exactly that.
    """
    student_out = (student_output.float() / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher_output.float() - center.float()) / teacher_temp, dim=-1).detach().chunk(n_global)
    total_loss = 0.0
    n_loss_terms = 0
    for g, q in enumerate(teacher_out):
        for v, s in enumerate(student_out):
            if v == g:  # the same view seen by both networks is skipped
                continue
            total_loss = total_loss + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


@torch.no_grad()
def reference_center_update(center: torch.Tensor, teacher_output: torch.Tensor, momentum: float) -> torch.Tensor:
    """DINO's centre EMA over the batch mean of the raw teacher logits, averaged across ranks."""
    batch_center = torch.sum(teacher_output.float(), dim=0, keepdim=True)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_center)
        world_size = dist.get_world_size()
    batch_center = batch_center / (len(teacher_output) * world_size)
    return center * momentum + batch_center.reshape(center.shape) * (1 - momentum)


@torch.no_grad()
def reference_sinkhorn_knopp(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3,
                             n_rows: int | None = None) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp teacher targets [B, K], as its loop computes them (dinov2/loss/dino_clstoken_loss.py,
    `sinkhorn_knopp_teacher`): Q = exp(t / T) as K x B, normalised to sum 1; then n_iterations times every
    prototype (row of Q) to mass 1/K over the batch of all ranks and every sample (column) to mass 1/B; finally
    x B, so each sample's targets sum to 1. n_rows: B over all ranks (default: this rank's rows x world size;
    iBOT's patch version passes the all-reduced count of masked patches)."""
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    q = torch.exp(teacher_output.float() / teacher_temp).t()
    n_samples = n_rows if n_rows is not None else q.shape[1] * world_size
    n_prototypes = q.shape[0]
    total = q.sum()
    if world_size > 1:
        dist.all_reduce(total)
    q /= total
    for _ in range(n_iterations):
        prototype_mass = q.sum(dim=1, keepdim=True)
        if world_size > 1:
            dist.all_reduce(prototype_mass)
        q /= prototype_mass
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


EMA_BUFFERS = ("none", "copy", "average")


@torch.no_grad()
def reference_ema_update(student: nn.Module, teacher: nn.Module, momentum: float, buffers: str = "none") -> None:
    """DINO's teacher update: a Python loop over every parameter tensor (one or two kernels each).

    teacher <- momentum * teacher + (1 - momentum) * student, over the parameters only, as DINO's loop
    (main_dino.py L346-350); a BatchNorm teacher keeps the running statistics of its own forwards.
    buffers="copy": the student's floating-point buffers (BatchNorm running statistics) are copied into the
    teacher; "average": they follow the same EMA. Integer buffers (num_batches_tracked) are never touched.
    """
    if buffers not in EMA_BUFFERS:
        raise ValueError(f"reference_ema_update: buffers must be one of {EMA_BUFFERS}, got {buffers!r}")
    for param_s, param_t in zip(student.parameters(), teacher.parameters(), strict=True):
        param_t.data.mul_(momentum).add_((1 - momentum) * param_s.detach().data)
    if buffers == "none":
        return
    for buf_s, buf_t in zip(student.buffers(), teacher.buffers(), strict=True):
        if not buf_t.dtype.is_floating_point:
            continue
        if buffers == "copy":
            buf_t.copy_(buf_s)
        else:
            buf_t.mul_(momentum).add_((1 - momentum) * buf_s)
