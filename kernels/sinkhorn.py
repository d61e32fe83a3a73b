"""DINOv2's Sinkhorn-Knopp teacher targets, as a centre the fused DINO loss can read.

DINOv2 (facebookresearch/dinov2, dinov2/loss/dino_clstoken_loss.py, `DINOLoss.sinkhorn_knopp_teacher`; the same
in dinov2/loss/ibot_patch_loss.py for the masked patches; switched on by `train.centering: sinkhorn_knopp`,
dinov2/configs/train/vitl14.yaml) replaces the running centre by three Sinkhorn-Knopp iterations over the batch:
starting from exp(t / T), it alternately rescales every prototype to the same total mass over the batch (all ranks)
and every row to mass 1. The result is the exp(t / T) matrix rescaled by one factor u[k] per prototype and one
factor v[b] per row, so each target row is

    softmax(t[b] / T + log u)  =  softmax((t[b] - c) / T)  with  c = -T log u.

`sinkhorn_knopp_centre` returns that c, so the fused loss (which centres and sharpens the teacher itself) gives
DINOv2's targets without a second kernel. `reference_sinkhorn_knopp` (kernels/reference.py) is DINOv2's loop
as written; the tests compare the two.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SK_ITERATIONS = 3  # DINOv2's n_iterations (dino_clstoken_loss.py, `sinkhorn_knopp_teacher`)


def _all_reduce(tensor: torch.Tensor, maximum: bool = False) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sinkhorn_knopp_centre(teacher_logits: torch.Tensor, teacher_temp: float,
                          n_iterations: int = SK_ITERATIONS) -> torch.Tensor:
    """teacher_logits [B, K] (this rank's rows; every rank calls this, with B >= 0) -> centre [1, K] in fp32 such
    that softmax((teacher_logits - centre) / teacher_temp) equals DINOv2's Sinkhorn-Knopp targets over the rows
    of all ranks. On several ranks: one all-reduce of K floats, plus one per iteration."""
    if teacher_logits.dim() != 2:
        raise ValueError(f"sinkhorn_knopp_centre expects teacher logits [rows, K], got {tuple(teacher_logits.shape)}")
    if not teacher_temp > 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    logits = teacher_logits.float()
    # exp((t - m) / T) with m each prototype's maximum over all rows: a factor per prototype, which the first
    # prototype normalisation removes, so the iterations are DINOv2's; but exp() neither overflows nor leaves a
    # prototype without mass. (A shift per row would change the result: the iterations stop before convergence.)
    shift = logits.amax(0) if len(logits) else logits.new_full(logits.shape[1:], float("-inf"))
    shift = _all_reduce(shift, maximum=True)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)  # no rows on any rank: a centre nothing reads
    q = (logits - shift).div_(teacher_temp).exp_()  # [B, K]
    # The iterates are q[b, k] x u[k] x v[b]: each normalisation only updates a scale vector, one matrix-vector
    # product over q (read-only), instead of rescaling the whole matrix in place as DINOv2's loop does.
    tiny = torch.finfo(torch.float32).tiny
    row_scale = torch.ones(len(q), dtype=q.dtype, device=q.device)
    for _ in range(n_iterations):
        prototype_mass = _all_reduce(row_scale @ q).clamp_(min=tiny)  # DINOv2's sum_of_rows (Q is K x B there)
        prototype_scale = prototype_mass.reciprocal()
        row_scale = (q @ prototype_scale).clamp_(min=tiny).reciprocal_()  # each row to mass 1
    # The targets are softmax((t - m) / T + log u) = softmax((t - c) / T) with c = m - T log u; DINOv2's constant
    # factors (1 / sum, 1 / K, 1 / B, x B) are the same for every prototype and cancel, like the row scales.
    centre = shift - teacher_temp * prototype_scale.log() if n_iterations else shift
    return (centre - centre.max()).view(1, -1)  # any constant shift is the same centre; keep the numbers small
