"""Linear probe: a softmax classifier trained on frozen, cached features.

The backbone never runs here: features are extracted once (fastdino.eval.features) and the probe
trains on the [N, D] tensors, so a 100-epoch probe on EuroSAT takes seconds on a CPU. Features are
standardised with the train statistics (the scale of L2-normalised features is tiny), then a
Linear(D, C) is fit with AdamW and a cosine learning rate, in a seeded order, so runs repeat exactly.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .knn import topk_accuracy


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> torch.nn.Module:
    """Fit and return `Standardize -> Linear(D, num_classes)` on the train features."""
    if epochs < 1:
        raise ValueError(f"the linear probe needs at least one epoch, got --epochs {epochs}")
    x = train_features.float()
    y = train_labels.long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    probe = torch.nn.Sequential(_Standardize(mean, std), torch.nn.Linear(x.shape[1], num_classes))
    generator = torch.Generator().manual_seed(seed)
    # Initialise from the seeded generator too, so the result does not depend on the global RNG state.
    with torch.no_grad():
        bound = 1.0 / math.sqrt(x.shape[1])
        probe[1].weight.uniform_(-bound, bound, generator=generator)
        probe[1].bias.zero_()
    optimizer = torch.optim.AdamW(probe[1].parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    with single_thread():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(probe(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return probe.eval()


@contextlib.contextmanager
def single_thread():
    """The probe's ops are tiny ([256, D] x [D, C]): thread hand-offs cost more than the maths, and on a busy
    machine the spinning workers made a 100-epoch probe 20x slower. Run them on one thread, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    **train_kwargs,
) -> dict:
    """Train a probe on the train features; top-1 / top-5 accuracy (percent) on the test features."""
    with torch.enable_grad():
        probe = train_linear_probe(train_features, train_labels, num_classes, **train_kwargs)
    train_scores = probe(train_features.float())
    test_scores = probe(test_features.float())
    return {
        "top1": topk_accuracy(test_scores, test_labels, 1),
        "top5": topk_accuracy(test_scores, test_labels, 5),
        "train_top1": topk_accuracy(train_scores, train_labels, 1),
    }


class _Standardize(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
