"""The teacher backbone as a timm state dict in safetensors, with a metadata JSON beside it (`fastdino export`,
and the trainer's final export).

The teacher is the network DINO evaluates. Its timm model's state dict is written as is, so

    timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=FILE), num_classes=0, **KWARGS)

loads it strictly, offline, with ARCH and KWARGS from the metadata JSON (`FILE.json` beside `FILE.safetensors`).
The checkpoint may also come from the original DINO / DINO-MC code, or be a bare backbone state dict: it is
converted to timm's layout first (fastdino.models.convert) and the metadata records how. The trainer calls
`export_teacher` at the end of every run, so RUN/exported/ holds the final teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import fastdino
from fastdino.run_folder import run_folder_of

from .convert import checkpoint_info, load_backbone


def export_teacher(checkpoint: Path, output: Path | None = None, *, which: str = "teacher",
                   echo=None) -> tuple[Path, Path, dict]:
    """Write the teacher (or student) backbone's timm weights and metadata; returns (weights path, metadata path,
    metadata). echo: called with the conversion report."""
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else default_output(checkpoint, which)
    if output.suffix != ".safetensors":
        raise ValueError(f"--output {output} must end in .safetensors (timm picks the loader from the suffix)")
    loaded = load_backbone(checkpoint, which=which)
    if echo is not None:
        echo(loaded.conversion.describe())
    backbone, config = loaded.backbone, loaded.config
    # clone(): safetensors refuses tensors that share storage, and views of a flat EMA buffer do.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.timm_model.state_dict().items()}
    meta = metadata(backbone, config, checkpoint, state, loaded.conversion)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written and checked under a temporary name (still *.safetensors: timm picks its loader by suffix), then
    # renamed: a failed export never leaves a file that looks finished.
    tmp = output.with_name(f".{output.stem}.tmp.safetensors")
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": meta["architecture"]})
        verify_timm_load(tmp, meta, state)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    meta_path = metadata_path(output)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return output, meta_path, meta


def verify_timm_load(weights: Path, meta: dict, state: dict) -> None:
    """Run the printed loading line and compare every tensor: timm loads pretrained files non-strictly when
    num_classes differs from the pretrained config's, so a silent partial load is only caught by looking."""
    model = timm.create_model(meta["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                              num_classes=0, **meta["timm_kwargs"])
    loaded = model.state_dict()
    wrong = sorted(k for k in state if k not in loaded or not torch.equal(loaded[k].cpu(), state[k]))
    missing = sorted(set(loaded) - set(state))
    if wrong or missing:
        raise RuntimeError(f"export check failed: timm.create_model({meta['architecture']!r}, pretrained=True, ...) "
                           f"did not load {weights} exactly (differing: {wrong[:5]}, missing: {missing[:5]})")


def metadata(backbone, config: dict, checkpoint: Path, state: dict, conversion=None) -> dict:
    """What a user needs to rebuild and feed the backbone: timm name and kwargs, input, normalisation, provenance."""
    augment = config.get("augment", {})
    global_sizes = [g["size"] for g in augment.get("global_views", [])]
    kwargs = dict(backbone.timm_kwargs)
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ValueError(f"timm kwargs {kwargs!r} of {backbone.timm_name} are not JSON-serialisable: {e}") from e
    saved = checkpoint_info(checkpoint)
    return {
        "architecture": backbone.timm_name,
        "timm_kwargs": kwargs,
        "fastdino_arch": config.get("model", {}).get("arch"),
        "embed_dim": getattr(backbone, "embed_dim", None),
        "num_parameters": sum(v.numel() for v in state.values() if v.is_floating_point()),
        "in_chans": kwargs.get("in_chans", 3),
        # RGB sources decode to red, green, blue (SeCo: B4, B3, B2); multispectral runs name their Sentinel-2 bands
        "bands": list(augment.get("bands") or []) or ["red", "green", "blue"],
        "input_size": max(global_sizes) if global_sizes else None,
        # RGB: (pixel / 255 - mean) / std; multispectral: (value - mean) / std in the files' units (scale 1)
        "normalisation": {"mean": list(augment.get("mean", [])), "std": list(augment.get("std", [])),
                          "scale": 1 if augment.get("bands") else 255},
        "method": method(config),
        "preset": config.get("preset"),
        "data": {k: config.get("data", {}).get(k) for k in ("path", "list_file", "layout", "subset")},
        "epoch": saved.get("epoch"),
        "iteration": saved.get("iteration"),
        "source_checkpoint": str(checkpoint.resolve()),
        "fastdino_version": saved.get("fastdino_version") or fastdino.__version__,
        # How the weights were read (fastdino / DINO checkpoint / bare state dict, which network, prefixes) and the
        # position-embedding interpolation they expect at sizes other than the native img_size (timm's or DINO's).
        "conversion": {k: v for k, v in conversion.to_dict().items() if k != "path"} if conversion else None,
        "pos_embed_interp": (conversion.pos_embed_interp if conversion and conversion.arch.startswith("vit")
                             else None),
    }


def method(config: dict) -> str:
    """dino, dino-mc or dino-tp: what the config trained (temporal positives, else the augmentation recipe)."""
    if config.get("data", {}).get("temporal"):
        return "dino-tp"
    return "dino" if config.get("augment_preset") == "dino" else "dino-mc"


def metadata_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def default_output(checkpoint: Path, which: str = "teacher") -> Path:
    # RUN/checkpoints/last.pt -> RUN/exported/last_teacher_backbone.safetensors (the run folder's exported/).
    return run_folder_of(checkpoint) / "exported" / f"{checkpoint.stem}_{which}_backbone.safetensors"


def loading_snippet(weights: Path, meta: dict) -> str:
    kwargs = "".join(f", {k}={v!r}" for k, v in meta["timm_kwargs"].items())
    mean, std = meta["normalisation"]["mean"], meta["normalisation"]["std"]
    return (
        "import timm\n"
        f"model = timm.create_model({meta['architecture']!r}, pretrained=True,\n"
        f"                          pretrained_cfg_overlay=dict(file={str(weights.resolve())!r}),\n"
        f"                          num_classes=0{kwargs})\n"
        + (f"# input: {meta['in_chans']} x {meta['input_size']} x {meta['input_size']}, pixels / 255, "
           f"normalised with mean={mean} std={std}\n" if meta["normalisation"].get("scale", 255) == 255 else
           f"# input: {meta['in_chans']} bands ({', '.join(meta['bands'])}) x {meta['input_size']} x "
           f"{meta['input_size']}, values in the files' units, normalised per band with mean={mean} std={std}\n")
        + "features = model(images)  # [B, embed_dim] CLS features"
        + ("\n# trained with DINO's position-embedding interpolation: at sizes other than "
           f"{meta['timm_kwargs'].get('img_size', meta['input_size'])} px timm's own gives other features "
           "(fastdino's pos_embed_interp='dino' gives DINO's)" if meta.get("pos_embed_interp") == "dino" else "")
    )
