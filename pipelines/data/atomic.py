"""Atomic file writes that keep the umask's permissions, and removal of writes left behind by a kill.

A file is written under a temporary name next to its target and renamed onto it only
when the write finished, so a reader never sees half a file. The temporary file is
created with mode ``0o666`` minus the umask, as ``open`` creates files, because
``tempfile.mkstemp`` creates it ``0o600`` and the rename would keep that mode: a shared
cache or weights folder would then be unreadable to other users.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_write_path(target: Path) -> Iterator[Path]:
    """Yield an empty temporary file next to ``target``; rename it onto ``target`` when the block succeeds.

    The temporary file is removed when the block raises, Ctrl-C included. A kill that
    Python cannot handle leaves it behind, and :func:`remove_stale_partials` removes it later.
    """
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: Path, *, older_than_s: float = 120.0) -> int:
    """Remove ``*.partial`` files in ``folder`` not modified for ``older_than_s`` seconds; return how many.

    A write in progress changes its file's modification time with every chunk, so only
    files whose writer was killed reach the age limit.
    """
    removed = 0
    now = time.time()
    for path in Path(folder).glob(f"*{PARTIAL_SUFFIX}"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        logger.info("removed %d unfinished writes (*%s) left in %s", removed, PARTIAL_SUFFIX, folder)
    return removed
