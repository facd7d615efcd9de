"""Listing the images of every data source kind, with their labels, groups and metadata.

A source dict comes from the spec's ``data.sources``. Listing reads CSVs and hashes
files but decodes no image, so it is cheap enough to run on every launch: the hashes
decide whether the preprocessing cache can be reused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.curation.gestational_age import hadlock_ga_weeks
from pipelines.curation.hc18 import list_hc18
from pipelines.data.folder_csv import load_folder_csv
from pipelines.data.phantoms import generate_synthetic_phantoms
from pipelines.data.records import HEALTHY, PATHOLOGICAL, ImageRecord, file_sha256, manifest_path
from pipelines.data.roboflow import DataSourceError, load_roboflow_multilabel

SOURCE_KINDS = ("roboflow-multilabel", "folder-csv", "hc18", "synthetic")


@dataclass
class PendingImage:
    """A record and where its pixels come from: a file (and its DICOM frame), or generated arrays."""

    record: ImageRecord
    file: Path | None = None
    dicom_frame: int = 0
    image: np.ndarray | None = None
    head_mask: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None


def list_source(source: dict[str, Any], data_root: Path) -> list[PendingImage]:
    """List every image of one source, tagged with the source's role."""
    kind = source["kind"]
    name = source.get("name") or default_source_name(source)
    if kind == "synthetic":
        items = _list_synthetic(source, name)
    elif kind == "hc18":
        items = _list_hc18(resolve_source_path(source["path"], data_root), name, data_root)
    else:
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
                ga_column=source.get("ga_column"),
                ga_unit=source.get("ga_unit", "weeks"),
                pixel_spacing_column=source.get("pixel_spacing_column"),
                relative_to=data_root,
            )
        else:
            raise DataSourceError(f"data source kind must be one of {', '.join(SOURCE_KINDS)}, but got {kind!r}")
        frame = int(source.get("dicom_frame", 0))
        items = [PendingImage(record, file=data_root / record.path, dicom_frame=frame) for record in records]
    role = source.get("role", "split")
    for item in items:
        item.record.role = role
        if role == "train" and item.record.label == PATHOLOGICAL:
            item.record.drop("pathological image in a training-only source")
    return items


def resolve_source_path(path: str, data_root: Path) -> Path:
    """Resolve a source path from the spec against the data root (absolute paths stay as they are)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else data_root / candidate


def default_source_name(source: dict[str, Any]) -> str:
    if source["kind"] == "synthetic":
        return "synthetic-phantoms"
    return Path(source["path"]).name or source["kind"]


def _list_synthetic(source: dict[str, Any], name: str) -> list[PendingImage]:
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
            sha256=hashlib.sha256(np.ascontiguousarray(phantom.image).tobytes()).hexdigest(),
        )
        items.append(PendingImage(record, image=phantom.image, head_mask=phantom.head_mask, lesion_mask=phantom.lesion_mask))
    return items


def _list_hc18(folder: Path, name: str, data_root: Path) -> list[PendingImage]:
    """List HC18 images as healthy records whose gestational age comes from the CSV's HC (Hadlock)."""
    if not folder.is_dir():
        raise DataSourceError(f"data source {name!r}: folder {str(folder)!r} not found; check the path or --data-root")
    try:
        entries = list_hc18(folder)
    except (FileNotFoundError, ValueError) as error:
        raise DataSourceError(f"data source {name!r}: {error}") from error
    items = []
    for entry in entries:
        record = ImageRecord(
            id=f"{name}/{entry.id}",
            path=manifest_path(entry.image_path, data_root),
            source=name,
            group=f"{name}-{entry.group}",
            frame=entry.id,
            label=HEALTHY,
            reason=entry.reason,
        )
        if entry.kept:
            record.sha256 = file_sha256(entry.image_path)
            record.pixel_spacing_mm = entry.pixel_size_mm
            record.hc_mm = entry.hc_mm
            record.ga_weeks = hadlock_ga_weeks(entry.hc_mm)
            record.ga_source = "Hadlock, HC from CSV"
        items.append(PendingImage(record, file=entry.image_path))
    return items
