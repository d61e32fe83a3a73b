"""Image sources: which files make up the dataset, found before training starts.

Layouts (`build_source(path, layout=...)`):
  files   a directory of images at any depth (jpg, jpeg, png, tif, tiff; npy for multispectral arrays); no labels
  folder  an ImageFolder tree `<root>/<class>/**/<image>`; labels = index of the class in sorted order
  list    a text file of image paths relative to `path` (EuroSAT's train/val/test.txt); labels from the first
          path component when every entry has one (`AnnualCrop/AnnualCrop_1.jpg` -> AnnualCrop)
  seco    `<root>/<location>/<product-id>/B*.tif` single-band uint8 (RGB = B4, B3, B2) and/or the 100K release's
          RGB preview `<root>/<location>/<product-id>.tif`; a location groups its acquisitions (see seco_stretch.py)
  auto    list if `list_file` is given (or `path` is a .txt file), seco if a location holds band folders,
          folder if every image sits in a top-level sub-folder, files otherwise. A SeCo tree of previews only
          looks like an ImageFolder of TIFFs: pass layout="seco" for it.

SeCo subsets are drawn by location with a seeded hash (`location_in_subset`), so a location is in or out
whatever else the tree holds: adding locations never changes which old ones are in. `acquisitions="one"` keeps
one acquisition per location, drawn once per seed, as DINO-MC's MCBase does (data_process/dino_dataset.py
L41-50: `np.random.choice` over a location's files after `fix_random_seeds`, main_dino_mc.py L156).

Every problem (missing path, no images, unsupported or missing list entry) is a ValueError / FileNotFoundError
that names the path, raised here rather than in a DataLoader worker mid-epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .seco_stretch import RGB_BANDS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".npy")  # .npy: multispectral arrays (band_files.py)
LAYOUTS = ("auto", "files", "folder", "list", "seco")
ACQUISITIONS = ("all", "one")
_RGB_BANDS = RGB_BANDS
_BAND_RE = re.compile(r"^B0?(\d{1,2}A?)\.tiff?$", re.IGNORECASE)  # B4.tif, B04.tif, B8A.tif


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class ImageSource:
    """A flat list of image files. `labels[i]` indexes `classes` (None where the layout has no labels)."""

    root: str
    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    layout: str = "files"

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Acquisition:
    """One Sentinel-2 product of a SeCo location: an RGB preview, or single-band files (band name -> path)."""

    name: str
    preview: str | None = None
    bands: dict[str, str] = field(default_factory=dict)

    @property
    def has_rgb(self) -> bool:
        return self.preview is not None or all(b in self.bands for b in _RGB_BANDS)

    @property
    def where(self) -> str:
        """What names this acquisition in messages: its preview, or its product folder."""
        if self.preview is not None:
            return self.preview
        return str(Path(next(iter(self.bands.values()))).parent) if self.bands else self.name

    @property
    def rgb_files(self) -> list[str]:
        """The files that make the RGB image: the preview, or B4, B3, B2 in that order. A product without all
        three is incomplete: a ValueError naming it, which the pipelines count as a corrupt sample."""
        if self.preview is not None:
            return [self.preview]
        missing = [b for b in _RGB_BANDS if b not in self.bands]
        if missing:
            raise ValueError(f"SeCo product {self.where!r} has no band file for {missing} (it has "
                             f"{sorted(self.bands)})")
        return [self.bands[b] for b in _RGB_BANDS]


@dataclass
class SeCoLocation:
    name: str
    acquisitions: list[Acquisition]


@dataclass
class SeCoSource:
    """SeCo locations, each with its acquisitions (about 5 in SeCo: 0, -3, -6, -9, -12 months)."""

    root: str
    locations: list[SeCoLocation]
    layout: str = "seco"
    labels = None
    classes: list[str] = field(default_factory=list)

    @property
    def acquisitions(self) -> list[Acquisition]:
        """Every acquisition of every location: the images of a non-temporal run."""
        return [a for loc in self.locations for a in loc.acquisitions]

    @property
    def paths(self) -> list[str]:
        """One path per acquisition: its preview, or its folder of bands."""
        return [a.where for a in self.acquisitions]

    @property
    def num_locations(self) -> int:
        return len(self.locations)

    def __len__(self) -> int:
        return sum(len(loc.acquisitions) for loc in self.locations)


def build_source(path, *, list_file=None, layout: str = "auto", subset: float = 1.0, seed: int = 0,
                 acquisitions: str = "all", temporal: bool = False):
    """Find the images of a dataset. Returns an ImageSource, or a SeCoSource for layout "seco".

    subset: keep this fraction (0 < subset <= 1), drawn with `seed`, in the original order. Images: exactly
    round(subset * n) of them (at least one). SeCo: each location is kept when a hash of (seed, its name) falls
    below `subset`, so about that fraction, the same locations whatever else the tree holds.
    acquisitions (SeCo only): "all" (every acquisition of a location) or "one" (one per location, drawn with
    `seed`, as DINO-MC's MCBase: an epoch is one image per location).
    temporal (DINO-TP, `data.temporal`): the data must be a SeCo tree of locations with dated acquisitions; anything
    else is a ValueError now, before any work.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; use one of {LAYOUTS}")
    if acquisitions not in ACQUISITIONS:
        raise ValueError(f"acquisitions={acquisitions!r} is not supported; use one of {ACQUISITIONS}")
    if not 0 < subset <= 1:
        raise ValueError(f"subset={subset!r} must be in (0, 1] (the fraction of the dataset to keep)")
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data path {str(root)!r} does not exist")
    if root.is_file():
        if is_image(root.name):
            raise ValueError(f"data path {str(root)!r} is a single image; give a folder of images (any depth, or "
                             "an ImageFolder tree), a SeCo root, or a text file listing image paths (one per line, "
                             "relative to the list's folder)")
        if layout not in ("auto", "list") or list_file is not None:
            raise ValueError(f"data path {str(root)!r} is a file; give a directory (or a .txt list as the only path)")
        root, list_file, layout = root.parent, root, "list"
    if list_file is not None:
        if layout not in ("auto", "list"):
            raise ValueError(f"list_file={str(list_file)!r} given with layout={layout!r}; use layout='list'")
        layout = "list"
    if layout == "auto":
        layout = _detect_layout(root)
    if temporal and layout != "seco":
        raise ValueError(f"{TEMPORAL_NEEDS}; {str(root)!r} is read as layout {layout!r} (use data.layout=seco for "
                         "a SeCo tree of previews), or set data.temporal=false")
    if layout == "seco":
        source = _subset_seco(_scan_seco(root), subset, seed)
        if temporal:
            check_dated(source)
        return one_acquisition_per_location(source, seed) if acquisitions == "one" else source
    if layout == "list":
        source = _read_list(root, Path(list_file) if list_file is not None else None)
    elif layout == "folder":
        source = _scan_folder(root)
    else:
        source = ImageSource(str(root), _scan_files(root), layout="files")
    return _subset_images(source, subset, seed)


# --- layouts ----------------------------------------------------------------------------------------------
def _walk_images(root: Path) -> tuple[list[str], set[str]]:
    """Sorted image paths under root at any depth, and the extensions of the files that were skipped."""
    images, others = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image(name):
                images.append(os.path.join(dirpath, name))
            elif not name.startswith("."):
                others.add(os.path.splitext(name)[1].lower() or name)
    return images, others


def _no_images_error(root: Path, others: set[str]) -> ValueError:
    found = f"; found only files of type {sorted(others)}" if others else " (it is empty)"
    return ValueError(f"no images under {str(root)!r}{found}. Supported: {', '.join(IMAGE_EXTENSIONS)}")


def _scan_files(root: Path) -> list[str]:
    images, others = _walk_images(root)
    if not images:
        raise _no_images_error(root, others)
    return images


def _scan_folder(root: Path) -> ImageSource:
    paths, labels, classes = [], [], []
    for entry in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images, _ = _walk_images(entry)
        if images:  # an empty class folder is no class (torchvision would fail on it)
            labels += [len(classes)] * len(images)
            classes.append(entry.name)
            paths += images
    if not paths:
        raise _no_images_error(root, _walk_images(root)[1])
    return ImageSource(str(root), paths, labels, classes, layout="folder")


def list_entries(list_file: Path) -> list[str]:
    """The entries of a list file, in order; blank lines and # comments skipped. Errors name the file."""
    if not list_file.is_file():
        raise FileNotFoundError(f"list file {str(list_file)!r} does not exist")
    try:
        text = list_file.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"list file {str(list_file)!r} is not a text file; a list file holds image paths (or file "
                         "names), one per line, relative to the data path (the data path may also be a folder of "
                         "images)") from None
    entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise ValueError(f"list file {str(list_file)!r} lists no images")
    return entries


def _read_list(root: Path, list_file: Path | None) -> ImageSource:
    if list_file is None:
        raise ValueError("layout='list' needs list_file= (a text file of image paths relative to the data path)")
    entries = list_entries(list_file)
    paths = []
    for lineno, entry in enumerate(entries, 1):
        if not is_image(entry):
            raise ValueError(f"{str(list_file)!r} entry {lineno} {entry!r}: unsupported file type; "
                             f"supported: {', '.join(IMAGE_EXTENSIONS)}")
        full = root / entry
        if not full.is_file():
            raise FileNotFoundError(f"{str(list_file)!r} entry {lineno}: image {str(full)!r} does not exist")
        paths.append(str(full))
    parts = [Path(e).parts for e in entries]
    labels, classes = None, []
    if all(len(p) >= 2 for p in parts):
        classes = sorted({p[0] for p in parts})
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[p[0]] for p in parts]
    return ImageSource(str(root), paths, labels, classes, layout="list")


def _detect_layout(root: Path) -> str:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for loc in subdirs[:8]:  # SeCo: <location>/<product>/B4.tif
        for product in sorted(p for p in loc.iterdir() if p.is_dir())[:2]:
            if any(_BAND_RE.match(f.name) for f in product.iterdir()):
                return "seco"
    top_images = [p for p in root.iterdir() if p.is_file() and is_image(p.name)]
    return "folder" if subdirs and not top_images else "files"


def _scan_seco(root: Path) -> SeCoSource:
    locations = []
    for loc in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        acqs = _location_acquisitions(loc)
        if acqs:
            locations.append(SeCoLocation(loc.name, acqs))
    if not locations:
        raise ValueError(f"no SeCo locations under {str(root)!r}: expected <location>/<product-id>/B4.tif, B3.tif, "
                         f"B2.tif or <location>/<product-id>.tif")
    return SeCoSource(str(root), locations)


def _location_acquisitions(loc: Path) -> list[Acquisition]:
    """The acquisitions of one SeCo location, sorted by product id: every product folder holding band files, and
    every preview `<location>/<product-id>.tif`. Where the location has previews, only the previewed products:
    DINO-MC reads a location as its `*.tif` files (data_process/dino_dataset.py L45-47 and L117, WennyXY/DINO-MC
    at ac31459), so band-only products beside them would be images it never sees. A product missing some band
    files stays in: reading it fails like a corrupt image (skipped and counted, or fatal under data.strict)."""
    acqs: dict[str, Acquisition] = {}
    for entry in sorted(loc.iterdir()):
        if entry.is_dir():
            bands = {}
            for f in entry.iterdir():
                m = _BAND_RE.match(f.name)
                if m:
                    bands["B" + m.group(1).upper()] = str(f)
            if bands:
                acqs.setdefault(entry.name, Acquisition(entry.name)).bands.update(bands)
        elif entry.suffix.lower() in (".tif", ".tiff"):
            acqs.setdefault(entry.stem, Acquisition(entry.stem)).preview = str(entry)
    found = [a for _, a in sorted(acqs.items())]
    previewed = [a for a in found if a.preview is not None]
    return previewed or found


TEMPORAL_NEEDS = ("data.temporal=true (DINO-TP) needs a SeCo tree of locations with dated acquisitions: "
                   "<root>/<location>/<product-id>/B*.tif or <root>/<location>/<product-id>.tif, a product id "
                   "holding its date (20200515T083601_...)")
_DATE_RE = re.compile(r"(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])")  # YYYYMMDD in a product id


def check_dated(source: SeCoSource) -> None:
    """DINO-TP's check that a SeCo source is one: band products are unambiguous, but a tree of previews only looks
    like an ImageFolder of TIFFs (<class>/<image>.tif), so there every acquisition's name must hold a date."""
    undated = [a for a in source.acquisitions if not a.bands and not _DATE_RE.search(a.name)]
    if undated:
        raise ValueError(f"{TEMPORAL_NEEDS}; {source.root!r} has {len(undated)} undated image(s) such as "
                         f"{undated[0].where!r}: it looks like an image folder, not SeCo. Set data.temporal=false "
                         "(and augment_preset to dino-mc) to train on it")


# --- deterministic subsets --------------------------------------------------------------------------------
def subset_indices(n: int, subset: float, seed: int) -> list[int]:
    """Sorted indices of a seeded random `subset` fraction of n items (at least one)."""
    if subset >= 1:
        return list(range(n))
    k = max(1, round(subset * n))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def _subset_images(source: ImageSource, subset: float, seed: int) -> ImageSource:
    keep = subset_indices(len(source.paths), subset, seed)
    if len(keep) == len(source.paths):
        return source
    source.paths = [source.paths[i] for i in keep]
    if source.labels is not None:
        source.labels = [source.labels[i] for i in keep]
    return source


def _unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on (seed, key): the same on every machine and Python run."""
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def location_in_subset(name: str, subset: float, seed: int) -> bool:
    """Whether SeCo location `name` belongs to the seeded `subset` fraction. Depends on nothing but (name, subset,
    seed): adding locations to a tree never changes which old ones are in, and a smaller subset is contained in a
    larger one with the same seed."""
    return subset >= 1 or _unit_hash(seed, name) < subset


def _subset_seco(source: SeCoSource, subset: float, seed: int) -> SeCoSource:
    if subset >= 1:
        return source
    kept = [loc for loc in source.locations if location_in_subset(loc.name, subset, seed)]
    if not kept:
        raise ValueError(f"subset={subset} with seed={seed} keeps none of the {len(source.locations)} SeCo locations "
                         f"under {source.root!r}; use a larger subset")
    source.locations = kept
    return source


def one_acquisition_per_location(source: SeCoSource, seed: int) -> SeCoSource:
    """A SeCoSource with one acquisition per location, chosen by a hash of (seed, location), the same whatever
    else the tree holds (DINO-MC's MCBase draws one file per location once, dino_dataset.py L47)."""
    def pick(loc: SeCoLocation) -> SeCoLocation:
        i = int(_unit_hash(seed, "acquisition/" + loc.name) * len(loc.acquisitions))
        return SeCoLocation(loc.name, [loc.acquisitions[i]])

    return dataclasses.replace(source, locations=[pick(loc) for loc in source.locations])
