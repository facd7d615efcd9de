"""Cropping to the head: bounding box with a margin, background set to zero, aspect kept.

The output is square: the crop is padded with zeros to a square before resizing, so
the head is never stretched. Intensities are normalised by a high percentile of the
pixels inside the head, and the head mask is returned with the image for later
image scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.preprocess import normalise_percentile, resize_square


@dataclass(frozen=True)
class HeadCrop:
    """A square image in [0, 1] with zero background and its head mask, both ``size`` x ``size``.

    ``lesion_mask`` is the pixel label map given to :func:`crop_to_head`, cropped the same way.
    """

    image: np.ndarray
    mask: np.ndarray
    lesion_mask: np.ndarray | None = None


def crop_to_head(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    size: int,
    margin: float = 0.1,
    percentile: float = 98.0,
    lesion_mask: np.ndarray | None = None,
) -> HeadCrop:
    """Crop ``image`` to the head's bounding box grown by ``margin`` (a fraction of its size).

    1. Set every pixel outside the head mask to zero.
    2. Crop to the bounding box plus margin, clipped to the frame.
    3. Pad the shorter side with zeros to a square, centred, then resize to ``size``.
    4. Divide by the ``percentile`` of the pixels inside the head and clip to [0, 1].
    """
    if image.shape != mask.shape:
        raise ValueError(f"image and mask must have the same shape, but got {image.shape} and {mask.shape}")
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("the head mask is empty, so there is nothing to crop to")

    # 1-2. Background to zero, crop to the grown bounding box.
    grow_rows = int(round(margin * (rows.max() - rows.min() + 1)))
    grow_columns = int(round(margin * (columns.max() - columns.min() + 1)))
    top, bottom = max(rows.min() - grow_rows, 0), min(rows.max() + grow_rows + 1, image.shape[0])
    left, right = max(columns.min() - grow_columns, 0), min(columns.max() + grow_columns + 1, image.shape[1])
    cropped = np.where(mask, image, 0.0)[top:bottom, left:right]

    # 3. Pad to a square so resizing keeps the aspect ratio.
    height, width = cropped.shape
    side = max(height, width)
    pad_rows, pad_columns = side - height, side - width
    padding = ((pad_rows // 2, pad_rows - pad_rows // 2), (pad_columns // 2, pad_columns - pad_columns // 2))
    square = np.pad(cropped, padding)
    resized = resize_square(square, size)
    resized_mask = _crop_mask(mask, (top, bottom, left, right), padding, size)
    resized_lesions = None
    if lesion_mask is not None:
        resized_lesions = _crop_mask(lesion_mask & mask, (top, bottom, left, right), padding, size)

    # 4. Normalise by the head's own intensities; the background stays zero.
    normalised = normalise_percentile(np.where(resized_mask, resized, 0.0), percentile, mask=resized_mask)
    return HeadCrop(image=normalised, mask=resized_mask, lesion_mask=resized_lesions)


def _crop_mask(mask: np.ndarray, box: tuple[int, int, int, int], padding: tuple, size: int) -> np.ndarray:
    top, bottom, left, right = box
    square = np.pad(mask[top:bottom, left:right], padding)
    return resize_square(square.astype(np.float32), size, nearest=True) > 0.5
