"""`fastdino export`: the teacher backbone as a timm state dict in safetensors, with a metadata JSON beside it
(fastdino.models.export writes them; this module is the command's options and messages)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastdino.models.export import export_teacher, loading_snippet

from .backbone_args import add_backbone_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser, action="export", checks=False)
    parser.add_argument("--output", type=Path,
                        help="FILE.safetensors (default: RUN/exported/<checkpoint stem>_teacher_backbone.safetensors)")


def run(args: argparse.Namespace) -> int:
    try:
        weights, meta_path, meta = export_teacher(args.checkpoint, args.output, which=args.checkpoint_key,
                                                  echo=print)
    except (FileNotFoundError, ValueError) as e:
        print(f"fastdino export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {weights} ({meta['num_parameters'] / 1e6:.2f}M parameters) and {meta_path}")
    print("load it with timm (offline):\n")
    print(loading_snippet(weights, meta))
    return 0
