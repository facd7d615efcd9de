"""Decision thresholds on anomaly scores: fit one on validation by F1 or Youden's J, count outcomes at one.

An image is called anomalous when its score is at least the threshold, the convention of
scikit-learn's ``roc_curve``.

Example:
    >>> labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    >>> fit_threshold(labels, scores, "youden")
    0.8
    >>> confusion_counts(labels, scores, 0.35)
    ConfusionCounts(tp=2, tn=1, fp=1, fn=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

ThresholdRule = Literal["f1", "youden"]


@dataclass(frozen=True)
class ConfusionCounts:
    """True and false positives and negatives at one threshold, with anomalous images as positives."""

    tp: int
    tn: int
    fp: int
    fn: int

    @property
    def sensitivity(self) -> float:
        """True positive rate, tp / (tp + fn); NaN when there is no anomalous image."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        """True negative rate, tn / (tn + fp); NaN when there is no normal image."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    def to_dict(self) -> dict[str, float]:
        """Return the counts, sensitivity and specificity as a flat dict."""
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def fit_threshold(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, rule: ThresholdRule) -> float:
    """Return the score threshold that maximises F1 or Youden's J (sensitivity + specificity - 1).

    The candidates are the distinct scores, so the threshold is always one of ``scores`` and
    calls at least one image anomalous. Among thresholds that tie, the highest wins, which
    calls the fewest images anomalous. F1 and J are compared as exact ratios of counts, so
    ties are found without rounding error.

    Raises:
        ValueError: if ``rule`` is unknown, or the inputs fail :func:`confusion_counts`'s
            checks or lack a class.
    """
    label_array, score_array = _check_inputs(labels, scores)
    positives = int(label_array.sum())
    negatives = label_array.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"labels must contain both 0 (normal) and 1 (anomalous) to fit a threshold, but got {positives} anomalous of {label_array.size}")

    # Thresholds fall from the first entry, which calls nothing anomalous and is skipped.
    false_rates, true_rates, thresholds = roc_curve(label_array, score_array, drop_intermediate=False)
    tp = np.rint(true_rates[1:] * positives).astype(np.int64)
    fp = np.rint(false_rates[1:] * negatives).astype(np.int64)
    fn = positives - tp

    if rule == "f1":
        # F1 = 2 tp / (2 tp + fp + fn); floats of equal ratios of integers are equal.
        values = 2 * tp / (2 * tp + fp + fn)
    elif rule == "youden":
        # J = tp / P - fp / N = (tp N - fp P) / (P N); the integer numerator orders exactly.
        values = tp * negatives - fp * positives
    else:
        raise ValueError(f"rule must be 'f1' or 'youden', but got {rule!r}")

    best = int(np.flatnonzero(values == values.max())[0])
    return float(thresholds[1:][best])


def confusion_counts(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float) -> ConfusionCounts:
    """Count outcomes when images whose score is at least ``threshold`` are called anomalous.

    Raises:
        ValueError: if the lengths differ, a label is not 0 or 1, or a score or the threshold
            is NaN.
    """
    label_array, score_array = _check_inputs(labels, scores)
    if np.isnan(threshold):
        raise ValueError("threshold must be a number, but got NaN")

    called = score_array >= threshold
    anomalous = label_array == 1
    return ConfusionCounts(
        tp=int((called & anomalous).sum()),
        tn=int((~called & ~anomalous).sum()),
        fp=int((called & ~anomalous).sum()),
        fn=int((~called & anomalous).sum()),
    )


def _check_inputs(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label_array = np.asarray(labels).reshape(-1)
    score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if label_array.shape != score_array.shape:
        raise ValueError(f"labels and scores must have the same length, but got {label_array.size} labels and {score_array.size} scores")

    unexpected = sorted(set(np.unique(label_array).tolist()) - {0, 1})
    if unexpected:
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), but got {unexpected}")

    if np.isnan(score_array).any():
        raise ValueError(f"scores must be numbers, but got {int(np.isnan(score_array).sum())} NaN values")
    return label_array.astype(np.int64), score_array
