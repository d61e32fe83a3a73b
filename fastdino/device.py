"""The torch device a command runs on, resolved one way for `fastdino train` (run.device) and `fastdino finetune`
(--device): "auto" or None takes CUDA when a GPU is visible; a CUDA device that is not there is an error now,
before any work."""

from __future__ import annotations

import torch


def select_device(want: str | None, *, local_rank: int = 0, option: str = "--device") -> torch.device:
    """`want` ("cpu", "cuda", "cuda:N", "auto" or None) as a torch.device. Plain "cuda" is GPU `local_rank` (under
    torchrun each rank takes its own). `option` names the setting in errors (run.device, --device)."""
    if want is None or want == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        resolved = want
    if resolved.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{option}={want!r} but no CUDA GPU is visible; use --device cpu")
        if resolved == "cuda":
            resolved = f"cuda:{local_rank}"
        if torch.device(resolved).index >= torch.cuda.device_count():
            raise ValueError(f"{option}={resolved!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
        # Make it the current device: Triton launches its kernels, and DALI and torch.cuda calls without an index
        # run, on the current device, which is cuda:0 in a single process unless set (torchrun ranks set it too).
        torch.cuda.set_device(torch.device(resolved))
    return torch.device(resolved)
