"""A run's output folder, handled one way by `fastdino train` and `fastdino finetune`.

Before any work: a non-empty folder is refused unless --resume (continue the run it holds, from its newest
readable checkpoint) or --overwrite (start again in it). Starting again deletes only what a run writes, never the
user's other files. A new run that fails before its first checkpoint can remove again what it created
(new_run_folder), so the rerun needs no --overwrite.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from fastdino.checkpoint import CheckpointError, checkpoint_dir, find_latest, load_latest


def check_output(run_dir: str | Path, *, resume: bool, overwrite: bool, not_empty: str) -> Path | None:
    """Check the output folder against --resume / --overwrite, touching nothing; returns the checkpoint a resumed
    run continues from (None: a new run). `not_empty` is the command's own message for an occupied folder
    ("{run_dir}" is filled in). Errors: FileNotFoundError (nothing to resume), ValueError (otherwise)."""
    run_dir = Path(run_dir)
    if resume:
        found = find_latest(run_dir)
        if found is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)}; start a new run without "
                                    "--resume")
        try:  # a truncated last.pt is found now, with the newest readable checkpoint named, not after the build
            load_latest(run_dir, map_location="meta")  # meta: reads the structure, not the tensors' bytes
        except CheckpointError as e:
            raise ValueError(f"--resume: {e}") from e
        return found
    if is_occupied(run_dir) and not overwrite:
        raise ValueError(not_empty.format(run_dir=run_dir))
    return None


def is_occupied(run_dir: Path) -> bool:
    return run_dir.exists() and any(run_dir.iterdir())


def clear_run_files(run_dir: str | Path, entries: Iterable[str]) -> None:
    """Delete the entries a run writes (names in `run_dir`) before a new run starts in an old run's folder, so a
    later --resume cannot pick up the old run's weights; anything else in the folder stays."""
    for name in entries:
        path = Path(run_dir) / name
        if path.exists() or path.is_symlink():
            _remove(path)


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to: RUN for RUN/checkpoints/last.pt, else the checkpoint's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


@contextlib.contextmanager
def new_run_folder(run_dir: str | Path, *, fresh: bool, overwrite: bool, entries: Iterable[str]):
    """The run folder around the start of a run. A fresh run's folder is created here (with --overwrite, the old
    run's `entries` are cleared first); if the run fails before it wrote its first checkpoint, what it created is
    removed again. A folder that existed before the run stays, with whatever was in it then; a resumed run (fresh
    False) is never touched."""
    if not fresh:
        yield
        return
    run_dir = Path(run_dir)
    created = topmost_missing(run_dir)
    existing = set() if created is not None else set(run_dir.iterdir())
    if overwrite:
        clear_run_files(run_dir, entries)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if find_latest(run_dir) is None:  # nothing to resume: what the run created is of no use
            remove_created(run_dir, created, existing)
        raise


def topmost_missing(path: Path) -> Path | None:
    """The outermost folder that `mkdir(parents=True)` of `path` would create (None: `path` exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def remove_created(run_dir: Path, created: Path | None, existing: set[Path]) -> None:
    """Remove the folders `created` for the run, or else what is in `run_dir` beyond the `existing` entries."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for entry in set(run_dir.iterdir()) - existing:
        _remove(entry, ignore_errors=True)


def _remove(path: Path, *, ignore_errors: bool = False) -> None:
    """A folder with what it holds, or a file or link (a link to a folder: the link only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        path.unlink(missing_ok=ignore_errors)
