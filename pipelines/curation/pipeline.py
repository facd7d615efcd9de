"""The curation stages, run image by image: read, gestational age, plane, head segmentation, crop.

Each stage can be switched off and filters only the labels in its ``apply_to``.
Every decision is written onto the image's record (``reason`` for a drop, and the
numbers the stage measured), and :class:`StageCounts` keeps, per stage, how many
images went in, how many were kept, and the drops by reason. A problem with one image
drops that image with a counted reason and never stops the others. Images are
processed in chunks, so the full-size frames of a large data set are never all in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipelines.curation.crop import crop_to_head
from pipelines.curation.dicom import DicomReadError, is_dicom, read_dicom_frame
from pipelines.curation.gestational_age import format_ga, ga_in_window, hadlock_ga_weeks
from pipelines.curation.head_geometry import head_circumference_mm
from pipelines.curation.segmentation import HeadSegmentation, HeadSegmenter, segment_heads
from pipelines.curation.sononet import BlankFrameError, CropBoxError, SonoNet, classify_inputs, keep_plane, sononet_input
from pipelines.curation.stage_counts import (
    AGE_FROM_HEAD,
    AGE_FROM_METADATA,
    CROP,
    PLANE,
    READ,
    SEGMENTATION,
    StageCounts,
)
from pipelines.data.preprocess import UnreadableImageError, normalise_percentile, read_frame, resize_square
from pipelines.data.records import HEALTHY, PATHOLOGICAL
from pipelines.data.sources import PendingImage

LABELS = (HEALTHY, PATHOLOGICAL)
# Review thumbnails fit in this box, which is the size the review page shows them at.
THUMBNAIL_HEIGHT = 160
THUMBNAIL_MAX_WIDTH = 320
CHUNK_SIZE = 32

ProgressCallback = Callable[[int, int], None]


class ImageTooSmallError(UnreadableImageError):
    """An image is smaller than the curation stages accept; ``grey`` contains its pixels for the review page."""

    def __init__(self, message: str, grey: np.ndarray) -> None:
        super().__init__(message)
        self.grey = grey


@dataclass(frozen=True)
class GestationalAgeSettings:
    """Keep images whose gestational age, in weeks, lies in [low, high]; images without one per ``missing``."""

    enabled: bool = True
    low: float = 19.0
    high: float = 22 + 6 / 7
    missing: str = "keep"
    apply_to: tuple[str, ...] = LABELS


@dataclass(frozen=True)
class PlaneSettings:
    """Keep images whose top SonoNet label is in ``labels`` with at least ``min_confidence``."""

    enabled: bool = False
    labels: tuple[str, ...] = ("Brain (Tv.)",)
    min_confidence: float = 0.9
    crop: object = "auto"
    apply_to: tuple[str, ...] = LABELS


@dataclass(frozen=True)
class SegmentationSettings:
    """Segment the head with Monte Carlo dropout; drop uncertain masks and masks touching the border."""

    enabled: bool = False
    mc_samples: int = 8
    max_uncertainty: float = 0.15
    drop_border: bool = True
    margin: float = 0.1
    apply_to: tuple[str, ...] = LABELS


@dataclass(frozen=True)
class CurationSettings:
    """All stage settings, and the output size and normalisation percentile."""

    image_size: int
    percentile: float = 98.0
    min_side: int = 64
    gestational_age: GestationalAgeSettings = field(default_factory=GestationalAgeSettings)
    plane: PlaneSettings = field(default_factory=PlaneSettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)


@dataclass
class CuratedImage:
    """The output of one image: the model input and its masks if kept, and a thumbnail for review."""

    image: np.ndarray | None
    head_mask: np.ndarray | None
    lesion_mask: np.ndarray | None
    thumbnail: np.ndarray | None = None
    thumbnail_mask: np.ndarray | None = None


@dataclass
class _Frame:
    """A decoded image: grey in [0, 1], RGB uint8 for SonoNet, and the pixel spacing if known."""

    grey: np.ndarray
    rgb: np.ndarray
    spacing_mm: float | None


def curate(
    items: list[PendingImage],
    settings: CurationSettings,
    *,
    sononet: SonoNet | None = None,
    segmenter: HeadSegmenter | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, CuratedImage], StageCounts]:
    """Run every enabled stage over ``items``; return each decoded image's output by record id, and the counts."""
    if settings.plane.enabled and sononet is None:
        raise ValueError("the plane stage is enabled, so a SonoNet model must be given")
    if settings.segmentation.enabled and segmenter is None:
        raise ValueError("the segmentation stage is enabled, so a head segmenter must be given")
    counts = StageCounts()
    curated: dict[str, CuratedImage] = {}
    for start in range(0, len(items), CHUNK_SIZE):
        chunk = items[start : start + CHUNK_SIZE]
        curated.update(_curate_chunk(chunk, settings, sononet, segmenter, counts))
        if on_progress is not None:
            on_progress(min(start + CHUNK_SIZE, len(items)), len(items))
    return curated, counts


def _curate_chunk(
    chunk: list[PendingImage],
    settings: CurationSettings,
    sononet: SonoNet | None,
    segmenter: HeadSegmenter | None,
    counts: StageCounts,
) -> dict[str, CuratedImage]:
    # 1. Read every image; unreadable and tiny images stop here.
    frames: dict[str, _Frame] = {}
    curated: dict[str, CuratedImage] = {}
    for item in chunk:
        kind = None
        try:
            frames[item.record.id] = _read(item, settings.min_side)
        except ImageTooSmallError as error:
            kind = "too small"
            item.record.drop(str(error))
            curated[item.record.id] = _dropped_output(error.grey, None)
        except UnreadableImageError as error:
            kind = "unreadable"
            item.record.drop(f"unreadable: {error}")
        counts.record(READ, kind)
    alive = _kept(chunk, frames)

    # 2. Gestational age from metadata (or the HC18 CSV). Without one, an image waits for
    # step 5 when a head can be segmented, or meets the missing-age rule here.
    ga = settings.gestational_age
    if ga.enabled:
        for item in alive:
            _age_from_metadata(item, ga, settings.segmentation.enabled, counts)
        alive = _kept(alive, frames)

    # 3. Standard plane with SonoNet.
    if settings.plane.enabled:
        _classify_planes(alive, frames, settings.plane, sononet, counts)
        alive = _kept(alive, frames)

    # 4. Head mask: given (phantoms), segmented with MC dropout, or the whole frame.
    masks = _head_masks(alive, frames, settings.segmentation, segmenter, counts)
    alive = _kept(alive, frames)

    # 5. Gestational age from the segmented head's circumference, for images without one.
    if ga.enabled and settings.segmentation.enabled:
        for item in alive:
            _age_from_head(item, frames[item.record.id], masks.get(item.record.id), ga, counts)
        alive = _kept(alive, frames)

    # 6. Crop to the head (or resize the whole frame), normalise, and keep a thumbnail.
    for item in chunk:
        frame = frames.get(item.record.id)
        if frame is None:
            continue
        mask = masks.get(item.record.id)
        if not item.record.kept:
            curated[item.record.id] = _dropped_output(frame.grey, mask)
            continue
        kind = None
        try:
            output = _crop(item, frame, mask, settings)
        except UnreadableImageError as error:
            kind = "blank after cropping"
            item.record.drop(f"unusable after cropping: {error}")
            output = CuratedImage(image=None, head_mask=None, lesion_mask=None)
        except ValueError as error:
            kind = "crop failed"
            item.record.drop(f"crop failed: {error}")
            output = CuratedImage(image=None, head_mask=None, lesion_mask=None)
        output.thumbnail, output.thumbnail_mask = _thumbnail(frame.grey, mask)
        curated[item.record.id] = output
        counts.record(CROP, kind)
    return curated


def _kept(items: list[PendingImage], frames: dict[str, _Frame]) -> list[PendingImage]:
    return [item for item in items if item.record.kept and item.record.id in frames]


def _dropped_output(grey: np.ndarray, mask: np.ndarray | None) -> CuratedImage:
    small, small_mask = _thumbnail(grey, mask)
    return CuratedImage(image=None, head_mask=None, lesion_mask=None, thumbnail=small, thumbnail_mask=small_mask)


def _read(item: PendingImage, min_side: int) -> _Frame:
    spacing = item.record.pixel_spacing_mm
    if item.image is not None:
        grey = np.clip(item.image.astype(np.float32), 0.0, 1.0)
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    elif is_dicom(item.file):
        try:
            dicom = read_dicom_frame(item.file, frame=item.dicom_frame)
        except DicomReadError as error:
            raise UnreadableImageError(str(error)) from error
        grey = dicom.image
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
        spacing = spacing or dicom.pixel_spacing_mm
    else:
        rgb, grey = read_frame(item.file)

    # Float TIFFs may hold NaN or values outside [0, 1], which the stages reject.
    if not np.isfinite(grey).all():
        raise UnreadableImageError("the image has NaN or infinite pixels")
    grey = np.clip(grey, 0.0, 1.0)
    if min(grey.shape) < min_side:
        raise ImageTooSmallError(f"image too small: {grey.shape[0]}x{grey.shape[1]} pixels, need at least {min_side}", grey)
    item.record.pixel_spacing_mm = spacing
    return _Frame(grey=grey, rgb=rgb, spacing_mm=spacing)


def _age_from_metadata(item: PendingImage, ga: GestationalAgeSettings, estimate_later: bool, counts: StageCounts) -> None:
    record = item.record
    if record.label not in ga.apply_to:
        counts.record(AGE_FROM_METADATA, None)
        counts.note(AGE_FROM_METADATA, f"{record.label} not checked")
    elif record.ga_weeks is not None:
        counts.record(AGE_FROM_METADATA, _check_window(item, ga))
    elif estimate_later:
        counts.record(AGE_FROM_METADATA, None)
        counts.note(AGE_FROM_METADATA, "without an age, estimated from the head after segmentation")
    else:
        _apply_missing_rule(item, ga, AGE_FROM_METADATA, counts)


def _age_from_head(item: PendingImage, frame: _Frame, mask: np.ndarray | None, ga: GestationalAgeSettings, counts: StageCounts) -> None:
    """Estimate the age from the segmented head's circumference (Hadlock), or apply the missing-age rule."""
    record = item.record
    if record.label not in ga.apply_to:
        counts.record(AGE_FROM_HEAD, None)
        counts.note(AGE_FROM_HEAD, f"{record.label} not checked")
        return
    if record.ga_weeks is not None:
        counts.record(AGE_FROM_HEAD, None)
        counts.note(AGE_FROM_HEAD, "checked from metadata")
        return
    if mask is None or frame.spacing_mm is None or not mask.any():
        _apply_missing_rule(item, ga, AGE_FROM_HEAD, counts)
        return
    try:
        hc_mm = head_circumference_mm(mask, frame.spacing_mm)
        weeks = hadlock_ga_weeks(hc_mm)
    except ValueError as error:
        record.drop(f"gestational age estimate failed: {error}")
        counts.record(AGE_FROM_HEAD, "age estimate failed")
        return
    record.hc_mm, record.ga_weeks, record.ga_source = hc_mm, weeks, "Hadlock, HC from segmentation"
    counts.record(AGE_FROM_HEAD, _check_window(item, ga))


def _check_window(item: PendingImage, ga: GestationalAgeSettings) -> str | None:
    """Drop the image if its age lies outside the window; return the reason kind, or None when kept."""
    weeks = item.record.ga_weeks
    if ga_in_window(weeks, ga.low, ga.high):
        return None
    item.record.drop(f"gestational age {format_ga(weeks)} outside {format_ga(ga.low)} to {format_ga(ga.high)}")
    return "outside the window"


def _apply_missing_rule(item: PendingImage, ga: GestationalAgeSettings, stage: str, counts: StageCounts) -> None:
    if ga.missing == "drop":
        item.record.drop("no gestational age")
        counts.record(stage, "no gestational age")
    else:
        counts.record(stage, None)
        counts.note(stage, "without an age, kept")


def _classify_planes(
    items: list[PendingImage], frames: dict[str, _Frame], plane: PlaneSettings, sononet: SonoNet, counts: StageCounts
) -> None:
    """Classify each checked image's plane; a frame SonoNet cannot take is dropped with its reason."""
    targets, inputs = [], []
    for item in items:
        if item.record.label not in plane.apply_to:
            counts.record(PLANE, None)
            counts.note(PLANE, f"{item.record.label} not checked")
            continue
        rgb = frames[item.record.id].rgb
        try:
            inputs.append(sononet_input(rgb, crop=plane.crop))
        except BlankFrameError:
            item.record.drop("blank frame: the SonoNet input has one intensity everywhere")
            counts.record(PLANE, "blank frame")
            continue
        except CropBoxError:
            height, width = rgb.shape[:2]
            item.record.drop(f"crop box {list(plane.crop)} of data.curation.plane.crop does not fit the {height}x{width} frame")
            counts.record(PLANE, "crop box outside the frame")
            continue
        except ValueError as error:
            item.record.drop(f"plane input unusable: {error}")
            counts.record(PLANE, "plane input unusable")
            continue
        targets.append(item)

    for item, prediction in zip(targets, classify_inputs(sononet, inputs)):
        item.record.plane = prediction.label
        item.record.plane_confidence = prediction.confidence
        keep, reason = keep_plane(prediction, labels=plane.labels, min_confidence=plane.min_confidence)
        kind = None
        if not keep:
            item.record.drop(reason)
            kind = f"plane {prediction.label}" if prediction.label not in plane.labels else "low plane confidence"
        counts.record(PLANE, kind)


def _head_masks(
    items: list[PendingImage],
    frames: dict[str, _Frame],
    seg: SegmentationSettings,
    segmenter: HeadSegmenter | None,
    counts: StageCounts,
) -> dict[str, np.ndarray]:
    masks = {item.record.id: item.head_mask for item in items if item.head_mask is not None}
    if not seg.enabled:
        return masks
    for item in items:
        if item.head_mask is not None:
            counts.record(SEGMENTATION, None)
            counts.note(SEGMENTATION, "with a known head mask")
    targets = [item for item in items if item.head_mask is None]
    results = segment_heads(segmenter, [frames[item.record.id].grey for item in targets], mc_samples=seg.mc_samples) if targets else []
    for item, result in zip(targets, results):
        item.record.head_uncertainty = result.uncertainty
        masks[item.record.id] = result.mask
        kind, reason = segmentation_outcome(result, item.record.label, seg)
        if kind:
            item.record.drop(reason)
        elif item.record.label not in seg.apply_to:
            counts.note(SEGMENTATION, f"{item.record.label} not checked")
            if not result.found:
                counts.note(SEGMENTATION, "without a head, whole frame kept")
        counts.record(SEGMENTATION, kind)
    return masks


def segmentation_outcome(result: HeadSegmentation, label: str, settings: SegmentationSettings) -> tuple[str | None, str]:
    """Decide on one segmentation: (None, "") keeps the image, else (reason kind, reason).

    Images whose label is not in ``settings.apply_to`` are always kept.
    """
    if label not in settings.apply_to:
        return None, ""
    if not result.found:
        return "no head found", "no head found"
    if result.uncertainty > settings.max_uncertainty:
        return "uncertain mask", f"head mask uncertain: {result.uncertainty:.3f} above {settings.max_uncertainty:.3f}"
    if settings.drop_border and result.touches_border:
        return "mask touches border", "head mask touches the image border"
    return None, ""


def _crop(item: PendingImage, frame: _Frame, mask: np.ndarray | None, settings: CurationSettings) -> CuratedImage:
    size = settings.image_size
    lesion = item.lesion_mask
    if mask is not None and not mask.any():
        mask = None  # no head found in an image the segmentation gate does not apply to: use the whole frame
    if settings.segmentation.enabled and mask is not None:
        crop = crop_to_head(frame.grey, mask, size=size, margin=settings.segmentation.margin, percentile=settings.percentile, lesion_mask=lesion)
        return CuratedImage(image=crop.image, head_mask=crop.mask, lesion_mask=crop.lesion_mask)
    image = normalise_percentile(resize_square(frame.grey, size), settings.percentile)
    head = np.ones((size, size), dtype=bool) if mask is None else resize_square(mask.astype(np.float32), size, nearest=True) > 0.5
    lesions = None if lesion is None else resize_square(lesion.astype(np.float32), size, nearest=True) > 0.5
    return CuratedImage(image=image, head_mask=head, lesion_mask=lesions)


def _thumbnail(grey: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale a grey frame in [0, 1] (and its head mask) to fit THUMBNAIL_HEIGHT x THUMBNAIL_MAX_WIDTH, as uint8."""
    height, width = grey.shape
    scale = min(THUMBNAIL_HEIGHT / height, THUMBNAIL_MAX_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
    if mask is None:
        return small, None
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return small, small_mask
