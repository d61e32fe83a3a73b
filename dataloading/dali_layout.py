"""What a DALI feeder and its graph agree on: which image slot each view is cut from (`view_slots`) and, for
multispectral images, where each drawn parameter sits in a view's row (`param_layout`) and which view groups have
colour inputs (`has_colour`). dali_graph.py and dali_ms_graph.py build graphs from it, dali_ms.MSFeeder fills it.
"""

from __future__ import annotations

from .augment import AugmentationSpec, ViewGroup


def view_slots(spec: AugmentationSpec, n_slots: int) -> list[tuple[ViewGroup, int]]:
    """(group, image slot) per view: one slot for all views, or (DINO-TP) the slot of the group's date."""
    views = spec.views()
    if n_slots == 1:
        return [(g, 0) for g in views]
    return [(g, g.date) for g in views]


def has_colour(group) -> bool:
    """Whether a view group ever changes colour (DINO-TP's plain views never do: no colour inputs, no colour ops)."""
    return group.jitter_p > 0 or group.grayscale_p > 0


def param_layout(n_bands: int) -> dict[str, slice]:
    """Where each drawn parameter sits in a view's row of the per-sample [views, P] float32 array: one array per
    sample instead of eight per view (feeding many small arrays cost more than the pixel work)."""
    c = n_bands
    return {"roi": slice(0, 4), "sigma": slice(4, 5), "blur": slice(5, 6), "mirror": slice(6, 7),
            "mean": slice(7, 7 + c), "std": slice(7 + c, 7 + 2 * c), "block": slice(7 + 2 * c, 16 + 2 * c),
            "block_t": slice(16 + 2 * c, 19 + 2 * c), "vflip": slice(19 + 2 * c, 20 + 2 * c),
            "transpose": slice(20 + 2 * c, 21 + 2 * c)}
