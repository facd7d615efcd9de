"""Loader for a folder of images with a CSV of file, label and (optionally) group."""

from __future__ import annotations

import csv
from pathlib import Path

from pipelines.data.naming import source_frame, source_group
from pipelines.data.records import HEALTHY, PATHOLOGICAL, ImageRecord, hash_source_file, manifest_path
from pipelines.data.roboflow import DataSourceError


def load_folder_csv(
    folder: Path,
    *,
    name: str,
    csv_name: str = "labels.csv",
    file_column: str = "file",
    label_column: str = "label",
    group_column: str | None = "group",
    healthy_labels: list[str] | tuple[str, ...] = ("healthy", "normal", "0"),
    relative_to: Path | None = None,
) -> list[ImageRecord]:
    """List the images named in ``folder/csv_name``; labels in ``healthy_labels`` are healthy.

    Any other non-empty label is pathological and is kept as the finding. Without a
    group column, or with an empty cell, the group is derived from the file name.
    """
    csv_path = folder / csv_name
    if not csv_path.is_file():
        raise DataSourceError(f"data source {name!r}: {str(csv_path)!r} not found; set the source's csv or path")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        fields = [field.strip() for field in reader.fieldnames or []]
        reader.fieldnames = fields
        wanted = [file_column, label_column] + ([group_column] if group_column else [])
        missing = [column for column in wanted if column not in fields]
        if missing:
            raise DataSourceError(
                f"data source {name!r}: {str(csv_path)!r} has no column {missing[0]!r}; columns are {', '.join(fields)}"
            )
        rows = list(reader)

    healthy = {label.strip().lower() for label in healthy_labels}
    records = []
    for row in rows:
        filename = (row.get(file_column) or "").strip()
        if not filename:
            continue
        label = (row.get(label_column) or "").strip()
        path = folder / filename
        group = (row.get(group_column) or "").strip() if group_column else ""
        record = ImageRecord(
            id=f"{name}/{filename}",
            path=manifest_path(path, relative_to),
            source=name,
            group=group or source_group(Path(filename).name),
            frame=source_frame(Path(filename).name),
            label=HEALTHY if label.lower() in healthy else PATHOLOGICAL,
            finding="" if label.lower() in healthy else label,
        )
        if not label:
            record.label = ""
            record.drop("no label")
        hash_source_file(record, folder, path)
        records.append(record)
    return records
