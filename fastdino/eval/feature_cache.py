"""Features extracted once per (checkpoint, image list, resolution) and cached beside the checkpoint, so that
`eval linear` after `eval knn` does not run the backbone again."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from fastdino.config import backbone_kwargs

from .features import ImageDataset, extract_features


def cache_path(args: argparse.Namespace, config: dict, name: str, dataset: ImageDataset, transform,
               conversion=None) -> Path:
    """Cache file keyed by everything that changes the features.

    A trained teacher's features depend on the checkpoint file, the network read from it (teacher / student) and
    the position-embedding interpolation; a random-init backbone's only on the architecture and the seed, so every
    checkpoint of that architecture shares one random-init cache.
    """
    if args.random_init:
        model = json.dumps(backbone_kwargs(config["model"]), sort_keys=True) + f"seed={args.seed}"
    else:
        stat = args.checkpoint.stat()
        model = f"{args.checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if conversion is not None:
            model += f":{conversion.which}:{conversion.pos_embed_interp}"
    key = json.dumps([model, [str(p) for p in dataset.paths], dataset.labels, transform.__dict__])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    tag = "random-init" if args.random_init else args.checkpoint.stem
    if not args.random_init and conversion is not None and conversion.which == "student":
        tag += "-student"
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
