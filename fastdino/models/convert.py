"""Checkpoints in: fastdino's own, the original DINO / DINO-MC code's, or a bare backbone state dict, converted to
the timm layout fastdino's backbones use. `load_backbone` is the one entry point of eval, export and viz;
`init_twins` is train's `--init-from`; `checkpoint_info` reads a checkpoint's epoch and iteration alone.

What the original code writes (facebookresearch/dino main_dino.py, WennyXY/DINO-MC main_dino_mc.py: `save_dict`):
`{"student", "teacher", "optimizer", "epoch", "args", "dino_loss"[, "fp16_scaler"]}`. The student is
DDP(MultiCropWrapper(backbone, DINOHead)), so its keys read `module.backbone.<key>` / `module.head.<key>`; the teacher
is wrapped in DDP only when the network has BatchNorm (main_dino.py: `if utils.has_batchnorms(student)`), so a ViT
teacher reads `backbone.<key>`, a ResNet teacher `module.backbone.<key>`. `args` is an argparse.Namespace (allowed
when loading; nothing else outside tensors and plain values is). DINO's own loader strips `module.` and `backbone.`
(utils.py L77-80, `load_pretrained_weights`) and defaults to the teacher (eval_linear.py L257 `--checkpoint_key
teacher`); so does this one. Released backbones (`dino_vits8_pretrain.pth`, ...) are bare backbone state dicts.

Key mapping, after the prefixes are stripped:
- ViT (DINO's VisionTransformer, vision_transformer.py; DINO-MC's utils/vision_transformer.py is the same model):
  `cls_token`, `pos_embed` [1, 1 + n*n, D], `patch_embed.proj.{weight,bias}`, `blocks.N.norm1`, `blocks.N.attn.qkv`,
  `blocks.N.attn.proj`, `blocks.N.norm2`, `blocks.N.mlp.fc1`, `blocks.N.mlp.fc2`, `norm` are timm's
  VisionTransformer names one to one (same shapes; LayerNorm eps 1e-6, qkv bias, GELU, 4x MLP in both), so the
  mapping is the identity. `head.*` is the DINO projection head (or a classifier): not part of the backbone.
- ResNet-50 / WRN-50-2 (torchvision models in DINO): torchvision's names (`conv1`, `bn1`, `layerL.B.conv1..3`,
  `bnK`, `downsample.0/1`) are timm's resnet names, BatchNorm buffers included; `fc.*` is dropped
  (MultiCropWrapper sets it to Identity, so training checkpoints have none).
- DINO head -> fastdino DINOHead (train --init-from only): `mlp.*` unchanged; the weight-normalised last layer's
  `last_layer.weight_g` / `weight_v` (torch.nn.utils.weight_norm) become `last_layer.parametrizations.weight.
  original0` / `original1` (torch's parametrization).
Architecture and patch size come from the shapes (embed dim -> ViT size, patch_embed kernel -> patch, position
table -> native size; ResNet width -> resnet50 or wide_resnet50_2), and are checked against what was asked for.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from fastdino.config import backbone_kwargs, config_from_dict, head_kwargs

from .factory import create_backbone
from .inflate import RULE, inflate_state

_VIT_WIDTHS = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}
_VIT_DEPTH = 12  # timm's vit_tiny/small/base and DINO's ViTs have 12 blocks; fastdino's model.depth may set fewer
_RESNET_BLOCKS = [3, 4, 6, 3]  # ResNet-50 and WRN-50-2
_STRIPPED = ("module.", "backbone.")  # DINO's load_pretrained_weights, utils.py L77-80
_HEAD_RENAMES = {"last_layer.weight_g": "last_layer.parametrizations.weight.original0",
                 "last_layer.weight_v": "last_layer.parametrizations.weight.original1"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file, what it holds and the fix."""


@dataclass
class Conversion:
    """What was read from a checkpoint and how: printed by every command that loads one."""

    path: Path
    source: str  # "fastdino" | "dino" (a DINO / DINO-MC training checkpoint) | "state_dict" (a bare backbone)
    which: str | None  # the dict used: teacher | student | None (a bare state dict)
    arch: str
    patch_size: int | None
    img_size: int
    pos_embed_interp: str
    n_tensors: int = 0  # tensors loaded into the backbone
    stripped: dict[str, int] = field(default_factory=dict)  # prefix -> keys it was stripped from
    dropped: dict[str, int] = field(default_factory=dict)  # what was not loaded -> tensor count
    epoch: int | None = None

    def describe(self) -> str:
        kind = {"fastdino": "fastdino checkpoint", "dino": "DINO / DINO-MC training checkpoint",
                "state_dict": "bare backbone state dict"}[self.source]
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        lines = [f"checkpoint {self.path}: {kind}{epoch}"]
        what = f"the {self.which!r} state dict" if self.which else "the state dict"
        prefixes = ", ".join(f"{p!r} ({n} keys)" for p, n in self.stripped.items()) or "none"
        model = f"{self.arch}/{self.patch_size} at {self.img_size} px" if self.patch_size else self.arch
        lines.append(f"  converted {what}: prefixes stripped: {prefixes}; {self.n_tensors} tensors -> "
                     f"{model} (timm layout)")
        if self.dropped:
            lines.append("  not loaded: " + ", ".join(f"{k} ({n} tensors)" for k, n in self.dropped.items()))
        if self.arch.startswith("vit"):
            how = ("DINO's interpolate_pos_encoding (bicubic by scale factor (g+0.1)/n, no antialias)"
                   if self.pos_embed_interp == "dino" else "timm's (bicubic, antialiased)")
            lines.append(f"  position embedding at other sizes: {how}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "source": self.source, "which": self.which, "arch": self.arch,
                "patch_size": self.patch_size, "img_size": self.img_size, "pos_embed_interp": self.pos_embed_interp,
                "n_tensors": self.n_tensors, "stripped": dict(self.stripped), "dropped": dict(self.dropped),
                "epoch": self.epoch}


@dataclass
class LoadedBackbone:
    backbone: nn.Module  # in eval mode, on the CPU
    config: dict  # a resolved fastdino config (the checkpoint's, or one built for an original checkpoint)
    conversion: Conversion


# ----------------------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> Any:
    """torch.load with weights_only=True and argparse.Namespace allowed (the original code saves its `args`);
    *.safetensors files are read as a bare state dict. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist (a fastdino RUN/checkpoints/last.pt, a DINO / "
                                "DINO-MC checkpoint.pth, or a backbone state dict)")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:  # mmap needs the zip format (torch >= 1.6 writes it); older files load whole
                if not mmap or "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {str(e)[:400]})") from e


def checkpoint_info(path: str | Path) -> dict:
    """epoch (the next one to run, i.e. epochs done), iteration and fastdino_version of a checkpoint (None where the
    file has no such entry: a DINO checkpoint has no iteration, a bare state dict none of them).

    Memory-mapped: only these small entries are read, not the optimiser state."""
    saved = read_checkpoint(path, mmap=True)
    keys = ("epoch", "iteration", "fastdino_version")
    return {k: saved.get(k) if isinstance(saved, dict) and not isinstance(saved.get(k), torch.Tensor) else None
            for k in keys}


def is_fastdino(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and "config" in ckpt and "teacher" in ckpt and "fastdino_version" in ckpt


def checkpoint_epoch(ckpt: Any) -> int | None:
    """Epochs done: fastdino's and DINO's `epoch` both hold the next epoch to run (main_dino.py: epoch + 1)."""
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


# ----------------------------------------------------------------------------------------------------------
# Key layout


def pick_state_dict(ckpt: Any, which: str, path: Path) -> tuple[dict, str | None]:
    """(state dict, the dict's name) of a training checkpoint's teacher / student, or the bare state dict."""
    if which not in ("teacher", "student"):
        raise ValueError(f"--checkpoint-key must be teacher or student, got {which!r}")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    if "teacher" in ckpt or "student" in ckpt:
        if which not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {which!r} entry (it has: {', '.join(map(str, ckpt))})")
        state = ckpt[which]
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path}: {which!r} is a {type(state).__name__}, not a state dict")
        return state, which
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds neither 'teacher'/'student' state dicts nor tensors (its "
                              f"entries: {', '.join(map(str, list(ckpt)[:8]))})")
    return ckpt, None


def strip_prefixes(state: dict) -> tuple[dict, dict[str, int]]:
    """Leading `module.` (DDP) and `backbone.` (MultiCropWrapper) removed, in any order; counts per prefix.
    DINO's loader replaces them anywhere in the key (utils.py L78, L80); no ViT or ResNet key holds them inside."""
    out, counts = {}, {}
    for key, value in state.items():
        k = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIPPED:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    counts[prefix] = counts.get(prefix, 0) + 1
                    stripped = True
        out[k] = value
    return out, counts


def split_head(state: dict) -> tuple[dict, dict]:
    """(backbone entries, head entries with `head.` removed)."""
    backbone = {k: v for k, v in state.items() if not k.startswith("head.")}
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    return backbone, head


@dataclass(frozen=True)
class Detected:
    arch: str
    patch_size: int | None
    img_size: int
    evidence: str  # the shapes it was read from, for error messages
    depth: int | None = None  # a ViT's blocks when not the arch's 12 (fastdino's model.depth), else None


def detect_architecture(state: dict, path: Path) -> Detected:
    """The fastdino arch of a backbone state dict in DINO / torchvision / timm names, from its shapes."""
    if "pos_embed" in state and "patch_embed.proj.weight" in state:
        return _detect_vit(state, path)
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return _detect_resnet(state, path)
    if any(k.startswith("features.0.0.") for k in state):
        raise CheckpointError(f"checkpoint {path} holds a torchvision Swin / ConvNeXt-style backbone (features.0.0.*, "
                              "e.g. DINO-MC's swin_t); fastdino converts ViTs and ResNet-50 / WRN-50-2 only")
    sample = ", ".join(list(state)[:6])
    raise CheckpointError(f"checkpoint {path}: cannot tell the architecture of its backbone (first keys: {sample}); "
                          "fastdino converts DINO ViTs (cls_token, pos_embed, patch_embed.proj, blocks.N...) and "
                          "torchvision ResNet-50 / WRN-50-2")


def _detect_vit(state: dict, path: Path) -> Detected:
    proj = state["patch_embed.proj.weight"]  # [D, C, p, p]
    dim, chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    evidence = f"patch_embed.proj.weight {list(proj.shape)}, pos_embed {list(state['pos_embed'].shape)}"
    if dim not in _VIT_WIDTHS:
        raise CheckpointError(f"checkpoint {path}: a ViT of width {dim} ({evidence}); fastdino has "
                              + ", ".join(f"{a} ({d})" for d, a in _VIT_WIDTHS.items()))
    if chans != 3:
        raise CheckpointError(f"checkpoint {path}: a ViT with {chans} input channels ({evidence}); fastdino is RGB")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth < 1:
        raise CheckpointError(f"checkpoint {path}: a ViT without blocks.N.* tensors ({evidence})")
    n = state["pos_embed"].shape[1] - 1  # DINO's table: CLS position + an n x n patch grid
    grid = math.isqrt(n)
    if grid * grid != n:
        raise CheckpointError(f"checkpoint {path}: its position table has {n} patch entries, not a square grid "
                              f"({evidence})")
    return Detected(_VIT_WIDTHS[dim], patch, grid * patch, f"{evidence}, {depth} blocks",
                    None if depth == _VIT_DEPTH else depth)


def _detect_resnet(state: dict, path: Path) -> Detected:
    blocks = [len({int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in (1, 2, 3, 4)]
    width = state["layer1.0.conv1.weight"].shape[0]
    evidence = f"blocks per stage {blocks}, layer1.0.conv1.weight {list(state['layer1.0.conv1.weight'].shape)}"
    if blocks != _RESNET_BLOCKS or width not in (64, 128):
        raise CheckpointError(f"checkpoint {path}: a ResNet with {evidence}; fastdino converts ResNet-50 "
                              f"({_RESNET_BLOCKS}, width 64) and WRN-50-2 (width 128)")
    return Detected("resnet50" if width == 64 else "wide_resnet50_2", None, 224, evidence)


def convert_head(head: dict, path: Path) -> dict:
    """DINO's DINOHead state (weight_norm's weight_g / weight_v) in fastdino DINOHead names."""
    if any(".running_mean" in k for k in head):
        raise CheckpointError(f"checkpoint {path}: its DINO head has BatchNorm layers (use_bn_in_head=True), which "
                              "fastdino's DINOHead does not have")
    return {_HEAD_RENAMES.get(k, k): v for k, v in head.items()}


# ----------------------------------------------------------------------------------------------------------
# Building


def _fastdino_config_for(detected: Detected, pos_embed_interp: str, args: Any) -> dict:
    """A resolved fastdino config for an original checkpoint: its model, DINO-MC's or DINO's augmentation (global
    crops 224 px, bicubic, ImageNet mean / std), so eval and export know the input."""
    # Not at the top: load_config has every room check the config (the data pipelines too), and importing
    # fastdino.models loads no data code; only checkpoints of the original code need a preset resolved.
    from fastdino.run_config import load_config

    mode = getattr(args, "data_mode", None)  # DINO-MC's main_dino_mc.py --data_mode dino | mc | tp
    preset = "dino-mc-vits8" if mode in ("mc", "tp") else "dino-vits16"
    model = {"arch": detected.arch, "patch_size": detected.patch_size, "img_size": detected.img_size,
             "depth": detected.depth, "pos_embed_interp": pos_embed_interp, "drop_path_rate": 0.0}
    config = load_config(preset, overrides={"model": model}).to_dict()
    config["preset"] = None  # not a fastdino preset's run
    return config


def _check_requested(detected: Detected, arch: str | None, patch_size: int | None, path: Path, fix: str) -> None:
    asked = [(k, v, getattr(detected, k)) for k, v in (("arch", arch), ("patch_size", patch_size))
             if v is not None and v != getattr(detected, k)]
    if asked:
        want = ", ".join(f"{k}={v!r}" for k, v, _ in asked)
        have = f"{detected.arch}" + (f"/{detected.patch_size}" if detected.patch_size else "")
        raise CheckpointError(f"checkpoint {path} holds a {have} backbone at {detected.img_size} px "
                              f"({detected.evidence}), not the requested {want}; {fix}")


def load_into(backbone: nn.Module, state: dict, path: Path, what: str) -> int:
    """Strict load into the backbone's timm model; a mismatch names the keys. Returns the tensors loaded."""
    target = backbone.timm_model
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        detail = "; ".join(f"{name}: {keys[:4]}" for name, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys)
        raise CheckpointError(f"checkpoint {path}: {what} does not fit {backbone.timm_name} ({detail})")
    target.load_state_dict(state, strict=True)
    return len(state)


def load_backbone(path: str | Path, *, which: str = "teacher", arch: str | None = None, patch_size: int | None = None,
                  pos_embed_interp: str | None = None) -> LoadedBackbone:
    """The backbone (eval mode, CPU) of any supported checkpoint, its fastdino config and what was converted.

    which: the teacher (default: the network DINO evaluates) or the student. arch / patch_size: what the caller
    expects; a checkpoint holding something else is an error. pos_embed_interp: timm | dino; default: the run's
    config for fastdino checkpoints, DINO's interpolation for original ones (their features at every size).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    fix = "pass the checkpoint of that model, or leave --arch / --patch-size unset"
    if is_fastdino(ckpt):
        return _load_fastdino(ckpt, path, which, arch, patch_size, pos_embed_interp, fix)
    state, used = pick_state_dict(ckpt, which, path)
    state, stripped = strip_prefixes(state)
    backbone_state, head = split_head(state)
    dropped = {"head.* (the DINO projection head)" if used else "head.* (a classifier)": len(head)} if head else {}
    fc = {k: v for k, v in backbone_state.items() if k.startswith("fc.")}
    if fc:
        backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
        dropped["fc.* (the classifier)"] = len(fc)
    detected = detect_architecture(backbone_state, path)
    _check_requested(detected, arch, patch_size, path, fix)
    interp = pos_embed_interp or ("dino" if detected.arch.startswith("vit") else "timm")
    config = _fastdino_config_for(detected, interp, ckpt.get("args"))
    backbone = create_backbone(**backbone_kwargs(config["model"]))
    n = load_into(backbone, backbone_state, path, f"its {used or 'backbone'} weights")
    conversion = Conversion(path, "dino" if used else "state_dict", used, detected.arch, detected.patch_size,
                            detected.img_size, interp, n, stripped, dropped, checkpoint_epoch(ckpt))
    return LoadedBackbone(backbone.eval(), config, conversion)


def _load_fastdino(ckpt: dict, path: Path, which: str, arch, patch_size, pos_embed_interp, fix) -> LoadedBackbone:
    if which not in ("teacher", "student"):
        raise ValueError(f"--checkpoint-key must be teacher or student, got {which!r}")
    config = ckpt["config"]
    model = config.get("model", {})
    if pos_embed_interp is not None:
        model["pos_embed_interp"] = pos_embed_interp
    for key, want in (("arch", arch), ("patch_size", patch_size)):
        if want is not None and model.get(key) != want:
            raise CheckpointError(f"checkpoint {path} is a fastdino {model.get('arch')}/{model.get('patch_size')} "
                                  f"run, not the requested {key}={want!r}; {fix}")
    backbone = create_backbone(**backbone_kwargs(model))
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ckpt[which].items() if k.startswith(prefix)}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        details = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise CheckpointError(
            f"checkpoint {path}: its {which} weights do not fit arch {model.get('arch')!r} "
            f"(patch_size={model.get('patch_size')}, img_size={model.get('img_size')}) named in its config; "
            f"was it trained with another architecture? {details}") from e
    n_head = sum(1 for k in ckpt[which] if k.startswith("head."))
    conversion = Conversion(path, "fastdino", which, model.get("arch"), model.get("patch_size"),
                            model.get("img_size", 224), model.get("pos_embed_interp", "timm"), len(state),
                            {prefix: len(state)}, {"head.* (the DINO projection head)": n_head} if n_head else {},
                            checkpoint_epoch(ckpt))
    return LoadedBackbone(backbone.eval(), config, conversion)


# ----------------------------------------------------------------------------------------------------------
# train --init-from


def _with_own_mask_token(state: dict, own: dict) -> dict:
    """A twin's checkpoint state with iBOT's mask token made to fit this run: kept as built when the checkpoint has
    none (trained without loss.ibot_weight), dropped when this run has none. Every other key loads strictly."""
    state = {k: v for k, v in state.items() if not k.startswith("mask_token.") or k in own}
    return {**state, **{k: v for k, v in own.items() if k.startswith("mask_token.") and k not in state}}


def init_twins(path: str | Path, student: nn.ModuleDict, teacher: nn.ModuleDict, model_config, echo=print,
               bands=None) -> None:
    """Copy a checkpoint's weights into freshly built student and teacher `ModuleDict(backbone, head)` twins.

    fastdino checkpoints load whole (the model.* keys that shape the weights must match). Original training
    checkpoints give the student its `student` and the teacher its `teacher` (backbone and, when its shapes fit,
    head); a bare backbone state dict initialises both backbones and leaves the (identical) heads as built. An RGB
    checkpoint into a multispectral model (model.in_chans = len(bands)) has its input layer inflated
    (fastdino/models/inflate.py: RGB onto B4 / B3 / B2, zeros elsewhere).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    if is_fastdino(ckpt):
        old = config_from_dict(ckpt["config"]).model
        shape_keys = ("arch", "patch_size", "img_size", "depth", *head_kwargs(old))  # what the shapes depend on
        if any(getattr(old, k) != getattr(model_config, k) for k in shape_keys):
            raise ValueError(f"--init-from {path}: its model ({old.arch}/{old.patch_size}, depth {old.depth}, "
                             f"K={old.out_dim}) is not this run's ({model_config.arch}/{model_config.patch_size}, "
                             f"depth {model_config.depth}, K={model_config.out_dim}); set the same model.* keys")
        states = {"student": ckpt["student"], "teacher": ckpt["teacher"]}
        if old.in_chans != model_config.in_chans:
            states = {k: _inflated(v, old.in_chans, model_config.in_chans, bands, path, "backbone.timm_model.", echo)
                      for k, v in states.items()}
        for twin, name in ((student, "student"), (teacher, "teacher")):
            twin.load_state_dict(_with_own_mask_token(states[name], twin.state_dict()))
        if any(k.startswith("mask_token.") for k in student.state_dict()) and \
                not any(k.startswith("mask_token.") for k in states["student"]):
            echo(f"  iBOT's mask token as built: {path} was trained without loss.ibot_weight")
        echo(f"initialised student and teacher weights from {path} (optimiser and schedules start fresh)")
        return
    sources = ("student", "teacher") if isinstance(ckpt, dict) and ("teacher" in ckpt or "student" in ckpt) else None
    for twin, which in ((student, "student"), (teacher, "teacher")):
        state, used = pick_state_dict(ckpt, which if sources else "teacher", path)
        state, stripped = strip_prefixes(state)
        backbone_state, head = split_head(state)
        backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
        detected = detect_architecture(backbone_state, path)
        vit = model_config.arch.startswith("vit")
        patch = model_config.patch_size if vit else None
        size = model_config.img_size if vit else detected.img_size  # a CNN has no native size
        depth = model_config.depth if vit else None
        if (detected.arch, detected.patch_size, detected.img_size, detected.depth) != (model_config.arch, patch, size,
                                                                                        depth):
            have = detected.arch + (f"/{detected.patch_size} at {detected.img_size} px" if detected.patch_size else "")
            ours = model_config.arch + (f"/{patch} at {model_config.img_size} px" if vit else "")
            fix = f"model.arch={detected.arch}" + (f" model.patch_size={detected.patch_size} "
                                                  f"model.img_size={detected.img_size}" if detected.patch_size else "")
            if vit or detected.depth is not None:
                fix += f" model.depth={'null' if detected.depth is None else detected.depth}"
            raise CheckpointError(f"--init-from {path}: it holds a {have} backbone ({detected.evidence}), not this "
                                  f"run's {ours}; set --set {fix}")
        if model_config.in_chans != 3:  # original checkpoints are RGB
            backbone_state = _inflated(backbone_state, 3, model_config.in_chans, bands, path, "", echo)
        n = load_into(twin["backbone"], backbone_state, path, f"its {used or 'backbone'} weights")
        note = "head as built (not in the file)"
        if head and used:
            head = convert_head(head, path)
            own = twin["head"].state_dict()
            bad = sorted(k for k in set(own) | set(head) if k not in own or k not in head
                         or tuple(own[k].shape) != tuple(head[k].shape))
            if bad:
                v = head.get("last_layer.parametrizations.weight.original1")
                found = f"out_dim={v.shape[0]}, bottleneck_dim={v.shape[1]}" if v is not None else "another layout"
                raise CheckpointError(f"--init-from {path}: its {used} head ({found}) does not fit this run's head "
                                      f"(model.out_dim={model_config.out_dim}, hidden_dim={model_config.hidden_dim}, "
                                      f"bottleneck_dim={model_config.bottleneck_dim}, nlayers={model_config.nlayers}); "
                                      f"first differing keys: {bad[:3]}")
            twin["head"].load_state_dict(head, strict=True)
            note = f"head: {len(head)} tensors (weight_g/weight_v -> parametrizations.weight.original0/1)"
        prefixes = ", ".join(f"{p!r}" for p in stripped) or "none"
        echo(f"{which}: {n} backbone tensors from {path}" + (f" [{used!r}]" if used else " [bare state dict]")
             + f", prefixes stripped: {prefixes}; {note}")
    echo(f"initialised student and teacher weights from {path} (optimiser and schedules start fresh)")
    if model_config.arch.startswith("vit") and model_config.pos_embed_interp != "dino":
        echo("note: weights from the original code were trained with DINO's position-embedding interpolation; "
             "--set model.pos_embed_interp=dino keeps their features at every crop size")


def _inflated(state: dict, old_chans: int, new_chans: int, bands, path: Path, prefix: str, echo) -> dict:
    """An RGB state dict with its input layer inflated to the run's bands (fastdino/models/inflate.py)."""
    if old_chans != 3 or not bands or len(bands) != new_chans:
        raise CheckpointError(f"--init-from {path}: its backbone takes {old_chans} input channels, this run's "
                              f"{new_chans}; only RGB (3-channel) weights are inflated to a run's bands")
    state, changed = inflate_state(state, bands, prefix)
    if not changed:
        raise CheckpointError(f"--init-from {path}: no RGB input layer ({prefix}patch_embed.proj.weight or "
                              f"{prefix}conv1.weight) to inflate to {new_chans} bands")
    echo(f"inflated {', '.join(changed)} from RGB to {new_chans} bands ({', '.join(bands)}): {RULE}")
    return state
