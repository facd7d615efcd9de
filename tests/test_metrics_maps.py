"""Tests for anomaly maps, image scores and per-data-set map normalisation on tiny tensors checked by hand."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.metrics.detection import auroc
from pipelines.metrics.lpips import LPIPS_WEIGHTS_ENV, PerceptualDistance
from pipelines.metrics.maps import MAP_NAMES, anomaly_maps, image_scores
from pipelines.metrics.normalise import MapNormalisation, fit_map_normalisation

SHARED = Path(__file__).resolve().parents[2] / "shared"
CKPT_PATH = Path(os.environ.get(LPIPS_WEIGHTS_ENV) or SHARED / "models" / "lpips" / "alexnet.ckpt")

IMAGES = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[0.2, 0.4], [0.6, 0.8]]]])
RECONSTRUCTIONS = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]], [[[0.2, 0.4], [0.6, 0.4]]]])
# |IMAGES - RECONSTRUCTIONS| by hand.
ABSOLUTE_ERROR = torch.tensor([[[[0.0, 0.5], [0.0, 0.5]]], [[[0.0, 0.0], [0.0, 0.4]]]])


class CountingDistance:
    """Stand-in spatial distance that returns a fixed map and counts its calls."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.value


def test_map_names() -> None:
    assert MAP_NAMES == ("mae", "lpips", "mae_lpips")


def test_mae_map_hand_values() -> None:
    maps = anomaly_maps(IMAGES, RECONSTRUCTIONS, ["mae"], distance=None)

    assert list(maps) == ["mae"]
    torch.testing.assert_close(maps["mae"], ABSOLUTE_ERROR)


def test_all_maps_one_lpips_call() -> None:
    lpips_map = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.5, 0.5], [0.5, 2.0]]]])
    distance = CountingDistance(lpips_map)

    maps = anomaly_maps(IMAGES, RECONSTRUCTIONS, MAP_NAMES, distance=distance)

    assert distance.calls == 1
    assert list(maps) == list(MAP_NAMES)
    torch.testing.assert_close(maps["lpips"], lpips_map)
    # Product by hand: image 0 is [0, 1; 0, 2], image 1 is [0, 0; 0, 0.8].
    expected_product = torch.tensor([[[[0.0, 1.0], [0.0, 2.0]]], [[[0.0, 0.0], [0.0, 0.8]]]])
    torch.testing.assert_close(maps["mae_lpips"], expected_product)


@pytest.mark.skipif(not CKPT_PATH.is_file(), reason=f"LPIPS weights not found at {CKPT_PATH}")
def test_maps_with_perceptual_distance() -> None:
    distance = PerceptualDistance(CKPT_PATH)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 40, 40, generator=generator)
    reconstructions = torch.rand(2, 1, 40, 40, generator=generator)

    maps = anomaly_maps(images, reconstructions, MAP_NAMES, distance=distance)

    assert torch.equal(maps["lpips"], distance.spatial(images, reconstructions))
    torch.testing.assert_close(maps["mae_lpips"], maps["mae"] * maps["lpips"])


def test_lpips_not_called_for_mae() -> None:
    distance = CountingDistance(torch.zeros_like(IMAGES))

    anomaly_maps(IMAGES, RECONSTRUCTIONS, ["mae"], distance=distance)

    assert distance.calls == 0


@pytest.mark.parametrize("names", [["lpips"], ["mae_lpips"], ["mae", "mae_lpips"]])
def test_lpips_without_distance_raises(names: list[str]) -> None:
    with pytest.raises(ValueError, match=r"distance must be a PerceptualDistance .* but got None"):
        anomaly_maps(IMAGES, RECONSTRUCTIONS, names, distance=None)


@pytest.mark.parametrize("names", [["ssim"], [], ["mae", "MAE"]])
def test_unknown_map_name_raises(names: list[str]) -> None:
    with pytest.raises(ValueError, match=r"names must be a non-empty list of \['mae', 'lpips', 'mae_lpips'\]"):
        anomaly_maps(IMAGES, RECONSTRUCTIONS, names, distance=None)


def test_wrong_distance_shape_raises() -> None:
    distance = CountingDistance(torch.zeros(2, 1, 4, 4))

    with pytest.raises(ValueError, match=r"distance must return a map of shape \(2, 1, 2, 2\), but returned \(2, 1, 4, 4\)"):
        anomaly_maps(IMAGES, RECONSTRUCTIONS, ["lpips"], distance=distance)


def test_multichannel_images_raise() -> None:
    images = IMAGES.repeat(1, 3, 1, 1)

    with pytest.raises(ValueError, match=r"images must have one channel"):
        anomaly_maps(images, images, ["mae"], distance=None)


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"x and y must have the same shape"):
        anomaly_maps(IMAGES, RECONSTRUCTIONS[:1], ["mae"], distance=None)


def test_scores_whole_image() -> None:
    # Image 0: (0 + 0.5 + 0 + 0.5) / 4 = 0.25. Image 1: 0.4 / 4 = 0.1.
    torch.testing.assert_close(image_scores(ABSOLUTE_ERROR, None), torch.tensor([0.25, 0.1]))


def test_scores_inside_mask() -> None:
    masks = torch.tensor([[[[False, True], [True, False]]], [[[False, False], [False, True]]]])

    # Image 0: pixels 0.5 and 0 give 0.25. Image 1: the single pixel 0.4.
    torch.testing.assert_close(image_scores(ABSOLUTE_ERROR, masks), torch.tensor([0.25, 0.4]))


def test_scores_ignore_values_outside_mask() -> None:
    maps = torch.tensor([[[[float("nan"), 1.0], [3.0, float("inf")]]]])
    masks = torch.tensor([[[[False, True], [True, False]]]])

    torch.testing.assert_close(image_scores(maps, masks), torch.tensor([2.0]))


def test_empty_mask_names_index() -> None:
    masks = torch.tensor([[[[True, False], [False, False]]], [[[False, False], [False, False]]]])

    with pytest.raises(ValueError, match=r"the masks of images \[1\] are empty"):
        image_scores(ABSOLUTE_ERROR, masks)


def test_float_mask_raises() -> None:
    with pytest.raises(ValueError, match=r"masks must be boolean, but got dtype torch.float32"):
        image_scores(ABSOLUTE_ERROR, torch.ones_like(ABSOLUTE_ERROR))


def test_mask_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"masks must have the shape of maps \(2, 1, 2, 2\), but got \(1, 1, 2, 2\)"):
        image_scores(ABSOLUTE_ERROR, torch.ones(1, 1, 2, 2, dtype=torch.bool))


def test_scores_reject_wrong_map_shape() -> None:
    with pytest.raises(ValueError, match=r"maps must have shape \(B, 1, H, W\), but got \(2, 2\)"):
        image_scores(torch.zeros(2, 2), None)


# Test split for normalisation: two anomalous maps with a bright lesion on a low background,
# and two healthy maps with a faint error everywhere. Image scores are map means:
# 0.325, 0.3125, 0.2 and 0.25, so the anomalous images rank first.
TEST_MAPS = torch.tensor(
    [
        [[[1.0, 0.1], [0.1, 0.1]]],
        [[[0.8, 0.15], [0.15, 0.15]]],
        [[[0.2, 0.2], [0.2, 0.2]]],
        [[[0.25, 0.25], [0.25, 0.25]]],
    ]
)
TEST_LABELS = [1, 1, 0, 0]
HEALTHY_VALIDATION_MAPS = torch.tensor([[[[0.0, 0.1], [0.2, 0.4]]], [[[0.1, 0.1], [0.3, 0.2]]]])


def test_normalisation_keeps_ranking() -> None:
    masks = torch.ones_like(TEST_MAPS, dtype=torch.bool)
    normalisation = fit_map_normalisation(HEALTHY_VALIDATION_MAPS, percentile=99.0)
    raw_scores = image_scores(TEST_MAPS, masks)

    data_set_scores = image_scores(normalisation.apply(TEST_MAPS), masks)

    # Each image divided by its own 99th percentile: the anomalous maps score 0.33 and 0.40,
    # because one bright pixel sets their scale, and each healthy map becomes all ones (score 1).
    # The ranking flips.
    per_image_scale = torch.quantile(TEST_MAPS.flatten(start_dim=1), 0.99, dim=1).view(-1, 1, 1, 1)
    per_image_scores = image_scores(TEST_MAPS / per_image_scale, masks)

    assert auroc(TEST_LABELS, raw_scores) == 1.0
    assert torch.equal(torch.argsort(data_set_scores), torch.argsort(raw_scores))
    assert auroc(TEST_LABELS, data_set_scores) == 1.0
    assert auroc(TEST_LABELS, per_image_scores) == 0.0


def test_normalisation_hand_scale() -> None:
    # The 8 healthy values sorted: 0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4. The maximum is 0.4, and
    # the median, by linear interpolation, is halfway between 0.1 and 0.2.
    assert fit_map_normalisation(HEALTHY_VALIDATION_MAPS, percentile=100.0).scale == pytest.approx(0.4)
    assert fit_map_normalisation(HEALTHY_VALIDATION_MAPS, percentile=50.0).scale == pytest.approx(0.15)


def test_normalisation_fits_normal_images_only() -> None:
    maps = torch.cat([HEALTHY_VALIDATION_MAPS, torch.full((1, 1, 2, 2), 10.0)])

    normalisation = fit_map_normalisation(maps, labels=[0, 0, 1], percentile=100.0)

    assert normalisation == MapNormalisation(scale=pytest.approx(0.4), percentile=100.0, n_images=2)


def test_normalisation_inside_masks() -> None:
    maps = HEALTHY_VALIDATION_MAPS.clone()
    maps[0, 0, 0, 0] = float("nan")
    maps[1, 0, 0, 0] = 5.0
    masks = torch.ones_like(maps, dtype=torch.bool)
    masks[:, 0, 0, 0] = False

    normalisation = fit_map_normalisation(maps, masks=masks, percentile=100.0)

    assert normalisation.scale == pytest.approx(0.4)


def test_normalisation_applies_to_other_splits() -> None:
    normalisation = fit_map_normalisation(HEALTHY_VALIDATION_MAPS.numpy(), percentile=100.0)

    normalised_tensor = normalisation.apply(TEST_MAPS)
    normalised_array = normalisation.apply(TEST_MAPS.numpy())

    assert isinstance(normalised_tensor, torch.Tensor)
    assert isinstance(normalised_array, np.ndarray)
    torch.testing.assert_close(normalised_tensor, TEST_MAPS / 0.4)
    np.testing.assert_allclose(normalised_array, TEST_MAPS.numpy() / 0.4, rtol=1e-6)


@pytest.mark.parametrize("percentile", [0.0, -1.0, 100.5])
def test_normalisation_bad_percentile_raises(percentile: float) -> None:
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        fit_map_normalisation(HEALTHY_VALIDATION_MAPS, percentile=percentile)


def test_normalisation_zero_maps_raise() -> None:
    with pytest.raises(ValueError, match=r"the 99.0th percentile of the maps must be positive to serve as a scale, but got 0.0"):
        fit_map_normalisation(torch.zeros(2, 1, 2, 2))


def test_normalisation_empty_masks_raise() -> None:
    masks = torch.zeros_like(HEALTHY_VALIDATION_MAPS, dtype=torch.bool)

    with pytest.raises(ValueError, match=r"the masks of the selected images must contain at least one pixel"):
        fit_map_normalisation(HEALTHY_VALIDATION_MAPS, masks=masks)


def test_normalisation_nan_inside_mask_raises() -> None:
    maps = HEALTHY_VALIDATION_MAPS.clone()
    maps[0, 0, 1, 1] = float("nan")

    with pytest.raises(ValueError, match=r"maps must be finite inside the masks, but got 1 NaN"):
        fit_map_normalisation(maps)


def test_normalisation_float_masks_raise() -> None:
    with pytest.raises(ValueError, match=r"masks must be boolean, but got dtype float32"):
        fit_map_normalisation(HEALTHY_VALIDATION_MAPS, masks=torch.ones_like(HEALTHY_VALIDATION_MAPS))


def test_normalisation_all_anomalous_raises() -> None:
    with pytest.raises(ValueError, match=r"labels must include at least one normal \(0\) image"):
        fit_map_normalisation(HEALTHY_VALIDATION_MAPS, labels=[1, 1])


def test_normalisation_label_count_raises() -> None:
    with pytest.raises(ValueError, match=r"labels must give one label per map, but got 3 labels for 2 maps"):
        fit_map_normalisation(HEALTHY_VALIDATION_MAPS, labels=[0, 0, 1])


def test_normalisation_no_images_raise() -> None:
    with pytest.raises(ValueError, match=r"maps must have at least one image"):
        fit_map_normalisation(np.zeros((0, 1, 2, 2)))
