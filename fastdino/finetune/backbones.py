"""The backbone a fine-tuning run starts from, read as `fastdino eval` reads it: a fastdino checkpoint, an original
DINO / DINO-MC checkpoint, a bare backbone state dict (all through fastdino.models.convert), an exported backbone
(`fastdino export`: timm safetensors + its metadata JSON), or an untrained one (`--random-init`).

DINO-MC fine-tunes the teacher (main_eurosat.py L81, --checkpoint_key teacher L260) of a ViT built with no
drop-path (the `vits.vit_small(patch_size=..., num_classes=...)` call of L33 leaves drop_path_rate at 0), so the
backbone's drop-path is set to `drop_path` (default 0) whatever the pretraining used.

A multispectral backbone (model.in_chans = its number of bands) carries its bands and per-band mean / std in the
files' units (fastdino.bands.resolve); the tasks then read those bands and normalise them with those statistics.
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
    mean: tuple[float, ...]  # the normalisation the weights were trained with: RGB in [0, 1] units, or per band
    std: tuple[float, ...]
    random_init: bool
    source: str | None  # the checkpoint or exported file
    checkpoint_epoch: int | None
    bands: tuple[str, ...] | None = None  # multispectral: the Sentinel-2 bands of the input channels, in order
    file_bands: str | list | None = None  # multispectral: the pretraining data's data.file_bands (multi-band files)
    conversion: dict | None = None  # what was read and how (fastdino.models.convert.Conversion.to_dict())

    @property
    def in_chans(self) -> int:
        return len(self.bands) if self.bands else 3


def load_backbone(checkpoint: Path | None, *, random_init: bool = False, arch: str | None = None,
                  patch_size: int | None = None, img_size: int = 224, seed: int = 0, which: str = "teacher",
                  pos_embed_interp: str | None = None, echo=None) -> LoadedBackbone:
    """Resolve --checkpoint / --random-init / --arch into a backbone; errors name the option at fault.

    With a checkpoint, --arch / --patch-size are what the caller expects (an error if it holds another, as in
    `fastdino eval`); --random-init then gives an untrained backbone of the checkpoint's architecture (the baseline
    `fastdino eval --random-init` reads against). Without a checkpoint, --random-init needs --arch.
    echo: called with the conversion report (what was read and how).
    """
    if checkpoint is None:
        if not random_init:
            raise ValueError("give --checkpoint (a fastdino checkpoint, a DINO / DINO-MC checkpoint.pth, a backbone "
                             "state dict or an exported .safetensors) or --random-init")
        if arch is None:
            raise ValueError("--random-init without --checkpoint needs --arch (e.g. vit_small --patch-size 8)")
        from fastdino.models import create_backbone

        backbone = _seeded(seed, lambda: create_backbone(arch, patch_size=patch_size, img_size=img_size))
        return LoadedBackbone(backbone, arch, "random init", IMAGENET_MEAN, IMAGENET_STD, True, None, None)
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    if checkpoint.suffix == ".safetensors" and _export_metadata(checkpoint) is not None:
        loaded = _load_exported(checkpoint, _export_metadata(checkpoint), random_init, seed, arch, patch_size,
                                pos_embed_interp)
    else:
        loaded = _load_converted(checkpoint, random_init, seed, which, arch, patch_size, pos_embed_interp)
    if echo is not None and loaded.conversion is not None:
        echo(_describe(loaded))
    return loaded


def backbone_from_args(args, *, random_init: bool, img_size: int, seed: int) -> LoadedBackbone:
    """load_backbone with the command's backbone options; prints what was read."""
    return load_backbone(args.checkpoint, random_init=random_init, arch=args.arch, patch_size=args.patch_size,
                         img_size=img_size, seed=seed, which=getattr(args, "checkpoint_key", "teacher"),
                         pos_embed_interp=getattr(args, "pos_embed", None), echo=print)


def _load_converted(path: Path, random_init: bool, seed: int, which: str, arch, patch_size,
                    pos_embed_interp) -> LoadedBackbone:
    """fastdino's, DINO's / DINO-MC's checkpoints and bare state dicts: fastdino.models.convert.load_backbone, the
    loader of `fastdino eval` / `export` / `viz`."""
    from fastdino.eval.teacher import random_init_like
    from fastdino.models.convert import load_backbone as convert_backbone

    loaded = convert_backbone(path, which=which, arch=arch, patch_size=patch_size, pos_embed_interp=pos_embed_interp)
    config, conversion = loaded.config, loaded.conversion
    backbone = random_init_like(config, seed) if random_init else loaded.backbone
    augment = config.get("augment", {})
    mean, std = _normalisation(augment)
    bands = tuple(augment.get("bands") or ()) or None
    epoch = conversion.epoch
    state = "random init" if random_init else (f"epoch {epoch}" if epoch is not None else "pretrained")
    return LoadedBackbone(backbone, conversion.arch, state, mean, std, random_init, str(path),
                          None if random_init else epoch, bands, config.get("data", {}).get("file_bands"),
                          conversion.to_dict())


def _export_metadata(path: Path) -> dict | None:
    """The metadata JSON `fastdino export` writes beside FILE.safetensors, or None (then the file is read as a bare
    state dict, as `fastdino eval` reads it)."""
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--checkpoint {path}: its metadata {meta_path} is not valid JSON ({e})") from e
    return meta if isinstance(meta, dict) and meta.get("fastdino_arch") else None


def _load_exported(path: Path, meta: dict, random_init: bool, seed: int, arch, patch_size,
                   pos_embed_interp) -> LoadedBackbone:
    """An export of `fastdino export`: FILE.safetensors (timm state dict) and FILE.json (architecture, input
    channels, bands, normalisation), so multispectral exports load too."""
    from safetensors.torch import load_file

    from fastdino.models import create_backbone
    from fastdino.models.convert import CheckpointError, load_into

    meta_path = path.with_suffix(".json")
    kwargs = meta.get("timm_kwargs", {})
    model_arch = meta["fastdino_arch"]
    for key, want, have in (("arch", arch, model_arch), ("patch_size", patch_size, kwargs.get("patch_size"))):
        if want is not None and want != have:
            raise CheckpointError(f"--checkpoint {path} holds a {model_arch}/{kwargs.get('patch_size')} backbone "
                                  f"({meta_path}), not the requested {key}={want!r}")
    build = {"in_chans": int(meta.get("in_chans", kwargs.get("in_chans", 3)))}
    if "patch_size" in kwargs:
        build.update(patch_size=kwargs["patch_size"], img_size=kwargs.get("img_size", 224),
                     pos_embed_interp=pos_embed_interp or meta.get("pos_embed_interp") or "timm")
    if "depth" in kwargs:  # a ViT with model.depth blocks (timm's kwargs name it only when set)
        build["depth"] = kwargs["depth"]
    backbone = _seeded(seed, lambda: create_backbone(model_arch, **build))
    if not random_init:
        load_into(backbone, load_file(str(path)), path, f"its weights ({model_arch} {build}, named in {meta_path})")
    norm = meta.get("normalisation", {})
    mean, std = _normalisation(norm)
    multispectral = norm.get("scale", 255) == 1
    bands = tuple(meta.get("bands") or ()) if multispectral else None
    epoch = meta.get("epoch")
    state = "random init" if random_init else f"exported, epoch {epoch}"
    file_bands = (meta.get("data") or {}).get("file_bands")
    return LoadedBackbone(backbone.eval(), model_arch, state, mean, std, random_init, str(path),
                          None if random_init else epoch, bands, file_bands,
                          {"source": "fastdino export", "metadata": str(meta_path), **build})


def _describe(loaded: LoadedBackbone) -> str:
    c = loaded.conversion
    if c.get("source") == "fastdino export":
        text = f"checkpoint {loaded.source}: fastdino export ({c['metadata']}), {loaded.arch}"
    else:
        kind = {"fastdino": "fastdino checkpoint", "dino": "DINO / DINO-MC training checkpoint",
                "state_dict": "bare backbone state dict"}.get(c.get("source"), c.get("source"))
        which = f", the {c['which']!r} network" if c.get("which") else ""
        text = f"checkpoint {loaded.source}: {kind}{which}, {loaded.arch}"
    if loaded.random_init:
        text += "; fine-tuned from an untrained backbone of that architecture (--random-init)"
    if loaded.bands:
        text += f"; multispectral input: {len(loaded.bands)} bands ({', '.join(loaded.bands)})"
    return text


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
