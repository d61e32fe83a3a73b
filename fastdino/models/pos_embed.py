"""Position embeddings for grids other than the native one, as timm's `resample_abs_pos_embed` computes them.

Bicubic (antialiased) interpolation is linear in the embedding, so for each target grid it is one fixed
matrix. The matrix is what gets cached: it does not change when the embedding is trained, gradients flow
through a plain matmul, and the result equals timm's up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolation_matrix(old_grid: tuple[int, int], new_grid: tuple[int, int], device=None) -> torch.Tensor:
    """[new_h*new_w, old_h*old_w] matrix M with interpolate(P) == M @ P for P of shape [old_h*old_w, D]."""
    n_old = old_grid[0] * old_grid[1]
    basis = torch.eye(n_old, device=device, dtype=torch.float32).view(n_old, 1, *old_grid)
    out = F.interpolate(basis, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    return out.view(n_old, -1).t().contiguous()


class PosEmbedInterpolator:
    """Resamples a [1, n_prefix + h*w, D] position embedding to another grid; one cached matrix per grid."""

    def __init__(self, native_grid: tuple[int, int], n_prefix: int = 1):
        self.native_grid = tuple(native_grid)
        self.n_prefix = n_prefix
        self._matrices: dict[tuple, torch.Tensor] = {}

    def __call__(self, pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.native_grid:
            return pos_embed
        key = (tuple(grid), pos_embed.device)
        if key not in self._matrices:
            self._matrices[key] = interpolation_matrix(self.native_grid, grid, pos_embed.device)
        prefix, patches = pos_embed[:, : self.n_prefix], pos_embed[0, self.n_prefix :]
        # fp32 like timm (interpolation in bf16 would round the embedding); autocast would downcast the matmul.
        with torch.autocast(pos_embed.device.type, enabled=False):
            resampled = (self._matrices[key] @ patches.float()).to(pos_embed.dtype)
        return torch.cat([prefix, resampled[None]], dim=1)
