"""Tests for map smoothing and the image scores of the post-processing search, on maps checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.metrics.maps import image_scores
from pipelines.postprocess.candidates import Candidate, CandidateScorer
from pipelines.postprocess.scoring import score_images, smooth_maps
from pipelines.postprocess.settings import SplitMaps

# Image 0 has the values 0..3 and a mask on its top row (values 0 and 1); image 1 has 4..7
# and a full mask.
MAPS = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
MASKS = np.array([[[[True, True], [False, False]]], [[[True, True], [True, True]]]])


@pytest.mark.parametrize(
    ("score", "options", "expected"),
    [
        ("mean", {}, [0.5, 5.5]),
        ("max", {}, [1.0, 7.0]),
        # NumPy's linear interpolation: the median of [0, 1] is 0.5, of [4, 5, 6, 7] is 5.5.
        ("percentile", {"percentile": 50.0}, [0.5, 5.5]),
        ("percentile", {"percentile": 100.0}, [1.0, 7.0]),
        # 50 % of 2 pixels is the largest one; 50 % of 4 pixels is the mean of 6 and 7.
        ("top_k", {"top_k_percent": 50.0}, [1.0, 6.5]),
        # 1 % of 2 or 4 pixels rounds up to one pixel, the maximum.
        ("top_k", {"top_k_percent": 1.0}, [1.0, 7.0]),
        ("top_k", {"top_k_percent": 100.0}, [0.5, 5.5]),
    ],
)
def test_scores_inside_mask(score: str, options: dict[str, float], expected: list[float]) -> None:
    scores = score_images(MAPS, MASKS, score, **options)

    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected)


@pytest.mark.parametrize(
    ("score", "options", "expected"),
    [
        ("mean", {}, [1.5, 5.5]),
        ("max", {}, [3.0, 7.0]),
        ("percentile", {"percentile": 50.0}, [1.5, 5.5]),
        ("top_k", {"top_k_percent": 25.0}, [3.0, 7.0]),
    ],
)
def test_scores_whole_image(score: str, options: dict[str, float], expected: list[float]) -> None:
    np.testing.assert_allclose(score_images(MAPS, None, score, **options), expected)


def test_mean_matches_grid_image_scores() -> None:
    generator = np.random.default_rng(0)
    maps = generator.random((5, 1, 16, 16), dtype=np.float32)
    masks = generator.random((5, 1, 16, 16)) > 0.3

    expected = image_scores(torch.from_numpy(maps), torch.from_numpy(masks)).numpy()

    np.testing.assert_allclose(score_images(maps, masks, "mean"), expected, rtol=1e-6)


def test_scores_accept_read_only_arrays() -> None:
    maps = MAPS.copy()
    masks = MASKS.copy()
    maps.flags.writeable = False
    masks.flags.writeable = False

    np.testing.assert_allclose(score_images(maps, masks, "mean"), [0.5, 5.5])


def test_values_outside_mask_ignored() -> None:
    maps = MAPS.copy()
    maps[0, 0, 1, :] = np.inf

    np.testing.assert_allclose(score_images(maps, MASKS, "max"), [1.0, 7.0])
    np.testing.assert_allclose(score_images(maps, MASKS, "percentile", percentile=50.0), [0.5, 5.5])


@pytest.mark.parametrize(
    ("score", "options", "masks", "message"),
    [
        ("median", {}, MASKS, "score must be one of"),
        ("percentile", {}, MASKS, "percentile must be a number in"),
        ("percentile", {"percentile": 0.0}, MASKS, "percentile must be a number in"),
        ("top_k", {"top_k_percent": 120.0}, MASKS, "top_k_percent must be a number in"),
        ("max", {}, MASKS.astype(np.float32), "masks must be boolean"),
        ("max", {}, MASKS[:1], "masks must have the shape of maps"),
        ("top_k", {"top_k_percent": 5.0}, np.zeros_like(MASKS), r"masks of images \[0, 1\] are empty"),
    ],
)
def test_score_rejects_bad_input(score: str, options: dict[str, float], masks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_images(MAPS, masks, score, **options)


def test_smooth_zero_sigma_unchanged() -> None:
    assert smooth_maps(MAPS, 0.0) is MAPS


def test_smooth_keeps_constant_map() -> None:
    maps = np.full((1, 1, 9, 9), 0.25, dtype=np.float32)

    np.testing.assert_allclose(smooth_maps(maps, 2.0), maps, rtol=1e-6)


def test_smooth_spreads_impulse_per_image() -> None:
    maps = np.zeros((2, 1, 41, 41), dtype=np.float32)
    maps[0, 0, 20, 20] = 1.0

    smoothed = smooth_maps(maps, 2.0)

    # The kernel sums to 1 and its truncation (4 sigma = 8 pixels) stays clear of the border.
    assert smoothed[0].sum() == pytest.approx(1.0, rel=1e-5)
    # A 2-D Gaussian of sigma 2 peaks at about 1 / (2 pi sigma^2) = 0.0398; the discrete
    # kernel's peak is the square of its 1-D peak, 0.1995, which is 0.0398.
    assert smoothed[0, 0, 20, 20] == pytest.approx(0.1995**2, rel=1e-2)
    np.testing.assert_allclose(smoothed[0, 0], smoothed[0, 0].T, atol=1e-7)
    assert not smoothed[1].any()


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf")])
def test_smooth_rejects_bad_sigma(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma must be finite and at least 0"):
        smooth_maps(MAPS, sigma)


def test_smooth_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"maps must have shape \(N, 1, H, W\)"):
        smooth_maps(MAPS[:, 0], 1.0)


def test_scorer_caches_candidate_scores() -> None:
    split = SplitMaps(labels=np.array([0, 1]), maps={"mae": MAPS}, head_masks=MASKS, ids=["a", "b"])
    scorer = CandidateScorer(split)
    candidate = Candidate("mae", 0.0, True, "top_k", top_k_percent=50.0)

    first = scorer.scores(candidate)

    assert scorer.scores(Candidate.from_params(candidate.params())) is first
    assert not first.flags.writeable
    np.testing.assert_allclose(first, [1.0, 6.5])


def test_candidate_params_round_trip() -> None:
    candidate = Candidate("lpips", 2.0, False, "percentile", percentile=99.0)

    assert candidate.params() == {"map": "lpips", "sigma": 2.0, "head_mask": False, "score": "percentile", "percentile": 99.0}
    assert Candidate.from_params(candidate.params()) == candidate
