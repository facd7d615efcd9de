"""Preparing a sweep's data: list sources, curate (cached), apply the exclude list, split by group.

:func:`prepare_dataset` runs once per sweep, on the driver. Its :class:`PreparedData`
contains every split as arrays, so trials never read the raw images.

The cache key covers everything that determines the curated arrays: each input's
id, file hash, label and metadata, every stage setting, the fingerprints of the
model weights and the preprocessing code's version. The exclude list and the split
are cheap and run after the cache, so changing them never recomputes anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.curation.pipeline import CuratedImage, CurationSettings, ProgressCallback, StageCounts, curate
from pipelines.curation.segmentation import HeadSegmenter
from pipelines.curation.sononet import SonoNet
from pipelines.data.cache import ArrayCache, cache_key
from pipelines.data.records import PATHOLOGICAL, ImageRecord, drop_duplicates
from pipelines.data.sources import PendingImage, list_source
from pipelines.data.split import SPLITS, SplitSettings, split_by_group, split_counts

logger = logging.getLogger(__name__)

# Per-record fields that curation measures; they are cached with the arrays.
CURATED_FIELDS = ("reason", "ga_weeks", "ga_source", "pixel_spacing_mm", "hc_mm", "plane", "plane_confidence", "head_uncertainty")
THUMBNAIL_WIDTH = 192
# Arrays every cache entry must contain; an entry without one of them is recomputed.
CACHED_ARRAYS = (
    "ids",
    "images",
    "head_masks",
    "lesion_masks",
    "has_lesion_mask",
    "fields",
    "stage_counts",
    "seconds",
    "thumbnail_ids",
    "thumbnails",
    "thumbnail_widths",
    "thumbnail_masks",
    "has_thumbnail_mask",
)


class EmptyDatasetError(ValueError):
    """Filtering left a split without the images it needs."""


@dataclass
class PreparedSplit:
    """The images of one split as arrays, with labels (1 = pathological) and ids."""

    images: np.ndarray  # float32 (N, 1, H, W) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    ids: list[str]
    groups: list[str]
    head_masks: np.ndarray  # bool (N, 1, H, W); all True where no head mask is known
    lesion_masks: np.ndarray | None  # bool (N, 1, H, W) where pixel labels exist

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PreparedData:
    """Every split of a sweep's data, the records behind them and how they were made."""

    splits: dict[str, PreparedSplit]
    records: list[ImageRecord]
    cache_key: str
    cache_hit: bool
    image_size: int
    stage_counts: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0
    first_seconds: float = 0.0
    thumbnails: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None
    crops: dict[str, np.ndarray] | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        return split_counts(self.records)


def prepare_dataset(
    sources: list[dict[str, Any]],
    *,
    data_root: Path,
    curation: CurationSettings,
    split: SplitSettings,
    cache_dir: Path,
    sononet: SonoNet | None = None,
    segmenter: HeadSegmenter | None = None,
    weights_fingerprints: dict[str, str] | None = None,
    exclude: dict[str, str] | None = None,
    keep_thumbnails: bool = False,
    on_progress: ProgressCallback | None = None,
) -> PreparedData:
    """List, curate, exclude, split and stack the images of ``sources`` (dicts of the spec's data.sources)."""
    started = time.perf_counter()
    pending = [item for source in sources for item in list_source(source, data_root)]
    records = [item.record for item in pending]
    duplicates = drop_duplicates(records)
    if duplicates:
        logger.info("dropped %d byte-identical duplicate images", duplicates)
    usable = [item for item in pending if item.record.kept]

    key = cache_key(
        {
            "inputs": sorted(_input_fingerprint(item) for item in usable),
            "curation": dataclasses.asdict(curation),
            "weights": weights_fingerprints or {},
        }
    )
    cache = ArrayCache(cache_dir)
    stored = cache.get(key, required=CACHED_ARRAYS)
    cache_hit = stored is not None
    if stored is None:
        curated, counts = curate(usable, curation, sononet=sononet, segmenter=segmenter, on_progress=on_progress)
        stored = _to_arrays(usable, curated, counts, curation.image_size, time.perf_counter() - started)
        cache.put(key, stored)
        logger.info("curated %d images into cache entry %s", len(usable), key[:12])
    else:
        logger.info("preprocessing cache hit %s (%d images)", key[:12], len(stored["ids"]))
    _restore_fields(records, json.loads(str(stored["fields"])))
    _warn_unreadable(records)

    for record in records:
        if record.kept and exclude and record.id in exclude:
            record.drop(f"excluded by review: {exclude[record.id]}")

    index = {str(identifier): position for position, identifier in enumerate(stored["ids"])}
    split_by_group(records, split)
    splits = {name: _stack(records, name, stored, index) for name in SPLITS}
    _check_usable(records, splits)
    return PreparedData(
        splits=splits,
        records=records,
        cache_key=key,
        cache_hit=cache_hit,
        image_size=curation.image_size,
        stage_counts=json.loads(str(stored["stage_counts"])),
        seconds=time.perf_counter() - started,
        first_seconds=float(stored["seconds"]),
        thumbnails=_thumbnails(stored) if keep_thumbnails else None,
        crops={str(identifier): stored["images"][row] for identifier, row in index.items()} if keep_thumbnails else None,
    )


def _input_fingerprint(item: PendingImage) -> tuple:
    record = item.record
    return (record.id, record.sha256, record.label, record.ga_weeks, record.pixel_spacing_mm, item.dicom_frame)


def _to_arrays(
    items: list[PendingImage], curated: dict[str, CuratedImage], counts: StageCounts, size: int, seconds: float
) -> dict[str, np.ndarray]:
    """Pack the kept images, every record's curation fields, thumbnails and counts for the cache."""
    kept = [item for item in items if item.record.kept]
    empty = np.zeros((0, size, size), dtype=np.float32)
    outputs = [curated[item.record.id] for item in kept]
    fields = {item.record.id: {name: getattr(item.record, name) for name in CURATED_FIELDS} for item in items}

    thumbnail_ids = [item.record.id for item in items if item.record.id in curated]
    thumbnails = np.zeros((len(thumbnail_ids), 96, THUMBNAIL_WIDTH), dtype=np.uint8)
    thumbnail_masks = np.zeros_like(thumbnails, dtype=bool)
    widths = np.zeros(len(thumbnail_ids), dtype=np.int32)
    has_thumbnail_mask = np.zeros(len(thumbnail_ids), dtype=bool)
    for row, identifier in enumerate(thumbnail_ids):
        output = curated[identifier]
        width = min(output.thumbnail.shape[1], THUMBNAIL_WIDTH)
        widths[row] = width
        thumbnails[row, :, :width] = output.thumbnail[:, :width]
        if output.thumbnail_mask is not None:
            has_thumbnail_mask[row] = True
            thumbnail_masks[row, :, :width] = output.thumbnail_mask[:, :width]

    return {
        "ids": np.array([item.record.id for item in kept], dtype=str),
        "images": np.stack([output.image for output in outputs]) if outputs else empty,
        "head_masks": np.stack([output.head_mask for output in outputs]) if outputs else empty.astype(bool),
        "lesion_masks": np.stack([_or_empty(output.lesion_mask, size) for output in outputs]) if outputs else empty.astype(bool),
        "has_lesion_mask": np.array([output.lesion_mask is not None for output in outputs], dtype=bool),
        "fields": np.array(json.dumps(fields)),
        "stage_counts": np.array(json.dumps(counts.rows())),
        "seconds": np.array(seconds),
        "thumbnail_ids": np.array(thumbnail_ids, dtype=str),
        "thumbnails": thumbnails,
        "thumbnail_widths": widths,
        "thumbnail_masks": thumbnail_masks,
        "has_thumbnail_mask": has_thumbnail_mask,
    }


def _or_empty(mask: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros((size, size), dtype=bool) if mask is None else mask


def _restore_fields(records: list[ImageRecord], fields: dict[str, dict[str, Any]]) -> None:
    for record in records:
        stored = fields.get(record.id)
        if stored is None:
            continue
        reason = stored.pop("reason", "")
        for name, value in stored.items():
            setattr(record, name, value)
        if reason:
            record.drop(reason)


def _warn_unreadable(records: list[ImageRecord]) -> None:
    unreadable = [record for record in records if record.reason.startswith("unreadable:")]
    if unreadable:
        logger.warning(
            "skipped %d unreadable images (listed in the manifest), for example %s: %s",
            len(unreadable),
            unreadable[0].id,
            unreadable[0].reason.removeprefix("unreadable: "),
        )


def _thumbnails(stored: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    result = {}
    for row, identifier in enumerate(stored["thumbnail_ids"]):
        width = int(stored["thumbnail_widths"][row])
        mask = stored["thumbnail_masks"][row, :, :width] if stored["has_thumbnail_mask"][row] else None
        result[str(identifier)] = (stored["thumbnails"][row, :, :width], mask)
    return result


def _stack(records: list[ImageRecord], split: str, stored: dict[str, np.ndarray], index: dict[str, int]) -> PreparedSplit:
    members = sorted((r for r in records if r.kept and r.split == split), key=lambda r: r.id)
    rows = [index[r.id] for r in members]
    size = stored["images"].shape[-1]
    has_lesion_masks = bool(rows) and bool(stored["has_lesion_mask"][rows].all())
    return PreparedSplit(
        images=stored["images"][rows].reshape(len(rows), 1, size, size).astype(np.float32),
        labels=np.array([1 if r.label == PATHOLOGICAL else 0 for r in members], dtype=np.int64),
        ids=[r.id for r in members],
        groups=[r.group for r in members],
        head_masks=stored["head_masks"][rows].reshape(len(rows), 1, size, size),
        lesion_masks=stored["lesion_masks"][rows].reshape(len(rows), 1, size, size) if has_lesion_masks else None,
    )


def _check_usable(records: list[ImageRecord], splits: dict[str, PreparedSplit]) -> None:
    dropped = Counter(record.reason.split(":")[0] for record in records if not record.kept)
    summary = ", ".join(f"{count} {reason}" for reason, count in dropped.most_common(5)) or "none dropped"
    if len(splits["train"]) == 0:
        raise EmptyDatasetError(
            f"no healthy training images are left after filtering ({len(records)} found; {summary}); "
            f"check data.sources, data.curation and data.split"
        )
    for name in ("val", "test"):
        labels = splits[name].labels
        if labels.size == 0 or labels.min() == labels.max():
            raise EmptyDatasetError(
                f"the {name} split needs healthy and pathological images, but has {int((labels == 0).sum())} "
                f"healthy and {int((labels == 1).sum())} pathological ({summary}); check data.sources, "
                f"data.curation and data.split"
            )
