"""Labelled image splits and the transforms of single-label fine-tuning (DINO-MC main_eurosat.py).

Splits: list files (one path per line relative to --data, the class = the first path component, EuroSAT's
train/val/test.txt), or DINO-MC's layout of ImageFolders `<data>/train/<class>/...`, `<data>/val/<class>/...`
(main_eurosat.py L63, L90) plus an optional `<data>/test/`. Class indices come from the train split; a class in
val or test that train lacks is an error.

Transforms (main_eurosat.py): train RandomResizedCrop(size) with torchvision's defaults (scale (0.08, 1), ratio
(3/4, 4/3), bilinear), horizontal flip p=0.5, normalise (L84-89); evaluation Resize(256, bicubic) + CenterCrop(224)
(L57-62), i.e. resize to size * 256/224 then the centre crop, for any --img-size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import transforms as T

from fastdino.eval.features import load_image

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
            sources[name] = (build_source(root, list_file=list_file, layout="list"), str(list_file))
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


def train_transform(size: int, mean, std) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(size: int, mean, std) -> T.Compose:
    resize = round(size * 256 / 224)
    return T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(mean, std)])


class LabelledImages(torch.utils.data.Dataset):
    """(transformed image, label); an image that does not decode is an error naming the file."""

    def __init__(self, split: Split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.split.paths[i]).convert("RGB")), self.split.labels[i]
