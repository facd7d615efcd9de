"""A content-addressed cache of preprocessed arrays on disk.

The key is a SHA-256 over everything that determines the result: the input file
hashes, every preprocessing setting and a version string of the code. A second run
with the same inputs and settings reads the arrays instead of decoding images again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.atomic import atomic_write_path, remove_stale_partials

logger = logging.getLogger(__name__)

# Bump when preprocessing changes its output for the same inputs and settings.
PREPROCESSING_VERSION = "4"


def cache_key(payload: dict[str, Any]) -> str:
    """Hash a JSON-serialisable description of the inputs, settings and code version."""
    text = json.dumps({"version": PREPROCESSING_VERSION, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ArrayCache:
    """Named NumPy arrays stored as one ``.npz`` file per key in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str, *, required: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
        """Return the arrays stored under ``key``, or None on a miss or a damaged entry.

        An entry that cannot be read, or that lacks one of the ``required`` arrays, is
        treated as a miss and logged, so the caller recomputes and overwrites it.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            logger.warning("preprocessing cache entry %s is unreadable (%s); recomputing it", path, error)
            return None
        missing = [name for name in required if name not in arrays]
        if missing:
            logger.warning("preprocessing cache entry %s lacks %s; recomputing it", path, ", ".join(missing))
            return None
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Store ``arrays`` under ``key``, atomically so a reader never sees half a file.

        Unfinished writes that a killed process left in the folder are removed first.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.folder)
        with atomic_write_path(self.path(key)) as temporary, open(temporary, "wb") as file:
            np.savez(file, **arrays)
        return self.path(key)
