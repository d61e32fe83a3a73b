"""The DALI pipeline's feeder for RGB images: the encoded files of each sample, in the epoch's order.

DALI's external_source calls `Feeder` once per batch (dali_pipeline.py builds the graph around it). Corrupt files
are kept from the decoder here: every file gets a cheap structural check (`looks_complete`: JPEG/PNG/TIFF signature,
JPEG end-of-image marker, PNG IEND chunk) the first time it is read, and a file that fails is replaced by the next
item; when the decoder fails anyway, `Feeder.find_culprits` decodes the batches in flight with PIL. Planar TIFFs,
which DALI's TIFF decoder refuses, are re-laid out pixel-interleaved in Python (`interleaved_tiff`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .decode import load_rgb
from .members import open_member, read_member
from .shard_source import ShardSource
from .sources import Acquisition, SeCoLocation
from .torch_pipeline import RankSampler, _name, draw_dates

_JPEG, _PNG = b"\xff\xd8", b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def looks_complete(data: np.ndarray) -> bool:
    """Cheap check that an encoded image is not truncated or foreign; no decoding."""
    b = data.tobytes()
    if b.startswith(_JPEG):
        return b"\xff\xd9" in b[-64:]  # end-of-image marker; encoders may pad a few bytes after it
    if b.startswith(_PNG):
        return b"IEND" in b[-16:]
    return b.startswith(_TIFF) and len(b) > 8


class Feeder:
    """The external_source callback: for DALI iteration j of an epoch, the encoded files of batch start + j (the base
    of dali_ms.MSFeeder, which sends arrays and drawn parameters instead)."""

    def __init__(self, items: list, sampler: RankSampler, batch_size: int, n_dates: int, files_per_image: int,
                 temporal: bool, seed: int, strict: bool):
        self.items, self.sampler, self.batch_size = items, sampler, batch_size
        self.n_dates, self.files_per_image, self.temporal = n_dates, files_per_image, temporal
        self.seed, self.strict = seed, strict
        self.ok: dict[str, bool] = {}
        self.planar: dict[str, bool] = {}  # file -> whether it is a planar TIFF (checked once)
        self.bad: set[str] = set()
        self.in_flight: dict[int, list] = {}  # batch number -> the items it holds (to find a culprit)
        self.order: list[int] = []
        self.n_batches = 0
        self.start = 0
        self.epoch = 0

    def plan(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)
        self.order = self.sampler.indices()
        self.n_batches = len(self.order) // self.batch_size
        self.in_flight.clear()

    def __call__(self, info):
        b = self.start + info.iteration
        if b >= self.n_batches:
            raise StopIteration
        samples, used = [], []
        for i in self.order[b * self.batch_size:(b + 1) * self.batch_size]:
            files, item = self._sample(i)
            samples.append(files)
            used.append(item)
        self.in_flight[b] = used
        return tuple(list(col) for col in zip(*samples, strict=True))

    # --- one sample: the encoded files of its image slots, replacing bad items by the next ones -----------
    def _sample(self, index: int):
        for k in range(len(self.items)):
            i = (index + k) % len(self.items)
            files = self._files(self.items[i], np.random.default_rng([self.seed, self.epoch, i]))
            encoded = self._encoded(files, self.items[i]) if files is not None else None
            if encoded is not None:
                return encoded, self.items[i]
        raise RuntimeError(f"every image of the dataset failed to load; first ones: {sorted(self.bad)[:5]}")

    def _encoded(self, files: list[str], item) -> list[np.ndarray] | None:
        """The bytes DALI decodes; a planar TIFF is re-laid out here (its decoder reads pixel-interleaved TIFFs
        only). None when that fails: the item is then a corrupt sample like any other."""
        out = []
        for f in files:
            if f not in self.planar:
                self.planar[f] = is_planar_tiff(f)
            try:
                out.append(interleaved_tiff(f) if self.planar[f] else _file_bytes(f))
            except Exception as e:
                if self.strict:
                    raise RuntimeError(f"cannot read image {f!r}: {e}") from e
                self.ok[f] = False
                self.bad.add(_name(item) if not isinstance(item, SeCoLocation) else f)
                return None
        return out

    def _files(self, item, rng) -> list[str] | None:
        if isinstance(item, SeCoLocation):
            good = [a for a in item.acquisitions if self._usable(a)]
            if not good:
                return None
            slots = [good[i] for i in draw_dates(len(good), self.n_dates, rng)]
            return [f for a in slots for f in _files_of(a)]
        return _files_of(item) if self._usable(item) else None

    def _usable(self, item) -> bool:
        try:
            files = _files_of(item)
        except ValueError as e:  # an incomplete SeCo product: a corrupt sample
            if self.strict:
                raise RuntimeError(f"cannot read image {_name(item)!r}: {e}") from e
            self.bad.add(_name(item))
            return False
        for f in files:
            if f not in self.ok:
                self.ok[f] = looks_complete(_file_bytes(f))
                if not self.ok[f] and self.strict:
                    raise RuntimeError(f"cannot read image {f!r}: truncated or not an image file")
            if not self.ok[f]:
                self.bad.add(_name(item))
                return False
        return True

    def find_culprits(self, first_batch: int) -> list[str]:
        """Decode the items of the batches in flight with PIL; mark the ones that fail."""
        found = []
        for b in sorted(self.in_flight):
            if b < first_batch:
                continue
            for item in self.in_flight[b]:
                for acq in item.acquisitions if isinstance(item, SeCoLocation) else [item]:
                    try:
                        load_rgb(acq)
                    except Exception:
                        for f in acq.rgb_files if isinstance(acq, Acquisition) and acq.has_rgb else [acq]:
                            self.ok[f] = False
                        found.append(_name(acq))
        self.bad.update(found)
        return found


def _file_bytes(f) -> np.ndarray:
    """A file's (or a shard member's) encoded bytes, for DALI's decoder."""
    return np.frombuffer(read_member(f), dtype=np.uint8)


def is_planar_tiff(path) -> bool:
    """Whether a file is a TIFF with planar samples (PlanarConfiguration 2: one plane per band, as GDAL writes
    band-interleaved GeoTIFFs). Reads the header only."""
    try:
        with Image.open(open_member(path)) as im:
            return im.format == "TIFF" and im.tag_v2.get(284) == 2
    except Exception:
        return False  # not an image PIL knows: the decoder's to judge


def interleaved_tiff(path) -> np.ndarray:
    """A planar TIFF as the bytes of an uncompressed pixel-interleaved TIFF of the same pixels. DALI's TIFF decoder
    (nvImageCodec's libtiff extension) refuses planar TIFFs; its fallback (OpenCV) decodes them but prints an
    error for every file ("Planar TIFFs are not supported") and a warning per unknown GeoTIFF tag."""
    with Image.open(open_member(path)) as im:
        im.load()
        buffer = io.BytesIO()
        im.save(buffer, format="TIFF")  # no compression, contiguous samples, no GeoTIFF tags
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def planar_note(items: list) -> str | None:
    """The once-per-run message when the dataset's TIFFs are planar (judged on the first readable image)."""
    for item in items[:16]:
        acq = item.acquisitions[0] if isinstance(item, SeCoLocation) else item
        try:
            path = _files_of(acq)[0]
        except ValueError:
            continue
        if not is_planar_tiff(path):
            return None
        return (f"{path} is a planar TIFF (one plane per band), which DALI's TIFF decoder does not read: fastdino "
                "re-lays such files out in Python before DALI decodes them (a decode per image; save the images "
                "pixel-interleaved, or use data.backend=torch, to avoid that cost)")
    return None


def _files_of(item) -> list[str]:
    return item.rgb_files if isinstance(item, Acquisition) else [item]


def typical_pixels(items: list) -> int:
    """Pixels of the first readable image (header only): remote-sensing tiles of one dataset share a size."""
    for item in items[:16]:
        acq = item.acquisitions[0] if isinstance(item, SeCoLocation) else item
        try:
            with Image.open(open_member(_files_of(acq)[0])) as im:
                return im.width * im.height
        except Exception:
            continue
    return 256 * 256


def rgb_files_per_image(source, items: list) -> int:
    """Encoded files per image: 1 (an RGB file or preview) or 3 (SeCo's B4, B3, B2 band files)."""
    if isinstance(source, ShardSource):
        counts = source.rgb_files_per_image()
    else:
        acqs = [a for it in items for a in (it.acquisitions if isinstance(it, SeCoLocation) else [it])]
        counts = {1 if not isinstance(a, Acquisition) or a.preview is not None else 3 for a in acqs}
    if len(counts) > 1:
        # One graph decodes either RGB files or three band files per image, not a mix of both.
        raise RuntimeError("DALI pipeline: some SeCo acquisitions have an RGB preview and others only bands; "
                           "use backend='torch' for such a tree")
    return counts.pop()
