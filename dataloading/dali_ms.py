"""The DALI pipeline's feeder for multispectral images: arrays and each view's drawn parameters.

DALI has no decoder for 13-band TIFFs, so the files are read here, in Python, by the same `BandReader` the torch
pipeline uses (.npy: one read; `fastdino prepare` turns GeoTIFFs and band trees into .npy). With each image the
feeder sends what every view drew, from the torch pipeline's own generator (`np.random.default_rng([seed, epoch,
index])`, the same calls in the same order): the crop window, the flip, the colour map (`ms_augment.colour_affine`,
split into a per-band gain and offset and a 3 x 3 block on B4, B3, B2) and the blur sigma. DALI does the pixel
work (resize, colour, blur, flip, normalise: dali_ms_graph.py). So both pipelines draw the same views from the
same seed, and a resume inside an epoch needs nothing but the position: the draws are a function of (seed, epoch,
index), not of DALI's generators.

Reading and drawing cost the host ~5 ms per 12-band image (bench/test_host_cost.py), one core's worth at 200 img/s:
with `workers` > 0 the samples are made in that many DataLoader worker processes (each runs this feeder's own
`_sample`, so the batches are bitwise those of `workers=0`), and the feeder hands DALI what they made, in order.
A corrupt file a worker finds is sent back with the sample and counted here, as without workers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .band_files import rgb_indices
from .dali_feed import Feeder
from .dali_layout import has_colour, param_layout
from .ms_augment import colour_blocks
from .sources import SeCoLocation
from .torch_pipeline import _name, draw_dates, sample_view_params

_DALI_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)  # what DALI's resize reads; others become float32


class MSFeeder(Feeder):
    """For DALI iteration j: the images (one slot, or `n_dates` for DINO-TP) and every view's parameters."""

    files_per_image = 1

    def __init__(self, items, sampler, batch_size, spec, temporal, seed, strict, reader, workers: int = 0):
        super().__init__(items, sampler, batch_size, spec.n_dates, 1, temporal, seed, strict)
        if workers < 0:
            raise ValueError(f"feed workers={workers} must be >= 0 (0: the samples are made in DALI's callback)")
        self.workers = workers
        self._batches = None  # workers > 0: the DataLoader iterator over the rest of the epoch
        self._next_batch = -1  # the batch it yields next
        self.spec, self.reader = spec, reader
        self.groups = spec.views()
        self.n_slots = spec.n_dates if temporal else 1
        rgb = rgb_indices(tuple(spec.bands))
        self.rgb = sorted(rgb) if rgb is not None else None  # the order of dali_ms_graph's 3 x 3 block
        self.mean, self.std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
        self.layout = param_layout(len(spec.bands))
        self.n_params = max(at.stop for at in self.layout.values())

    def plan(self, epoch: int, start: int = 0) -> None:
        super().plan(epoch, start)
        self._batches, self._next_batch = None, -1

    def __call__(self, info):
        if not self.workers:
            return super().__call__(info)
        b = self.start + info.iteration
        if b >= self.n_batches:
            raise StopIteration
        if self._batches is None or self._next_batch != b:  # the first batch, or a pipeline rebuilt at batch b
            self._batches = iter(self._loader(b))
        samples = next(self._batches)
        self._next_batch = b + 1
        for _, found in samples:
            self.bad.update(found)
        return tuple([t.numpy() for t in col] for col in zip(*(outputs for outputs, _ in samples), strict=True))

    def _loader(self, first_batch: int) -> DataLoader:
        """Worker processes making batches first_batch, first_batch + 1, ... of the planned epoch, in order."""
        keys = [(self.epoch, i) for i in self.order[first_batch * self.batch_size:self.n_batches * self.batch_size]]
        return DataLoader(_WorkerSamples(self), batch_size=self.batch_size, sampler=keys, num_workers=self.workers,
                          collate_fn=list, prefetch_factor=2)

    def _sample(self, index: int):
        """As MultiViewDataset.__getitem__: an unreadable item is replaced by the next one, with that one's draws."""
        for k in range(len(self.items)):
            i = (index + k) % len(self.items)
            item = self.items[i]
            if _name(item) in self.bad:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, i])
            try:
                slots, per_view = self._load(item, rng)
            except Exception as e:
                if self.strict:
                    raise RuntimeError(f"cannot read image {_name(item)!r}: {e}") from e
                self.bad.add(_name(item))
                continue
            params = np.zeros((len(self.groups), self.n_params), dtype=np.float32)
            for v, (group, img) in enumerate(zip(self.groups, per_view, strict=True)):
                self._view(group, img, rng, params[v])
            outputs = [_dali_array(a) for a in slots] + [params]
            return outputs, item
        raise RuntimeError(f"every image of the dataset failed to load; first ones: {sorted(self.bad)[:5]}")

    def _load(self, item, rng):
        """(images of the slots, the image of each view); temporal: n_dates draws of readable acquisitions."""
        if not isinstance(item, SeCoLocation):
            image = self.reader(item)
            return [image], [image] * len(self.groups)
        images = {}
        for a in item.acquisitions:
            try:
                images[a.name] = self.reader(a)
            except Exception as e:
                if self.strict:
                    raise RuntimeError(f"cannot read image {_name(a)!r}: {e}") from e
                self.bad.add(_name(a))
        names = [a.name for a in item.acquisitions if a.name in images]
        if not names:
            raise OSError(f"no readable acquisition in location {item.name!r}")
        slots = [images[names[j]] for j in draw_dates(len(names), self.spec.n_dates, rng)]
        return slots, [slots[g.date] for g in self.groups]

    def _view(self, group, img: np.ndarray, rng, row: np.ndarray) -> None:
        """Draw one view's parameters (the torch pipeline's calls, in its order) into its row (param_layout)."""
        height, width = img.shape[:2]
        p = sample_view_params(group, width, height, rng)
        top, left, h, w = p.crop
        if group.colour_before_crop and p.flip:  # the reference flips the whole image, then crops
            left = width - left - w
        at = self.layout
        row[at["roi"]] = (top, left, top + h, left + w)
        row[at["sigma"]] = p.blur_sigma or 0.0
        row[at["blur"]] = p.blur_sigma is not None
        row[at["mirror"]] = p.flip
        row[at["vflip"]], row[at["transpose"]] = p.vflip, p.transpose
        if has_colour(group):
            # Every band's gain g and offset o fold into the normalisation: (g x + o - m) / s = (x - (m - o) / g) /
            # (s / g); B4, B3, B2 have g = 1, o = 0 there and their 3 x 3 block runs before it.
            gain, offset, block, block_t = colour_blocks(group, p, self.spec.bands, self.spec.mean, self.rgb)
            gain = np.maximum(gain, 1e-6)  # a brightness or contrast factor of exactly 0 (strength 1) stays finite
            row[at["mean"]], row[at["std"]] = (self.mean - offset) / gain, self.std / gain
            row[at["block"]], row[at["block_t"]] = block.reshape(-1), block_t

    def find_culprits(self, first_batch: int) -> list[str]:
        return []  # files are read here, in Python: a DALI failure is not a file's fault


class _WorkerSamples(Dataset):
    """MSFeeder._sample in a DataLoader worker: (the sample's outputs, the items found corrupt on the way)."""

    def __init__(self, feeder: MSFeeder):
        self.feeder = feeder

    def __len__(self) -> int:
        return len(self.feeder.items)

    def __getitem__(self, key):
        epoch, index = key
        feeder = self.feeder
        feeder.epoch = epoch  # the draws are a function of (seed, epoch, index), as in the feeder itself
        known = set(feeder.bad)
        outputs, _ = feeder._sample(index)
        # as torch tensors: the DataLoader hands those over in shared memory instead of pickling the pixels
        return [torch.from_numpy(a) for a in outputs], sorted(feeder.bad - known)


def _dali_array(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a if a.dtype in _DALI_DTYPES else a.astype(np.float32))
