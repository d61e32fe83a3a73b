"""Data pipeline throughput: DALI (fastdino) vs the torchvision DataLoader (reference) at equal thread counts.

Images per second on EuroSAT train images with the DINO-MC views (2 x 224 + 184, 164, 144, 124, 104, 84); all
views of one image count as one image. One call = one epoch over N images, pipelines built and warmed outside
the timing (DataLoader workers are persistent; DALI is built once). Under --benchmark-disable each runs once on
fewer images.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source, dali_available

from bench.utils import record

THREADS = 2
BATCH = 32


def _eurosat() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = Path(os.environ.get("FASTDINO_DATA", default)) / "eurosat"
    if not (root / "train.txt").is_file():
        pytest.skip(f"EuroSAT not found at {root} (set FASTDINO_DATA to the folder holding eurosat/)")
    return root


@pytest.mark.parametrize("impl", ["reference", "fastdino"])
def test_pipeline_dino_mc_cpu(benchmark, impl):
    if impl == "fastdino" and not dali_available():
        pytest.skip("nvidia-dali is not installed (pip install 'fastdino[dali]')")
    root = _eurosat()
    n = 320 if benchmark.enabled else 64
    src = build_source(root / "images", list_file=root / "train.txt")
    src.paths, src.labels = src.paths[::len(src.paths) // n][:n], None  # spread over the classes
    backend = "dali-cpu" if impl == "fastdino" else "torch"
    pipe = build_pipeline(src, AugmentationSpec.preset("dino-mc"), batch_size=BATCH, device="cpu", backend=backend,
                          num_threads=THREADS)

    def epoch():
        images = 0
        for views in pipe:
            images += views[0].shape[0]
        return images

    epoch()  # warm-up: workers started, DALI buffers allocated
    record(benchmark, group=f"data pipeline, DINO-MC views, EuroSAT, {THREADS} threads", impl=impl,
           images=len(pipe) * BATCH, device="cpu", backend=pipe.backend, threads=THREADS,
           torch_threads=torch.get_num_threads())
    assert benchmark.pedantic(epoch, rounds=3 if benchmark.enabled else 1, iterations=1) == len(pipe) * BATCH
