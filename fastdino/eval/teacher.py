"""The teacher backbone that eval, export and viz read, with errors that say what is wrong with a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch


def load_teacher(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(teacher backbone in eval mode, resolved config) of a checkpoint; a clear error when it cannot be built.

    The usual failure is a checkpoint whose weights do not fit the architecture its config names (a file from
    another run, or a config edited by hand): that error names the arch and the first mismatching keys.
    """
    from fastdino.checkpoint import load_checkpoint, load_teacher_backbone

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist (expected RUN/checkpoints/last.pt)")
    try:
        return load_teacher_backbone(path)
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise ValueError(str(e)) from e  # unreadable file: checkpoint.py's message already names it
        config = load_checkpoint(path).get("config", {})
        model = config.get("model", {})
        details = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ValueError(
            f"checkpoint {path}: its teacher weights do not fit arch {model.get('arch')!r} "
            f"(patch_size={model.get('patch_size')}, img_size={model.get('img_size')}) named in its config; "
            f"was it trained with another architecture? {details}"
        ) from e
    except KeyError as e:
        raise ValueError(f"checkpoint {path} lacks {e} (not a fastdino checkpoint?)") from e


def checkpoint_info(path: str | Path) -> dict:
    """epoch (the next one to run, i.e. epochs done), iteration and fastdino_version of a checkpoint.

    Memory-mapped: only these small entries are read, not the optimiser state."""
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: saved.get(k) for k in ("epoch", "iteration", "fastdino_version")}


def random_init_like(config: dict, seed: int = 0) -> torch.nn.Module:
    """An untrained backbone with the checkpoint's architecture (seeded, so every run evaluates the same one)."""
    from fastdino.config import backbone_kwargs
    from fastdino.models import create_backbone

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_backbone(**backbone_kwargs(config["model"])).eval()
