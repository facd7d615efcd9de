"""A tracking outage in the middle of a sweep: the MLflow server is stopped for 30 s while a trial logs.

The trial's MLflow client retries with back-off (about a minute in all), so the sweep
finishes and every metric arrives exactly once: the final counts equal the expected ones.
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
        while not _loss_logged(client):
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


def _loss_logged(client: MlflowClient) -> bool:
    experiment = client.get_experiment_by_name("outage")
    if experiment is None:
        return False
    for run in client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'"):
        if client.get_metric_history(run.info.run_id, "train/loss_gaussian"):
            return True
    return False
