"""The on-disk state of a tracking server: its root folder, ``server.json`` and a lock.

One root folder contains everything a server owns: the SQLite backend store, the proxied
artifact store, the server log and ``server.json``, which records the process that serves
them. Only this package writes ``server.json``, and only the pid recorded there is ever
signalled.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

logger = logging.getLogger(__name__)

STATE_FILE_NAME = "server.json"
LOG_FILE_NAME = "server.log"
LOCK_FILE_NAME = "server.lock"
DATABASE_FILE_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "artifacts"

# "basic" for a server that runs MLflow's basic-auth app, "none" for an open one.
AuthMode = Literal["none", "basic"]
AUTH_MODES: tuple[AuthMode, ...] = ("none", "basic")


class ServerError(RuntimeError):
    """A tracking server that failed to start, stop or pass its health check."""


@dataclass(frozen=True)
class ServerInfo:
    """A tracking server process and the root folder it serves."""

    pid: int
    host: str
    port: int
    uri: str
    root: Path
    auth: AuthMode = "none"

    @property
    def log_file(self) -> Path:
        """The file that receives the server's stdout and stderr."""
        return log_path(self.root)


def default_root() -> Path:
    """Return ``$SWEEPER_HOME/mlflow``, with ``SWEEPER_HOME`` defaulting to ``~/.sweeper``."""
    sweeper_home = os.environ.get("SWEEPER_HOME") or "~/.sweeper"
    return Path(sweeper_home).expanduser() / "mlflow"


def resolve_root(root: Path | str) -> Path:
    """Return ``root`` as an absolute path, so the SQLite URI and the state file agree."""
    return Path(root).expanduser().resolve()


def state_path(root: Path) -> Path:
    return root / STATE_FILE_NAME


def log_path(root: Path) -> Path:
    return root / LOG_FILE_NAME


def write_state(info: ServerInfo) -> None:
    """Write ``server.json`` atomically by writing a temporary file in the root and renaming it."""
    record = {
        "pid": info.pid,
        "host": info.host,
        "port": info.port,
        "uri": info.uri,
        "auth": info.auth,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    descriptor, temporary_name = tempfile.mkstemp(
        dir=info.root, prefix=f".{STATE_FILE_NAME}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(record, stream, indent=2)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary_name, state_path(info.root))
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def read_state(root: Path) -> ServerInfo | None:
    """Read ``server.json`` in ``root``, or return None when it is missing.

    A file that cannot be parsed is removed with a warning, because it names no process
    that could safely be signalled.
    """
    path = state_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None

    try:
        record = json.loads(text)
        # A file written before auth was recorded comes from a server without auth.
        auth = record.get("auth", "none")
        if auth not in AUTH_MODES:
            raise ValueError(f"auth is {auth!r}, expected one of {', '.join(AUTH_MODES)}")
        return ServerInfo(
            pid=int(record["pid"]),
            host=str(record["host"]),
            port=int(record["port"]),
            uri=str(record["uri"]),
            root=root,
            auth=cast(AuthMode, auth),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("Removing invalid MLflow server state file %s: %s", path, error)
        remove_state(root)
        return None


def remove_state(root: Path) -> None:
    state_path(root).unlink(missing_ok=True)


@contextlib.contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` so that two callers never start two servers there.

    The lock is an ``flock`` on ``server.lock``, so the kernel releases it if the holder
    dies. It is not re-entrant, so take it once per operation.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE_NAME, "a", encoding="utf-8") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
