"""Tests for the stratified, grouped bootstrap of AUPRC and AUROC and the paired comparison of two scorers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from pipelines.metrics.bootstrap import (
    Interval,
    PairedComparison,
    detection_intervals,
    paired_bootstrap,
    resample_weights,
    weighted_detection_metrics,
)
from pipelines.metrics.detection import auprc, auroc

# Binormal scores: normal ~ N(0, 1) and anomalous ~ N(SHIFT, 1), so the population AUROC is
# Phi(SHIFT / sqrt(2)) = 0.760 for SHIFT = 1.
SHIFT = 1.0
POPULATION_AUROC = float(norm.cdf(SHIFT / np.sqrt(2)))


def binormal_sample(n_normal: int, n_anomalous: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw labels and binormal scores, normal images first."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate((np.zeros(n_normal, dtype=int), np.ones(n_anomalous, dtype=int)))
    return labels, rng.normal(size=labels.size) + SHIFT * labels


def test_resampled_metrics_equal_sklearn() -> None:
    labels, scores = binormal_sample(20, 30, seed=1)
    # Rounding to one decimal makes ties within and across classes.
    scores = np.round(scores, 1)
    weights = resample_weights(labels, n_resamples=20, seed=3)

    resampled = weighted_detection_metrics(labels, scores, weights)

    for row in range(weights.shape[0]):
        drawn = np.repeat(np.arange(labels.size), weights[row])
        assert abs(resampled["auprc"][row] - average_precision_score(labels[drawn], scores[drawn])) < 1e-12
        assert abs(resampled["auroc"][row] - roc_auc_score(labels[drawn], scores[drawn])) < 1e-12


def test_all_ones_weights_give_full_sample() -> None:
    labels, scores = binormal_sample(7, 5, seed=2)

    resampled = weighted_detection_metrics(labels, scores, np.ones((1, labels.size), dtype=np.int64))

    assert resampled["auprc"][0] == pytest.approx(auprc(labels, scores), abs=1e-12)
    assert resampled["auroc"][0] == pytest.approx(auroc(labels, scores), abs=1e-12)


def test_stratification_keeps_class_counts() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0])

    weights = resample_weights(labels, n_resamples=300, seed=0)

    assert weights.shape == (300, 8)
    assert (weights[:, labels == 0].sum(axis=1) == 5).all()
    assert (weights[:, labels == 1].sum(axis=1) == 3).all()
    # Each image is drawn 0, 1, 2, ... times, not always once.
    assert (weights == 0).any()
    assert (weights >= 2).any()


def test_groups_resampled_together() -> None:
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    groups = ["p1", "p1", "p1", "p2", "p3", "c1", "c1", "c2", "c3"]
    members = {group: [index for index, name in enumerate(groups) if name == group] for group in dict.fromkeys(groups)}

    weights = resample_weights(labels, groups=groups, n_resamples=300, seed=0)

    for indices in members.values():
        assert (weights[:, indices] == weights[:, indices[:1]]).all()

    # Three normal and three anomalous groups are drawn per resample: sum one image's count per group.
    group_counts = {group: weights[:, indices[0]] for group, indices in members.items()}
    assert (group_counts["p1"] + group_counts["p2"] + group_counts["p3"] == 3).all()
    assert (group_counts["c1"] + group_counts["c2"] + group_counts["c3"] == 3).all()

    # Image counts vary with the size of the drawn groups.
    normal_images = weights[:, labels == 0].sum(axis=1)
    assert normal_images.min() < 5 < normal_images.max()


def test_mixed_group_raises() -> None:
    with pytest.raises(ValueError, match=r"every group must contain only normal or only anomalous images, but groups \['p2'\] contain both"):
        detection_intervals([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], groups=["p1", "p2", "p2", "c1"])


def test_group_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"groups must name one group per image, but got 3 groups for 4 labels"):
        detection_intervals([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], groups=["p1", "p2", "c1"])


def test_same_seed_same_intervals() -> None:
    labels, scores = binormal_sample(20, 30, seed=4)

    first = detection_intervals(labels, scores, seed=7)
    second = detection_intervals(labels, scores, seed=7)
    other_seed = detection_intervals(labels, scores, seed=8)

    assert first == second
    assert first["auprc"] != other_seed["auprc"]


def test_interval_contains_estimate() -> None:
    labels, scores = binormal_sample(20, 30, seed=5)

    intervals = detection_intervals(labels, scores)

    assert set(intervals) == {"auprc", "auroc"}
    for interval in intervals.values():
        assert isinstance(interval, Interval)
        assert interval.level == 0.95
        assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0
    assert intervals["auprc"].estimate == auprc(labels, scores)
    assert intervals["auroc"].estimate == auroc(labels, scores)


def test_interval_narrower_with_more_data() -> None:
    small = detection_intervals(*binormal_sample(20, 20, seed=6))
    large = detection_intervals(*binormal_sample(400, 400, seed=6))

    for metric in ("auprc", "auroc"):
        assert large[metric].high - large[metric].low < 0.5 * (small[metric].high - small[metric].low)


def test_higher_level_wider_interval() -> None:
    labels, scores = binormal_sample(20, 30, seed=9)

    narrow = detection_intervals(labels, scores, level=0.5)["auroc"]
    wide = detection_intervals(labels, scores, level=0.95)["auroc"]

    assert wide.low < narrow.low
    assert narrow.high < wide.high


def test_auroc_interval_coverage() -> None:
    # 200 samples of 25 + 25 images from a population with a known AUROC. A 95% interval should
    # contain it about 190 times, and the binomial spread at n = 200 is about 3 percentage points.
    covered = 0
    for seed in range(200):
        labels, scores = binormal_sample(25, 25, seed=seed)
        interval = detection_intervals(labels, scores, n_resamples=400, seed=seed)["auroc"]
        covered += interval.low <= POPULATION_AUROC <= interval.high

    assert 0.88 <= covered / 200 <= 0.99


def test_2000_resamples_under_a_second() -> None:
    labels, scores = binormal_sample(20, 30, seed=10)

    start = time.perf_counter()
    detection_intervals(labels, scores, n_resamples=2000)
    elapsed = time.perf_counter() - start

    assert elapsed < 1.0


def test_paired_self_comparison() -> None:
    labels, scores = binormal_sample(20, 30, seed=11)

    for metric in ("auprc", "auroc"):
        comparison = paired_bootstrap(labels, scores, scores.copy(), metric=metric)

        assert comparison == PairedComparison(metric=metric, difference=0.0, low=0.0, high=0.0, p_value=1.0)


def test_paired_better_scorer_above_zero() -> None:
    labels, weak_scores = binormal_sample(20, 30, seed=12)
    strong_scores = weak_scores + 2.0 * labels

    for metric in ("auprc", "auroc"):
        comparison = paired_bootstrap(labels, strong_scores, weak_scores, metric=metric)

        assert comparison.difference > 0
        assert 0 < comparison.low <= comparison.difference <= comparison.high
        # No resample favours the weak scorer, so p is 2 / 2001, its smallest value.
        assert comparison.p_value == pytest.approx(2 / 2001)


def test_paired_swapped_scorers_negate() -> None:
    labels, scores_a = binormal_sample(20, 30, seed=13)
    scores_b = scores_a + np.random.default_rng(0).normal(scale=0.5, size=labels.size)

    forward = paired_bootstrap(labels, scores_a, scores_b, metric="auroc")
    backward = paired_bootstrap(labels, scores_b, scores_a, metric="auroc")

    assert backward.difference == pytest.approx(-forward.difference)
    assert backward.low == pytest.approx(-forward.high)
    assert backward.high == pytest.approx(-forward.low)
    assert backward.p_value == forward.p_value
    assert 0 < forward.p_value <= 1


def test_paired_grouped_resampling() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = ["p1", "p1", "p2", "p2", "c1", "c1", "c2", "c2"]
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.9])

    comparison = paired_bootstrap(labels, scores, scores, groups=groups, metric="auroc")

    assert comparison.p_value == 1.0


def test_paired_matching_ids_accepted() -> None:
    labels, scores = binormal_sample(3, 3, seed=14)
    ids = [f"image-{index}" for index in range(6)]

    comparison = paired_bootstrap(labels, scores, scores, ids_a=ids, ids_b=list(ids), n_resamples=50)

    assert comparison.difference == 0.0


def test_paired_different_ids_raise() -> None:
    labels, scores = binormal_sample(3, 3, seed=15)
    ids_a = [f"image-{index}" for index in range(6)]
    ids_b = ids_a[:5] + ["image-9"]

    with pytest.raises(ValueError, match=r"ids_a and ids_b must list the same images, .* \['image-5'\] only in ids_a and \['image-9'\] only in ids_b"):
        paired_bootstrap(labels, scores, scores, ids_a=ids_a, ids_b=ids_b)


def test_paired_reordered_ids_raise() -> None:
    labels, scores = binormal_sample(3, 3, seed=16)
    ids = [f"image-{index}" for index in range(6)]

    with pytest.raises(ValueError, match=r"ids_a and ids_b must list the images in the same order"):
        paired_bootstrap(labels, scores, scores, ids_a=ids, ids_b=ids[::-1])


def test_paired_one_id_list_raises() -> None:
    labels, scores = binormal_sample(3, 3, seed=17)

    with pytest.raises(ValueError, match=r"ids_a and ids_b must be given together"):
        paired_bootstrap(labels, scores, scores, ids_a=[str(index) for index in range(6)])


def test_paired_ids_length_mismatch_raises() -> None:
    labels, scores = binormal_sample(3, 3, seed=18)
    ids = [str(index) for index in range(5)]

    with pytest.raises(ValueError, match=r"ids_a must name every image, but got 5 ids for 6 labels"):
        paired_bootstrap(labels, scores, scores, ids_a=ids, ids_b=ids)


def test_paired_score_length_mismatch_raises() -> None:
    labels, scores = binormal_sample(3, 3, seed=19)

    with pytest.raises(ValueError, match=r"same length, but got 6 labels and 5 scores"):
        paired_bootstrap(labels, scores, scores[:5])


def test_paired_unknown_metric_raises() -> None:
    with pytest.raises(ValueError, match=r"metric must be one of \['auprc', 'auroc'\], but got 'dice'"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.1, 0.2], metric="dice")


@pytest.mark.parametrize("n_resamples", [0, -5, 2.5, True])
def test_bad_resample_count_raises(n_resamples) -> None:
    with pytest.raises(ValueError, match=r"n_resamples must be a positive integer"):
        detection_intervals([0, 1], [0.1, 0.2], n_resamples=n_resamples)


@pytest.mark.parametrize("level", [0.0, 1.0, 95])
def test_bad_level_raises(level: float) -> None:
    with pytest.raises(ValueError, match=r"level must be between 0 and 1"):
        detection_intervals([0, 1], [0.1, 0.2], level=level)


def test_one_class_raises() -> None:
    with pytest.raises(ValueError, match=r"must contain both normal \(0\) and anomalous \(1\) images"):
        detection_intervals([1, 1, 1], [0.1, 0.2, 0.3])


def test_resample_weights_one_class_raises() -> None:
    with pytest.raises(ValueError, match=r"but got none with label 0"):
        resample_weights(np.array([1, 1]), n_resamples=10)
