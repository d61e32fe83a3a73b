"""`fastdino prepare`: a dataset -> WebDataset shards (`--format shards`), or multispectral GeoTIFFs / band trees ->
one .npy array [H, W, C] per image (`--format npy`, the default), once.

Shards (dataloading/shards.py) pack any source that `fastdino train` reads into ~512 MB tar files with DALI's
index beside each: a corpus of millions of small files becomes a few hundred large ones, every file's bytes kept
as they are (lossless, no larger than the source).

Arrays:

Reading a .npy is one read and no decoding, and the band tree's resampling to one grid is done once: the
pipelines' readers (both torch and DALI read in Python, dataloading/dali_ms.py) then spend their time on nothing
else. Layout: an image `<data>/<rel>.tif` becomes `<output>/<rel>.npy` (class folders are kept, so labels stay);
a band-tree product `<data>/<location>/<product>/B*.tif` becomes `<output>/<location>/<product>.npy` (all
acquisitions; a location's folder groups its products). `<output>/prepared.json` names the bands in channel order
(the readers take the order from it), a --data-list is rewritten beside them with .npy paths, and the data's
band_stats.json is copied (statistics are per band name, the values unchanged).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from fastdino import __version__
from fastdino.bands.stats import STATS_FILE
from fastdino.dataloading import build_source
from fastdino.dataloading.band_files import FILE_ORDERS, PREPARED, BandReader, band_list, file_band_order, source_bands
from fastdino.dataloading.shards import SHARD_INDEX, write_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="multi-band GeoTIFFs or a SeCo / SSL4EO-S12 band tree")
    parser.add_argument("--data-list", type=Path, help="only the images of this list (rewritten into --output)")
    parser.add_argument("--layout", default="auto", help="auto | files | folder | list | seco (as data.layout)")
    parser.add_argument("--format", choices=("npy", "shards"), default="npy",
                        help="npy: one array per multispectral image; shards: WebDataset tar shards of any source")
    parser.add_argument("--bands", default=None,
                        help="npy: bands to keep: all (default), a set or names B2,B3,... (shards keep every file)")
    parser.add_argument("--shard-size", default="512MB",
                        help="target size of a shard (shards only): e.g. 512MB, 1GB (default 512MB)")
    parser.add_argument("--overwrite", action="store_true", help="shards: replace shards of other inputs in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--file-bands", default=None,
                        help=f"band order inside multi-band files: {', '.join(FILE_ORDERS)} or B1,B2,...")
    parser.add_argument("--output", required=True, type=Path, help="folder for the .npy files or the shards")


def run(args: argparse.Namespace) -> int:
    if args.format == "shards":
        return _run_shards(args)
    try:
        n, seconds = prepare(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fastdino prepare: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} arrays to {args.output} in {seconds:.1f} s ({args.output / PREPARED} names their bands)")
    return 0


def prepare(args: argparse.Namespace) -> tuple[int, float]:
    start = time.perf_counter()
    root, source = _source(args)
    out = args.output
    file_bands = file_band_order(args.file_bands, root)
    bands = source_bands(source, file_bands) if args.bands in (None, "all") else band_list(args.bands, "--bands")
    reader = BandReader(bands, file_bands)
    items = list(source.acquisitions) if hasattr(source, "acquisitions") else list(source.paths)
    dtypes = set()
    for item in items:
        if hasattr(item, "bands"):  # a product of a band tree: <location>/<product>
            product = Path(next(iter(item.bands.values()))).parent
            rel = product.relative_to(Path(source.root)).with_suffix(".npy")
        else:
            rel = Path(item).relative_to(root).with_suffix(".npy")
        arr = reader(item)
        dtypes.add(str(arr.dtype))
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(arr))
        tmp.replace(target)  # a killed prepare never leaves a half-written array under its final name
    if args.data_list is not None:
        lines = [line.strip() for line in args.data_list.read_text().splitlines()]
        (out / args.data_list.name).write_text("".join(f"{Path(e).with_suffix('.npy')}\n" for e in lines
                                                       if e and not e.startswith("#")))
    if (root / STATS_FILE).is_file():
        shutil.copyfile(root / STATS_FILE, out / STATS_FILE)
    (out / PREPARED).write_text(json.dumps({"bands": list(bands), "dtype": sorted(dtypes), "source": str(args.data),
                                            "n_images": len(items)}, indent=2) + "\n")
    return len(items), time.perf_counter() - start


def _source(args: argparse.Namespace):
    """(the data's root folder, its source), after checking --output is not that folder."""
    root = args.data if args.data.is_dir() else args.data.parent
    if args.output.resolve() == root.resolve():
        raise ValueError(f"--output {args.output} is the data folder; choose another folder")
    return root, build_source(args.data, list_file=args.data_list, layout=args.layout)


def parse_size(text: str) -> int:
    """'512MB' / '1.5GB' / '300MiB' / a number of bytes -> bytes (decimal units, as disks and `ls -h --si` count)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper().replace(" ", "")
    number = t.rstrip("KMGIB")
    unit = t[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ValueError(f"--shard-size {text!r}: expected a size such as 512MB, 1GB or 300MiB")
    return int(value * units[unit])


def _run_shards(args: argparse.Namespace) -> int:
    try:
        if args.bands is not None:
            raise ValueError("--bands applies to --format npy; shards keep every file as it is (choose the bands at "
                             "training time with data.bands)")
        shard_bytes = parse_size(args.shard_size)
        root, source = _source(args)
        file_bands = file_band_order(args.file_bands, root)
        stats = json.loads((root / STATS_FILE).read_text()) if (root / STATS_FILE).is_file() else None
        result = write_shards(source, args.output, shard_bytes=shard_bytes, band_stats=stats,
                              extra={"file_bands": list(file_bands) if file_bands else None}, version=__version__,
                              progress=not args.no_progress, overwrite=args.overwrite)
        if stats is not None:  # where training looks for it by default (data.stats: null)
            shutil.copyfile(root / STATS_FILE, args.output / STATS_FILE)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fastdino prepare: error: {e}", file=sys.stderr)
        return 2
    index = result.index
    total = sum(s["bytes"] for s in index["shards"])
    kept = "" if result.written == len(index["shards"]) else f" ({len(index['shards']) - result.written} were there)"
    print(f"{index['samples']} samples in {len(index['shards'])} shards{kept}, {total / 1e9:.2f} GB, in "
          f"{result.seconds:.1f} s -> {args.output} ({SHARD_INDEX} indexes them)")
    if index["skipped"]:
        print(f"skipped {len(index['skipped'])} unreadable inputs (listed in {SHARD_INDEX}), e.g. "
              f"{index['skipped'][0]['path']}: {index['skipped'][0]['error']}", file=sys.stderr)
    return 0
