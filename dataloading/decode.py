"""Reading one image as 8-bit RGB with PIL: plain files, and SeCo acquisitions (preview or B4/B3/B2 bands).

A SeCo preview is read as it is: it is what DINO-MC trains on (data_process/dino_dataset.py L76,
`Image.open(path).convert('RGB')` on `<location>/*.tif`). Band files are stretched as SeCo reads them
(bands.read_bands: the per-band quantile stretch of datasets/seco_dataset.py L51-66).
"""

from __future__ import annotations

from PIL import Image

from .members import open_member
from .seco_stretch import RGB_BANDS, read_bands
from .sources import Acquisition


def load_rgb(item: str | Acquisition) -> Image.Image:
    """An RGB PIL image. Grayscale, palette and RGBA files are converted (alpha dropped). A corrupt or truncated
    file raises (PIL's OSError / UnidentifiedImageError); the caller decides whether to skip it."""
    if isinstance(item, Acquisition):
        if item.preview is not None:
            return _open(item.preview, "RGB")
        return Image.fromarray(read_bands(item.bands, RGB_BANDS), "RGB")
    return _open(item, "RGB")


def _open(path, mode: str) -> Image.Image:
    with Image.open(open_member(path)) as im:
        im.load()  # decode now, inside the caller's try: a truncated file fails here, not later
        return im.convert(mode) if im.mode != mode else im.copy()
