"""Labelled split lists (train/val/test.txt) as `fastdino eval` and `fastdino finetune classify` read them.

An entry is an image path relative to the data folder (`AnnualCrop/AnnualCrop_1.jpg`), or a bare file name as
other tools write their lists: torchgeo's EuroSAT splits `eurosat-train.txt` / `-val.txt` / `-test.txt` name
`AnnualCrop_1.jpg`, and torchgeo reads the same lists for EuroSAT-MS by swapping .jpg for .tif
(microsoft/torchgeo, torchgeo/datasets/eurosat.py, `EuroSAT.__init__`, L150-154 at commit 720cf5b). A bare name is
found by its name anywhere under the data folder, else by its stem (`AnnualCrop_1.jpg` -> `AnnualCrop_1.tif`); a
name that matches several images is an error, never a guess. The class of an image is the first folder of its path
under the data folder (EuroSAT: `<Class>/<Class>_<i>.jpg`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePath

from fastdino.dataloading.sources import IMAGE_EXTENSIONS, ImageSource, build_source, is_image, list_entries


def read_image_list(root: Path, list_file: Path) -> ImageSource:
    """The images of a split list under `root`, with labels from their class folders where every image has one."""
    root, list_file = Path(root), Path(list_file)
    entries = list(enumerate(list_entries(list_file), 1))
    if all((root / entry).is_file() for _, entry in entries):
        return build_source(root, list_file=list_file, layout="list")  # every entry a path: the common reader
    index = None
    paths = []
    for lineno, entry in entries:
        if (root / entry).is_file():
            paths.append(root / entry)
            continue
        if len(PurePath(entry).parts) > 1:  # a path must exist as written; only bare names are searched for
            raise FileNotFoundError(f"{str(list_file)!r} entry {lineno}: image {str(root / entry)!r} does not exist")
        if not is_image(entry):
            raise ValueError(f"{str(list_file)!r} entry {lineno} {entry!r}: unsupported file type; supported: "
                             f"{', '.join(IMAGE_EXTENSIONS)}")
        index = index or NameIndex(root)
        paths.append(index.find(entry, f"{list_file} entry {lineno}"))
    return labelled_source(root, paths)


class NameIndex:
    """Every image under `root` by file name and by stem: one walk of the tree, however many names are looked up."""

    def __init__(self, root: Path):
        self.root = root
        self.by_name: dict[str, list[Path]] = defaultdict(list)
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if is_image(name):
                    path = Path(dirpath) / name
                    self.by_name[name].append(path)
                    self.by_stem[path.stem].append(path)

    def find(self, name: str, where: str) -> Path:
        matches = self.by_name.get(name) or self.by_stem.get(PurePath(name).stem, [])
        if not matches:
            raise FileNotFoundError(f"{where}: no image named {name!r} (nor {PurePath(name).stem}.<another image "
                                    f"type>) under {self.root}")
        if len(matches) > 1:
            shown = ", ".join(p.relative_to(self.root).as_posix() for p in matches[:4])
            more = f" and {len(matches) - 4} more" if len(matches) > 4 else ""
            raise ValueError(f"{where} {name!r} matches {len(matches)} images under {self.root}: {shown}{more}; "
                             f"write the entry as a path relative to the data folder, or give a data folder that "
                             f"holds one of them")
        return matches[0]


def labelled_source(root: Path, paths: list[Path]) -> ImageSource:
    """An ImageSource of `paths`, labelled by the first folder under `root` when every path has one."""
    parts = [p.relative_to(root).parts for p in paths]
    labels, classes = None, []
    if all(len(p) >= 2 for p in parts):
        classes = sorted({p[0] for p in parts})
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[p[0]] for p in parts]
    return ImageSource(str(root), [str(p) for p in paths], labels, classes, layout="list")
