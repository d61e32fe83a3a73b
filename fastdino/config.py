"""Training configuration as data: nested dataclasses, the presets, and `merge_layers`, which merges defaults ->
preset -> config file -> command-line overrides.

Every layer is checked the same way: an unknown key or a wrong type is a `ConfigError` naming the key, the value
and the fix (with a did-you-mean), and `check_values` refuses numbers and choices that cannot run. Which archs,
bands, data layouts or signals exist is for the modules that build those to say: `fastdino.run_config.load_config`
merges with this module and then asks each of them (so this one imports nothing of fastdino). Derived values (the
learning rate scaled by the global batch) live in named functions, never in the stored config.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, wrong type or impossible value."""


@dataclass
class ModelConfig:
    """`create_backbone` keyword arguments plus `DINOHead` keyword arguments (out_dim, ...)."""

    arch: str = "vit_small"
    patch_size: int | None = 8
    img_size: int = 224
    depth: int | None = None  # ViT blocks; None: the arch's own (12 for vit_tiny / small / base)
    drop_path_rate: float = 0.1
    attn_backend: str = "auto"  # auto | xformers | sdpa (packed attention)
    grad_checkpointing: bool = False
    # ViT position embedding at other grids: timm | dino (the original code's interpolate_pos_encoding, for weights
    # trained by it: models/pos_embed.py)
    pos_embed_interp: str = "timm"
    in_chans: int = 3  # input channels: 3 (RGB), or len(data.bands), set when the bands are resolved (multispectral)
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True


BACKBONE_KEYS = ("arch", "patch_size", "img_size", "depth", "drop_path_rate", "attn_backend", "grad_checkpointing",
                 "pos_embed_interp", "in_chans")
HEAD_KEYS = ("out_dim", "hidden_dim", "bottleneck_dim", "nlayers", "norm_last_layer")


def backbone_kwargs(model: ModelConfig | dict) -> dict:
    """The `create_backbone(**kwargs)` part of a model config (dataclass or the plain dict of a checkpoint)."""
    m = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else model
    return {k: m[k] for k in BACKBONE_KEYS if k in m}


def head_kwargs(model: ModelConfig | dict) -> dict:
    """The `DINOHead(in_dim, **kwargs)` part of a model config."""
    m = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else model
    return {k: m[k] for k in HEAD_KEYS if k in m}


@dataclass
class DataConfig:
    path: str | None = None  # image folder, SeCo root, or the root the list file is relative to
    list_file: str | None = None  # optional file list (one relative path per line)
    layout: str = "auto"  # auto | files | folder | list | seco (see fastdino.dataloading.build_source)
    subset: float = 1.0  # fraction of the images used; SeCo: of the locations, by a seeded hash (docs/data.md)
    backend: str = "auto"  # pipeline backend: auto | dali | dali-gpu | dali-cpu | torch
    # DALI threads or DataLoader workers (0: load in the training process); "auto": 2 on CPU, on CUDA the rank's
    # share of the cores less one, at most 10 (fastdino.train.resolve_num_threads)
    num_threads: int | str = "auto"
    strict: bool = False  # True: a corrupt image is an error; False: skipped and counted
    # DALI, multispectral: processes that read the band files and draw each view's parameters (~5 ms per 12-band
    # image on the host, bench/test_host_cost.py); 0: in DALI's callback, one core's worth (~200 img/s)
    feed_workers: int = 0
    temporal: bool = False  # DINO-TP: a sample is a SeCo location, its views cut from 3 dates (augment_preset dino-tp)
    acquisitions: str = "one"  # SeCo without temporal: one (per location, seeded, as DINO-MC's MCBase) | all
    # Multispectral (docs/data.md "Multispectral"): Sentinel-2 band names [B4, B3, B2, B8, ...], a set (rgb, s2,
    # s2-12) or all (every band of the data); null: 8-bit RGB images. file_bands: the band order inside multi-band
    # files (eurosat-ms | esa | esa-12 | a list; prepared.json of `fastdino prepare` wins). stats: the JSON of
    # `fastdino stats` (null: <data.path>/band_stats.json), whose per-band mean / std normalise the bands.
    bands: list | str | None = None
    file_bands: list | str | None = None
    stats: str | None = None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd (DINO's `--optimizer`: torch.optim.SGD(momentum=0.9), main_dino.py L226-229)
    lr: float = 5e-4  # per 256 images; the run uses scaled_lr(config) = lr * global batch / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 10  # linear lr warm-up; a fraction of an epoch is allowed (rounded to whole steps)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # 0 turns clipping off
    clip_mode: str = "per_param"  # per_param (DINO: each tensor's norm <= clip_grad) | global_norm
    freeze_last_layer: int = 1  # epochs during which the head's last layer gets no update


@dataclass
class LossConfig:
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # cosine to 1 over training
    # DINOv2's KoLeo term on the student's global-view backbone features (kernels/koleo.py; DINOv2: 0.1). 0 = DINO.
    koleo_weight: float = 0.0
    # iBOT's masked-patch loss on the global views (kernels/ibot_loss.py; iBOT: 1.0). 0 = off. Each global crop is
    # masked with probability ibot_mask_prob, int(r x patches) of its patches, r ~ U(ibot_mask_ratio); the teacher's
    # patch temperature warms up from warmup_teacher_temp to ibot_teacher_temp like the CLS one.
    ibot_weight: float = 0.0
    ibot_mask_prob: float = 0.5
    ibot_mask_ratio: list = field(default_factory=lambda: [0.1, 0.5])
    ibot_teacher_temp: float = 0.07
    # How the teacher's targets are centred, CLS and patch alike: "centering" (DINO's running centre, EMA with
    # center_momentum) | "sinkhorn_knopp" (DINOv2's 3 Sinkhorn-Knopp iterations over the batch; kernels/sinkhorn.py)
    centering: str = "centering"
    ema_buffers: str = "none"  # teacher float buffers (BatchNorm statistics): none (DINO: its own) | copy | average
    backend: str = "auto"  # auto | triton | torch | reference (fastdino.kernels backends)


@dataclass
class RunConfig:
    epochs: int = 100
    batch_size: int = 64  # GLOBAL batch: summed over all GPUs / ranks (each rank gets batch_size / world_size)
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    # auto (bf16 on CUDA and on CPUs with native bf16, else fp32: fastdino.train.choose_precision) | bf16 | fp16 (with
    # a grad scaler) | fp32
    precision: str = "auto"
    compile: bool = False  # torch.compile the student and teacher forward
    checkpoint_every: int = 10  # epochs; the last epoch is always saved
    log_every: int = 10  # iterations between progress lines (each one is a host-device sync)
    output: str | None = None  # run folder; None -> runs/<preset>-<timestamp>
    # Step checkpoints (checkpoints/last.pt mid-epoch; docs/training.md "Preemption and resume"). A ViT-S/8 +
    # 65536-head checkpoint (student, teacher, AdamW moments) is 0.66 GiB and took 8 s to write on a heavily
    # loaded shared machine: every 15 minutes that is < 1% of a run, and a kill without warning loses <= 15 min.
    checkpoint_every_steps: int = 0  # also save every N steps (0: off)
    checkpoint_every_minutes: float = 15.0  # also save when this long has passed since the last save (0: off)
    max_steps: int | None = None  # stop after this many steps in all; the schedules still span run.epochs
    stop_signals: list = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # finish the step, save, exit 75
    tensorboard: bool = False  # also write RUN/tensorboard/ event files (pip install 'fastdino[tensorboard]')


@dataclass
class EvalConfig:
    """The online k-NN monitor (fastdino.eval.online): off unless knn_train and knn_val are set."""

    knn_train: str | None = None  # labelled list (ROOT/<class>/<image> paths, relative to knn_root): memory bank
    knn_val: str | None = None  # labelled list scored after every knn_every epochs (choose recipes on val, not test)
    knn_root: str | None = None  # folder the lists are relative to (None: data.path)
    knn_every: int = 1  # epochs between evaluations; the last epoch is always evaluated
    knn_every_steps: int = 0  # also evaluate every N steps inside an epoch (0: off): a curve for short runs
    knn_bank_size: int = 5000  # stratified subset of knn_train used as the memory bank (0: all of it)
    knn_k: int = 20  # DINO eval_knn.py defaults: 20 neighbours, vote weight exp(similarity / 0.07)
    knn_temperature: float = 0.07
    knn_image_size: int | None = None  # None: the largest global crop (what `fastdino eval` uses)
    knn_at_start: bool = False  # also score the initial weights before step 0: the level training must beat


@dataclass
class Config:
    preset: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: dict = field(default_factory=dict)  # dataloading.AugmentationSpec as a dict
    augment_preset: str = "dino-mc"  # the AugmentationSpec.preset the augment dict starts from
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


SECTIONS = ("model", "data", "optim", "loss", "run", "eval")


def scaled_lr(config: Config) -> float:
    """DINO's linear scaling rule: the peak learning rate grows with the GLOBAL batch (all ranks together)."""
    return config.optim.lr * config.run.batch_size / 256.0


# ----------------------------------------------------------------------------------------------------------
# Presets: each one is a nested dict of overrides on the defaults (same checks as a config file).

# pos_embed_interp "dino": DINO and DINO-MC resize the position embedding of every crop with the original
# interpolate_pos_encoding (facebookresearch/dino vision_transformer.py L174-194, the same lines in DINO-MC's
# utils/vision_transformer.py), whose features at 184 / 164 / 96 px differ from timm's antialiased resize.
_MC = {"model": {"arch": "vit_small", "patch_size": 8, "drop_path_rate": 0.1, "pos_embed_interp": "dino"},
       "augment_preset": "dino-mc", "run": {"epochs": 100, "batch_size": 64}}

PRESETS: dict[str, tuple[str, dict]] = {
    # DINO-MC's views, head and optimiser; its authors ran 300 epochs at batch 8 x 4 GPUs on SeCo-100K
    # (main_dino_mc.py L101, L103; their README): docs/training.md lists what differs. Their README at its latest
    # commit 4f8e519 lists the published DINO-MC and DINO-TP ViTs as ViT-S/8: this is the like-for-like preset.
    "dino-mc-vits8": ("DINO-MC's views and optimiser on ViT-S/8 (2x224 + 184..84 px, K=65536); 100 ep at batch 64, "
                      "not the authors' 300 at 32", _MC),
    "dino-mc-vits16": ("DINO-MC recipe on ViT-S/16 (4x fewer tokens than /8)",
                       {**_MC, "model": {**_MC["model"], "patch_size": 16}}),
    "dino-vits16": ("plain DINO: ViT-S/16, 2x224 + 96 px local crops, K=65536",
                    {**_MC, "model": {**_MC["model"], "patch_size": 16}, "augment_preset": "dino"}),
    "dino-tp-vits8": ("DINO-TP: SeCo locations, 3 teacher views from 3 dates drawn with replacement + 6 local crops",
                      {**_MC, "augment_preset": "dino-tp", "data": {"layout": "seco", "temporal": True}}),
    # facebookresearch/dino README.md, "ResNet-50 and other convnets trainings": --arch resnet50 --optimizer sgd
    # --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4 --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14
    # on 8 GPUs (x --batch_size_per_gpu 64, main_dino.py L90) for 100 epochs; all else main_dino.py's defaults
    # (= fastdino's). DINO-MC's six local crop sizes (augment preset dino-mc-resnet50). No drop-path (L176-177).
    "dino-mc-resnet50": ("DINO's ResNet-50 recipe (SGD, lr 0.03, wd 1e-4, batch 512) with DINO-MC's 6 local sizes",
                         {"model": {"arch": "resnet50", "patch_size": None, "drop_path_rate": 0.0},
                          "augment_preset": "dino-mc-resnet50",
                          "optim": {"name": "sgd", "lr": 0.03, "weight_decay": 1e-4, "weight_decay_end": 1e-4},
                          "run": {"epochs": 100, "batch_size": 512}}),
    # ViT-Tiny/8 at depth 4 with iBOT's masked-patch loss: 64 patches a 64 px view give the patch loss something
    # to predict, and a third of the blocks keeps 3 epochs of EuroSAT inside 30 minutes on 2 CPU cores. Ahead of the
    # 12-block /16 (the preset before) on EuroSAT val in 2 seeds (73.87 / 73.56 vs 71.20 / 70.52); neither change
    # alone is (docs/eval.md, "iBOT"). The position embedding keeps timm's resize (model.pos_embed_interp's
    # default): every EuroSAT number of this recipe in docs/eval.md was measured with it; DINO's was not tried here.
    "tiny": ("ViT-Tiny/8 at depth 4 + iBOT's patch loss, 64 px tiles, out_dim 4096: 2 CPU cores, 30 minutes",
             {"model": {"arch": "vit_tiny", "patch_size": 8, "depth": 4, "img_size": 64, "drop_path_rate": 0.0,
                        "out_dim": 4096, "hidden_dim": 512, "bottleneck_dim": 128},
              "augment_preset": "tiny",
              "data": {"num_threads": 1},  # one pipeline thread keeps up with ViT-Tiny on 2 cores (data wait ~1%)
              # 4x DINO's base lr: a few hundred steps at batch 32 barely move at 5e-4 (measured on the demo)
              # no frozen last layer: in a 4-epoch run the frozen epoch is a quarter of the budget (DINO: 1 of 100);
              # ahead on EuroSAT val at every epoch in 2 seeds of a 504-step screen (docs/eval.md)
              # half an epoch of warm-up (a sixth of the 3 epochs; DINO: 10 of 100): more steps at the peak lr,
              # ahead on EuroSAT val (74.41 vs 73.87, same seed; docs/eval.md, "iBOT")
              "optim": {"lr": 2e-3, "warmup_epochs": 0.5, "min_lr": 1e-5, "freeze_last_layer": 0},
              # DINOv2's KoLeo term at DINOv2's weight: ahead on EuroSAT val at every epoch of a full-length run and
              # of a screen, at no measurable cost per step (docs/eval.md, "KoLeo")
              "loss": {"koleo_weight": 0.1, "ibot_weight": 1.0},
              "run": {"epochs": 3, "batch_size": 32, "checkpoint_every": 1, "log_every": 5}}),
}
# tiny on Sentinel-2 multispectral tiles: every band of the data (EuroSAT-MS's 13, SeCo's 12), in_chans = their
# count, normalised with `fastdino stats`; multi-band files in EuroSAT-MS's band order (docs/data.md, Multispectral).
PRESETS["tiny-ms"] = ("tiny on all Sentinel-2 bands (13 of EuroSAT-MS, 12 of SeCo): in_chans = bands, 2 CPU cores",
                      {**PRESETS["tiny"][1], "data": {**PRESETS["tiny"][1]["data"], "bands": "all",
                                                      "file_bands": "eurosat-ms"}})
DEFAULT_PRESET = "tiny"


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) of every preset."""
    return [(name, desc) for name, (desc, _) in PRESETS.items()]


# ----------------------------------------------------------------------------------------------------------
# Merging


def merge_layers(preset: str | None = None, config_file: str | Path | None = None,
                 overrides: list[str] | dict | None = None, *, augment_base: Callable[[str], dict]) -> dict:
    """defaults -> preset -> config file -> overrides, in this order, as a plain nested dict (every key and type
    checked; the values are `check_values`'s and the rooms' to judge: fastdino.run_config.load_config).

    preset: a name from PRESETS (a config file may name one with a top-level `preset:` key; an explicit
    argument wins). overrides: `key=value` strings (`run.epochs=3`, or a leaf name that exists in one section
    only: `epochs=3`) or a nested dict. Values from the command line are parsed for the target's type.
    augment_base(name): the augment dict of the AugmentationSpec preset `augment_preset` names, which the layers'
    augment keys are merged onto (the spec belongs to the data pipelines).
    """
    file_layer = _read_config_file(config_file) if config_file is not None else {}
    preset = preset if preset is not None else file_layer.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (see `fastdino presets`)")
    cfg = plain(dataclasses.asdict(Config()))
    cfg["preset"] = preset
    _merge(cfg, PRESETS[preset][1], source=f"preset {preset!r}", from_cli=False)
    file_aug = file_layer.get("augment", {})
    _merge(cfg, {k: v for k, v in file_layer.items() if k not in ("augment", "preset")},
           source=f"config file {config_file}", from_cli=False)
    cli = _parse_overrides(overrides, cfg)
    cli_aug = cli.pop("augment", {})
    if "preset" in cli:
        raise ConfigError("--set preset=...: choose the preset with --preset NAME")
    _merge(cfg, cli, source="--set", from_cli=True)
    # The augment dict's base is the AugmentationSpec preset chosen above (a layer may change augment_preset).
    cfg["augment"] = augment_base(cfg["augment_preset"])
    if not isinstance(file_aug, dict):
        raise ConfigError(f"config file {config_file}: 'augment' must be a mapping of AugmentationSpec fields")
    _merge(cfg["augment"], file_aug, source=f"config file {config_file}", from_cli=False, prefix="augment.")
    _merge(cfg["augment"], cli_aug, source="--set", from_cli=True, prefix="augment.")
    return cfg


def config_from_dict(d: dict) -> Config:
    """A Config from a plain nested dict (config.yaml, a checkpoint's "config"); unknown keys are errors."""
    d = copy.deepcopy(d)
    base = plain(dataclasses.asdict(Config()))
    _merge(base, {k: v for k, v in d.items() if k != "augment"}, source="config", from_cli=False)
    kwargs = {name: _SECTION_TYPES[name](**base[name]) for name in SECTIONS}
    return Config(preset=base["preset"], augment=dict(d.get("augment", {})), augment_preset=base["augment_preset"],
                  **kwargs)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, one line for lists of numbers (`scale: [0.32, 1.0]`)."""


def _represent_list(dumper: yaml.SafeDumper, data: list):
    flat = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(config: Config) -> str:
    return yaml.dump(config.to_dict(), Dumper=_Dumper, sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(config))


def read_config(path: str | Path) -> Config:
    return config_from_dict(_read_config_file(path))


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """'key: a -> b' for every leaf that differs between two plain config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


_SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig,
                  "run": RunConfig, "eval": EvalConfig}


def _hints(name: str) -> dict[str, Any]:
    cls = Config if name == "" else _SECTION_TYPES[name]
    return typing.get_type_hints(cls)


def _read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (--config expects a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (sections model, data, optim, loss, run, eval, "
                          "augment)")
    return data


def _leaf_index(cfg: dict) -> dict[str, list[str]]:
    """leaf name -> dotted keys that end with it (for the short form `--set epochs=3`)."""
    index: dict[str, list[str]] = {}
    for section, value in cfg.items():
        if section == "preset":  # chosen with --preset, not --set (so not offered as a --set key either)
            continue
        if isinstance(value, dict) and section != "augment":
            for leaf in value:
                index.setdefault(leaf, []).append(f"{section}.{leaf}")
        else:
            index.setdefault(section, []).append(section)
    return index


def _parse_overrides(overrides: list[str] | dict | None, cfg: dict) -> dict:
    """`key=value` strings -> a nested dict of raw strings (parsed later for the target's type)."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return copy.deepcopy(overrides)
    nested: dict = {}
    index = _leaf_index(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set run.epochs=10")
        key, value = item.split("=", 1)
        key = key.strip()
        if key == "preset":
            raise ConfigError("--set preset=...: choose the preset with --preset NAME (see `fastdino presets`)")
        if "." not in key:
            matches = index.get(key, [])
            if len(matches) > 1:
                raise ConfigError(f"--set {key}: ambiguous, say which one: {', '.join(matches)}")
            if not matches:
                if isinstance(cfg.get(key), dict):
                    raise ConfigError(f"--set {key}: {key!r} is a section; set one of its keys, e.g. {key}.<key>=...")
                close = difflib.get_close_matches(key, list(index), n=3)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                raise ConfigError(f"--set {key}: unknown key; {hint}known keys: {', '.join(sorted(index))}")
            key = matches[0]
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def _merge(dst: dict, src: dict, *, source: str, from_cli: bool, prefix: str = "") -> None:
    """Write src's leaves into dst; every key must already exist in dst, every value must fit its type."""
    if not isinstance(src, dict):
        raise ConfigError(f"{source}: expected a mapping at {prefix or 'the top level'}, got {src!r}")
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if key not in dst:
            raise ConfigError(f"{source}: unknown key {dotted!r}{_suggest(key, dst)}; known keys here: "
                              f"{', '.join(sorted(dst))}")
        if isinstance(dst[key], dict) and not (prefix == "" and key == "augment"):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted!r} is a section; give its keys, e.g. {dotted}.<key>=...")
            section_prefix = f"{dotted}."
            _merge_section(dst[key], value, key if prefix == "" else None, source=source, from_cli=from_cli,
                           prefix=section_prefix)
        else:
            hint = _hints("").get(key) if prefix == "" else None
            dst[key] = _coerce(value, hint, dst[key], dotted, source, from_cli)


def _merge_section(dst: dict, src: dict, section: str | None, *, source: str, from_cli: bool, prefix: str) -> None:
    hints = _hints(section) if section in _SECTION_TYPES else {}
    if not isinstance(src, dict):
        raise ConfigError(f"{source}: expected a mapping at {prefix}, got {src!r}")
    for key, value in src.items():
        if key not in dst:
            raise ConfigError(f"{source}: unknown key {prefix + key!r}{_suggest(key, dst)}; known keys in "
                              f"{prefix[:-1]}: {', '.join(sorted(dst))}")
        dst[key] = _coerce(value, hints.get(key), dst[key], f"{prefix}{key}", source, from_cli)


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=2)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"null", "none", "~", ""}


def _coerce(value: Any, hint: Any, current: Any, key: str, source: str, from_cli: bool) -> Any:
    """value checked against the type hint (dataclass fields) or the current value's type (augment dict)."""
    if hint is None:  # augment: typed by the preset's value
        hint = type(current) if current is not None else Any
        if isinstance(current, list):
            hint = list
    if from_cli and isinstance(value, str) and hint in (list, dict, Any):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{source}: {key}={value!r} is not valid YAML") from None
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (from_cli and isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, current, key, source, from_cli)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: bad value for {key}")
    if hint is Any:
        return value
    want = getattr(hint, "__name__", str(hint))
    bad = ConfigError(f"{source}: {key} must be {want}, got {value!r} ({type(value).__name__})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string, in files too
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if hint in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise bad
    if hint is dict:
        if isinstance(value, dict):
            return value
        raise bad
    return value


def plain(obj: Any) -> Any:
    """Tuples -> lists, recursively, so that the dict round-trips through YAML and torch.load(weights_only)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------
# Impossible values (the choices of models, data, bands and signals: their own modules, via run_config.validate)


_CHOICES = {
    "optim.name": ("adamw", "sgd"),
    "optim.clip_mode": ("per_param", "global_norm"),
    "loss.ema_buffers": ("none", "copy", "average"),
    "loss.centering": ("centering", "sinkhorn_knopp"),
    "loss.backend": ("auto", "triton", "torch", "reference"),
    "run.precision": ("auto", "bf16", "fp16", "fp32"),
}


def check_values(config: Config) -> None:
    """Values that parse but cannot run whatever is built; each error names the key, the value and what works."""
    d = config.to_dict()

    def get(key):
        section, leaf = key.split(".")
        return d[section][leaf]

    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ConfigError(f"{key}={get(key)!r}: {what}")

    for key, choices in _CHOICES.items():
        need(get(key) in choices, key, f"choose one of {', '.join(choices)}")
    for key in ("run.epochs", "run.batch_size", "run.checkpoint_every", "run.log_every",
                "model.out_dim", "model.hidden_dim", "model.bottleneck_dim", "model.nlayers", "model.img_size"):
        need(get(key) > 0, key, "must be > 0")
    for key in ("eval.knn_every", "eval.knn_k", "eval.knn_temperature"):
        need(get(key) > 0, key, "must be > 0")
    need(get("eval.knn_image_size") is None or get("eval.knn_image_size") > 0, "eval.knn_image_size", "must be > 0")
    need(get("eval.knn_every_steps") >= 0, "eval.knn_every_steps", "must be >= 0 (0: only after epochs)")
    need(get("eval.knn_bank_size") >= 0, "eval.knn_bank_size", "must be >= 0 (0: the whole knn_train list)")
    for key in ("optim.lr", "loss.student_temp", "loss.teacher_temp", "loss.warmup_teacher_temp"):
        need(get(key) > 0, key, "must be > 0")
    for key in ("optim.min_lr", "optim.weight_decay", "optim.weight_decay_end", "optim.clip_grad",
                "optim.warmup_epochs", "optim.freeze_last_layer", "loss.warmup_teacher_temp_epochs", "run.seed",
                "run.checkpoint_every_steps", "run.checkpoint_every_minutes", "loss.koleo_weight"):
        need(get(key) >= 0, key, "must be >= 0")
    threads = get("data.num_threads")
    need(threads == "auto" or (isinstance(threads, int) and threads >= 0), "data.num_threads",
         "use auto or a number >= 0")
    need(get("run.max_steps") is None or get("run.max_steps") > 0, "run.max_steps", "must be > 0 (or null: no cap)")
    for key in ("loss.center_momentum", "loss.momentum_teacher", "loss.ibot_mask_prob"):
        need(0 <= get(key) <= 1, key, "must be in [0, 1]")
    need(get("loss.ibot_weight") >= 0, "loss.ibot_weight", "must be >= 0 (0: off)")
    need(get("loss.ibot_teacher_temp") > 0, "loss.ibot_teacher_temp", "must be > 0")
    ratio = get("loss.ibot_mask_ratio")
    need(isinstance(ratio, (list, tuple)) and len(ratio) == 2 and 0 <= ratio[0] <= ratio[1] < 1,
         "loss.ibot_mask_ratio", f"must be [low, high] with 0 <= low <= high < 1 (iBOT: [0.1, 0.5]), got {ratio!r}")
    need(0 < get("data.subset") <= 1, "data.subset", "must be in (0, 1] (a fraction of the images)")
    need(get("data.feed_workers") >= 0, "data.feed_workers", "must be >= 0 (0: no worker processes)")
    need(0 <= get("model.drop_path_rate") < 1, "model.drop_path_rate", "must be in [0, 1)")
    dev = get("run.device")
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "run.device",
         "use auto, cpu, cuda or cuda:N")
