"""`fastdino train`: resolve the config, check the data and the output folder, then run fastdino.train.

Without --data it trains on a small generated, labelled dataset (the built-in demo: the `tiny` preset with
DEMO_RECIPE on top unless a preset or config file is named); with --data it trains on real imagery. Every problem
found before step 0 is one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from fastdino import run_folder
from fastdino.bands.resolve import demo_dataset, resolve_multispectral
from fastdino.checkpoint import CheckpointError, find_latest
from fastdino.config import DEFAULT_PRESET, PRESETS, ConfigError, dump_yaml
from fastdino.dataloading import build_source
from fastdino.dataloading.synthetic import DEMO_CLASSES, DEMO_TRAIN_LIST, DEMO_VAL_LIST, make_demo_dataset
from fastdino.distributed import barrier, broadcast_object, env_info, init_distributed
from fastdino.preemption import EXIT_PREEMPTED
from fastdino.run_config import load_config
from fastdino.train import NonFiniteLossError, resolve_device, resolve_precision, train

RUN_ENTRIES = ("checkpoints", "metrics.jsonl", "train.log", "config.yaml", "plots", "exported", "tensorboard")
NOT_EMPTY = ("Output '{run_dir}' is not empty! Pass --overwrite to start over in it (deletes its checkpoints, logs, "
             "plots and config.yaml), --resume to continue the run it holds, or choose another --output.")
DEMO_IMAGES = 256  # the generated dataset: 8 iterations per epoch at the tiny preset's batch of 32
DEMO_VAL_IMAGES = 250  # held-out demo images the online k-NN scores (50 a class)
# `fastdino train` with neither --data nor --preset (nor --config): the tiny preset with these overrides, layered under
# the user's flags and --set. 160 steps in about half a minute on 2 CPU cores, k-NN top-1 on the held-out demo images
# from 24.0% (random init) to 50.9% (s.d. 0.7 and 4.1 over seeds 0-2; docs/training.md "Command line").
DEMO_RECIPE = (
    # 32 px views (4 x 4 patches of 8 px) and 16 px locals: about 200 img/s, so 20 epochs of 8 steps fit
    "model.img_size=32",
    "augment.global_views=[{size: 32, blur_p: 0.5, blur_sigma: [0.03, 0.3], jitter: [0.4, 0.4, 0.4, 0.5], "
    "grayscale_p: 0.5}, {size: 32, blur_p: 0.1, blur_sigma: [0.03, 0.3], solarize_p: 0.2, "
    "jitter: [0.4, 0.4, 0.4, 0.5], grayscale_p: 0.5}]",
    # any hue and half the views grey: a demo class has no colour, so the views must not let colour match them
    "augment.local_views=[{size: 16, count: 4, scale: [0.05, 0.32], interpolation: bilinear, "
    "jitter: [0.4, 0.4, 0.4, 0.5], grayscale_p: 0.5}]",
    "run.epochs=20", "run.checkpoint_every=5", "run.log_every=8", "eval.knn_every=5",
    "optim.lr=4e-3", "optim.warmup_epochs=1",
    # the k-NN scores the teacher, which at DINO's 0.996 moves little in 160 steps; 0.9 was worse (seeds 0, 1:
    # 43.6%, 42.8% against 55.6%, 48.0% at 0.95)
    "loss.momentum_teacher=0.95",
    # iBOT's patch loss off: on 4 x 4 patches it held the k-NN back (seed 0, 120 steps: 33.6% with it in a 15-epoch
    # run, 55.2% without in this one) and costs a head pass over every patch
    "loss.ibot_weight=0",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    width = max(map(len, PRESETS))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the preset list one line each
    parser.epilog = "presets:\n" + "\n".join(f"  {n:<{width}}  {d}" for n, (d, _) in PRESETS.items()) + (
        "\n\nwithout --data: a demo on generated, labelled images (without --preset too: the tiny preset at 32 px, "
        "under a minute on 2 CPU cores). Details: docs/training.md")
    parser.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                        help=f"training recipe (default {DEFAULT_PRESET}; listed below)")
    parser.add_argument("--config", metavar="FILE.yaml", help="config file layered over the preset")
    parser.add_argument("--data", metavar="PATH", help="image folder, SeCo root, or the root of --data-list; "
                        "without it: generated demo images")
    parser.add_argument("--data-list", metavar="FILE", help="text file of image paths relative to --data")
    parser.add_argument("--output", metavar="DIR", help="run folder (default runs/<preset>-<timestamp>)")
    parser.add_argument("--epochs", type=int, metavar="N")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="GLOBAL batch size, summed over all GPUs/ranks (each gets N / world size)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="stop after N steps in all (run.max_steps; the lr schedule still spans --epochs)")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also log to RUN/tensorboard/ (run.tensorboard; pip install 'fastdino[tensorboard]')")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", nargs="?", const="yes", metavar="auto",
                      help="continue the run in --output (default: the newest runs/<preset>-*) from its checkpoint; "
                      "--resume auto: continue if --output holds a checkpoint, else start there (for requeued jobs)")
    mode.add_argument("--overwrite", action="store_true",
                      help="start over in a non-empty --output (deletes its checkpoints, logs, plots, config.yaml)")
    mode.add_argument("--init-from", metavar="PATH", help="start a new run from a checkpoint's weights only")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config field: run.epochs=3, optim.lr=1e-4, augment.mean=[0.5,0.5,0.5]; "
                        "a key that exists in one section only may be short (epochs=3)")


def run(args: argparse.Namespace) -> int:
    try:
        config, run_dir, demo = _prepare(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(config, run_dir, resume=args.resume == "yes", init_from=args.init_from, echo=_echo)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, CheckpointError) as e:  # data or checkpoint found unusable in train
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary["stopped"]:  # a stop signal: the state is saved, the resume command printed
        return EXIT_PREEMPTED
    if demo and env_info().is_main:
        _echo("\nThat run used GENERATED images (a built-in demo). To train on real imagery: "
              "fastdino train --preset dino-mc-vits8 --data /path/to/images [--data-list train.txt]")
        if summary.get("knn_start_top1") is not None and summary.get("knn_top1") is not None:
            _echo(demo_knn_line(summary["knn_start_top1"], summary["knn_top1"]))
    return 0


def demo_knn_line(start_top1: float, final_top1: float) -> str:
    """What the demo learned, in one line: k-NN top-1 (%) of the initial and the trained teacher."""
    return (f"k-NN top-1 on {DEMO_VAL_IMAGES} held-out demo images ({len(DEMO_CLASSES)} classes, chance "
            f"{100 / len(DEMO_CLASSES):.0f}%): random init {start_top1:.1f}% -> trained {final_top1:.1f}%")


def _echo(msg: str) -> None:
    print(msg, flush=True)


def _prepare(args: argparse.Namespace):
    """(config, run folder, whether the data is the generated demo), every check done before any work."""
    dist_info = init_distributed("cuda" if args.device != "cpu" and _cuda() else "cpu")
    output = Path(args.output) if args.output else None
    if args.resume not in (None, "yes", "auto"):
        raise ValueError(f"--resume {args.resume}: use --resume (continue, a checkpoint must exist) or --resume auto "
                         "(continue if there is a checkpoint, else start)")
    if args.resume == "auto":
        if output is None:
            raise ValueError("--resume auto needs --output DIR: the folder a requeued job finds again")
        args.resume = "yes" if find_latest(output) is not None else "auto"  # "auto" from here: start afresh
    if args.resume == "yes" and output is None:
        output = _newest_run(args.preset or DEFAULT_PRESET)
    config_file = args.config
    if args.resume == "yes" and args.preset is None and config_file is None and (output / "config.yaml").is_file():
        config_file = output / "config.yaml"  # resume the saved config; --set / flags still apply on top
    overrides = []
    for flag, key in ((args.epochs, "run.epochs"), (args.batch_size, "run.batch_size"), (args.device, "run.device"),
                      (args.max_steps, "run.max_steps"), (args.tensorboard, "run.tensorboard")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.data is not None:
        overrides.append(f"data.path={Path(args.data).resolve()}")
    if args.data_list is not None:
        overrides.append(f"data.list_file={Path(args.data_list).resolve()}")
    config = load_config(args.preset, config_file, overrides + list(args.set))
    demo_recipe = config.data.path is None and args.preset is None and config_file is None
    if demo_recipe:  # the built-in demo: its own recipe, the user's flags and --set still on top
        config = load_config(None, None, list(DEMO_RECIPE) + overrides + list(args.set))
    if args.data_list is not None and args.data is None:
        raise ValueError("--data-list needs --data (the folder the listed paths are relative to)")

    device = resolve_device(config, dist_info)  # errors now (no GPU, fp16 on CPU), not after the folder is made
    resolve_precision(config, device)
    demo = config.data.path is None
    if not demo and not Path(config.data.path).exists():
        raise FileNotFoundError(f"data path {config.data.path} does not exist (set by --data or data.path)")
    if not demo and Path(config.data.path).is_file():  # a list file (cheap to check now) or a mistake
        build_source(config.data.path, list_file=config.data.list_file, layout=config.data.layout)

    if output is None:
        output = Path(config.run.output) if config.run.output else Path("runs") / f"{config.preset}-{_stamp()}"
    run_dir = Path(broadcast_object(str(output.resolve())))  # every rank agrees on rank 0's folder name
    config.run.output = str(run_dir)
    error = _check_output(run_dir, args) if dist_info.is_main else None
    error = broadcast_object(error)
    if error:
        raise ValueError(error)

    if demo:
        config.data.path = str(_demo_dataset(config, dist_info.is_main))
        if config.data.bands is None:  # the RGB demo is labelled: train on its train list, score its val list
            _use_demo_lists(config, Path(config.data.path))
        if dist_info.is_main:
            recipe = f"the demo recipe (the '{config.preset}' preset at 32 px)" if demo_recipe \
                else f"the '{config.preset}' preset"
            _echo(f"No --data given: training {recipe} on {DEMO_IMAGES} GENERATED images "
                  f"(stripes, checkerboards, dots and rings, not real imagery) in {config.data.path}.\n"
                  "Point it at real imagery with --data PATH (an image folder or a SeCo root) "
                  "[--data-list FILE] [--preset dino-mc-vits8].")
    if config.data.bands is not None and args.resume != "yes":  # bands and statistics now: errors before step 0
        resolve_multispectral(config)
    barrier()
    if dist_info.is_main:
        _echo(f"run folder: {run_dir}\nresolved config:\n" + dump_yaml(config))
    return config, run_dir, demo


def _check_output(run_dir: Path, args: argparse.Namespace) -> str | None:
    """The output folder's state against --resume / --overwrite (rank 0 only; returns the error, if any). A new
    run in an old run's folder clears what that run wrote now (--resume auto without a checkpoint: requeued)."""
    try:  # auto: a run folder with no checkpoint starts over
        run_folder.check_output(run_dir, resume=args.resume == "yes", overwrite=args.overwrite or args.resume == "auto",
                                not_empty=NOT_EMPTY)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    if args.resume != "yes":
        run_folder.clear_run_files(run_dir, RUN_ENTRIES)
    return None


def _newest_run(preset: str) -> Path:
    runs = sorted(Path("runs").glob(f"{preset}-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume without --output: no runs/{preset}-* folder here; pass --output DIR")
    return runs[-1]


def _demo_dataset(config, is_main: bool) -> Path:
    """Generated images in a cache folder shared by runs ($FASTDINO_CACHE or ~/.cache/fastdino)."""
    size = max(64, max(v["size"] for v in config.augment["global_views"]))
    cache = Path(os.environ.get("FASTDINO_CACHE", Path.home() / ".cache" / "fastdino"))
    if config.data.bands is not None:  # tiny-ms: EuroSAT-MS-shaped 13-band TIFFs and their band statistics
        root = demo_dataset(cache, DEMO_IMAGES, size) if is_main else None
        barrier()
        return root or cache / f"synthetic-ms-{DEMO_IMAGES}x{size}"
    root = cache / f"demo-{DEMO_IMAGES}+{DEMO_VAL_IMAGES}x{size}"
    if is_main:
        make_demo_dataset(root, n_train=DEMO_IMAGES, n_val=DEMO_VAL_IMAGES, size=size, seed=0)
    barrier()
    return root


def _use_demo_lists(config, root: Path) -> None:
    """Train on the demo's train list; unless the user set the online k-NN, score its held-out val list against
    the train images, and the initial weights too, so the summary shows what training gained."""
    config.data.list_file = str(root / DEMO_TRAIN_LIST)
    e = config.eval
    if e.knn_train is None and e.knn_val is None:
        e.knn_train, e.knn_val, e.knn_root = str(root / DEMO_TRAIN_LIST), str(root / DEMO_VAL_LIST), str(root)
        e.knn_bank_size, e.knn_at_start = 0, True


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _cuda() -> bool:
    return torch.cuda.is_available()
