"""``sweeper status``: the trials of a sweep, their states and best results, read from Tune's storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeper.paths import default_storage


class SweepNotFoundError(LookupError):
    """No sweep of that name exists in the storage folder."""


def sweep_status(name: str, storage: Path | None = None) -> list[dict[str, Any]]:
    """Return one row per trial: id, state, sampled values, phase and best result."""
    from ray.tune import ExperimentAnalysis

    folder = (storage or default_storage()).expanduser() / name
    if not folder.is_dir():
        raise SweepNotFoundError(
            f"no sweep {name!r} in {str(folder.parent)!r}; check the name, or pass the --storage the sweep was launched with"
        )
    try:
        analysis = ExperimentAnalysis(str(folder))
    except Exception as error:  # Tune raises bare ValueError/TuneError types for unreadable state
        raise SweepNotFoundError(
            f"sweep {name!r} in {str(folder)!r} has no readable Tune state ({type(error).__name__}: {error}); "
            f"it may not have started a trial yet"
        ) from error
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        rows.append(
            {
                "trial_id": trial.trial_id,
                "state": trial.status,
                "config": trial.config,
                "phase": last.get("phase", ""),
                "best_cell": last.get("best_cell", ""),
                "best_test_auprc": last.get("best_test_auprc"),
                "best_test_auroc": last.get("best_test_auroc"),
                "error": (trial.error_file and Path(trial.error_file).name) or "",
            }
        )
    return rows
