"""Backend selection shared by every fused op."""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch", "reference")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (tests on machines without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'triton' for CUDA tensors when Triton is installed, else 'torch'. A forced 'triton' on
    a CPU tensor is allowed only under TRITON_INTERPRET=1."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' but triton is not installed (pip install triton)")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 before "
                "importing fastdino.kernels to run the kernels on the CPU through the Triton interpreter"
            )
    return backend


def calculate_settings(n_cols: int, rows_per_block: int = 1, max_elements: int = 8192) -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) for a kernel that walks rows in blocks of BLOCK_SIZE columns and keeps about
    `rows_per_block` tiles of [BLOCK_SIZE] fp32 values live per step (Liger-Kernel's `calculate_settings`, for
    kernels that loop over the columns instead of holding a whole row).

    BLOCK_SIZE: the columns rounded up to a power of two (Triton tiles are powers of two), capped so that the
    live tiles hold at most `max_elements` values: 8192 fp32 over 8 warps is 32 registers a thread, which
    leaves room for the kernel's other values without spilling. num_warps: Liger's rule, more warps for
    bigger tiles so each thread keeps a few vectors' worth. Not yet tuned on a GPU (no GPU session so far):
    revisit with bench/ when one comes, and autotune only where the benchmark shows it pays.
    """
    cap = max(16, 1 << ((max_elements // max(rows_per_block, 1)).bit_length() - 1))  # a power of two
    block = min(1 << max(n_cols - 1, 0).bit_length(), cap)
    elements = block * rows_per_block
    if elements >= 32768:
        num_warps = 16
    elif elements >= 4096:
        num_warps = 8
    else:
        num_warps = 4
    return block, num_warps
