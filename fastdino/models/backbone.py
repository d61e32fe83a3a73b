"""TimmBackbone: a timm model returning its pooled feature [B, D], run once per crop size.

It is the whole backbone for models without a packed path (ResNet-50, WRN-50-2, Swin-T: convolutions and
windowed attention cannot mix crops of different sizes in one call), and the base of PackedViT, which keeps
its construction and single-size forward and replaces `forward_views` with the packed pass. Swin-T works at
every DINO-MC crop size because timm builds its shifted-window masks per input size (`dynamic_img_size=True`)
and pads to whole windows; inputs are floored to its patch (4 px) like the ViTs.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn

from .patch_input import floor_to_patch
from .reference import reference_forward_views


class TimmBackbone(nn.Module):
    """A timm model returning its pooled feature [B, D] (num_classes=0), with the per-size multi-crop path.

    timm_name / timm_kwargs: what `timm.create_model(timm_name, num_classes=0, **timm_kwargs)` needs to rebuild
    `timm_model` for export (training-only settings such as drop_path_rate, and init_kwargs, which only change
    the initial weights, are left out of timm_kwargs)."""

    def __init__(self, timm_name: str, *, drop_path_rate: float = 0.0, grad_checkpointing: bool = False,
                 floor_to: int = 1, init_kwargs: dict | None = None, **timm_kwargs):
        super().__init__()
        self.timm_name = timm_name
        self.timm_kwargs = dict(timm_kwargs)
        self.timm_model = timm.create_model(timm_name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                                            **(init_kwargs or {}), **self.timm_kwargs)
        self.embed_dim = self.timm_model.num_features
        self.patch_size = floor_to  # inputs are floored to a multiple of it; 1 for CNNs: nothing to floor
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.timm_model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature [B, D] of one batch of one size, through timm's forward."""
        return self.timm_model(floor_to_patch(x, self.patch_size))

    def forward_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Features [sum B_v, D] of all views, in view order: one forward per run of same-size views."""
        return reference_forward_views(self, views)
