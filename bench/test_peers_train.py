"""Whole-training throughput on CPU: lightly-train's DINO beside `fastdino train` (tiny preset), same images, same
threads (issue #17, item 5). The loss / EMA / single-step peers are in bench/test_peers.py.

Peer (optional extra: `pip install -e ".[peers]"`; without it the lightly-train row is skipped with that hint):
lightly-train (`lightly_train.pretrain(method="dino")`, tested with 0.18.0), run as a user would run it, through
its Lightning Trainer, data loader, transforms, logging and callbacks.

What is timed, for both: one training run per round in a background thread; the round's time runs from the end of
step WARMUP to the end of step WARMUP + TIMED (`on_train_batch_end` for lightly-train, the return of fastdino's step
function), so it holds TIMED whole steps as the loop runs them: waiting for the next batch, teacher and student
forward, loss, backward, clipping, optimiser, teacher EMA, the loop's own logging. Start-up (imports, dataset scan,
model build, data workers starting), the warm-up steps and the end of the run (checkpoint, export, plots) are not
timed. img/s = BATCH * TIMED / that time. lightly-train is the `reference` row of the group, so the printed ratio
is "fastdino x lightly-train".

Settings, matched as far as lightly-train allows:
- data: 512 generated 64 px jpgs (`make_synthetic_dataset`, as bench/test_train_step.py), so the benchmark always
  runs; with EuroSAT under FASTDINO_DATA also 512 of its 64 px train images (spread over the classes);
- model: ViT-Tiny/16 at 64 px (lightly-train: timm `vit_tiny_patch16_224`, img_size=64, dynamic_img_size=True as
  lightly-train sets for ViTs); DINO head 192 -> 512 -> 512 -> 128 -> K=4096, last layer weight-normalised;
- views: 2 global views of 64 px. Local views differ: fastdino's tiny preset has one each of 48, 40, 32, 24 px
  (its ViT floors them to whole patches: 3x3, 2x2, 2x2, 1x1 = 18 patch tokens); lightly-train has one local
  size and a count, and timm's ViT refuses sides that are not a multiple of the patch (40, 24), so it gets
  4 x 32 px (2x2 patches each, 16 patch tokens): ~10% fewer local tokens, about 2% fewer model FLOPs per image;
- batch 16, fp32 (precision "32-true", float32 matmul "highest"), accelerator cpu, 1 device, AdamW for both
  (lightly-train's DINO defaults to SGD), gradient clipping 3.0 for both (lightly-train: global norm, fastdino's
  preset: per parameter);
- threads: torch on THREADS threads in both; one data thread: fastdino's pipeline with data.num_threads=1,
  lightly-train's DataLoader with num_workers=1 (one worker process);
- lightly-train's TensorBoard logger is off (fastdino has none); its JSONL logger, progress bar, learning-rate
  monitor, early-stopping check, checkpoint and export callbacks stay as they are. Its usage telemetry is disabled
  (LIGHTLY_TRAIN_EVENTS_DISABLED=1) and its cache goes to the test's temporary folder: the run needs no network.
Other differences that cost little: lightly-train's embedding is the mean of the patch tokens (its timm wrapper),
fastdino's the class token; lightly-train's augmentations run in albumentations / OpenCV, fastdino's in DALI.

A smoke run (--benchmark-disable, as CI runs bench/) does 1 warm-up + 2 steps per row.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastdino.dataloading import make_synthetic_dataset

from bench.utils import eurosat_root, record

THREADS = 2
BATCH = 16
SIZE = 64  # px: the images and the global views
N_IMAGES = 512  # 32 steps of 16: the timed steps stay inside the first epoch (no epoch-end work in the window)
WARMUP, TIMED, ROUNDS = 5, 20, 2
SMOKE_WARMUP, SMOKE_TIMED = 1, 2
LIGHTLY_LOCAL_SIZE, LIGHTLY_N_LOCAL = 32, 4  # see the docstring: the closest lightly-train gets to 48/40/32/24
WAIT_LIMIT_S = 1800  # a run that has not reached its gate by then is stuck: fail instead of hanging the session


def _lightly_train():
    """lightly_train, or a skip that says how to get it (as bench/test_peers.py's `_lightly`)."""
    return pytest.importorskip("lightly_train", reason='peer benchmarks need the extra: pip install -e ".[peers]"')


class _GatedRun:
    """One training run in a background thread. The loop calls `after_step()` after every step; after step `warmup`
    it waits until `timed_steps()` lets it go, and `timed_steps()` returns when step `warmup + timed` has ended."""

    def __init__(self, train_fn: Callable[[Callable[[], None]], object], warmup: int, timed: int):
        self.train_fn, self.warmup, self.timed = train_fn, warmup, timed
        self.steps, self.threads_seen, self.result, self.error = 0, None, None, None
        self._warm, self._go, self._done, self._ended = (threading.Event() for _ in range(4))
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="bench-train", daemon=True)

    def _run(self) -> None:
        torch.set_num_threads(THREADS)  # per thread in OpenMP: set it where the steps run
        try:
            self.result = self.train_fn(self.after_step)
        except BaseException as e:  # re-raised in the test's thread
            self.error = e
        finally:
            self._ended.set()

    def after_step(self) -> None:
        self.steps += 1
        self.threads_seen = torch.get_num_threads()
        if self.steps == self.warmup:
            self._warm.set()
            self._go.wait()
            if self._abort:
                raise RuntimeError("benchmark aborted before its timed steps")
        elif self.steps == self.warmup + self.timed:
            self._done.set()

    def _wait(self, event: threading.Event, what: str) -> None:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not event.wait(0.05):
            if self._ended.is_set() and not event.is_set():
                if self.error is not None:
                    raise RuntimeError(f"the training run failed before {what}") from self.error
                raise RuntimeError(f"the training run ended after {self.steps} steps, before {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {WAIT_LIMIT_S} s ({self.steps} steps done)")

    def start(self) -> None:
        """Start-up and warm-up steps: not timed."""
        self._thread.start()
        self._wait(self._warm, f"step {self.warmup} (end of warm-up)")

    def timed_steps(self) -> None:
        """The timed part: steps warmup + 1 .. warmup + timed."""
        self._go.set()
        self._wait(self._done, f"step {self.warmup + self.timed}")

    def finish(self) -> object:
        """Let the run end (checkpoint, export) and return what it returned; re-raise its error."""
        self.stop()
        if self.error is not None:
            raise RuntimeError("the training run failed") from self.error
        return self.result

    def stop(self) -> None:
        """Wait for the run's end; one still held at its warm-up gate is released to stop with an error."""
        if not self._go.is_set():
            self._abort = True
            self._go.set()
        if self._thread.is_alive():
            self._thread.join()


# ---- data ---------------------------------------------------------------------------------------------------


def _images(data: str, workdir: Path) -> tuple[Path, Path | None, list[Path]]:
    """(fastdino's data.path, its data.list_file or None, the same images as files for lightly-train)."""
    if data == "synthetic":
        cache = Path(os.environ.get("FASTDINO_CACHE", workdir / "cache"))
        root = make_synthetic_dataset(cache / f"bench-{N_IMAGES}x{SIZE}", n_images=N_IMAGES, size=SIZE)
        return root, None, sorted(root.glob("class_*/*.jpg"))
    root = eurosat_root()
    lines = [s for s in (root / "train.txt").read_text().split() if s]
    picked = lines[::len(lines) // N_IMAGES][:N_IMAGES]  # spread over the classes
    list_file = workdir / "eurosat-subset.txt"
    list_file.write_text("\n".join(picked) + "\n")
    return root / "images", list_file, [root / "images" / p for p in picked]


# ---- the two runs -------------------------------------------------------------------------------------------


def _fastdino_run(path: Path, list_file: Path | None, out: Path, warmup: int, timed: int, monkeypatch) -> _GatedRun:
    import fastdino.train as fastdino_train
    from fastdino.run_config import load_config

    # DINO's loss alone (no KoLeo term): the same work as lightly-train's DINO
    config = load_config("tiny", overrides=["run.device=cpu", f"run.batch_size={BATCH}", "data.num_threads=1",
                                            "run.precision=fp32", "loss.koleo_weight=0"])
    config.data.path = str(path)
    config.data.list_file = None if list_file is None else str(list_file)
    build_training = getattr(fastdino_train.build_training, "unpatched", fastdino_train.build_training)  # round 2+
    run: _GatedRun

    def gated_build_training(*args, **kwargs):
        tr = build_training(*args, **kwargs)
        step = tr.step

        def gated_step(*a, **k):
            loss = step(*a, **k)
            run.after_step()
            return loss

        tr.step = gated_step
        return tr

    gated_build_training.unpatched = build_training
    monkeypatch.setattr(fastdino_train, "build_training", gated_build_training)
    lines: list[str] = []
    run = _GatedRun(lambda _: fastdino_train.train(config, out, echo=lines.append, max_steps=warmup + timed),
                    warmup, timed)
    return run


def _lightly_train_run(files: list[Path], out: Path, warmup: int, timed: int, monkeypatch) -> _GatedRun:
    lightly_train = _lightly_train()
    from lightly_train._callbacks import callback_helpers  # where pretrain() gets its Lightning callbacks
    from pytorch_lightning import Callback

    monkeypatch.setenv("LIGHTLY_TRAIN_EVENTS_DISABLED", "1")  # no usage telemetry (it would need the network)
    monkeypatch.setenv("LIGHTLY_TRAIN_CACHE_DIR", str(out.parent / "lightly-train-cache"))
    losses: list[float] = []
    run: _GatedRun

    class StepEnd(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))
            run.after_step()

    get_callbacks = getattr(callback_helpers.get_callbacks, "unpatched", callback_helpers.get_callbacks)  # round 2+

    def get_callbacks_and_step_end(**kwargs):
        return [*get_callbacks(**kwargs), StepEnd()]

    get_callbacks_and_step_end.unpatched = get_callbacks
    monkeypatch.setattr(callback_helpers, "get_callbacks", get_callbacks_and_step_end)

    def train(_):
        lightly_train.pretrain(
            out=str(out), data=[str(f) for f in files], method="dino",
            model="timm/vit_tiny_patch16_224", model_args={"img_size": SIZE},
            method_args={"hidden_dim": 512, "bottleneck_dim": 128, "output_dim": 4096},
            transform_args={"image_size": (SIZE, SIZE),
                            "local_view": {"num_views": LIGHTLY_N_LOCAL,
                                           "view_size": (LIGHTLY_LOCAL_SIZE, LIGHTLY_LOCAL_SIZE)}},
            epochs=1, batch_size=BATCH, num_workers=1, accelerator="cpu", devices=1, precision="32-true",
            float32_matmul_precision="highest", optim="adamw", loggers={"tensorboard": None}, seed=0,
            trainer_args={"max_steps": warmup + timed})
        return losses

    run = _GatedRun(train, warmup, timed)
    return run


# ---- the benchmark ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["synthetic", "eurosat"])
@pytest.mark.parametrize("impl", ["lightly-train", "fastdino"])
def test_peer_whole_training(benchmark, tmp_path, monkeypatch, impl, data):
    if impl == "lightly-train":  # skip before generating data when the extra is absent
        _lightly_train()
    warmup, timed = (WARMUP, TIMED) if benchmark.enabled else (SMOKE_WARMUP, SMOKE_TIMED)
    path, list_file, files = _images(data, tmp_path)
    assert len(files) >= (warmup + timed) * BATCH, f"{len(files)} images: too few for {warmup + timed} steps"
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    runs: list[_GatedRun] = []

    def new_run():
        out = tmp_path / f"{impl}-{len(runs)}"
        if impl == "fastdino":
            run = _fastdino_run(path, list_file, out, warmup, timed, monkeypatch)
        else:
            run = _lightly_train_run(files, out, warmup, timed, monkeypatch)
        runs.append(run)
        run.start()
        return (run,), {}

    group = (f"peers: whole training tiny B={BATCH} cpu, {data} {SIZE} px, {timed} steps after {warmup} warm-up "
             "(reference: lightly-train)")
    record(benchmark, group=group, impl="reference" if impl == "lightly-train" else impl,
           images=BATCH * timed, device="cpu", threads=THREADS, data_workers=1, peer=impl,
           local_views="4 x 32 px" if impl == "lightly-train" else "48, 40, 32, 24 px")
    try:
        benchmark.pedantic(lambda run: run.timed_steps(), setup=new_run, teardown=lambda run: run.finish(),
                           rounds=ROUNDS)
        results = [run.finish() for run in runs]  # a smoke run (--benchmark-disable) does not call teardown
    finally:
        for run in runs:  # after a failure: no thread left running or waiting at its gate
            run.stop()
        torch.set_num_threads(threads_before)

    for run in runs:
        assert run.steps == warmup + timed, f"{impl}: {run.steps} steps, expected {warmup + timed}"
        assert run.threads_seen == THREADS, f"{impl} stepped on {run.threads_seen} torch threads, not {THREADS}"
    if impl == "fastdino":
        for summary in results:
            assert summary["steps"] == warmup + timed and math.isfinite(summary["final_loss"]), summary
        # fastdino's own figure (its log windows after the first, 5 steps each) as a cross-check of the gate's
        benchmark.extra_info["fastdino_summary_img_per_s"] = [round(s["img_per_s"], 2) for s in results]
    else:
        for losses in results:
            assert len(losses) == warmup + timed and all(math.isfinite(x) for x in losses), losses
