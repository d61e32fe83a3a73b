"""DINO's weighted k-nearest-neighbour classifier on L2-normalised features.

For a test feature x and train features f_i (all L2-normalised), the k most similar train
features by cosine similarity s_i = <x, f_i> vote for their labels with weight exp(s_i / T);
the class with the largest summed weight wins (DINO `eval_knn.py`: k = 20, T = 0.07).
"""

from __future__ import annotations

import torch


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores [N_test, num_classes] of the weighted k-NN vote (features must be L2-normalised)."""
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be [N, D] with the same D, got train {tuple(train_features.shape)} "
            f"and test {tuple(test_features.shape)}"
        )
    if len(train_labels) != len(train_features):
        raise ValueError(f"{len(train_labels)} train labels for {len(train_features)} train features")
    if k < 1:
        raise ValueError(f"k must be at least 1, got --k {k}")
    k = min(k, len(train_features))
    train_features = train_features.float()
    train_labels = train_labels.long()
    scores = torch.empty(len(test_features), num_classes)
    # Chunks bound the [chunk, N_train] similarity matrix (5400 x 16200 floats would be 350 MB at once).
    for start in range(0, len(test_features), chunk_size):
        sim = test_features[start : start + chunk_size].float() @ train_features.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores[start : start + len(sim)] = votes
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, topk: int = 1) -> float:
    """Percentage of rows whose true label is among the `topk` highest scores."""
    topk = min(topk, scores.shape[1])
    hits = (scores.topk(topk, dim=1).indices == labels.long()[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> dict:
    """Top-1 and top-5 accuracy (percent) of the weighted k-NN classifier."""
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k=k, temperature=temperature)
    return {"top1": topk_accuracy(scores, test_labels, 1), "top5": topk_accuracy(scores, test_labels, 5)}
