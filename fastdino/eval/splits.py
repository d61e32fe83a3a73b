"""The train / test split an evaluation scores: two labelled lists, or a seeded stratified split of one folder.

Shared by `fastdino eval`, the online k-NN monitor (fastdino.eval.online) and `fastdino download` (the split lists it
writes beside a dataset).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastdino.dataloading import build_source

from .split_lists import read_image_list

SPLIT_SEED = 0
SPLIT_TEST_FRACTION = 0.2


def load_split(root: Path, train_list: Path | None, test_list: Path | None) -> dict:
    """Train/test paths and labels from the list files, or a deterministic stratified split of ROOT."""
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
    if not test_idx:  # stratified_split keeps a class of one image in train: one image a class leaves no test
        raise ValueError(f"--data {root}: the test split is empty ({len(source.classes)} classes of 1 image each; "
                         f"the deterministic split puts a class's only image in train). Give each class at least 2 "
                         f"images, or pass --train-list and --test-list")
    return {
        "train_paths": [source.paths[i] for i in train_idx], "train_labels": [source.labels[i] for i in train_idx],
        "test_paths": [source.paths[i] for i in test_idx], "test_labels": [source.labels[i] for i in test_idx],
        "classes": list(source.classes),
        "note": f"split: no --train-list/--test-list, so {root} is split deterministically "
        f"(stratified, {1 - SPLIT_TEST_FRACTION:.0%} train / {SPLIT_TEST_FRACTION:.0%} test, seed {SPLIT_SEED}): "
        f"{len(train_idx)} train / {len(test_idx)} test images",
    }


def _labelled_source(build_source, root: Path, list_file: Path | None):
    source = read_image_list(root, list_file) if list_file else build_source(root, layout="folder")
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
