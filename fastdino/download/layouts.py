"""Turn each extracted release into the folder `fastdino train` / `finetune` read (docs/data.md, docs/finetune.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastdino.eval.splits import stratified_split

from .extract import content_root, extract_archive

# EuroSAT ships no split: a seeded, per-class 60 / 20 / 20 split, written beside the data.
VAL_FRACTION, TEST_FRACTION = 0.2, 0.2


def build_eurosat(archives: dict[str, Path], staging: Path, *, seed: int, images_dir: str | None) -> dict:
    """EuroSAT RGB -> <folder>/images/<Class>/<Class>_<i>.jpg; EuroSAT-MS -> <folder>/<Class>/<Class>_<i>.tif.

    train.txt / val.txt / test.txt go in <folder> and hold paths relative to the image folder
    (`AnnualCrop/AnnualCrop_100.jpg`), as the shared EuroSAT copy and docs/data.md have them.
    """
    (archive,) = archives.values()
    unpacked = staging / ".unpacked"
    extract_archive(archive, unpacked)
    images = staging / images_dir if images_dir else staging
    _move_contents(content_root(unpacked), images)
    shutil.rmtree(unpacked)
    suffixes = (".jpg",) if images_dir else (".tif",)
    files = sorted(p.relative_to(images).as_posix() for p in images.glob("*/*") if p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"{archive} holds no <Class>/<image>{suffixes[0]} files: is it the EuroSAT release?")
    splits = stratified_three_way(files, seed)
    for name, lines in splits.items():
        (staging / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    return {name: len(lines) for name, lines in splits.items()}


def stratified_three_way(files: list[str], seed: int) -> dict[str, list[str]]:
    """Per class (the first path component): 20% test, then 20% of the whole (25% of the rest) val, the rest train."""
    classes = sorted({f.split("/")[0] for f in files})
    labels = [classes.index(f.split("/")[0]) for f in files]
    rest, test = stratified_split(labels, TEST_FRACTION, seed)
    train, val = stratified_split([labels[i] for i in rest], VAL_FRACTION / (1 - TEST_FRACTION), seed)
    return {
        "train": [files[rest[i]] for i in train],
        "val": [files[rest[i]] for i in val],
        "test": [files[i] for i in test],
    }


def build_tree(archives: dict[str, Path], staging: Path, **_) -> dict:
    """SeCo: the release's <location>/<product-id>/B*.tif tree as it is."""
    (archive,) = archives.values()
    unpacked = staging / ".unpacked"
    extract_archive(archive, unpacked)
    _move_contents(content_root(unpacked), staging)
    shutil.rmtree(unpacked)
    return {"locations": sum(1 for p in staging.iterdir() if p.is_dir())}


def build_bigearthnet(archives: dict[str, Path], staging: Path, **_) -> dict:
    """<patch>/<patch>_B*.tif + SeCo's split lists as train.txt / val.txt / test.txt + the flagged-patch CSVs."""
    tar = next(p for name, p in archives.items() if name.endswith(".tar.gz"))
    counts = build_tree({tar.name: tar}, staging)
    for split in ("train", "val", "test"):
        shutil.copyfile(archives[f"bigearthnet-{split}.txt"], staging / f"{split}.txt")
    for name in ("patches_with_seasonal_snow.csv", "patches_with_cloud_and_shadow.csv"):
        shutil.copyfile(archives[name], staging / name)
    return {"patches": counts["locations"]}


def build_oscd(archives: dict[str, Path], staging: Path, **_) -> dict:
    """Each zip unpacked to a folder named after it ("Onera Satellite Change Detection dataset - Images", ...)."""
    for name, archive in archives.items():
        unpacked = staging / f".unpacked-{Path(name).stem}"
        extract_archive(archive, unpacked)
        wrapped = unpacked / Path(name).stem  # the release's zips hold one folder named like the zip
        _move_contents(wrapped if wrapped.is_dir() else unpacked, staging / Path(name).stem)
        shutil.rmtree(unpacked)
    images = staging / "Onera Satellite Change Detection dataset - Images"
    return {"cities": sum(1 for p in images.iterdir() if p.is_dir())} if images.is_dir() else {}


def _move_contents(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "__MACOSX":
            shutil.move(str(entry), str(dest / entry.name))


BUILDERS = {
    "eurosat": lambda a, s, seed: build_eurosat(a, s, seed=seed, images_dir="images"),
    "eurosat-ms": lambda a, s, seed: build_eurosat(a, s, seed=seed, images_dir=None),
    "seco-100k": lambda a, s, seed: build_tree(a, s),
    "seco-1m": lambda a, s, seed: build_tree(a, s),
    "bigearthnet": lambda a, s, seed: build_bigearthnet(a, s),
    "oscd": lambda a, s, seed: build_oscd(a, s),
}
