"""Tests for fitting a decision threshold by F1 or Youden's J and for confusion counts, on cases checked by hand."""

from __future__ import annotations

import math

import pytest

from pipelines.postprocess.thresholds import ConfusionCounts, confusion_counts, fit_threshold

# By hand, calling images anomalous from the threshold down:
#   0.8:  tp 1, fp 0, fn 1 -> F1 2/3, J 1/2
#   0.4:  tp 1, fp 1, fn 1 -> F1 1/2, J 0
#   0.35: tp 2, fp 1, fn 0 -> F1 4/5, J 1/2
#   0.1:  tp 2, fp 2, fn 0 -> F1 2/3, J 0
LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_f1_threshold_by_hand() -> None:
    assert fit_threshold(LABELS, SCORES, "f1") == 0.35


def test_youden_tie_takes_highest() -> None:
    # J ties at 1/2 for 0.8 and 0.35; the higher threshold calls fewer images anomalous.
    assert fit_threshold(LABELS, SCORES, "youden") == 0.8


def test_f1_tie_of_equal_ratios() -> None:
    # 0.9: tp 1, fp 0, fn 1 -> F1 2/3; 0.6: tp 1, fp 1, fn 1 -> 1/2; 0.2: tp 2, fp 2, fn 0 -> 4/6.
    # 2/3 and 4/6 must compare equal, so the higher threshold wins.
    assert fit_threshold([0, 1, 0, 1], [0.2, 0.2, 0.6, 0.9], "f1") == 0.9


def test_youden_picks_best_rate_gap() -> None:
    # 0.9: J 1/2; 0.7: 1/2 - 1/3; 0.6: 1 - 1/3 = 2/3; 0.5: 1 - 2/3; 0.1: 0.
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.5, 0.7, 0.6, 0.9]

    assert fit_threshold(labels, scores, "youden") == 0.6
    assert fit_threshold(labels, scores, "f1") == 0.6


@pytest.mark.parametrize("rule", ["f1", "youden"])
def test_separable_scores(rule: str) -> None:
    assert fit_threshold([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0], rule) == 3.0


def test_threshold_is_a_score() -> None:
    scores = [0.3, 0.3, 0.3]

    assert fit_threshold([0, 1, 1], scores, "youden") == 0.3


@pytest.mark.parametrize(
    ("labels", "scores", "rule", "message"),
    [
        ([0, 0], [0.1, 0.2], "f1", "both 0 .normal. and 1 .anomalous. to fit"),
        ([0, 1], [0.1], "f1", "same length"),
        ([0, 2], [0.1, 0.2], "f1", r"must be 0 \(normal\) or 1 \(anomalous\), but got \[2\]"),
        ([0, 1], [0.1, float("nan")], "youden", "1 NaN values"),
        ([0, 1], [0.1, 0.2], "accuracy", "rule must be 'f1' or 'youden'"),
    ],
)
def test_fit_rejects_bad_input(labels: list[int], scores: list[float], rule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_threshold(labels, scores, rule)


def test_counts_by_hand() -> None:
    # Called anomalous: 0.4 (normal, fp) and 0.8 (anomalous, tp); 0.35 is missed (fn), 0.1 is a tn.
    counts = confusion_counts(LABELS, SCORES, 0.4)

    assert counts == ConfusionCounts(tp=1, tn=1, fp=1, fn=1)
    assert counts.sensitivity == 0.5
    assert counts.specificity == 0.5


def test_score_at_threshold_is_anomalous() -> None:
    counts = confusion_counts(LABELS, SCORES, 0.35)

    assert counts == ConfusionCounts(tp=2, tn=1, fp=1, fn=0)
    assert counts.sensitivity == 1.0
    assert counts.specificity == 0.5


def test_counts_above_every_score() -> None:
    counts = confusion_counts(LABELS, SCORES, 1.0)

    assert counts == ConfusionCounts(tp=0, tn=2, fp=0, fn=2)
    assert counts.sensitivity == 0.0
    assert counts.specificity == 1.0


def test_rates_undefined_without_class() -> None:
    counts = confusion_counts([0, 0], [0.1, 0.9], 0.5)

    assert counts.to_dict()["fp"] == 1
    assert math.isnan(counts.sensitivity)
    assert counts.specificity == 0.5


def test_counts_reject_nan_threshold() -> None:
    with pytest.raises(ValueError, match="threshold must be a number"):
        confusion_counts(LABELS, SCORES, float("nan"))
