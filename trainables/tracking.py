"""MLflow logging for one trial: the trial run, its grid-cell runs, metrics and artifacts.

Runs are created with explicit ids through ``MlflowClient`` over HTTP, never through
MLflow's process-global active run, so several trials in one worker process cannot
log into each other's runs. The hierarchy is sweep run > trial run > cell run, linked
by the ``mlflow.parentRunId`` tag that the MLflow UI nests by.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
# MLflow accepts at most this many metrics and params per log_batch call.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
# Longest param value that MLflow's SQL store accepts (mlflow.utils.validation, MLflow 3.x).
MAX_PARAM_VALUE_LENGTH = 6000

_INVALID_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-. /:]")


def sanitize_key(key: str) -> str:
    """Return ``key`` with the characters MLflow rejects in names replaced by underscores.

    A key that had to change also gets the start of its SHA-1, so two keys that differ
    only in rejected characters (``a*b``, ``a?b``) stay two names. Valid keys stay as they are.
    """
    clean = _INVALID_KEY_CHARACTERS.sub("_", key)
    if clean == key:
        return key
    return f"{clean}_{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys; lists and scalars stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


class RunLogger:
    """Logs params, metrics, tags and artifacts into one existing MLflow run.

    A logger for a run that a resumed trial reopens (``resumed=True``) skips every metric
    whose (key, step) the run already has, so replayed work logs nothing twice.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, resumed: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.resumed = resumed
        self._logged_steps: dict[str, set[int]] = {}

    def _is_new(self, key: str, step: int) -> bool:
        """Tell whether the run lacks ``key`` at ``step``; reads the key's history once per key."""
        if not self.resumed:
            return True
        if key not in self._logged_steps:
            self._logged_steps[key] = {metric.step for metric in self.client.get_metric_history(self.run_id, key)}
        if step in self._logged_steps[key]:
            return False
        self._logged_steps[key].add(step)
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params in batches; a value too long for MLflow is logged truncated and stored whole as an artifact."""
        entries, too_long = [], {}
        for key, value in params.items():
            text = str(value)
            if len(text) > MAX_PARAM_VALUE_LENGTH:
                too_long[key] = text
                text = text[: MAX_PARAM_VALUE_LENGTH - 12] + " [truncated]"
            entries.append(Param(sanitize_key(key), text))
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])
        if too_long:
            self.log_text("\n".join(f"{key}: {value}" for key, value in too_long.items()), "params/long_values.txt")

    def log_metrics(self, metrics: dict[str, float], *, step: int = 0) -> None:
        """Log numeric metrics at ``step`` in batches, skipping values that are not numbers."""
        timestamp = int(time.time() * 1000)
        entries = [
            Metric(sanitize_key(key), float(value), timestamp, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and self._is_new(sanitize_key(key), step)
        ]
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start : start + MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure as PNG and close it."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def log_files(self, files: Iterable[tuple[str, bytes]], artifact_path: str) -> None:
        """Log in-memory files (name, content) under ``artifact_path``."""
        with tempfile.TemporaryDirectory() as folder:
            for name, content in files:
                (Path(folder) / name).write_bytes(content)
            self.client.log_artifacts(self.run_id, folder, artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run as ended with ``status`` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


def start_child_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, *, run_name: str, tags: dict[str, Any]
) -> RunLogger:
    """Return a logger for the run named ``run_name`` under ``parent_run_id``, reopening it if it exists.

    A trial that Tune restarts (after a restore or a node failure) finds the runs it created
    before, so every trial and cell keeps exactly one run.
    """
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{PARENT_TAG} = '{parent_run_id}' and tags.mlflow.runName = '{run_name}'",
        max_results=2,
    )
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        logger.info("reopened MLflow run %s (%s) under %s", run_id, run_name, parent_run_id)
        return RunLogger(client, run_id, resumed=True)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={PARENT_TAG: parent_run_id, **{key: str(value) for key, value in tags.items()}},
    )
    logger.debug("created MLflow run %s (%s) under %s", run.info.run_id, run_name, parent_run_id)
    return RunLogger(client, run.info.run_id)
