"""Start detached server processes, check that they are alive and stop their process groups.

A server runs in its own session, so its pid is also its process group id, and one
``killpg`` reaches the ``mlflow server`` launcher and the uvicorn process it spawns.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow_server.state import ServerError

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1
KILL_GRACE_S = 5.0

# Servers started by this interpreter. Polling the Popen reaps an exited child, so
# its pid stops looking alive (an unreaped zombie still accepts signal 0).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(
    command: Sequence[str], *, env: Mapping[str, str], log_file: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session with stdout and stderr written to ``log_file``."""
    with open(log_file, "wb") as log_stream:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    _children[process.pid] = process
    return process


def is_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_server_process(pid: int) -> bool:
    """Check that ``pid`` leads its own process group and, on Linux, runs ``mlflow server``.

    The check guards against a recycled pid, because a state file left by a server that
    died without cleanup may name an unrelated process by now.
    """
    try:
        if os.getpgid(pid) != pid:
            return False
    except ProcessLookupError:
        return False

    # NOTE: without /proc (macOS) only the process group is checked.
    if not Path("/proc/self").exists():
        return True

    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"server" in arguments and any(b"mlflow" in argument for argument in arguments)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(pgid: int, timeout_s: float) -> None:
    """Send SIGTERM to process group ``pgid`` and SIGKILL after ``timeout_s`` seconds.

    Raises ServerError if processes of the group remain after SIGKILL.
    """
    _signal_group(pgid, signal.SIGTERM)
    if _wait_for_group_exit(pgid, timeout_s):
        return

    logger.warning(
        "MLflow server process group %d is still running %.1f s after SIGTERM, so sending SIGKILL",
        pgid,
        timeout_s,
    )
    _signal_group(pgid, signal.SIGKILL)
    if _wait_for_group_exit(pgid, KILL_GRACE_S):
        return

    raise ServerError(
        f"MLflow server process group {pgid} is still running {KILL_GRACE_S:g} s after "
        f"SIGKILL. Check it with `ps -g {pgid}`"
    )


def _signal_group(pgid: int, signal_number: signal.Signals) -> None:
    try:
        os.killpg(pgid, signal_number)
    except ProcessLookupError:
        pass


def _wait_for_group_exit(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        # Reap the group leader first if it is our child, because a zombie still
        # counts as a member of its group.
        is_alive(pgid)
        if not group_exists(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
