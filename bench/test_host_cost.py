"""What the host spends per image to feed a GPU: the DALI feeders alone, the GPU's work (decoding, views) left out.

The DALI pipelines' Python side is a feeder (dataloading/dali_feed.py `Feeder`, dali_ms.py `MSFeeder`) that
DALI calls once per batch; on a GPU it is the host's whole per-image cost:
- RGB: the sample order, a structural check of each file (once), and its encoded bytes; DALI decodes on the GPU;
- 12-band (SeCo's B1 ... B12): the band files read and decoded on the host (DALI has no multi-band TIFF decoder),
  resampled to one grid, and every view's parameters drawn (crop, flip, colour, blur), at DINO-MC's 8 views.
One round feeds IMAGES images (bench/test_shard_read.py's corpus and order: one acquisition per location), one
thread, warm page cache; the rows give img/s and host CPU ms per image, for the file tree (reference) and shards
(fastdino). 1000 / ms is what one host core feeds; an H100 training dino-mc-vits8 needs ~400 img/s.
"""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastdino.dataloading import AugmentationSpec, build_source
from fastdino.dataloading.band_files import BandReader
from fastdino.dataloading.dali_feed import Feeder, rgb_files_per_image
from fastdino.dataloading.dali_ms import MSFeeder
from fastdino.dataloading.torch_pipeline import epoch_sampler, pipeline_items

from bench.seco_corpus import BAND_SIZES
from bench.test_shard_read import IMAGES, LOCATIONS, corpus  # noqa: F401 (the corpus fixture)
from bench.utils import record

BATCH = 32
BANDS = tuple(b for b in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12") if b in BAND_SIZES)


def _feeder(source, kind: str, workers: int = 0):
    items = pipeline_items(source, temporal=False)
    sampler = epoch_sampler(source, items, False, rank=0, world_size=1, seed=0)
    spec = AugmentationSpec.preset("dino-mc")
    if kind == "rgb":
        return Feeder(items, sampler, BATCH, spec.n_dates, rgb_files_per_image(source, items), False, 0, False)
    spec = dataclasses.replace(spec, bands=BANDS, mean=(100.0,) * len(BANDS), std=(50.0,) * len(BANDS))
    return MSFeeder(items, sampler, BATCH, spec, False, 0, False, BandReader(BANDS, None), workers=workers)


@pytest.mark.parametrize("kind", ["rgb", "12-band"])
@pytest.mark.parametrize("impl", ["reference", "fastdino"])
def test_host_cost_per_image(benchmark, corpus, impl, kind):  # noqa: F811
    root, shard_dir = corpus
    source = build_source(shard_dir, acquisitions="one") if impl == "fastdino" else \
        build_source(root, layout="seco", acquisitions="one")
    feeder = _feeder(source, kind)
    batches = max(1, min(IMAGES, len(source)) // BATCH)
    cpu = []

    def epoch():
        feeder.plan(epoch=0)
        t0 = time.process_time()
        for j in range(batches):
            out = feeder(SimpleNamespace(iteration=j))
            assert len(out[0]) == BATCH
        cpu.append(time.process_time() - t0)

    epoch()  # warm: files in the page cache, each file's structural check done once, as in a long run
    record(benchmark, group=f"host cost per image, DINO-MC views, {kind} ({LOCATIONS} SeCo locations), 1 thread",
           impl=impl, images=batches * BATCH, device="cpu", threads=1,
           source="shards" if impl == "fastdino" else "file tree")
    benchmark.pedantic(epoch, rounds=3 if benchmark.enabled else 1, iterations=1)
    ms = 1e3 * float(np.median(cpu[1:] or cpu)) / (batches * BATCH)
    benchmark.extra_info["host_cpu_ms_per_image"] = ms
    benchmark.extra_info["host_cores_for_400_img_s"] = 400 * ms / 1e3


@pytest.mark.parametrize("workers", [0, 2])
def test_multispectral_feed_rate_with_worker_processes(benchmark, corpus, workers):  # noqa: F811
    """Wall-clock img/s of the 12-band feeder from shards, in DALI's callback (0) or in 2 worker processes
    (data.feed_workers): what one rank's host side delivers when the GPU does the pixel work."""
    source = build_source(corpus[1], acquisitions="one")
    feeder = _feeder(source, "12-band", workers)
    batches = max(1, min(IMAGES, len(source)) // BATCH)

    def epoch():
        feeder.plan(epoch=0)
        for j in range(batches):
            assert len(feeder(SimpleNamespace(iteration=j))[0]) == BATCH

    epoch()
    record(benchmark, group=f"multispectral feeder, 12-band, DINO-MC views ({LOCATIONS} SeCo locations), shards",
           impl="reference" if workers == 0 else f"fastdino-{workers}-workers", images=batches * BATCH,
           device="cpu", feed_workers=workers)
    benchmark.pedantic(epoch, rounds=3 if benchmark.enabled else 1, iterations=1)
