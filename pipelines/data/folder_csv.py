"""Loader for a folder of images with a CSV of file, label and (optionally) group."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pipelines.curation.gestational_age import parse_gestational_age
from pipelines.data.naming import source_frame, source_group
from pipelines.data.records import HEALTHY, PATHOLOGICAL, ImageRecord, hash_source_file, manifest_path
from pipelines.data.roboflow import DataSourceError

logger = logging.getLogger(__name__)


def load_folder_csv(
    folder: Path,
    *,
    name: str,
    csv_name: str = "labels.csv",
    file_column: str = "file",
    label_column: str = "label",
    group_column: str | None = "group",
    healthy_labels: list[str] | tuple[str, ...] = ("healthy", "normal", "0"),
    ga_column: str | None = None,
    ga_unit: str = "weeks",
    pixel_spacing_column: str | None = None,
    relative_to: Path | None = None,
) -> list[ImageRecord]:
    """List the images named in ``folder/csv_name``; labels in ``healthy_labels`` are healthy.

    Any other non-empty label is pathological and is kept as the finding. Without a
    group column, or with an empty cell, the group is derived from the file name. An
    optional column gives the gestational age (``22+6``, decimal weeks, or days with
    ``ga_unit="days"``) and another the pixel spacing in mm.
    """
    csv_path = folder / csv_name
    if not csv_path.is_file():
        raise DataSourceError(f"data source {name!r}: {str(csv_path)!r} not found; set the source's csv or path")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            fields = [field.strip() for field in reader.fieldnames or []]
            reader.fieldnames = fields
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise DataSourceError(
            f"data source {name!r}: {str(csv_path)!r} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from error
    except csv.Error as error:
        raise DataSourceError(f"data source {name!r}: {str(csv_path)!r} is not valid CSV: {error}") from error
    optional = [column for column in (group_column, ga_column, pixel_spacing_column) if column]
    missing = [column for column in [file_column, label_column, *optional] if column not in fields]
    if missing:
        hint = "; set group_column: null to derive groups from file names" if missing[0] == group_column else ""
        raise DataSourceError(
            f"data source {name!r}: {str(csv_path)!r} has no column {missing[0]!r}; columns are "
            f"{', '.join(fields) or 'none'}{hint}"
        )

    healthy = {label.strip().lower() for label in healthy_labels}
    records = []
    seen: set[str] = set()
    for line_number, row in enumerate(rows, start=2):
        filename = (row.get(file_column) or "").strip()
        if not filename:
            continue
        if any(ord(character) < 32 or ord(character) == 127 for character in filename):
            logger.warning("data source %s: line %d of %s has control characters in its file name; skipped it", name, line_number, csv_name)
            continue
        if filename in seen:
            raise DataSourceError(
                f"data source {name!r}: {str(csv_path)!r} lists {filename!r} twice (again on line {line_number}); "
                f"list each file once with one label and group"
            )
        seen.add(filename)
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
        if ga_column:
            _read_gestational_age(record, row.get(ga_column), ga_unit)
        if pixel_spacing_column:
            _read_spacing(record, row.get(pixel_spacing_column))
        hash_source_file(record, folder, path)
        records.append(record)
    return records


def _read_gestational_age(record: ImageRecord, value: str | None, unit: str) -> None:
    try:
        record.ga_weeks = parse_gestational_age(value, unit=unit)
    except ValueError as error:
        hint = ""
        if unit == "weeks" and _is_age_in_days(value):
            hint = "; if the column counts days, set the source's ga_unit: days"
        record.drop(f"invalid gestational age: {error}{hint}")
        return
    if record.ga_weeks is not None:
        record.ga_source = "metadata"


def _is_age_in_days(value: str | None) -> bool:
    try:
        return parse_gestational_age(value, unit="days") is not None
    except ValueError:
        return False


def _read_spacing(record: ImageRecord, value: str | None) -> None:
    text = (value or "").strip()
    if not text:
        return
    try:
        spacing = float(text)
    except ValueError:
        spacing = float("nan")
    if not spacing > 0:
        record.drop(f"invalid pixel spacing {text!r}")
        return
    record.pixel_spacing_mm = spacing
