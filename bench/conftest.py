"""At the end of a benchmark session: one line per group with the ratio of every implementation to
the reference, achieved GB/s against the device's peak, and peak memory. Also written to
bench/results/last_run.json so that a run's numbers can be committed."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

_RESULTS = Path(__file__).parent / "results"


def _rows(config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return []
    rows = []
    for b in bs.benchmarks:
        if not b or b.stats.rounds == 0:  # Metadata.stats is pytest-benchmark's Stats
            continue
        info = dict(b.extra_info)
        median = b.stats.median
        row = dict(group=b.group, name=b.name, median_s=median, **info)
        if "bytes_moved" in info:
            row["gbps"] = info["bytes_moved"] / median / 1e9
            row["fraction_of_peak"] = row["gbps"] / info["peak_gbps"]
        if "images" in info:
            row["img_per_s"] = info["images"] / median
        if "flops" in info:
            row["tflops"] = info["flops"] / median / 1e12
        rows.append(row)
    return rows


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = _rows(config)
    if not rows:
        return
    tr = terminalreporter
    tr.section("fastdino: ratios against the reference (median times)")
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    for group, members in sorted(by_group.items()):
        ref = next((m for m in members if m.get("impl") == "reference"), None)
        tr.write_line(f"{group}")
        for m in sorted(members, key=lambda m: m["median_s"]):
            parts = [f"  {m.get('impl', m['name']):<22} {m['median_s'] * 1e3:10.3f} ms"]
            if ref is not None:
                parts.append(f"x{ref['median_s'] / m['median_s']:6.2f} vs reference")
            if "gbps" in m:
                parts.append(f"{m['gbps']:8.1f} GB/s ({100 * m['fraction_of_peak']:.0f}% of {m['peak_source']})")
            if "tflops" in m:
                parts.append(f"{m['tflops']:.2f} TFLOP/s")
            if "peak_mem_bytes" in m:
                parts.append(f"peak mem {m['peak_mem_bytes'] / 2**20:.1f} MiB")
            if "compile_s" in m:
                parts.append(f"first call {m['compile_s']:.1f} s")
            for k in ("img_per_s",):
                if k in m:
                    parts.append(f"{m[k]:.1f} img/s")
            tr.write_line("  ".join(parts))
    _RESULTS.mkdir(exist_ok=True)
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__, python=platform.python_version(),
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
                cpu_threads=torch.get_num_threads())
    (_RESULTS / "last_run.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))

