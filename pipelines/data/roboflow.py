"""Loader for Roboflow's multi-label classification export.

The export has one folder per published split (``train/``, ``valid/``, ``test/``),
each with image files and a ``_classes.csv`` whose first column is the file name and
whose other columns are one-hot labels. Headers may carry spaces after the commas.
The published splits are pooled here: they leak frames of one patient across splits,
so the product splits again by source group.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pipelines.data.naming import source_frame, source_group
from pipelines.data.records import HEALTHY, PATHOLOGICAL, ImageRecord, hash_source_file, manifest_path

logger = logging.getLogger(__name__)

CLASSES_FILE = "_classes.csv"


class DataSourceError(ValueError):
    """A data source is missing or malformed; the message says which file and what to do."""


def load_roboflow_multilabel(
    folder: Path,
    *,
    name: str,
    splits: list[str],
    healthy_label: str = "normal",
    relative_to: Path | None = None,
) -> list[ImageRecord]:
    """List every image of the export's ``splits`` with its label, group and SHA-256.

    An image is healthy when only ``healthy_label`` is set, and pathological when any
    other label is set; the finding lists those labels. Rows with no label, or with
    the healthy label next to a finding, are kept in the list but dropped with a reason.
    """
    if not folder.is_dir():
        raise DataSourceError(f"data source {name!r}: folder {str(folder)!r} not found; check the path or --data-root")
    records: list[ImageRecord] = []
    for split in splits:
        classes_path = folder / split / CLASSES_FILE
        if not classes_path.is_file():
            raise DataSourceError(
                f"data source {name!r}: {str(classes_path)!r} not found; a Roboflow multi-label export "
                f"has {CLASSES_FILE} in each split folder (set the source's splits to the folders that exist)"
            )
        records.extend(_read_split(classes_path, name=name, split=split, healthy_label=healthy_label, relative_to=relative_to))
    logger.info("data source %s: %d images in %s", name, len(records), ", ".join(splits))
    return records


def _read_split(
    classes_path: Path, *, name: str, split: str, healthy_label: str, relative_to: Path | None
) -> list[ImageRecord]:
    with open(classes_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataSourceError(f"data source {name!r}: {str(classes_path)!r} is empty")
    header = [column.strip() for column in rows[0]]
    labels = header[1:]
    if healthy_label not in labels:
        raise DataSourceError(
            f"data source {name!r}: healthy label {healthy_label!r} is not a column of {str(classes_path)!r}; "
            f"columns are {', '.join(labels)}"
        )

    records = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        filename = row[0].strip()
        values = [value.strip() for value in row[1:]]
        path = classes_path.parent / filename
        record = ImageRecord(
            id=f"{name}/{split}/{filename}",
            path=manifest_path(path, relative_to),
            source=name,
            group=source_group(filename),
            frame=source_frame(filename),
            label="",
        )
        if len(values) != len(labels):
            record.drop(f"malformed row: line {line_number} of {CLASSES_FILE} has {len(values)} labels, expected {len(labels)}")
        else:
            active = [label for label, value in zip(labels, values) if value not in ("", "0")]
            findings = [label for label in active if label != healthy_label]
            if findings:
                record.label, record.finding = PATHOLOGICAL, "+".join(findings)
                if healthy_label in active:
                    record.drop(f"conflicting labels: {healthy_label} and {record.finding}")
            elif active:
                record.label = HEALTHY
            else:
                record.drop("no label")
        hash_source_file(record, classes_path.parent, path)
        records.append(record)
    return records
