"""fastdino.kernels: the fused DINO loss and the fused teacher EMA (Triton on CUDA, torch elsewhere),
with the readable originals in fastdino.kernels.reference.

Names are imported lazily: Triton reads TRITON_INTERPRET when a kernel module is imported, and
`import fastdino.kernels` should stay cheap.
"""

import importlib

_EXPORTS = {
    "DINOLoss": ".dino_loss",
    "dino_loss": ".dino_loss",
    "FlatEMA": ".ema",
    "reference_dino_loss": ".reference",
    "reference_center_update": ".reference",
    "reference_ema_update": ".reference",
    "resolve_backend": ".utils",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'fastdino.kernels' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
