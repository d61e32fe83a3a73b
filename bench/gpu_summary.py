"""The one-page summary of bench/gpu_check.sh: OUT_DIR/summary.md from the files the check wrote there.

    python bench/gpu_summary.py OUT_DIR [--phases PHASES_TSV] [--no-gpu]
    python bench/gpu_summary.py OUT_DIR --write-env      (OUT_DIR/env.json: the machine, first)

Reads env.json (device and versions), tests.xml (pytest's JUnit report of `pytest tests -m cuda`), bench.json and
step.json (pytest-benchmark's JSON: median time and the extra_info bench/utils.record attaches) and the phases
table (name, exit code, seconds). Any of them may be missing (a phase that timed out); the summary says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

BENCH_FILES = (("bench.json", "CUDA micro-benchmarks"), ("step.json", "Whole training step (batch 64, bf16)"))


def describe_machine() -> dict:
    """Device, versions, and which xformers operators and DALI this environment really has."""
    import torch

    env = dict(date=time.strftime("%Y-%m-%d %H:%M"), python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1))
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:
        env["triton"] = f"absent ({type(e).__name__})"
    try:
        import xformers

        env["xformers"] = xformers.__version__
        info = subprocess.run([sys.executable, "-m", "xformers.info"], capture_output=True, text=True, timeout=120)
        env["xformers_info"] = info.stdout[-6000:]
    except Exception as e:  # absent, or broken against this torch
        env["xformers"], env["xformers_missing"] = None, f"{type(e).__name__}: {e}"
    try:
        import nvidia.dali

        env["dali"] = nvidia.dali.__version__
    except Exception as e:
        env["dali"], env["dali_missing"] = None, f"{type(e).__name__}: {e}"
    try:  # the device's copy of the repository may come without .git, or without git
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=30)
        env["commit"] = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def phases_section(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    lines = ["## Phases", "", "| phase | result | seconds |", "|---|---|---|"]
    for row in path.read_text().splitlines():
        name, rc, seconds = row.split("\t")
        rc = int(rc)
        known = {0: "ok", 124: "**timeout**", 137: "**killed (timeout)**", 5: "nothing selected"}
        result = known.get(rc, f"**exit {rc}**")
        lines.append(f"| {name} | {result} | {seconds} |")
    return [*lines, ""]


def env_section(env: dict) -> list[str]:
    if not env:
        return ["env.json is missing: the check stopped before it described the machine.", ""]
    lines = [f"Device: {env.get('device', 'no CUDA device')} (compute capability {env.get('capability', '-')}, "
             f"{env.get('memory_gib', '-')} GiB, {env['gpus']} GPU(s)); torch {env['torch']} (CUDA {env['cuda']}), "
             f"triton {env['triton']}, Python {env['python']}; fastdino commit {env.get('commit') or 'unknown'}.", ""]
    if env.get("xformers"):
        pairs = [ln.split(":", 1) for ln in env.get("xformers_info", "").splitlines() if ":" in ln]
        ops = [k.strip().removeprefix("memory_efficient_attention.") for k, v in pairs
               if k.startswith("memory_efficient_attention.") and v.strip() == "available"]
        lines.append(f"- xformers {env['xformers']}; fmha operators available: {', '.join(ops) or 'none listed'}.")
    else:
        lines.append("- xformers: absent, so its tests skip and the packed attention runs on SDPA "
                     f"({env.get('xformers_missing', '')}).")
    if env.get("dali"):
        lines.append(f"- DALI {env['dali']}.")
    else:
        lines.append("- DALI: absent, so the dali-gpu tests skip and the whole step's pipeline rows use the torch "
                     "DataLoader.")
    return [*lines, ""]


def tests_section(path: Path) -> list[str]:
    head = "## Tests (`pytest tests -m cuda`)"
    if not path.is_file():
        return [head, "", "tests.xml is missing (the phase did not finish).", ""]
    cases = list(ET.parse(path).getroot().iter("testcase"))
    failed, skipped = [], Counter()
    for case in cases:
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                message = (el.get("message") or tag).strip().splitlines() or [tag]
                failed.append(f"- FAILED {name}: {message[0][:200]}")
        el = case.find("skipped")
        if el is not None:
            skipped[(el.get("message") or "").strip()[:160]] += 1
    n_skip = sum(skipped.values())
    lines = [head, "", f"{len(cases) - len(failed) - n_skip} passed, {len(failed)} failed, {n_skip} skipped.", ""]
    lines += failed
    lines += [f"- skipped ({n}): {reason}" for reason, n in skipped.most_common()]
    return [*lines, ""]


def bench_rows(path: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for b in json.loads(path.read_text()).get("benchmarks", []):
        info = b.get("extra_info", {})
        median = b["stats"]["median"]
        row = dict(impl=info.get("impl", b["name"]), median_s=median)
        if "bytes_moved" in info:
            row["gbps"] = info["bytes_moved"] / median / 1e9
            row["peak_pct"] = 100 * row["gbps"] / info["peak_gbps"] if info.get("peak_gbps") else float("nan")
        if "images" in info:
            row["img_s"] = info["images"] / median
        if "flops" in info:
            row["tflops"] = info["flops"] / median / 1e12
        if "peak_mem_bytes" in info:
            row["peak_mib"] = info["peak_mem_bytes"] / 2**20
        if "pipeline" in info:
            row["impl"] += f" ({info['pipeline']})"
        groups.setdefault(b.get("group") or b["name"], []).append(row)
    return groups


def bench_section(path: Path, title: str) -> list[str]:
    if not path.is_file():
        return [f"## {title}", "", f"{path.name} is missing (the phase did not finish).", ""]
    lines = [f"## {title}", ""]
    for group, rows in sorted(bench_rows(path).items()):
        ref = next((r for r in rows if r["impl"].startswith("reference")), None)
        lines += [f"**{group}**", "", "| impl | median ms | x reference | GB/s (% of peak) | img/s | peak MiB |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: r["median_s"]):
            ratio = f"{ref['median_s'] / r['median_s']:.2f}" if ref else ""
            gbps = f"{r['gbps']:.0f} ({r['peak_pct']:.0f}%)" if "gbps" in r else ""
            if "tflops" in r:
                gbps += f" {r['tflops']:.1f} TFLOP/s"
            img = f"{r['img_s']:.0f}" if "img_s" in r else ""
            mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else ""
            lines.append(f"| {r['impl']} | {r['median_s'] * 1e3:.3f} | {ratio} | {gbps} | {img} | {mem} |")
        lines.append("")
    return lines


def build(out: Path, phases: Path | None = None, no_gpu: bool = False) -> str:
    title = f"# fastdino GPU check, {time.strftime('%Y-%m-%d %H:%M')}"
    if no_gpu:
        return "\n".join([title, "", f"No CUDA GPU is visible on {socket.gethostname()} (torch.cuda.is_available() "
                          "is False): no test or benchmark was run. Run bench/gpu_check.sh on a machine with a GPU.",
                          ""])
    env_path = out / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    lines = [title, "", *env_section(env), *phases_section(phases), *tests_section(out / "tests.xml")]
    for name, heading in BENCH_FILES:
        lines += bench_section(out / name, heading)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--phases", type=Path)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--write-env", action="store_true", help="write OUT/env.json and print it")
    args = parser.parse_args()
    if args.write_env:
        env = describe_machine()
        (args.out / "env.json").write_text(json.dumps(env, indent=1))
        print(json.dumps({k: v for k, v in env.items() if k != "xformers_info"}, indent=1))
        print(env.get("xformers_info", ""))
        return
    text = build(args.out, args.phases, args.no_gpu)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
