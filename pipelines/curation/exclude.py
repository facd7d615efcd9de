"""Exclude lists: image ids that a reviewer rejected, one per line with a comment.

Format, one entry per line::

    fbau/train/Patient00710_Plane3_1_of_6.jpg   # head cut off at the top
    hc18/012_HC                                   # wrong plane

Blank lines and lines starting with ``#`` are ignored. Every entry needs a comment
after ``#``, so the reason for each exclusion stays on record. The comment starts at
the first ``#`` after a space or tab, so an id may contain ``#`` itself; a line with
no such ``#`` is split at its first ``#``. The file is UTF-8, with or without the
byte-order mark that Windows editors write.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

# The id, then the comment from the first '#' that follows whitespace.
_ENTRY = re.compile(r"(?P<id>.*?)\s+#(?P<comment>.*)")
# Duplicate ids shown in the warning.
SHOWN_DUPLICATES = 3


class ExcludeListError(ValueError):
    """The exclude list is unreadable or has an entry without a comment."""


def read_exclude_list(path: Path) -> dict[str, str]:
    """Return a mapping from excluded image id to the reviewer's comment.

    An id listed twice keeps its last comment, and a warning names it.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise ExcludeListError(f"exclude list {str(path)!r} cannot be read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ExcludeListError(
            f"exclude list {str(path)!r} is not UTF-8 text (byte {error.start} is 0x{error.object[error.start]:02x}); "
            f"save it as UTF-8"
        ) from error

    excluded: dict[str, str] = {}
    duplicates: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENTRY.fullmatch(stripped)
        identifier, comment = (match["id"], match["comment"]) if match else stripped.partition("#")[::2]
        identifier, comment = identifier.strip(), comment.strip()
        if not comment:
            raise ExcludeListError(
                f"exclude list {str(path)!r} line {number}: entry {identifier!r} has no comment; "
                f"add '# reason' after the id"
            )
        if identifier in excluded:
            duplicates.append(f"{identifier!r} (line {number})")
        excluded[identifier] = comment

    if duplicates:
        logger.warning(
            "exclude list %s repeats ids, and the last comment of each counts: %s%s",
            path,
            ", ".join(duplicates[:SHOWN_DUPLICATES]),
            ", ..." if len(duplicates) > SHOWN_DUPLICATES else "",
        )
    return excluded
