"""Tests for pooled pixel-level AUPRC and best Dice, on hand-checked arrays and on synthetic phantoms."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pipelines.data.phantoms import generate_synthetic_phantom
from pipelines.metrics.pixel import PixelMetrics, pixel_metrics

# Two 2×2 images, each with one lesion pixel (top left) that is its own highest value.
MAPS = np.array([[[[0.9, 0.8], [0.1, 0.2]]], [[[0.5, 0.3], [0.05, 0.4]]]])
LESIONS = np.zeros_like(MAPS, dtype=bool)
LESIONS[:, 0, 0, 0] = True


def phantom_arrays(count: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return images, lesion masks and head masks of ``count`` phantoms, shape (count, 1, size, size), every other one pathological."""
    phantoms = [generate_synthetic_phantom(index, size=size, pathological=index % 2 == 0) for index in range(count)]
    images = np.stack([phantom.image for phantom in phantoms])[:, None]
    lesions = np.stack([phantom.lesion_mask for phantom in phantoms])[:, None]
    heads = np.stack([phantom.head_mask for phantom in phantoms])[:, None]
    return images, lesions, heads


def brute_force_dice(maps: np.ndarray, lesions: np.ndarray, threshold: float) -> float:
    """Compute the pooled Dice of ``maps >= threshold`` against ``lesions`` by counting pixels."""
    predicted = maps >= threshold
    return 2 * np.count_nonzero(predicted & lesions) / (np.count_nonzero(predicted) + np.count_nonzero(lesions))


def test_pooled_hand_values() -> None:
    # Pooled and sorted: 0.9 (lesion), 0.8, 0.5 (lesion), 0.4, 0.3, 0.2, 0.1, 0.05.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Dice at >= 0.9: 2*1 / (1 + 2) = 2/3. At >= 0.8: 2 / (2 + 2) = 1/2. At >= 0.5: 2*2 / (3 + 2) = 4/5.
    # At >= 0.4: 4 / (4 + 2) = 2/3, and lower thresholds only add normal pixels.
    result = pixel_metrics(MAPS, LESIONS)

    assert result.auprc == pytest.approx(5 / 6)
    assert result.best_dice == pytest.approx(4 / 5)
    assert result.threshold == 0.5
    assert result.n_pixels == 8
    assert result.n_lesion_pixels == 2


def test_pooled_differs_from_per_image_mean() -> None:
    # Each image ranks its own lesion first, so the mean of per-image APs is 1, but pooled
    # pixels put the normal 0.8 of image 0 above the lesion 0.5 of image 1.
    per_image = [average_precision_score(LESIONS[index].ravel(), MAPS[index].ravel()) for index in range(2)]

    assert np.mean(per_image) == 1.0
    assert pixel_metrics(MAPS, LESIONS).auprc < 0.9


def test_region_drops_outside_pixels() -> None:
    # Without the 0.8 pixel, both lesions rank first: AP = 1, and >= 0.5 finds them exactly.
    region = np.ones_like(LESIONS)
    region[0, 0, 0, 1] = False

    result = pixel_metrics(MAPS, LESIONS, region_masks=region)

    assert result.auprc == 1.0
    assert result.best_dice == 1.0
    assert result.threshold == 0.5
    assert result.n_pixels == 7


def test_region_ignores_nan_outside() -> None:
    maps = MAPS.copy()
    maps[1, 0, 1, 0] = np.nan
    region = np.ones_like(LESIONS)
    region[1, 0, 1, 0] = False

    assert pixel_metrics(maps, LESIONS, region_masks=region).n_pixels == 7


def test_equals_sklearn_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    lesions = rng.random((3, 1, 16, 16)) < 0.1
    # Rounded to 0.05 so that many pixels tie at each threshold.
    maps = np.round((rng.random(lesions.shape) + 0.5 * lesions) / 0.05) * 0.05

    result = pixel_metrics(maps, lesions)

    assert abs(result.auprc - average_precision_score(lesions.ravel(), maps.ravel())) < 1e-12
    dice_per_threshold = {float(value): brute_force_dice(maps, lesions, value) for value in np.unique(maps)}
    assert result.best_dice == pytest.approx(max(dice_per_threshold.values()), abs=1e-12)
    assert dice_per_threshold[result.threshold] == pytest.approx(result.best_dice, abs=1e-12)


def test_accepts_tensors() -> None:
    expected = pixel_metrics(MAPS, LESIONS)

    result = pixel_metrics(torch.from_numpy(MAPS), torch.from_numpy(LESIONS), region_masks=torch.ones(MAPS.shape, dtype=torch.bool))

    assert result == expected


def test_phantom_lesion_masks() -> None:
    images, lesions, heads = phantom_arrays(6, size=64)
    # A map equal to the lesion mask plus noise below its step finds every lesion pixel first.
    noise = np.random.default_rng(1).uniform(0.0, 0.4, size=lesions.shape)
    perfect = lesions + noise

    result = pixel_metrics(perfect, lesions, region_masks=heads)

    assert result.auprc == pytest.approx(1.0, abs=1e-12)
    assert result.best_dice == pytest.approx(1.0, abs=1e-12)
    # The best threshold is the lowest lesion value, 1 plus that pixel's noise.
    assert 1.0 <= result.threshold < 1.4
    assert result.n_pixels == np.count_nonzero(heads)
    assert result.n_lesion_pixels == np.count_nonzero(lesions)


def test_phantom_intensity_map() -> None:
    # The phantom's brightness as the map: a weak detector, because cysts are dark and
    # hyperechoic lesions bright, but better than chance, whose AP is the share of lesion pixels.
    images, lesions, heads = phantom_arrays(6, size=64)

    result = pixel_metrics(images, lesions, region_masks=heads)
    share_of_lesion_pixels = result.n_lesion_pixels / result.n_pixels

    assert isinstance(result, PixelMetrics)
    assert 0.0 < result.auprc < 1.0
    assert 0.0 < result.best_dice < 1.0
    assert result.auprc > share_of_lesion_pixels


def test_thirty_phantoms_fast() -> None:
    images, lesions, heads = phantom_arrays(30, size=128)
    maps = np.abs(images - images.mean(axis=(2, 3), keepdims=True)).astype(np.float32)

    start = time.perf_counter()
    pixel_metrics(maps, lesions, region_masks=heads)
    pixel_metrics(maps, lesions)
    elapsed = time.perf_counter() - start

    assert elapsed < 5.0


def test_lesion_outside_region_raises() -> None:
    region = np.ones_like(LESIONS)
    region[1, 0, 0, 0] = False

    with pytest.raises(ValueError, match=r"lesion_masks must lie inside region_masks, but 1 lesion pixels are outside"):
        pixel_metrics(MAPS, LESIONS, region_masks=region)


def test_no_lesion_pixel_raises() -> None:
    with pytest.raises(ValueError, match=r"must contain lesion and normal pixels, but got 0 lesion pixels of 8"):
        pixel_metrics(MAPS, np.zeros_like(LESIONS))


def test_only_lesion_pixels_raise() -> None:
    with pytest.raises(ValueError, match=r"but got 2 lesion pixels of 2"):
        pixel_metrics(MAPS, LESIONS, region_masks=LESIONS)


def test_nan_in_region_raises() -> None:
    maps = MAPS.copy()
    maps[0, 0, 1, 1] = np.inf

    with pytest.raises(ValueError, match=r"maps must be finite inside the region, but got 1 NaN or infinite values"):
        pixel_metrics(maps, LESIONS)


def test_float_mask_raises() -> None:
    with pytest.raises(ValueError, match=r"lesion_masks must be boolean, but got dtype float64"):
        pixel_metrics(MAPS, LESIONS.astype(float))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"region_masks must have the shape of maps \(2, 1, 2, 2\), but got \(1, 1, 2, 2\)"):
        pixel_metrics(MAPS, LESIONS, region_masks=LESIONS[:1])
