"""``sweeper status``: the trials of a sweep, their states and best results, read from Tune's storage.

Tune's own ``ExperimentAnalysis`` needs a running Ray instance. Reading the experiment
state file that Tune saves in the sweep folder needs none, so the status of a sweep can
be checked from any machine that sees the storage, while the sweep runs or after it ends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sweeper.driver_state import driver_running, read_driver_state
from sweeper.paths import default_storage

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class SweepNotFoundError(LookupError):
    """No readable sweep of that name exists in the storage folder."""


def sweep_status(name: str, storage: Path | None = None) -> list[dict[str, Any]]:
    """Return one row per trial: id, state, sampled values, phase and best result."""
    if not NAME_PATTERN.fullmatch(name):
        raise SweepNotFoundError(f"sweep name {name!r} is invalid; use the name the sweep was launched with, not a path")
    folder = (storage or default_storage()).expanduser() / name
    if not folder.is_dir():
        raise SweepNotFoundError(
            f"no sweep {name!r} in {str(folder.parent)!r}; check the name, or pass the --storage the sweep was launched with"
        )
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        raise SweepNotFoundError(f"sweep {name!r} in {str(folder)!r} has no Tune state yet; it may not have started a trial")
    driver_alive = driver_running(read_driver_state(folder))
    try:
        trial_data = json.loads(states[-1].read_text(encoding="utf-8"))["trial_data"]
        return [_row(json.loads(static), json.loads(runtime), driver_alive) for static, runtime in trial_data]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SweepNotFoundError(
            f"Tune state file {str(states[-1])!r} is unreadable ({type(error).__name__}: {error}); "
            f"it may have been cut short, so check the disk and the driver's log"
        ) from error


def _row(static: dict[str, Any], runtime: dict[str, Any], driver_alive: bool) -> dict[str, Any]:
    last = runtime.get("last_result") or {}
    state = static["status"]
    if state in ("RUNNING", "PENDING", "PAUSED") and not driver_alive:
        state = "INTERRUPTED"  # the driver that ran it is gone
    config = static.get("config") or {}
    if not isinstance(config, dict):
        raise TypeError(f"trial {static['trial_id']} has a config of type {type(config).__name__}, not a mapping")
    return {
        "trial_id": static["trial_id"],
        "state": state,
        "config": config,
        "phase": last.get("phase", ""),
        "best_cell": last.get("best_cell", ""),
        "best_test_auprc": last.get("best_test_auprc"),
        "best_test_auroc": last.get("best_test_auroc"),
        "error": runtime.get("error_filename") or "",
    }
