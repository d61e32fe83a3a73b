"""`fastdino eval knn|linear`: accuracy of a checkpoint's teacher backbone on a labelled image folder.

Features are extracted once per (checkpoint, image list, resolution) and cached beside the checkpoint, so
`eval linear` after `eval knn` does not run the backbone again. Results are printed as a table and saved
as JSON beside the checkpoint (`<ckpt stem>_<task>[_random-init].json`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

import fastdino
from fastdino.config import backbone_kwargs

from .features import EvalTransform, ImageDataset, extract_features
from .knn import knn_accuracy
from .linear import linear_probe_accuracy
from .teacher import checkpoint_info, load_teacher, random_init_like

SPLIT_SEED = 0
SPLIT_TEST_FRACTION = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    knn = sub.add_parser("knn", help="DINO's weighted k-NN classifier on teacher CLS features")
    linear = sub.add_parser("linear", help="linear probe on frozen (cached) teacher CLS features")
    for p in (knn, linear):
        p.add_argument("--checkpoint", required=True, type=Path, help="a fastdino checkpoint (RUN/checkpoints/last.pt)")
        p.add_argument("--data", required=True, type=Path, help="labelled ImageFolder root (ROOT/<class>/<image>)")
        p.add_argument("--train-list", type=Path, help="images to fit on, one path per line relative to --data")
        p.add_argument("--test-list", type=Path, help="images to report on, one path per line relative to --data")
        p.add_argument("--random-init", action="store_true", help="evaluate an untrained backbone of the same arch")
        p.add_argument("--image-size", type=int, help="evaluation resolution (default: the config's global crop)")
        p.add_argument("--batch-size", type=int, default=256, help="images per feature-extraction batch")
        p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--seed", type=int, default=0, help="seed of the random-init backbone and the probe")
        p.add_argument("--no-cache", action="store_true", help="extract features again instead of reusing the cache")
        p.add_argument("--cache-dir", type=Path, help="feature cache folder (default: CKPT_DIR/eval_cache)")
        p.add_argument("--output", type=Path, help="results JSON (default: beside the checkpoint)")
    knn.add_argument("--k", type=int, default=20, help="neighbours that vote")
    knn.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T)")
    linear.add_argument("--epochs", type=int, default=100, help="probe training epochs over the cached features")
    linear.add_argument("--lr", type=float, default=1e-2, help="probe AdamW learning rate (cosine-decayed)")
    linear.add_argument("--weight-decay", type=float, default=1e-4, help="probe AdamW weight decay")


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
    backbone, config = load_teacher(args.checkpoint)
    if args.random_init:
        backbone = random_init_like(config, args.seed)
    transform = EvalTransform.from_config(config, args.image_size)
    split = load_split(args.data, args.train_list, args.test_list)
    print(split["note"])

    start = time.perf_counter()
    feats = {}
    for name in ("train", "test"):
        dataset = ImageDataset(split[f"{name}_paths"], split[f"{name}_labels"], transform)
        cache = None if args.no_cache else cache_path(args, config, name, dataset, transform)
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
        scores = linear_probe_accuracy(
            xtr, ytr, xte, yte, num_classes, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
            seed=args.seed,
        )
        settings = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay}

    output = args.output or default_output(args.checkpoint, args.task, args.random_init)
    result = {
        "task": args.task,
        **scores,
        "checkpoint": str(args.checkpoint.resolve()),
        "random_init": args.random_init,
        "arch": config.get("model", {}).get("arch"),
        "checkpoint_epoch": checkpoint_info(args.checkpoint)["epoch"],
        "data": str(args.data),
        "train_list": str(args.train_list) if args.train_list else None,
        "test_list": str(args.test_list) if args.test_list else None,
        "split": split["note"],
        "n_train": len(ytr),
        "n_test": len(yte),
        "classes": split["classes"],
        "image_size": transform.size,
        "feature_dim": xtr.shape[1],
        **settings,
        "seed": args.seed,
        "feature_seconds": round(feature_seconds, 2),
        "eval_seconds": round(time.perf_counter() - start, 2),
        "device": str(args.device),
        "fastdino_version": fastdino.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output": str(output),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_split(root: Path, train_list: Path | None, test_list: Path | None) -> dict:
    """Train/test paths and labels from the list files, or a deterministic stratified split of ROOT."""
    from fastdino.dataloading import build_source

    if (train_list is None) != (test_list is None):
        given, missing = ("--train-list", "--test-list") if train_list else ("--test-list", "--train-list")
        raise ValueError(f"{given} was given without {missing}: pass both, or neither for a deterministic split")
    if train_list is not None:
        train = _labelled_source(build_source, root, train_list)
        test = _labelled_source(build_source, root, test_list)
        # Each list's labels index the classes that list contains: re-index both by the union.
        classes = sorted(set(train.classes) | set(test.classes))
        index = {c: i for i, c in enumerate(classes)}
        return {
            "train_paths": train.paths, "train_labels": [index[train.classes[y]] for y in train.labels],
            "test_paths": test.paths, "test_labels": [index[test.classes[y]] for y in test.labels],
            "classes": classes,
            "note": f"split: --train-list {train_list} ({len(train.paths)} images), "
            f"--test-list {test_list} ({len(test.paths)} images)",
        }
    source = _labelled_source(build_source, root, None)
    train_idx, test_idx = stratified_split(source.labels, SPLIT_TEST_FRACTION, SPLIT_SEED)
    return {
        "train_paths": [source.paths[i] for i in train_idx], "train_labels": [source.labels[i] for i in train_idx],
        "test_paths": [source.paths[i] for i in test_idx], "test_labels": [source.labels[i] for i in test_idx],
        "classes": list(source.classes),
        "note": f"split: no --train-list/--test-list, so {root} is split deterministically "
        f"(stratified, {1 - SPLIT_TEST_FRACTION:.0%} train / {SPLIT_TEST_FRACTION:.0%} test, seed {SPLIT_SEED}): "
        f"{len(train_idx)} train / {len(test_idx)} test images",
    }


def _labelled_source(build_source, root: Path, list_file: Path | None):
    source = build_source(root, list_file=list_file, layout="list" if list_file else "folder")
    if source.labels is None:
        where = f"list file {list_file}" if list_file else f"--data {root}"
        raise ValueError(f"{where} gives no labels: evaluation needs class folders, ROOT/<class>/<image>")
    return source


def stratified_split(labels, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded per-class split: each class gives round(test_fraction * n) images (at least 1) to test."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(list(labels))
    train, test = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)].tolist()
        n_test = max(1, round(test_fraction * len(idx))) if len(idx) > 1 else 0
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


def cache_path(args: argparse.Namespace, config: dict, name: str, dataset: ImageDataset, transform) -> Path:
    """Cache file keyed by everything that changes the features.

    A trained teacher's features depend on the checkpoint file; a random-init backbone's only on the
    architecture and the seed, so every checkpoint of that architecture shares one random-init cache.
    """
    if args.random_init:
        model = json.dumps(backbone_kwargs(config["model"]), sort_keys=True) + f"seed={args.seed}"
    else:
        stat = args.checkpoint.stat()
        model = f"{args.checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    key = json.dumps([model, [str(p) for p in dataset.paths], dataset.labels, transform.__dict__])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    tag = "random-init" if args.random_init else args.checkpoint.stem
    folder = args.cache_dir or args.checkpoint.parent / "eval_cache"
    return folder / f"{tag}_{name}_{digest}.pt"


def cached_features(cache: Path | None, backbone, dataset, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu")
        print(f"{kwargs.get('desc', 'features')}: reusing {cache}")
        return saved["features"], saved["labels"]
    features, labels = extract_features(backbone, dataset, **kwargs)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"features": features, "labels": labels}, tmp)
        tmp.replace(cache)
    return features, labels


def default_output(checkpoint: Path, task: str, random_init: bool) -> Path:
    return checkpoint.parent / f"{checkpoint.stem}_{task}{'_random-init' if random_init else ''}.json"


def format_table(result: dict) -> str:
    """A small fixed-width table of what was evaluated and how well."""
    state = "random init" if result["random_init"] else f"epoch {result['checkpoint_epoch']}"
    model = f"{result['arch']} ({state})"
    if result["task"] == "knn":
        method = f"k-NN k={result['k']} T={result['temperature']}"
    elif result["task"] == "linear":
        method = f"linear {result['epochs']} ep"
    else:  # `fastdino finetune classify` prints its result through this table too
        method = f"{result['task']} {result['epochs']} ep"
    rows = [
        ("model", "eval", "train", "test", "size", "top-1", "top-5"),
        (model, method, str(result["n_train"]), str(result["n_test"]), str(result["image_size"]),
         f"{result['top1']:.2f}", f"{result['top5']:.2f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
