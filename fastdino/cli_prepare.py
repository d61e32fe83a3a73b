"""`fastdino prepare`: multispectral GeoTIFFs or band trees -> one .npy array [H, W, C] per image, once.

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

from fastdino.dataloading.multispectral import FILE_ORDERS, PREPARED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="multi-band GeoTIFFs or a SeCo / SSL4EO-S12 band tree")
    parser.add_argument("--data-list", type=Path, help="only the images of this list (rewritten into --output)")
    parser.add_argument("--layout", default="auto", help="auto | files | folder | list | seco (as data.layout)")
    parser.add_argument("--bands", default="all", help="bands to keep: all (default), a set or names B2,B3,...")
    parser.add_argument("--file-bands", default=None,
                        help=f"band order inside multi-band files: {', '.join(FILE_ORDERS)} or B1,B2,...")
    parser.add_argument("--output", required=True, type=Path, help="folder for the .npy files")


def run(args: argparse.Namespace) -> int:
    try:
        n, seconds = prepare(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fastdino prepare: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} arrays to {args.output} in {seconds:.1f} s ({args.output / PREPARED} names their bands)")
    return 0


def prepare(args: argparse.Namespace) -> tuple[int, float]:
    from fastdino.dataloading import build_source
    from fastdino.dataloading.multispectral import BandReader, band_list, file_band_order, source_bands
    from fastdino.stats import STATS_FILE

    start = time.perf_counter()
    root = args.data if args.data.is_dir() else args.data.parent
    out = args.output
    if out.resolve() == root.resolve():
        raise ValueError(f"--output {out} is the data folder; choose another folder")
    source = build_source(args.data, list_file=args.data_list, layout=args.layout)
    file_bands = file_band_order(args.file_bands, root)
    bands = source_bands(source, file_bands) if args.bands == "all" else band_list(args.bands, "--bands")
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
