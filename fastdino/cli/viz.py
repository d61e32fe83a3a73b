"""`fastdino viz attention|curves`: DINO's attention maps and the training curves as PNG files.

attention: the last block's CLS-to-patch attention of the teacher, one panel per head (plus their mean),
           each overlaid on the image, in one PNG grid whose size follows from the panel size
           (fastdino.monitor.attention_maps).
curves:    RUN/metrics.jsonl -> the total loss and its logged terms, the online k-NN accuracy when the run logged it,
           learning rate (and weight decay), teacher momentum and teacher temperature against the iteration
           (fastdino.monitor.curves, what the trainer calls at the end of a run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastdino.monitor.attention_maps import attention_figure
from fastdino.monitor.curves import plot_curves


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    att = sub.add_parser("attention", help="last-block CLS attention per head, overlaid on an image")
    att.add_argument("--checkpoint", required=True, type=Path,
                     help="a fastdino checkpoint (RUN/checkpoints/last.pt), a DINO / DINO-MC one, or a state dict")
    att.add_argument("--image", required=True, type=Path,
                     help="the image to look at (multispectral checkpoints: a multi-band TIFF or .npy, drawn as an "
                     "RGB composite of B4, B3, B2)")
    att.add_argument("--output", type=Path, help="PNG (default: RUN/plots/attention_<image stem>.png)")
    att.add_argument("--image-size", type=int, help="backbone input size (default: the config's global crop)")
    att.add_argument("--panel-size", type=int, default=192, help="side of each panel in the grid, in px")
    cur = sub.add_parser("curves", help="training curves of a run folder (metrics.jsonl) as one PNG")
    cur.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder holding metrics.jsonl")
    cur.add_argument("--output", type=Path, help="PNG (default: RUN_DIR/plots/curves.png)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.what == "attention":
            out = attention_figure(args.checkpoint, args.image, args.output, args.image_size, args.panel_size)
        else:
            out = plot_curves(args.run_dir, args.output or args.run_dir / "plots" / "curves.png")
    except (FileNotFoundError, ValueError) as e:
        print(f"fastdino viz {args.what}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
