"""iBOT's masked-patch loss (Zhou et al. 2022, bytedance/ibot), added to the DINO loss with `loss.ibot_weight`.

The student sees its global views with some patch embeddings replaced by a learned mask token (the token and the
mask sampling: fastdino/models/masking.py); the teacher sees them whole. For every masked patch, the student's head
output at that patch is pulled towards the teacher's centred, sharpened output at the same patch of the same view:
a cross-entropy like DINO's, over patch tokens instead of CLS tokens, with its own centre. DINO gives one target per
view; this gives one per masked patch.

Values from the original (bytedance/ibot), cited by function and argument:
- the loss (main_ibot.py, `iBOTLoss.forward`): teacher view q against the student's same view q only; per crop
  the mean over its masked patches (a crop without masks adds 0), the mean over crops and views; weight
  `--lambda2 1.0`; student temperature 0.1; teacher patch temperature `--teacher_patch_temp 0.07` after the
  same warm-up as the CLS temperature (from `--warmup_teacher_patch_temp 0.04`);
- the centre (`iBOTLoss.update_center`): EMA (momentum 0.9) of the mean raw teacher patch logit, over all patches
  of all global crops on all ranks (fastdino's teacher gives that mean as the head's last layer at the mean
  normalised bottleneck: the layer is linear, so it is the same number, without the out_dim product at the
  patches no loss reads);
- `centering="sinkhorn_knopp"` (DINOv2's alternative, dinov2/loss/ibot_patch_loss.py): the targets come from
  Sinkhorn-Knopp over the masked rows of all ranks instead of the running centre (sinkhorn.py);
- the head: shared with the CLS tokens (`--shared_head true` in the ViT-S/16 command), so patch logits have
  the CLS head's out_dim.

torch only (and this package's own modules), like the rest of kernels/.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .loss import CENTERINGS
from .sinkhorn import sinkhorn_knopp_centre


class IBOTPatchLoss(nn.Module):
    """forward(student_patch_logits [M, K] and teacher_patch_logits [M, K] at the masked patches (in mask order),
    masks bool [N, P] of the N global crops, teacher_temp, teacher_patch_mean [N, K]: each crop's mean raw teacher
    logit over all P patches, for the centre) -> loss; updates the centre after.

    From the teacher's full output [N, P, K]: `teacher_at_masks(full, masks)`. fastdino's training step instead gets
    the masked rows and the means from the teacher's wrapper (`patch_select`), which skips the head's last layer at
    the unmasked patches; the same numbers (tests/test_ibot.py)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "centering"):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_patch_logits: torch.Tensor, teacher_patch_logits: torch.Tensor, masks: torch.Tensor,
                teacher_temp: float, teacher_patch_mean: torch.Tensor) -> torch.Tensor:
        sinkhorn = self.centering == "sinkhorn_knopp"
        # DINOv2 (ibot_patch_loss.py, `sinkhorn_knopp_teacher`): over the masked rows of all ranks, no running centre
        center = sinkhorn_knopp_centre(teacher_patch_logits, teacher_temp) if sinkhorn else self.center
        targets = F.softmax((teacher_patch_logits.float() - center) / teacher_temp, dim=-1)
        log_p = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)
        per_patch = -(targets * log_p).sum(-1)  # [M]
        # per crop: the mean over its masked patches; then the mean over all N crops (unmasked ones add 0).
        # Rows come in mask order, so each crop's weight repeats once per masked patch; output_size: no host sync.
        count = masks.sum(1)
        weights = torch.repeat_interleave(1.0 / count.clamp(min=1).to(per_patch.dtype), count,
                                          output_size=len(per_patch))
        loss = (per_patch * weights).sum() / masks.shape[0]
        if not sinkhorn:
            self.update_center(teacher_patch_mean)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_patch_mean: torch.Tensor) -> None:
        """EMA of the mean raw teacher patch logit (each crop's patch mean, averaged over crops and ranks)."""
        total = teacher_patch_mean.float().sum(0, keepdim=True)
        count = teacher_patch_mean.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


def teacher_at_masks(teacher_patch_logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's full patch output [N, P, K] -> (its rows at the masked patches [M, K], in mask order; each
    crop's mean over all P patches [N, K]): what IBOTPatchLoss reads, the way iBOT's loss computes it."""
    return teacher_patch_logits[masks], teacher_patch_logits.float().mean(1)
