"""The reader of a run's metrics.jsonl (one JSON record per line: "step", "epoch", "knn", "summary"), for the curves
and for a resumed run that looks up what it logged before."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(path: Path, kind: str = "step") -> list[dict]:
    """The records of one type ("step", or "knn" from the online k-NN monitor) of a metrics.jsonl; unreadable
    lines (a run killed mid-write) are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a fastdino run folder?")
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and record.get("type", "step") == kind:
            records.append(record)
    if bad:
        print(f"warning: skipped {bad} unreadable line(s) of {path}", file=sys.stderr)
    return records
