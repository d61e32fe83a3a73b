"""The original multi-crop forward, kept readable: what DINO's MultiCropWrapper does with the backbone.

Consecutive views of the same resolution are concatenated and run in one backbone call; one call per
distinct resolution (DINO-MC: 7 calls for 2 global + 6 local sizes). Used by the tests and benchmarks as the
ground truth for the packed forward, and as the forward_views of backbones without a packed path.
"""

from __future__ import annotations

import torch
import torch.nn as nn


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
