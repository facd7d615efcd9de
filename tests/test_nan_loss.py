"""A trial whose loss diverges stops with the status ``nan_loss``, and the rest of the sweep goes on.

The divergence is real: AdamW's decoupled weight decay with lr × weight_decay far above 1
flips and scales every weight by about -10^5 per step, so the loss overflows within a few
steps. The other trial of the grid trains with no weight decay and finishes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_server import ServerInfo
from tests.test_resume import SPEC

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")
DIVERGING = 1e8


@pytest.fixture(scope="module")
def sweep(server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("nan")
    spec = {
        **SPEC,
        "name": "nan",
        "training": {**SPEC["training"], "epochs": 2},
        "search": {"sampling": "grid", "parameters": {"training.weight_decay": {"values": [0.0, DIVERGING]}}},
    }
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    storage = work / "sweeps"
    command = [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(storage)]
    launched = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=work)
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("nan")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'")
    by_decay = {float(run.data.params["training.weight_decay"]): run for run in trials}
    status = subprocess.run([SWEEPER, "status", "nan", "--storage", str(storage)], capture_output=True, text=True, timeout=120)
    return {"launched": launched, "client": client, "trials": by_decay, "status": status, "storage": storage}


def test_sweep_reports_the_failed_trial(sweep: dict) -> None:
    launched = sweep["launched"]
    output = launched.stdout + launched.stderr
    assert launched.returncode == 1, output[-3000:]
    assert "1 trial(s) failed" in output
    assert "training loss is" in output
    assert "lower training.lr" in output
    # The summary names the error itself, not only the file Tune wrote it to.
    errors = [line.strip() for line in launched.stdout.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 1, errors
    assert "training loss" in errors[0]
    assert f"'sweeper resume nan --storage {sweep['storage'].resolve()}'" in output


def test_diverging_trial_is_tagged_nan_loss(sweep: dict) -> None:
    run = sweep["trials"][DIVERGING]
    assert run.data.tags["sweeper.status"] == "nan_loss"
    assert run.info.status == "FAILED"
    # Retries see the tag and stop at once, so the loss is logged by the first attempt only.
    history = sweep["client"].get_metric_history(run.info.run_id, "train/loss_gaussian")
    assert len({metric.step for metric in history}) == len(history)


def test_other_trial_finishes_with_results(sweep: dict) -> None:
    run = sweep["trials"][0.0]
    assert run.info.status == "FINISHED"
    assert "sweeper.status" not in run.data.tags
    assert "best/test_auprc" in run.data.metrics
    client = sweep["client"]
    cells = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert len(cells) == len(SPEC["evaluation"]["t"])
    assert all(cell.info.status == "FINISHED" for cell in cells)


def test_status_shows_one_error(sweep: dict) -> None:
    status = sweep["status"]
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("ERROR") == 1
    assert status.stdout.count("TERMINATED") == 1
