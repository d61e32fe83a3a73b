"""Backbone + head as DINO's MultiCropWrapper, with the backbone's multi-crop path (packed for ViTs)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn


class MultiCropOutput(NamedTuple):
    """What `MultiCropWrapper.forward` returns, always this type (named, as DINOv2 names its backbone's outputs);
    the fields a call does not produce are None. Rows are in view order."""

    logits: torch.Tensor  # the head at each crop's CLS feature, [sum B_v, out_dim]
    features: torch.Tensor  # the backbone's CLS features the head read, [sum B_v, D] (KoLeo reads them)
    # iBOT (patch_views > 0): the head at the patch tokens of the first patch_views views; see forward
    patch_logits: torch.Tensor | None = None
    patch_logit_means: torch.Tensor | None = None  # the teacher with patch_select: each crop's mean patch logit


class MultiCropWrapper(nn.Module):
    """forward(views) -> MultiCropOutput: head logits [sum B_v, out_dim], in view order, from one backbone pass and
    one head call. The teacher is the same module given only the global views."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mask_token: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.mask_token = mask_token  # iBOT (masking.py): inside the module DDP wraps, so its gradient syncs

    def forward(self, views: list[torch.Tensor] | torch.Tensor, masks: list[torch.Tensor] | None = None,
                patch_views: int = 0, patch_select: torch.Tensor | None = None) -> MultiCropOutput:
        """MultiCropOutput(logits, features): the head's logits and the backbone's features they come from.

        patch_views > 0 (iBOT): also `patch_logits`, for the patch tokens of the first patch_views views. The
        student (with `masks`): the head's output at the masked patches only, in mask order (the loss reads no
        other). The teacher (no masks): at every patch, [sum B_v, h*w, out_dim]; or, given `patch_select` (the
        student's masks, bool [sum B_v, h*w]), at the selected patches in mask order, plus `patch_logit_means`,
        each crop's mean patch logit [sum B_v, out_dim]: the same numbers iBOT's loss reads, without the out_dim
        product at the other patches (the head's last layer is linear, so the mean of its outputs is its output at
        the mean of its inputs)."""
        if isinstance(views, torch.Tensor):
            views = [views]
        if not patch_views:
            features = self.backbone.forward_views(views)
            return MultiCropOutput(self.head(features), features)
        if masks is None:
            return self._teacher_patches(views, patch_views, patch_select)
        # the student's last block and head run at the masked patches only (the loss reads no other)
        select = torch.cat(masks[:patch_views])
        features, patches = self.backbone.forward_views(views, masks=masks, mask_token=self.mask_token.weight[0],
                                                        patch_views=patch_views, patch_select=select)
        logits = self.head(torch.cat([features, patches]))  # one head call: the head works row by row
        return MultiCropOutput(logits[: len(features)], features, logits[len(features) :])

    def _teacher_patches(self, views: list[torch.Tensor], patch_views: int,
                         patch_select: torch.Tensor | None) -> MultiCropOutput:
        features, patches = self.backbone.forward_views(views, patch_views=patch_views)
        n_cls, (n_crops, n_patches) = len(features), patches.shape[:2]
        if patch_select is None:
            logits = self.head(torch.cat([features, patches.flatten(0, 1)]))
            return MultiCropOutput(logits[:n_cls], features, logits[n_cls:].view(n_crops, n_patches, -1))
        embedded = self.head.embed(torch.cat([features, patches.flatten(0, 1)]))  # the MLP at every row
        patch_embedded = embedded[n_cls:]
        read = torch.cat([embedded[:n_cls], patch_embedded[patch_select.flatten()],
                          patch_embedded.view(n_crops, n_patches, -1).mean(1)])
        logits = self.head.last_layer(read)  # the out_dim product: CLS, selected patches, one mean row per crop
        n_selected = len(read) - n_cls - n_crops
        return MultiCropOutput(logits[:n_cls], features, logits[n_cls : n_cls + n_selected],
                               logits[n_cls + n_selected :])
