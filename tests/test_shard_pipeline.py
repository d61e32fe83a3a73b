"""Training from shards: the pipelines read a shard folder as they read the file tree it was written from, keep
their exact mid-epoch resume, and a whole run on shards is killed and resumed bitwise."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from fastdino.dataloading import AugmentationSpec, ShardSource, build_pipeline, build_source, dali_available
from fastdino.dataloading.shard_order import ShardEpochSampler
from fastdino.dataloading.shards import write_shards
from fastdino.dataloading.synthetic import make_synthetic_dataset
from fastdino.dataloading.torch_pipeline import RankSampler

from fastdino import checkpoint as ckpt_io
from fastdino.config import save_config
from fastdino.train import train
from tests._data_helpers import image_folder, seco_release_tree, seco_tree
from tests.test_data_seco import small
from tests.test_preemption import (
    _KILLED_AFTER_STEP_CHECKPOINT,
    QUIET,
    assert_same_training_state,
    one_thread,  # noqa: F401 (a fixture, used through pytestmark)
    records,
    run_script,
    small_config,
)

MIB = 1 << 20
pytestmark = pytest.mark.usefixtures("one_thread")  # as test_preemption's runs: the killed run's process has one
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
BACKENDS = ["torch", pytest.param("dali-cpu", marks=needs_dali)]


def _shards(root, out, layout="auto"):
    write_shards(build_source(root, layout=layout), out, shard_bytes=MIB, progress=False)
    return out


def _epoch(pipe, epoch=0, start=0, state=None):
    pipe.set_epoch(epoch, start, state)
    return [[v.clone() for v in views] for views in pipe]


def _same_order_as(pipe, n: int, seed: int):
    """Read the shards in the file tree's order, so that the two pipelines' batches can be compared bitwise."""
    tree_order = RankSampler(n, seed=seed)
    pipe.sampler = tree_order
    if hasattr(pipe, "feeder"):
        pipe.feeder.sampler = tree_order
    return pipe


def _assert_equal_epochs(a, b):
    assert len(a) == len(b) > 0
    for got, want in zip(a, b, strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)


CASES = {
    "images": (lambda root: image_folder(root, n_per_class=6, size=(40, 36)), "auto",
               dict(spec="tiny", temporal=False, acquisitions="all")),
    "seco-previews-one": (lambda root: seco_tree(root, n_locations=8, n_acq=3, preview=True, bands=False), "seco",
                          dict(spec="tiny", temporal=False, acquisitions="one")),
    "seco-bands-all": (lambda root: seco_release_tree(root, n_locations=3, n_acq=3, scale=6), "seco",
                       dict(spec="tiny", temporal=False, acquisitions="all")),
    "seco-temporal": (lambda root: seco_release_tree(root, n_locations=4, n_acq=3, preview=True, bands=False,
                                                     scale=6), "seco",
                      dict(spec="dino-tp", temporal=True, acquisitions="all")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_shards_give_the_file_trees_views(tmp_path, case, backend):
    make, layout, opts = CASES[case]
    root = make(tmp_path / "data")
    shard_dir = _shards(root, tmp_path / "shards", layout)
    spec = AugmentationSpec.preset(opts["spec"])
    if opts["spec"] == "dino-tp":
        spec = small(spec, 8)  # small views for small test images
    kw = dict(batch_size=4, backend=backend, num_threads=0 if backend == "torch" else 1, seed=5,
              temporal=opts["temporal"])
    tree = build_source(root, layout=layout, acquisitions=opts["acquisitions"], temporal=opts["temporal"])
    shards = build_source(shard_dir, acquisitions=opts["acquisitions"], temporal=opts["temporal"])
    assert isinstance(shards, ShardSource)
    from_tree = build_pipeline(tree, spec, **kw)
    from_shards = build_pipeline(shards, spec, **kw)
    assert from_shards.backend == from_tree.backend
    assert isinstance(from_shards.sampler, ShardEpochSampler)
    n = len(tree.locations) if opts["temporal"] else (len(tree.acquisitions) if hasattr(tree, "acquisitions")
                                                      else len(tree.paths))
    _assert_equal_epochs(_epoch(_same_order_as(from_shards, n, 5)), _epoch(from_tree))


@pytest.mark.parametrize("backend", BACKENDS)
def test_shard_pipeline_continues_an_epoch_exactly_from_its_state(tmp_path, backend):
    make_synthetic_dataset(tmp_path / "data", n_images=24, size=32)
    shard_dir = _shards(tmp_path / "data", tmp_path / "shards")
    spec = AugmentationSpec.preset("tiny")

    def pipe():
        return build_pipeline(build_source(shard_dir), spec, batch_size=4, backend=backend,
                              num_threads=0 if backend == "torch" else 1, seed=3)

    whole = _epoch(pipe(), epoch=1)
    assert len(whole) == 6
    first = pipe()
    first.set_epoch(1)
    head = []
    for views in first:
        head.append([v.clone() for v in views])
        if len(head) == 2:
            break
    rest = _epoch(pipe(), epoch=1, start=2, state=first.state_dict())
    _assert_equal_epochs(head + rest, whole)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_images_of_the_shards(tmp_path, world_size):
    make_synthetic_dataset(tmp_path / "data", n_images=30, size=32)
    shards = build_source(_shards(tmp_path / "data", tmp_path / "shards"))
    spec = AugmentationSpec.preset("tiny")
    seen = []
    for rank in range(world_size):
        pipe = build_pipeline(shards, spec, batch_size=2, backend="torch", num_threads=0, seed=1, rank=rank,
                              world_size=world_size)
        pipe.set_epoch(4)
        seen.append(pipe.sampler.indices())
        assert len(pipe) == len(shards) // world_size // 2
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)) == (len(shards) // world_size) * world_size


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_on_shards_killed_after_a_mid_epoch_checkpoint_resumes_bitwise(tmp_path, backend):
    make_synthetic_dataset(tmp_path / "data", n_images=12, size=32)
    shard_dir = _shards(tmp_path / "data", tmp_path / "shards")
    config = small_config(tmp_path, backend=backend, extra=["run.checkpoint_every_steps=2",
                                                            f"data.path={shard_dir}"])
    full, part = tmp_path / "full", tmp_path / "part"
    train(config, full, echo=QUIET)
    save_config(config, tmp_path / "config.yaml")
    proc = run_script(_KILLED_AFTER_STEP_CHECKPOINT, str(tmp_path / "config.yaml"), str(part))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (ckpt_io.load_checkpoint(part)["epoch"], ckpt_io.load_checkpoint(part)["batch"]) == (1, 1)
    train(config, part, resume=True, echo=QUIET)
    assert_same_training_state(full, part)
    assert [r["loss"] for r in records(part)] == [r["loss"] for r in records(full)]
    assert np.isfinite([r["loss"] for r in records(part)]).all()


def test_multispectral_run_on_shards_finds_its_bands_and_statistics(tmp_path):
    """EuroSAT-MS-shaped 13-band TIFFs -> `fastdino stats` -> shards (with --file-bands): `tiny-ms` trains on the
    shard folder alone, the band order from shards.json and the statistics copied beside the shards."""
    from fastdino.dataloading.synthetic_ms import make_synthetic_ms_dataset

    from fastdino.cli import main

    root = make_synthetic_ms_dataset(tmp_path / "ms", n_images=12, size=32)
    assert main(["stats", "--data", str(root), "--file-bands", "eurosat-ms"]) == 0
    out = tmp_path / "shards"
    assert main(["prepare", "--format", "shards", "--data", str(root), "--file-bands", "eurosat-ms", "--output",
                 str(out), "--no-progress"]) == 0
    assert (out / "band_stats.json").is_file()
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny-ms", "--data", str(out), "--output", str(run), "--max-steps", "2",
                 "--batch-size", "4", "--device", "cpu", "--set", "data.file_bands=null",
                 *[a for kv in SMALL_MS for a in ("--set", kv)]]) == 0
    config = (run / "config.yaml").read_text()
    assert "in_chans: 13" in config and "B8A" in config
    assert len(records(run)) == 2


SMALL_MS = ["model.img_size=32", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
            "augment.global_views=[{size: 32}, {size: 32}]", "augment.local_views=[{size: 16, count: 2}]",
            "run.log_every=1", "data.num_threads=0"]
