"""Backbone + head as DINO's MultiCropWrapper, with the backbone's multi-crop path (packed for ViTs)."""

from __future__ import annotations

import torch
import torch.nn as nn


class MultiCropWrapper(nn.Module):
    """forward(views) -> head logits [sum B_v, out_dim], in view order, from one backbone pass and one head
    call. The teacher is the same module given only the global views."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mask_token: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.mask_token = mask_token  # iBOT (fastdino/ibot.py): inside the module DDP wraps, so its gradient syncs

    def forward(self, views: list[torch.Tensor] | torch.Tensor, return_features: bool = False,
                masks: list[torch.Tensor] | None = None, patch_views: int = 0):
        """return_features=True: (logits, backbone features [sum B_v, D]), for a loss on the features.

        patch_views > 0 (iBOT): (logits, features, patch logits). The patch logits are the head's output for the
        patch tokens of the first patch_views views: with `masks` (the student) for the masked patches only, in
        mask order (the loss reads no other), without (the teacher) for all of them, [sum B_v, h*w, out_dim]."""
        if isinstance(views, torch.Tensor):
            views = [views]
        if not patch_views:
            features = self.backbone.forward_views(views)
            logits = self.head(features)
            return (logits, features) if return_features else logits
        token = None if masks is None else self.mask_token.weight[0]
        # the student's last block and head run at the masked patches only (the loss reads no other)
        select = None if masks is None else torch.cat(masks[:patch_views])
        features, patches = self.backbone.forward_views(views, masks=masks, mask_token=token, patch_views=patch_views,
                                                        patch_select=select)
        rows = patches if masks is not None else patches.flatten(0, 1)
        logits = self.head(torch.cat([features, rows]))  # one head call: the head works row by row
        cls_logits, patch_logits = logits[: len(features)], logits[len(features) :]
        if masks is None:
            patch_logits = patch_logits.view(*patches.shape[:2], -1)
        return cls_logits, features, patch_logits
