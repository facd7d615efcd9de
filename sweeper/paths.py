"""Default locations, all under ``$SWEEPER_HOME`` (``~/.sweeper`` unless set)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SWEEPER_HOME"


def sweeper_home() -> Path:
    """Return the folder for the product's default state: sweeps, MLflow data and caches."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".sweeper").expanduser()


def default_storage() -> Path:
    """Return where Ray Tune keeps sweep results unless the spec or ``--storage`` says otherwise."""
    return sweeper_home() / "sweeps"


def default_cache_dir() -> Path:
    """Return the preprocessing cache folder unless the spec sets ``data.cache_dir``."""
    return sweeper_home() / "cache" / "preprocessed"


def default_review_dir(spec_name: str) -> Path:
    """Return where ``sweeper data review`` writes a spec's contact sheet unless ``--out`` gives another folder."""
    return sweeper_home() / "review" / spec_name
