"""The trial's MLflow logger against a real tracking server: batches, long params, odd keys and resumed runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import ServerInfo
from trainables.tracking import MAX_PARAM_VALUE_LENGTH, RunLogger, sanitize_key


@pytest.fixture
def client(server: ServerInfo) -> MlflowClient:
    return MlflowClient(server.uri)


def new_run(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    return client.create_run(experiment.experiment_id).info.run_id


def test_metrics_beyond_one_batch(client: MlflowClient) -> None:
    run_id = new_run(client, "many-metrics")
    metrics = {f"cell_{index:04d}/auprc": index / 2500 for index in range(2500)}
    RunLogger(client, run_id).log_metrics(metrics, step=3)
    logged = client.get_run(run_id).data.metrics
    assert len(logged) == 2500
    assert logged["cell_2499/auprc"] == pytest.approx(2499 / 2500)


def test_params_beyond_one_batch(client: MlflowClient) -> None:
    run_id = new_run(client, "many-params")
    RunLogger(client, run_id).log_params({f"grid.p{index}": index for index in range(250)})
    assert len(client.get_run(run_id).data.params) == 250


def test_long_param_kept_as_artifact(client: MlflowClient, tmp_path: Path) -> None:
    run_id = new_run(client, "long-param")
    value = "x" * (MAX_PARAM_VALUE_LENGTH + 500)
    RunLogger(client, run_id).log_params({"data.exclude": value, "short": "ok"})
    params = client.get_run(run_id).data.params
    assert params["short"] == "ok"
    assert len(params["data.exclude"]) <= MAX_PARAM_VALUE_LENGTH
    assert params["data.exclude"].endswith("[truncated]")
    stored = Path(client.download_artifacts(run_id, "params/long_values.txt", str(tmp_path)))
    assert stored.read_text(encoding="utf-8") == f"data.exclude: {value}"


def test_rejected_characters_do_not_collide(client: MlflowClient) -> None:
    run_id = new_run(client, "odd-keys")
    RunLogger(client, run_id).log_metrics({"auprc (t=5)": 0.25, "auprc [t=5]": 0.75, "auprc": 0.5})
    logged = client.get_run(run_id).data.metrics
    assert len(logged) == 3
    assert logged[sanitize_key("auprc (t=5)")] == 0.25
    assert logged[sanitize_key("auprc [t=5]")] == 0.75
    assert logged["auprc"] == 0.5


def test_resumed_logger_skips_logged_steps(client: MlflowClient) -> None:
    run_id = new_run(client, "resumed")
    RunLogger(client, run_id).log_metrics({"loss": 1.0}, step=1)
    resumed = RunLogger(client, run_id, resumed=True)
    resumed.log_metrics({"loss": 9.0}, step=1)
    resumed.log_metrics({"loss": 0.5}, step=2)
    history = sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, "loss"))
    assert history == [(1, 1.0), (2, 0.5)]
