"""The packed multi-crop ViT: every view of every size in one pass over one token sequence.

Built on a timm VisionTransformer (`self.timm_model`), whose modules and weights it runs, so its state dict
is timm's and exports as is. `forward(x)` is timm's own forward (one size); `forward_views(views)`:
1. each size group is patch-embedded by the Conv2d(stride=patch), which floors sizes that are not multiples
   of the patch (164 px at patch 8 -> 20x20), exactly like the original DINO code;
2. the position embedding is resampled to the group's grid (bicubic, one cached matrix per grid; timm's
   interpolation, or DINO's with `pos_embed_interp="dino"` for weights from the original code: pos_embed.py);
3. the tokens of all crops are concatenated into one [N, D] sequence; every block runs its norms, qkv,
   proj and MLP once over it, attention is block-diagonal (see attention.py), drop-path is per crop;
4. the last block computes keys and values for every token but everything else only for the CLS rows,
   the only tokens DINO reads (~7% less work for a 12-block ViT, the same result);
5. the CLS token of every crop comes out in view order: [sum B_v, D].

For iBOT's masked-patch objective (masking.py, kernels/ibot_loss.py) it also takes patch masks (masked patch
embeddings are replaced by a learned mask token before the position embedding, as iBOT's `mask_model` does) and
returns the final patch tokens of the leading `patch_views` views; the last block then runs over every token of
their group, or, given `patch_select` (the student: iBOT reads its masked patches only), over the CLS rows and the
selected patch rows only (keys and values still from every token: the same result for those rows).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from .attention import (
    check_attn_backend,
    cls_attention_map,
    packed_attention,
    packed_cls_attention,
    resolve_attn_backend,
)
from .backbone import TimmBackbone
from .packing import PackedLayout, cls_rows, drop_path_per_crop, packed_layout
from .pos_embed import PosEmbedInterpolator


class PackedViT(TimmBackbone):
    """A timm ViT with a packed multi-crop forward (construction is TimmBackbone's; `forward(x)` too, unless the
    position embedding is interpolated DINO's way)."""

    def __init__(self, timm_name: str, *, drop_path_rate: float = 0.0, attn_backend: str = "auto",
                 grad_checkpointing: bool = False, pos_embed_interp: str = "timm", **timm_kwargs):
        # dynamic_img_size: timm's own forward then accepts every crop size (it resamples the position embedding).
        super().__init__(timm_name, drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing,
                         **timm_kwargs, dynamic_img_size=True)
        _check_supported(self.timm_model, timm_name)
        self.attn_backend = check_attn_backend(attn_backend)
        self.patch_size = self.timm_model.patch_embed.patch_size[0]
        self.n_prefix = self.timm_model.num_prefix_tokens
        self.pos_interp = PosEmbedInterpolator(self.timm_model.patch_embed.grid_size, self.n_prefix, pos_embed_interp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS feature [B, D] of one batch of one size: timm's forward, or with DINO's position-embedding
        interpolation (which timm's forward cannot do) the packed pass over this one view."""
        if self.pos_interp.mode == "timm":
            return super().forward(x)
        return self.forward_views([x])

    def forward_views(self, views: list[torch.Tensor], *, masks: list[torch.Tensor | None] | None = None,
                      mask_token: torch.Tensor | None = None, patch_views: int = 0,
                      patch_select: torch.Tensor | None = None):
        """CLS features [sum B_v, D] of all views, in view order, from one packed pass.

        masks: per view, None or a bool [B_v, h*w] (True: that patch embedding becomes `mask_token`, [D]).
        patch_views > 0: returns (CLS features, patch tokens [sum B_v of the first patch_views views, h*w, D]),
        the final-norm patch tokens iBOT's head reads; those views must have one size.
        patch_select (with patch_views): a bool [sum B_v of those views, h*w]; only the selected patch tokens are
        computed in the last block and returned, [n selected, D], in row-major order of patch_select."""
        if isinstance(views, torch.Tensor):
            views = [views]
        layout = packed_layout(tuple(tuple(v.shape) for v in views), self.patch_size, self.n_prefix)
        backend = resolve_attn_backend(self.attn_backend, views[0].device.type)
        x = self._embed(views, layout, masks, mask_token)
        *blocks, last = self.timm_model.blocks
        for blk in blocks:
            x = self._run(self._block, blk, x, layout, backend)
        m = self.timm_model
        if not patch_views:
            cls = self._run(self._last_block_cls, last, x, layout, backend)
            return m.head_drop(m.fc_norm(m.norm(cls)))
        first = layout.groups[0]
        if patch_views > first.n_views:
            raise ValueError(f"patch_views={patch_views}: the first {first.n_views} view(s) have one size; patch "
                             "tokens are returned for views of one size only")
        # The last block over the first group's tokens that are read (every token, or with patch_select the CLS and
        # selected rows), over the CLS rows only for the other groups.
        first_layout = PackedLayout((first,))
        n_crops = sum(len(v) for v in views[:patch_views])
        if patch_select is None:
            tokens = m.norm(self._run(self._block, last, x[: first.end], first_layout, backend))
            cls = [cls_rows(tokens, first_layout)]
            patches = tokens.view(first.crops, first.seq_len, -1)[:n_crops, self.n_prefix :]
        else:
            rows, n_rows = selected_rows(first, n_crops, self.n_prefix, patch_select)
            tokens = m.norm(self._run(self._last_block_rows, last, x[: first.end], first_layout, backend, rows))
            cls, patches = [tokens[: first.crops]], tokens[first.crops : n_rows]
        if len(layout.groups) > 1:
            rest = PackedLayout(tuple(replace(g, start=g.start - first.end) for g in layout.groups[1:]))
            cls.append(m.norm(self._run(self._last_block_cls, last, x[first.end :], rest, backend)))
        cls = m.head_drop(m.fc_norm(torch.cat(cls) if len(cls) > 1 else cls[0]))
        return cls, patches

    def _run(self, fn, blk: Block, x: torch.Tensor, layout: PackedLayout, backend: str, *args) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, blk, x, layout, backend, *args, use_reentrant=False)
        return fn(blk, x, layout, backend, *args)

    @torch.no_grad()
    def last_cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's attention from CLS to every patch, per head: [B, heads, h, w] (h, w floored)."""
        layout = packed_layout((tuple(x.shape),), self.patch_size, self.n_prefix)
        backend = resolve_attn_backend(self.attn_backend, x.device.type)
        tokens = self._embed([x], layout)
        *blocks, last = self.timm_model.blocks
        for blk in blocks:
            tokens = self._block(blk, tokens, layout, backend)
        g = layout.groups[0]
        return cls_attention_map(last.attn, last.norm1(tokens).view(g.crops, g.seq_len, -1), g.grid, self.n_prefix)

    def _embed(self, views: list[torch.Tensor], layout: PackedLayout, masks: list[torch.Tensor | None] | None = None,
               mask_token: torch.Tensor | None = None) -> torch.Tensor:
        m = self.timm_model
        tokens = []
        for g in layout.groups:
            x = views[g.first_view] if g.n_views == 1 else torch.cat(views[g.first_view : g.first_view + g.n_views])
            x = m.patch_embed.proj(x)  # Conv2d(stride=patch) floors sizes that are not multiples of the patch
            x = m.patch_embed.norm(x.flatten(2).transpose(1, 2))
            if masks is not None:
                x = apply_patch_mask(x, group_mask(masks, views, g), mask_token)
            x = torch.cat([m.cls_token.expand(g.crops, -1, -1), x], dim=1) + self.pos_interp(m.pos_embed, g.grid)
            tokens.append(x.reshape(g.crops * g.seq_len, -1))
        x = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
        return m.norm_pre(m.pos_drop(x))

    def _block(self, blk: Block, x: torch.Tensor, layout: PackedLayout, backend: str) -> torch.Tensor:
        """timm's Block.forward on the packed sequence, with drop-path per crop instead of per batch row."""
        x = x + self._drop_path(blk.ls1(packed_attention(blk.attn, blk.norm1(x), layout, backend)), blk.drop_path1,
                                layout)
        return x + self._drop_path(blk.ls2(blk.mlp(blk.norm2(x))), blk.drop_path2, layout)

    def _last_block_cls(self, blk: Block, x: torch.Tensor, layout: PackedLayout, backend: str) -> torch.Tensor:
        """`_block` at the CLS rows only, [n_crops, D]: the features DINO reads. Norms, MLP and residuals are per
        token, so skipping the other tokens' rows changes nothing but the work."""
        cls_layout = layout.cls_only()
        x = cls_rows(x, layout) + self._drop_path(blk.ls1(packed_cls_attention(blk.attn, blk.norm1(x), layout,
                                                                               backend)), blk.drop_path1, cls_layout)
        return x + self._drop_path(blk.ls2(blk.mlp(blk.norm2(x))), blk.drop_path2, cls_layout)

    def _last_block_rows(self, blk: Block, x: torch.Tensor, layout: PackedLayout, backend: str,
                         rows: torch.Tensor) -> torch.Tensor:
        """`_block` at the given rows of the packed sequence only, [len(rows), D] (keys and values from every
        token): for iBOT's student, which reads the CLS rows and the masked patch rows after the last block."""
        x_rows = x.index_select(0, rows)
        attn = packed_attention(blk.attn, blk.norm1(x), layout, backend, rows=rows)
        x_rows = x_rows + self._drop_path(blk.ls1(attn), blk.drop_path1, layout, rows)
        return x_rows + self._drop_path(blk.ls2(blk.mlp(blk.norm2(x_rows))), blk.drop_path2, layout, rows)

    def _drop_path(self, x: torch.Tensor, module: nn.Module, layout: PackedLayout,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
        drop_prob = getattr(module, "drop_prob", 0.0)  # nn.Identity when the block's rate is 0
        return drop_path_per_crop(x, layout, drop_prob, self.training, getattr(module, "scale_by_keep", True), rows)


ROW_BUCKET = 128  # selected rows are padded to a multiple of this: a few tensor sizes instead of one per step


def selected_rows(group, n_crops: int, n_prefix: int, patch_select: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Indices into one packed group's tokens: the CLS row of each of its crops, then the patch rows selected by
    patch_select (bool [n_crops, h*w], the group's first n_crops crops) in row-major order; and their count. The
    indices are padded with copies of the first row to a multiple of ROW_BUCKET (outputs past the count are not
    read): with a new row count every step, CPU malloc kept ~0.5 GiB more memory after 1,500 steps of `tiny`."""
    n_patches = group.grid[0] * group.grid[1]
    if tuple(patch_select.shape) != (n_crops, n_patches):
        raise ValueError(f"patch_select has shape {tuple(patch_select.shape)}; the patch views need "
                         f"({n_crops}, {n_patches}): one bool per patch of their {group.grid[0]}x{group.grid[1]} grid")
    picked = patch_select.flatten().nonzero().squeeze(1)  # the one host sync of the selection (CUDA)
    crop, patch = picked // n_patches, picked % n_patches
    cls = torch.arange(group.crops, device=picked.device) * group.seq_len
    rows = torch.cat([cls, crop * group.seq_len + n_prefix + patch])
    pad = -len(rows) % ROW_BUCKET
    return torch.cat([rows, rows[:1].expand(pad)]) if pad else rows, len(rows)


def group_mask(masks: list[torch.Tensor | None], views: list[torch.Tensor], g) -> torch.Tensor | None:
    """The bool [crops, h*w] mask of one packed group from the per-view masks (None: no view of it is masked)."""
    # views past the end of `masks` are not masked (the step passes masks for the global views only)
    parts = [masks[i] if i < len(masks) else None for i in range(g.first_view, g.first_view + g.n_views)]
    if all(p is None for p in parts):
        return None
    n_patches = g.grid[0] * g.grid[1]
    out = []
    for i, p in enumerate(parts):
        b = len(views[g.first_view + i])
        if p is None:
            p = torch.zeros(b, n_patches, dtype=torch.bool, device=views[0].device)
        elif tuple(p.shape) != (b, n_patches):
            raise ValueError(f"mask of view {g.first_view + i} has shape {tuple(p.shape)}; its view needs "
                             f"({b}, {n_patches}): one bool per patch of its {g.grid[0]}x{g.grid[1]} grid")
        out.append(p)
    return torch.cat(out)


def apply_patch_mask(x: torch.Tensor, mask: torch.Tensor | None, mask_token: torch.Tensor | None) -> torch.Tensor:
    """Patch embeddings [B, P, D] with the masked ones replaced by mask_token [D] (iBOT's `mask_model`).
    torch.where keeps the token in the graph even when nothing is masked, so DDP always sees its gradient."""
    if mask is None:
        return x
    if mask_token is None:
        raise ValueError("patch masks were given without a mask_token")
    return torch.where(mask[..., None], mask_token.to(x.dtype), x)


def _check_supported(model: nn.Module, name: str) -> None:
    """The packed forward re-implements timm's ViT forward for the plain CLS-token layout; refuse the variants
    it does not cover rather than computing something else."""
    ok = (
        model.cls_token is not None and model.reg_token is None and not model.no_embed_class
        and model.pos_embed is not None and model.global_pool == "token" and model.attn_pool is None
        and isinstance(model.patch_drop, nn.Identity)
        # `attn.gate` (a gated attention output) exists from timm 1.0.28 on; absent = no gate
        and all(type(b) is Block and type(b.attn) is Attention and getattr(b.attn, "gate", None) is None
                for b in model.blocks)
    )
    if not ok:
        raise ValueError(f"PackedViT supports plain CLS-token timm ViTs (vit_tiny/small/base...); {name!r} is not one")
