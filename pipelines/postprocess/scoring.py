"""Gaussian smoothing of anomaly maps and image scores that aggregate a map inside a mask.

The score ``mean`` is :func:`pipelines.metrics.maps.image_scores`, the score of the grid's
cells. The others aggregate the same pixels differently: ``max`` takes the largest value,
``percentile`` the q-th percentile (NumPy's linear interpolation), and ``top_k`` the mean of
the largest k % of the pixels, at least one pixel.

Example:
    >>> import numpy as np
    >>> maps = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    >>> masks = np.array([[[[True, True], [False, False]]], [[[True, True], [True, True]]]])
    >>> score_images(maps, masks, "mean").tolist()
    [0.5, 5.5]
    >>> score_images(maps, masks, "top_k", top_k_percent=50.0).tolist()
    [1.0, 6.5]
    >>> score_images(maps, None, "max").tolist()
    [3.0, 7.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from scipy import ndimage

from pipelines.metrics.maps import check_boolean_mask, image_scores

ScoreName = Literal["mean", "max", "percentile", "top_k"]
SCORE_NAMES: tuple[ScoreName, ...] = get_args(ScoreName)


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each map of shape ``(N, 1, H, W)`` with a Gaussian of standard deviation ``sigma`` pixels.

    The blur covers the whole image, before any mask, with SciPy's default ``reflect`` border
    and a kernel truncated at 4 sigma. A ``sigma`` of 0 returns ``maps`` unchanged.

    Raises:
        ValueError: if ``sigma`` is negative or not finite, or ``maps`` is not ``(N, 1, H, W)``.
    """
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be finite and at least 0 pixels, but got {sigma}")

    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must have shape (N, 1, H, W), but got {maps.shape}")

    if sigma == 0:
        return maps
    return ndimage.gaussian_filter(maps, sigma=(0.0, 0.0, sigma, sigma))


def score_images(
    maps: np.ndarray,
    masks: np.ndarray | None,
    score: ScoreName,
    *,
    percentile: float | None = None,
    top_k_percent: float | None = None,
) -> np.ndarray:
    """Aggregate each map of shape ``(N, 1, H, W)`` inside its mask into one anomaly score, shape ``(N,)``.

    ``masks`` is a boolean array of the same shape, or ``None`` for the whole image.
    ``percentile`` (q in (0, 100]) is needed for ``percentile`` and ``top_k_percent`` (k in
    (0, 100]) for ``top_k``.

    Raises:
        ValueError: if ``score`` is unknown, its parameter is missing or out of range, or the
            shapes, mask type or an empty mask make the score undefined.
    """
    if score == "mean":
        mask_tensor = None if masks is None else _as_tensor(masks)
        return image_scores(_as_tensor(maps), mask_tensor).numpy().astype(np.float64)

    if score == "percentile":
        q = _percent("percentile", percentile)
        return _per_image(maps, masks, lambda values: np.percentile(values, q))

    if score == "top_k":
        k = _percent("top_k_percent", top_k_percent)
        return _per_image(maps, masks, lambda values: _top_k_mean(values, k))

    if score == "max":
        return _per_image(maps, masks, np.max)

    raise ValueError(f"score must be one of {list(SCORE_NAMES)}, but got {score!r}")


def _as_tensor(values: np.ndarray) -> torch.Tensor:
    """Share ``values`` with a tensor, copying only read-only arrays (such as Ray's), which torch warns about."""
    return torch.from_numpy(np.require(values, requirements=["W"]))


def _percent(name: str, value: float | None) -> float:
    if value is None or not 0 < value <= 100:
        raise ValueError(f"{name} must be a number in (0, 100] for this score, but got {value}")
    return float(value)


def _top_k_mean(values: np.ndarray, k: float) -> float:
    count = max(1, math.ceil(values.size * k / 100))
    return float(np.partition(values, values.size - count)[values.size - count :].mean())


def _per_image(maps: np.ndarray, masks: np.ndarray | None, aggregate: Callable[[np.ndarray], float]) -> np.ndarray:
    """Apply ``aggregate`` to the pixels of each map inside its mask, with the checks of ``image_scores``."""
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must have shape (N, 1, H, W), but got {maps.shape}")

    flat_maps = maps.reshape(maps.shape[0], -1)
    if masks is None:
        return np.array([aggregate(row) for row in flat_maps], dtype=np.float64)

    flat_masks = check_boolean_mask(masks, "masks", maps.shape).reshape(maps.shape[0], -1)
    empty = np.flatnonzero(~flat_masks.any(axis=1)).tolist()
    if empty:
        raise ValueError(f"every mask must select at least one pixel, but the masks of images {empty} are empty. Check the head masks")
    return np.array([aggregate(row[inside]) for row, inside in zip(flat_maps, flat_masks)], dtype=np.float64)
