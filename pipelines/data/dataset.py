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
import difflib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.curation.pipeline import CuratedImage, CurationSettings, ProgressCallback, curate
from pipelines.curation.segmentation import HeadSegmenter
from pipelines.curation.sononet import SonoNet
from pipelines.curation.stage_counts import EXCLUDE_LIST, LIST, SAMPLING, StageCounts, StageRow, largest_drops
from pipelines.data.cache import ArrayCache, cache_key
from pipelines.data.records import PATHOLOGICAL, ImageRecord, drop_duplicates, reason_kind
from pipelines.data.sources import PendingImage, list_source
from pipelines.data.split import SPLITS, SplitSettings, TooFewGroupsError, split_by_group, split_counts
from pipelines.data.thumbnails import THUMBNAIL_ARRAYS, Thumbnail, pack_thumbnails, unpack_thumbnails

logger = logging.getLogger(__name__)

# Per-record fields that curation measures; they are cached with the arrays.
CURATED_FIELDS = ("reason", "ga_weeks", "ga_source", "pixel_spacing_mm", "hc_mm", "plane", "plane_confidence", "head_uncertainty")
# Arrays every cache entry must contain; an entry without one of them is recomputed.
CACHED_ARRAYS = ("ids", "images", "head_masks", "lesion_masks", "has_lesion_mask", "fields", "stage_counts", "seconds")
# The review thumbnails are a second cache entry, so that a launch never reads them.
THUMBNAILS_KEY_SUFFIX = "-thumbnails"
# Unknown exclude-list ids shown in the warning.
SHOWN_UNKNOWN_IDS = 3


class EmptyDatasetError(ValueError):
    """Filtering left a split without the images it needs.

    ``data`` contains the records, stage table and thumbnails as far as preparation got, so a
    caller can still show why the images were dropped. It is None when nothing was curated.
    """

    def __init__(self, message: str, data: PreparedData | None = None) -> None:
        super().__init__(message)
        self.data = data


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
    """Every split of a sweep's data, the records behind them and how they were made.

    ``stage_counts`` is the stage table, one row per stage from listing to sampling.
    ``seconds`` is the time this preparation took for listing, curation or the cache read,
    and the split. ``first_seconds`` is the time of the preparation that filled the cache.
    Neither includes start-up or model loading.
    """

    splits: dict[str, PreparedSplit]
    records: list[ImageRecord]
    cache_key: str
    cache_hit: bool
    image_size: int
    stage_counts: list[StageRow] = field(default_factory=list)
    seconds: float = 0.0
    first_seconds: float = 0.0
    thumbnails: dict[str, Thumbnail] | None = None
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
    """List, curate, exclude, split and stack the images of ``sources`` (dicts of the spec's data.sources).

    Raises:
        EmptyDatasetError: too few images are left to split; its ``data`` has the stage
            table, the records and (with ``keep_thumbnails``) the thumbnails.
    """
    started = time.perf_counter()
    pending = [item for source in sources for item in list_source(source, data_root)]
    records = [item.record for item in pending]
    duplicates = drop_duplicates(records)
    if duplicates:
        logger.info("dropped %d byte-identical duplicate images", duplicates)
    listing = StageCounts()
    for record in records:
        listing.record(LIST, None if record.kept else reason_kind(record.reason))
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
    packed = None
    if stored is not None and keep_thumbnails:
        packed = cache.get(key + THUMBNAILS_KEY_SUFFIX, required=THUMBNAIL_ARRAYS)
    cache_hit = stored is not None and (packed is not None or not keep_thumbnails)
    if cache_hit:
        logger.info("preprocessing cache hit %s (%d images)", key[:12], len(stored["ids"]))
    else:
        curated, counts = curate(usable, curation, sononet=sononet, segmenter=segmenter, on_progress=on_progress)
        stored = _to_arrays(usable, curated, counts, curation.image_size, time.perf_counter() - started)
        packed = pack_thumbnails({identifier: (output.thumbnail, output.thumbnail_mask) for identifier, output in curated.items() if output.thumbnail is not None})
        cache.put(key, stored)
        cache.put(key + THUMBNAILS_KEY_SUFFIX, packed)
        logger.info("curated %d images into cache entry %s", len(usable), key[:12])
    _restore_fields(records, json.loads(str(stored["fields"])))
    _warn_unreadable(records)

    after = StageCounts()
    if exclude is not None:
        _apply_exclude_list(records, exclude, after)
    curated_rows = json.loads(str(stored["stage_counts"]))
    index = {str(identifier): position for position, identifier in enumerate(stored["ids"])}
    data = PreparedData(
        splits={},
        records=records,
        cache_key=key,
        cache_hit=cache_hit,
        image_size=curation.image_size,
        stage_counts=listing.rows() + curated_rows + after.rows(),
        first_seconds=float(stored["seconds"]),
        thumbnails=unpack_thumbnails(packed) if keep_thumbnails else None,
        crops={identifier: stored["images"][row] for identifier, row in index.items()} if keep_thumbnails else None,
    )

    try:
        split_by_group(records, split)
        for record in records:
            if record.split and (record.kept or record.reason.startswith("not sampled: ")):
                after.record(SAMPLING, None if record.kept else f"over {record.reason.removeprefix('not sampled: ')}")
        data.stage_counts = listing.rows() + curated_rows + after.rows()
        data.splits = {name: _stack(records, name, stored, index) for name in SPLITS}
        _check_usable(data.splits)
    except (TooFewGroupsError, EmptyDatasetError) as error:
        raise _too_few_images(error, data) from None
    data.seconds = time.perf_counter() - started
    return data


def _input_fingerprint(item: PendingImage) -> tuple:
    record = item.record
    return (record.id, record.sha256, record.label, record.ga_weeks, record.pixel_spacing_mm, item.dicom_frame)


def _to_arrays(
    items: list[PendingImage], curated: dict[str, CuratedImage], counts: StageCounts, size: int, seconds: float
) -> dict[str, np.ndarray]:
    """Pack the kept images, every record's curation fields and the stage counts for the cache."""
    kept = [item for item in items if item.record.kept]
    empty = np.zeros((0, size, size), dtype=np.float32)
    outputs = [curated[item.record.id] for item in kept]
    fields = {item.record.id: {name: getattr(item.record, name) for name in CURATED_FIELDS} for item in items}
    return {
        "ids": np.array([item.record.id for item in kept], dtype=str),
        "images": np.stack([output.image for output in outputs]) if outputs else empty,
        "head_masks": np.stack([output.head_mask for output in outputs]) if outputs else empty.astype(bool),
        "lesion_masks": np.stack([_or_empty(output.lesion_mask, size) for output in outputs]) if outputs else empty.astype(bool),
        "has_lesion_mask": np.array([output.lesion_mask is not None for output in outputs], dtype=bool),
        "fields": np.array(json.dumps(fields)),
        "stage_counts": np.array(json.dumps(counts.rows())),
        "seconds": np.array(seconds),
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


def _apply_exclude_list(records: list[ImageRecord], exclude: dict[str, str], counts: StageCounts) -> None:
    """Drop the kept records that the exclude list names, and warn about ids that name no listed image."""
    for record in records:
        if not record.kept:
            continue
        reason = exclude.get(record.id)
        if reason is not None:
            record.drop(f"excluded by review: {reason}")
        counts.record(EXCLUDE_LIST, None if reason is None else "excluded by review")

    known = {record.id for record in records}
    unknown = [identifier for identifier in exclude if identifier not in known]
    if unknown:
        examples = ", ".join(_with_suggestion(identifier, known) for identifier in unknown[:SHOWN_UNKNOWN_IDS])
        logger.warning(
            "exclude list ids that match no listed image exclude nothing: %d of %d, such as %s%s",
            len(unknown),
            len(exclude),
            examples,
            ", ..." if len(unknown) > SHOWN_UNKNOWN_IDS else "",
        )


def _with_suggestion(identifier: str, known: set[str]) -> str:
    close = difflib.get_close_matches(identifier, known, n=1, cutoff=0.8)
    return f"{identifier!r} (did you mean {close[0]!r}?)" if close else repr(identifier)


def _check_usable(splits: dict[str, PreparedSplit]) -> None:
    if len(splits["train"]) == 0:
        raise EmptyDatasetError("the train split has no healthy images; add healthy data")
    for name in ("val", "test"):
        healthy = int((splits[name].labels == 0).sum())
        pathological = int((splits[name].labels == 1).sum())
        if not healthy or not pathological:
            missing = " and ".join(label for label, count in (("healthy", healthy), ("pathological", pathological)) if not count)
            raise EmptyDatasetError(
                f"the {name} split needs healthy and pathological images, but has {healthy} healthy and "
                f"{pathological} pathological; add {missing} data"
            )


def _too_few_images(error: ValueError, data: PreparedData) -> EmptyDatasetError:
    """Explain a split that failed for want of images by the drops of the stage table, most first."""
    listed = len(data.records)
    dropped = sum(not record.kept for record in data.records)
    if not dropped:
        return EmptyDatasetError(str(error), data=data)
    return EmptyDatasetError(
        f"{dropped} of {listed} listed images were dropped ({largest_drops(data.stage_counts)}), which left too "
        f"few to split: {error}, or keep more of it through data.curation",
        data=data,
    )
