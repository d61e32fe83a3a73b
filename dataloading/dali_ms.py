"""The DALI pipeline's feeder for multispectral images: arrays and each view's drawn parameters.

DALI has no decoder for 13-band TIFFs, so the files are read here, in Python, by the same `BandReader` the torch
pipeline uses (.npy: one read; `fastdino prepare` turns GeoTIFFs and band trees into .npy). With each image the
feeder sends what every view drew, from the torch pipeline's own generator (`np.random.default_rng([seed, epoch,
index])`, the same calls in the same order): the crop window, the flip, the colour map (`ms_augment.colour_affine`,
split into a per-band gain and offset and a 3 x 3 block on B4, B3, B2) and the blur sigma. DALI does the pixel
work (resize, colour, blur, flip, normalise: dali_ms_graph.py). So both pipelines draw the same views from the
same seed, and a resume inside an epoch needs nothing but the position: the draws are a function of (seed, epoch,
index), not of DALI's generators.
"""

from __future__ import annotations

import numpy as np

from .dali_pipeline import _Feeder
from .ms_augment import colour_affine
from .multispectral import rgb_indices
from .sources import SeCoLocation
from .torch_pipeline import _name, draw_dates, sample_view_params

_DALI_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)  # what DALI's resize reads; others become float32


def view_outputs(has_rgb: bool) -> int:
    """External-source outputs per view: roi, gain, offset, [rgb matrix, rgb offset,] blur flag, sigma, mirror."""
    return 8 if has_rgb else 6


class MSFeeder(_Feeder):
    """For DALI iteration j: the images (one slot, or `n_dates` for DINO-TP) and every view's parameters."""

    files_per_image = 1

    def __init__(self, items, sampler, batch_size, spec, temporal, seed, strict, reader):
        super().__init__(items, sampler, batch_size, spec.n_dates, 1, temporal, seed, strict)
        self.spec, self.reader = spec, reader
        self.groups = spec.views()
        self.n_slots = spec.n_dates if temporal else 1
        self.rgb = rgb_indices(tuple(spec.bands))

    def __call__(self, info):
        b = self.start + info.iteration
        if b >= self.n_batches:
            raise StopIteration
        samples, used = [], []
        for i in self.order[b * self.batch_size:(b + 1) * self.batch_size]:
            outputs, item = self._ms_sample(i)
            samples.append(outputs)
            used.append(item)
        self.in_flight[b] = used
        return tuple(list(col) for col in zip(*samples, strict=True))

    def _ms_sample(self, index: int):
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
            outputs = [_dali_array(a) for a in slots]
            for group, img in zip(self.groups, per_view, strict=True):
                outputs += self._view(group, img, rng)
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

    def _view(self, group, img: np.ndarray, rng) -> list[np.ndarray]:
        height, width = img.shape[:2]
        p = sample_view_params(group, width, height, rng)
        top, left, h, w = p.crop
        if group.colour_before_crop and p.flip:  # the reference flips the whole image, then crops
            left = width - left - w
        a, t = colour_affine(group, p, self.spec.bands, self.spec.mean)
        gain, offset = np.diag(a).copy(), t.copy()
        out = [np.array([top, left, top + h, left + w], dtype=np.float32)]
        if self.rgb is not None:  # B4, B3, B2: identity in the per-band step, the 3 x 3 block after it
            block, block_t = a[np.ix_(self.rgb, self.rgb)], t[self.rgb]
            gain[self.rgb], offset[self.rgb] = 1.0, 0.0
            out += [_f32(gain)[None, None], _f32(offset)[None, None], _f32(block), _f32(block_t)]
        else:
            out += [_f32(gain)[None, None], _f32(offset)[None, None]]
        sigma = p.blur_sigma or 0.0
        out += [np.array(p.blur_sigma is not None), np.array(sigma, dtype=np.float32),
                np.array(int(p.flip), dtype=np.int32)]
        return out

    def find_culprits(self, first_batch: int) -> list[str]:
        return []  # files are read here, in Python: a DALI failure is not a file's fault


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _dali_array(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a if a.dtype in _DALI_DTYPES else a.astype(np.float32))
