"""SeCo's per-band 8-bit stretch: which band files SeCo ships and how SeCo turns them into 8-bit images.

What SeCo ships (ServiceNow/seasonal-contrast, datasets/seco_downloader.py):
  - `<root>/<location>/<product-id>/<band>.tif`, one single-band GeoTIFF per band (L263), JPEG-compressed (L251);
  - the 12 bands B1 ... B12 (ALL_BANDS, datasets/seco_dataset.py L11), 264 x 264 px for the 10 m bands B2, B3, B4,
    B8, 132 x 132 for the 20 m bands, 44 x 44 for B1 and B9 (seco_downloader.py L316-320);
  - uint8 values: reflectance (the product divided by 10000, L174) clipped to [0, 1] and scaled to 0-255 (L182);
  - in the 100K release only, an RGB preview `<location>/<product-id>.tif` made from B4, B3, B2 with the range
    0 - 255 * 0.3 stretched to 0-255 (L265-268).

SeCo reads bands with a per-band quantile stretch (datasets/seco_dataset.py L51-54, L57-66):
    out = uint8(clip((x - min_q) / (max_q - min_q) * 255, 0, 255))          (astype truncates)
with min_q / max_q the 2% / 98% quantiles of each band over 3000 random images (datasets/seco_utils.py L22-23,
L31), stored as QUANTILES (seco_dataset.py L14-25; the same numbers in DINO-MC's data_process/dino_dataset.py
L19-30). SeCo publishes them for B2, B3, B4 only.

`band_lut` turns that formula into a 256-entry table, computed in float64 exactly as SeCo's numpy code does; both
pipelines apply the same table (torchvision through `read_bands`, DALI with `fn.lookup_table`), so they give
identical pixels.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
from PIL import Image

from .members import open_member

ALL_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")  # seco_dataset.py L11
RGB_BANDS = ("B4", "B3", "B2")  # seco_dataset.py L12
# (min_q, max_q) per band: seco_dataset.py L14-25 (min_q L16-18, max_q L21-23).
SECO_QUANTILES: dict[str, tuple[float, float]] = {"B2": (3.0, 88.0), "B3": (2.0, 103.0), "B4": (0.0, 129.0)}


@cache
def _lut(lo: float, hi: float) -> np.ndarray:
    x = np.arange(256, dtype=np.uint8)
    out = np.clip((x - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)  # seco_dataset.py L52-53, in float64
    out.setflags(write=False)
    return out


def band_lut(band: str, quantiles: dict[str, tuple[float, float]] | None = None) -> np.ndarray:
    """SeCo's stretch of one band as a uint8 table: stretched = band_lut(band)[raw]."""
    quantiles = SECO_QUANTILES if quantiles is None else quantiles
    if band not in quantiles:
        raise ValueError(f"no stretch known for band {band!r}: SeCo publishes quantiles for {sorted(quantiles)}; "
                         f"pass quantiles={{'{band}': (min_q, max_q), ...}}")
    lo, hi = quantiles[band]
    if not hi > lo:
        raise ValueError(f"quantiles for band {band!r} must have max_q > min_q, got ({lo}, {hi})")
    return _lut(float(lo), float(hi))


def read_band(path: str) -> np.ndarray:
    """One band file as a [H, W] uint8 array. SeCo's bands are 8-bit; anything else would need other quantiles,
    so it is an error that names the file rather than a silent conversion."""
    with Image.open(open_member(path)) as im:
        im.load()  # decode here: a truncated file raises now, inside the caller's try
        if im.mode != "L":
            raise ValueError(f"SeCo band file {path!r} is mode {im.mode!r}; SeCo bands are single-band 8-bit "
                             f"(mode 'L': reflectance x 255)")
        return np.asarray(im)


def read_bands(files: dict[str, str], bands=RGB_BANDS, quantiles: dict[str, tuple[float, float]] | None = None,
               stretch: bool = True) -> np.ndarray:
    """The given bands of one SeCo product, stacked as [H, W, len(bands)] uint8, each stretched as SeCo does
    (`stretch=False`: the raw values). files: band name -> path (an Acquisition's `bands`)."""
    missing = [b for b in bands if b not in files]
    if missing:
        raise ValueError(f"SeCo product {_folder(files)!r} has no band file for {missing}")
    channels = []
    for b in bands:
        raw = read_band(files[b])
        channels.append(band_lut(b, quantiles)[raw] if stretch else raw)
    shapes = {c.shape for c in channels}
    if len(shapes) != 1:
        raise ValueError(f"SeCo bands {list(bands)} of {_folder(files)!r} differ in size: "
                         f"{[c.shape for c in channels]}")
    return np.dstack(channels)


def _folder(files: dict[str, str]) -> str:
    return os.path.dirname(os.fspath(next(iter(files.values())))) if files else "?"
