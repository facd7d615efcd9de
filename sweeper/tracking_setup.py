"""Connecting a sweep to MLflow: start or reuse the local server, or check a given URI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import LifecycleStage
from mlflow.tracking import MlflowClient

from mlflow_server import default_root, ensure_server, is_healthy
from sweeper.spec import SpecError


@dataclass
class TrackingTarget:
    """The tracking server a sweep logs to over HTTP."""

    uri: str
    client: MlflowClient

    def experiment_id(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it if needed."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name)
        if experiment.lifecycle_stage == LifecycleStage.DELETED:
            raise SpecError(
                f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI, "
                f"or set tracking.experiment to another name"
            )
        return experiment.experiment_id

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.uri.rstrip('/')}/#/experiments/{experiment_id}"


def open_tracking(uri: str | None, server_root: str | None, echo: Callable[[str], None] = print) -> TrackingTarget:
    """Use ``uri`` if given (its /health must return 200), else start or reuse the local server."""
    if uri is None:
        root = Path(server_root).expanduser() if server_root else default_root()
        server, started = ensure_server(root)
        echo(f"{'Started' if started else 'Reusing'} the local MLflow server at {server.uri} (data in {root})")
        return TrackingTarget(server.uri, MlflowClient(server.uri))
    if not uri.startswith(("http://", "https://")):
        raise SpecError(
            f"tracking URI {uri!r} is not an HTTP URI; trials log to a tracking server over HTTP, "
            f"so start one with 'sweeper mlflow serve' and pass its http:// URI"
        )
    if not is_healthy(uri):
        raise SpecError(
            f"tracking URI {uri!r} does not respond; start a server with 'sweeper mlflow serve' "
            f"or fix --tracking-uri / tracking.uri"
        )
    return TrackingTarget(uri, MlflowClient(uri))
