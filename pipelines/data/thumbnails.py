"""Pack the review thumbnails of curation, of any sizes, into flat arrays for the cache, and back.

Thumbnails are concatenated without padding, so a wide frame keeps its whole width.
Head masks are stored as bits (``np.packbits``), eight pixels to a byte.
"""

from __future__ import annotations

import numpy as np

Thumbnail = tuple[np.ndarray, np.ndarray | None]

# Arrays of a packed thumbnail entry; an entry without one of them is recomputed.
THUMBNAIL_ARRAYS = ("thumbnail_ids", "thumbnail_shapes", "thumbnail_pixels", "thumbnail_mask_bits", "has_thumbnail_mask")


def pack_thumbnails(thumbnails: dict[str, Thumbnail]) -> dict[str, np.ndarray]:
    """Pack uint8 thumbnails and their optional boolean masks of the same shape, by image id."""
    ids = list(thumbnails)
    shapes = np.array([thumbnails[identifier][0].shape for identifier in ids], dtype=np.int64).reshape(len(ids), 2)
    pixels = [thumbnails[identifier][0].ravel() for identifier in ids]
    masks = [
        np.zeros(image.size, dtype=bool) if mask is None else mask.ravel()
        for image, mask in (thumbnails[identifier] for identifier in ids)
    ]
    return {
        "thumbnail_ids": np.array(ids, dtype=str),
        "thumbnail_shapes": shapes,
        "thumbnail_pixels": np.concatenate(pixels) if pixels else np.zeros(0, dtype=np.uint8),
        "thumbnail_mask_bits": np.packbits(np.concatenate(masks)) if masks else np.zeros(0, dtype=np.uint8),
        "has_thumbnail_mask": np.array([thumbnails[identifier][1] is not None for identifier in ids], dtype=bool),
    }


def unpack_thumbnails(packed: dict[str, np.ndarray]) -> dict[str, Thumbnail]:
    """Return the thumbnails and masks that :func:`pack_thumbnails` packed, by image id."""
    shapes = packed["thumbnail_shapes"]
    sizes = shapes.prod(axis=1) if len(shapes) else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(sizes)
    masks = np.unpackbits(packed["thumbnail_mask_bits"], count=int(ends[-1]) if len(ends) else 0).astype(bool)
    result: dict[str, Thumbnail] = {}
    for row, identifier in enumerate(packed["thumbnail_ids"]):
        start, end = int(ends[row] - sizes[row]), int(ends[row])
        shape = tuple(int(side) for side in shapes[row])
        mask = masks[start:end].reshape(shape) if packed["has_thumbnail_mask"][row] else None
        result[str(identifier)] = (packed["thumbnail_pixels"][start:end].reshape(shape), mask)
    return result
