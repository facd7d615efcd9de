"""Tracking outages in the middle of a sweep: the MLflow server stops while a trial logs.

The trial's MLflow client retries with back-off (about a minute in all). After a 30 s
outage the sweep finishes and every metric arrives exactly once. A longer outage fails
the trial with MLflow's error, and `sweeper resume` then finishes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_server import start_server, stop_server
from tests.test_resume import SPEC

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")
OUTAGE_S = 30


def test_sweep_survives_a_30_second_outage(tmp_path: Path) -> None:
    root = tmp_path / "mlflow"
    server = start_server(root)
    spec = {**SPEC, "name": "outage", "search": {"sampling": "grid", "parameters": {}}, "resources": {"cpus": 1}}
    spec["training"] = {**SPEC["training"], "epochs": 12}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    environment = {**os.environ, "SWEEPER_HOME": str(tmp_path / "home")}
    log = (tmp_path / "launch.log").open("w")
    driver = subprocess.Popen(
        [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(tmp_path / "sweeps")],
        stdout=log, stderr=subprocess.STDOUT, env=environment,
    )
    try:
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 600
        while not _loss_logged(client, "outage"):
            assert driver.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the trial logged no loss in time"
            time.sleep(0.5)
        stop_server(root)
        time.sleep(OUTAGE_S)
        start_server(root, port=server.port)
        assert driver.wait(timeout=900) == 0, (tmp_path / "launch.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        stop_server(root)

    server = start_server(root, port=server.port)
    try:
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id])
        trial = next(run for run in runs if run.data.tags["sweeper.level"] == "trial")
        losses = client.get_metric_history(trial.info.run_id, "train/loss_gaussian")
        assert sorted(metric.step for metric in losses) == list(range(1, 13))
        cells = [run for run in runs if run.data.tags["sweeper.level"] == "cell"]
        assert len(cells) == len(SPEC["evaluation"]["t"])
        assert all(run.info.status == "FINISHED" for run in runs)
    finally:
        stop_server(root)


def _loss_logged(client: MlflowClient, name: str) -> bool:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return False
    for run in client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'"):
        if client.get_metric_history(run.info.run_id, "train/loss_gaussian"):
            return True
    return False


def test_long_outage_then_resume(tmp_path: Path) -> None:
    root = tmp_path / "mlflow"
    server = start_server(root)
    spec = {**SPEC, "name": "long-outage", "search": {"sampling": "grid", "parameters": {}}, "resources": {"cpus": 1, "max_failures": 0}}
    spec["training"] = {**SPEC["training"], "epochs": 12}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    environment = {**os.environ, "SWEEPER_HOME": str(tmp_path / "home")}
    storage = tmp_path / "sweeps"
    log = (tmp_path / "launch.log").open("w")
    driver = subprocess.Popen(
        [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(storage)],
        stdout=log, stderr=subprocess.STDOUT, env=environment,
    )
    try:
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 600
        while not _loss_logged(client, "long-outage"):
            assert driver.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the trial logged no loss in time"
            time.sleep(0.5)
        stop_server(root)
        # Longer than the client's retries (about a minute), so the trial fails.
        assert driver.wait(timeout=900) == 1
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "launch.log").read_text()
    assert "1 trial(s) failed" in output
    assert f"'sweeper resume long-outage --storage {storage.resolve()}'" in output

    server = start_server(root, port=server.port)
    try:
        completed = subprocess.run(
            [SWEEPER, "resume", "long-outage", "--storage", str(storage)],
            capture_output=True, text=True, timeout=900, env=environment,
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("long-outage")
        runs = client.search_runs([experiment.experiment_id])
        trials = [run for run in runs if run.data.tags["sweeper.level"] == "trial"]
        assert len(trials) == 1
        losses = client.get_metric_history(trials[0].info.run_id, "train/loss_gaussian")
        assert sorted(metric.step for metric in losses) == list(range(1, 13))
        assert all(run.info.status == "FINISHED" for run in runs)
    finally:
        stop_server(root)
