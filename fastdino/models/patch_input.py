"""Inputs cut to whole patches: what the backbones (backbone.py) and the reference forward (reference.py) feed
timm's patch embedding."""

from __future__ import annotations

import torch


def floor_to_patch(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Crop the bottom/right remainder: what Conv2d(stride=patch) ignores anyway, made explicit for timm's
    patch embedding, which asserts divisibility."""
    h, w = x.shape[-2] // patch_size * patch_size, x.shape[-1] // patch_size * patch_size
    return x if (h, w) == tuple(x.shape[-2:]) else x[..., :h, :w]
