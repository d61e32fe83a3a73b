"""Generated datasets in the on-disk layouts `fastdino finetune` reads (written into pytest's tmp_path).

BigEarthNet v1.0: <root>/<patch>/<patch>_B0x.tif (uint16, one band each) + <patch>_labels_metadata.json, split lists
of patch names. OSCD: the release's "Onera Satellite Change Detection dataset - Images/<city>/imgs_1|imgs_2/
<product>_B0x.tif" (+ imgs_*_rect/B0x.tif, pair/img1.png, img2.png), train.txt/test.txt (comma-separated cities)
and "... - Train Labels|Test Labels/<city>/cm/cm.png" (0 / 255). Both are described in
fastdino/finetune/data_bigearthnet.py and data_oscd.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from fastdino.finetune.data_oscd import RELEASE

# Bands whose values carry a label: each class lifts one band, so the classes are separable by colour.
_LIFT = {"Sea and ocean": "B02", "Coniferous forest": "B03", "Non-irrigated arable land": "B04"}


def write_band(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path)
    return path


def write_planar_band(path: Path, array: np.ndarray) -> Path:
    """A one-band uint16 TIFF tagged PlanarConfiguration=2 (separate planes), as some GeoTIFF writers tag their
    band files. Written by hand: tifffile and PIL leave the tag out for one sample, and PIL cannot read it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = array.shape
    pixels = np.ascontiguousarray(array, dtype="<u2").tobytes()
    short, long = 3, 4  # TIFF field types
    tags = [(256, short, width), (257, short, height), (258, short, 16), (259, short, 1), (262, short, 1),
            (273, long, 8), (277, short, 1), (278, short, height), (279, long, len(pixels)), (284, short, 2)]
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) if kind == long else
                       struct.pack("<HHIHH", tag, kind, 1, value, 0) for tag, kind, value in tags)
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd)
    return path


def make_bigearthnet(root: Path, patches: dict[str, list[str]], *, size: int = 24, seed: int = 0,
                     lists: dict[str, list[str]] | None = None) -> Path:
    """Patch folders with B02, B03, B04 (and B08) and their label JSON; split lists if `lists` is given."""
    rng = np.random.default_rng(seed)
    for name, labels in patches.items():
        folder = root / name
        for band in ("B02", "B03", "B04", "B08"):
            base = rng.normal(500, 60, (size, size))
            if any(_LIFT.get(label) == band for label in labels):
                base += 900
            write_band(folder / f"{name}_{band}.tif", np.clip(base, 0, 65535))
        meta = {"labels": labels, "coordinates": {"ulx": 500000, "uly": 4500000, "lrx": 501200, "lry": 4498800},
                "projection": "PROJCS[...]", "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP",
                "acquisition_date": "2017-06-13 10:10:31"}
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
    for split, names in (lists or {}).items():
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def bigearthnet_patches(n: int, offset: int = 0) -> dict[str, list[str]]:
    """n patch names with label sets cycling through separable combinations (and one label outside the 19)."""
    combos = [["Sea and ocean"], ["Coniferous forest", "Airports"], ["Non-irrigated arable land"],
              ["Sea and ocean", "Coniferous forest"]]
    return {f"S2A_MSIL2A_20170613T101031_{offset + i}_45": combos[i % len(combos)] for i in range(n)}


def make_oscd(root: Path, cities: dict[str, tuple[int, int]], *, train: list[str], test: list[str], seed: int = 0,
              rect: bool = False, png: bool = False, bands: tuple[str, ...] = ("B02", "B03", "B04")) -> Path:
    """The OSCD release layout: per city two dates of `bands` (at least B02-B04) and a change mask; changed pixels
    are brighter in date 2. `cities` maps name -> (height, width)."""
    rng = np.random.default_rng(seed)
    images = root / f"{RELEASE}Images"
    for name, (h, w) in cities.items():
        mask = np.zeros((h, w), bool)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y:y + h // 3, x:x + w // 3] = True
        split = "Train" if name in train else "Test"
        cm = root / f"{RELEASE}{split} Labels" / name / "cm" / "cm.png"
        cm.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((mask * 255).astype(np.uint8)).save(cm)
        product = f"S2A_OPER_MSI_L1C_TL_SGS__20160929T154211_A006640_T32TMR_{name}"
        rgb = {}
        for date in (1, 2):
            for band in bands:
                values = rng.normal(1200, 150, (h, w)) + (1500 * mask if date == 2 else 0)
                write_band(images / name / f"imgs_{date}" / f"{product}_{band}.tif", np.clip(values, 0, 65535))
                if rect:
                    write_band(images / name / f"imgs_{date}_rect" / f"{band}.tif", np.clip(values, 0, 65535))
                rgb[(date, band)] = np.clip(values / 16, 0, 255).astype(np.uint8)
            if png:
                pair = images / name / "pair" / f"img{date}.png"
                pair.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.dstack([rgb[(date, b)] for b in ("B04", "B03", "B02")])).save(pair)
    (images / "train.txt").write_text(",".join(train))
    (images / "test.txt").write_text(",".join(test))
    return root


def make_ms_checkpoint(run_dir: Path, bands: list[str], mean: list[float], std: list[float], *, img_size: int = 32,
                       file_bands=None) -> Path:
    """RUN/checkpoints/last.pt of a multispectral run: a random ViT-Tiny/8 with in_chans = len(bands), its config
    naming the bands and their per-band statistics (what `fastdino train` writes for data.bands)."""
    import torch
    from _eval_fixtures import tiny_config

    import fastdino
    from fastdino.config import backbone_kwargs, head_kwargs
    from fastdino.models import DINOHead, create_backbone

    config = tiny_config(img_size)
    config["model"]["in_chans"] = len(bands)
    config["augment"].update(bands=list(bands), mean=list(mean), std=list(std))
    config["data"]["bands"], config["data"]["file_bands"] = list(bands), file_bands
    torch.manual_seed(0)
    backbone = create_backbone(**backbone_kwargs(config["model"]))
    head = DINOHead(backbone.embed_dim, **head_kwargs(config["model"]))
    teacher = torch.nn.ModuleDict({"backbone": backbone, "head": head}).state_dict()
    state = {"config": config, "student": teacher, "teacher": teacher, "optimizer": {}, "scaler": None,
             "dino_loss": {}, "epoch": 2, "iteration": 20, "rng": {}, "fastdino_version": fastdino.__version__}
    path = run_dir / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_lists(root: Path, split_of: dict[str, str]) -> dict[str, Path]:
    """train/val/test list files of an image folder: relative path -> split."""
    files = {}
    for split in ("train", "val", "test"):
        rel = [p for p, s in sorted(split_of.items()) if s == split]
        if rel:
            files[split] = root / f"{split}.txt"
            files[split].write_text("\n".join(rel) + "\n")
    return files
