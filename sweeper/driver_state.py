"""A small record of the driver process next to Tune's state, so readers can tell a live sweep from a dead one.

Tune's experiment state records which trials were RUNNING when it was last saved. If the
driver has since been killed, those trials are not running any more; ``sweep.json``
lets ``sweeper status`` say so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

STATE_FILE = "sweep.json"
TRACKING_FILE = "tracking.json"
LAUNCH_FILE = "launch.json"


def write_driver_state(folder: Path, status: str) -> None:
    """Record ``status`` (running, finished, failed or interrupted) with this process's pid and host."""
    state = {"status": status, "pid": os.getpid(), "host": socket.gethostname(), "updated_at": time.time()}
    _write_json(folder / STATE_FILE, state)


def write_tracking_record(folder: Path, *, uri: str, experiment_id: str, sweep_run_id: str) -> None:
    """Record where the sweep logs in MLflow, so `sweeper report` and `sweeper resume` find its runs."""
    _write_json(folder / TRACKING_FILE, {"uri": uri, "experiment_id": experiment_id, "sweep_run_id": sweep_run_id})


def read_tracking_record(folder: Path) -> dict[str, str] | None:
    """Return the recorded MLflow location of the sweep, or None when there is none or it is unreadable."""
    try:
        record = json.loads((folder / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("uri", "experiment_id", "sweep_run_id")):
        return None
    return record


def write_launch_record(folder: Path, options: dict[str, Any]) -> None:
    """Record the options of ``sweeper launch``, so ``sweeper resume`` can prepare the same sweep again."""
    _write_json(folder / LAUNCH_FILE, options)


def read_launch_record(folder: Path) -> dict[str, Any] | None:
    """Return the recorded launch options, or None when there are none or they are unreadable."""
    try:
        record = json.loads((folder / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("spec_path"), str) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.partial"
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def read_driver_state(folder: Path) -> dict[str, Any] | None:
    """Return the recorded driver state, or None when there is none or it is unreadable."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def driver_running(state: dict[str, Any] | None) -> bool:
    """Tell whether the recorded driver is still running: its status is running and, on this host, its pid lives."""
    if state is None or state.get("status") != "running":
        return False
    if state.get("host") != socket.gethostname():
        return True  # a driver on another machine cannot be checked from here
    try:
        os.kill(int(state["pid"]), 0)
    except (ProcessLookupError, ValueError, TypeError, KeyError):
        return False
    except PermissionError:
        return True
    return True
