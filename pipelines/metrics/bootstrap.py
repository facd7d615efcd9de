"""Bootstrap confidence intervals and paired comparisons for AUPRC and AUROC, stratified by label and by group.

Each resample draws the normal and the anomalous images separately, with replacement, so that
every resample keeps the class counts of the sample. When ``groups`` is given (patients or
cases with several images), whole groups are drawn within each class instead of single images.
Each resample is a row of a count matrix, with the number of times each original image was
drawn. AUPRC (average precision, on a 0-1 scale) and AUROC of every resample then come from one
sort of the scores and cumulative sums over the count matrix, not from one scikit-learn call per
resample. They equal scikit-learn's ``average_precision_score`` and ``roc_auc_score`` on the
resampled images, ties included.

Example:
    >>> labels = [0, 0, 0, 1, 1, 1]
    >>> scores = [0.1, 0.3, 0.5, 0.4, 0.8, 0.9]
    >>> intervals = detection_intervals(labels, scores, n_resamples=500, seed=0)
    >>> round(intervals["auroc"].estimate, 4)
    0.8889
    >>> intervals["auroc"].low <= intervals["auroc"].estimate <= intervals["auroc"].high
    True
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from pipelines.metrics.detection import ArrayLike, auprc, auroc, check_labels_and_scores, to_numpy

Metric = Literal["auprc", "auroc"]
METRICS: tuple[Metric, ...] = get_args(Metric)

_ESTIMATORS = {"auprc": auprc, "auroc": auroc}


@dataclass(frozen=True)
class Interval:
    """A metric's estimate on the full sample with the percentile bounds of its bootstrap distribution."""

    estimate: float
    low: float
    high: float
    level: float


@dataclass(frozen=True)
class PairedComparison:
    """Difference ``metric(scores_a) - metric(scores_b)`` on the same images, with its bootstrap interval and p-value."""

    metric: str
    difference: float
    low: float
    high: float
    p_value: float


def detection_intervals(
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    groups: Sequence[Hashable] | None = None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Compute percentile bootstrap intervals for AUPRC and AUROC, keyed ``"auprc"`` and ``"auroc"``.

    Args:
        labels: 0 (normal) or 1 (anomalous) per image.
        scores: the anomaly score per image.
        groups: the group (patient, case) of each image. When given, whole groups are resampled.
        n_resamples: number of bootstrap resamples.
        level: the interval's coverage, for example 0.95 for the 2.5th to 97.5th percentiles.
        seed: seed of the NumPy generator, so the same seed gives the same intervals.

    Raises:
        ValueError: if the labels or scores are invalid (see :func:`auprc`), a group contains
            both normal and anomalous images, ``n_resamples`` is not positive or ``level`` is
            not between 0 and 1.
    """
    label_array, score_array = check_labels_and_scores(labels, scores)
    _check_level(level)
    weights = resample_weights(label_array, groups=groups, n_resamples=n_resamples, seed=seed)

    resampled = weighted_detection_metrics(label_array, score_array, weights)
    intervals = {}
    for metric in METRICS:
        low, high = _percentile_bounds(resampled[metric], level)
        estimate = _ESTIMATORS[metric](label_array, score_array)
        intervals[metric] = Interval(estimate=estimate, low=low, high=high, level=level)
    return intervals


def paired_bootstrap(
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    *,
    groups: Sequence[Hashable] | None = None,
    metric: Metric = "auprc",
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    ids_a: Sequence[str] | None = None,
    ids_b: Sequence[str] | None = None,
) -> PairedComparison:
    """Compare two scorers (grid cells) on the same images with one set of resamples for both.

    The difference is ``metric(scores_a) - metric(scores_b)``. Its interval is the percentile
    interval of the resampled differences. The two-sided p-value is
    ``min(1, 2 * (1 + k) / (1 + n_resamples))``, where ``k`` is the smaller of the numbers of
    resampled differences at or below 0 and at or above 0. The ``1 +`` terms keep the p-value
    above 0, and a scorer compared with itself gets p = 1.

    Args:
        labels: 0 (normal) or 1 (anomalous) per image, shared by both scorers.
        scores_a: the first scorer's anomaly score per image.
        scores_b: the second scorer's anomaly score per image, in the same image order.
        groups, n_resamples, level, seed: as in :func:`detection_intervals`.
        metric: ``"auprc"`` or ``"auroc"``.
        ids_a: the image ids behind ``scores_a``. When given with ``ids_b``, both lists must
            be equal, in the same order.
        ids_b: the image ids behind ``scores_b``.

    Raises:
        ValueError: for the reasons of :func:`detection_intervals`, or if ``metric`` is
            unknown, only one of ``ids_a`` and ``ids_b`` is given, or the ids differ.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, but got {metric!r}")

    _check_same_images(ids_a, ids_b)
    label_array, score_array_a = check_labels_and_scores(labels, scores_a)
    _, score_array_b = check_labels_and_scores(labels, scores_b)
    if ids_a is not None and len(ids_a) != label_array.size:
        raise ValueError(f"ids_a must name every image, but got {len(ids_a)} ids for {label_array.size} labels")

    _check_level(level)
    weights = resample_weights(label_array, groups=groups, n_resamples=n_resamples, seed=seed)

    # 1. The same resampled images score both scorers, so the differences are paired.
    resampled_a = weighted_detection_metrics(label_array, score_array_a, weights)[metric]
    resampled_b = weighted_detection_metrics(label_array, score_array_b, weights)[metric]
    differences = resampled_a - resampled_b
    low, high = _percentile_bounds(differences, level)

    # 2. Two-sided p-value from the smaller share of resampled differences on one side of 0.
    far_side = min(np.count_nonzero(differences <= 0), np.count_nonzero(differences >= 0))
    p_value = min(1.0, 2.0 * (1 + int(far_side)) / (1 + n_resamples))
    estimate = _ESTIMATORS[metric](label_array, score_array_a) - _ESTIMATORS[metric](label_array, score_array_b)

    return PairedComparison(metric=metric, difference=estimate, low=low, high=high, p_value=p_value)


def resample_weights(
    labels: ArrayLike, *, groups: Sequence[Hashable] | None = None, n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """Draw stratified bootstrap resamples as counts: entry ``[r, i]`` is how often image ``i`` is in resample ``r``.

    Within each class, as many units are drawn with replacement as the class contains. A unit
    is one image, or one group when ``groups`` is given, and every image of a drawn group gets
    the group's count. Returns an int64 array of shape ``(n_resamples, len(labels))``.

    Raises:
        ValueError: if ``n_resamples`` is not positive, a class has no image, ``groups`` has
            the wrong length, or a group contains both normal and anomalous images.
    """
    labels = to_numpy(labels)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, but got {n_resamples!r}")

    units, unit_labels = _resampling_units(labels, groups)
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_resamples, labels.size), dtype=np.int64)
    for label in (0, 1):
        stratum = np.flatnonzero(unit_labels == label)
        if stratum.size == 0:
            raise ValueError(f"labels must contain both normal (0) and anomalous (1) images, but got none with label {label}")

        draws = rng.integers(0, stratum.size, size=(n_resamples, stratum.size))
        unit_counts = _count_per_row(draws, stratum.size)

        # Map each image of this class to its unit's position in the stratum.
        position = np.full(unit_labels.size, -1)
        position[stratum] = np.arange(stratum.size)
        images = np.flatnonzero(labels == label)
        weights[:, images] = unit_counts[:, position[units[images]]]
    return weights


def weighted_detection_metrics(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Compute AUPRC and AUROC of every resample from its counts, each of shape ``(n_resamples,)``.

    An image drawn ``k`` times counts as ``k`` tied images, so the results equal scikit-learn's
    ``average_precision_score`` and ``roc_auc_score`` on the resampled images. Every row of
    ``weights`` must draw at least one normal and one anomalous image. Memory grows as
    ``n_resamples * len(scores)`` (several float64 arrays of that size).
    """
    # 1. Sort once by descending score and merge tied scores into one threshold each.
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    threshold_starts = np.flatnonzero(np.concatenate(([True], np.diff(sorted_scores) != 0)))

    # 2. Weighted true and false positives at each threshold: the curves' points per resample.
    sorted_weights = weights[:, order].astype(np.float64)
    sorted_labels = labels[order].astype(bool)
    positives = np.add.reduceat(np.where(sorted_labels, sorted_weights, 0.0), threshold_starts, axis=1)
    negatives = np.add.reduceat(np.where(sorted_labels, 0.0, sorted_weights), threshold_starts, axis=1)
    true_positives = np.cumsum(positives, axis=1)
    false_positives = np.cumsum(negatives, axis=1)
    n_positives = true_positives[:, -1:]
    n_negatives = false_positives[:, -1:]

    # 3. Average precision: precision at each threshold times the recall gained there. A leading
    #    threshold of images not drawn has no predicted positives and gains no recall.
    predicted = true_positives + false_positives
    precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0)
    average_precision = np.sum(positives / n_positives * precision, axis=1)

    # 4. AUROC: trapezoids under the ROC curve, which starts at (0, 0).
    true_positive_rate = true_positives / n_positives
    previous_rate = np.concatenate((np.zeros_like(n_positives), true_positive_rate[:, :-1]), axis=1)
    area_under_roc = np.sum(negatives / n_negatives * (true_positive_rate + previous_rate) / 2, axis=1)

    return {"auprc": average_precision, "auroc": area_under_roc}


def _resampling_units(labels: np.ndarray, groups: Sequence[Hashable] | None) -> tuple[np.ndarray, np.ndarray]:
    """Return each image's unit index and each unit's label: images themselves, or their groups."""
    if groups is None:
        return np.arange(labels.size), labels

    group_list = list(groups)
    if len(group_list) != labels.size:
        raise ValueError(f"groups must name one group per image, but got {len(group_list)} groups for {labels.size} labels")

    names = list(dict.fromkeys(group_list))
    index = {name: position for position, name in enumerate(names)}
    units = np.array([index[group] for group in group_list], dtype=np.int64)

    has_normal = np.zeros(len(names), dtype=bool)
    has_anomalous = np.zeros(len(names), dtype=bool)
    has_normal[units[labels == 0]] = True
    has_anomalous[units[labels == 1]] = True
    mixed = [names[position] for position in np.flatnonzero(has_normal & has_anomalous)]
    if mixed:
        raise ValueError(
            f"every group must contain only normal or only anomalous images, but groups {mixed[:5]} contain both. "
            "Give the normal and the anomalous images of such a group different group ids"
        )
    return units, has_anomalous.astype(labels.dtype)


def _count_per_row(draws: np.ndarray, n_units: int) -> np.ndarray:
    """Count how often each unit index appears in each row of ``draws``, shape ``(rows, n_units)``."""
    rows = draws.shape[0]
    offsets = np.arange(rows)[:, None] * n_units
    return np.bincount((draws + offsets).ravel(), minlength=rows * n_units).reshape(rows, n_units)


def _percentile_bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    """Return the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``values``."""
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _check_level(level: float) -> None:
    """Raise ``ValueError`` unless ``level`` is strictly between 0 and 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, for example 0.95, but got {level!r}")


def _check_same_images(ids_a: Sequence[str] | None, ids_b: Sequence[str] | None) -> None:
    """Raise ``ValueError`` unless both id lists are missing or list the same images in the same order."""
    if ids_a is None and ids_b is None:
        return

    if ids_a is None or ids_b is None:
        raise ValueError("ids_a and ids_b must be given together, but got only one. Pass the image ids of both cells or neither")

    first, second = list(ids_a), list(ids_b)
    if first == second:
        return

    if sorted(first) == sorted(second):
        raise ValueError("ids_a and ids_b must list the images in the same order, but the orders differ. Sort both cells' outputs by id")

    only_a = sorted(set(first) - set(second))[:5]
    only_b = sorted(set(second) - set(first))[:5]
    raise ValueError(
        f"ids_a and ids_b must list the same images, but got {len(first)} and {len(second)} ids, "
        f"with {only_a} only in ids_a and {only_b} only in ids_b. Evaluate both cells on the same split"
    )
