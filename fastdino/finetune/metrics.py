"""Scores of the three fine-tuning tasks, each written so it can be checked by hand.

Single-label: top-k accuracy and the confusion matrix. Multi-label: average precision (AP) as scikit-learn's
`average_precision_score` defines it, which is what DINO-MC's `main_bigearthnet.py` calls (L19, L225, L262):

    AP = sum_k (R_k - R_{k-1}) P_k

over the distinct score thresholds in decreasing order (tied scores form one threshold), with P_k / R_k the
precision / recall of "score >= threshold k" and R_0 = 0: no interpolation. `average='micro'` is the AP of all
(sample, class) pairs raveled into one list. Change detection: precision, recall, F1 and IoU (Jaccard) of the
change class after thresholding the probability, over all pixels (torchmetrics' BinaryPrecision etc. with
multidim_average='global' and threshold 0.5, DINO-MC main_oscd.py L38-41; torchmetrics counts a pixel as change
when its probability is strictly above the threshold: `preds > threshold` in _binary_stat_scores_format).
"""

from __future__ import annotations

import math

import torch


# --- single label -------------------------------------------------------------------------------------------
def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows whose true label is among the k highest scores (k is capped at the class count)."""
    from fastdino.eval.knn import topk_accuracy as _topk

    return _topk(scores, labels, k)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] counts: row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# --- multi label --------------------------------------------------------------------------------------------
def average_precision(targets: torch.Tensor, scores: torch.Tensor) -> float:
    """AP of one binary problem (targets in {0, 1}, any real scores), scikit-learn's definition; NaN without
    positives (there is no recall to average over)."""
    targets = targets.flatten().double()
    scores = scores.flatten().double()
    if targets.numel() != scores.numel():
        raise ValueError(f"{targets.numel()} targets for {scores.numel()} scores")
    n_pos = targets.sum().item()
    if n_pos == 0:
        return math.nan
    order = torch.argsort(scores, descending=True, stable=True)
    scores, targets = scores[order], targets[order]
    tp = torch.cumsum(targets, 0)
    # The last index of each run of equal scores: one threshold per distinct score.
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tp = tp[last]
    predicted = (torch.nonzero(last).flatten() + 1).double()
    precision = tp / predicted
    recall = tp / n_pos
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_step * precision).sum())


def average_precision_reference(targets, scores) -> float:
    """The same AP by brute force, one threshold at a time (the tests compare the two)."""
    targets = [int(t) for t in torch.as_tensor(targets).flatten().tolist()]
    scores = [float(s) for s in torch.as_tensor(scores).flatten().tolist()]
    n_pos = sum(targets)
    if n_pos == 0:
        return math.nan
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [t for t, s in zip(targets, scores, strict=True) if s >= threshold]
        recall = sum(chosen) / n_pos
        ap += (recall - previous_recall) * sum(chosen) / len(chosen)
        previous_recall = recall
    return ap


def multilabel_scores(targets: torch.Tensor, scores: torch.Tensor, batch_size: int = 32) -> dict:
    """Micro AP over the whole set, the authors' batch-averaged micro AP, per-class AP and their mean (percent).

    micro_ap_batch_mean is how main_bigearthnet.py reports its number: micro AP of each batch of `batch_size`
    (their loader: 32, drop_last=True, L101-108), averaged weighted by batch size (MetricLogger, L262-265). A batch
    without any positive label scores 0, as scikit-learn >= 1.1 gives it (precision_recall_curve then sets recall
    to 1 at every threshold, so AP = 1 x the precision at the top threshold, 0). It depends on the batch
    composition, so micro_ap (all samples at once) is the headline number here.
    """
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"targets {tuple(targets.shape)} and scores {tuple(scores.shape)} must both be [N, C]")
    per_class = [average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1])]
    valid = [ap for ap in per_class if not math.isnan(ap)]
    batch_aps, weights = [], []
    for start in range(0, len(targets) - batch_size + 1, batch_size):
        ap = average_precision(targets[start:start + batch_size], scores[start:start + batch_size])
        batch_aps.append(0.0 if math.isnan(ap) else ap)
        weights.append(batch_size)
    return {
        "micro_ap": 100.0 * average_precision(targets, scores),
        "micro_ap_batch_mean": 100.0 * sum(a * w for a, w in zip(batch_aps, weights, strict=True)) / sum(weights)
        if weights else math.nan,
        "macro_ap": 100.0 * sum(valid) / len(valid) if valid else math.nan,
        "per_class_ap": [100.0 * ap for ap in per_class],
    }


# --- change detection ---------------------------------------------------------------------------------------
def is_change(probabilities, threshold: float = 0.5):
    """Where a probability map says change: strictly above the threshold, as torchmetrics' Binary* metrics
    (`preds > threshold`); works on tensors and numpy arrays alike."""
    return probabilities > threshold


def binary_counts(probabilities: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5,
                  valid: torch.Tensor | None = None) -> dict:
    """True/false positives/negatives of `probability > threshold` against targets in {0, 1} (torchmetrics'
    binary convention: a probability of exactly 0.5 is no change), over the pixels where `valid` is true."""
    predicted = is_change(probabilities, threshold)
    truth = targets > 0.5
    if valid is not None:
        predicted, truth = predicted[valid], truth[valid]
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    tn = int((~predicted & ~truth).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def change_scores(counts: dict) -> dict:
    """Precision, recall, F1 and IoU of the change class (percent) from summed counts; 0 where undefined
    (torchmetrics' zero_division default)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]

    def ratio(a, b):
        return 100.0 * a / b if b else 0.0

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
    }


def add_counts(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in ("tp", "fp", "fn", "tn")}
