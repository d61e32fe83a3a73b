"""The whole training step, fastdino vs the reference step, in the same run: next batch from the pipeline, teacher
and student forward, DINO loss, backward, clipping, AdamW, teacher EMA.

fastdino:  the fastest available pipeline (DALI), packed student, fused DINO loss, flat EMA, fused AdamW.
reference: torchvision DataLoader pipeline, per-size student loop, reference loss loop, per-tensor EMA loop,
           per-tensor AdamW.
Both run the same step body (fastdino.train.build_training(..., reference=...)) from the same initial weights.

Two feeds, each its own group (so each ratio compares like with like):
- pipeline: every round takes the next batch from the pipeline, as training does; where the pipeline is the
  slower part this row measures the pipeline, not the step;
- prefetched: every round steps on one batch already on the device: the ratio of the step alone.
CUDA: dino-mc-vits8 and dino-mc-vits16 at the paper's views, K=65536, batch 64, bf16.
CPU: the tiny preset (ViT-Tiny/16, 2 x 64 + 48, 40, 32, 24 px, K=4096) at batch 16, one pipeline thread.
Peak memory is the step's on a prefetched batch (the pipeline's own buffers are not in torch's allocator).
Goals (DESIGN.md): CUDA >= 2.5x and <= 0.7x the reference's peak memory; CPU >= 1.3x.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fastdino.dataloading import AugmentationSpec, make_synthetic_dataset

from bench.utils import devices, peak_memory_bytes, record, sync
from fastdino.run_config import load_config
from fastdino.train import build_loader, build_training, configure_cpu_threads

CASES = {"cpu": [("tiny", 16, 1)], "cuda": [("dino-mc-vits8", 64, 8), ("dino-mc-vits16", 64, 8)]}
PARAMS = [(device, *case) for device in devices() for case in CASES[device]]


def _batches(loader):
    """Batches forever, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@pytest.mark.parametrize("feed", ["pipeline", "prefetched"])
@pytest.mark.parametrize("impl", ["fastdino", "reference"])
@pytest.mark.parametrize("device,preset,batch,threads", PARAMS, ids=[f"{p[0]}-{p[1]}-B{p[2]}" for p in PARAMS])
def test_train_step(benchmark, tmp_path_factory, device, preset, batch, threads, impl, feed):
    cache = Path(os.environ.get("FASTDINO_CACHE", tmp_path_factory.getbasetemp() / "cache"))
    config = load_config(preset, overrides=[f"run.device={device}", f"run.batch_size={batch}",
                                            f"data.num_threads={threads}"])
    size = max(v["size"] for v in config.augment["global_views"])
    config.data.path = str(make_synthetic_dataset(cache / f"bench-{4 * batch}x{size}", n_images=4 * batch, size=size))
    dev = torch.device(device)
    configure_cpu_threads(config, dev)
    reference = impl == "reference"
    loader, spec, _ = build_loader(config, dev, backend="torch" if reference else None)
    torch.manual_seed(0)
    tr = build_training(config, dev, n_global=spec.n_global, n_views=spec.n_views, reference=reference)
    batches = _batches(loader)
    lr = 5e-4 * batch / 256

    prefetched = next(batches) if feed == "prefetched" else None

    def step():
        tr.step(prefetched if prefetched is not None else next(batches), lr=lr, wd=0.04, momentum=0.996, epoch=1)
        sync(device)

    peak = None
    if not benchmark.disabled:  # a smoke run (--benchmark-disable) runs the step once, nothing more
        step()  # warm-up: pipeline start, kernel selection, allocator
        views = next(batches)

        def prefetched_step():
            if device == "cpu":  # the forked child of peak_memory_bytes hangs in multi-threaded OpenMP
                torch.set_num_threads(1)
            tr.step(views, lr=lr, wd=0.04, momentum=0.996, epoch=1)
            sync(device)

        peak = peak_memory_bytes(prefetched_step, device)
    pipeline = loader.backend
    group = f"train step {preset} B={batch} {device}" + (" (prefetched batch)" if feed == "prefetched" else "")
    record(benchmark, group=group, impl=impl, images=batch, peak_mem=peak, device=device, pipeline=pipeline, feed=feed)
    benchmark(step)


# ---- CPU: fp32 vs bf16 autocast vs torch.compile (issue #17) -------------------------------------------------


@pytest.mark.parametrize("variant", ["fp32", "bf16", "compile"])
def test_train_step_cpu_precision_and_compile(benchmark, variant):
    """The tiny preset's fastdino step on prefetched views (no pipeline), fp32 (the `reference` row of the group),
    bf16 autocast (run.precision=bf16) and run.compile=true (inductor). The first call's time is reported apart
    (compile_s: compilation, or the first-step overheads for the eager rows): it counts against a run's budget."""
    import time

    batch = 16
    config = load_config("tiny", overrides=["run.device=cpu", f"run.batch_size={batch}",
                                            f"run.precision={'bf16' if variant == 'bf16' else 'fp32'}",
                                            f"run.compile={variant == 'compile'}"])
    spec = AugmentationSpec.from_dict(config.augment)
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, s, s, generator=gen) for s in spec.view_sizes]
    torch.manual_seed(0)
    tr = build_training(config, torch.device("cpu"), n_global=spec.n_global, n_views=spec.n_views)

    def step():
        return tr.step(views, lr=1e-4, wd=0.04, momentum=0.996, epoch=1)

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    record(benchmark, group=f"train step tiny B={batch} cpu, prefetched views: fp32 / bf16 / compile",
           impl="reference" if variant == "fp32" else variant, images=batch, device="cpu", compile_s=first,
           threads=torch.get_num_threads())
    benchmark(step)


# ---- iBOT's masked-patch loss on top of DINO (loss.ibot_weight) ----------------------------------------------

IBOT_CASES = {"cpu": [("tiny", 16)], "cuda": [("dino-mc-vits16", 64)]}
IBOT_PARAMS = [(device, *case) for device in devices() for case in IBOT_CASES[device]]


@pytest.mark.parametrize("impl", ["fastdino", "dino-only", "reference"])
@pytest.mark.parametrize("device,preset,batch", IBOT_PARAMS, ids=[f"{p[0]}-{p[1]}-B{p[2]}" for p in IBOT_PARAMS])
def test_train_step_ibot(benchmark, device, preset, batch, impl):
    """The step with loss.ibot_weight=1 on prefetched views: fastdino (masked packed pass; the student's last block
    and head at the CLS and masked patch rows only) vs the reference (one view at a time through timm's modules,
    per-tensor EMA and AdamW), and fastdino without iBOT ("dino-only": what the patch loss costs)."""
    dev = torch.device(device)
    ibot = "0" if impl == "dino-only" else "1"
    config = load_config(preset, overrides=[f"run.device={device}", f"run.batch_size={batch}",
                                            f"loss.ibot_weight={ibot}"])
    configure_cpu_threads(config, dev)
    spec = AugmentationSpec.from_dict(config.augment)
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, s, s, generator=gen).to(dev) for s in spec.view_sizes]
    torch.manual_seed(0)
    tr = build_training(config, dev, n_global=spec.n_global, n_views=spec.n_views, reference=impl == "reference")

    def step():
        tr.step(views, lr=5e-4 * batch / 256, wd=0.04, momentum=0.996, epoch=1)
        sync(device)

    step()  # warm-up
    record(benchmark, group=f"train step + iBOT {preset} B={batch} {device} (prefetched views)", impl=impl,
           images=batch, device=device)
    benchmark(step)
