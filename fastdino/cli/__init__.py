"""fastdino: fast DINO / DINO-MC pretraining of vision backbones on remote-sensing imagery.

Each subcommand lives in its own module of this package with `add_arguments(parser)` and `run(args) -> int`; this
file only wires them together (modules are imported lazily so that `fastdino --help` is fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastdino import __version__

# name -> (module, one-line help). Modules with sub-subcommands (eval, viz) add their own subparsers.
COMMANDS = {
    "train": ("fastdino.cli.train", "pretrain a backbone with DINO / DINO-MC / DINO-TP"),
    "presets": ("fastdino.cli.presets", "list the training presets"),
    "eval": ("fastdino.cli.eval", "k-NN or linear-probe accuracy of a checkpoint's teacher backbone"),
    "export": ("fastdino.cli.export", "export the teacher backbone as a timm-loadable safetensors file"),
    "viz": ("fastdino.cli.viz", "attention maps and training curves as PNG"),
    "finetune": ("fastdino.cli.finetune", "fine-tune a backbone: scene classification, BigEarthNet, OSCD change"),
    "stats": ("fastdino.cli.stats", "per-band statistics of multispectral data (what training normalises with)"),
    "prepare": ("fastdino.cli.prepare", "pack a dataset into WebDataset shards, or multispectral files into .npy"),
    "download": ("fastdino.cli.download", "fetch EuroSAT, SeCo, BigEarthNet or OSCD in the layout fastdino reads"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdino", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastdino {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported (its arguments are all that is parsed).
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return importlib.import_module(args._module).run(args) or 0
