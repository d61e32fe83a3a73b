"""Checkpoints: atomic save, load, find the latest, and rebuild the teacher backbone for eval / export.

A checkpoint is a `torch.save` dict (format in docs/ARCHITECTURE.md): config, student, teacher, optimizer,
scaler, dino_loss, epoch (the epoch to run next, or the one in progress), batch (its next batch: 0 at an epoch
boundary), iteration, data (the pipelines' own state), rng, fastdino_version. Everything in it is a tensor or a
plain Python value, so it loads with `torch.load(weights_only=True)`.

`save_last` keeps the checkpoint it replaces as previous.pt, so a last.pt damaged after the fact (a partial
copy) still leaves a recent state; `load_latest` names the newest readable checkpoint when last.pt is not.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

LAST = "last.pt"
PREVIOUS = "previous.pt"  # the last.pt that the newest one replaced
_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` so that `path` always holds a complete checkpoint (write_atomically)."""
    return write_atomically(path, lambda f: torch.save(state, f))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write(file)` into a temporary file in the same folder, flushed and fsync'ed, then renamed over `path` (a
    rename is atomic on POSIX). A crash at any moment leaves either the previous file or the new one, never a torn
    one. Checkpoints and the results files of fine-tuning runs are written this way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # The rename itself lives in the directory entry: sync the folder so it survives a power cut.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the newest readable one, if any."""


def save_last(state: dict, folder: str | Path) -> Path:
    """Write folder/last.pt atomically; the last.pt it replaces becomes previous.pt (a rename, no copy). A crash
    between the two renames leaves previous.pt as the newest checkpoint, which `find_latest` then returns."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / LAST).is_file():
        os.replace(folder / LAST, folder / PREVIOUS)
    return save_checkpoint(state, folder / LAST)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if path.is_dir():  # a run folder: its newest checkpoint, or an error naming the newest readable one
        return load_latest(path, map_location)[1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise RuntimeError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from e


def find_latest(run_dir: str | Path) -> Path | None:
    """checkpoints/last.pt if present, else the newest of previous.pt and the epoch_NNNN.pt files; accepts the
    run folder or its checkpoints/ folder. None when there is none."""
    folder = _folder(run_dir)
    if (folder / LAST).is_file():
        return folder / LAST
    older = _older_checkpoints(folder)
    return older[0] if older else None


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """(path, state) of `find_latest(run_dir)`. An unreadable file (truncated by a partial copy, say) is a
    CheckpointError that names the newest readable checkpoint and how to resume from it."""
    path = find_latest(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {_folder(run_dir)} (looked for {LAST}, {PREVIOUS} and "
                                "epoch_NNNN.pt)")
    try:
        return path, load_checkpoint(path, map_location)
    except RuntimeError as e:
        good = next((p for p in _older_checkpoints(path.parent) if p != path), None)
        if good is None:
            hint = "no other checkpoint of this run is readable; start over with --overwrite"
        else:
            hint = (f"the newest readable checkpoint is {good} (step {_iteration(good)}): move {path.name} "
                    f"aside (mv {path} {path}.bad) and run again to use it")
        raise CheckpointError(f"{e}; {hint}") from e


def is_readable(path: str | Path) -> bool:
    """Whether `path` loads as a checkpoint dict. Memory-mapped: the tensors' bytes are not read, so this is
    cheap even for large files, and a truncated file (its zip directory at the end is missing) fails."""
    return _iteration(path) is not None


def _folder(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir if run_dir.name == "checkpoints" else checkpoint_dir(run_dir)


def _iteration(path: str | Path) -> int | None:
    """The step a checkpoint was written at (-1 if it does not say), or None when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return int(state.get("iteration", -1)) if isinstance(state, dict) else None


def _older_checkpoints(folder: Path) -> list[Path]:
    """The readable checkpoints other than last.pt, newest (highest step) first. previous.pt is not always newer
    than the newest epoch file (just after an epoch ends it holds the step checkpoint before), so they are
    ordered by the step they record."""
    paths = [p for p in folder.glob("epoch_*.pt") if _EPOCH_RE.search(p.name)]
    if (folder / PREVIOUS).is_file():
        paths.append(folder / PREVIOUS)
    steps = [(it, p) for p in paths if (it := _iteration(p)) is not None]
    epoch_of = {p: int(m.group(1)) if (m := _EPOCH_RE.search(p.name)) else -1 for _, p in steps}
    return [p for _, p in sorted(steps, key=lambda sp: (sp[0], epoch_of[sp[1]]), reverse=True)]


def load_teacher_backbone(path: str | Path, device: str | torch.device = "cpu"):
    """(teacher backbone in eval mode, config dict) from a checkpoint file or a run folder (fastdino.models.convert
    reads it, so original DINO / DINO-MC checkpoints work too)."""
    from fastdino.models.convert import load_backbone

    path = Path(path)
    if path.is_dir():
        found = find_latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for checkpoints/{LAST} and epoch_NNNN.pt)")
        path = found
    loaded = load_backbone(path)
    return loaded.backbone.to(device).eval(), loaded.config


# ----------------------------------------------------------------------------------------------------------
# RNG states as tensors and plain values (loadable with weights_only=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`. Generator states must be CPU uint8 tensors (torch.set_rng_state rejects a CUDA
    tensor), whatever map_location the checkpoint was loaded with: each one is moved back to the CPU here."""
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in state["cuda"]])


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.to(device="cpu", dtype=torch.uint8)


def _to_lists(obj):
    return [_to_lists(o) for o in obj] if isinstance(obj, tuple) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj
