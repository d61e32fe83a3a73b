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

    def forward(self, views: list[torch.Tensor] | torch.Tensor, return_features: bool = False):
        """return_features=True: (logits, backbone features [sum B_v, D]), for a loss on the features."""
        if isinstance(views, torch.Tensor):
            views = [views]
        features = self.backbone.forward_views(views)
        logits = self.head(features)
        return (logits, features) if return_features else logits
