"""Exclude lists: image ids that a reviewer rejected, one per line with a comment.

Format, one entry per line::

    fbau/train/Patient00710_Plane3_1_of_6.jpg   # head cut off at the top
    hc18/012_HC                                   # wrong plane

Blank lines and lines starting with ``#`` are ignored. Every entry needs a comment
after ``#``, so the reason for each exclusion stays on record.
"""

from __future__ import annotations

from pathlib import Path


class ExcludeListError(ValueError):
    """The exclude list is unreadable or has an entry without a comment."""


def read_exclude_list(path: Path) -> dict[str, str]:
    """Return a mapping from excluded image id to the reviewer's comment."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ExcludeListError(f"exclude list {str(path)!r} cannot be read: {error.strerror}") from error
    excluded: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        identifier, _, comment = text.partition("#")
        identifier, comment = identifier.strip(), comment.strip()
        if not comment:
            raise ExcludeListError(
                f"exclude list {str(path)!r} line {number}: entry {identifier!r} has no comment; "
                f"add '# reason' after the id"
            )
        excluded[identifier] = comment
    return excluded
