"""Generated multispectral datasets in the shapes of the real ones, for tests, benchmarks and the tiny-ms demo.

  eurosat-ms  `<root>/class_<k>/<i>.tif`: one 13-band uint16 GeoTIFF-shaped TIFF per image, bands in EuroSAT-MS's
              file order (B1 ... B12, B8A: multispectral.FILE_ORDERS), pixel-interleaved like EuroSAT-MS's files
  seco        `<root>/<location>/<product>/B1.tif ... B12.tif`: SeCo's 12 bands, one single-band file each, at
              10 / 20 / 60 m (size, size / 2, size / 6 px); uint8 and JPEG-compressed like SeCo's files, or uint16
              (SSL4EO-S12's L2A reflectances) with dtype="uint16"

Each class (location) has its own spectral signature (a reflectance per band, in L1C digital numbers) and an
oriented texture, so k-NN on the class folders is meaningful; every image is random around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .band_files import FILE_ORDERS, S2_BANDS

_MARKER = "synthetic_ms.json"
LAYOUTS = ("eurosat-ms", "seco")


def make_synthetic_ms_dataset(root, *, n_images: int, size: int = 64, layout: str = "eurosat-ms", seed: int = 0,
                              n_classes: int = 4, n_acquisitions: int = 2, dtype: str | None = None) -> Path:
    """Write the dataset (deterministic in its arguments; a root already holding exactly it is left as it is).
    seco: n_images locations of n_acquisitions products each; size must be a multiple of 6."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; use one of {LAYOUTS}")
    if layout == "seco" and size % 6:
        raise ValueError(f"size={size}: SeCo-shaped trees need a multiple of 6 (10 / 20 / 60 m grids)")
    dtype = dtype or ("uint16" if layout == "eurosat-ms" else "uint8")
    root = Path(root)
    params = dict(n_images=n_images, size=size, layout=layout, seed=seed, n_classes=n_classes,
                  n_acquisitions=n_acquisitions, dtype=dtype)
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    rng = np.random.default_rng(seed)
    looks = _class_looks(np.random.default_rng(seed + 1_000_003), n_classes)
    if layout == "eurosat-ms":
        import tifffile

        bands = FILE_ORDERS["eurosat-ms"]
        for i in range(n_images):
            k = i % n_classes
            img = _image(looks[k], bands, size, rng, dtype)
            path = root / f"class_{k}" / f"{i:06d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, img, photometric="minisblack", planarconfig="contig")
    else:
        bands = FILE_ORDERS["esa-12"]
        for loc in range(n_images):
            k = loc % n_classes
            for a in range(n_acquisitions):
                folder = root / f"{loc:06d}" / f"S2A_MSIL1C_{loc:06d}_{a}"
                folder.mkdir(parents=True, exist_ok=True)
                img = _image(looks[k], bands, size, rng, dtype)
                for c, band in enumerate(bands):
                    _write_band(folder / f"{band}.tif", _at_resolution(img[..., c], band), dtype)
    marker.write_text(json.dumps(params))
    return root


def _class_looks(rng, n_classes: int) -> list[dict]:
    # A smooth random spectrum per class (vegetation-, water-, soil-like mixes), 300 - 4000 DN.
    looks = []
    for _ in range(n_classes):
        base = rng.uniform(300, 1500)
        nir_jump = rng.uniform(-200, 2500)  # red edge: vegetation is bright in B7 ... B8A
        spectrum = {}
        for b, (wavelength, _, _) in S2_BANDS.items():
            edge = nir_jump / (1 + np.exp(-(wavelength - 720) / 15))
            spectrum[b] = max(50.0, base + edge + rng.normal(0, 150))
        looks.append(dict(spectrum=spectrum, freq=rng.uniform(2, 8), angle=rng.uniform(0, np.pi)))
    return looks


def _image(look: dict, bands, size: int, rng, dtype: str) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle, freq = look["angle"] + rng.normal(0, 0.15), look["freq"] * rng.uniform(0.8, 1.25)
    shade = 0.3 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    gain = rng.uniform(0.85, 1.15)
    img = np.stack([look["spectrum"][b] * gain * (1 + shade) + rng.normal(0, 40, shade.shape) for b in bands], -1)
    if dtype == "uint8":  # SeCo: reflectance (DN / 10000) x 255, clipped (seco_downloader.py L174, L182)
        return np.clip(img / 10000 * 255, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _at_resolution(band: np.ndarray, name: str) -> np.ndarray:
    factor = S2_BANDS[name][1] // 10  # 1, 2 or 6: SeCo's 264 / 132 / 44 px grids
    h, w = band.shape
    return band.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)).astype(band.dtype)


def _write_band(path: Path, band: np.ndarray, dtype: str) -> None:
    if dtype == "uint8":  # SeCo's files: single-band, JPEG-compressed (seco_downloader.py L251)
        from PIL import Image

        Image.fromarray(band, "L").save(path, compression="jpeg")
    else:
        import tifffile

        tifffile.imwrite(path, band, photometric="minisblack", compression="zlib")
