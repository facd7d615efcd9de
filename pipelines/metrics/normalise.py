"""Per-data-set normalisation of anomaly maps: one scale, fitted on one split and applied to every image of every split.

A threshold on anomaly maps (a lesion mask, a Dice sweep) only means the same on every image if
every map is on the same scale. Fit the scale once, for example as the 99th percentile of the
maps of healthy validation images inside their head masks, and divide every map of every split
by it. Dividing by one positive constant keeps the ranking of pixels and of image scores, so
AUPRC and AUROC do not change. Normalising each image by its own statistics would change that
ranking: an image whose error is faint but widespread would score as high as one with a bright
lesion, and a threshold would mean something different on each image.

Example:
    >>> import numpy as np
    >>> healthy_maps = np.array([[[[0.0, 0.1], [0.2, 0.4]]]])
    >>> normalisation = fit_map_normalisation(healthy_maps, percentile=100.0)
    >>> normalisation.scale
    0.4
    >>> normalisation.apply(np.array([0.2, 0.8]))
    array([0.5, 2. ])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from pipelines.metrics.maps import as_numpy, check_boolean_mask

MapArray = TypeVar("MapArray", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class MapNormalisation:
    """The scale that divides every anomaly map of a data set, with the percentile and image count it was fitted on."""

    scale: float
    percentile: float
    n_images: int

    def apply(self, maps: MapArray) -> MapArray:
        """Divide ``maps``, an array or tensor of any shape, by the fitted scale, keeping its type."""
        return maps / self.scale


def fit_map_normalisation(
    maps: np.ndarray | torch.Tensor,
    *,
    masks: np.ndarray | torch.Tensor | None = None,
    labels: np.ndarray | torch.Tensor | None = None,
    percentile: float = 99.0,
) -> MapNormalisation:
    """Fit the scale of a data set's anomaly maps as a high percentile of one split's map values.

    Args:
        maps: the maps of the split to fit on, images first, for example ``(B, 1, H, W)``.
        masks: boolean masks of the pixels to use, the shape of ``maps``, for example the head
            masks. ``None`` uses every pixel.
        labels: 0 (normal) or 1 (anomalous) per image. When given, only normal images are used.
        percentile: the percentile of the selected pixel values that becomes the scale, in
            (0, 100]. It is computed with ``numpy.percentile`` (linear interpolation).

    Raises:
        ValueError: if the shapes differ, the mask is not boolean, ``percentile`` is out of
            range, no pixel is selected, a selected value is NaN or infinite, or the
            percentile is not positive.
    """
    map_array = as_numpy(maps)
    if map_array.ndim < 1 or map_array.shape[0] == 0:
        raise ValueError(f"maps must have at least one image along the first axis, but got shape {map_array.shape}")

    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], for example 99, but got {percentile!r}")

    selected = np.ones(map_array.shape, dtype=bool) if masks is None else check_boolean_mask(masks, "masks", map_array.shape)
    images = np.ones(map_array.shape[0], dtype=bool) if labels is None else _normal_images(labels, map_array.shape[0])
    values = map_array[images][selected[images]]
    if values.size == 0:
        raise ValueError("the masks of the selected images must contain at least one pixel, but they are all empty. Check the head masks")

    not_finite = int(np.count_nonzero(~np.isfinite(values)))
    if not_finite:
        raise ValueError(f"maps must be finite inside the masks, but got {not_finite} NaN or infinite values")

    scale = float(np.percentile(values.astype(np.float64), percentile))
    if scale <= 0:
        raise ValueError(
            f"the {percentile}th percentile of the maps must be positive to serve as a scale, but got {scale}. "
            "Use a higher percentile or check that the maps are not all zero"
        )
    return MapNormalisation(scale=scale, percentile=float(percentile), n_images=int(np.count_nonzero(images)))


def _normal_images(labels: np.ndarray | torch.Tensor, n_images: int) -> np.ndarray:
    """Return which images have label 0, checking that the labels fit the maps and include a normal image."""
    array = as_numpy(labels).reshape(-1)
    if array.size != n_images:
        raise ValueError(f"labels must give one label per map, but got {array.size} labels for {n_images} maps")

    unexpected = sorted(set(np.unique(array).tolist()) - {0, 1})
    if unexpected:
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), but got {unexpected}")

    normal = array == 0
    if not normal.any():
        raise ValueError("labels must include at least one normal (0) image to fit on, but all are anomalous. Fit on healthy validation images")
    return normal
