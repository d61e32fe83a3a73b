"""OSCD (Onera Satellite Change Detection) image pairs, their change masks, and the 96 px tiles DINO-MC trains on.

On-disk layout of the release (rcdaudt.github.io/oscd; Daudt et al., "Urban Change Detection for Multispectral
Earth Observation Using Convolutional Neural Networks", IGARSS 2018), three folders after unzipping:

    Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt          the cities of each split, comma-separated on one line
        <city>/imgs_1/<product>_B01.tif ... _B12.tif, _B8A.tif    13 Sentinel-2 bands of date 1, native resolution
        <city>/imgs_2/...                                         date 2
        <city>/imgs_1_rect/B01.tif ..., imgs_2_rect/              the same bands resampled to 10 m and co-registered
        <city>/pair/img1.png, img2.png                            RGB renderings of the two dates
        <city>/dates.txt
    Onera Satellite Change Detection dataset - Train Labels/<city>/cm/cm.png   change mask: 0 no change, 255 change
    Onera Satellite Change Detection dataset - Test Labels/<city>/cm/cm.png

SeCo and DINO-MC rename these `images/`, `train_labels/` and `val_labels/` with the lists beside them
(data_process/oscd_dataset.py L53-54, L58, L68-71, L75); both namings are found.

What DINO-MC reads (data_process/oscd_dataset.py, oscd_datamodule.py), kept here:
- RGB = B04, B03, B02 of imgs_1 / imgs_2 (L12, L73-74), each band stretched from its 2%-98% quantiles
  (QUANTILES L14-25) to 8 bits (read_image L28-42), scaled to [0, 1] (ToTensor), no mean/std normalisation;
- the mask read as grey (L75), change where it is 255;
- every city cut into non-overlapping 96 x 96 tiles from the top-left, the last row and column running past the
  border, filled with zeros (PIL crop, L60-64, patch_size 96 oscd_datamodule.py L57);
- training tiles flipped horizontally with p=0.5 and rotated by 0/90/180/270 degrees, both dates and the mask
  alike (oscd_datamodule.py L11-26, L69); `RandomSwap` of the dates is defined there but not used.
Scoring here stitches the tile predictions back into each whole image and counts only its real pixels (the
authors' per-tile metrics also count the zero padding as "no change").

A multispectral backbone (fastdino's extension; DINO-MC is RGB) gets its own bands of imgs_1 / imgs_2 (or the
_rect folders) in the files' units, the 20 m and 60 m bands brought to the 10 m grid of the mask by nearest
neighbour (fastdino.dataloading.band_files.read_band_files), normalised per band with the checkpoint's
statistics; the pair/ pngs are RGB renderings and cannot feed it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastdino.eval.features import load_image

from .rasters import read_band, stretch_to_uint8

RGB_BANDS = ("B04", "B03", "B02")
# 2% and 98% quantiles of the RGB bands (DINO-MC data_process/oscd_dataset.py L14-25)
QUANTILES = {"B02": (885.0, 2620.0), "B03": (667.0, 2969.0), "B04": (426.0, 3698.0)}
TILE = 96
RELEASE = "Onera Satellite Change Detection dataset - "
SOURCES = ("bands", "rect", "png")


@dataclass
class City:
    name: str
    image1: np.ndarray  # H x W x 3 uint8 (RGB), or H x W x C in the files' units (multispectral)
    image2: np.ndarray
    mask: np.ndarray  # H x W bool: change
    bands: tuple[str, ...] | None = None  # multispectral: the bands of the channels


@dataclass
class OSCDPaths:
    images: Path
    labels: dict[str, Path]  # split -> labels folder
    lists: dict[str, Path]


def find_layout(root: Path, train_labels: Path | None = None, test_labels: Path | None = None,
                train_list: Path | None = None, test_list: Path | None = None) -> OSCDPaths:
    """The images folder, the label folders and the city lists under `root` (the release's or SeCo's naming);
    explicit paths win. A split without a city list takes the cities of its labels folder (split_cities). Errors
    say which of them is missing and where it was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder")
    images = _first_dir(root / f"{RELEASE}Images", root / "images") or root
    labels = {"train": train_labels or _first_dir(root / f"{RELEASE}Train Labels", root / "train_labels"),
              "test": test_labels or _first_dir(root / f"{RELEASE}Test Labels", root / "test_labels",
                                                root / "val_labels")}
    lists = {}
    for split, given in (("train", train_list), ("test", test_list)):
        found = given or _first_file(images / f"{split}.txt", root / f"{split}.txt")
        if found is not None:
            lists[split] = Path(found)
    if labels["train"] is None:
        places = " or ".join(dict.fromkeys(map(str, (images, root))))  # one place when the images are the root
        listed = f"{lists['train']} lists the train cities" if "train" in lists else (
            f"no train city list either (train.txt in {places})")
        raise FileNotFoundError(f"no train labels folder under {root} (looked for '{RELEASE}Train Labels' and "
                                f"train_labels/, holding <city>/cm/cm.png): pass --train-labels; {listed}")
    return OSCDPaths(images, {k: Path(v) for k, v in labels.items() if v is not None}, lists)


def split_cities(layout: OSCDPaths, split: str) -> tuple[list[str], str] | None:
    """(the cities of a split, where they come from): its city list, else every city folder of its labels folder,
    as torchgeo's OSCD lists a split (torchgeo/datasets/oscd.py, `OSCD._load_files`, L148-158 at commit f01211c).
    None: the split has neither."""
    if split in layout.lists:
        return read_city_list(layout.lists[split]), str(layout.lists[split])
    labels = layout.labels.get(split)
    if labels is None:
        return None
    names = sorted(p.name for p in labels.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if not names:
        raise FileNotFoundError(f"no {split}.txt lists the {split} cities, and the {split} labels folder {labels} "
                                f"holds no city folder (<city>/cm/cm.png): pass --{split}-list")
    return names, f"{labels} (the cities with labels; no {split}.txt)"


def _first_dir(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def _first_file(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def read_city_list(path: Path) -> list[str]:
    """City names, comma- and/or newline-separated (the release writes one comma-separated line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"city list {path} does not exist")
    names = [n.strip() for n in path.read_text().replace("\n", ",").split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"city list {path} names no city")
    return names


def _band_file(folder: Path, band: str) -> Path:
    """imgs_1/<product>_B04.tif (or imgs_1_rect/B04.tif): exactly one file must match."""
    matches = sorted(folder.glob(f"*_{band}.tif")) + sorted(folder.glob(f"{band}.tif"))
    if not matches:
        raise FileNotFoundError(f"no {band} band in {folder} (expected <product>_{band}.tif or {band}.tif)")
    if len(matches) > 1:
        raise ValueError(f"{len(matches)} files for band {band} in {folder}: {[m.name for m in matches]}")
    return matches[0]


def read_date(city_dir: Path, date: int, source: str, bands=None) -> np.ndarray:
    """One date of a city as H x W x 3 uint8: stretched B04, B03, B02 (source bands / rect) or pair/img<date>.png;
    with `bands` (a multispectral backbone), those bands in the files' units on the finest band's grid."""
    if source == "png":
        if bands:
            raise ValueError(f"--source png: pair/img{date}.png is an RGB rendering; the multispectral backbone reads "
                             f"{', '.join(bands)}: use --source bands or rect")
        path = city_dir / "pair" / f"img{date}.png"
        return np.asarray(load_image(path).convert("RGB"))
    folder = city_dir / (f"imgs_{date}" if source == "bands" else f"imgs_{date}_rect")
    if not folder.is_dir():
        raise FileNotFoundError(missing_images_message(city_dir, date, source))
    if bands:
        from fastdino.dataloading.band_files import read_band_files

        return read_band_files({b: str(_band_file(folder, _file_band_name(b))) for b in bands}, tuple(bands))
    channels = [stretch_to_uint8(read_band(_band_file(folder, b)), *QUANTILES[b]) for b in RGB_BANDS]
    shapes = {c.shape for c in channels}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: bands {RGB_BANDS} have different sizes {sorted(shapes)}")
    return np.dstack(channels)


def missing_images_message(city_dir: Path, date: int, source: str) -> str:
    """What is missing, and the --source that reads what the city has instead."""
    folder = "imgs_{}" if source == "bands" else "imgs_{}_rect"
    others = {"bands": city_dir / f"imgs_{date}", "rect": city_dir / f"imgs_{date}_rect",
              "png": city_dir / "pair" / f"img{date}.png"}
    found = [f"{path.relative_to(city_dir).as_posix()} exists: pass --source {name}" for name, path in others.items()
             if name != source and path.exists()]
    hint = f"; {', or '.join(found)}" if found else ""
    return f"image folder {city_dir / folder.format(date)} does not exist (--source {source}){hint}"


def _file_band_name(band: str) -> str:
    """fastdino's band name -> OSCD's file suffix: B4 -> B04, B8A -> B8A."""
    return band if band.endswith("A") else f"B{int(band[1:]):02d}"


def read_mask(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"change mask {path} does not exist (every labelled city has <city>/cm/cm.png)")
    return np.asarray(load_image(path).convert("L")) > 127


def read_city(images: Path, labels: Path, name: str, source: str = "bands", bands=None) -> City:
    """Both dates and the mask of a city; any size mismatch between them is an error naming the files."""
    city_dir = images / name
    if not city_dir.is_dir():
        raise FileNotFoundError(f"city {name!r}: folder {city_dir} does not exist")
    image1, image2 = read_date(city_dir, 1, source, bands), read_date(city_dir, 2, source, bands)
    mask_path = labels / name / "cm" / "cm.png"
    mask = read_mask(mask_path)
    if image1.shape != image2.shape:
        raise ValueError(f"city {name!r}: mismatched image pair, date 1 is {image1.shape[1]}x{image1.shape[0]} px "
                         f"and date 2 {image2.shape[1]}x{image2.shape[0]} px ({city_dir}, --source {source})")
    if mask.shape != image1.shape[:2]:
        raise ValueError(f"city {name!r}: change mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} px but the "
                         f"images are {image1.shape[1]}x{image1.shape[0]} px")
    return City(name, image1, image2, mask, tuple(bands) if bands else None)


def tile_origins(height: int, width: int, tile: int = TILE) -> list[tuple[int, int]]:
    """Top-left (y, x) of the non-overlapping tiles covering the image, the last ones running past the border."""
    return [(y, x) for x in range(0, width, tile) for y in range(0, height, tile)]


def crop_padded(array: np.ndarray, y: int, x: int, tile: int = TILE) -> np.ndarray:
    """array[y:y+tile, x:x+tile], zero-filled where it runs past the border (PIL's crop)."""
    out = np.zeros((tile, tile, *array.shape[2:]), dtype=array.dtype)
    part = array[y:y + tile, x:x + tile]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def to_tensor(image: np.ndarray, mean=None, std=None, scale: float = 255.0) -> torch.Tensor:
    """[H, W, C] -> float32 [C, H, W] divided by `scale` (255: 8-bit RGB to [0, 1]; 1: bands in their units), then
    (x - mean) / std per channel when mean is given."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    if scale != 1:
        x = x / scale
    if mean is not None:
        channels = x.shape[0]
        x = (x - torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)) / torch.tensor(
            std, dtype=torch.float32).view(channels, 1, 1)
    return x


def city_scale(city: City) -> float:
    return 1.0 if city.bands else 255.0


class ChangeTiles(torch.utils.data.Dataset):
    """(date-1 tile [C, T, T], date-2 tile, mask [1, T, T] float) over every tile of every city."""

    def __init__(self, cities: list[City], tile: int = TILE, augment: bool = False, mean=None, std=None):
        self.cities = cities
        self.tile = tile
        self.augment = augment
        self.mean, self.std = mean, std
        self.index = [(c, y, x) for c, city in enumerate(cities) for y, x in tile_origins(*city.mask.shape, tile)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        c, y, x = self.index[i]
        city = self.cities[c]
        a, b = crop_padded(city.image1, y, x, self.tile), crop_padded(city.image2, y, x, self.tile)
        m = crop_padded(city.mask, y, x, self.tile)
        if self.augment:  # python's `random`, as the authors' transforms use
            if random.random() > 0.5:
                a, b, m = a[:, ::-1], b[:, ::-1], m[:, ::-1]
            k = random.choice((0, 1, 2, 3))
            a, b, m = np.rot90(a, k), np.rot90(b, k), np.rot90(m, k)
        mask = torch.from_numpy(np.ascontiguousarray(m)).float()[None]
        scale = city_scale(city)
        return to_tensor(a, self.mean, self.std, scale), to_tensor(b, self.mean, self.std, scale), mask
