"""Labelled image splits and the transforms of single-label fine-tuning (DINO-MC main_eurosat.py).

Splits: list files (one path per line relative to --data, the class = the first path component, EuroSAT's
train/val/test.txt; or bare file names such as torchgeo's eurosat-train.txt, found under --data:
fastdino.eval.split_lists), or DINO-MC's layout of ImageFolders `<data>/train/<class>/...`, `<data>/val/<class>/...`
(main_eurosat.py L63, L90) plus an optional `<data>/test/`. Class indices come from the train split; a class in
val or test that train lacks is an error.

Transforms (main_eurosat.py): train RandomResizedCrop(size) with torchvision's defaults (scale (0.08, 1), ratio
(3/4, 4/3), bilinear), horizontal flip p=0.5, normalise (L84-89); evaluation Resize(256, bicubic) + CenterCrop(224)
(L57-62), i.e. resize to size * 256/224 then the centre crop, for any --img-size.

A multispectral backbone (fastdino's extension; DINO-MC is RGB) reads its bands from the images (EuroSAT-MS's
13-band GeoTIFFs, .npy arrays of `fastdino prepare`) in the files' units, and gets the same geometry on the float
bands (RandomResizedCrop antialiased, flip; Resize bicubic + CenterCrop) and the checkpoint's per-band
normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from fastdino.eval.features import load_image
from fastdino.eval.split_lists import read_image_list

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    paths: list[str]
    labels: list[int]
    where: str  # the list file or folder, for messages


def read_splits(root: Path, lists: dict[str, Path | None]) -> tuple[dict[str, Split], list[str]]:
    """({split name: Split}, classes) for the splits that exist; train is required."""
    from fastdino.dataloading import build_source

    root = Path(root)
    sources = {}
    for name in SPLITS:
        list_file = lists.get(name)
        if list_file is not None:
            sources[name] = (read_image_list(root, list_file), str(list_file))
        elif not any(lists.get(n) for n in SPLITS) and (root / name).is_dir():
            sources[name] = (build_source(root / name, layout="folder"), str(root / name))
    if "train" not in sources:
        raise ValueError(f"no training images: pass --train-list, or give --data a folder with train/<class>/ "
                         f"(and val/, test/) sub-folders; {root} has neither")
    for source, where in sources.values():
        if source.labels is None:
            raise ValueError(f"{where} gives no labels: fine-tuning needs class folders, <class>/<image>")
    train_source, _ = sources["train"]
    classes = list(train_source.classes)
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for name, (source, where) in sources.items():
        unknown = sorted(set(source.classes) - set(index))
        if unknown:
            raise ValueError(f"{where}: unknown class {unknown[0]!r} (not among the {len(classes)} train classes "
                             f"{classes}); every {name} class must appear in train")
        splits[name] = Split(list(source.paths), [index[source.classes[y]] for y in source.labels], where)
    return splits, classes


def train_transform(size: int, mean, std, multispectral: bool = False) -> T.Compose:
    """RGB: on PIL images, then to [0, 1] and normalised; multispectral: on float band tensors [C, H, W]."""
    if multispectral:
        return T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.Normalize(mean, std)])
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(size: int, mean, std, multispectral: bool = False) -> T.Compose:
    resize = T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    if multispectral:
        return T.Compose([resize, T.CenterCrop(size), T.Normalize(mean, std)])
    return T.Compose([resize, T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def load_rgb(path) -> Image.Image:
    return load_image(path).convert("RGB")


@dataclass(frozen=True)
class LoadBands:
    """path -> float32 [C, H, W]: a multispectral backbone's bands, in its order and the files' units."""

    bands: tuple[str, ...]
    file_bands: tuple[str, ...] | None

    def __call__(self, path) -> torch.Tensor:
        from fastdino.dataloading.band_files import BandReader

        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            array = BandReader(self.bands, self.file_bands)(str(path))
        except Exception as e:
            raise ValueError(f"image {path} does not read as the backbone's {len(self.bands)} bands "
                             f"({type(e).__name__}: {e})") from e
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)


class LabelledImages(torch.utils.data.Dataset):
    """(transformed image, label); an image that does not decode is an error naming the file."""

    def __init__(self, split: Split, transform, load=load_rgb):
        self.split = split
        self.transform = transform
        self.load = load

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, i: int):
        return self.transform(self.load(self.split.paths[i])), self.split.labels[i]
