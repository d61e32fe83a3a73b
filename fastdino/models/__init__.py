"""fastdino.models: backbones by name, the packed multi-crop student, the DINO head, iBOT's patch masking."""

from .attention import ATTN_BACKENDS, resolve_attn_backend
from .backbone import TimmBackbone
from .batchnorm import AllReduceBatchNorm, convert_sync_batchnorm, has_batchnorms
from .factory import create_backbone, list_backbones
from .head import DINOHead
from .masking import MaskToken, sample_patch_masks
from .reference import reference_forward_views
from .vit import PackedViT
from .wrapper import MultiCropOutput, MultiCropWrapper

__all__ = [
    "ATTN_BACKENDS",
    "AllReduceBatchNorm",
    "DINOHead",
    "MaskToken",
    "MultiCropOutput",
    "MultiCropWrapper",
    "PackedViT",
    "TimmBackbone",
    "convert_sync_batchnorm",
    "create_backbone",
    "has_batchnorms",
    "list_backbones",
    "reference_forward_views",
    "resolve_attn_backend",
    "sample_patch_masks",
]
