"""Image preprocessing: grey, resize to a square, normalise by a high percentile, clip to [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Scale of the integer pixel modes PIL reads, to map them to [0, 1].
_MODE_MAXIMUM = {"1": 1.0, "L": 255.0, "P": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0}


# ITU-R 601 luma weights, as PIL uses to convert RGB to grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class UnreadableImageError(ValueError):
    """An image file could not be decoded."""


def read_grey(path: Path) -> np.ndarray:
    """Read an image file as a float32 grey array in [0, 1] (RGB is converted with ITU-R 601 luma)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "P"):
                image = image.convert("L")
            array = np.asarray(image)
            maximum = _MODE_MAXIMUM.get(image.mode)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{type(error).__name__}: {error}") from error
    array = array.astype(np.float32)
    if maximum is None:  # 32-bit integer or float images: scale by their own maximum
        maximum = float(array.max()) if array.size and array.max() > 0 else 1.0
    return array / maximum


def read_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file as (RGB uint8 (H, W, 3), grey float32 in [0, 1]) from one decode.

    8-bit images keep their colours for SonoNet; grey is their ITU-R 601 luma. Deeper
    images (16-bit PNG, float TIFF) are read as grey and repeated into the RGB planes.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "P", "L", "1"):
                rgb = np.asarray(image.convert("RGB"))
                grey = (rgb.astype(np.float32) @ _LUMA) / 255.0
                return rgb, np.clip(grey, 0.0, 1.0).astype(np.float32)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{type(error).__name__}: {error}") from error
    grey = read_grey(path)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1), grey


def resize_square(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize a 2D array to ``size`` x ``size`` (bilinear with antialiasing, or nearest for masks)."""
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    source = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(source.resize((size, size), resample=resample), dtype=np.float32)


def normalise_percentile(image: np.ndarray, percentile: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Divide by the ``percentile`` of the pixels (inside ``mask`` if given) and clip to [0, 1]."""
    pixels = image[mask] if mask is not None else image
    scale = float(np.percentile(pixels, percentile)) if pixels.size else 0.0
    if scale <= 0:
        raise UnreadableImageError(f"blank image: the {percentile:g}th percentile is {scale:g}")
    return np.clip(image / scale, 0.0, 1.0).astype(np.float32)


def preprocess_image(image: np.ndarray, *, size: int, percentile: float) -> np.ndarray:
    """Resize a grey image in [0, 1] to ``size`` and normalise it by its ``percentile``."""
    if image.ndim != 2 or min(image.shape) < 8:
        raise UnreadableImageError(f"image of shape {image.shape} is too small or not 2D")
    return normalise_percentile(resize_square(image, size), percentile)
