"""The readable reference pipeline: PIL decoding and torchvision transforms in DataLoader workers.

Per view it does what DINO's `DataAugmentationDINO` (and DINO-MC's version of it) does:
RandomResizedCrop -> horizontal flip -> ColorJitter (random order, probability p) -> grayscale -> PIL Gaussian
blur (radius uniform in blur_sigma) -> solarize -> to float, normalise. A group with `colour_before_crop` runs
jitter -> grayscale -> blur -> solarize -> flip on the whole image and crops last, as DINO-TP does (DINO-MC
data_process/dino_dataset.py L97-104 before dino_augmentation.py L77-80). The random parameters of a view are
drawn by `sample_view_params` and applied by `apply_view`, so tests can check the distributions directly.

DINO-TP (temporal): a sample is a SeCo location; it draws `spec.n_dates` of its acquisitions with replacement
(DINO-MC's `np.random.choice(img_names, 3)`, dino_dataset.py L118) and each view is cut from the draw its
group's `date` names.

Randomness is a function of (seed, epoch, dataset index) only, not of the worker that loads the sample, so a
run is reproducible whatever `num_threads` is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import AugmentationSpec, ViewGroup
from .band_files import BandReader
from .decode import load_rgb
from .ms_augment import apply_ms_view
from .shard_order import ShardEpochSampler
from .shard_source import ShardSource
from .sources import Acquisition, ImageSource, SeCoLocation, SeCoSource

_INTERP = {"nearest": TF.InterpolationMode.NEAREST, "bilinear": TF.InterpolationMode.BILINEAR,
           "bicubic": TF.InterpolationMode.BICUBIC}


@dataclass
class ViewParams:
    """The random draws of one view. crop = (top, left, height, width) in source pixels."""

    crop: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[list[int], float, float, float, float] | None  # (order, brightness, contrast, saturation, hue)
    grayscale: bool
    blur_sigma: float | None
    solarize: bool
    vflip: bool = False  # applied to the finished view, then the transpose
    transpose: bool = False


def sample_crop(width: int, height: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with an explicit generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the central crop of the nearest allowed aspect ratio
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_view_params(group: ViewGroup, width: int, height: int, rng: np.random.Generator) -> ViewParams:
    crop = sample_crop(width, height, group.scale, group.ratio, rng)
    flip = bool(rng.random() < group.flip_p)
    jitter = None
    if rng.random() < group.jitter_p:
        b, c, s, h = group.jitter
        jitter = (rng.permutation(4).tolist(), rng.uniform(max(0, 1 - b), 1 + b), rng.uniform(max(0, 1 - c), 1 + c),
                  rng.uniform(max(0, 1 - s), 1 + s), rng.uniform(-h, h))
    grayscale = bool(rng.random() < group.grayscale_p)
    blur_sigma = float(rng.uniform(*group.blur_sigma)) if rng.random() < group.blur_p else None
    solarize = bool(rng.random() < group.solarize_p)
    # Drawn only where asked for, so the draws of every spec without them are unchanged.
    vflip = group.vflip_p > 0 and bool(rng.random() < group.vflip_p)
    transpose = group.transpose_p > 0 and bool(rng.random() < group.transpose_p)
    return ViewParams(crop, flip, jitter, grayscale, blur_sigma, solarize, vflip, transpose)


def apply_view(img: Image.Image, group: ViewGroup, p: ViewParams, mean, std) -> torch.Tensor:
    """One view as a normalised float tensor [3, size, size]."""
    if group.colour_before_crop:  # DINO-TP: augment the whole image, then crop (dino_dataset.py L97-104)
        img = _photometric(img, group, p)
        img = _crop(TF.hflip(img) if p.flip else img, group, p)
    else:  # DINO: crop, then flip and colour (main_dino.py L436-447)
        img = _crop(img, group, p)
        img = _photometric(TF.hflip(img) if p.flip else img, group, p)
    img = TF.vflip(img) if p.vflip else img
    img = img.transpose(Image.Transpose.TRANSPOSE) if p.transpose else img
    return TF.normalize(TF.to_tensor(img), mean, std)


def _crop(img: Image.Image, group: ViewGroup, p: ViewParams) -> Image.Image:
    top, left, h, w = p.crop
    return TF.resized_crop(img, top, left, h, w, [group.size, group.size], _INTERP[group.interpolation],
                           antialias=True)


def _photometric(img: Image.Image, group: ViewGroup, p: ViewParams) -> Image.Image:
    """Colour jitter, grayscale, blur, solarize as drawn."""
    if p.jitter is not None:
        order, b, c, s, hue = p.jitter
        for fn in order:  # ColorJitter applies its four adjustments in a random order
            if fn == 0 and group.jitter[0] > 0:
                img = TF.adjust_brightness(img, b)
            elif fn == 1 and group.jitter[1] > 0:
                img = TF.adjust_contrast(img, c)
            elif fn == 2 and group.jitter[2] > 0:
                img = TF.adjust_saturation(img, s)
            elif fn == 3 and group.jitter[3] > 0:
                img = TF.adjust_hue(img, hue)
    if p.grayscale:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p.blur_sigma is not None:
        img = img.filter(ImageFilter.GaussianBlur(radius=p.blur_sigma))  # DINO blurs with PIL, radius = sigma
    if p.solarize:
        img = ImageOps.solarize(img, threshold=group.solarize_threshold)
    return img


class MultiViewTransform:
    """All views of one sample. `images` is one PIL image, or one per view (DINO-TP); multispectral: [H, W, C]
    arrays instead (ms_augment.apply_ms_view)."""

    def __init__(self, spec: AugmentationSpec):
        self.spec = spec
        self.groups = spec.views()

    def __call__(self, images, rng: np.random.Generator) -> list[torch.Tensor]:
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images] * len(self.groups)
        out = []
        for group, img in zip(self.groups, images, strict=True):
            if isinstance(img, np.ndarray):
                params = sample_view_params(group, img.shape[1], img.shape[0], rng)
                out.append(apply_ms_view(img, group, params, self.spec))
                continue
            params = sample_view_params(group, img.width, img.height, rng)
            out.append(apply_view(img, group, params, self.spec.mean, self.spec.std))
        return out


class MultiViewDataset(Dataset):
    """Items are image paths / SeCo acquisitions, or SeCo locations when temporal. Indexed by (epoch, index);
    returns (views, files skipped as corrupt on the way)."""

    def __init__(self, items: list, spec: AugmentationSpec, *, seed: int = 0, strict: bool = False, reader=None):
        self.items = items
        self.transform = MultiViewTransform(spec)
        self.seed = seed
        self.strict = strict
        self.read = reader or load_rgb  # multispectral: a multispectral.BandReader (item -> [H, W, C] array)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped = []
        # A corrupt file is replaced by the next item, so every batch stays full; give up after a whole pass.
        for k in range(len(self.items)):
            i = (index + k) % len(self.items)
            rng = np.random.default_rng([self.seed, epoch, i])
            try:
                images = self._load(self.items[i], rng, skipped)
            except Exception as e:
                if self.strict:
                    raise RuntimeError(f"cannot read image {_name(self.items[i])!r}: {e}") from e
                skipped.append(_name(self.items[i]))
                continue
            return self.transform(images, rng), skipped
        raise RuntimeError(f"every image of the dataset failed to load; first ones: {skipped[:5]}")

    def _load(self, item, rng, skipped):
        if not isinstance(item, SeCoLocation):
            return self.read(item)
        return self._load_temporal(item, rng, skipped)

    def _load_temporal(self, location: SeCoLocation, rng, skipped):
        """DINO-TP: `n_dates` acquisitions drawn with replacement; each view gets the draw of its group's date."""
        acqs = list(location.acquisitions)
        images = {}
        for a in acqs:  # the few acquisitions of a location are small; read them all to drop corrupt ones first
            try:
                images[a.name] = self.read(a)
            except Exception as e:
                if self.strict:
                    raise RuntimeError(f"cannot read image {_name(a)!r}: {e}") from e
                skipped.append(_name(a))
        names = [a.name for a in acqs if a.name in images]
        if not names:
            raise OSError(f"no readable acquisition in location {location.name!r}")
        dated = [images[names[i]] for i in draw_dates(len(names), self.transform.spec.n_dates, rng)]
        return [dated[g.date] for g in self.transform.groups]


def draw_dates(n_acquisitions: int, n_dates: int, rng: np.random.Generator) -> list[int]:
    """Indices of the acquisitions a DINO-TP sample uses, drawn uniformly with replacement (DINO-MC's
    `np.random.choice(img_names, 3)`, dino_dataset.py L118): t0, t1, ... may be the same date."""
    return rng.integers(n_acquisitions, size=n_dates).tolist()


def _name(item) -> str:
    if isinstance(item, Acquisition):
        return item.where  # the preview or the product folder (a product's bands fail together)
    if isinstance(item, SeCoLocation):
        return item.name
    return str(item)


class RankSampler(Sampler):
    """DistributedSampler's split without padding: a per-epoch seeded permutation, cut to a multiple of
    world_size, every world_size-th index from `rank`. Yields (epoch, index) so that persistent workers
    still see the current epoch."""

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.n, self.rank, self.world_size, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.epoch = 0
        self.skip = 0  # indices of this epoch not to yield (a resume inside the epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skip = epoch, 0

    def indices(self) -> list[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        per_rank = self.n // self.world_size
        return order[self.rank: per_rank * self.world_size: self.world_size].tolist()

    def __iter__(self):
        epoch = self.epoch
        return iter([(epoch, i) for i in self.indices()[self.skip:]])

    def __len__(self) -> int:
        return self.n // self.world_size


def _collate(samples):
    views = [torch.stack(v) for v in zip(*(s[0] for s in samples), strict=True)]
    return views, [f for s in samples for f in s[1]]


def band_reader(source, spec: AugmentationSpec) -> BandReader | None:
    """The multispectral reader of a spec with bands (None for RGB): file order from the source's `file_bands`
    (set by fastdino.bands.resolve.resolve_multispectral)."""
    if not spec.bands:
        return None
    if not spec.mean:
        raise ValueError(f"AugmentationSpec with bands {list(spec.bands)} has no mean / std: run `fastdino stats` "
                         "on the data and set them (fastdino train does it from data.stats)")
    return BandReader(tuple(spec.bands), getattr(source, "file_bands", None))


def check_temporal(spec: AugmentationSpec, temporal: bool) -> None:
    if temporal and spec.n_dates < 2:
        raise ValueError("temporal=True (DINO-TP) cuts views from several acquisitions of a location, but every view "
                         "of this AugmentationSpec has date 0: use AugmentationSpec.preset('dino-tp') or set "
                         "ViewGroup.date")


def pipeline_items(source, temporal: bool) -> Sequence:
    """What one sample is: an image path, a SeCo acquisition, or (DINO-TP) a SeCo location; from shards, the same
    with ShardMembers where the file tree has paths (made on access, shard_source.py)."""
    if isinstance(source, ShardSource):
        return source.items(temporal)
    if temporal:
        if not isinstance(source, SeCoSource):
            raise ValueError("temporal=True (DINO-TP) needs a SeCo source (build_source(..., layout='seco'))")
        return list(source.locations)
    if isinstance(source, SeCoSource):
        return source.acquisitions
    if isinstance(source, ImageSource):
        return list(source.paths)
    raise TypeError(f"source must be an ImageSource, SeCoSource or ShardSource from build_source, got "
                    f"{type(source).__name__}")


def epoch_sampler(source, items: Sequence, temporal: bool, *, rank: int, world_size: int, seed: int):
    """The order of an epoch: a seeded permutation of the items (RankSampler), or over shards the two-level order
    of shard_order.py (shards, then items within groups of shards), which keeps each rank on its own shards."""
    if isinstance(source, ShardSource):
        return ShardEpochSampler(source.items_per_shard(temporal), rank=rank, world_size=world_size, seed=seed)
    return RankSampler(len(items), rank=rank, world_size=world_size, seed=seed)


class TorchPipeline:
    """Iterable of `list[Tensor[B, 3, H_v, W_v]]` on `device`, global views first; drop_last batches."""

    backend = "torch"

    def __init__(self, source, spec: AugmentationSpec, *, batch_size: int, device="cpu", num_threads: int = 2,
                 seed: int = 0, rank: int = 0, world_size: int = 1, temporal: bool = False, strict: bool = False):
        check_temporal(spec, temporal)
        items = pipeline_items(source, temporal)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dataset = MultiViewDataset(items, spec, seed=seed, strict=strict, reader=band_reader(source, spec))
        self.sampler = epoch_sampler(source, items, temporal, rank=rank, world_size=world_size, seed=seed)
        _check_length(len(self.sampler), batch_size, len(items), world_size)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_threads,
                                 collate_fn=_collate, drop_last=True, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_threads > 0)
        self.skipped_files: set[str] = set()
        self.notes: list[str] = []  # messages for train.log, once per run (DALI's planar TIFFs; none here)

    @property
    def num_skipped(self) -> int:
        """Distinct files found corrupt so far (each is warned about once)."""
        return len(self.skipped_files)

    def set_epoch(self, epoch: int, start_batch: int = 0, state: dict | None = None) -> None:
        """The next iteration yields batches start_batch, start_batch + 1, ... of `epoch` (a resume inside an
        epoch). The skipped batches are never loaded; the others are the same as without the skip, since every
        random draw is a function of (seed, epoch, index). `state` (from `state_dict`) is not needed here."""
        self.sampler.set_epoch(epoch)
        self.sampler.skip = start_batch * self.batch_size

    def state_dict(self) -> dict:
        """What a resume needs besides the position (epoch, batch): nothing, for this pipeline."""
        return {}

    def __len__(self) -> int:
        """Batches in a whole epoch, whatever set_epoch's start_batch."""
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        for views, skipped in self.loader:
            note_skipped(self.skipped_files, skipped)
            yield [v.to(self.device, non_blocking=True) for v in views]


def note_skipped(seen: set[str], files) -> None:
    for f in files:
        if f not in seen:
            seen.add(f)
            warnings.warn(f"skipping corrupt or unreadable image {f!r} (pass strict=True to stop instead)",
                          RuntimeWarning, stacklevel=3)


def _check_length(per_rank: int, batch_size: int, n: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if per_rank < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {per_rank} images each of the {world_size} "
                         f"rank(s) gets from {n} images: no full batch per epoch; lower the batch size")
