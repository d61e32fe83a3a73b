"""What the three fine-tuning commands share: the run folder, the training loop with its progress line,
atomic checkpoints and resume, the results files and the printed table.

Run folder (--output):  config.json (the resolved recipe), metrics.jsonl (one record per epoch),
                        checkpoints/last.pt (written atomically after every epoch), metrics.json (the final
                        scores) and the task's picture. A new run that fails before its first checkpoint leaves
                        no run folder behind (new_run_folder).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

import fastdino
from fastdino import run_folder
from fastdino.checkpoint import LAST, save_checkpoint, set_rng_state, write_atomically


def default_workers() -> int:
    """DataLoader workers: DINO-MC uses 8 per GPU (main_eurosat.py L271); on a small CPU machine half the cores
    (the model needs the rest)."""
    return min(8, (os.cpu_count() or 2) // 2)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def recipe_from(args, preset: dict) -> dict:
    """The task's preset with every option given on the command line in its place."""
    return {k: getattr(args, k) if getattr(args, k, None) is not None else v for k, v in preset.items()}


# --- run folder (fastdino.run_folder, as `fastdino train`'s) ------------------------------------------------
RUN_ENTRIES = ("checkpoints", "metrics.jsonl")  # what --overwrite clears: a later --resume must not find the old run
NOT_EMPTY = "--output {run_dir} is not empty: pass --resume to continue that run or --overwrite to start again in it"


def check_output(output: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Check the output folder before any work, touching nothing; returns the checkpoint to resume from (or None)."""
    return run_folder.check_output(output, resume=resume, overwrite=overwrite, not_empty=NOT_EMPTY)


def new_run_folder(output: Path, *, fresh: bool, overwrite: bool):
    """The run folder around the start of a run: created for a fresh run, removed again if the run fails before
    its first checkpoint (fastdino.run_folder.new_run_folder)."""
    return run_folder.new_run_folder(output, fresh=fresh, overwrite=overwrite, entries=RUN_ENTRIES)


def load_resume(resume_from: Path | None, recipe: dict, task: str) -> tuple[dict | None, dict]:
    """(the saved state or None, the recipe to run): a resumed run keeps its saved training settings."""
    if resume_from is None:
        return None, recipe
    saved = torch.load(resume_from, map_location="cpu", weights_only=True)
    return saved, merge_saved_recipe(saved, recipe, task, resume_from)


def input_normalisation(loaded, normalize: str, given: str | None) -> tuple[tuple | None, tuple | None]:
    """(mean, std) a task applies after its own scaling: the checkpoint's with normalize "checkpoint", none with
    "none" (DINO-MC's multilabel / change input). A multispectral backbone always gets its per-band statistics (its
    bands are read in the files' units, not stretched to [0, 1]); `given` (--normalize as typed) none is an error."""
    if loaded.bands:
        if given == "none":
            raise ValueError(f"--normalize none: the backbone is multispectral ({len(loaded.bands)} bands), its "
                             f"input is each band in the files' units normalised with the checkpoint's statistics; "
                             f"leave --normalize unset")
        return loaded.mean, loaded.std
    return (loaded.mean, loaded.std) if normalize == "checkpoint" else (None, None)


def check_readable(datasets: dict) -> None:
    """Read the first item of every split: an image or band file that does not read fails now, not after an
    epoch of training. Every random generator is left as it was (a training item draws its augmentation)."""
    from fastdino.checkpoint import rng_state

    state = rng_state()
    try:
        for dataset in datasets.values():
            if len(dataset):
                dataset[0]
    finally:
        set_rng_state(state)


def check_disjoint(splits: dict[str, tuple[Iterable, str]], what: str) -> None:
    """No item in two splits ({split: (items, where they come from)}): a test image that was trained on inflates
    the score silently. The error names both sources and a shared item."""
    seen: dict = {}
    for name, (items, where) in splits.items():
        for item in items:
            if item in seen and seen[item][0] != name:
                other, other_where = seen[item]
                raise ValueError(f"{what} {str(item)!r} is in both the {other} split ({other_where}) and the {name} "
                                 f"split ({where}): the splits must not overlap")
            seen.setdefault(item, (name, where))


def write_json(path: Path, data: dict) -> Path:
    """JSON written atomically (fastdino.checkpoint.write_atomically): never a half-written results file."""
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    return write_atomically(path, lambda f: f.write(text.encode()))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def finite(value: float) -> float | None:
    """NaN (undefined scores) as null in JSON."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def provenance() -> dict:
    return {"fastdino_version": fastdino.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# --- checkpoints --------------------------------------------------------------------------------------------
def save_state(output: Path, *, task: str, model, optimizer, scheduler, epoch: int, recipe: dict,
               history: list[dict], extra: dict | None = None) -> Path:
    """checkpoints/last.pt, atomically (fastdino.checkpoint.save_checkpoint): everything --resume needs."""
    from fastdino.checkpoint import rng_state

    state = {"task": task, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "recipe": recipe, "history": history,
             "rng": rng_state(), "fastdino_version": fastdino.__version__, **(extra or {})}
    return save_checkpoint(state, Path(output) / "checkpoints" / LAST)


def merge_saved_recipe(saved: dict, recipe: dict, task: str, path: Path) -> dict:
    """The recipe a resumed run continues with: the saved run's training settings (its schedule and optimiser
    state belong to them), with a warning naming every one the command line changed; a checkpoint of another
    task is an error."""
    if saved.get("task") != task:
        raise ValueError(f"--resume: {path} is a checkpoint of `fastdino finetune {saved.get('task')}`, not {task}")
    changed = {k: (saved["recipe"].get(k), v) for k, v in recipe.items()
               if k in TRAINING_KEYS and k in saved["recipe"] and saved["recipe"][k] != v}
    if changed:
        print(f"warning: --resume keeps the saved run's settings; ignored (saved, given): {changed}", file=sys.stderr)
    return {**recipe, **{k: v for k, v in saved["recipe"].items() if k in TRAINING_KEYS}}


def restore(saved: dict, model, optimizer, scheduler) -> None:
    """Model, optimiser, schedule and RNG state of a checkpoints/last.pt (read with weights_only=True)."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])


def make_loader(dataset, batch_size: int, workers: int, *, shuffle: bool, seed: int, drop_last: bool = False):
    """A DataLoader; the training one's shuffling generator is re-seeded with seed + epoch before each epoch, so a
    resumed run sees the same order and worker seeds as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=generator, drop_last=drop_last)


# Recipe entries that change what is trained (the test list, the workers or the device do not).
TRAINING_KEYS = ("epochs", "batch_size", "lr", "base_lr", "weight_decay", "img_size", "train_list", "train_frac",
                 "seed", "source", "random_init", "normalize", "drop_path", "train_backbone", "tile_size",
                 "source_images")


# --- training loop ------------------------------------------------------------------------------------------
class Progress:
    """A progress line every `every` steps: epoch, step, loss, lr, img/s and the ETA of the whole run."""

    def __init__(self, total_steps: int, done_steps: int = 0, every: int = 20, stream=None):
        self.total = total_steps
        self.done = done_steps
        self.every = max(1, every)
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.start_done = done_steps
        self.window_start, self.window_images = self.start, 0

    def step(self, epoch: int, epochs: int, it: int, iters: int, loss: float, lr: float, images: int) -> None:
        self.done += 1
        self.window_images += images
        if it % self.every and it != iters:
            return
        now = time.perf_counter()
        rate = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        print(f"epoch {epoch}/{epochs} it {it}/{iters}  loss {loss:.4f}  lr {lr:.3g}  {rate:.1f} img/s  "
              f"eta {self.eta()}", file=self.stream, flush=True)

    def eta(self) -> str:
        steps = self.done - self.start_done
        if steps <= 0:
            return "?"
        seconds = (time.perf_counter() - self.start) / steps * (self.total - self.done)
        return str(datetime.timedelta(seconds=round(seconds)))


def train_epoch(model: torch.nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                loss_of: Callable, progress: Progress, epoch: int, epochs: int, device) -> float:
    """One pass over `loader`; `loss_of(model, batch, device) -> (loss, n_images)`. Stops on a NaN loss."""
    model.train()
    total, count = 0.0, 0
    iters = len(loader)
    for it, batch in enumerate(loader, 1):
        loss, n = loss_of(model, batch, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {it}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()  # host sync once per step, for the progress line and the epoch mean
        total += value * n
        count += n
        progress.step(epoch, epochs, it, iters, value, optimizer.param_groups[0]["lr"], n)
    return total / max(count, 1)


def fit(model, train_loader, optimizer, scheduler, loss_of: Callable, *, task: str, recipe: dict, output: Path,
        history: list[dict], start_epoch: int, device, validate: Callable | None = None, val_every: int = 1,
        log_every: int = 20, extra: dict | None = None) -> float:
    """Epochs start_epoch..recipe["epochs"]: train, step the per-epoch schedule, validate every `val_every` epochs
    and after the last (`validate(model) -> dict` of val_* scores), append to metrics.jsonl, checkpoint atomically.
    Returns the training seconds of all epochs, those of an interrupted run's earlier part included."""
    epochs = recipe["epochs"]
    progress = Progress(epochs * len(train_loader), start_epoch * len(train_loader), every=log_every)
    for epoch in range(start_epoch, epochs):
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(recipe["seed"] + epoch)
        epoch_start = time.perf_counter()
        loss = train_epoch(model, train_loader, optimizer, loss_of, progress, epoch + 1, epochs, device)
        record = {"epoch": epoch + 1, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"],
                  "train_seconds": round(time.perf_counter() - epoch_start, 1)}
        scheduler.step()
        if validate is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            val_start = time.perf_counter()
            scores = validate(model)
            record.update(scores, val_seconds=round(time.perf_counter() - val_start, 1))
            print(f"epoch {epoch + 1}: " + "  ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
        history.append(record)
        append_jsonl(Path(output) / "metrics.jsonl", record)
        save_state(output, task=task, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch + 1,
                   recipe=recipe, history=history, extra=extra)
    return sum(r.get("train_seconds", 0.0) for r in history)


# --- printing -----------------------------------------------------------------------------------------------
def print_result(table: str, result: dict) -> int:
    """What every task's `run` prints at the end: the result table and the files it wrote."""
    print(table)
    print(f"saved {result['output']} and {result['picture']}")
    return 0


def model_label(arch: str, state: str) -> str:
    return f"{arch} ({state})"
