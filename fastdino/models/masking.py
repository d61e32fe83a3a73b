"""iBOT's masking of the student's patches: the learned mask token and the random patch masks (the loss that reads
the masked patches: kernels/ibot_loss.py).

Values from the original (bytedance/ibot), cited by function and argument:
- masks (loader.py, `ImageFolderMask.get_pred_ratio` / `__getitem__`; README's ViT-S/16 command
  `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`): each global crop is left whole or masked with equal odds; a
  masked crop hides int(r x patches) patches, r ~ U(0.1, 0.5). Positions uniformly at random (`pred_shape rand`;
  iBOT's default is BEiT's blocks, which on the 4 x 4 grid of a 64 px tile at patch 16 would be a third of it);
- the mask token: `masked_embed`, zeros [1, D], replaces the patch embedding before the position embedding
  (models/vision_transformer.py, `mask_model`; here vit.py and wrapper.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class MaskToken(nn.Module):
    """The learned embedding that replaces a masked patch (iBOT's `masked_embed`, zeros at init)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, embed_dim))


def sample_patch_masks(n_crops: int, n_patches: int, *, mask_prob: float = 0.5,
                       ratio: tuple[float, float] = (0.1, 0.5), device: torch.device | str = "cpu",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [n_crops, n_patches]: each crop masked with probability mask_prob; a masked crop hides
    int(r * n_patches) patches at uniformly random positions, r ~ U(ratio). From the global torch generator
    unless one is given (the training step re-seeds it every step, so a resumed run draws the same masks)."""
    lo, hi = ratio
    r = torch.empty(n_crops, device=device).uniform_(lo, hi, generator=generator)
    masked = torch.rand(n_crops, device=device, generator=generator) < mask_prob
    count = torch.where(masked, (r * n_patches).floor(), torch.zeros_like(r))
    # the positions of the `count` smallest of n_patches random keys: a uniform random subset of that size
    rank = torch.rand(n_crops, n_patches, device=device, generator=generator).argsort(1).argsort(1)
    return rank < count[:, None]
