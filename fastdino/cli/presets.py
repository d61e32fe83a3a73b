"""`fastdino presets`: one line per training preset; `--show NAME` prints a preset's resolved config."""

from __future__ import annotations

import argparse

from fastdino.config import DEFAULT_PRESET, ConfigError, dump_yaml, list_presets
from fastdino.run_config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show", metavar="NAME", help="print the full resolved config of preset NAME (YAML)")


def run(args: argparse.Namespace) -> int:
    if args.show:
        try:
            print(dump_yaml(load_config(args.show)), end="")
        except ConfigError as e:
            print(f"error: {e}")
            return 2
        return 0
    presets = list_presets()
    width = max(len(name) for name, _ in presets)
    for name, desc in presets:
        default = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {desc}{default}")
    return 0
