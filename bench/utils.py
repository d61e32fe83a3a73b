"""Helpers shared by every benchmark: devices, peak memory, achieved bandwidth.

A benchmark times fastdino's fast path and its reference in the same run (one pytest-benchmark
group per comparison, `impl` = "fastdino" / "reference" / other baselines). bench/conftest.py
prints the ratio of every group at the end of the session and writes them to
bench/results/last_run.json.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Peak HBM bandwidth in GB/s by device-name fragment (vendor data sheets).
_GPU_PEAK_GBPS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100": 1555.0,
    "L4": 300.0,
    "A10": 600.0,
    "RTX 4090": 1008.0,
}


def eurosat_root() -> Path:
    """The EuroSAT folder under FASTDINO_DATA (default: the team's shared data beside the repository), or a skip."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = Path(os.environ.get("FASTDINO_DATA", default)) / "eurosat"
    if not (root / "train.txt").is_file():
        pytest.skip(f"EuroSAT not found at {root} (set FASTDINO_DATA to the folder holding eurosat/)")
    return root


def devices() -> list[str]:
    """cpu always, cuda when present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


_cpu_copy_gbps: float | None = None


def peak_bandwidth_gbps(device: str | torch.device) -> tuple[float, str]:
    """(GB/s, where the number comes from). CUDA: the data-sheet peak of the GPU. CPU: there is no
    data sheet for a shared VM, so the yardstick is a measured large copy (read + write)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, gbps in _GPU_PEAK_GBPS.items():
            if key in name:
                return gbps, f"data sheet ({name})"
        return float("nan"), f"unknown GPU {name}"
    global _cpu_copy_gbps
    if _cpu_copy_gbps is None:
        src = torch.randn(64 * 2**20 // 4)  # 64 MiB, far beyond the caches
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
        _cpu_copy_gbps = 2 * src.numel() * 4 / best / 1e9
    return _cpu_copy_gbps, "measured copy"


def peak_memory_bytes(fn: Callable[[], object], device: str | torch.device) -> int:
    """Extra memory at the peak of one call of `fn`, above what was allocated before it.

    CUDA: the caching allocator's peak. CPU: the peak resident set of a forked child that runs
    `fn` once (Linux resets a child's high-water mark to its size at fork), so the parent's own
    high-water mark does not hide the call's peak. The child runs on one thread: libgomp is not
    fork-safe, and a child whose parent already ran OpenMP regions hangs in its first parallel one."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            torch.set_num_threads(1)
            base = _rss_bytes()
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            os.write(write_end, str(max(peak - base, 0)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        text = f.read()
    os.waitpid(pid, 0)
    if not text:
        raise RuntimeError("peak_memory_bytes: the forked child failed")
    return int(text)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def record(benchmark, *, group: str, impl: str, bytes_moved: float | None = None, flops: float | None = None,
           peak_mem: int | None = None, images: int | None = None, device: str | torch.device = "cpu",
           **extra) -> None:
    """Attach what the conftest reports to a pytest-benchmark result: call before `benchmark(...)`.

    bytes_moved: the memory-traffic floor of one call (-> GB/s and fraction of peak);
    images: images per call (-> img/s); impl="reference" is the baseline of its group."""
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, device=str(device), **extra)
    if bytes_moved is not None:
        benchmark.extra_info["bytes_moved"] = float(bytes_moved)
        peak, source = peak_bandwidth_gbps(device)
        benchmark.extra_info["peak_gbps"] = peak
        benchmark.extra_info["peak_source"] = source
    if images is not None:
        benchmark.extra_info["images"] = int(images)
    if flops is not None:
        benchmark.extra_info["flops"] = float(flops)
    if peak_mem is not None:
        benchmark.extra_info["peak_mem_bytes"] = int(peak_mem)
