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


def write_driver_state(folder: Path, status: str) -> None:
    """Record ``status`` (running, finished, failed or interrupted) with this process's pid and host."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {"status": status, "pid": os.getpid(), "host": socket.gethostname(), "updated_at": time.time()}
    temporary = folder / f".{STATE_FILE}.partial"
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, folder / STATE_FILE)


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
