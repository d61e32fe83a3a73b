"""`fastdino finetune classify|multilabel|change`: DINO-MC's downstream tasks on a pretrained backbone.

Each task module has `add_arguments(parser)` (its data options), `PRESET` (the authors' defaults, which every
recipe option below overrides) and `run(args) -> int`. Options left unset take the preset's value.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from fastdino.finetune.common import default_workers
from fastdino.run_folder import run_folder_of

from .backbone_args import add_backbone_arguments

TASKS = {
    "classify": ("fastdino.finetune.classify", "single-label scene classification (EuroSAT; DINO-MC main_eurosat.py)"),
    "multilabel": ("fastdino.finetune.multilabel",
                   "multi-label classification, BigEarthNet 19 classes (DINO-MC main_bigearthnet.py)"),
    "change": ("fastdino.finetune.change", "change detection on OSCD image pairs (DINO-MC main_oscd.py)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, (module_name, help_text) in TASKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        _add_common(p, module.PRESET)
        p.set_defaults(_task_module=module_name)


def _add_common(p: argparse.ArgumentParser, preset: dict) -> None:
    add_backbone_arguments(p, action="fine-tune", required=False, exported=True, random_init=True,
                           title="backbone (read as `fastdino eval` reads it)")
    r = p.add_argument_group("recipe (unset: the DINO-MC preset, in brackets)")
    r.add_argument("--epochs", type=int, help=f"training epochs [{preset['epochs']}]")
    r.add_argument("--batch-size", type=int, help=f"images per step [{preset['batch_size']}]")
    scaled = " per 256 images (scaled by batch/256)" if preset.get("scale_lr", True) else ""
    r.add_argument("--lr", dest="base_lr", type=float, help=f"learning rate{scaled} [{preset['base_lr']:g}]")
    r.add_argument("--weight-decay", type=float, help=f"[{preset['weight_decay']:g}]")
    r.add_argument("--img-size", type=int,
                   help=f"input side in px (change: the tile side) [{preset['img_size']}]; e.g. 64 for a small CPU "
                        f"budget")
    r.add_argument("--drop-path", type=float, help=f"ViT stochastic depth [{preset['drop_path']:g}]")
    r.add_argument("--seed", type=int, help=f"[{preset['seed']}]")
    o = p.add_argument_group("run")
    o.add_argument("--output", type=Path,
                   help="run folder (default: RUN/finetune/<task>[_random-init] beside --checkpoint)")
    o.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    o.add_argument("--overwrite", action="store_true", help="start again in a non-empty --output")
    o.add_argument("--num-workers", type=int, default=default_workers(), help="DataLoader worker processes")
    o.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    o.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice, every core); 1 is much faster on a CPU that "
                        "other jobs share")
    o.add_argument("--log-every", type=int, default=20, help="steps between progress lines")


def run(args: argparse.Namespace) -> int:
    if args.output is None:
        if args.checkpoint is None:
            return _error(args.task, "--output is required without --checkpoint")
        args.output = default_output(args.checkpoint, args.task, args.random_init)
    if args.resume and args.overwrite:
        return _error(args.task, "--resume and --overwrite contradict each other: choose one")
    if args.threads is not None:
        if args.threads < 1:
            return _error(args.task, f"--threads {args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    try:
        return importlib.import_module(args._task_module).run(args)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        return _error(args.task, str(e))


def default_output(checkpoint: Path, task: str, random_init: bool) -> Path:
    return run_folder_of(checkpoint) / "finetune" / f"{task}{'_random-init' if random_init else ''}"


def _error(task: str, message: str) -> int:
    print(f"fastdino finetune {task}: error: {message}", file=sys.stderr)
    return 2
