"""Storage of post-processing studies: an Optuna journal file per study in a given folder, or an RDB URL."""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

JOURNAL_SUFFIX = ".optuna-journal.log"


def journal_path(folder: Path, study_name: str) -> Path:
    """Return the journal file that stores study ``study_name`` in ``folder``."""
    return Path(folder) / f"{study_name}{JOURNAL_SUFFIX}"


def open_storage(url: str | None, folder: Path, study_name: str) -> BaseStorage:
    """Open the RDB at ``url``, or when ``url`` is ``None`` the study's journal file in ``folder``.

    The journal backend appends one JSON line per operation under a symlink lock, which
    Optuna (4.0 and later) documents as safe on NFSv2 or later, so a trial folder on a
    cluster's shared file system can hold it.
    ``folder`` is created if missing.
    """
    if url is not None:
        return RDBStorage(url)

    Path(folder).mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal_path(folder, study_name))))


def describe_storage(url: str | None, folder: Path, study_name: str) -> str:
    """Return the journal path or the RDB URL with its password hidden, for logs and results."""
    if url is None:
        return str(journal_path(folder, study_name))
    return make_url(url).render_as_string(hide_password=True)
