"""Small generated datasets for the dataloading tests (written into pytest's tmp_path, never into the repo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def eurosat_root() -> Path | None:
    """The shared EuroSAT folder (env FASTDINO_DATA, default ../shared/data next to the repo), or None."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = Path(os.environ.get("FASTDINO_DATA", default)) / "eurosat"
    return root if (root / "train.txt").is_file() and (root / "images").is_dir() else None


def write_image(path: Path, size=(32, 24), mode="RGB", seed=0, value=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode if mode != "P" else "RGB"]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8) if value is None else \
        np.full((size[1], size[0], channels), value, dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, "L" if channels == 1 else ("RGBA" if channels == 4
                                                                                        else "RGB"))
    if mode == "P":
        img = img.convert("P")
    img.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)
    return path


def image_folder(root: Path, n_per_class=6, classes=("a", "b"), size=(32, 24), ext="jpg") -> Path:
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            write_image(root / name / f"{i}.{ext}", size, seed=100 * c + i)
    return root


def truncate(path: Path, keep: float = 0.5, add_eoi: bool = False) -> Path:
    """Cut a file short; add_eoi puts a JPEG end marker back so that only a real decode finds the damage."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] + (b"\xff\xd9" if add_eoi else b""))
    return path


def seco_tree(root: Path, n_locations=4, n_acq=3, size=24, preview=False, bands=True) -> Path:
    """SeCo-shaped tree. Pixel values encode where they come from: B4 (red) = 20 + 10 * location,
    B3 (green) = 40 * (acquisition + 1), B2 (blue) = 128, so a view's colour names its acquisition."""
    for loc in range(n_locations):
        for acq in range(n_acq):
            product = f"S2A_{loc:04d}_{acq}"
            red, green = 20 + 10 * loc, 40 * (acq + 1)
            if bands:
                for band, v in (("B4", red), ("B3", green), ("B2", 128), ("B8", 7)):
                    write_image(root / f"{loc:04d}" / product / f"{band}.tif", (size, size), "L", value=v)
            if preview:
                (root / f"{loc:04d}").mkdir(parents=True, exist_ok=True)
                arr = np.zeros((size, size, 3), np.uint8) + np.array([red, green, 128], np.uint8)
                Image.fromarray(arr).save(root / f"{loc:04d}" / f"{product}.tif")
    return root


# SeCo's release (ServiceNow/seasonal-contrast datasets/seco_downloader.py): 12 bands (seco_dataset.py L11), 264 px
# at 10 m, 132 px at 20 m, 44 px at 60 m (L316-320), uint8 (L182), JPEG-compressed GeoTIFFs (L251), one folder
# per product id under a six-digit location folder (L328), 5 dates (L309-314), metadata.json (L270-271).
SECO_BAND_SIZES = {"B1": 44, "B2": 264, "B3": 264, "B4": 264, "B5": 132, "B6": 132, "B7": 132, "B8": 264,
                   "B8A": 132, "B9": 44, "B11": 132, "B12": 132}


def seco_raw(loc: int, acq: int) -> dict[str, int]:
    """The raw (un-stretched) uint8 value of B4, B3, B2 in seco_release_tree: B3 names the acquisition, B4 the
    location; all are inside SeCo's quantile ranges, so each stretches to a distinct value."""
    return {"B4": 10 + 7 * loc % 110, "B3": 10 * (acq + 1), "B2": 40}


def seco_release_tree(root: Path, n_locations=3, n_acq=5, preview=False, bands=True, scale=1,
                      compression="jpeg") -> Path:
    """A SeCo tree in the layout of SeCo's release: `<root>/<location:06d>/<product-id>/B1.tif ... B12.tif`
    (+ metadata.json), and with `preview` the 100K release's `<root>/<location>/<product-id>.tif`. Every band is
    a constant image (seco_raw) of its real size divided by `scale`; previews hold the stretch of SeCo's
    downloader (B4, B3, B2 scaled by 1 / 0.3, L265-268)."""
    for loc in range(n_locations):
        for acq in range(n_acq):
            product = f"2020{acq + 1:02d}15T083701_2020{acq + 1:02d}15T084525_T35TQ{loc:03d}"
            raw = seco_raw(loc, acq)
            folder = root / f"{loc:06d}" / product
            folder.mkdir(parents=True, exist_ok=True)
            if bands:
                for band, px in SECO_BAND_SIZES.items():
                    side = max(1, px // scale)
                    Image.fromarray(np.full((side, side), raw.get(band, 60), np.uint8), "L").save(
                        folder / f"{band}.tif", compression=compression)
                (folder / "metadata.json").write_text(json.dumps({"system:index": product}))
            if preview:
                side = 264 // scale
                rgb = np.array([min(255, int(raw[b] / 0.3)) for b in ("B4", "B3", "B2")], np.uint8)
                Image.fromarray(np.zeros((side, side, 3), np.uint8) + rgb).save(
                    root / f"{loc:06d}" / f"{product}.tif", compression=compression)
    return root


def value_bounds(spec):
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    return (0 - mean) / std - 1e-5, (1 - mean) / std + 1e-5


def view_colours(views) -> list[torch.Tensor]:
    """Per view, the mean RGB (0-255) of each sample: [B, 3]. Views of a plain spec (mean 0, std 1, no colour)."""
    return [v.mean(dim=(2, 3)) * 255 for v in views]


def temporal_sources(views, n_locations: int, n_acq: int, preview: bool = False):
    """For views of constant-colour SeCo acquisitions (seco_release_tree) cut with a plain spec: per view and
    sample, (location, acquisition) or None where the colour matches no acquisition (a jittered view)."""
    from fastdino.dataloading.seco_stretch import band_lut

    table = {}
    for loc in range(n_locations):
        for acq in range(n_acq):
            raw = seco_raw(loc, acq)
            rgb = [min(255, int(raw[b] / 0.3)) if preview else int(band_lut(b)[raw[b]]) for b in ("B4", "B3", "B2")]
            table[tuple(rgb)] = (loc, acq)
    out = []
    for c in view_colours(views):
        out.append([table.get(tuple(int(x) for x in torch.round(row).tolist())) for row in c])
    return out


def square_symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of x [..., H, W] under the symmetries of the square, indexed 4 h + 2 v + t: horizontal flip h,
    vertical flip v, then transpose t (the pipelines' order). All 8 differ for an image without symmetry."""
    out = []
    for h in (0, 1):
        for v in (0, 1):
            for t in (0, 1):
                y = x.flip(-1) if h else x
                y = y.flip(-2) if v else y
                out.append(y.transpose(-1, -2) if t else y)
    return out


def which_symmetry(view: torch.Tensor, image: torch.Tensor, atol: float = 1e-4) -> int:
    """Index (square_symmetries) of the symmetry that maps image to view; -1 if none does."""
    for i, y in enumerate(square_symmetries(image)):
        if torch.allclose(view, y, atol=atol):
            return i
    return -1
