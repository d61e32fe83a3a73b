"""A generated corpus in SeCo's released layout, for the read benchmarks (bench/test_shard_read.py).

`<root>/<location:06d>/<product-id>.tif` (the 100K release's RGB preview, 264 px) and `<root>/<location>/<product-id>/
B1.tif ... B12.tif` (12 single-band uint8 GeoTIFFs at 264 / 132 / 44 px for 10 / 20 / 60 m), JPEG-compressed as
SeCo's downloader writes them (seasonal-contrast datasets/seco_downloader.py L251). The pixels are smooth random
fields, so the compressed files are of a realistic size (a few KB to tens of KB, SeCo-100K averages ~5.6 KB per
file: 7.3 GB over ~1.3M files). Each file's bytes come from a pool of 16 encoded variants per band size: the
corpus is written at disk speed, and its files differ (every benchmark read goes to the disk when the cache is
cold, whatever the pool).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

BAND_SIZES = {"B1": 44, "B2": 264, "B3": 264, "B4": 264, "B5": 132, "B6": 132, "B7": 132, "B8": 264,
              "B8A": 132, "B9": 44, "B11": 132, "B12": 132}
POOL = 16


def _smooth(rng: np.random.Generator, side: int, channels: int) -> np.ndarray:
    coarse = rng.integers(20, 235, (max(2, side // 16), max(2, side // 16), channels)).astype(np.uint8)
    img = Image.fromarray(coarse if channels > 1 else coarse[..., 0]).resize((side, side), Image.BICUBIC)
    noise = rng.integers(-6, 7, (side, side, channels) if channels > 1 else (side, side))
    return np.clip(np.asarray(img).astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _encoded(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF", compression="jpeg")
    return buf.getvalue()


def make_seco_corpus(root, n_locations: int, n_acquisitions: int = 5, previews: bool = True, bands: bool = True,
                     seed: int = 0) -> Path:
    """Write the corpus (once: a folder that holds a finished marker is returned as it is)."""
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file():
        return root
    rng = np.random.default_rng(seed)
    pool = {b: [_encoded(_smooth(rng, side, 1)) for _ in range(POOL)] for b, side in BAND_SIZES.items()}
    preview_pool = [_encoded(_smooth(rng, 264, 3)) for _ in range(POOL)]
    for loc in range(n_locations):
        folder = root / f"{loc:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for acq in range(n_acquisitions):
            product = f"2020{acq + 1:02d}15T083701_2020{acq + 1:02d}15T084525_T35T{loc:06d}"
            k = (loc * n_acquisitions + acq) % POOL
            if previews:
                (folder / f"{product}.tif").write_bytes(preview_pool[k])
            if bands:
                (folder / product).mkdir(exist_ok=True)
                for b in BAND_SIZES:
                    (folder / product / f"{b}.tif").write_bytes(pool[b][(k + len(b)) % POOL])
    marker.write_text(f"{n_locations} x {n_acquisitions}\n")
    return root


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so that the next read goes to the disk. False where not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
