"""Data pipeline throughput: DALI (fastdino) vs the torchvision DataLoader (reference) at equal thread counts.

Images per second on EuroSAT train images with the DINO-MC views (2 x 224 + 184, 164, 144, 124, 104, 84); all
views of one image count as one image. One call = one epoch over N images, pipelines built and warmed outside
the timing (DataLoader workers are persistent; DALI is built once). Under --benchmark-disable each runs once on
fewer images.
"""

from __future__ import annotations

import pytest
import torch
from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source, dali_available

from bench.utils import eurosat_root, record

THREADS = 2
BATCH = 32


@pytest.mark.parametrize("impl", ["reference", "fastdino"])
def test_pipeline_dino_mc_cpu(benchmark, impl):
    if impl == "fastdino" and not dali_available():
        pytest.skip("nvidia-dali is not installed (pip install 'fastdino[dali]')")
    root = eurosat_root()
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


MS_IMAGES = 256


@pytest.fixture(scope="module")
def eurosat_ms(tmp_path_factory):
    """Generated EuroSAT-MS-shaped data (13-band uint16 64 px TIFFs, EuroSAT-MS's band order), its band statistics,
    and the same images prepared as .npy (fastdino prepare)."""
    import argparse

    from fastdino.dataloading.band_files import FILE_ORDERS, BandReader
    from fastdino.dataloading.synthetic_ms import make_synthetic_ms_dataset

    from fastdino.bands.stats import compute_band_stats
    from fastdino.cli.prepare import prepare

    pytest.importorskip("tifffile")
    root = make_synthetic_ms_dataset(tmp_path_factory.mktemp("eurosat_ms"), n_images=MS_IMAGES, size=64)
    order = FILE_ORDERS["eurosat-ms"]
    stats = compute_band_stats(build_source(root).paths, BandReader(FILE_ORDERS["esa"], order))
    npy = root.parent / "npy"
    prepare(argparse.Namespace(data=root, data_list=None, layout="auto", bands="all", file_bands="eurosat-ms",
                               output=npy))
    return root, npy, stats


@pytest.mark.parametrize("impl", ["reference", "fastdino", "fastdino-npy"])
def test_pipeline_multispectral_cpu(benchmark, impl, eurosat_ms):
    """13-band views (the tiny-ms preset's: 2 x 64 + 48, 40, 32, 24) from 64 px uint16 tiles: DALI CPU (TIFFs, or
    the .npy of `fastdino prepare`) against the torchvision reference, both at THREADS threads / workers."""
    if impl != "reference" and not dali_available():
        pytest.skip("nvidia-dali is not installed (pip install 'fastdino[dali]')")
    import dataclasses

    from fastdino.dataloading.band_files import ESA_ORDER, FILE_ORDERS, file_band_order

    tif, npy, stats = eurosat_ms
    root = npy if impl == "fastdino-npy" else tif
    n = MS_IMAGES if benchmark.enabled else 64
    src = build_source(root)
    src.paths, src.labels = src.paths[:n], None
    src.file_bands = file_band_order(FILE_ORDERS["eurosat-ms"], root)
    spec = dataclasses.replace(AugmentationSpec.preset("tiny"), bands=ESA_ORDER,
                               mean=tuple(stats["bands"][b]["mean"] for b in ESA_ORDER),
                               std=tuple(stats["bands"][b]["std"] for b in ESA_ORDER))
    pipe = build_pipeline(src, spec, batch_size=BATCH, device="cpu", backend="torch" if impl == "reference" else
                          "dali-cpu", num_threads=THREADS)

    def epoch():
        images = 0
        for views in pipe:
            images += views[0].shape[0]
        return images

    epoch()  # warm-up
    record(benchmark, group=f"data pipeline, tiny-ms views, 13-band 64 px EuroSAT-MS-shaped (generated), "
           f"{THREADS} threads", impl=impl, images=len(pipe) * BATCH, device="cpu", backend=pipe.backend,
           threads=THREADS, torch_threads=torch.get_num_threads())
    assert benchmark.pedantic(epoch, rounds=3 if benchmark.enabled else 1, iterations=1) == len(pipe) * BATCH
