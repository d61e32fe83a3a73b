"""WebDataset shards (dataloading/shards.py): what is written, read back by offset, resumed, and read by DALI."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest
from fastdino.dataloading import build_source
from fastdino.dataloading import shards as shards_mod
from fastdino.dataloading.shards import ShardReader, read_index, write_shards

from tests._data_helpers import image_folder, seco_tree, truncate, write_image

MIB = 1 << 20


def _noisy_folder(root, n_per_class=5, side=300):
    """PNGs of noise (~270 KB each: they do not compress), so a few fill a 1 MiB shard."""
    for c in ("a", "b"):
        for i in range(n_per_class):
            write_image(root / c / f"{i}.png", (side, side), seed=hash((c, i)) % 1000)
    return root


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_image_folder_round_trip_keeps_bytes_labels_and_order(tmp_path):
    src = build_source(_noisy_folder(tmp_path / "data"))
    result = write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False)
    index = result.index
    assert index["complete"] and index["samples"] == len(src.paths) == 10
    assert len(index["shards"]) >= 3  # size-targeted: ~270 KB samples, 1 MiB shards
    assert all(s["bytes"] <= MIB for s in index["shards"])
    assert index["classes"] == ["a", "b"] and index["layout"] == "images"
    reader = ShardReader(tmp_path / "out")
    for i, path in enumerate(src.paths):
        sample = reader[i]
        assert sample["png"] == open(path, "rb").read()  # encoded bytes kept as they are
        assert int(sample["cls"]) == src.labels[i]
        assert json.loads(sample["json"])["path"] == f"{'ab'[src.labels[i]]}/{i % 5}.png"
    with pytest.raises(IndexError):
        reader[len(src.paths)]


def test_shards_are_plain_tars_grouped_by_key(tmp_path):
    src = build_source(image_folder(tmp_path / "data", n_per_class=3))
    write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False)
    index = read_index(tmp_path / "out")
    with tarfile.open(tmp_path / "out" / index["shards"][0]["file"]) as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.jpg", "000000000.json", "000000000.cls"]
    assert len(names) == 3 * len(src.paths)


def test_corrupt_input_is_skipped_and_listed(tmp_path):
    root = image_folder(tmp_path / "data", n_per_class=4)
    bad = truncate(root / "a" / "2.jpg", keep=0.3)
    src = build_source(root)
    index = write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False).index
    assert index["samples"] == len(src.paths) - 1
    assert [s["path"] for s in index["skipped"]] == [str(bad)]
    reader = ShardReader(tmp_path / "out")
    paths = [json.loads(reader[i]["json"])["path"] for i in range(len(reader))]
    assert "a/2.jpg" not in paths and len(paths) == 7


def test_interrupted_write_resumes_to_the_same_shards(tmp_path, monkeypatch):
    src = build_source(_noisy_folder(tmp_path / "data"))
    write_shards(src, tmp_path / "whole", shard_bytes=MIB, progress=False)
    closed = {"n": 0}
    real_close = shards_mod._close_shard

    def close_then_die(out, shard):
        if closed["n"] == 2:
            raise KeyboardInterrupt  # killed while the third shard is being finished
        closed["n"] += 1
        return real_close(out, shard)

    monkeypatch.setattr(shards_mod, "_close_shard", close_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_shards(src, tmp_path / "cut", shard_bytes=MIB, progress=False)
    partial = read_index(tmp_path / "cut", allow_incomplete=True)
    assert not partial["complete"] and len(partial["shards"]) == 2
    with pytest.raises(ValueError, match="not finished"):
        ShardReader(tmp_path / "cut")
    monkeypatch.setattr(shards_mod, "_close_shard", real_close)
    result = write_shards(src, tmp_path / "cut", shard_bytes=MIB, progress=False)
    whole = read_index(tmp_path / "whole")
    assert result.written == len(whole["shards"]) - 2  # only the missing shards were written
    assert [s["samples"] for s in result.index["shards"]] == [s["samples"] for s in whole["shards"]]
    for s in whole["shards"]:
        assert _digest(tmp_path / "cut" / s["file"]) == _digest(tmp_path / "whole" / s["file"])
        assert (tmp_path / "cut" / s["index"]).read_text() == (tmp_path / "whole" / s["index"]).read_text()
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def test_finished_shards_are_not_rewritten_and_other_inputs_are_refused(tmp_path):
    root = image_folder(tmp_path / "data", n_per_class=2)
    src = build_source(root)
    write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False)
    assert write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False).written == 0
    write_image(root / "a" / "new.jpg", seed=9)  # the data changed: its fingerprint with it
    with pytest.raises(ValueError, match="other inputs .*--overwrite"):
        write_shards(build_source(root), tmp_path / "out", shard_bytes=MIB, progress=False)
    again = write_shards(build_source(root), tmp_path / "out", shard_bytes=MIB, progress=False, overwrite=True)
    assert again.index["samples"] == 5


def test_output_with_other_files_is_refused(tmp_path):
    src = build_source(image_folder(tmp_path / "data", n_per_class=1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_shards(src, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="below 1 MiB"):
        write_shards(src, tmp_path / "o2", shard_bytes=1000, progress=False)


def test_seco_location_travels_with_all_its_acquisitions(tmp_path):
    root = seco_tree(tmp_path / "seco", n_locations=3, n_acq=3, preview=True, bands=False)
    src = build_source(root, layout="seco")
    write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False)
    reader = ShardReader(tmp_path / "out")
    assert len(reader) == 3 and read_index(tmp_path / "out")["layout"] == "seco"
    for i, loc in enumerate(src.locations):
        sample = reader[i]
        meta = json.loads(sample["json"])
        assert meta["location"] == loc.name and meta["acquisitions"] == [a.name for a in loc.acquisitions]
        for j, acq in enumerate(loc.acquisitions):
            assert sample[f"a{j}.tif"] == open(acq.preview, "rb").read()


def test_seco_band_files_keep_their_bytes(tmp_path):
    root = seco_tree(tmp_path / "seco", n_locations=2, n_acq=2, bands=True)
    src = build_source(root, layout="seco")
    index = write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False).index
    assert index["band_files"] == ["B2", "B3", "B4", "B8"]
    sample = ShardReader(tmp_path / "out")[1]
    acq = src.locations[1].acquisitions[0]
    for band, path in acq.bands.items():
        assert sample[f"a0.{band}.tif"] == open(path, "rb").read()


def test_uint16_multiband_files_keep_their_bytes(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "ms" / "c").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "ms" / "c" / f"{i}.tif", rng.integers(0, 65535, (20, 24, 13), dtype=np.uint16),
                         photometric="minisblack", planarconfig="separate")
    src = build_source(tmp_path / "ms")
    write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False)
    reader = ShardReader(tmp_path / "out")
    for i, path in enumerate(src.paths):
        assert reader[i]["tif"] == open(path, "rb").read()


def test_non_finite_pixels_are_skipped_and_listed(tmp_path):
    root = tmp_path / "arrays"
    root.mkdir()
    np.save(root / "good.npy", np.ones((8, 8, 4), np.float32))
    bad = np.ones((8, 8, 4), np.float32)
    bad[2, 3, 1] = np.nan
    np.save(root / "bad.npy", bad)
    index = write_shards(build_source(root), tmp_path / "out", shard_bytes=MIB, progress=False).index
    assert index["samples"] == 1 and index["skipped"][0]["path"].endswith("bad.npy")
    assert "non-finite" in index["skipped"][0]["error"]


def test_dali_webdataset_reader_reads_the_shards_with_their_index(tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    src = build_source(_noisy_folder(tmp_path / "data", n_per_class=3))
    index = write_shards(src, tmp_path / "out", shard_bytes=MIB, progress=False).index
    out = tmp_path / "out"

    @pipeline_def(batch_size=len(src.paths), num_threads=1, device_id=None)
    def pipe():
        images, labels = fn.readers.webdataset(paths=[str(out / s["file"]) for s in index["shards"]],
                                               index_paths=[str(out / s["index"]) for s in index["shards"]],
                                               ext=["png", "cls"], missing_component_behavior="error")
        return images, labels

    p = pipe()
    p.build()
    images, labels = p.run()
    got = sorted(bytes(np.asarray(images[k])) for k in range(len(src.paths)))
    assert got == sorted(open(path, "rb").read() for path in src.paths)
    assert sorted(int(bytes(np.asarray(labels[k]))) for k in range(len(src.paths))) == sorted(src.labels)
    del dali


def test_prepare_command_writes_shards_and_says_what_it_did(tmp_path, capsys):
    from fastdino.cli import main

    root = image_folder(tmp_path / "data", n_per_class=3)
    truncate(root / "b" / "1.jpg", keep=0.3)
    out = tmp_path / "shards"
    assert main(["prepare", "--format", "shards", "--data", str(root), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "5 samples in 1 shards" in printed.out and "skipped 1 unreadable" in printed.err
    assert len(ShardReader(out)) == 5
    assert (out / "shard-000000.idx").read_text().startswith("v1.2 5\n")


@pytest.mark.parametrize("size", ["12XB", "-3MB", "big"])
def test_prepare_refuses_a_bad_shard_size(tmp_path, capsys, size):
    from fastdino.cli import main

    root = image_folder(tmp_path / "data", n_per_class=1)
    assert main(["prepare", "--format", "shards", "--data", str(root), "--output", str(tmp_path / "o"),
                 f"--shard-size={size}"]) == 2
    assert "--shard-size" in capsys.readouterr().err


def test_parse_size():
    from fastdino.cli.prepare import parse_size

    assert parse_size("512MB") == 512 * 10**6 and parse_size("1GiB") == 2**30 and parse_size("2048") == 2048
