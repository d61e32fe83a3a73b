"""Backbones without a packed path (ResNet-50, WRN-50-2, Swin-T): a timm model run once per crop size.

Convolutions and windowed attention cannot mix crops of different sizes in one call, so `forward_views`
is the per-size loop of the original wrapper. Swin-T works at every DINO-MC crop size because timm builds
its shifted-window masks per input size (`dynamic_img_size=True`) and pads to whole windows; inputs are
floored to its patch (4 px) like the ViTs.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn

from .reference import reference_forward_views
from .vit import floor_to_patch


class TimmBackbone(nn.Module):
    """A timm model returning its pooled feature [B, D] (num_classes=0), with the per-size multi-crop path."""

    def __init__(self, timm_name: str, *, drop_path_rate: float = 0.0, grad_checkpointing: bool = False,
                 patch_size: int = 1, **timm_kwargs):
        super().__init__()
        self.timm_name = timm_name
        self.timm_kwargs = dict(timm_kwargs)
        self.timm_model = timm.create_model(timm_name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                                            **self.timm_kwargs)
        self.embed_dim = self.timm_model.num_features
        self.patch_size = patch_size  # 1 for CNNs: nothing to floor
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.timm_model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.timm_model(floor_to_patch(x, self.patch_size))

    def forward_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        return reference_forward_views(self, views)
