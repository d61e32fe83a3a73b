"""fastdino.kernels: the fused DINO loss and the fused teacher EMA (Triton on CUDA, torch elsewhere),
with the readable originals in fastdino.kernels.reference; beside the DINO loss, the other objectives
(iBOT's masked-patch loss, DINOv2's KoLeo regulariser, the Sinkhorn-Knopp centre), in torch.

To run the Triton kernels on a CPU through the interpreter, set TRITON_INTERPRET=1 before this
package is imported (Triton reads it when the kernels are defined). `python -m fastdino.kernels.aot`
compiles every kernel for real GPUs without one.

The package imports nothing else of fastdino (torch, triton and numpy only), so the folder can be
copied into other DINO code under any package name.
"""

from .ema import FlatEMA
from .ibot_loss import IBOTPatchLoss, teacher_at_masks
from .koleo import koleo_loss, koleo_per_view
from .loss import DINOLoss, dino_loss
from .reference import reference_center_update, reference_dino_loss, reference_ema_update, reference_sinkhorn_knopp
from .sinkhorn import sinkhorn_knopp_centre
from .utils import resolve_backend

__all__ = [
    "DINOLoss",
    "dino_loss",
    "IBOTPatchLoss",
    "teacher_at_masks",
    "koleo_loss",
    "koleo_per_view",
    "FlatEMA",
    "reference_dino_loss",
    "reference_center_update",
    "reference_ema_update",
    "reference_sinkhorn_knopp",
    "sinkhorn_knopp_centre",
    "resolve_backend",
]
