"""The curation stages, run image by image: read, gestational age, plane, head segmentation, crop.

Each stage can be switched off and filters only the labels in its ``apply_to``.
Every decision is written onto the image's record (``reason`` for a drop, and the
numbers the stage measured), and :class:`StageCounts` keeps, per stage, how many
images went in, how many were kept, and the drops by reason. Images are processed in
chunks, so the full-size frames of a large data set are never all in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipelines.curation.crop import crop_to_head
from pipelines.curation.dicom import DicomReadError, is_dicom, read_dicom_frame
from pipelines.curation.gestational_age import format_ga, ga_in_window, hadlock_ga_weeks
from pipelines.curation.head_geometry import head_circumference_mm
from pipelines.curation.segmentation import HeadSegmentation, HeadSegmenter, segment_heads
from pipelines.curation.sononet import SonoNet, classify_planes, keep_plane
from pipelines.data.preprocess import UnreadableImageError, normalise_percentile, read_frame, resize_square
from pipelines.data.records import HEALTHY, PATHOLOGICAL
from pipelines.data.sources import PendingImage

STAGES = ("read", "gestational age", "plane", "segmentation", "crop")
LABELS = (HEALTHY, PATHOLOGICAL)
THUMBNAIL_HEIGHT = 96
CHUNK_SIZE = 32

ProgressCallback = Callable[[int, int], None]


class ImageTooSmallError(UnreadableImageError):
    """An image is smaller than the curation stages accept."""


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
    """The output of one kept image: the model input, its masks and a thumbnail for review."""

    image: np.ndarray
    head_mask: np.ndarray
    lesion_mask: np.ndarray | None
    thumbnail: np.ndarray | None = None
    thumbnail_mask: np.ndarray | None = None


@dataclass
class StageCounts:
    """Per stage: images in, kept, and dropped by reason."""

    entered: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    notes: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, stage: str, dropped_for: str | None) -> None:
        """Count one image through ``stage``: kept when ``dropped_for`` (a short reason kind) is None."""
        self.entered[stage] += 1
        if dropped_for is None:
            self.kept[stage] += 1
        else:
            self.dropped.setdefault(stage, Counter())[dropped_for] += 1

    def note(self, stage: str, text: str) -> None:
        """Count something a stage observed without dropping the image (such as a missing age kept)."""
        self.notes.setdefault(stage, Counter())[text] += 1

    def rows(self) -> list[dict[str, object]]:
        """Return one row per stage that saw images, for printing."""
        rows = []
        for stage in STAGES:
            if not self.entered[stage]:
                continue
            drops = self.dropped.get(stage, Counter())
            notes = self.notes.get(stage, Counter())
            rows.append(
                {
                    "stage": stage,
                    "in": self.entered[stage],
                    "kept": self.kept[stage],
                    "dropped": ", ".join(f"{count} {reason}" for reason, count in drops.most_common()) or "none",
                    "notes": ", ".join(f"{count} {text}" for text, count in notes.most_common()),
                }
            )
        return rows


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
    """Run every enabled stage over ``items`` and return the kept images by record id."""
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
    for item in chunk:
        kind = None
        try:
            frames[item.record.id] = _read(item, settings.min_side)
        except ImageTooSmallError as error:
            kind = "too small"
            item.record.drop(str(error))
        except UnreadableImageError as error:
            kind = "unreadable"
            item.record.drop(f"unreadable: {error}")
        counts.record("read", kind)
    alive = [item for item in chunk if item.record.id in frames]

    # 2. Gestational age from metadata (or the HC18 CSV); images without one wait for step 4.
    ga = settings.gestational_age
    if ga.enabled:
        for item in alive:
            if item.record.label in ga.apply_to and item.record.ga_weeks is not None:
                _check_window(item, ga, counts)
        alive = [item for item in alive if item.record.kept]

    # 3. Standard plane with SonoNet.
    plane = settings.plane
    if plane.enabled:
        targets = [item for item in alive if item.record.label in plane.apply_to]
        predictions = classify_planes(sononet, [frames[item.record.id].rgb for item in targets], crop=plane.crop)
        for item, prediction in zip(targets, predictions):
            item.record.plane = prediction.label
            item.record.plane_confidence = prediction.confidence
            keep, reason = keep_plane(prediction, labels=plane.labels, min_confidence=plane.min_confidence)
            kind = None
            if not keep:
                item.record.drop(reason)
                kind = f"plane {prediction.label}" if prediction.label not in plane.labels else "low plane confidence"
            counts.record("plane", kind)
        alive = [item for item in alive if item.record.kept]

    # 4. Head mask: given (phantoms), segmented with MC dropout, or the whole frame.
    masks = _head_masks(alive, frames, settings, segmenter, counts)
    alive = [item for item in alive if item.record.kept]
    if ga.enabled:
        for item in alive:
            if item.record.label in ga.apply_to and item.record.ga_weeks is None:
                _estimate_or_keep_missing(item, frames[item.record.id], masks.get(item.record.id), ga, counts)
        alive = [item for item in alive if item.record.kept]

    # 5. Crop to the head (or resize the whole frame), normalise, and keep a thumbnail.
    curated = {}
    for item in chunk:
        frame = frames.get(item.record.id)
        if frame is None:
            continue
        thumbnail, thumbnail_mask = _thumbnail(frame.grey, masks.get(item.record.id))
        if not item.record.kept:
            curated[item.record.id] = CuratedImage(image=None, head_mask=None, lesion_mask=None, thumbnail=thumbnail, thumbnail_mask=thumbnail_mask)
            continue
        kind = None
        try:
            output = _crop(item, frame, masks.get(item.record.id), settings)
            output.thumbnail, output.thumbnail_mask = thumbnail, thumbnail_mask
            curated[item.record.id] = output
        except UnreadableImageError as error:
            kind = "blank after cropping"
            item.record.drop(f"unusable after cropping: {error}")
            curated[item.record.id] = CuratedImage(image=None, head_mask=None, lesion_mask=None, thumbnail=thumbnail, thumbnail_mask=thumbnail_mask)
        counts.record("crop", kind)
    return curated


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
    if min(grey.shape) < min_side:
        raise ImageTooSmallError(f"image too small: {grey.shape[0]}x{grey.shape[1]} pixels, need at least {min_side}")
    item.record.pixel_spacing_mm = spacing
    return _Frame(grey=grey, rgb=rgb, spacing_mm=spacing)


def _check_window(item: PendingImage, ga: GestationalAgeSettings, counts: StageCounts) -> None:
    weeks = item.record.ga_weeks
    kind = None
    if not ga_in_window(weeks, ga.low, ga.high):
        kind = "outside the window"
        item.record.drop(f"gestational age {format_ga(weeks)} outside {format_ga(ga.low)} to {format_ga(ga.high)}")
    counts.record("gestational age", kind)


def _estimate_or_keep_missing(
    item: PendingImage, frame: _Frame, mask: np.ndarray | None, ga: GestationalAgeSettings, counts: StageCounts
) -> None:
    """Estimate the age from the segmented head's circumference (Hadlock), or apply the missing-age rule."""
    if mask is not None and frame.spacing_mm is not None and mask.any():
        item.record.hc_mm = head_circumference_mm(mask, frame.spacing_mm)
        item.record.ga_weeks = hadlock_ga_weeks(item.record.hc_mm)
        item.record.ga_source = "Hadlock, HC from segmentation"
        _check_window(item, ga, counts)
        return
    if ga.missing == "drop":
        item.record.drop("no gestational age")
        counts.record("gestational age", "no gestational age")
    else:
        counts.record("gestational age", None)
        counts.note("gestational age", "without an age, kept")


def _head_masks(
    items: list[PendingImage],
    frames: dict[str, _Frame],
    settings: CurationSettings,
    segmenter: HeadSegmenter | None,
    counts: StageCounts,
) -> dict[str, np.ndarray]:
    masks = {item.record.id: item.head_mask for item in items if item.head_mask is not None}
    seg = settings.segmentation
    if not seg.enabled:
        return masks
    targets = [item for item in items if item.head_mask is None]
    results = segment_heads(segmenter, [frames[item.record.id].grey for item in targets], mc_samples=seg.mc_samples) if targets else []
    for item, result in zip(targets, results):
        item.record.head_uncertainty = result.uncertainty
        masks[item.record.id] = result.mask
        kind, reason = segmentation_outcome(result, item.record.label, seg)
        if kind:
            item.record.drop(reason)
        counts.record("segmentation", kind)
    for item in items:
        if item.head_mask is not None:
            counts.record("segmentation", None)
            counts.note("segmentation", "with a known head mask")
    return masks


def segmentation_outcome(result: HeadSegmentation, label: str, settings: SegmentationSettings) -> tuple[str | None, str]:
    """Decide on one segmentation: (None, "") keeps the image, else (reason kind, reason)."""
    if not result.found:
        return "no head found", "no head found"
    if label not in settings.apply_to:
        return None, ""
    if result.uncertainty > settings.max_uncertainty:
        return "uncertain mask", f"head mask uncertain: {result.uncertainty:.3f} above {settings.max_uncertainty:.3f}"
    if settings.drop_border and result.touches_border:
        return "mask touches border", "head mask touches the image border"
    return None, ""


def _crop(item: PendingImage, frame: _Frame, mask: np.ndarray | None, settings: CurationSettings) -> CuratedImage:
    size = settings.image_size
    lesion = item.lesion_mask
    if settings.segmentation.enabled and mask is not None:
        crop = crop_to_head(frame.grey, mask, size=size, margin=settings.segmentation.margin, percentile=settings.percentile, lesion_mask=lesion)
        return CuratedImage(image=crop.image, head_mask=crop.mask, lesion_mask=crop.lesion_mask)
    image = normalise_percentile(resize_square(frame.grey, size), settings.percentile)
    head = np.ones((size, size), dtype=bool) if mask is None else resize_square(mask.astype(np.float32), size, nearest=True) > 0.5
    lesions = None if lesion is None else resize_square(lesion.astype(np.float32), size, nearest=True) > 0.5
    return CuratedImage(image=image, head_mask=head, lesion_mask=lesions)


def _thumbnail(grey: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    height, width = grey.shape
    new_width = max(1, round(width * THUMBNAIL_HEIGHT / height))
    thumbnail = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize((new_width, THUMBNAIL_HEIGHT), Image.Resampling.BILINEAR))
    if mask is None:
        return thumbnail, None
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((new_width, THUMBNAIL_HEIGHT), Image.Resampling.NEAREST)) > 127
    return thumbnail, small
