"""Connecting a sweep to MLflow: start or reuse the local server, or check a given URI and its auth mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mlflow.entities import LifecycleStage
from mlflow.tracking import MlflowClient

from mlflow_server import default_root, ensure_server, is_healthy
from mlflow_server.auth import (
    PASSWORD_VARIABLE,
    USERNAME_VARIABLE,
    BasicAuthCredentials,
    CredentialsError,
    check_credentials,
    credentials_from_environment,
    requires_login,
)
from sweeper.spec import SpecError


@dataclass
class TrackingTarget:
    """The tracking server a sweep logs to over HTTP, and the credentials for tracking.auth: basic."""

    uri: str
    client: MlflowClient
    credentials: BasicAuthCredentials | None = None

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


def tracking_credentials(auth: str) -> BasicAuthCredentials | None:
    """Return the credentials for ``tracking.auth`` from the environment, or None when it is 'none'.

    Raises SpecError naming the variables when ``auth`` is 'basic' and either is unset or empty.
    """
    if auth == "none":
        return None
    try:
        return credentials_from_environment()
    except CredentialsError as error:
        raise SpecError(f"spec field 'tracking.auth' is 'basic', but {error}") from None


def check_tracking_uri(uri: str | None) -> None:
    """Reject a tracking URI with a user name or password in it, which would be stored with the sweep."""
    if uri is None:
        return
    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None:
        raise SpecError(
            f"tracking URI for host {parts.hostname!r} contains a user name or password; remove them from the URI, "
            f"export {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, and set tracking.auth: basic"
        )


def open_tracking(
    uri: str | None,
    server_root: str | None,
    echo: Callable[[str], None] = print,
    *,
    auth: BasicAuthCredentials | None = None,
) -> TrackingTarget:
    """Use ``uri`` if given (its /health must return 200), else start or reuse the local server.

    With ``auth`` the server must run MLflow's basic-auth app and accept those credentials,
    and without it the server must accept requests without a login. The MLflow clients read
    the credentials from the environment themselves.
    """
    if uri is None:
        root = Path(server_root).expanduser() if server_root else default_root()
        server, started = ensure_server(root, auth=auth)
        echo(f"{'Started' if started else 'Reusing'} the local MLflow server at {server.uri} (data in {root})")
        return TrackingTarget(server.uri, MlflowClient(server.uri), auth)
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
    _check_server_auth(uri, auth)
    return TrackingTarget(uri, MlflowClient(uri), auth)


def _check_server_auth(uri: str, auth: BasicAuthCredentials | None) -> None:
    """Check that the server at ``uri`` requires a login exactly when ``tracking.auth`` is 'basic'."""
    login_required = requires_login(uri)
    if auth is None and login_required:
        raise SpecError(
            f"tracking server {uri!r} requires a login (HTTP 401); set tracking.auth: basic and export "
            f"{USERNAME_VARIABLE} and {PASSWORD_VARIABLE}"
        )
    if auth is not None and not login_required:
        raise SpecError(
            f"spec field 'tracking.auth' is 'basic', but tracking server {uri!r} accepts requests without a login, "
            "so it does not run MLflow's basic-auth app; start it with 'sweeper mlflow serve --auth basic', "
            "or set tracking.auth: none"
        )
    if auth is not None:
        check_credentials(uri, auth)
