"""BigEarthNet (Sentinel-2, v1.0) as DINO-MC fine-tunes on it: RGB patches and the 19-class multi-hot target.

On-disk layout (the archive `BigEarthNet-v1.0.tar.gz`, bigearth.net; Sumbul et al., "BigEarthNet: A Large-Scale
Benchmark Archive for Remote Sensing Image Understanding", IGARSS 2019):

    <root>/<patch>/<patch>_B01.tif ... <patch>_B12.tif, <patch>_B8A.tif   one uint16 GeoTIFF per band: 120 x 120
                                                                          px at 10 m (B02, B03, B04, B08), 60 x 60
                                                                          at 20 m, 20 x 20 at 60 m
    <root>/<patch>/<patch>_labels_metadata.json   {"labels": [CORINE names], "coordinates": {...},
                                                   "projection": ..., "tile_source": ..., "acquisition_date": ...}
    <root>/train.txt, val.txt, test.txt           patch names, one per line (SeCo's split lists, which DINO-MC
                                                   reads: data_process/bigearthnet_dataset.py L155-158); a .csv
                                                   whose first column is the patch name also works
    <root>/patches_with_seasonal_snow.csv,        patches the dataset's authors flag; excluded when present
    <root>/patches_with_cloud_and_shadow.csv      (bigearthnet_dataset.py L129-132, L148-152)

What DINO-MC does with it (WennyXY/DINO-MC, data_process/bigearthnet_dataset.py and main_bigearthnet.py), kept here:
- RGB = B04, B03, B02 (L13); each band stretched from [mean - 2 std, mean + 2 std] to 8 bits with the archive's band
  statistics (L15-44, `normalize` L113-118), the three stacked into an RGB image (L164-170);
- labels mapped from the 43 CORINE Level-3 names (L46-63) to the 19-class nomenclature (NEW_LABELS L65-85,
  GROUP_LABELS L87-110, get_multihot_new L197-206). The 11 classes outside it (airports, bare rock, burnt areas,
  ...) are dropped, so a patch may end with no label (it is kept, as there). A name that is not one of the 43
  is an error here (the authors' reader would skip it silently: a typo would remove a label unnoticed).
- the image is resized to 224 x 224, bicubic, and scaled to [0, 1] with no mean/std normalisation and no
  augmentation, for train and evaluation alike (main_bigearthnet.py L60-63).
A multispectral backbone (fastdino's own extension; DINO-MC is RGB) gets its own bands instead, read from the
patch's band files in their units (uint16 reflectance), the 20 m and 60 m bands brought to the 10 m grid by nearest
neighbour (fastdino.dataloading.band_files.read_band_files, the pretraining readers' rule), resized bicubic to
the input size and normalised per band with the checkpoint's statistics. BigEarthNet has no B10: a backbone
pretrained with it cannot read these patches (an error names the band).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastdino.dataloading.band_files import canonical_band, read_band_files

from .rasters import read_band, resize_bands, stretch_to_uint8

# The 43 CORINE Land Cover Level-3 classes of BigEarthNet v1.0, in alphabetical order.
CORINE_LABELS = (
    "Agro-forestry areas", "Airports", "Annual crops associated with permanent crops", "Bare rock",
    "Beaches, dunes, sands", "Broad-leaved forest", "Burnt areas", "Coastal lagoons", "Complex cultivation patterns",
    "Coniferous forest", "Construction sites", "Continuous urban fabric", "Discontinuous urban fabric", "Dump sites",
    "Estuaries", "Fruit trees and berry plantations", "Green urban areas", "Industrial or commercial units",
    "Inland marshes", "Intertidal flats",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Mineral extraction sites", "Mixed forest", "Moors and heathland", "Natural grassland",
    "Non-irrigated arable land", "Olive groves", "Pastures", "Peatbogs", "Permanently irrigated land", "Port areas",
    "Rice fields", "Road and rail networks and associated land", "Salines", "Salt marshes",
    "Sclerophyllous vegetation", "Sea and ocean", "Sparsely vegetated areas", "Sport and leisure facilities",
    "Transitional woodland/shrub", "Vineyards", "Water bodies", "Water courses",
)

# The 19-class nomenclature (Sumbul et al., "BigEarthNet-MM", IEEE GRSM 2021), in DINO-MC's order (L65-85).
LABELS_19 = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)

# CORINE names merged into a 19-class name (DINO-MC GROUP_LABELS, L87-110); the other names of LABELS_19 map to
# themselves and every remaining CORINE name is outside the nomenclature.
_GROUPED = {
    "Continuous urban fabric": "Urban fabric", "Discontinuous urban fabric": "Urban fabric",
    "Non-irrigated arable land": "Arable land", "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops", "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops", "Annual crops associated with permanent crops": "Permanent crops",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Inland marshes": "Inland wetlands", "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands", "Salines": "Coastal wetlands",
    "Water bodies": "Inland waters", "Water courses": "Inland waters",
    "Coastal lagoons": "Marine waters", "Estuaries": "Marine waters", "Sea and ocean": "Marine waters",
}
# CORINE name -> index in LABELS_19, or None for the 11 names the nomenclature leaves out.
TO_19 = {name: LABELS_19.index(_GROUPED.get(name, name)) if _GROUPED.get(name, name) in LABELS_19 else None
         for name in CORINE_LABELS}

RGB_BANDS = ("B04", "B03", "B02")  # bigearthnet_dataset.py L13
# Band mean and std of the archive (bigearthnet_dataset.py L15-44), for the 2-sigma stretch to 8 bits.
BAND_STATS = {
    "B02": (429.9430203, 572.41639287),
    "B03": (614.21682446, 582.87945694),
    "B04": (590.23569706, 675.88746967),
}
BAD_PATCH_FILES = ("patches_with_seasonal_snow.csv", "patches_with_cloud_and_shadow.csv")


def labels_path(patch_dir: Path) -> Path:
    return patch_dir / f"{patch_dir.name}_labels_metadata.json"


def band_path(patch_dir: Path, band: str) -> Path:
    return patch_dir / f"{patch_dir.name}_{band}.tif"


def file_band(band: str) -> str:
    """A band as BigEarthNet names its file: B4 or B04 -> B04, B8A -> B8A."""
    band = canonical_band(band)
    return band if band.endswith("A") else f"B{int(band[1:]):02d}"


def missing_band_files(patch_dir: Path, bands: tuple[str, ...]) -> list[str]:
    """The names of the patch's band files for `bands` (BigEarthNet's B04 form) that are not in its folder: one
    listing of the folder, not one stat per band."""
    present = set(os.listdir(patch_dir))
    return [band_path(patch_dir, b).name for b in bands if band_path(patch_dir, b).name not in present]


def missing_bands_error(list_file: Path, missing: dict[Path, list[str]], n_patches: int,
                        bands: tuple[str, ...]) -> FileNotFoundError:
    shown = "; ".join(f"{patch} has no {', '.join(files)}" for patch, files in list(missing.items())[:3])
    more = f"; and {len(missing) - 3} more" if len(missing) > 3 else ""
    absent = [b for b in bands if all(any(f.endswith(f"_{b}.tif") for f in files) for files in missing.values())]
    if len(missing) == n_patches and absent:  # a band of the backbone that the data set does not hold
        fix = (f"no patch has {', '.join(absent)}: the backbone reads bands these patches do not hold (BigEarthNet "
               f"v1 has every Sentinel-2 band but B10); fine-tune a backbone pretrained without them")
    else:
        fix = "restore them from the archive, or leave those patches out of the list"
    return FileNotFoundError(f"{list_file}: {len(missing)} of {n_patches} patches lack band files the run reads "
                             f"({', '.join(bands)}): {shown}{more}. {fix[0].upper()}{fix[1:]}")


def multi_hot_19(names: list[str], where: Path) -> np.ndarray:
    """The 19-class multi-hot vector of a patch's CORINE names; an unknown name is an error naming `where`."""
    target = np.zeros(len(LABELS_19), dtype=np.float32)
    for name in names:
        if name not in TO_19:
            close = difflib.get_close_matches(str(name), CORINE_LABELS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown class {name!r}, not one of BigEarthNet's 43 CORINE labels{hint}")
        index = TO_19[name]
        if index is not None:
            target[index] = 1.0
    return target


def read_labels(patch_dir: Path) -> np.ndarray:
    path = labels_path(patch_dir)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist (every BigEarthNet patch folder holds "
                                f"<patch>_labels_metadata.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"label file {path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise ValueError(f"label file {path} has no 'labels' list")
    return multi_hot_19(meta["labels"], path)


def read_split_list(path: Path) -> list[str]:
    """Patch names of a split file: one per line, or the first column of a CSV; blank lines skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} does not exist")
    names = [line.split(",")[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"split list {path} names no patches")
    return names


def bad_patches(root: Path) -> set[str]:
    """Patches flagged for seasonal snow or cloud and shadow (the CSVs beside the patches, when present)."""
    flagged: set[str] = set()
    for name in BAD_PATCH_FILES:
        if (root / name).is_file():
            flagged.update(line.split(",")[0].strip() for line in (root / name).read_text().splitlines())
    flagged.discard("")
    return flagged


@dataclass
class BigEarthNetSplit:
    """Patch folders of one split and their 19-class targets [N, 19] (read and checked when built)."""

    patches: list[Path]
    targets: np.ndarray
    excluded: int  # flagged patches left out
    unlabelled: int  # patches none of whose labels is in the 19-class nomenclature

    @classmethod
    def read(cls, root: Path, list_file: Path, *, exclude: set[str] | None = None,
             bands=RGB_BANDS) -> BigEarthNetSplit:
        """The split's patches, each checked now: its folder, its label file and the files of `bands` (the bands
        the run reads; a missing one would otherwise fail a DataLoader worker mid-epoch)."""
        root = Path(root)
        bands = tuple(file_band(b) for b in bands)
        names = read_split_list(list_file)
        exclude = exclude if exclude is not None else bad_patches(root)
        kept = [n for n in names if n not in exclude]
        patches, targets, missing = [], [], {}
        for lineno, name in enumerate(kept, 1):
            patch = root / name
            if not patch.is_dir():
                raise FileNotFoundError(f"{list_file} entry {lineno}: patch folder {patch} does not exist")
            patches.append(patch)
            targets.append(read_labels(patch))
            lacking = missing_band_files(patch, bands)
            if lacking:
                missing[patch] = lacking
        if missing:
            raise missing_bands_error(list_file, missing, len(kept), bands)
        targets = np.stack(targets) if targets else np.zeros((0, len(LABELS_19)), np.float32)
        return cls(patches, targets, len(names) - len(kept), int((targets.sum(1) == 0).sum()))

    def subset(self, fraction: float, seed: int) -> BigEarthNetSplit:
        """A seeded `fraction` of the patches, drawn without replacement, in their original order."""
        if not 0 < fraction <= 1:
            raise ValueError(f"--train-frac {fraction} must be in (0, 1]")
        if fraction == 1:
            return self
        n = max(1, int(fraction * len(self.patches)))
        keep = np.sort(np.random.default_rng(seed).choice(len(self.patches), size=n, replace=False))
        return BigEarthNetSplit([self.patches[i] for i in keep], self.targets[keep], self.excluded,
                                int((self.targets[keep].sum(1) == 0).sum()))


def read_rgb(patch_dir: Path) -> np.ndarray:
    """The patch's B04, B03, B02 stretched to 8 bits, stacked as an H x W x 3 uint8 array."""
    channels = []
    for band in RGB_BANDS:
        mean, std = BAND_STATS[band]
        channels.append(stretch_to_uint8(read_band(band_path(patch_dir, band)), mean - 2 * std, mean + 2 * std))
    shapes = {c.shape for c in channels}
    if len(shapes) != 1:
        raise ValueError(f"patch {patch_dir}: bands {RGB_BANDS} have different sizes {sorted(shapes)}")
    return np.dstack(channels)


def read_bands(patch_dir: Path, bands) -> np.ndarray:
    """A multispectral backbone's bands of one patch, [H, W, len(bands)] on the 10 m grid, in the files' dtype."""
    prefix = f"{patch_dir.name}_"
    files = {}
    for path in patch_dir.glob(f"{prefix}B*.tif"):
        try:
            files[canonical_band(path.stem[len(prefix):])] = str(path)
        except ValueError:
            continue  # not a band file
    missing = [b for b in bands if b not in files]
    if missing:
        raise FileNotFoundError(f"patch {patch_dir}: no band file for {missing} (the backbone reads "
                                f"{', '.join(bands)}; the patch has {', '.join(sorted(files)) or 'none'})")
    return read_band_files(files, tuple(bands))


class BigEarthNetDataset(torch.utils.data.Dataset):
    """(image [C, S, S], 19-class target) pairs. RGB: in [0, 1] (then normalised if mean/std are given);
    `bands` (a multispectral backbone): those bands in the files' units, always normalised with mean/std."""

    def __init__(self, split: BigEarthNetSplit, size: int, mean=None, std=None, bands=None):
        self.split = split
        self.size = size
        self.bands = tuple(bands) if bands else None
        if self.bands and mean is None:
            raise ValueError("a multispectral input needs the backbone's per-band mean and std")
        channels = len(self.bands) if self.bands else 3
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(channels, 1, 1)

    def __len__(self) -> int:
        return len(self.split.patches)

    def __getitem__(self, i: int):
        if self.bands:
            x = resize_bands(read_bands(self.split.patches[i], self.bands), self.size)
            return (x - self.mean) / self.std, torch.from_numpy(self.split.targets[i])
        image = Image.fromarray(read_rgb(self.split.patches[i]))
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, torch.from_numpy(self.split.targets[i])
