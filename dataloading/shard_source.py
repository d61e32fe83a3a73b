"""A folder of WebDataset shards (shards.py) as a training source, with the meaning of every data option kept.

`build_source` returns a ShardSource for a folder that holds shards.json. What a sample is, is decided here from
the shards' tables (no tar is opened):
- an image folder / list: each sample is an image; `data.subset` keeps a seeded fraction of them, exactly as for
  the file tree (the same indices: sources.subset_indices over the same sorted order);
- a SeCo tree: each sample is a location with its acquisitions; `data.subset` keeps locations by the same seeded
  hash of their names as the file tree, `data.acquisitions` "one" draws the same acquisition per location
  (sources.one_acquisition_per_location's hash), "all" makes each acquisition an image, and DINO-TP
  (temporal) gets the location with all of them.

Items are made when a pipeline asks for them (`items[i]`): a corpus of millions of images costs a few integer
arrays on the host, not millions of Python objects. An item is what the file tree's item is (an image, an
Acquisition, a SeCoLocation) with ShardMembers, references to one member of one sample, where the file tree has
paths; the readers open a member's bytes (`open_member`) where they would open a path, one pread each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .members import ShardMember
from .shards import SHARD_INDEX, ShardReader
from .sources import Acquisition, SeCoLocation, _unit_hash, location_in_subset, subset_indices

ACQUISITIONS = ("all", "one")


class _LazyItems(Sequence):
    """items[k] made on demand from integer arrays (see the module docstring)."""

    def __init__(self, n: int, make):
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._make(i) for i in range(*k.indices(self._n))]
        if not -self._n <= k < self._n:
            raise IndexError(k)
        return self._make(k % self._n)


@dataclass
class ShardSource:
    """Samples of a shard folder, after data.subset and data.acquisitions (see the module docstring)."""

    root: str
    reader: ShardReader
    samples: np.ndarray  # kept sample numbers, ascending (so each shard's samples are contiguous)
    names: list[str]
    acq_counts: np.ndarray  # acquisitions of each kept sample (SeCo); 0 for images
    chosen_acq: np.ndarray | None  # acquisitions="one": the one drawn per kept location
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    layout: str = "shards"

    @property
    def index(self) -> dict:
        return self.reader.index

    @property
    def is_seco(self) -> bool:
        return self.index["layout"] == "seco"

    @property
    def band_counts(self) -> dict[str, int]:
        """Products holding each band file (a SeCo tree of band files), counted when the shards were written."""
        return dict(self.index.get("band_counts") or {})

    @property
    def num_locations(self) -> int:
        return len(self.samples) if self.is_seco else 0

    def _shard_of_kept(self) -> np.ndarray:
        starts = np.array([s["first_sample"] for s in self.reader.shards])
        return np.searchsorted(starts, self.samples, side="right") - 1

    def _image(self, k: int) -> ShardMember:
        return ShardMember(self.reader, int(self.samples[k]), None, self.names[k])

    def _acquisition(self, k: int, j: int) -> Acquisition:
        """Acquisition j of kept location k, its files as members: the readers of the file tree read it."""
        s = int(self.samples[k])
        prefix = f"a{j}."
        preview, bands = None, {}
        for ext in self.reader.extensions(s):
            if not ext.startswith(prefix):
                continue
            parts = ext.split(".")  # a0.tif (preview) or a0.B4.tif (band file)
            if len(parts) == 2:
                preview = ShardMember(self.reader, s, ext, f"{self.names[k]}/{ext}")
            else:
                bands[parts[1]] = ShardMember(self.reader, s, ext, f"{self.names[k]}/a{j}/{parts[1]}.{parts[2]}")
        return Acquisition(f"{self.names[k]}/a{j}", preview, bands)

    def items(self, temporal: bool) -> Sequence:
        """What the pipelines iterate: images (ShardMember), SeCo acquisitions (Acquisition of members), or
        (temporal, DINO-TP) SeCo locations."""
        if temporal:
            if not self.is_seco:
                raise ValueError(f"data.temporal=true (DINO-TP) needs shards of a SeCo tree (locations with dated "
                                 f"acquisitions); {self.root} holds shards of {self.index['layout']}")
            return _LazyItems(len(self.samples), lambda k: SeCoLocation(
                self.names[k], [self._acquisition(k, j) for j in range(int(self.acq_counts[k]))]))
        if not self.is_seco:
            return _LazyItems(len(self.samples), self._image)
        if self.chosen_acq is not None:
            return _LazyItems(len(self.samples), lambda k: self._acquisition(k, int(self.chosen_acq[k])))
        owner = np.repeat(np.arange(len(self.samples)), self.acq_counts)
        first = np.concatenate([[0], np.cumsum(self.acq_counts)[:-1]]).astype(np.int64)
        return _LazyItems(len(owner), lambda i: self._acquisition(int(owner[i]), int(i - first[owner[i]])))

    def rgb_files_per_image(self) -> set[int]:
        """How many files make an RGB image: {1} (images, previews), {3} (B4, B3, B2 of band products) or both;
        from the shards' indexes, without reading a member (the DALI graph is built for one of the two)."""
        if not self.is_seco:
            return {1}
        counts = set()
        for s in self.samples.tolist():
            exts = self.reader.extensions(s)
            with_preview = {e.split(".")[0] for e in exts if e.count(".") == 1 and e.startswith("a")}
            acqs = {e.split(".")[0] for e in exts if e.startswith("a") and e[1:2].isdigit()}
            counts |= {1} if with_preview else set()
            counts |= {3} if acqs - with_preview else set()
            if len(counts) == 2:
                break
        return counts

    def items_per_shard(self, temporal: bool) -> list[int]:
        """How many of `items(temporal)` fall in each shard (they are contiguous, shard by shard)."""
        shard = self._shard_of_kept()
        per_sample = self.acq_counts if (self.is_seco and not temporal and self.chosen_acq is None) else \
            np.ones(len(self.samples), dtype=np.int64)
        return np.bincount(shard, weights=per_sample, minlength=len(self.reader.shards)).astype(int).tolist()

    def __len__(self) -> int:
        return int(self.acq_counts.sum()) if self.is_seco and self.chosen_acq is None else len(self.samples)


def is_shard_folder(path) -> bool:
    return (Path(path) / SHARD_INDEX).is_file()


def build_shard_source(path, *, subset: float = 1.0, seed: int = 0, acquisitions: str = "all") -> ShardSource:
    """A ShardSource of the shard folder `path`, with the subset and acquisitions of sources.build_source."""
    if acquisitions not in ACQUISITIONS:
        raise ValueError(f"acquisitions={acquisitions!r} is not supported; use one of {ACQUISITIONS}")
    reader = ShardReader(path)
    rows = [row for shard in range(len(reader.shards)) for row in reader.table(shard)]
    names = [r[1] for r in rows]
    seco = reader.index["layout"] == "seco"
    if seco:
        keep = [i for i, name in enumerate(names) if location_in_subset(name, subset, seed)]
        if not keep:
            raise ValueError(f"subset={subset} with seed={seed} keeps none of the {len(names)} SeCo locations of "
                             f"the shards in {path}; use a larger subset")
    else:
        keep = subset_indices(len(names), subset, seed)
    samples = np.asarray(keep, dtype=np.int64)
    acq = np.asarray([rows[i][2] for i in keep], dtype=np.int64)
    chosen = None
    if seco and acquisitions == "one":  # the same draw as sources.one_acquisition_per_location
        chosen = np.asarray([int(_unit_hash(seed, "acquisition/" + names[i]) * rows[i][2]) for i in keep])
    labels = [rows[i][3] for i in keep]
    return ShardSource(str(path), reader, samples, [names[i] for i in keep], acq, chosen,
                       labels=labels if labels and all(v is not None for v in labels) else None,
                       classes=list(reader.index.get("classes") or []))
