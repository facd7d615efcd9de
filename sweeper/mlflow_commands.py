"""The ``sweeper mlflow`` commands: run and stop the local MLflow tracking server."""

from __future__ import annotations

import signal
import types
from pathlib import Path

import click

from mlflow_server import (
    ServerError,
    ServerInfo,
    default_root,
    ensure_server,
    network_exposure_warning,
    stop_server,
    wait_for_exit,
)
from mlflow_server.auth import BasicAuthCredentials, CredentialsError, credentials_from_environment

_ROOT_OPTION = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the server's database, artifacts, log and state file "
    "[default: $SWEEPER_HOME/mlflow, with SWEEPER_HOME defaulting to ~/.sweeper].",
)


class _StopRequested(Exception):
    """SIGTERM received while ``serve`` starts a server or runs it in the foreground."""


@click.group("mlflow")
def mlflow_group() -> None:
    """Run the local MLflow tracking server that sweeps log to."""


@mlflow_group.command("serve")
@_ROOT_OPTION
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Network interface to bind. Any address other than loopback exposes the server.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="TCP port to listen on [default: a free port].",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Return once the server is healthy and leave it running.",
)
@click.option(
    "--auth",
    type=click.Choice(["none", "basic"]),
    default="none",
    show_default=True,
    help="basic: run MLflow's basic-auth app, with MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD from the environment as its admin user.",
)
def serve(root: Path | None, host: str, port: int | None, detach: bool, auth: str) -> None:
    """Start or reuse the MLflow tracking server.

    Reuses the server already running for the --root folder if there is one, and
    prints the tracking URI and the UI URL. Without --detach the command stays in the
    foreground and stops the server it started on Ctrl-C or SIGTERM. With --detach it
    returns and the server keeps running until `sweeper mlflow stop`. A running server
    is reused only with the same --auth.
    """
    root = root or default_root()
    credentials = _credentials_for(auth)
    warning = network_exposure_warning(host, auth=credentials is not None)
    if warning is not None:
        click.echo(f"Warning: {warning}", err=True)

    # SIGTERM raises from here on, so a server interrupted while starting is stopped
    # by start_server and one running in the foreground is stopped below.
    previous_handler = signal.signal(signal.SIGTERM, _raise_stop_requested)
    info: ServerInfo | None = None
    started = False
    try:
        info, started = _start_or_reuse(root, host, port, credentials)
        if detach or not started:
            click.echo(f"Stop it with: sweeper mlflow stop --root {info.root}")
            return

        click.echo("Press Ctrl-C to stop it.")
        wait_for_exit(info)
    except (KeyboardInterrupt, _StopRequested):
        if info is None:
            raise click.ClickException(
                "interrupted before the MLflow server was ready, "
                "and any server this command had started was stopped"
            ) from None
        if started and not detach:
            _stop_foreground_server(info)
        return
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    # Removes the state file that the exited server left behind.
    stop_server(info.root)
    raise click.ClickException(
        f"the MLflow server (pid {info.pid}) exited unexpectedly. Read {info.log_file} "
        "for the cause"
    )


@mlflow_group.command("stop")
@_ROOT_OPTION
def stop(root: Path | None) -> None:
    """Stop the MLflow tracking server running for the --root folder."""
    root = root or default_root()
    try:
        info = stop_server(root)
    except (ServerError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error

    if info is None:
        click.echo(f"No MLflow server was running for {root}")
    else:
        click.echo(f"Stopped MLflow server (pid {info.pid}) at {info.uri}")


def _credentials_for(auth: str) -> BasicAuthCredentials | None:
    """Read the admin credentials from the environment for ``--auth basic``, or return None for ``--auth none``."""
    if auth == "none":
        return None
    try:
        return credentials_from_environment()
    except CredentialsError as error:
        raise click.ClickException(f"--auth basic needs credentials, but {error}") from None


def _start_or_reuse(
    root: Path, host: str, port: int | None, credentials: BasicAuthCredentials | None
) -> tuple[ServerInfo, bool]:
    """Start or reuse the server for ``root`` and print its tracking URI and UI URL."""
    try:
        info, started = ensure_server(root, host=host, port=port, log_exposure=False, auth=credentials)
    except OSError as error:
        raise click.ClickException(f"cannot use {root} as the server's folder: {error.strerror or error}; choose another --root") from error
    except (ServerError, ValueError) as error:
        raise click.ClickException(str(error)) from error

    if not started and port is not None and info.port != port:
        raise click.ClickException(
            f"an MLflow server for {info.root} is already running at {info.uri}, not on port {port}; "
            f"use {info.uri}, or stop it with 'sweeper mlflow stop --root {info.root}' first"
        )
    if started:
        click.echo(f"Started MLflow server (pid {info.pid}) for {info.root}")
    else:
        click.echo(f"Reusing the MLflow server (pid {info.pid}) already running for {info.root}")
    click.echo(f"Tracking URI: {info.uri}")
    if credentials is not None:
        click.echo(
            f"Basic auth: on; user {credentials.username!r} logs in with MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD"
        )
    click.echo(f"UI: {info.uri}/")
    return info, started


def _stop_foreground_server(info: ServerInfo) -> None:
    click.echo("Stopping the MLflow server ...")
    try:
        stop_server(info.root)
    except ServerError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"Stopped MLflow server (pid {info.pid})")


def _raise_stop_requested(signal_number: int, frame: types.FrameType | None) -> None:
    raise _StopRequested
