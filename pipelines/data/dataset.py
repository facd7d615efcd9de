"""Preparing a sweep's data: list sources, preprocess (cached), split by group, build arrays.

:func:`prepare_dataset` is run once per sweep; its :class:`PreparedData` holds
every split as arrays, so trials never read the raw images.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.cache import ArrayCache, cache_key
from pipelines.data.folder_csv import load_folder_csv
from pipelines.data.phantoms import generate_synthetic_phantoms
from pipelines.data.preprocess import UnreadableImageError, preprocess_image, read_grey, resize_square
from pipelines.data.records import HEALTHY, PATHOLOGICAL, ImageRecord, drop_duplicates
from pipelines.data.roboflow import DataSourceError, load_roboflow_multilabel
from pipelines.data.split import SPLITS, SplitSettings, split_by_group, split_counts

logger = logging.getLogger(__name__)


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

    def counts(self) -> dict[str, dict[str, int]]:
        return split_counts(self.records)


@dataclass
class _Pending:
    """A record and how to get its pixels: a file path, or generated arrays."""

    record: ImageRecord
    file: Path | None = None
    image: np.ndarray | None = None
    head_mask: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None


def prepare_dataset(
    sources: list[dict[str, Any]],
    *,
    data_root: Path,
    image_size: int,
    percentile: float,
    split: SplitSettings,
    cache_dir: Path,
) -> PreparedData:
    """List, preprocess, split and stack the images of ``sources`` (dicts of the spec's data.sources)."""
    pending = [item for source in sources for item in _list_source(source, data_root)]
    records = [item.record for item in pending]
    duplicates = drop_duplicates(records)
    if duplicates:
        logger.info("dropped %d byte-identical duplicate images", duplicates)

    usable = [item for item in pending if item.record.kept]
    key = cache_key(
        {
            "inputs": sorted((item.record.id, item.record.sha256) for item in usable),
            "image_size": image_size,
            "percentile": percentile,
        }
    )
    cache = ArrayCache(cache_dir)
    stored = cache.get(key)
    cache_hit = stored is not None
    if stored is None:
        stored = _preprocess_all(usable, image_size=image_size, percentile=percentile)
        cache.put(key, stored)
        logger.info("preprocessed %d images into cache entry %s", len(usable), key[:12])
    else:
        logger.info("preprocessing cache hit %s (%d images)", key[:12], len(stored["ids"]))

    index = {str(identifier): position for position, identifier in enumerate(stored["ids"])}
    failures = dict(zip(stored["failed_ids"].tolist(), stored["failed_reasons"].tolist()))
    for record in records:
        if record.id in failures:
            record.drop(f"unreadable: {failures[record.id]}")
    if failures:
        example = next(iter(failures.items()))
        logger.warning(
            "skipped %d unreadable images (listed in the manifest), for example %s: %s", len(failures), *example
        )

    split_by_group(records, split)
    splits = {name: _stack(records, name, stored, index) for name in SPLITS}
    _check_usable(records, splits)
    return PreparedData(splits=splits, records=records, cache_key=key, cache_hit=cache_hit, image_size=image_size)


def _list_source(source: dict[str, Any], data_root: Path) -> list[_Pending]:
    kind = source["kind"]
    name = source.get("name") or _default_name(source)
    if kind == "synthetic":
        phantoms = generate_synthetic_phantoms(
            healthy=source["healthy"], pathological=source["pathological"], size=source["size"], seed=source["seed"]
        )
        items = []
        for phantom in phantoms:
            record = ImageRecord(
                id=f"{name}/{phantom.case_id}",
                path=f"synthetic:{phantom.case_id}",
                source=name,
                group=phantom.case_id,
                frame=phantom.case_id,
                label=PATHOLOGICAL if phantom.pathological else HEALTHY,
                finding=phantom.lesion_kind,
                sha256=_array_sha256(phantom.image),
            )
            items.append(
                _Pending(record, image=phantom.image, head_mask=phantom.head_mask, lesion_mask=phantom.lesion_mask)
            )
        return items

    folder = resolve_source_path(source["path"], data_root)
    if kind == "roboflow-multilabel":
        records = load_roboflow_multilabel(
            folder, name=name, splits=source["splits"], healthy_label=source["healthy_label"], relative_to=data_root
        )
    elif kind == "folder-csv":
        records = load_folder_csv(
            folder,
            name=name,
            csv_name=source["csv"],
            file_column=source["file_column"],
            label_column=source["label_column"],
            group_column=source["group_column"],
            healthy_labels=source["healthy_labels"],
            relative_to=data_root,
        )
    else:
        raise DataSourceError(f"data source kind must be roboflow-multilabel, folder-csv or synthetic, but got {kind!r}")
    return [_Pending(record, file=data_root / record.path) for record in records]


def resolve_source_path(path: str, data_root: Path) -> Path:
    """Resolve a source path from the spec against the data root (absolute paths stay as they are)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else data_root / candidate


def _default_name(source: dict[str, Any]) -> str:
    if source["kind"] == "synthetic":
        return "synthetic-phantoms"
    return Path(source["path"]).name or source["kind"]


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _preprocess_all(items: list[_Pending], *, image_size: int, percentile: float) -> dict[str, np.ndarray]:
    ids, images, head_masks, lesion_masks, has_lesion_mask = [], [], [], [], []
    failed_ids, failed_reasons = [], []
    for item in items:
        try:
            raw = read_grey(item.file) if item.file is not None else item.image
            image = preprocess_image(raw, size=image_size, percentile=percentile)
        except UnreadableImageError as error:
            failed_ids.append(item.record.id)
            failed_reasons.append(str(error))
            continue
        ids.append(item.record.id)
        images.append(image)
        head_masks.append(_resize_mask(item.head_mask, image_size, default=True))
        lesion_masks.append(_resize_mask(item.lesion_mask, image_size, default=False))
        has_lesion_mask.append(item.lesion_mask is not None)
    empty = np.zeros((0, image_size, image_size), dtype=np.float32)
    return {
        "ids": np.array(ids, dtype=str),
        "images": np.stack(images) if images else empty,
        "head_masks": np.stack(head_masks) if head_masks else empty.astype(bool),
        "lesion_masks": np.stack(lesion_masks) if lesion_masks else empty.astype(bool),
        "has_lesion_mask": np.array(has_lesion_mask, dtype=bool),
        "failed_ids": np.array(failed_ids, dtype=str),
        "failed_reasons": np.array(failed_reasons, dtype=str),
    }


def _resize_mask(mask: np.ndarray | None, size: int, *, default: bool) -> np.ndarray:
    if mask is None:
        return np.full((size, size), default, dtype=bool)
    return resize_square(mask.astype(np.float32), size, nearest=True) > 0.5


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
    summary = ", ".join(f"{count} {reason}" for reason, count in dropped.most_common()) or "none dropped"
    if len(splits["train"]) == 0:
        raise EmptyDatasetError(
            f"no healthy training images are left after filtering ({len(records)} found; {summary}); "
            f"check data.sources and data.split"
        )
    for name in ("val", "test"):
        labels = splits[name].labels
        if labels.size == 0 or labels.min() == labels.max():
            raise EmptyDatasetError(
                f"the {name} split needs healthy and pathological images, but has {int((labels == 0).sum())} "
                f"healthy and {int((labels == 1).sum())} pathological ({summary}); check data.sources and data.split"
            )
