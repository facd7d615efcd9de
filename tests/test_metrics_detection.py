"""Tests for AUPRC and AUROC on small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, precision_recall_curve

from pipelines.metrics.detection import auprc, auroc

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_auprc_hand_value() -> None:
    # Sorted by score: 0.8 (anomalous), 0.4 (normal), 0.35 (anomalous), 0.1 (normal).
    # Recall reaches 1/2 at precision 1/1 and 2/2 at precision 2/3, so
    # AP = (1/2 - 0) * 1 + (1 - 1/2) * 2/3 = 1/2 + 1/3 = 5/6.
    assert auprc(LABELS, SCORES) == pytest.approx(5 / 6)


def test_auprc_is_not_trapezoidal_area() -> None:
    # The precision-recall points (recall, precision), from the highest threshold down:
    # (0, 1), then (1/2, 1) at 0.8, (1/2, 1/2) at 0.4, (1, 2/3) at 0.35 and (1, 1/2) at 0.1.
    # Trapezoids between them: 1/2 * (1 + 1) / 2 + 0 + 1/2 * (1/2 + 2/3) / 2 + 0 = 1/2 + 7/24 = 19/24.
    # Average precision takes the precision at the end of each recall step instead:
    # 1/2 * 1 + 1/2 * 2/3 = 20/24. The two differ by 1/24.
    precision, recall, _ = precision_recall_curve(LABELS, SCORES)
    trapezoidal_area = auc(recall, precision)

    assert trapezoidal_area == pytest.approx(19 / 24)
    assert auprc(LABELS, SCORES) == pytest.approx(20 / 24)
    assert auprc(LABELS, SCORES) - trapezoidal_area == pytest.approx(1 / 24)


def test_auroc_hand_value() -> None:
    # Of the 2 × 2 (anomalous, normal) pairs, the anomalous score is higher in three:
    # 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4, but not 0.35 < 0.4. AUROC = 3/4.
    assert auroc(LABELS, SCORES) == pytest.approx(0.75)


def test_perfect_and_inverted_ranking() -> None:
    labels = [0, 1, 0, 1]

    assert auroc(labels, [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert auprc(labels, [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert auroc(labels, [0.9, 0.1, 0.8, 0.2]) == 0.0
    # Inverted: anomalies at ranks 3 and 4 give AP = 1/2 * 1/3 + 1/2 * 2/4 = 5/12.
    assert auprc(labels, [0.9, 0.1, 0.8, 0.2]) == pytest.approx(5 / 12)


def test_ties_count_half() -> None:
    # Every score equal: AUROC is 1/2 and AP is the share of anomalies, 1/4.
    labels = [0, 0, 0, 1]

    assert auroc(labels, [0.5] * 4) == pytest.approx(0.5)
    assert auprc(labels, [0.5] * 4) == pytest.approx(0.25)


def test_accepts_arrays_and_tensors() -> None:
    expected = auprc(LABELS, SCORES)

    assert auprc(np.array(LABELS), np.array(SCORES)) == pytest.approx(expected)
    assert auprc(torch.tensor(LABELS), torch.tensor(SCORES)) == pytest.approx(expected)
    assert auprc(torch.tensor(LABELS, dtype=torch.bool), torch.tensor(SCORES)) == pytest.approx(expected)
    assert isinstance(auroc(torch.tensor(LABELS), torch.tensor(SCORES)), float)


@pytest.mark.parametrize("metric", [auprc, auroc])
@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], []])
def test_one_class_raises(metric, labels: list[int]) -> None:
    with pytest.raises(ValueError, match=r"must contain both normal \(0\) and anomalous \(1\) images"):
        metric(labels, [0.5] * len(labels))


@pytest.mark.parametrize("metric", [auprc, auroc])
def test_length_mismatch_raises(metric) -> None:
    with pytest.raises(ValueError, match=r"same length, but got 4 labels and 3 scores"):
        metric(LABELS, SCORES[:3])


@pytest.mark.parametrize("metric", [auprc, auroc])
def test_non_binary_labels_raise(metric) -> None:
    with pytest.raises(ValueError, match=r"labels must be 0 \(normal\) or 1 \(anomalous\), but got \[2\]"):
        metric([0, 1, 2], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("metric", [auprc, auroc])
def test_nan_score_raises(metric) -> None:
    with pytest.raises(ValueError, match=r"scores must be finite, but got 1 NaN"):
        metric(LABELS, [0.1, float("nan"), 0.3, 0.4])
