"""Backbone + head as DINO's MultiCropWrapper, with the backbone's multi-crop path (packed for ViTs)."""

from __future__ import annotations

import torch
import torch.nn as nn


class MultiCropWrapper(nn.Module):
    """forward(views) -> head logits [sum B_v, out_dim], in view order, from one backbone pass and one head
    call. The teacher is the same module given only the global views."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(views, torch.Tensor):
            views = [views]
        return self.head(self.backbone.forward_views(views))
