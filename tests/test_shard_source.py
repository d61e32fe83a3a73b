"""A shard folder as a training source (dataloading/shard_source.py): the same images as the file tree it was
written from, under every data.subset / data.acquisitions / temporal choice."""

from __future__ import annotations

import numpy as np
import pytest
from fastdino.dataloading import build_source
from fastdino.dataloading.members import ShardMember, read_member
from fastdino.dataloading.shard_source import build_shard_source
from fastdino.dataloading.shards import write_shards
from fastdino.dataloading.sources import Acquisition, SeCoLocation

from tests._data_helpers import image_folder, seco_tree

MIB = 1 << 20


def _bytes_of(item) -> bytes:
    if isinstance(item, ShardMember):
        return item.read()
    if isinstance(item, Acquisition):
        files = [item.preview] + [item.bands[b] for b in sorted(item.bands)]
        return b"".join(_bytes_of(f) for f in files if f is not None)
    return open(item, "rb").read()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = image_folder(tmp_path_factory.mktemp("img") / "data", n_per_class=9, classes=("a", "b", "c"))
    out = root.parent / "shards"
    write_shards(build_source(root), out, shard_bytes=MIB, progress=False)
    return root, out


@pytest.fixture(scope="module")
def seco(tmp_path_factory):
    root = seco_tree(tmp_path_factory.mktemp("seco") / "data", n_locations=12, n_acq=4, preview=True, bands=True)
    out = root.parent / "shards"
    write_shards(build_source(root, layout="seco"), out, shard_bytes=MIB, progress=False)
    return root, out


@pytest.mark.parametrize("subset", [1.0, 0.4])
def test_images_match_the_file_tree(folder, subset):
    root, out = folder
    files = build_source(root, subset=subset, seed=3)
    shards = build_shard_source(out, subset=subset, seed=3)
    items = shards.items(temporal=False)
    assert len(items) == len(files.paths) == len(shards)
    assert [_bytes_of(i) for i in items] == [_bytes_of(p) for p in files.paths]
    assert shards.labels == files.labels and shards.classes == files.classes


@pytest.mark.parametrize("acquisitions", ["one", "all"])
@pytest.mark.parametrize("subset", [1.0, 0.5])
def test_seco_draws_match_the_file_tree(seco, acquisitions, subset):
    root, out = seco
    files = build_source(root, layout="seco", subset=subset, seed=1, acquisitions=acquisitions)
    shards = build_shard_source(out, subset=subset, seed=1, acquisitions=acquisitions)
    items = shards.items(temporal=False)
    assert len(items) == len(files.acquisitions) == len(shards)
    assert [_bytes_of(i) for i in items] == [_bytes_of(a) for a in files.acquisitions]
    assert sum(shards.items_per_shard(temporal=False)) == len(items)


def test_temporal_items_are_locations_with_every_acquisition(seco):
    root, out = seco
    files = build_source(root, layout="seco")
    items = build_shard_source(out).items(temporal=True)
    assert len(items) == len(files.locations)
    for got, want in zip(items, files.locations, strict=True):
        assert isinstance(got, SeCoLocation) and got.name == want.name
        assert [_bytes_of(a) for a in got.acquisitions] == [_bytes_of(a) for a in want.acquisitions]


def test_temporal_on_image_shards_is_refused(folder):
    with pytest.raises(ValueError, match="DINO-TP.*SeCo"):
        build_shard_source(folder[1]).items(temporal=True)


def test_items_per_shard_counts_contiguous_items(folder):
    src = build_shard_source(folder[1], subset=0.5, seed=0)
    counts = src.items_per_shard(temporal=False)
    items = src.items(temporal=False)
    shard_of = [src.reader.locate(m.sample)[0] for m in items]
    assert shard_of == sorted(shard_of)  # contiguous, shard by shard
    assert counts == np.bincount(shard_of, minlength=len(counts)).tolist()


def test_member_names_its_shard_and_image(folder):
    item = build_shard_source(folder[1]).items(temporal=False)[4]
    assert "shard-000000.tar" in str(item) and "a/4.jpg" in str(item)
    assert read_member(item) == item.read() == read_member(item.reader.folder.parent / "data" / "a" / "4.jpg")
    assert item.suffix == ".jpg" and hash(item) == hash(ShardMember(item.reader, item.sample))
