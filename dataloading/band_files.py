"""Sentinel-2 multispectral images: band metadata, which augmentation acts on which bands, and the readers.

A multispectral image is a numpy array [H, W, C] in the dtype of its files (uint16 reflectances for Sentinel-2
L1C / L2A products, uint8 for SeCo's stretched band files), channels in the order of `data.bands`. Nothing is
rescaled or converted to float here: the pipelines cast each view to float32 (exact for 16-bit integers) and
normalise it with the per-band statistics of `fastdino stats`.

Sources (docs/data.md, "Multispectral"):
  - one file per image with every band: a multi-band GeoTIFF (EuroSAT-MS `<Class>/<name>.tif`, 13 bands) or an
    `.npy` array [H, W, C] (what `fastdino prepare` writes, with `prepared.json` naming its bands);
  - one file per band (SeCo, SSL4EO-S12: `<location>/<product>/B1.tif ... B12.tif`, 10 / 20 / 60 m bands at
    264 / 132 / 44 px), resampled to the grid of the finest band by nearest neighbour: each coarse pixel is
    repeated, so no new values appear (what torchgeo's SSL4EOS12 gets from rasterio's `read(out_shape=...)`, whose
    default resampling is nearest: torchgeo/datasets/ssl4eo.py, `SSL4EOS12.__getitem__`).

The band order inside a multi-band file is not written in the file, so it is named (`data.file_bands`):
  eurosat-ms  B1 ... B12 (with B10), then B8A: EuroSAT-MS's files hold B8A last (phelber/EuroSAT issue #7, accepted
              by the authors; torchgeo fixed its order to this in PR #2480, torchgeo/datasets/eurosat.py
              `EuroSAT.all_band_names`, L85 at commit d8699d6)
  esa         ESA's order B1 ... B8, B8A, B9, B10, B11, B12 (SSL4EO-S12 L1C, torchgeo ssl4eo.py `metadata['s2c']`)
  esa-12      ESA's order without B10 (SeCo's ALL_BANDS, seasonal-contrast datasets/seco_dataset.py L11; SSL4EO-S12
              L2A, torchgeo ssl4eo.py `metadata['s2a']`)

TIFF reader: tifffile (pure Python + numpy, reads any number of bands, any dtype, either planar layout, and
uncompressed, deflate and LZMA data; LZW, JPEG and PackBits need its optional `imagecodecs`). PIL cannot open a
TIFF with more than 4 samples per pixel ("More samples per pixel than can be decoded: 13"), so it reads only
single-band files here: the fallback for a compressed band file when imagecodecs is absent (SeCo's JPEG-compressed
bands).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .members import SHARD_INDEX, open_member, suffix

# name -> (central wavelength nm, resolution m, what it sees); Sentinel-2 MSI, ESA's band table (S2A values).
S2_BANDS: dict[str, tuple[float, int, str]] = {
    "B1": (442.7, 60, "coastal aerosol"),
    "B2": (492.4, 10, "blue"),
    "B3": (559.8, 10, "green"),
    "B4": (664.6, 10, "red"),
    "B5": (704.1, 20, "red edge 1"),
    "B6": (740.5, 20, "red edge 2"),
    "B7": (782.8, 20, "red edge 3"),
    "B8": (832.8, 10, "near infrared"),
    "B8A": (864.7, 20, "narrow near infrared"),
    "B9": (945.1, 60, "water vapour"),
    "B10": (1373.5, 60, "cirrus (SWIR)"),
    "B11": (1613.7, 20, "SWIR 1"),
    "B12": (2202.4, 20, "SWIR 2"),
}
ESA_ORDER = tuple(S2_BANDS)
RGB = ("B4", "B3", "B2")  # red, green, blue: the channels of an RGB model, in its order
FILE_ORDERS: dict[str, tuple[str, ...]] = {
    "eurosat-ms": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A"),
    "esa": ESA_ORDER,
    "esa-12": tuple(b for b in ESA_ORDER if b != "B10"),
}
BAND_SETS: dict[str, tuple[str, ...]] = {"rgb": RGB, "s2": ESA_ORDER, "s2-12": FILE_ORDERS["esa-12"]}
PREPARED = "prepared.json"  # written by `fastdino prepare` beside its .npy files: their band order

# Which bands each augmentation acts on ("all" or "rgb": B4, B3, B2 when all three are present, else none).
# Geometry, blur, brightness (a gain) and contrast (around the per-band dataset mean) are defined for any band.
# Saturation, hue and grayscale are defined on a colour triple: they act on the RGB bands only. Solarize inverts
# intensities above a threshold of an 8-bit range; reflectances have no such maximum, so it acts on no band.
OP_BANDS: dict[str, str] = {"crop": "all", "flip": "all", "blur": "all", "brightness": "all", "contrast": "all",
                            "saturation": "rgb", "hue": "rgb", "grayscale": "rgb", "solarize": "none"}


def canonical_band(name) -> str:
    """'B08' -> 'B8', 'b8a' -> 'B8A', 'B08A' -> 'B8A'; an unknown name is an error listing the known ones."""
    s = str(name).strip().upper()
    if s.startswith("B") and s[1:].rstrip("A").isdigit():
        s = "B" + str(int(s[1:].rstrip("A"))) + ("A" if s.endswith("A") else "")
    if s not in S2_BANDS:
        raise ValueError(f"unknown Sentinel-2 band {name!r}; known: {', '.join(S2_BANDS)}")
    return s


def band_list(value, what: str = "data.bands") -> tuple[str, ...]:
    """A list of band names, or the name of a set (rgb, s2, s2-12), as canonical names without repeats."""
    if isinstance(value, str):
        if value in BAND_SETS:
            return BAND_SETS[value]
        if value in FILE_ORDERS:
            return FILE_ORDERS[value]
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{what}={value!r}: give band names (e.g. [B4, B3, B2, B8]) or a set: "
                         f"{', '.join(BAND_SETS)} (or 'all': every band of the data)")
    bands = tuple(canonical_band(b) for b in value)
    repeated = sorted({b for b in bands if bands.count(b) > 1})
    if repeated:
        raise ValueError(f"{what}={list(value)!r} names {repeated} more than once")
    return bands


def rgb_indices(bands) -> list[int] | None:
    """Channel indices of B4, B3, B2 (red, green, blue) in `bands`, or None when one of them is missing."""
    return [bands.index(b) for b in RGB] if all(b in bands for b in RGB) else None


def op_channels(op: str, bands) -> list[int]:
    """The channels augmentation `op` acts on for images with these bands (OP_BANDS)."""
    rule = OP_BANDS[op]
    if rule == "all":
        return list(range(len(bands)))
    if rule == "rgb":
        return rgb_indices(bands) or []
    return []


# --- reading --------------------------------------------------------------------------------------------------
def read_tiff(path) -> np.ndarray:
    """A TIFF as [H, W, C] in its own dtype (C = 1 for a single band)."""
    try:  # here, not at the top: a missing tifffile is an error that names the package, when a TIFF is read
        import tifffile
    except ImportError:
        raise ValueError(f"reading {path} needs tifffile, a fastdino dependency: pip install tifffile") from None

    try:
        with tifffile.TiffFile(open_member(path)) as tf:
            series = tf.series[0]
            arr, axes = series.asarray(), series.axes
    except (KeyError, ValueError, ModuleNotFoundError) as e:
        if "imagecodecs" not in str(e) and not isinstance(e, ModuleNotFoundError):
            raise
        return _read_tiff_pil(path, e)
    if arr.ndim == 2:
        return check_finite(arr[..., None], path)
    if arr.ndim == 3 and axes.endswith("S"):  # contiguous samples: YXS
        return check_finite(arr, path)
    if arr.ndim == 3:  # planar samples (SYX) or one page per band (IYX / QYX)
        return check_finite(np.moveaxis(arr, 0, -1), path)
    raise ValueError(f"TIFF {path} holds a {arr.ndim}-D array (axes {axes!r}); expected one image of bands")


def _read_tiff_pil(path, why: Exception) -> np.ndarray:
    """A compressed single-band TIFF that tifffile cannot decode without imagecodecs: PIL's libtiff can."""
    try:
        with Image.open(open_member(path)) as im:
            im.load()
            if len(im.getbands()) != 1:
                raise OSError("not single-band")
            return np.asarray(im)[..., None]
    except OSError:
        raise ValueError(f"TIFF {path}: its compression needs the 'imagecodecs' package (pip install imagecodecs; "
                         f"tifffile said: {why})") from None


def read_array(path) -> np.ndarray:
    """One image file with all its bands, [H, W, C]: a TIFF or an .npy array (channels last)."""
    if suffix(path) != ".npy":
        return read_tiff(path)
    arr = np.load(open_member(path), allow_pickle=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"array {path} has shape {arr.shape}; expected [H, W, bands] (channels last)")
    return check_finite(arr, path)


def check_finite(arr: np.ndarray, path) -> np.ndarray:
    """arr, or a ValueError naming the file when a float image holds NaN or inf: normalised, one such pixel makes
    the loss NaN, and in `fastdino stats` it would make a band's mean / std NaN."""
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr.reshape(-1, arr.shape[-1]))
        channels = [int(c) for c in np.flatnonzero(bad.any(0))]
        raise ValueError(f"{path}: {int(bad.sum())} non-finite pixel value(s) (NaN or inf) in channel(s) {channels}; "
                         "fix or remove the file (nodata must be a finite value)")
    return arr


def resample_nearest(band: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A [h, w] band on an [H, W] grid by nearest neighbour (pixel centres): an integer factor repeats pixels."""
    h, w = band.shape
    if (h, w) == tuple(shape):
        return band
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return band[rows[:, None], cols[None, :]]


def read_band_files(files: dict[str, str], bands) -> np.ndarray:
    """One product stored one band per file (SeCo, SSL4EO-S12): [H, W, len(bands)] on the finest band's grid."""
    missing = [b for b in bands if b not in files]
    if missing:
        folder = str(Path(next(iter(files.values()))).parent) if files else "?"
        raise ValueError(f"product {folder!r} has no band file for {missing} (it has {sorted(files)})")
    channels = []
    for b in bands:
        arr = read_tiff(files[b])
        if arr.shape[-1] != 1:
            raise ValueError(f"band file {files[b]} holds {arr.shape[-1]} bands; a per-band file holds one")
        channels.append(arr[..., 0])
    dtypes = {c.dtype for c in channels}
    if len(dtypes) > 1:
        raise ValueError(f"band files of {Path(files[bands[0]]).parent} differ in dtype: {sorted(map(str, dtypes))}")
    shape = max((c.shape for c in channels), key=lambda s: s[0] * s[1])
    return np.stack([resample_nearest(c, shape) for c in channels], axis=-1)


@dataclass(frozen=True)
class BandReader:
    """item (a file path or a SeCo-style Acquisition) -> [H, W, len(bands)] in `bands` order, the files' dtype.

    file_bands: the band of each channel of a multi-band file, in file order (unused for per-band trees)."""

    bands: tuple[str, ...]
    file_bands: tuple[str, ...] | None = None

    def __call__(self, item) -> np.ndarray:
        files = getattr(item, "bands", None)
        if isinstance(files, dict):  # an Acquisition of a per-band tree
            return read_band_files(files, self.bands)
        arr = read_array(item)
        if self.file_bands is None:
            raise ValueError(f"{item}: a file with {arr.shape[-1]} bands, but the order of its bands is not known; "
                             f"set data.file_bands to one of {', '.join(FILE_ORDERS)} or a list of band names")
        if arr.shape[-1] != len(self.file_bands):
            raise ValueError(f"{item} has {arr.shape[-1]} bands, but data.file_bands names {len(self.file_bands)} "
                             f"({', '.join(self.file_bands)})")
        index = [self.file_bands.index(b) for b in self.bands]
        return arr[..., index] if index != list(range(arr.shape[-1])) else arr


def prepared_bands(root) -> tuple[str, ...] | None:
    """The band order `fastdino prepare` recorded for the .npy files under `root` (prepared.json), or for the
    multi-band files packed into the shards under `root` (shards.json's file_bands), if it did."""
    path = Path(root) / PREPARED
    if path.is_file():
        return band_list(json.loads(path.read_text())["bands"], f"{path} bands")
    index = Path(root) / SHARD_INDEX
    if index.is_file():
        recorded = json.loads(index.read_text()).get("file_bands")
        return band_list(recorded, f"{index} file_bands") if recorded else None
    return None


def prepared_root(path, levels: int = 4) -> Path | None:
    """The nearest folder at or above `path` holding prepared.json (an image of a prepared tree), if any."""
    path = Path(path)
    for folder in [path if path.is_dir() else path.parent, *list(path.parents)[:levels]]:
        if (folder / PREPARED).is_file():
            return folder
    return None


def file_band_order(value, root=None) -> tuple[str, ...] | None:
    """data.file_bands resolved: prepared.json under the data root wins (fastdino wrote it); else a named order
    (eurosat-ms, esa, esa-12) or a list of names; None (or "auto") when unknown."""
    recorded = prepared_bands(root) if root is not None else None
    if recorded is not None:
        return recorded
    if value in (None, "auto"):
        return None
    if isinstance(value, str) and value in FILE_ORDERS:
        return FILE_ORDERS[value]
    return band_list(value, "data.file_bands")


def source_bands(source, file_bands) -> tuple[str, ...]:
    """Every band the data has ("data.bands: all"), in ESA's order: for a per-band tree, the bands more than half
    of its products hold (the scan already listed every product's files: no reading), so a product missing a band
    file is an incomplete sample (skipped as corrupt, or fatal under data.strict) and never shrinks the band set;
    for multi-band files, the bands of their order."""
    counts = getattr(source, "band_counts", None)  # a shard folder: counted when the shards were written
    if counts:
        return tuple(b for b in ESA_ORDER if 2 * counts.get(b, 0) > source.index["products"])
    acqs = [a for a in getattr(source, "acquisitions", None) or () if a.bands]
    if acqs:
        counts = Counter(b for a in acqs for b in a.bands)
        return tuple(b for b in ESA_ORDER if 2 * counts[b] > len(acqs))
    if file_bands is None:
        raise ValueError("data.bands=all: the band order of the data's files is not known; set data.file_bands to "
                         f"one of {', '.join(FILE_ORDERS)} or a list of band names")
    return tuple(b for b in ESA_ORDER if b in file_bands)


# --- an RGB picture of a multispectral image -------------------------------------------------------------------
def rgb_composite(arr: np.ndarray, bands, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """B4, B3, B2 as an 8-bit RGB picture [H, W, 3], each band stretched between its own 2nd and 98th percentile
    (the usual true-colour display stretch). Without all three, the first three bands (or one, as grey)."""
    idx = rgb_indices(tuple(bands))
    if idx is None:
        idx = list(range(min(3, arr.shape[-1])))
        idx = idx if len(idx) == 3 else [idx[0]] * 3
    out = np.empty(arr.shape[:2] + (3,), dtype=np.uint8)
    for k, c in enumerate(idx):
        x = arr[..., c].astype(np.float64)
        lo, hi = np.percentile(x, [low, high])
        out[..., k] = np.clip((x - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    return out


def band_summary(bands) -> str:
    """'B4 (red, 665 nm, 10 m), ...' for logs."""
    return ", ".join(f"{b} ({S2_BANDS[b][2]}, {S2_BANDS[b][0]:.0f} nm, {S2_BANDS[b][1]} m)" for b in bands)

