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
