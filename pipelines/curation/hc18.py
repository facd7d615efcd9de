"""The HC18 head-circumference data set: list its images and turn each annotation into a head mask.

HC18 (van den Heuvel et al., PLoS ONE 13(8): e0200412, 2018) is laid out as::

    <folder>/training_set_pixel_size_and_HC.csv   filename, pixel size(mm), head circumference (mm)
    <folder>/training_set/NNN_HC.png              grey ultrasound image, about 800x540
    <folder>/training_set/NNN_HC_Annotation.png   the head drawn as an ellipse

An annotation may be an ellipse outline, as the challenge describes it, or a filled
ellipse, as in some redistributed copies. :func:`load_hc18_mask` accepts both: it closes small gaps, fills the outline and
keeps the result when the filled region covers most of the annotation's convex hull.
A problem with one record (a missing or unreadable file, an empty annotation, an
outline that does not close) becomes a ``reason`` on that record in :func:`list_hc18`
and :func:`load_hc18_arrays`. The single-record loaders raise an :class:`HC18DataError`
that carries the same reason.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from pipelines.curation.head_geometry import fill_holes, largest_component

logger = logging.getLogger(__name__)

CSV_NAME = "training_set_pixel_size_and_HC.csv"
IMAGE_FOLDER = "training_set"
FILENAME_COLUMN = "filename"
PIXEL_SIZE_COLUMN = "pixel size(mm)"
HC_COLUMN = "head circumference (mm)"
ANNOTATION_SUFFIX = "_Annotation"

REASON_IMAGE_MISSING = "image file not found"
REASON_IMAGE_UNREADABLE = "image file is unreadable"
REASON_ANNOTATION_MISSING = "annotation file not found"
REASON_ANNOTATION_UNREADABLE = "annotation file is unreadable"
REASON_ANNOTATION_EMPTY = "annotation is empty"
REASON_NOT_CLOSED = "annotation outline does not close"
REASON_TOO_LARGE = "annotation covers almost the whole image"
REASON_SIZE_MISMATCH = "image and annotation sizes differ"
REASON_NOT_IN_CSV = "not listed in the CSV"
REASON_INVALID_PIXEL_SIZE = "invalid pixel size"
REASON_INVALID_HC = "invalid head circumference"

# Annotation pixels brighter than this are the drawn head.
_ANNOTATION_THRESHOLD = 127

# A closing with this radius in pixels bridges anti-aliasing gaps in a drawn outline,
# but not a missing arc.
_CLOSING_RADIUS = 2

# A closed ellipse, outline or filled, fills about all of its convex hull, and an open
# arc fills almost none of it.
_MIN_HULL_FILL = 0.5

# No fetal head covers this much of an HC18 image, and an inverted annotation does.
_MAX_AREA_FRACTION = 0.9

_IMAGE_NAME = re.compile(r"\d+_(?:\d+)?HC\.png")


class HC18DataError(ValueError):
    """An error that makes one HC18 record unusable, with ``reason``, the short text stored on the record."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class AnnotationError(HC18DataError):
    """An HC18 annotation is missing, unreadable, empty or does not give a closed head outline."""


class ImageError(HC18DataError):
    """An HC18 image is missing or unreadable."""


@dataclass
class HC18Record:
    """One HC18 image with its annotation and CSV values. ``reason`` is empty while the record is usable."""

    id: str
    image_path: Path
    annotation_path: Path
    pixel_size_mm: float
    hc_mm: float
    reason: str = ""

    @property
    def kept(self) -> bool:
        return not self.reason

    @property
    def group(self) -> str:
        """The leading image number, shared by the frames of one subject ("010" for 010_HC and 010_2HC)."""
        return hc18_group(self.id)

    def drop(self, reason: str) -> None:
        """Mark the record as not used, keeping the first reason given."""
        if not self.reason:
            self.reason = reason


def hc18_group(record_id: str) -> str:
    """Return the leading image number of an HC18 id ("010_2HC" gives "010"), the subject to split by."""
    # NOTE: HC18 does not document its file names. The number is read as a subject id because
    # frames that share it have near-equal pixel size and HC in the CSV (010_HC 71.9 mm, 010_2HC 72.9 mm).
    return record_id.split("_", 1)[0]


def list_hc18(folder: Path | str, *, verify: bool = False) -> list[HC18Record]:
    """List every image of an HC18 folder, marking unusable ones with a ``reason``.

    ``folder`` contains the CSV and ``training_set/``. Each CSV row gives a record, and
    each image in ``training_set/`` that the CSV lacks gives one with the reason
    "not listed in the CSV". Records are sorted by id. With ``verify=True`` every image
    and annotation is also read, and a record whose mask cannot be made gets the reason.
    That took about 11 s for 600 records on one CPU core.

    Raises:
        FileNotFoundError: the CSV or ``training_set/`` is missing.
        ValueError: the CSV lacks one of the expected columns.
    """
    folder = Path(folder)
    csv_path = folder / CSV_NAME
    image_folder = folder / IMAGE_FOLDER
    for path in (csv_path, image_folder):
        if not path.exists():
            raise FileNotFoundError(f"HC18 {path.name} not found at {path}; pass the folder that contains {CSV_NAME} and {IMAGE_FOLDER}/")

    records = {record.id: record for record in _read_csv(csv_path, image_folder)}
    for image_path in sorted(image_folder.glob("*HC.png")):
        record_id = image_path.stem
        if record_id not in records:
            records[record_id] = HC18Record(record_id, image_path, _annotation_path(image_path), math.nan, math.nan, REASON_NOT_IN_CSV)

    result = [records[key] for key in sorted(records)]
    for record in result:
        if record.kept and verify:
            _verify(record)

    dropped = [record for record in result if not record.kept]
    logger.info("listed %d HC18 records in %s, %d of them unusable", len(result), folder, len(dropped))
    for record in dropped:
        logger.debug("HC18 record %s dropped: %s", record.id, record.reason)
    return result


def _read_csv(csv_path: Path, image_folder: Path) -> list[HC18Record]:
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in (FILENAME_COLUMN, PIXEL_SIZE_COLUMN, HC_COLUMN) if name not in header]
        if missing:
            raise ValueError(
                f"HC18 CSV {csv_path} must have columns {FILENAME_COLUMN!r}, {PIXEL_SIZE_COLUMN!r} and {HC_COLUMN!r}, "
                f"but got {header}; check that it is the published training-set CSV"
            )
        rows = []
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((reader.line_num, dict(zip(header, (cell.strip() for cell in cells)))))

    records: dict[str, HC18Record] = {}
    for line, row in rows:
        name = row.get(FILENAME_COLUMN, "")
        if not name or Path(name).name != name:
            logger.warning("HC18 CSV %s row %d has the invalid file name %r; skipped it", csv_path, line, name)
            continue

        image_path = image_folder / name
        record = HC18Record(
            id=Path(name).stem,
            image_path=image_path,
            annotation_path=_annotation_path(image_path),
            pixel_size_mm=_positive_number(row.get(PIXEL_SIZE_COLUMN, "")),
            hc_mm=_positive_number(row.get(HC_COLUMN, "")),
        )
        if math.isnan(record.pixel_size_mm):
            record.drop(f"{REASON_INVALID_PIXEL_SIZE} {row.get(PIXEL_SIZE_COLUMN)!r}")
        if math.isnan(record.hc_mm):
            record.drop(f"{REASON_INVALID_HC} {row.get(HC_COLUMN)!r}")
        if not image_path.is_file():
            record.drop(REASON_IMAGE_MISSING)
        elif not record.annotation_path.is_file():
            record.drop(REASON_ANNOTATION_MISSING)
        if not _IMAGE_NAME.fullmatch(name):
            logger.warning("HC18 file name %r is not of the form NNN_HC.png or NNN_kHC.png; its group is %r", name, record.group)
        if record.id in records:
            logger.warning("HC18 CSV %s lists %r twice; row %d replaces the earlier row", csv_path, name, line)
        records[record.id] = record
    return list(records.values())


def _annotation_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}{ANNOTATION_SUFFIX}{image_path.suffix}")


def _positive_number(text: str | None) -> float:
    try:
        value = float(text or "")
    except ValueError:
        return math.nan
    return value if math.isfinite(value) and value > 0 else math.nan


def _verify(record: HC18Record) -> None:
    try:
        image = load_hc18_image(record)
        mask = load_hc18_mask(record)
    except HC18DataError as error:
        record.drop(error.reason)
        return

    if image.shape != mask.shape:
        record.drop(f"{REASON_SIZE_MISMATCH} ({image.shape} and {mask.shape})")


def load_hc18_image(record: HC18Record) -> np.ndarray:
    """Read a record's image as a float32 grey array in ``[0, 1]`` of shape ``(H, W)``.

    Raises:
        ImageError: the file is missing or cannot be decoded.
    """
    return _read_grey(record.image_path, ImageError, REASON_IMAGE_MISSING, REASON_IMAGE_UNREADABLE).astype(np.float32) / 255.0


def load_hc18_mask(record: HC18Record) -> np.ndarray:
    """Turn a record's annotation into a boolean head mask of the image's shape.

    The drawn pixels are closed with a disk of radius 2 px, to bridge anti-aliasing
    gaps, and the holes are filled. The largest region of the result is the head. It is
    accepted when it covers at least half the convex hull of the drawn pixels, which
    holds for a closed outline and for an already filled ellipse, and fails for an arc.

    Raises:
        AnnotationError: with ``reason`` set to one of the ``REASON_ANNOTATION_*``,
            ``REASON_NOT_CLOSED`` or ``REASON_TOO_LARGE`` strings of this module.
    """
    grey = _read_grey(record.annotation_path, AnnotationError, REASON_ANNOTATION_MISSING, REASON_ANNOTATION_UNREADABLE)
    drawn = grey > _ANNOTATION_THRESHOLD
    if not drawn.any():
        raise AnnotationError(REASON_ANNOTATION_EMPTY, f"{record.annotation_path} has no pixel brighter than {_ANNOTATION_THRESHOLD}")

    head, hull_area = _fill_drawn(drawn)
    head_area = int(head.sum())
    if head_area < _MIN_HULL_FILL * hull_area:
        raise AnnotationError(
            REASON_NOT_CLOSED,
            f"filling {record.annotation_path} gives {head_area} px, under {_MIN_HULL_FILL:.0%} of the "
            f"{hull_area:.0f} px convex hull of the drawn outline; redraw the outline as a closed ellipse",
        )

    if head_area > _MAX_AREA_FRACTION * head.size:
        raise AnnotationError(
            REASON_TOO_LARGE,
            f"the head in {record.annotation_path} covers {head_area / head.size:.0%} of the image; "
            f"check whether the annotation is inverted (the head must be drawn bright on black)",
        )
    return head


def _read_grey(path: Path, error_type: type[HC18DataError], missing_reason: str, unreadable_reason: str) -> np.ndarray:
    if not path.is_file():
        raise error_type(missing_reason, str(path))

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise error_type(unreadable_reason, f"{path} ({error})") from error


def _fill_drawn(drawn: np.ndarray) -> tuple[np.ndarray, float]:
    """Close, fill and keep the largest region of the drawn pixels, and measure their convex hull.

    The work is done on the bounding box of the drawn pixels, padded with background,
    because closing and filling a whole 800x540 image takes several times longer. A
    closing never reaches beyond the convex hull of its input, so nothing is cut off.
    """
    rows = np.flatnonzero(drawn.any(axis=1))
    cols = np.flatnonzero(drawn.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = _CLOSING_RADIUS + 1
    crop = np.pad(drawn[top:bottom, left:right], pad)

    offsets = np.arange(-_CLOSING_RADIUS, _CLOSING_RADIUS + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= _CLOSING_RADIUS**2
    closed = ndimage.binary_closing(crop, structure=disk) | crop
    filled = largest_component(fill_holes(closed))

    head = np.zeros_like(drawn)
    head[top:bottom, left:right] = filled[pad:-pad, pad:-pad]
    return head, _convex_hull_area(crop)


def _convex_hull_area(drawn: np.ndarray) -> float:
    # The first and last drawn pixel of each row span the same convex hull as all of them.
    rows = np.flatnonzero(drawn.any(axis=1))
    first = np.argmax(drawn[rows], axis=1)
    last = drawn.shape[1] - 1 - np.argmax(drawn[rows, ::-1], axis=1)
    points = np.concatenate([np.column_stack([rows, first]), np.column_stack([rows, last])])
    try:
        return float(ConvexHull(points).volume)
    except (QhullError, ValueError):
        # Qhull fails when the drawn pixels are fewer than three or lie on one line,
        # and such a drawing encloses no area.
        return 0.0


@dataclass
class HC18Arrays:
    """Images and head masks of the usable HC18 records, resized to one shape."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    groups: list[str]


def load_hc18_arrays(records: list[HC18Record], *, size: tuple[int, int]) -> HC18Arrays:
    """Load the kept records' images and masks, resized to ``size = (height, width)``.

    Images are resized bilinearly (PIL low-pass filters when it shrinks) into float32 in
    ``[0, 1]``. Masks are resized as float and thresholded at 0.5. A record that fails to
    load is dropped with its reason and left out, so ``ids`` names the rows that remain.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be a (height, width) pair of positive integers, but got {size!r}")

    images, masks, ids, groups = [], [], [], []
    for record in records:
        if not record.kept:
            continue

        try:
            image = load_hc18_image(record)
            mask = load_hc18_mask(record)
        except HC18DataError as error:
            logger.warning("HC18 record %s dropped: %s", record.id, error)
            record.drop(error.reason)
            continue

        if image.shape != mask.shape:
            record.drop(f"{REASON_SIZE_MISMATCH} ({image.shape} and {mask.shape})")
            logger.warning("HC18 record %s dropped: %s", record.id, record.reason)
            continue

        images.append(_resize(image, size))
        masks.append(_resize(mask.astype(np.float32), size) >= 0.5)
        ids.append(record.id)
        groups.append(record.group)

    if not ids:
        return HC18Arrays(np.zeros((0, height, width), np.float32), np.zeros((0, height, width), bool), [], [])

    return HC18Arrays(np.stack(images), np.stack(masks), ids, groups)


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    resized = Image.fromarray(array.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)
