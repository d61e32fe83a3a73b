"""build_pipeline: DALI when it is installed and usable, torchvision otherwise, or what the caller forces."""

from __future__ import annotations

import logging

import torch

from .augment import AugmentationSpec
from .torch_pipeline import TorchPipeline

log = logging.getLogger("fastdino.dataloading")
BACKENDS = ("auto", "dali", "dali-gpu", "dali-cpu", "torch")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def build_pipeline(source, spec: AugmentationSpec, *, batch_size: int, device="cpu", backend: str = "auto",
                   num_threads: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1, temporal: bool = False,
                   strict: bool = False, feed_workers: int = 0):
    """An iterable of `list[Tensor[B, 3, H_v, W_v]]` on `device` (global views first) with len() = batches per
    epoch (drop_last), `.set_epoch(e)`, `.backend` ("dali-gpu", "dali-cpu" or "torch") and `.num_skipped`.

    backend: "auto" (DALI on the device's kind when DALI imports and builds, else torch), "dali" (DALI on the
    device's kind), "dali-gpu", "dali-cpu" or "torch". A forced DALI backend that cannot run is an error;
    "auto" logs why it fell back. num_threads: DALI CPU threads, or DataLoader workers for torch (0 = load in
    the main process). feed_workers (DALI, multispectral): processes that read the band files and draw the views'
    parameters for DALI (dali_ms.py; 0: in DALI's callback, one core's worth)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; use one of {BACKENDS}")
    if not isinstance(spec, AugmentationSpec):
        raise TypeError(f"spec must be an AugmentationSpec, got {type(spec).__name__}")
    device = torch.device(device)
    kwargs = dict(batch_size=batch_size, device=device, num_threads=num_threads, seed=seed, rank=rank,
                  world_size=world_size, temporal=temporal, strict=strict)
    if backend == "torch":
        return _torch(source, spec, kwargs, "forced")
    if backend == "auto" and not dali_available():
        return _torch(source, spec, kwargs, "nvidia-dali is not installed (pip install 'fastdino[dali]')")
    want = backend if backend in ("dali-gpu", "dali-cpu") else ("dali-gpu" if device.type == "cuda" else "dali-cpu")
    if want == "dali-gpu" and not torch.cuda.is_available():
        if backend != "auto":
            raise RuntimeError(f"backend={backend!r} needs a CUDA GPU; none is available. Use backend='dali-cpu'")
        want = "dali-cpu"
    try:
        from .dali_pipeline import DaliPipeline

        pipe = DaliPipeline(source, spec, gpu=want == "dali-gpu", feed_workers=feed_workers, **kwargs)
    except (ValueError, TypeError):
        raise  # bad arguments are the caller's to fix, whatever the backend
    except Exception as e:
        if backend != "auto":
            raise RuntimeError(f"backend={backend!r} could not be built: {e}") from e
        return _torch(source, spec, kwargs, f"DALI could not be built ({type(e).__name__}: {e})")
    log.info("data pipeline: %s, %d batches of %d per epoch, %d threads", pipe.backend, len(pipe), batch_size,
             num_threads)
    return pipe


def _torch(source, spec, kwargs, why: str) -> TorchPipeline:
    pipe = TorchPipeline(source, spec, **kwargs)
    log.info("data pipeline: torch (%s), %d batches of %d per epoch, %d workers", why, len(pipe),
             kwargs["batch_size"], kwargs["num_threads"])
    return pipe
