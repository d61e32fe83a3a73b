"""`fastdino download NAME [NAME ...] --root DIR`: the command line of fastdino.download."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastdino.download import DATASETS, DownloadError, download_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="*", metavar="NAME", help=f"one or more of: {', '.join(DATASETS)}")
    parser.add_argument("--root", type=Path, default=Path("data"),
                        help="where the dataset folders go (default: data); archives are kept in ROOT/downloads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified EuroSAT split (default 0)")
    parser.add_argument("--yes", "-y", action="store_true", help="no question before a multi-GB download")
    parser.add_argument("--delete-archives", action="store_true", help="delete the downloaded archives once extracted")
    parser.add_argument("--list", action="store_true", help="list the datasets and their sizes, download nothing")


def run(args: argparse.Namespace) -> int:
    if args.list or not args.datasets:
        for release in DATASETS.values():
            print(f"{release.name:12s} {release.size_bytes / 1e9:7.2f} GB  -> ROOT/{release.folder}  "
                  f"{release.description}")
        return 0 if args.list else 2
    unknown = [n for n in args.datasets if n not in DATASETS]
    if unknown:
        print(f"fastdino download: unknown dataset {', '.join(unknown)}; choose from {', '.join(DATASETS)}",
              file=sys.stderr)
        return 2
    for name in args.datasets:
        try:
            download_dataset(name, args.root, seed=args.seed, yes=args.yes, delete_archives=args.delete_archives)
        except (DownloadError, FileExistsError, ValueError) as error:
            print(f"fastdino download {name}: {error}", file=sys.stderr)
            return 1
    return 0
