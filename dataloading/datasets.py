"""build_source, the one way in: a folder of shards (`fastdino prepare --format shards`) or a file tree.

A folder holding shards.json is read as shards (shard_source.py) with the same meaning of subset, acquisitions and
temporal as the file tree it was written from (sources.py, which describes the layouts).
"""

from __future__ import annotations

from pathlib import Path

from . import sources
from .shard_source import build_shard_source, is_shard_folder

LAYOUTS = (*sources.LAYOUTS, "shards")


def build_source(path, *, list_file=None, layout: str = "auto", subset: float = 1.0, seed: int = 0,
                 acquisitions: str = "all", temporal: bool = False):
    """An ImageSource, SeCoSource or ShardSource (see sources.build_source for the arguments)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; use one of {LAYOUTS}")
    shards = Path(path).expanduser().is_dir() and is_shard_folder(Path(path).expanduser())
    if layout == "shards" and not shards:
        raise FileNotFoundError(f"layout='shards': {path} holds no shards.json (write shards with `fastdino prepare "
                                "--format shards`)")
    if not shards or layout not in ("auto", "shards"):
        return sources.build_source(path, list_file=list_file, layout=layout, subset=subset, seed=seed,
                                    acquisitions=acquisitions, temporal=temporal)
    if list_file is not None:
        raise ValueError(f"{path} is a folder of shards; a data list does not apply to it (write shards of the "
                         "list's images instead: fastdino prepare --format shards --data-list ...)")
    if not 0 < subset <= 1:
        raise ValueError(f"subset={subset!r} must be in (0, 1] (the fraction of the dataset to keep)")
    source = build_shard_source(path, subset=subset, seed=seed, acquisitions=acquisitions)
    if temporal and not source.is_seco:
        raise ValueError(f"{sources.TEMPORAL_NEEDS}; {path} holds shards of {source.index['layout']}, not of a SeCo "
                         "tree, or set data.temporal=false")
    return source
