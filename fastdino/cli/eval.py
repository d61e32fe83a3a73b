"""`fastdino eval knn|linear`: accuracy of a checkpoint's teacher backbone on a labelled image folder.

The checkpoint may be fastdino's, the original DINO / DINO-MC code's, or a bare backbone state dict
(fastdino.models.convert; what was converted is printed). Features are extracted once per (checkpoint, image list,
resolution) and cached beside the checkpoint, so `eval linear` after `eval knn` does not run the backbone again.
`eval linear` is fastdino's fast probe on those cached features by default; `--protocol dino` runs DINO's
eval_linear.py protocol instead (eval/dino_linear.py). Results are printed as a table and saved as JSON beside the
checkpoint (`<ckpt stem>_<task>[_random-init].json`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

import fastdino
from fastdino.eval.dino_linear import DinoLinearSettings, dino_linear_accuracy
from fastdino.eval.feature_cache import cache_path, cached_features
from fastdino.eval.features import EvalTransform, ImageDataset
from fastdino.eval.knn import knn_accuracy
from fastdino.eval.linear import linear_probe_accuracy
from fastdino.eval.report import format_table
from fastdino.eval.splits import load_split
from fastdino.eval.teacher import random_init_like
from fastdino.models.convert import load_backbone

from .backbone_args import add_backbone_arguments

# How each linear protocol is named in every table and JSON (the paper's 94.09 is DINO's protocol).
PROTOCOLS = {"fast": "fastdino fast probe (AdamW on cached, standardised features)",
             "dino": "DINO protocol (eval_linear.py: last-4-block CLS, SGD, RandomResizedCrop + flip)"}

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    knn = sub.add_parser("knn", help="DINO's weighted k-NN classifier on teacher CLS features")
    linear = sub.add_parser(
        "linear", help="linear classifier on the frozen teacher: fastdino's fast probe (default) or DINO's protocol",
        description="Linear classifier on the frozen teacher. --protocol fast (default): fastdino's FAST PROBE, a "
        "Linear layer trained with AdamW on cached, standardised, L2-normalised CLS features (seconds on a CPU; not "
        "DINO's protocol, so its numbers do not compare one to one with papers). --protocol dino: DINO's "
        "eval_linear.py protocol (CLS of the last 4 blocks concatenated, SGD lr 0.001 x batch/256, momentum 0.9, "
        "cosine per epoch, RandomResizedCrop + flip, the backbone run on every epoch's crops), also the protocol of "
        "DINO-MC's own eval_linear.py.")
    for p in (knn, linear):
        add_backbone_arguments(p, action="evaluate", random_init=True)
        p.add_argument("--data", required=True, type=Path, help="labelled ImageFolder root (ROOT/<class>/<image>)")
        p.add_argument("--train-list", type=Path, help="images to fit on, one path per line relative to --data")
        p.add_argument("--test-list", type=Path, help="images to report on, one path per line relative to --data")
        p.add_argument("--image-size", type=int, help="evaluation resolution (default: the config's global crop)")
        p.add_argument("--batch-size", type=int, default=256, help="images per feature-extraction batch")
        p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--seed", type=int, default=0, help="seed of the random-init backbone and the probe")
        p.add_argument("--no-cache", action="store_true", help="extract features again instead of reusing the cache")
        p.add_argument("--cache-dir", type=Path, help="feature cache folder (default: CKPT_DIR/eval_cache)")
        p.add_argument("--output", type=Path, help="results JSON (default: beside the checkpoint)")
        p.add_argument("--file-bands", help="multispectral: band order of multi-band files (eurosat-ms, esa, esa-12 or "
                       "B1,B2,...; default: the run's data.file_bands; prepared.json of `fastdino prepare` wins)")
    knn.add_argument("--k", type=int, default=20, help="neighbours that vote")
    knn.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T)")
    linear.add_argument("--protocol", choices=list(PROTOCOLS), default="fast",
                        help="fast: fastdino's fast probe (default); dino: DINO's eval_linear.py protocol")
    linear.add_argument("--epochs", type=int, default=100, help="training epochs (both protocols: 100)")
    linear.add_argument("--lr", type=float,
                        help="fast: AdamW lr, cosine-decayed (default 0.01); dino: SGD lr per 256 images (default "
                        "0.001, scaled by --linear-batch-size / 256)")
    linear.add_argument("--weight-decay", type=float, default=1e-4, help="fast probe's AdamW weight decay")
    linear.add_argument("--linear-batch-size", type=int, default=128,
                        help="dino protocol: images per SGD step (DINO 128 per GPU; DINO-MC's eval_linear.py 32)")
    linear.add_argument("--n-last-blocks", type=int, default=4,
                        help="dino protocol, ViTs: the CLS tokens of the last N blocks, concatenated (DINO: 4, ViT-S)")


def run(args: argparse.Namespace) -> int:
    try:
        result = evaluate(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"fastdino eval {args.task}: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"saved {result['output']}")
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    """Everything `fastdino eval` does, returning the result dict that is printed and saved."""
    split = load_split(args.data, args.train_list, args.test_list)  # a bad split fails before the model is read
    loaded = load_backbone(args.checkpoint, which=getattr(args, "checkpoint_key", "teacher"),
                           arch=getattr(args, "arch", None), patch_size=getattr(args, "patch_size", None),
                           pos_embed_interp=getattr(args, "pos_embed", None))
    print(loaded.conversion.describe())
    backbone, config, conversion = loaded.backbone, loaded.config, loaded.conversion
    if args.random_init:
        backbone = random_init_like(config, args.seed)
    if getattr(args, "file_bands", None):  # multispectral: the band order of the evaluated files
        config.setdefault("data", {})["file_bands"] = args.file_bands
    transform = EvalTransform.from_config(config, args.image_size, args.data)
    print(split["note"])
    protocol = getattr(args, "protocol", None) if args.task == "linear" else None
    if protocol == "dino":
        if getattr(transform, "bands", None):
            raise ValueError("--protocol dino (RandomResizedCrop + flip on PIL images) is not implemented for "
                             "multispectral checkpoints; use the fast probe (--protocol fast)")
        return _evaluate_dino_linear(args, backbone, config, conversion, transform, split)

    start = time.perf_counter()
    feats = {}
    for name in ("train", "test"):
        dataset = ImageDataset(split[f"{name}_paths"], split[f"{name}_labels"], transform)
        cache = None if args.no_cache else cache_path(args, config, name, dataset, transform, conversion)
        feats[name] = cached_features(
            cache, backbone, dataset, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
            desc=f"{name} features",
        )
    feature_seconds = time.perf_counter() - start

    start = time.perf_counter()
    num_classes = len(split["classes"])
    (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
    if args.task == "knn":
        scores = knn_accuracy(xtr, ytr, xte, yte, num_classes, k=args.k, temperature=args.temperature)
        settings = {"k": args.k, "temperature": args.temperature}
    else:
        lr = 1e-2 if args.lr is None else args.lr
        scores = linear_probe_accuracy(
            xtr, ytr, xte, yte, num_classes, epochs=args.epochs, lr=lr, weight_decay=args.weight_decay,
            seed=args.seed,
        )
        settings = {"protocol": "fast", "protocol_name": PROTOCOLS["fast"], "epochs": args.epochs, "lr": lr,
                    "weight_decay": args.weight_decay}
    return _finish(args, scores, settings, config, conversion, transform, split, len(ytr), len(yte), xtr.shape[1],
                   feature_seconds, time.perf_counter() - start)


def _evaluate_dino_linear(args, backbone, config, conversion, transform, split) -> dict:
    settings = DinoLinearSettings(epochs=args.epochs, lr=0.001 if args.lr is None else args.lr,
                                  batch_size=args.linear_batch_size, n_last_blocks=args.n_last_blocks)
    start = time.perf_counter()
    scores = dino_linear_accuracy(
        backbone, split["train_paths"], split["train_labels"], split["test_paths"], split["test_labels"],
        len(split["classes"]), size=transform.size, mean=transform.mean, std=transform.std, settings=settings,
        num_workers=args.num_workers, device=args.device, seed=args.seed)
    feature_dim = scores.pop("feature_dim")
    info = {"protocol": "dino", "protocol_name": PROTOCOLS["dino"], "epochs": settings.epochs, "lr": settings.lr,
            "batch_size": settings.batch_size}
    return _finish(args, scores, info, config, conversion, transform, split, len(split["train_labels"]),
                   len(split["test_labels"]), feature_dim, 0.0, time.perf_counter() - start)


def _finish(args, scores, settings, config, conversion, transform, split, n_train, n_test, feature_dim,
            feature_seconds, eval_seconds) -> dict:
    output = args.output or default_output(args.checkpoint, args.task, args.random_init)
    result = {
        "task": args.task,
        **scores,
        "checkpoint": str(args.checkpoint.resolve()),
        "checkpoint_key": conversion.which,
        "checkpoint_source": conversion.source,
        "pos_embed_interp": conversion.pos_embed_interp if conversion.arch.startswith("vit") else None,
        "random_init": args.random_init,
        "arch": config.get("model", {}).get("arch"),
        "checkpoint_epoch": conversion.epoch,
        "data": str(args.data),
        "train_list": str(args.train_list) if args.train_list else None,
        "test_list": str(args.test_list) if args.test_list else None,
        "split": split["note"],
        "n_train": n_train,
        "n_test": n_test,
        "classes": split["classes"],
        "image_size": transform.size,
        "feature_dim": feature_dim,
        **settings,
        "seed": args.seed,
        "feature_seconds": round(feature_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "device": str(args.device),
        "fastdino_version": fastdino.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output": str(output),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def default_output(checkpoint: Path, task: str, random_init: bool) -> Path:
    return checkpoint.parent / f"{checkpoint.stem}_{task}{'_random-init' if random_init else ''}.json"
