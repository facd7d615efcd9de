"""Sources of `sweeper report`: a sweep's MLflow runs (the default) or its storage folder.

Each trial logs its ``trial.json`` and each cell its ``<cell>.json`` (and example PNG) under
the artifact folder ``results`` of its MLflow run, the same files it writes into the
storage folder. Reading from MLflow downloads them into the storage folder's layout, so the
report code reads both sources the same way.
"""

from __future__ import annotations

from pathlib import Path

import click

from sweeper.driver_state import read_tracking_record

ARTIFACT_FOLDER = "results"


def results_from_mlflow(sweep_folder: Path, destination: Path, *, tracking_uri: str | None = None) -> Path:
    """Download every trial and cell results file of the sweep in ``sweep_folder`` from MLflow into ``destination``.

    Raises:
        click.ClickException: one line, when the sweep has no MLflow record or the server does not respond.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    record = read_tracking_record(sweep_folder)
    if record is None:
        raise click.ClickException(
            f"sweep folder {str(sweep_folder)!r} has no readable tracking.json, so its MLflow runs are unknown; "
            "pass --source files to report from the storage folder"
        )
    uri = tracking_uri or record["uri"]
    _check_responds(uri, sweep_folder.name)
    client = MlflowClient(uri)
    try:
        trial_runs = _children(client, record["experiment_id"], record["sweep_run_id"])
        for trial_run in trial_runs:
            trial_id = trial_run.data.tags.get("sweeper.trial_id")
            if not trial_id:
                continue
            folder = destination / trial_id
            _download(client, trial_run.info.run_id, folder)
            for cell_run in _children(client, record["experiment_id"], trial_run.info.run_id):
                _download(client, cell_run.info.run_id, folder / "cells")
    except (MlflowException, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise click.ClickException(
            f"could not read the runs of sweep {sweep_folder.name!r} from MLflow at {uri} ({first_line}); "
            "start the server (sweeper mlflow serve), pass --tracking-uri, or pass --source files"
        ) from None
    return destination


def _check_responds(uri: str, sweep: str) -> None:
    """Fail at once, in one line, when the tracking server does not respond, rather than after MLflow's retries."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise click.ClickException(
            f"MLflow at {uri} does not respond ({type(error).__name__}), so the runs of sweep {sweep!r} cannot be read; "
            "if the server moved, pass its address with --tracking-uri, or pass --source files"
        ) from None


def _children(client: object, experiment_id: str, parent_run_id: str) -> list:
    """Return every run whose parent is ``parent_run_id``, across pages."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _download(client: object, run_id: str, folder: Path) -> None:
    """Download the run's ``results`` artifacts, if it has any, into ``folder``."""
    if not client.list_artifacts(run_id, ARTIFACT_FOLDER):
        return
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(client.download_artifacts(run_id, ARTIFACT_FOLDER, str(folder.parent / f".{folder.name}.download")))
    for path in staging.iterdir():
        path.replace(folder / path.name)
    staging.rmdir()
    staging.parent.rmdir()
