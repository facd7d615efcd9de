"""Image-level detection metrics: AUPRC (average precision) and AUROC, with anomalous images as positives.

Example:
    >>> auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.8333333333333333
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def auprc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Compute the average precision of ``scores`` for finding anomalous images (label 1).

    This is scikit-learn's ``average_precision_score``: the sum over thresholds of precision
    times the gain in recall, with no interpolation. It is not the trapezoidal area under the
    precision-recall curve, ``sklearn.metrics.auc(recall, precision)``, which joins the curve's
    points by straight lines and so gives a different value.

    Raises:
        ValueError: if the lengths differ, a label is not 0 or 1, or only one class is present.
    """
    label_array, score_array = check_labels_and_scores(labels, scores)
    return float(average_precision_score(label_array, score_array, pos_label=1))


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Compute the area under the ROC curve of ``scores`` for finding anomalous images (label 1).

    Raises:
        ValueError: if the lengths differ, a label is not 0 or 1, or only one class is present.
    """
    label_array, score_array = check_labels_and_scores(labels, scores)
    return float(roc_auc_score(label_array, score_array))


def to_numpy(values: ArrayLike) -> np.ndarray:
    """Convert a sequence, array or tensor to a flat NumPy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def check_labels_and_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Convert both inputs to NumPy and check that they fit a binary detection metric."""
    label_array = to_numpy(labels)
    score_array = to_numpy(scores).astype(np.float64)

    if label_array.shape != score_array.shape:
        raise ValueError(f"labels and scores must have the same length, but got {label_array.size} labels and {score_array.size} scores")

    unexpected = sorted(set(np.unique(label_array).tolist()) - {0, 1})
    if unexpected:
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), but got {unexpected}")

    present = sorted(set(label_array.astype(int).tolist()))
    if present != [0, 1]:
        raise ValueError(
            f"labels must contain both normal (0) and anomalous (1) images, but got only {present or 'no labels'}. "
            "Evaluate on a split that holds both classes"
        )

    if not np.isfinite(score_array).all():
        raise ValueError(f"scores must be finite, but got {int((~np.isfinite(score_array)).sum())} NaN or infinite values")

    return label_array.astype(int), score_array
