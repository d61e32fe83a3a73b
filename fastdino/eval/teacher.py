"""The teacher backbone that eval, export, viz (and finetune) read, with errors that say what is wrong with a
checkpoint. Every checkpoint goes through fastdino.models.convert: fastdino's own, the original DINO / DINO-MC code's
(`teacher` / `student` dicts with `module.` / `backbone.` prefixes), or a bare backbone state dict.
`checkpoint_info` (a checkpoint's epoch and iteration) is convert's, importable from here too."""

from __future__ import annotations

from pathlib import Path

import torch

from fastdino.models.convert import checkpoint_info, load_backbone

__all__ = ["checkpoint_info", "load_teacher", "random_init_like"]


def load_teacher(path: str | Path, *, which: str = "teacher", arch: str | None = None, patch_size: int | None = None,
                 pos_embed_interp: str | None = None, echo=None) -> tuple[torch.nn.Module, dict]:
    """(backbone in eval mode, resolved config) of a checkpoint; a clear error when it cannot be built.

    which: "teacher" (default, the network DINO evaluates) or "student". arch / patch_size: the model the caller
    expects (an error names what the file holds instead). pos_embed_interp: "timm" | "dino" (default: the run's
    config, DINO's for original checkpoints). echo: called with the conversion report (what was read and how).
    The usual failure is a checkpoint whose weights do not fit the architecture its config names (a file from
    another run, or a config edited by hand): that error names the arch and the first mismatching keys.
    """
    loaded = load_backbone(path, which=which, arch=arch, patch_size=patch_size, pos_embed_interp=pos_embed_interp)
    if echo is not None:
        echo(loaded.conversion.describe())
    return loaded.backbone, loaded.config


def random_init_like(config: dict, seed: int = 0) -> torch.nn.Module:
    """An untrained backbone with the checkpoint's architecture (seeded, so every run evaluates the same one)."""
    from fastdino.config import backbone_kwargs
    from fastdino.models import create_backbone

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_backbone(**backbone_kwargs(config["model"])).eval()
