"""Per-band statistics of multispectral data: what `fastdino stats` computes and training normalises with.

On a seeded sample of images (all of them when there are fewer), every pixel of every band counts: mean and
standard deviation (population, in float64) and, for integer data, exact 2nd / 98th percentiles from a histogram
of the values (the percentiles SeCo's stretch uses, datasets/seco_utils.py L22-23). Values are in the files' own
units (digital numbers: reflectance x 10000 for Sentinel-2 L1C / L2A, x 255 for SeCo's uint8 bands).

The file (`band_stats.json`, by default in the data folder, where `data.stats: null` looks for it) holds one entry
per band name, so a run may use any subset of the bands in any order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fastdino.dataloading.torch_pipeline import pipeline_items

STATS_FILE = "band_stats.json"
PERCENTILES = (2.0, 98.0)


def default_stats_path(data_path) -> Path:
    """Where `fastdino stats` writes and training reads by default: the data folder (a list file's folder)."""
    path = Path(data_path)
    return (path if path.is_dir() else path.parent) / STATS_FILE


def sample_items(source, samples: int, seed: int) -> list:
    """A seeded sample of the source's images (acquisitions for a per-band tree), in source order."""
    items = pipeline_items(source, temporal=False)  # images, acquisitions, or a shard folder's of either
    if samples >= len(items):
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=samples, replace=False))
    return [items[i] for i in keep]


def compute_band_stats(items: list, reader, *, seed: int = 0, data: str | None = None, progress=None) -> dict:
    """Mean, std, min, max and the 2 / 98 % percentiles of every band of `reader.bands` over the items."""
    bands = reader.bands
    total = np.zeros(len(bands))
    squares = np.zeros(len(bands))
    lo, hi = np.full(len(bands), np.inf), np.full(len(bands), -np.inf)
    hists: list[np.ndarray] | None = None
    floats: list[list[np.ndarray]] = [[] for _ in bands]
    n_pixels, dtype, pending = 0, None, []
    rng = np.random.default_rng(seed)
    for k, item in enumerate(items):
        arr = reader(item)
        dtype = dtype or arr.dtype
        if arr.dtype != dtype:
            raise ValueError(f"{item}: dtype {arr.dtype}, the images before it are {dtype}; one dataset, one dtype")
        flat = arr.reshape(-1, arr.shape[-1])
        x = flat.astype(np.float64)
        total += x.sum(0)
        squares += (x * x).sum(0)
        lo, hi = np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))
        n_pixels += len(flat)
        if np.issubdtype(arr.dtype, np.unsignedinteger):  # exact percentiles: a histogram of the values
            size = int(np.iinfo(arr.dtype).max) + 1
            hists = hists if hists is not None else [np.zeros(size, dtype=np.int64) for _ in bands]
            pending.append(flat)
            if sum(len(f) for f in pending) >= 1 << 21 or k == len(items) - 1:  # histogram a few images at once
                block = np.concatenate(pending)
                for c in range(len(bands)):
                    hists[c] += np.bincount(block[:, c], minlength=size)
                pending = []
        else:  # float or signed data: percentiles of a pixel sample (at most 4096 per image)
            pick = rng.choice(len(flat), size=min(len(flat), 4096), replace=False)
            for c in range(len(bands)):
                floats[c].append(flat[pick, c].astype(np.float64))
        if progress is not None:
            progress(k + 1, len(items))
    if not n_pixels:
        raise ValueError("no images to compute band statistics on")
    mean = total / n_pixels
    std = np.sqrt(np.maximum(squares / n_pixels - mean * mean, 0.0))
    out = {}
    for c, b in enumerate(bands):
        if hists is not None:
            cdf = np.cumsum(hists[c]) / n_pixels
            pct = [float(np.searchsorted(cdf, q / 100.0)) for q in PERCENTILES]
        else:
            pct = [float(v) for v in np.percentile(np.concatenate(floats[c]), PERCENTILES)]
        out[b] = {"mean": float(mean[c]), "std": float(std[c]), "min": float(lo[c]), "max": float(hi[c]),
                  "p02": pct[0], "p98": pct[1]}
    return {"format": 1, "bands": out, "dtype": str(dtype), "n_images": len(items), "n_pixels": int(n_pixels),
            "seed": seed, "data": data, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_stats(stats: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_band_stats(path, bands, data_path=None) -> tuple[list[float], list[float]]:
    """(mean, std) per band, in `bands` order, from a `fastdino stats` file; errors name the command to run."""
    path = Path(path)
    run = f"fastdino stats --data {data_path or '<data>'} [--data-list FILE]"
    if not path.is_file():
        raise FileNotFoundError(f"no band statistics at {path}: multispectral training normalises each band with its "
                                f"mean and std over the data. Compute them once with `{run}` (writes {STATS_FILE} in "
                                "the data folder, where training looks), or point data.stats at such a file")
    try:
        stats = json.loads(path.read_text())["bands"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"band statistics {path} are not a `fastdino stats` file ({type(e).__name__}: {e})") from None
    missing = [b for b in bands if b not in stats]
    if missing:
        raise ValueError(f"band statistics {path} have no entry for {missing} (they cover {sorted(stats)}); "
                         f"run `{run} --bands all` again")
    nonfinite = [b for b in bands if not (np.isfinite(stats[b]["mean"]) and np.isfinite(stats[b]["std"]))]
    if nonfinite:
        raise ValueError(f"band statistics {path}: mean / std of {nonfinite} are not finite (the data has NaN or inf "
                         f"pixels); fix or remove those files and run `{run}` again, which names them")
    bad = [b for b in bands if not stats[b]["std"] > 0]
    if bad:
        raise ValueError(f"band statistics {path}: std is 0 for {bad} (a constant band cannot be normalised); "
                         "leave those bands out of data.bands")
    return [stats[b]["mean"] for b in bands], [stats[b]["std"] for b in bands]
