"""Head geometry on a binary head mask: the head region, its fitted ellipse and the head circumference.

Masks are 2D boolean arrays indexed ``[row, col]``. Lengths are in pixels unless a name
says ``_mm``. The head circumference (HC) is the perimeter of the ellipse fitted to the
head region, as in the HC18 challenge, where HC was measured on an ellipse drawn over
the skull outline.

>>> rows, cols = np.mgrid[:101, :141]
>>> mask = ((cols - 70) / 60.0) ** 2 + ((rows - 50) / 40.0) ** 2 <= 1.0
>>> ellipse = fit_head_ellipse(mask)
>>> round(ellipse.semi_major), round(ellipse.semi_minor)
(60, 40)
>>> round(ellipse_perimeter(60.0, 40.0), 1)
317.3
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.measure import EllipseModel, find_contours

logger = logging.getLogger(__name__)

EllipseMethod = Literal["moments", "contour"]

# 8-connectivity: pixels that touch at a corner belong to one region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# The variance of a uniform unit pixel along one axis. Adding it to the variance of the
# pixel centres gives the second moment of the pixel squares themselves.
_PIXEL_VARIANCE = 1.0 / 12.0

# A contour fit needs at least this many outline points away from the image border.
_MIN_CONTOUR_POINTS = 10


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in pixel coordinates.

    ``angle`` is the direction of the major axis in radians, measured from the column axis
    towards the row axis (clockwise on screen), in ``(-pi/2, pi/2]``.
    """

    center_row: float
    center_col: float
    semi_major: float
    semi_minor: float
    angle: float

    @property
    def perimeter(self) -> float:
        """Perimeter in pixels, by Ramanujan's second approximation."""
        return ellipse_perimeter(self.semi_major, self.semi_minor)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be a 2D array, but got shape {array.shape}")

    return array.astype(bool, copy=False)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected region of ``mask``. An empty mask comes back empty."""
    mask = _check_mask(mask)
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count <= 1:
        return mask.copy()

    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of ``mask``: background regions that do not reach the image border.

    It returns what ``scipy.ndimage.binary_fill_holes`` returns, with background regions
    4-connected as there, but labels the background once in place of dilating from the
    border, which is about three times faster on an 800x540 head mask.
    """
    mask = _check_mask(mask)
    labels, _ = ndimage.label(~mask)
    border_labels = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    is_outside = np.zeros(labels.max() + 1, dtype=bool)
    is_outside[border_labels] = True
    is_outside[0] = True
    return mask | ~is_outside[labels]


def head_region(mask: np.ndarray) -> np.ndarray:
    """Clean a head mask: keep its largest 8-connected region and fill the holes in it."""
    return fill_holes(largest_component(mask))


def touches_border(mask: np.ndarray, *, margin: int = 0) -> bool:
    """Tell whether any pixel of ``mask`` lies within ``margin`` pixels of the image border.

    With the default ``margin=0`` only the outermost rows and columns count. A head that
    touches the border is usually cut off, so its ellipse and HC are underestimated.
    """
    mask = _check_mask(mask)
    if margin < 0 or 2 * (margin + 1) > min(mask.shape):
        raise ValueError(f"margin must be between 0 and half the smaller image side minus 1, but got {margin} for shape {mask.shape}")

    width = margin + 1
    return bool(mask[:width].any() or mask[-width:].any() or mask[:, :width].any() or mask[:, -width:].any())


def fit_head_ellipse(mask: np.ndarray, *, method: EllipseMethod = "moments") -> Ellipse:
    """Fit an ellipse to the head region of ``mask`` (its largest component, holes filled).

    ``method="moments"`` (the default) returns the ellipse with the same area-weighted
    second moments as the region. It uses every pixel of the region, so a ragged or
    noisy outline from a segmenter moves it little, and it is defined for every non-empty
    mask. On a region cut off by the image border it underestimates the head.

    ``method="contour"`` fits skimage's ``EllipseModel`` (direct least squares, Halir and
    Flusser 1998) to the region's sub-pixel outline, leaving out outline points on the
    image border. It extrapolates a head that is partly outside the image, but one
    bump in the outline pulls it more than it pulls the moments.

    Raises:
        ValueError: the mask is empty, or the contour fit fails.
    """
    if method not in ("moments", "contour"):
        raise ValueError(f"method must be 'moments' or 'contour', but got {method!r}")

    region = head_region(mask)
    if not region.any():
        raise ValueError("mask must contain a head region to fit an ellipse, but it is empty; check the segmentation first")

    if method == "moments":
        return _fit_by_moments(region)

    return _fit_to_contour(region)


def _fit_by_moments(region: np.ndarray) -> Ellipse:
    points = np.argwhere(region).astype(np.float64)
    center = points.mean(axis=0)
    covariance = np.cov(points, rowvar=False, bias=True) + _PIXEL_VARIANCE * np.eye(2)

    # A uniform ellipse with semi-axis a has variance a**2 / 4 along that axis.
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    semi_minor, semi_major = 2.0 * np.sqrt(eigenvalues)
    major_row, major_col = eigenvectors[:, 1]
    angle = _wrap_angle(math.atan2(major_row, major_col))
    return Ellipse(float(center[0]), float(center[1]), float(semi_major), float(semi_minor), angle)


def _fit_to_contour(region: np.ndarray) -> Ellipse:
    # Padding closes the outline of a region that touches the border, and the points on
    # the padding are dropped below, so only the visible outline is fitted.
    padded = np.pad(region.astype(np.float64), 1)
    outline = np.concatenate(find_contours(padded, 0.5)) - 1.0
    rows, cols = outline[:, 0], outline[:, 1]
    inside = (rows > 0) & (rows < region.shape[0] - 1) & (cols > 0) & (cols < region.shape[1] - 1)
    if inside.sum() < _MIN_CONTOUR_POINTS:
        raise ValueError(
            f"contour ellipse fit needs at least {_MIN_CONTOUR_POINTS} outline points inside the image, but got {int(inside.sum())}; "
            f"use method='moments' for so small or so clipped a region"
        )

    model = EllipseModel.from_estimate(np.column_stack([cols[inside], rows[inside]]))
    if not model:
        raise ValueError(f"contour ellipse fit failed ({model}); use method='moments' instead")

    center_col, center_row = model.center
    first_axis, second_axis = model.axis_lengths
    angle = float(model.theta)
    if first_axis < second_axis:
        first_axis, second_axis = second_axis, first_axis
        angle += math.pi / 2

    return Ellipse(float(center_row), float(center_col), float(first_axis), float(second_axis), _wrap_angle(angle))


def _wrap_angle(angle: float) -> float:
    """Map an axis direction to ``(-pi/2, pi/2]``, since an axis and its reverse are the same."""
    wrapped = math.remainder(angle, math.pi)
    return math.pi / 2 if wrapped == -math.pi / 2 else wrapped


def ellipse_perimeter(a: float, b: float) -> float:
    """Compute an ellipse's perimeter from its semi-axes by Ramanujan's second approximation.

    ``pi * (a + b) * (1 + 3h / (10 + sqrt(4 - 3h)))`` with ``h = ((a - b) / (a + b))**2``.
    Its relative error is below 2e-5 for a 10:1 ellipse and at most 4.1e-4 for a flat one,
    far below pixel effects (checked against the exact value, ``4a * scipy.special.ellipe``).
    """
    for name, value in (("a", a), ("b", b)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"semi-axis {name} must be a finite, non-negative length, but got {value!r}")

    if a + b == 0:
        return 0.0

    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + math.sqrt(4.0 - 3.0 * h)))


def head_circumference_mm(mask: np.ndarray, pixel_size_mm: float, *, method: EllipseMethod = "moments") -> float:
    """Measure the head circumference in mm as the perimeter of the ellipse fitted to ``mask``.

    ``pixel_size_mm`` is the side of one square pixel of ``mask`` in mm, so a mask resized
    from the original image needs the pixel size of the resized grid.
    """
    if not math.isfinite(pixel_size_mm) or pixel_size_mm <= 0:
        raise ValueError(f"pixel_size_mm must be a positive length in mm, but got {pixel_size_mm!r}")

    ellipse = fit_head_ellipse(mask, method=method)
    logger.debug("fitted head ellipse %s", ellipse)
    return ellipse.perimeter * pixel_size_mm
