"""How the views of one step are laid out in the packed token sequence.

Views are grouped like DINO's MultiCropWrapper groups them: consecutive views of the same resolution
form one group (the two global views, then each local size). A group's crops are patch-embedded
together; its tokens are [crops, 1 + h*w] flattened into the packed sequence, groups in view order,
so the packed sequence is every crop's tokens one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedGroup:
    first_view: int
    n_views: int
    crops: int  # images in the group: the summed batch of its views
    grid: tuple[int, int]  # patches per side after flooring
    seq_len: int  # tokens per crop: prefix (CLS) + h*w
    start: int  # offset of the group's first token in the packed sequence

    @property
    def end(self) -> int:
        return self.start + self.crops * self.seq_len


@dataclass(frozen=True)
class PackedLayout:
    groups: tuple[PackedGroup, ...]

    @property
    def n_tokens(self) -> int:
        return self.groups[-1].end

    @property
    def n_crops(self) -> int:
        return sum(g.crops for g in self.groups)

    @property
    def group_tokens(self) -> list[int]:
        """Tokens per group: split the packed sequence with these (one backward cat, where slicing would add
        a zero-filled full-size gradient per group)."""
        return [g.end - g.start for g in self.groups]

    def cls_only(self) -> PackedLayout:
        """The layout of the CLS rows alone (one token per crop), in the same crop order."""
        groups, start = [], 0
        for g in self.groups:
            groups.append(PackedGroup(g.first_view, g.n_views, g.crops, g.grid, 1, start))
            start += g.crops
        return PackedLayout(tuple(groups))

    @property
    def seqlens(self) -> list[int]:
        """Length of every crop's block of tokens, in order (what xformers' BlockDiagonalMask takes)."""
        return [g.seq_len for g in self.groups for _ in range(g.crops)]


def packed_layout(shapes: tuple[tuple[int, ...], ...], patch_size: int, n_prefix: int = 1) -> PackedLayout:
    """Layout for views of the given [B, C, H, W] shapes. Plain integer arithmetic on the shapes (microseconds,
    and torch.compile folds it into constants for fixed crop sizes), so it is not cached."""
    if not shapes:
        raise ValueError("forward_views needs at least one view")
    groups, start, i = [], 0, 0
    while i < len(shapes):
        j = i
        while j + 1 < len(shapes) and shapes[j + 1][-2:] == shapes[i][-2:]:
            j += 1
        h, w = shapes[i][-2] // patch_size, shapes[i][-1] // patch_size  # floors, like Conv2d(stride=patch)
        if h == 0 or w == 0:
            raise ValueError(f"view {i} of size {tuple(shapes[i][-2:])} is smaller than the patch size {patch_size}")
        crops = sum(s[0] for s in shapes[i : j + 1])
        group = PackedGroup(i, j - i + 1, crops, (h, w), n_prefix + h * w, start)
        groups.append(group)
        start = group.end
        i = j + 1
    return PackedLayout(tuple(groups))


def cls_rows(x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """The CLS token of every crop from a packed [N, D] sequence: [n_crops, D], in crop order."""
    groups = zip(layout.groups, x.split(layout.group_tokens), strict=True)
    return torch.cat([tokens.view(g.crops, g.seq_len, -1)[:, 0] for g, tokens in groups])


def drop_path_per_crop(x: torch.Tensor, layout: PackedLayout, drop_prob: float, training: bool,
                       scale_by_keep: bool = True, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Stochastic depth on a packed [N, D] residual branch: each crop's tokens are kept or dropped together,
    as timm's DropPath does per sample when every crop is its own batch row. rows: x holds only these rows of
    the layout's sequence (a last block computed at some rows)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty(layout.n_crops).bernoulli_(keep_prob)
    if scale_by_keep:
        keep = keep / keep_prob
    # Spread each crop's draw over its tokens; built from the layout's static sizes, no index tensors.
    per_token, c = [], 0
    for g in layout.groups:
        per_token.append(keep[c : c + g.crops, None].expand(g.crops, g.seq_len).reshape(-1))
        c += g.crops
    scale = torch.cat(per_token)
    return x * (scale if rows is None else scale.index_select(0, rows))[:, None]
