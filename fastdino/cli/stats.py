"""`fastdino stats`: per-band mean, std and 2 / 98 % percentiles of multispectral data, written where training
reads them (<data>/band_stats.json, `data.stats: null`). Details: fastdino/bands/stats.py, docs/data.md
(Multispectral)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastdino.bands.stats import compute_band_stats, default_stats_path, sample_items, write_stats
from fastdino.dataloading import build_source
from fastdino.dataloading.band_files import FILE_ORDERS, BandReader, band_list, file_band_order, source_bands


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="multi-band GeoTIFFs / .npy arrays (any depth, an ImageFolder tree) or a SeCo / "
                        "SSL4EO-S12 band tree")
    parser.add_argument("--data-list", type=Path, help="text file of image paths relative to --data (e.g. train.txt)")
    parser.add_argument("--layout", default="auto", help="auto | files | folder | list | seco (as data.layout)")
    parser.add_argument("--bands", default="all",
                        help="bands to describe: all (default), a set (s2, s2-12, rgb) or names B2,B3,B4,...")
    parser.add_argument("--file-bands", default=None,
                        help=f"band order inside multi-band files: {', '.join(FILE_ORDERS)} or B1,B2,... "
                        "(not needed for band trees or prepared .npy folders)")
    parser.add_argument("--samples", type=int, default=1000, help="images in the seeded sample (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--output", type=Path, help="JSON to write (default: <data>/band_stats.json)")


def run(args: argparse.Namespace) -> int:
    try:
        path, stats = compute(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fastdino stats: error: {e}", file=sys.stderr)
        return 2
    print(format_table(stats))
    print(f"wrote {path} ({stats['n_images']} images, {stats['n_pixels']:,} pixels per band, seed {stats['seed']})")
    return 0


def compute(args: argparse.Namespace):
    if args.samples < 1:
        raise ValueError(f"--samples {args.samples}: must be >= 1")
    source = build_source(args.data, list_file=args.data_list, layout=args.layout)
    file_bands = file_band_order(args.file_bands, args.data if args.data.is_dir() else args.data.parent)
    bands = source_bands(source, file_bands) if args.bands == "all" else band_list(args.bands, "--bands")
    items = sample_items(source, args.samples, args.seed)
    stats = compute_band_stats(items, BandReader(bands, file_bands), seed=args.seed, data=str(args.data))
    output = args.output or default_stats_path(args.data)
    return write_stats(stats, output), stats


def format_table(stats: dict) -> str:
    rows = [("band", "mean", "std", "p02", "p98", "min", "max")]
    for b, s in stats["bands"].items():
        rows.append((b, *(f"{s[k]:.1f}" for k in ("mean", "std", "p02", "p98", "min", "max"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
