"""RGB weights into a multispectral backbone: the input layer inflated from 3 channels to one per band.

An RGB backbone's first layer (a ViT's patch embedding `patch_embed.proj`, a ResNet's `conv1`) has weights
[out, 3, k, k] over (red, green, blue). The rule, for bands b_1 ... b_C:
  - the red, green and blue weights go to B4, B3 and B2 (Sentinel-2's red, green and blue), unchanged;
  - every other band gets zero weights.
So the inflated backbone computes exactly what the RGB backbone computes on the B4, B3, B2 channels of its input
(the other bands add nothing until training moves their weights away from zero; their gradients are not zero, so
they do). Nothing is rescaled: timm's `adapt_input_conv` instead repeats the RGB weights over all channels and
scales them by 3 / C, which changes every feature of the pretrained model at once. A band set without B4, B3 or B2
keeps the ones it has; one with none of them cannot take RGB weights (an error).
"""

from __future__ import annotations

import torch

# Sentinel-2's red, green and blue, in an RGB layer's channel order: fastdino.dataloading.band_files.RGB (models
# import no data code; tests/test_layout.py checks the two agree)
RGB = ("B4", "B3", "B2")
INPUT_LAYERS = ("patch_embed.proj.weight", "conv1.weight")  # ViT / Swin, ResNet (timm names)
RULE = "RGB weights onto B4 / B3 / B2 unchanged, zeros for every other band"


def inflate_input_weight(weight: torch.Tensor, bands) -> torch.Tensor:
    """[out, 3, ...] RGB weights -> [out, len(bands), ...] by the rule above."""
    bands = list(bands)
    if weight.ndim < 2 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB input weights [out, 3, ...], got {tuple(weight.shape)}")
    present = [(k, bands.index(b)) for k, b in enumerate(RGB) if b in bands]
    if not present:
        raise ValueError(f"bands {bands} hold none of B4, B3, B2: RGB weights have no band to go to; train from "
                         "scratch (no --init-from) or include the RGB bands")
    out = weight.new_zeros((weight.shape[0], len(bands), *weight.shape[2:]))
    for k, c in present:
        out[:, c] = weight[:, k]
    return out


def inflate_state(state: dict, bands, prefix: str = "") -> tuple[dict, list[str]]:
    """A state dict with its RGB input layer (`prefix` + one of INPUT_LAYERS) inflated; the keys it changed."""
    state = dict(state)
    changed = []
    for name in INPUT_LAYERS:
        key = prefix + name
        if key in state and state[key].ndim >= 2 and state[key].shape[1] == 3:
            state[key] = inflate_input_weight(state[key], bands)
            changed.append(key)
    return state, changed
