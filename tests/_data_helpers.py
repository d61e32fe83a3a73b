"""Small generated datasets for the dataloading tests (written into pytest's tmp_path, never into the repo)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from fastdino.dataloading import AugmentationSpec
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


def value_bounds(spec):
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    return (0 - mean) / std - 1e-5, (1 - mean) / std + 1e-5


def plain_spec(spec):
    """No colour changes: a view's pixels keep the value of the acquisition it was cut from."""
    plain = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    return AugmentationSpec([dataclasses.replace(g, **plain) for g in spec.global_views],
                             [dataclasses.replace(g, **plain) for g in spec.local_views], mean=(0, 0, 0), std=(1, 1, 1))


def check_temporal_views(views, n_acq):
    """Green encodes the acquisition (40 * (k + 1)), red the location; see _data_helpers.seco_tree."""
    green = [torch.round(v[:, 1].mean(dim=(1, 2)) * 255 / 40 - 1).long() for v in views]
    red = [torch.round(v[:, 0].mean(dim=(1, 2)) * 255) for v in views]
    for b in range(views[0].shape[0]):
        assert len({int(r[b]) for r in red}) == 1  # every view from one location
        acqs = [int(g[b]) for g in green]
        assert all(0 <= a < n_acq for a in acqs)
        assert acqs[0] != acqs[1]  # the two global views: different acquisitions
        assert len(set(acqs[2:])) == 1  # all local views: one acquisition
