"""`fastdino download`: fetch a public dataset release and lay it out the way `fastdino train` / `finetune` read it.

    download_dataset("eurosat", Path("data"))   # -> data/eurosat/images/<Class>/*.jpg + train/val/test.txt
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .catalogue import DATASETS, GB, DatasetRelease, RemoteFile
from .extract import staged_folder, stale_staging
from .fetch import DownloadError, fetch, file_sha256
from .layouts import BUILDERS

MARKER = ".fastdino-download.json"  # written last, inside the staged folder: its presence means "complete"
WARN_BYTES = 1 * GB

__all__ = ["DATASETS", "DownloadError", "download_dataset", "size_warning", "MARKER"]


def download_dataset(name: str, root: Path, *, seed: int = 0, yes: bool = False, delete_archives: bool = False,
                     progressbar: bool = True, out=sys.stdout, stdin=sys.stdin) -> Path | None:
    """Download and lay out dataset `name` under `root`; returns its folder (None when the user declined)."""
    release = _release(name)
    target = root / release.folder
    if (target / MARKER).exists():
        print(f"{name}: {target} is already complete (remove it to download again)", file=out)
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists but was not written by `fastdino download {name}` (no {MARKER} in "
                              "it): move it away, or choose another --root")
    for leftover in stale_staging(target):  # from a run that was killed mid-extraction
        shutil.rmtree(leftover, ignore_errors=True)
    cache = root / "downloads"
    if not _confirm_size(release, cache, yes=yes, out=out, stdin=stdin):
        print(f"{name}: not downloaded", file=out)
        return None
    archives = {f.name: fetch(f, cache, progressbar=progressbar) for f in release.files}
    record = {"dataset": name, "seed": seed, "files": _file_record(release.files, archives, out)}
    print(f"{name}: extracting into {target}", file=out)
    with staged_folder(target) as staging:
        record["counts"] = BUILDERS[name](archives, staging, seed)
        (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    if delete_archives:
        for path in archives.values():
            path.unlink(missing_ok=True)
    print(f"{name}: done: {target} ({', '.join(f'{v:,} {k}' for k, v in record['counts'].items())})", file=out)
    return target


def size_warning(release: DatasetRelease, cache: Path) -> str | None:
    """A warning with the size and a rough time for what is still to download, or None below WARN_BYTES."""
    todo = sum(f.size_bytes for f in release.files if not (cache / f.name).exists())
    if todo < WARN_BYTES:
        return None
    minutes = [todo * 8 / rate / 60 for rate in (100e6, 1e9)]  # bits per second of a 100 Mbit/s and a 1 Gbit/s link
    return (f"{release.name}: about {todo / GB:.1f} GB to download into {cache} (roughly {minutes[0]:.0f} min at "
            f"100 Mbit/s, {minutes[1]:.0f} min at 1 Gbit/s), and as much again once extracted. An interrupted "
            "download resumes when the command is run again.")


def _confirm_size(release: DatasetRelease, cache: Path, *, yes: bool, out, stdin) -> bool:
    warning = size_warning(release, cache)
    if warning is None:
        return True
    print(f"WARNING: {warning}", file=out)
    if yes or not stdin.isatty():  # scripts (no terminal) get the warning only
        return True
    print("Continue? [y/N] ", end="", file=out, flush=True)
    return stdin.readline().strip().lower() in ("y", "yes")


def _file_record(files: tuple[RemoteFile, ...], archives: dict[str, Path], out) -> dict:
    record = {}
    for remote in files:
        entry = {"url": remote.url, "known_hash": remote.known_hash}
        if remote.known_hash is None:
            entry["sha256"] = file_sha256(archives[remote.name])
            print(f"note: {remote.name} has no published checksum; not verified (sha256 {entry['sha256']})", file=out)
        record[remote.name] = entry
    return record


def _release(name: str) -> DatasetRelease:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
