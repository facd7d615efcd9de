"""`sweeper status` reads Tune's state file and marks trials of a dead driver as interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeper.driver_state import write_driver_state
from sweeper.status import SweepNotFoundError, sweep_status


def write_state(folder: Path, trials: list[tuple[str, str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    trial_data = []
    for trial_id, status, config in trials:
        static = json.dumps({"trial_id": trial_id, "status": status, "config": config})
        runtime = json.dumps({"last_result": {"phase": "train_gaussian"}, "error_filename": None})
        trial_data.append([static, runtime])
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}), encoding="utf-8")


def test_running_trials_of_dead_driver_are_interrupted(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    write_state(folder, [("a_00000", "RUNNING", {"training.lr": 0.1}), ("a_00001", "TERMINATED", {})])
    write_driver_state(folder, "interrupted")
    rows = sweep_status("sweep", tmp_path)
    assert [row["state"] for row in rows] == ["INTERRUPTED", "TERMINATED"]


def test_running_trials_of_live_driver_stay_running(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    write_state(folder, [("a_00000", "RUNNING", {})])
    write_driver_state(folder, "running")  # this test process is the live driver
    assert sweep_status("sweep", tmp_path)[0]["state"] == "RUNNING"


def test_truncated_state_is_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    write_state(folder, [("a_00000", "RUNNING", {})])
    state = next(folder.glob("experiment_state-*.json"))
    state.write_text(state.read_text(encoding="utf-8")[:40], encoding="utf-8")
    with pytest.raises(SweepNotFoundError, match=r"Tune state file .* is unreadable \(JSONDecodeError"):
        sweep_status("sweep", tmp_path)


def test_hand_made_state_with_bad_config(tmp_path: Path) -> None:
    write_state(tmp_path / "sweep", [("a_00000", "RUNNING", [1, 2])])
    with pytest.raises(SweepNotFoundError, match=r"is unreadable \(TypeError: trial a_00000 has a config of type list"):
        sweep_status("sweep", tmp_path)


def test_path_as_name_rejected(tmp_path: Path) -> None:
    with pytest.raises(SweepNotFoundError, match=r"sweep name '../sweeps/x' is invalid"):
        sweep_status("../sweeps/x", tmp_path)


def test_sweep_without_state_yet(tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    with pytest.raises(SweepNotFoundError, match=r"has no Tune state yet"):
        sweep_status("sweep", tmp_path)
