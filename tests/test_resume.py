"""Resume after a killed driver: `sweeper launch` is SIGKILLed mid-sweep, then `sweeper resume` finishes it.

The sweep runs two trials one after the other on synthetic phantoms. The driver is killed
once the second trial has written three checkpoints, and all but the oldest are then
truncated, so the resumed trial must fall back to an older one. The test then checks
for one MLflow run per trial and per cell, no (metric, step) pair logged
twice, and the finished trial left untouched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_server import ServerInfo
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")
EPOCHS = 6
# The resumed sweep trains longer, so that the driver is killed well before its second trial
# ends: Tune may record that trial's checkpoints in its saved state only every 3 checkpoints.
RESUME_EPOCHS = 30
SPEC = {
    "name": "resume",
    "data": {
        "sources": [{"kind": "synthetic", "healthy": 40, "pathological": 12, "size": 64, "seed": 0}],
        "image_size": 32,
        "split": {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
    },
    "model": {"preset": "tiny", "T": 20, "reference_T": 1000},
    "training": {"epochs": EPOCHS, "batch_size": 16, "lr": 1e-3, "checkpoint": {"every_epochs": 2, "keep": 3}},
    "evaluation": {
        "methods": {"anoddpm": ["gaussian"]},
        "t": [2, 4],
        "figure_examples": 1,
        "postprocess": {"n_trials": 4},
        "bootstrap": {"n_resamples": 100},
    },
    "search": {"sampling": "grid", "parameters": {"training.seed": {"values": [0, 1]}}},
    "resources": {"cpus": 1, "max_concurrent_trials": 1},
}


def checkpoint_count(folder: Path, trial_suffix: str) -> int:
    return len(list(folder.glob(f"run_trial_*_{trial_suffix}_*/checkpoint_*")))


def recorded_checkpoint(folder: Path, trial_suffix: str) -> int:
    """Return the index of the newest checkpoint of a trial that Tune's saved experiment state names, or -1."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return -1
    try:
        trials = json.loads(states[-1].read_text(encoding="utf-8"))["trial_data"]
    except (OSError, ValueError, KeyError):
        return -1  # caught while Tune rewrites it
    for trial, metadata in trials:
        if f'_{trial_suffix}"' in trial:
            return max((int(index) for index in re.findall(r"checkpoint_(\d+)", metadata)), default=-1)
    return -1


def kill_group(process: subprocess.Popen) -> None:
    """Kill the driver's whole process group: Ray's own processes as well, as a crashed machine would lose them."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def resumed(server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("resume")
    spec_path = work / "spec.yaml"
    # Ten checkpoints kept: the one Tune's saved state names must still be on disk when the driver dies.
    training = {**SPEC["training"], "epochs": RESUME_EPOCHS, "checkpoint": {"every_epochs": 2, "keep": 10}}
    spec_path.write_text(yaml.safe_dump({**SPEC, "training": training}), encoding="utf-8")
    storage = work / "sweeps"
    sweep = storage / "resume"
    environment = {**os.environ, "SWEEPER_HOME": str(work / "home")}
    log = (work / "launch.log").open("w")
    driver = subprocess.Popen(
        [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(storage)],
        stdout=log, stderr=subprocess.STDOUT, cwd=work, env=environment, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        # Tune must have recorded a checkpoint of the second trial after its first one, so that
        # the checkpoint it restores from can be damaged while an older one is left intact.
        # The index is read before the kill: the state file may be half written when the driver dies.
        recorded = recorded_checkpoint(sweep, "00001")
        while recorded < 1 or checkpoint_count(sweep, "00001") < 3:
            assert driver.poll() is None, (work / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second trial wrote no checkpoint in time"
            time.sleep(0.5)
            recorded = recorded_checkpoint(sweep, "00001")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        kill_group(driver)
        log.close()

    first_trial = sorted(sweep.glob("run_trial_*_00000_*"))[0]
    before = {path: path.stat().st_mtime_ns for path in first_trial.rglob("*") if path.is_file()}
    second_trial = sorted(sweep.glob("run_trial_*_00001_*"))[0]
    checkpoints = sorted(second_trial.glob("checkpoint_*"))
    # Damage the checkpoint Tune restores from and every newer one, so the resumed trial must
    # fall back to an older one. A state saved after the reading above names a newer one.
    indices = [int(checkpoint.name.split("_")[1]) for checkpoint in checkpoints]
    # Tune restores from the checkpoint its saved state names, so that one must still be there.
    assert recorded in indices, (recorded, indices)
    assert any(index < recorded for index in indices)
    for checkpoint in (checkpoint for checkpoint in checkpoints if int(checkpoint.name.split("_")[1]) >= recorded):
        state_file = checkpoint / "trial-state.pt"
        state_file.write_bytes(state_file.read_bytes()[:100])

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("resume")
    first_run = next(
        run for run in client.search_runs([experiment.experiment_id]) if run.data.tags.get("sweeper.level") == "trial"
        and run.info.status == "FINISHED"
    )
    completed = subprocess.run(
        [SWEEPER, "resume", "resume", "--storage", str(storage)],
        capture_output=True, text=True, timeout=900, cwd=work, env=environment,
    )
    return {
        "completed": completed,
        "client": client,
        "experiment": experiment,
        "sweep": sweep,
        "first_trial": first_trial,
        "before": before,
        "first_run": first_run,
        "checkpoints_before_resume": len(checkpoints),
    }


def runs_by_level(resumed: dict) -> dict[str, list]:
    runs = resumed["client"].search_runs([resumed["experiment"].experiment_id], max_results=1000)
    levels: dict[str, list] = {"sweep": [], "trial": [], "cell": []}
    for run in runs:
        levels[run.data.tags["sweeper.level"]].append(run)
    return levels


def test_resume_finishes_the_sweep(resumed: dict) -> None:
    completed = resumed["completed"]
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Resuming sweep 'resume'" in completed.stdout
    assert completed.stdout.count("TERMINATED") >= 2


def test_truncated_checkpoint_falls_back(resumed: dict) -> None:
    output = resumed["completed"].stdout + resumed["completed"].stderr
    assert resumed["checkpoints_before_resume"] >= 3
    assert "is unreadable" in output
    assert "trying the one before it" in output


def test_one_run_per_trial_and_cell(resumed: dict) -> None:
    levels = runs_by_level(resumed)
    assert len(levels["sweep"]) == 1
    trials = Counter(run.data.tags["sweeper.trial_id"] for run in levels["trial"])
    assert len(trials) == 2
    assert set(trials.values()) == {1}
    cells = Counter((run.data.tags["sweeper.trial_id"], run.info.run_name) for run in levels["cell"])
    assert len(cells) == 2 * 2
    assert set(cells.values()) == {1}
    assert all(run.info.status == "FINISHED" for run in levels["trial"] + levels["cell"] + levels["sweep"])


def test_no_metric_step_logged_twice(resumed: dict) -> None:
    client = resumed["client"]
    levels = runs_by_level(resumed)
    for run in levels["trial"] + levels["cell"]:
        for key in run.data.metrics:
            steps = [metric.step for metric in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)
    for run in levels["trial"]:
        losses = client.get_metric_history(run.info.run_id, "train/loss_gaussian")
        assert sorted(metric.step for metric in losses) == list(range(1, RESUME_EPOCHS + 1))


def test_finished_trial_not_run_again(resumed: dict) -> None:
    after = {path: path.stat().st_mtime_ns for path in resumed["first_trial"].rglob("*") if path.is_file()}
    checkpoints = {path: mtime for path, mtime in resumed["before"].items() if "checkpoint_" in str(path)}
    assert checkpoints
    assert all(after.get(path) == mtime for path, mtime in checkpoints.items())
    client = resumed["client"]
    first = resumed["first_run"]
    assert client.get_run(first.info.run_id).info.end_time == first.info.end_time


def test_report_after_resume(resumed: dict) -> None:
    completed = subprocess.run(
        [SWEEPER, "report", "resume", "--storage", str(resumed["sweep"].parent)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Trials: 2 of 2 done; cells: 4 of 4 evaluated." in completed.stdout


def test_resume_of_finished_sweep_is_noop(resumed: dict) -> None:
    sweep = resumed["sweep"]
    files = {path: path.stat().st_mtime_ns for path in sweep.rglob("*") if path.is_file()}
    completed = subprocess.run(
        [SWEEPER, "resume", "resume", "--storage", str(sweep.parent)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "finished with every trial done, so there is nothing to resume" in completed.stdout
    assert f"'sweeper status resume --storage {sweep.parent}'" in completed.stdout
    assert "Preparing data" not in completed.stdout
    after = {path: path.stat().st_mtime_ns for path in sweep.rglob("*") if path.is_file()}
    assert after == files


def test_resume_rejects_a_damaged_state_file(tmp_path: Path) -> None:
    sweep = tmp_path / "sweeps" / "broken"
    sweep.mkdir(parents=True)
    (sweep / "launch.json").write_text('{"spec_path": "%s"}' % (PROJECT_ROOT / "configs" / "demo.yaml"), encoding="utf-8")
    (sweep / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [', encoding="utf-8")
    completed = subprocess.run(
        [SWEEPER, "resume", "broken", "--storage", str(tmp_path / "sweeps")], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "is damaged" in lines[0]
    assert "--new" in lines[0]


def test_resume_rejects_a_renamed_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweeps" / "copy"
    sweep.mkdir(parents=True)
    record = {"spec_path": str(PROJECT_ROOT / "configs" / "demo.yaml"), "spec": {**SPEC, "name": "resume"}}
    (sweep / "launch.json").write_text(json.dumps(record), encoding="utf-8")
    completed = subprocess.run(
        [SWEEPER, "resume", "copy", "--storage", str(tmp_path / "sweeps")], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "contains sweep 'resume', not 'copy'" in lines[0]
    assert "'sweeper resume resume'" in lines[0]


@pytest.mark.parametrize("saved_state", [True, False], ids=["tune-state", "no-tune-state"])
def test_launch_refuses_an_existing_name(tmp_path: Path, saved_state: bool) -> None:
    folder = tmp_path / "sweeps" / "demo"
    folder.mkdir(parents=True)
    if saved_state:
        (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}", encoding="utf-8")
    completed = subprocess.run(
        [SWEEPER, "launch", str(PROJECT_ROOT / "configs" / "demo.yaml"), "--storage", str(tmp_path / "sweeps")],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 1
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    # Without Tune's state there is nothing to resume, so only --new is offered.
    assert ("sweeper resume demo" in completed.stderr) == saved_state
    assert "--new" in completed.stderr


def test_second_driver_on_one_sweep_rejected(tmp_path: Path) -> None:
    from sweeper.launch import LaunchError, _lock_driver

    first = _lock_driver(tmp_path)
    try:
        with pytest.raises(LaunchError, match="being run by another sweeper process"):
            _lock_driver(tmp_path)
    finally:
        first.close()
    _lock_driver(tmp_path).close()
