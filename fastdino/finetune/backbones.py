"""The backbone a fine-tuning run starts from: a fastdino checkpoint's teacher, an exported backbone
(`fastdino export`: timm safetensors + metadata JSON), or an untrained one (`--random-init`).

DINO-MC fine-tunes the teacher (main_eurosat.py L81, --checkpoint_key teacher L260) of a ViT built with no
drop-path (the `vits.vit_small(patch_size=..., num_classes=...)` call of L33 leaves drop_path_rate at 0), so the
backbone's drop-path is set to `drop_path` (default 0) whatever the pretraining used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fastdino.dataloading.augment import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class LoadedBackbone:
    backbone: nn.Module  # forward(x) -> [B, D]; .embed_dim; .timm_model
    arch: str
    state: str  # what the weights are: "epoch 4", "exported, epoch 4", "random init"
    mean: tuple[float, float, float]  # the normalisation the weights were trained with
    std: tuple[float, float, float]
    random_init: bool
    source: str | None  # the checkpoint or exported file
    checkpoint_epoch: int | None


def load_backbone(checkpoint: Path | None, *, random_init: bool = False, arch: str | None = None,
                  patch_size: int | None = None, img_size: int = 224, seed: int = 0) -> LoadedBackbone:
    """Resolve --checkpoint / --random-init / --arch into a backbone; errors name the option at fault.

    With --random-init and a checkpoint, the untrained backbone has the checkpoint's architecture (the baseline
    `fastdino eval --random-init` reads against); without a checkpoint it needs --arch.
    """
    if checkpoint is None:
        if not random_init:
            raise ValueError("give --checkpoint (a fastdino checkpoint or an exported .safetensors) or --random-init")
        if arch is None:
            raise ValueError("--random-init without --checkpoint needs --arch (e.g. vit_small --patch-size 8)")
        from fastdino.models import create_backbone

        backbone = _seeded(seed, lambda: create_backbone(arch, patch_size=patch_size, img_size=img_size))
        return LoadedBackbone(backbone, arch, "random init", IMAGENET_MEAN, IMAGENET_STD, True, None, None)
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    if checkpoint.suffix == ".safetensors":
        return _load_exported(checkpoint, random_init, seed)
    return _load_fastdino(checkpoint, random_init, seed)


def _load_fastdino(path: Path, random_init: bool, seed: int) -> LoadedBackbone:
    from fastdino.eval.teacher import checkpoint_info, load_teacher, random_init_like

    backbone, config = load_teacher(path)
    arch = config.get("model", {}).get("arch", "?")
    epoch = checkpoint_info(path).get("epoch")
    if random_init:
        backbone = random_init_like(config, seed)
    mean, std = _normalisation(config.get("augment", {}))
    state = "random init" if random_init else f"epoch {epoch}"
    return LoadedBackbone(backbone, arch, state, mean, std, random_init, str(path), None if random_init else epoch)


def _load_exported(path: Path, random_init: bool, seed: int) -> LoadedBackbone:
    """An export of `fastdino export`: FILE.safetensors (timm state dict) and FILE.json (its metadata)."""
    from safetensors.torch import load_file

    from fastdino.models import create_backbone

    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: its metadata {meta_path} is missing (fastdino export writes "
                                f"both; it names the architecture)")
    meta = json.loads(meta_path.read_text())
    arch = meta.get("fastdino_arch")
    if not arch:
        raise ValueError(f"{meta_path} has no 'fastdino_arch': not a fastdino export")
    kwargs = meta.get("timm_kwargs", {})
    vit_kwargs = {"patch_size": kwargs["patch_size"], "img_size": kwargs.get("img_size", 224)} \
        if "patch_size" in kwargs else {}
    backbone = _seeded(seed, lambda: create_backbone(arch, **vit_kwargs))
    if not random_init:
        try:
            backbone.timm_model.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as e:
            raise ValueError(f"--checkpoint {path} does not fit arch {arch!r} {vit_kwargs} named in {meta_path}: "
                             f"{str(e).splitlines()[0]}") from e
    norm = meta.get("normalisation", {})
    mean, std = _normalisation(norm)
    epoch = meta.get("epoch")
    state = "random init" if random_init else f"exported, epoch {epoch}"
    return LoadedBackbone(backbone.eval(), arch, state, mean, std, random_init, str(path),
                          None if random_init else epoch)


def _normalisation(section: dict) -> tuple[tuple, tuple]:
    mean, std = section.get("mean") or IMAGENET_MEAN, section.get("std") or IMAGENET_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _seeded(seed: int, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth of a ViT backbone's blocks, linearly from 0 to `rate` (timm's and DINO's rule)."""
    from timm.layers import DropPath

    blocks = getattr(getattr(backbone, "timm_model", None), "blocks", None)
    if blocks is None or not isinstance(blocks, nn.Sequential | nn.ModuleList):
        if rate > 0:
            raise ValueError(f"--drop-path {rate}: only ViT backbones take it")
        return
    depth = len(blocks)
    for i, block in enumerate(blocks):
        r = rate * i / max(depth - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(r) if r > 0 else nn.Identity())
