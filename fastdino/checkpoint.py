"""Checkpoints: atomic save, load, find the latest, and rebuild the teacher backbone for eval / export.

A checkpoint is a `torch.save` dict (format in docs/ARCHITECTURE.md): config, student, teacher, optimizer,
scaler, dino_loss, epoch (the next epoch to run), iteration, rng, fastdino_version. Everything in it is a
tensor or a plain Python value, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

LAST = "last.pt"
_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` so that `path` always holds a complete checkpoint: a temporary file in the same folder,
    flushed and fsync'ed, then renamed over `path` (a rename is atomic on POSIX). A crash at any moment leaves
    either the previous file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        found = find_latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for checkpoints/{LAST} and epoch_NNNN.pt)")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise RuntimeError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from e


def find_latest(run_dir: str | Path) -> Path | None:
    """checkpoints/last.pt if present, else the highest epoch_NNNN.pt; accepts the run folder or its
    checkpoints/ folder. None when there is none."""
    run_dir = Path(run_dir)
    folder = run_dir if run_dir.name == "checkpoints" else checkpoint_dir(run_dir)
    if (folder / LAST).is_file():
        return folder / LAST
    epochs = sorted((int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := _EPOCH_RE.search(p.name)))
    return epochs[-1][1] if epochs else None


def load_teacher_backbone(path: str | Path, device: str | torch.device = "cpu"):
    """(teacher backbone in eval mode, config dict) from a checkpoint file or a run folder (fastdino.convert reads
    it, so original DINO / DINO-MC checkpoints work too)."""
    from fastdino.convert import load_backbone

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
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj):
    return [_to_lists(o) for o in obj] if isinstance(obj, tuple) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj
