"""Reading a SeCo-shaped corpus: the file tree (reference) vs WebDataset shards (fastdino), cold and warm.

One round reads IMAGES images in the order a training epoch reads them (the file tree: the torch / DALI pipelines'
seeded permutation; shards: dataloading/shard_order.py), one thread, and reports img/s and host CPU ms per image:
- "bytes": the encoded files only (what the DALI feeder hands to a GPU decoder): 1 file per RGB image (the preview),
  12 per multispectral image (B1 ... B12);
- "decoded": the files decoded on the host as the CPU pipelines do (PIL for the preview; the 12 bands read and
  resampled to one grid by multispectral.BandReader).
Cold rounds empty the page cache before each round (root only: `sync; echo 3 > /proc/sys/vm/drop_caches`; the
rows say `cold=False` where that was refused). The corpus is generated once (bench/seco_corpus.py):
FASTDINO_BENCH_SECO_LOCATIONS locations x 5 acquisitions (default 40, for the smoke run; the RESULTS.md rows use
10000) under FASTDINO_BENCH_CORPUS (default: pytest's tmp folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastdino.dataloading import build_source
from fastdino.dataloading.members import read_member
from fastdino.dataloading.shard_order import ShardEpochSampler
from fastdino.dataloading.shard_source import build_shard_source
from fastdino.dataloading.shards import write_shards
from fastdino.dataloading.torch_pipeline import RankSampler

from bench.seco_corpus import BAND_SIZES, drop_page_cache, make_seco_corpus
from bench.utils import record

LOCATIONS = int(os.environ.get("FASTDINO_BENCH_SECO_LOCATIONS", "40"))
IMAGES = min(2000, LOCATIONS)  # one acquisition per location (DINO-MC), in epoch order
BANDS = tuple(BAND_SIZES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = Path(os.environ.get("FASTDINO_BENCH_CORPUS") or tmp_path_factory.mktemp("corpus"))
    root = make_seco_corpus(base / f"seco_{LOCATIONS}", LOCATIONS)
    shards = base / f"seco_{LOCATIONS}_shards"
    write_shards(build_source(root, layout="seco"), shards, progress=False)
    return root, shards


def _order(source, shards: bool) -> list:
    if shards:
        items = source.items(temporal=False)
        sampler = ShardEpochSampler(source.items_per_shard(temporal=False), seed=0)
    else:
        items = source.acquisitions
        sampler = RankSampler(len(items), seed=0)
    return [items[i] for i in sampler.indices()[:IMAGES]]


def _bytes_reader(kind: str):
    def read(acq) -> int:
        files = [acq.preview] if kind == "rgb" else [acq.bands[b] for b in BANDS]
        return sum(len(read_member(f)) for f in files)
    return read


def _decoded_reader(kind: str):
    from fastdino.dataloading.band_files import BandReader
    from fastdino.dataloading.decode import load_rgb

    if kind == "rgb":
        return lambda acq: load_rgb(acq).width
    bands = BandReader(BANDS, None)
    return lambda acq: bands(acq).shape[0]


# decoding is CPU work: measured warm only (a cold read adds what the "bytes" rows measure)
@pytest.mark.parametrize("what, cache", [("bytes", "cold"), ("bytes", "warm"), ("decoded", "warm")])
@pytest.mark.parametrize("kind", ["rgb", "12-band"])
@pytest.mark.parametrize("impl", ["reference", "fastdino"])
def test_read_seco_corpus(benchmark, corpus, impl, what, kind, cache):
    root, shard_dir = corpus
    shards = impl == "fastdino"
    source = build_shard_source(shard_dir, acquisitions="one") if shards else \
        build_source(root, layout="seco", acquisitions="one")
    items = _order(source, shards)
    read = (_bytes_reader if what == "bytes" else _decoded_reader)("rgb" if kind == "rgb" else "bands")
    dropped = [True]

    def setup():
        if cache == "cold":
            dropped[0] = drop_page_cache() and dropped[0]

    cpu = []

    def epoch():
        t0 = time.process_time()
        for acq in items:
            read(acq)
        cpu.append(time.process_time() - t0)

    epoch()  # warm: the files in the page cache; cold: the setup empties it again
    record(benchmark, group=f"read SeCo corpus ({LOCATIONS} locations x 5), {what}, {kind}, {cache}", impl=impl,
           images=len(items), device="cpu", threads=1, source="shards" if shards else "file tree",
           cold=cache == "cold" and dropped[0])
    benchmark.pedantic(epoch, setup=setup, rounds=3 if benchmark.enabled else 1, iterations=1)
    benchmark.extra_info["host_cpu_ms_per_image"] = 1e3 * float(np.median(cpu[1:] or cpu)) / len(items)


@pytest.mark.parametrize("impl", ["reference", "fastdino"])
def test_full_cpu_pipeline_dino_mc_views(benchmark, corpus, impl):
    """The whole CPU pipeline (DALI CPU: read, decode, all 8 DINO-MC views) on the corpus' RGB previews, from the
    file tree (reference) or the shards (fastdino), 2 threads, warm: on a CPU the pixel work, not the reading,
    sets the pace, so the two should tie."""
    from fastdino.dataloading import AugmentationSpec, build_pipeline, dali_available

    if not dali_available():
        pytest.skip("nvidia-dali is not installed (pip install 'fastdino[dali]')")
    root, shard_dir = corpus
    source = build_shard_source(shard_dir, acquisitions="one") if impl == "fastdino" else \
        build_source(root, layout="seco", acquisitions="one")
    batch = 16
    n_batches = 10 if benchmark.enabled else 2
    pipe = build_pipeline(source, AugmentationSpec.preset("dino-mc"), batch_size=batch, backend="dali-cpu",
                          num_threads=2)

    def epoch_part():
        pipe.set_epoch(0)
        for b, _ in enumerate(pipe):
            if b + 1 == n_batches:
                break

    epoch_part()
    record(benchmark, group=f"CPU pipeline, DINO-MC views, SeCo previews ({LOCATIONS} locations), DALI CPU 2 threads",
           impl=impl, images=n_batches * batch, device="cpu", source="shards" if impl == "fastdino" else "file tree")
    benchmark.pedantic(epoch_part, rounds=3 if benchmark.enabled else 1, iterations=1)
