"""fastdino.finetune.metrics: AP as scikit-learn defines it (DINO-MC's BigEarthNet score), the confusion matrix
and the change-class scores, against hand-computed values and a brute-force reference."""

import math

import numpy as np
import pytest
import torch

from fastdino.finetune.metrics import (
    add_counts,
    average_precision,
    average_precision_reference,
    binary_counts,
    change_scores,
    confusion_matrix,
    is_change,
    multilabel_scores,
)


def test_average_precision_matches_scikit_learn_documented_example():
    # sklearn.metrics.average_precision_score's docstring: y_true [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8] -> 0.83
    ap = average_precision(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8]))
    assert ap == pytest.approx(0.8333333333333333, abs=1e-12)


def test_average_precision_counts_tied_scores_as_one_threshold():
    # Thresholds 0.5 (2 chosen, 1 positive: P 1/2, R 1/2) and 0.2 (3 chosen, 2 positives: P 2/3, R 1):
    # AP = 1/2 * 1/2 + 1/2 * 2/3. Splitting the tie (ranking the positive first) would give 1/2 * 1 + 1/2 * 2/3.
    ap = average_precision(torch.tensor([1, 0, 1, 0]), torch.tensor([0.5, 0.5, 0.2, 0.1]))
    assert ap == pytest.approx(0.25 + 1 / 3, abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 41, 401])
@pytest.mark.parametrize("levels", [3, 1000])  # few levels: many ties
def test_average_precision_equals_brute_force_reference(n, levels):
    g = torch.Generator().manual_seed(n * levels)
    targets = (torch.rand(n, generator=g) < 0.3).long()
    targets[0] = 1
    scores = torch.randint(0, levels, (n,), generator=g).float() / levels
    assert average_precision(targets, scores) == pytest.approx(average_precision_reference(targets, scores), abs=1e-12)


def test_average_precision_perfect_and_without_positives():
    assert average_precision(torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.8, 0.9])) == 1.0
    assert math.isnan(average_precision(torch.zeros(4), torch.rand(4)))


def test_multilabel_scores_micro_is_ap_of_all_pairs_and_batch_mean_is_the_authors_average():
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(70, 5, generator=g) < 0.3).float()
    targets[:, 4] = 0  # a class without positives
    scores = torch.rand(70, 5, generator=g) + targets * 0.3
    s = multilabel_scores(targets, scores, batch_size=32)
    assert s["micro_ap"] == pytest.approx(100 * average_precision_reference(targets, scores), abs=1e-9)
    # main_bigearthnet.py: micro AP per batch of 32 (drop_last: rows 64-69 unused), averaged by batch size.
    expected = (average_precision_reference(targets[:32], scores[:32])
                + average_precision_reference(targets[32:64], scores[32:64])) / 2
    assert s["micro_ap_batch_mean"] == pytest.approx(100 * expected, abs=1e-9)
    assert s["micro_ap_batch_mean"] != pytest.approx(s["micro_ap"], abs=1e-6)
    # A batch without a positive label: scikit-learn >= 1.1 scores it 0 (recall set to 1 at every threshold,
    # precision 0 at the top one), and the mean counts it.
    empty = targets.clone()
    empty[32:64] = 0
    expected_empty = average_precision_reference(targets[:32], scores[:32]) / 2
    assert multilabel_scores(empty, scores, 32)["micro_ap_batch_mean"] == pytest.approx(100 * expected_empty, abs=1e-9)
    assert math.isnan(s["per_class_ap"][4])
    valid = [average_precision_reference(targets[:, c], scores[:, c]) for c in range(4)]
    assert s["macro_ap"] == pytest.approx(100 * sum(valid) / 4, abs=1e-9)


def test_confusion_matrix_rows_are_true_classes():
    m = confusion_matrix(torch.tensor([0, 2, 2, 1, 0]), torch.tensor([0, 2, 1, 1, 2]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]


def test_a_probability_of_exactly_the_threshold_is_no_change():
    # torchmetrics' Binary* metrics (DINO-MC main_oscd.py L38-41) threshold with `preds > threshold`.
    prob = torch.tensor([0.5, 0.5, 0.5000001, 0.4999999])
    truth = torch.tensor([1, 0, 1, 0])
    assert binary_counts(prob, truth, 0.5) == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}
    assert is_change(np.array([0.5, 0.51])).tolist() == [False, True]  # the picture's predicted mask too


def test_change_scores_by_hand():
    prob = torch.tensor([[0.9, 0.6, 0.49], [0.1, 0.7, 0.0]])
    truth = torch.tensor([[1, 0, 1], [0, 1, 0]])
    counts = binary_counts(prob, truth, 0.5)
    assert counts == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    s = change_scores(counts)
    assert s["precision"] == pytest.approx(200 / 3) and s["recall"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(200 / 3) and s["iou"] == pytest.approx(50.0)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert binary_counts(prob, truth, 0.5, valid) == {"tp": 2, "fp": 1, "fn": 0, "tn": 2}
    assert add_counts(counts, counts)["tp"] == 4
    assert change_scores({"tp": 0, "fp": 0, "fn": 0, "tn": 9}) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                                     "iou": 0.0}
