"""Safe archive extraction and the all-or-nothing build of a dataset folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

STAGING_PREFIX = ".partial-"


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a .zip / .tar(.gz) into `dest`, refusing members that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _check_inside(dest, member, archive)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: links and devices checked too
                tf.extractall(dest, filter="data")
            else:
                for member in tf.getmembers():
                    _check_inside(dest, member.name, archive)
                tf.extractall(dest)
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive: delete it and download again")


def _check_inside(dest: Path, member: str, archive: Path) -> None:
    resolved = (dest / member).resolve()
    if not resolved.is_relative_to(dest.resolve()):
        raise ValueError(f"{archive}: member {member!r} would be written outside {dest}; refusing to extract")


def content_root(folder: Path) -> Path:
    """The folder inside `folder` where the data starts: releases wrap it in one or more single folders."""
    while True:
        entries = [e for e in folder.iterdir() if e.name != "__MACOSX"]
        if len(entries) != 1 or not entries[0].is_dir():
            return folder
        folder = entries[0]


@contextlib.contextmanager
def staged_folder(target: Path):
    """Yield an empty folder beside `target`; it becomes `target` (one rename) only if the block succeeds.

    Any failure removes it, so a dataset folder is either complete or absent: never half-extracted.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING_PREFIX}"))
    try:
        yield staging
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def stale_staging(target: Path) -> list[Path]:
    """Staging folders a killed run left beside `target`."""
    return sorted(target.parent.glob(f".{target.name}{STAGING_PREFIX}*")) if target.parent.exists() else []
