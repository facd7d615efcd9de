"""One row per input image: where it came from, its label and group, and what became of it.

The manifest CSV written from these records is the audit trail of a sweep's data:
every file that was found is listed, with its SHA-256, the split it went to, or the
reason it was dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HEALTHY = "healthy"
PATHOLOGICAL = "pathological"

MANIFEST_COLUMNS = (
    "id",
    "path",
    "sha256",
    "source",
    "role",
    "group",
    "frame",
    "label",
    "finding",
    "split",
    "reason",
    "ga_weeks",
    "ga_source",
    "pixel_spacing_mm",
    "hc_mm",
    "plane",
    "plane_confidence",
    "head_uncertainty",
)
_OPTIONAL_NUMBERS = ("ga_weeks", "pixel_spacing_mm", "hc_mm", "plane_confidence", "head_uncertainty")


@dataclass
class ImageRecord:
    """An input image, what the curation stages found in it, and its fate.

    ``reason`` is empty while the image is in use. ``role`` says where the source's
    images may go: ``split`` (shared out by group), ``train`` or ``eval`` (val and test).
    Numbers a stage did not measure are None.
    """

    id: str
    path: str
    source: str
    group: str
    frame: str
    label: str
    finding: str = ""
    sha256: str = ""
    split: str = ""
    reason: str = ""
    role: str = "split"
    ga_weeks: float | None = None
    ga_source: str = ""
    pixel_spacing_mm: float | None = None
    hc_mm: float | None = None
    plane: str = ""
    plane_confidence: float | None = None
    head_uncertainty: float | None = None

    @property
    def kept(self) -> bool:
        return not self.reason

    def drop(self, reason: str) -> None:
        """Mark the record as not used, keeping the first reason given."""
        if not self.reason:
            self.reason = reason


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_inside(folder: Path, path: Path) -> bool:
    """Tell whether ``path``, with links and ``..`` resolved, lies inside ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def hash_source_file(record: ImageRecord, folder: Path, path: Path) -> None:
    """Store the SHA-256 of the record's file, or drop it if the file is missing or outside ``folder``."""
    if not is_inside(folder, path):
        record.drop("outside the source folder")
    elif not path.exists():
        record.drop("missing file")
    elif not path.is_file():
        record.drop("not a regular file")
    else:
        record.sha256 = file_sha256(path)


def manifest_path(path: Path, relative_to: Path | None) -> str:
    """Return ``path`` relative to the data root when it lies inside it, so manifests stay portable."""
    if relative_to is not None and path.is_relative_to(relative_to):
        return str(path.relative_to(relative_to))
    return str(path)


def drop_duplicates(records: list[ImageRecord]) -> int:
    """Drop every record whose file bytes equal an earlier record's; return how many were dropped."""
    first_by_hash: dict[str, str] = {}
    dropped = 0
    for record in sorted(records, key=lambda r: r.id):
        if not record.kept or not record.sha256:
            continue
        original = first_by_hash.setdefault(record.sha256, record.id)
        if original != record.id:
            record.drop(f"duplicate of {original}")
            dropped += 1
    return dropped


def write_manifest(records: list[ImageRecord], path: Path) -> Path:
    """Write the records as CSV, sorted by id, and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for record in sorted(records, key=lambda r: r.id):
            row = dataclasses.asdict(record)
            writer.writerow({column: _cell(row[column]) for column in MANIFEST_COLUMNS})
    return path


def read_manifest(path: Path) -> list[ImageRecord]:
    """Read a manifest written by :func:`write_manifest`."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in _OPTIONAL_NUMBERS:
            row[column] = float(row[column]) if row.get(column) else None
    return [ImageRecord(**row) for row in rows]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# A reason's details start at a colon, a bracket, a quoted value or " of <id>".
_REASON_DETAILS = re.compile(r":| \(| '| \"| of ")


def reason_kind(reason: str) -> str:
    """Shorten a drop reason to its kind, for counting: "duplicate of x.png" and "invalid gestational age: ..." give
    "duplicate" and "invalid gestational age".

    >>> reason_kind("invalid pixel spacing 'abc'")
    'invalid pixel spacing'
    """
    return _REASON_DETAILS.split(reason, maxsplit=1)[0].strip() or reason


def summarize(records: list[ImageRecord]) -> dict[str, int]:
    """Count kept images per split and label, and dropped images per reason kind."""
    counts: Counter[str] = Counter()
    for record in records:
        if record.kept:
            counts[f"{record.split or 'unassigned'}/{record.label}"] += 1
        else:
            counts[f"dropped/{reason_kind(record.reason)}"] += 1
    return dict(sorted(counts.items()))
