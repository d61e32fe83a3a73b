"""Position embeddings for grids other than the native one: timm's resampling, or DINO's.

Two interpolations, chosen per backbone (`model.pos_embed_interp`):
- "timm" (fastdino's default): what timm's `resample_abs_pos_embed` computes, bicubic to the target *size*,
  antialiased (it matters when the grid shrinks: 224 px -> 96 px crops).
- "dino": the original code's `VisionTransformer.interpolate_pos_encoding` (facebookresearch/dino
  vision_transformer.py L174-194; WennyXY/DINO-MC utils/vision_transformer.py L174-194, the same lines, unchanged):
  bicubic with a *scale factor* of (g + 0.1) / n for a target grid g from the native n x n grid (L186: "we add a
  small number to avoid floating point error"), no antialias (F.interpolate's default), align_corners False. The
  output is g x g (floor(n * (g + 0.1) / n) = g, checked by DINO's assert L192), but torch samples the source at
  (i + 0.5) * n / (g + 0.1) - 0.5 (the scale it was given) instead of (i + 0.5) * n / g - 0.5, so the values
  differ from a size-based interpolation: weights trained by the original code give their own features only with
  this one. The native grid is returned unchanged in both (DINO L177: npatch == N and w == h).

Interpolation is linear in the embedding, so for each target grid it is one fixed matrix. The matrix is what gets
cached: it does not change when the embedding is trained, gradients flow through a plain matmul, and the result
equals the interpolation up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POS_EMBED_INTERPS = ("timm", "dino")


def dino_interpolate(grid_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """DINO's interpolation of a [B, C, n, n] grid to [B, C, *new_grid] (vision_transformer.py L186-192)."""
    n_h, n_w = grid_embed.shape[-2:]
    if n_h != n_w:
        raise ValueError(f"DINO's interpolate_pos_encoding assumes a square native grid, got {n_h}x{n_w}")
    gh, gw = new_grid
    out = F.interpolate(grid_embed, scale_factor=((gh + 0.1) / n_h, (gw + 0.1) / n_w), mode="bicubic")
    if tuple(out.shape[-2:]) != (gh, gw):  # DINO asserts it (L192)
        raise RuntimeError(f"DINO interpolation gave a {tuple(out.shape[-2:])} grid for {new_grid}")
    return out


def interpolation_matrix(old_grid: tuple[int, int], new_grid: tuple[int, int], device=None,
                         mode: str = "timm") -> torch.Tensor:
    """[new_h*new_w, old_h*old_w] matrix M with interpolate(P) == M @ P for P of shape [old_h*old_w, D]."""
    n_old = old_grid[0] * old_grid[1]
    basis = torch.eye(n_old, device=device, dtype=torch.float32).view(n_old, 1, *old_grid)
    if mode == "timm":
        out = F.interpolate(basis, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    elif mode == "dino":
        out = dino_interpolate(basis, new_grid)
    else:
        raise ValueError(f"position-embedding interpolation must be one of {POS_EMBED_INTERPS}, got {mode!r}")
    return out.view(n_old, -1).t().contiguous()


class PosEmbedInterpolator:
    """Resamples a [1, n_prefix + h*w, D] position embedding to another grid; one cached matrix per grid."""

    def __init__(self, native_grid: tuple[int, int], n_prefix: int = 1, mode: str = "timm"):
        if mode not in POS_EMBED_INTERPS:
            raise ValueError(f"pos_embed_interp must be one of {POS_EMBED_INTERPS}, got {mode!r}")
        self.native_grid = tuple(native_grid)
        self.n_prefix = n_prefix
        self.mode = mode
        self._matrices: dict[tuple, torch.Tensor] = {}

    def __call__(self, pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.native_grid:
            return pos_embed
        key = (tuple(grid), pos_embed.device)
        if key not in self._matrices:
            self._matrices[key] = interpolation_matrix(self.native_grid, grid, pos_embed.device, self.mode)
        prefix, patches = pos_embed[:, : self.n_prefix], pos_embed[0, self.n_prefix :]
        # fp32 like timm (interpolation in bf16 would round the embedding); autocast would downcast the matmul.
        with torch.autocast(pos_embed.device.type, enabled=False):
            resampled = (self._matrices[key] @ patches.float()).to(pos_embed.dtype)
        return torch.cat([prefix, resampled[None]], dim=1)
