"""The multispectral DALI feeder in worker processes (data.feed_workers): the same batches as without workers,
corrupt files still counted, and the exact mid-epoch resume kept."""

from __future__ import annotations

import pytest
import torch
from fastdino.dataloading import build_pipeline, dali_available
from fastdino.dataloading.band_files import ESA_ORDER
from fastdino.dataloading.synthetic_ms import make_synthetic_ms_dataset

from fastdino.config import ConfigError
from fastdino.run_config import load_config
from tests._data_helpers import truncate
from tests.test_multispectral import _euro_source, _spec

pytestmark = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")


@pytest.fixture
def euro(tmp_path):
    return make_synthetic_ms_dataset(tmp_path / "euro", n_images=18, size=32)


def _pipe(root, workers: int):
    return build_pipeline(_euro_source(root), _spec(ESA_ORDER, 1500.0, 700.0), batch_size=4, backend="dali-cpu",
                          num_threads=1, seed=2, feed_workers=workers)


def _epoch(pipe, epoch=1, start=0, state=None):
    pipe.set_epoch(epoch, start, state)
    return [[v.clone() for v in views] for views in pipe]


def _assert_same(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert torch.equal(u, v)


def test_workers_make_the_batches_the_feeder_makes_alone(euro):
    alone, with_workers = _pipe(euro, 0), _pipe(euro, 2)
    assert with_workers.feeder.workers == 2
    _assert_same(_epoch(with_workers), _epoch(alone))
    _assert_same(_epoch(with_workers, epoch=2), _epoch(alone, epoch=2))  # a second epoch: new workers, same draws


def test_a_corrupt_file_found_by_a_worker_is_counted(euro):
    bad = sorted(euro.rglob("*.tif"))[5]
    truncate(bad, keep=0.2)
    alone, with_workers = _pipe(euro, 0), _pipe(euro, 2)
    with pytest.warns(RuntimeWarning, match="skipping corrupt"):
        got = _epoch(with_workers)
    with pytest.warns(RuntimeWarning, match="skipping corrupt"):
        _assert_same(got, _epoch(alone))
    assert with_workers.num_skipped == alone.num_skipped == 1
    assert str(bad) in with_workers.skipped_files


def test_workers_keep_the_exact_mid_epoch_resume(euro):
    whole = _epoch(_pipe(euro, 2))
    first = _pipe(euro, 2)
    first.set_epoch(1)
    it = iter(first)
    head = [[v.clone() for v in next(it)]]
    state = first.state_dict()
    rest = _epoch(_pipe(euro, 2), epoch=1, start=1, state=state)
    _assert_same(head + rest, whole)


def test_negative_feed_workers_is_refused():
    with pytest.raises(ConfigError, match="data.feed_workers=-1"):
        load_config("tiny", overrides=["data.feed_workers=-1"])
