"""Tests for anomaly maps and image scores on tiny tensors checked by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipelines.metrics.lpips import LPIPS_WEIGHTS_ENV, PerceptualDistance
from pipelines.metrics.maps import MAP_NAMES, anomaly_maps, image_scores

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
