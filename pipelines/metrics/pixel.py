"""Pixel-level detection against lesion masks: AUPRC pooled over the pixels of all images, and the best Dice.

The pixels of all images are pooled, not scored per image and averaged: each pixel (inside
``region_masks`` when given) is one sample, with its lesion-mask value as the label and its
anomaly-map value as the score. One threshold therefore serves the whole data set, and the
pixels of healthy images count as normal pixels, so their false positives lower the result.
For the same reason, the maps must be normalised per data set, not per image (see
``pipelines.metrics.normalise``).

Both metrics come from one call to scikit-learn's ``precision_recall_curve`` on the flattened
pixels, with every distinct map value as a threshold, so they are exact and use no binning.
AUPRC is average precision, computed from that curve with the formula of
``average_precision_score``. The Dice of the prediction ``map >= threshold`` equals its F1
score, 2PR / (P + R), so the best Dice is the maximum F1 over the same thresholds.

Memory: ``precision_recall_curve`` of scikit-learn 1.9.1 peaked at about 70 bytes per pixel
(tracemalloc, 3.3 million float32 pixels), so 30 images of 128×128 need about 35 MB. Passing
the head masks as ``region_masks`` keeps only the pixels inside the head.

Example:
    >>> import numpy as np
    >>> maps = np.array([[[0.9, 0.8], [0.1, 0.2]], [[0.5, 0.3], [0.05, 0.4]]])
    >>> lesions = np.array([[[True, False], [False, False]], [[True, False], [False, False]]])
    >>> result = pixel_metrics(maps, lesions)
    >>> round(result.auprc, 4), result.best_dice, result.threshold
    (0.8333, 0.8, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve

from pipelines.metrics.maps import as_numpy, check_boolean_mask

MapArray = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class PixelMetrics:
    """Pooled pixel-level AUPRC, the best Dice over thresholds, and the pixel counts behind them."""

    auprc: float
    best_dice: float
    threshold: float
    """The map value at which Dice is best. Pixels with ``map >= threshold`` are predicted lesion."""
    n_pixels: int
    n_lesion_pixels: int


def pixel_metrics(maps: MapArray, lesion_masks: MapArray, *, region_masks: MapArray | None = None) -> PixelMetrics:
    """Compute the pooled pixel-level AUPRC and the best Dice of anomaly maps against lesion masks.

    Pass every image whose lesion mask is known, healthy images included (their masks are all
    False). A pathological image without a lesion mask would count its lesion as normal pixels.
    Among thresholds with the same best Dice, the lowest is returned.

    Args:
        maps: anomaly maps, for example ``(B, 1, H, W)``; any shape that the masks share.
        lesion_masks: boolean masks of lesion pixels, the shape of ``maps``.
        region_masks: boolean masks of the pixels to evaluate, for example the head masks, the
            shape of ``maps``. ``None`` evaluates every pixel.

    Raises:
        ValueError: if the shapes differ, a mask is not boolean, a lesion pixel lies outside
            the region, the region contains no lesion pixel or no normal pixel, or a map value in
            the region is NaN or infinite.
    """
    score_array = as_numpy(maps)
    lesion_array = check_boolean_mask(lesion_masks, "lesion_masks", score_array.shape)

    # 1. Keep the pixels inside the region, flattened; a copy only as large as the region.
    if region_masks is None:
        scores, labels = score_array.reshape(-1), lesion_array.reshape(-1)
    else:
        region_array = check_boolean_mask(region_masks, "region_masks", score_array.shape)
        outside = int(np.count_nonzero(lesion_array & ~region_array))
        if outside:
            raise ValueError(
                f"lesion_masks must lie inside region_masks, but {outside} lesion pixels are outside. "
                "Intersect the lesion masks with the region, or pass region_masks=None"
            )
        scores, labels = score_array[region_array], lesion_array[region_array]

    _check_pixels(scores, labels)

    # 2. One precision-recall curve over all distinct map values. Its last point (precision 1,
    #    recall 0) has no threshold.
    precision, recall, thresholds = precision_recall_curve(labels, scores, drop_intermediate=False)
    average_precision = float(-np.sum(np.diff(recall) * precision[:-1]))

    # 3. Dice = F1 at each threshold. Precision + recall is 0 only where no lesion pixel is found.
    precision, recall = precision[:-1], recall[:-1]
    total = precision + recall
    dice = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    best = int(np.argmax(dice))

    return PixelMetrics(
        auprc=average_precision,
        best_dice=float(dice[best]),
        threshold=float(thresholds[best]),
        n_pixels=int(labels.size),
        n_lesion_pixels=int(np.count_nonzero(labels)),
    )


def _check_pixels(scores: np.ndarray, labels: np.ndarray) -> None:
    """Raise ``ValueError`` unless the pixels contain both classes and every score is finite."""
    n_lesion = int(np.count_nonzero(labels))
    if n_lesion == 0 or n_lesion == labels.size:
        raise ValueError(
            f"the evaluated pixels must contain lesion and normal pixels, but got {n_lesion} lesion pixels of {labels.size}. "
            "Evaluate images with lesion masks together with normal tissue"
        )

    not_finite = int(np.count_nonzero(~np.isfinite(scores)))
    if not_finite:
        raise ValueError(f"maps must be finite inside the region, but got {not_finite} NaN or infinite values")
