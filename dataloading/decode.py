"""Reading one image as 8-bit RGB with PIL: plain files, and SeCo acquisitions (preview or B4/B3/B2 bands)."""

from __future__ import annotations

from PIL import Image

from .sources import Acquisition


def load_rgb(item: str | Acquisition) -> Image.Image:
    """An RGB PIL image. Grayscale, palette and RGBA files are converted (alpha dropped). A corrupt or truncated
    file raises (PIL's OSError / UnidentifiedImageError); the caller decides whether to skip it."""
    if isinstance(item, Acquisition):
        files = item.rgb_files
        if len(files) == 1:
            return _open(files[0], "RGB")
        bands = [_open(f, "L") for f in files]
        if len({b.size for b in bands}) != 1:
            raise ValueError(f"SeCo bands of {files[0]!r} differ in size: {[b.size for b in bands]}")
        return Image.merge("RGB", bands)
    return _open(item, "RGB")


def _open(path: str, mode: str) -> Image.Image:
    with Image.open(path) as im:
        im.load()  # decode now, inside the caller's try: a truncated file fails here, not later
        return im.convert(mode) if im.mode != mode else im.copy()
