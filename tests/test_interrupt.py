"""Ctrl-C or a scheduler's SIGTERM stops `sweeper launch` cleanly: state saved, runs closed, resume command printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_server import ServerInfo
from tests.test_resume import SPEC, SWEEPER, checkpoint_count, kill_group

pytestmark = pytest.mark.slow


def session_processes(session: int) -> dict[int, bytes]:
    """Return the command line of every live (not zombie) process in the process session ``session``, by pid."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # In /proc/PID/stat the fields after the command's closing parenthesis start with the state, and the 4th is the session id.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # the process has ended
        if int(fields[3]) == session and fields[0] != "Z":
            processes[int(entry.name)] = command
    return processes


def trial_processes(session: int) -> list[int]:
    """Return the pids of the Ray workers that run Tune trials (``ImplicitFunc`` actors) in the process session ``session``."""
    return [pid for pid, command in session_processes(session).items() if command.startswith(b"ray::ImplicitFunc")]


@pytest.mark.parametrize(
    ("signal_number", "stuck"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "sigint-stuck-trials"],
)
def test_signal_stops_sweep_resumably(server: ServerInfo, tmp_path: Path, signal_number: int, stuck: bool) -> None:
    name = f"stop-{signal_number}-{'stuck' if stuck else 'live'}"
    spec_path = tmp_path / "spec.yaml"
    # Two trials at once: Tune kills trial processes that do not stop in time, so the driver
    # must close the MLflow runs that they leave open.
    resources = {**SPEC["resources"], "max_concurrent_trials": 2}
    spec_path.write_text(yaml.safe_dump({**SPEC, "name": name, "resources": resources}), encoding="utf-8")
    storage = tmp_path / "sweeps"
    sweep = storage / name
    log_path = tmp_path / "launch.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(storage)],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "SWEEPER_HOME": str(tmp_path / "home")},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while checkpoint_count(sweep, "00000") < 1:
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the first trial wrote no checkpoint in time"
                time.sleep(0.5)
            if stuck:
                # Trials that cannot stop within Tune's 5 s grace period are killed, and cannot
                # close their own runs: freeze them, as a long UNet call on a busy GPU would.
                stuck_pids = trial_processes(driver.pid)
                assert stuck_pids
                for pid in stuck_pids:
                    os.kill(pid, signal.SIGSTOP)
            # The driver alone gets the signal, as from `kill` or a batch scheduler.
            driver.send_signal(signal_number)
            code = driver.wait(timeout=300)
        finally:
            kill_group(driver)
    output = log_path.read_text()

    assert code == 1, output[-3000:]
    assert f"continue it with 'sweeper resume {name} --storage {storage.resolve()}'" in output
    # Tune's own hint names a Python call that does not apply to the CLI, so it is not printed.
    assert "Tuner.restore(" not in output
    assert "Traceback" not in output
    assert json.loads((sweep / "sweep.json").read_text(encoding="utf-8"))["status"] == "interrupted"
    assert sorted(sweep.glob("experiment_state-*.json"))

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    # Every run the driver or a trial opened is closed, none left RUNNING.
    assert runs
    assert all(run.info.status != "RUNNING" for run in runs), [(run.info.run_name, run.info.status) for run in runs]
    sweep_run = next(run for run in runs if run.data.tags["sweeper.level"] == "sweep")
    assert sweep_run.info.status == "KILLED"


def test_early_sigterm_leaves_nothing(server: ServerInfo, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, "name": "early"}), encoding="utf-8")
    sweep = tmp_path / "sweeps" / "early"
    log_path = tmp_path / "launch.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(tmp_path / "sweeps")],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "SWEEPER_HOME": str(tmp_path / "home")},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            # launch.json is written once the spec is checked, seconds before Ray has started.
            while not (sweep / "launch.json").exists():
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the launch wrote no launch.json in time"
                time.sleep(0.1)
            driver.send_signal(signal.SIGTERM)
            code = driver.wait(timeout=300)
            # Ray's own processes, if it had started them, go with the driver.
            deadline = time.monotonic() + 30
            while session_processes(driver.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = session_processes(driver.pid)
        finally:
            kill_group(driver)
    output = log_path.read_text()

    assert code == 1, output[-3000:]
    assert output.strip().splitlines()[-1] == "Aborted!"
    assert "Traceback" not in output
    # A sweep stopped before Tune saved any state leaves no folder, so the same name can be launched again.
    assert not sweep.exists()
    assert not left, left
