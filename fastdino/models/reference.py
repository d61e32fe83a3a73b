"""The original multi-crop forward, kept readable: what DINO's MultiCropWrapper does with the backbone.

Consecutive views of the same resolution are concatenated and run in one backbone call; one call per
distinct resolution (DINO-MC: 7 calls for 2 global + 6 local sizes). Used by the tests and benchmarks as the
ground truth for the packed forward, and as the forward_views of backbones without a packed path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .patch_input import floor_to_patch


def reference_forward_views(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """[sum B_v, D]: backbone(x) per run of same-size views, outputs concatenated in view order."""
    if isinstance(views, torch.Tensor):
        views = [views]
    sizes = torch.tensor([v.shape[-1] for v in views])
    # As in DINO: split where the resolution changes (it compares the width only; so do we).
    idx_crops = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
    start, outputs = 0, []
    for end in idx_crops:
        outputs.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(outputs)


def reference_forward_masked_views(backbone: nn.Module, views: list[torch.Tensor], masks: list[torch.Tensor | None],
                                   mask_token: torch.Tensor, patch_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What PackedViT.forward_views(views, masks=, mask_token=, patch_views=) computes, one view at a time through
    timm's own modules: patch embedding, masked embeddings -> mask_token (iBOT's `mask_model`), position
    embedding, blocks, final norm. Returns (CLS features [sum B_v, D], patch tokens of the first patch_views views
    [sum B_v, h*w, D])."""
    m = backbone.timm_model
    cls, patches = [], []
    for i, view in enumerate(views):
        x = m.patch_embed(floor_to_patch(view, backbone.patch_size))  # [B, h, w, D] (dynamic_img_size)
        mask = masks[i] if i < len(masks) else None
        if mask is not None:
            x = torch.where(mask.view(*x.shape[:3], 1), mask_token.to(x.dtype), x)
        x = m.norm(m.blocks(m.norm_pre(m.patch_drop(m._pos_embed(x)))))
        cls.append(x[:, 0])
        if i < patch_views:
            patches.append(x[:, m.num_prefix_tokens :])
    return torch.cat(cls), torch.cat(patches)
