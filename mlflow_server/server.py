"""Start, find, reuse and stop one MLflow tracking server per root folder.

The server stores runs in ``<root>/mlflow.db`` (SQLite) and serves artifacts through its
own REST API into ``<root>/artifacts``, so clients need only the tracking URI. It runs
detached from the caller and is recorded in ``<root>/server.json`` until stopped. With
credentials it runs MLflow's basic-auth app (see :mod:`mlflow_server.auth`), and a running
server is reused only by callers that request the same auth mode.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from mlflow_server.auth import (
    AUTH_DATABASE_FILE_NAME,
    BasicAuthCredentials,
    auth_server_environment,
    check_admin_password,
    check_credentials,
)
from mlflow_server.process import (
    is_alive,
    is_server_process,
    spawn_detached,
    terminate_group,
)
from mlflow_server.state import (
    ARTIFACTS_DIR_NAME,
    DATABASE_FILE_NAME,
    ServerError,
    ServerInfo,
    log_path,
    read_state,
    remove_state,
    resolve_root,
    root_lock,
    state_path,
    write_state,
)

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HEALTH_TIMEOUT_S = 2.0
HEALTH_POLL_INTERVAL_S = 0.25

# Clients on this machine reach a server bound to every interface through loopback.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def network_exposure_warning(host: str, *, auth: bool = False) -> str | None:
    """Return the warning for binding to ``host``, or None when ``host`` is loopback."""
    if is_loopback(host):
        return None
    if auth:
        return (
            f"binding to {host} exposes the tracking server to the network, and basic auth sends "
            "passwords unencrypted over plain HTTP; put a TLS proxy in front of it"
        )
    return (
        f"binding to {host} exposes the tracking server to the network; "
        "anyone who can reach it can read and change runs"
    )


def is_healthy(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Check that ``GET <uri>/health`` returns status 200 within ``timeout_s`` seconds."""
    with requests.Session() as session:
        # Environment proxies would route a loopback health check through another host.
        session.trust_env = False
        try:
            response = session.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
        except requests.RequestException:
            return False
    return response.status_code == 200


def start_server(
    root: Path | str,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    log_exposure: bool = True,
    auth: BasicAuthCredentials | None = None,
) -> ServerInfo:
    """Start ``mlflow server`` for ``root`` and wait until its ``/health`` returns 200.

    ``port=None`` picks a free port on ``host``. Raises ServerError when a server for
    ``root`` is already running, when the port is taken, or when the server exits or
    does not become healthy within ``timeout_s`` seconds (it is then stopped). A host
    that is not loopback is logged as a warning unless ``log_exposure`` is False, for
    callers that show the warning themselves. With ``auth`` the server runs MLflow's
    basic-auth app with that user as admin, and it is stopped again if it rejects them.
    """
    root = resolve_root(root)
    _check_start_arguments(host, port, timeout_s)
    with root_lock(root):
        return _start_locked(root, host=host, port=port, timeout_s=timeout_s, log_exposure=log_exposure, auth=auth)


def find_running(root: Path | str) -> ServerInfo | None:
    """Return the server recorded for ``root`` if its process is alive and healthy.

    A state file whose process is gone, or whose pid now belongs to another program,
    is removed. A live server that fails its health check keeps its state file, so
    ``stop_server`` can still stop it.
    """
    root = resolve_root(root)
    info = read_state(root)
    if info is None:
        return None

    if _remove_if_stale(root, info):
        return None

    if not is_healthy(info.uri):
        logger.warning(
            "MLflow server pid %d for %s is running but %s/health does not return 200",
            info.pid,
            root,
            info.uri,
        )
        return None

    return info


def ensure_server(
    root: Path | str,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    log_exposure: bool = True,
    auth: BasicAuthCredentials | None = None,
) -> tuple[ServerInfo, bool]:
    """Reuse the healthy server running for ``root``, or start one.

    Returns the server and whether this call started it. A reused server keeps the host
    and port it was started with. Raises ServerError when the running server's auth mode
    differs from the one ``auth`` requests, and CredentialsError when it rejects ``auth``.
    """
    root = resolve_root(root)
    _check_start_arguments(host, port, timeout_s)
    with root_lock(root):
        running = find_running(root)
        if running is None:
            started = _start_locked(
                root, host=host, port=port, timeout_s=timeout_s, log_exposure=log_exposure, auth=auth
            )
            return started, True

        _check_reused_auth(running, auth)

        requested_port_differs = port is not None and port != running.port
        if host != running.host or requested_port_differs:
            logger.warning(
                "Reusing the MLflow server at %s for %s, so the requested host %s and "
                "port %s are ignored",
                running.uri,
                root,
                host,
                port,
            )
        logger.info("Reusing MLflow server pid %d at %s for %s", running.pid, running.uri, root)
        return running, False


def stop_server(root: Path | str, timeout_s: float = STOP_TIMEOUT_S) -> ServerInfo | None:
    """Stop the server recorded for ``root`` and remove its state file.

    Sends SIGTERM to the server's process group and SIGKILL if it is still running
    after ``timeout_s`` seconds. Returns the stopped server, or None when none was
    running.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, but got {timeout_s}")

    root = resolve_root(root)
    # Checked before locking, so stopping an unused root does not create its folder.
    if not state_path(root).exists():
        return None

    with root_lock(root):
        info = read_state(root)
        if info is None:
            return None

        if _remove_if_stale(root, info):
            return None

        logger.info("Stopping MLflow server pid %d at %s for %s", info.pid, info.uri, root)
        terminate_group(info.pid, timeout_s)
        remove_state(root)
        logger.info("Stopped MLflow server pid %d for %s", info.pid, root)
        return info


def _remove_if_stale(root: Path, info: ServerInfo) -> bool:
    """Remove the state file of ``root`` and return True when ``info.pid`` is not a running MLflow server."""
    if is_alive(info.pid) and is_server_process(info.pid):
        return False
    logger.info("Removing stale MLflow server state for %s because pid %d is not a running MLflow server", root, info.pid)
    remove_state(root)
    return True


def wait_for_exit(info: ServerInfo, *, poll_interval_s: float = 1.0) -> None:
    """Block until the server process ``info.pid`` has exited."""
    while is_alive(info.pid):
        time.sleep(poll_interval_s)


def _check_reused_auth(running: ServerInfo, auth: BasicAuthCredentials | None) -> None:
    """Reject reusing ``running`` with another auth mode, and check ``auth`` against it."""
    requested = "none" if auth is None else "basic"
    if running.auth != requested:
        raise ServerError(
            f"the MLflow server (pid {running.pid}) running for {running.root} at {running.uri} has auth "
            f"{running.auth!r}, but auth {requested!r} was requested; stop it with "
            f"`sweeper mlflow stop --root {running.root}` so that the next start uses auth {requested!r}"
        )
    if auth is not None:
        check_credentials(running.uri, auth)


def _check_start_auth(root: Path, auth: BasicAuthCredentials | None) -> None:
    """Reject a start without auth on a root that a basic-auth server has protected, and a too short admin password."""
    if auth is not None:
        check_admin_password(auth)
        return

    database = root / AUTH_DATABASE_FILE_NAME
    if database.is_file() and database.stat().st_size > 0:
        raise ServerError(
            f"{root} was served with basic auth ({database} exists), so starting it without auth would "
            f"open its runs to anyone; request basic auth, or delete {database} to switch auth off for good"
        )


def _start_locked(
    root: Path,
    *,
    host: str,
    port: int | None,
    timeout_s: float,
    log_exposure: bool = True,
    auth: BasicAuthCredentials | None = None,
) -> ServerInfo:
    """Start a server for ``root``, assuming the caller holds ``root_lock(root)``."""
    recorded = read_state(root)
    if recorded is not None and is_alive(recorded.pid) and is_server_process(recorded.pid):
        health = "" if is_healthy(recorded.uri) else " but /health does not return 200"
        raise ServerError(
            f"an MLflow server (pid {recorded.pid}) for {root} is already running at "
            f"{recorded.uri}{health}. Stop it with `sweeper mlflow stop --root {root}`"
        )

    _check_start_auth(root, auth)
    warning = network_exposure_warning(host, auth=auth is not None)
    if warning is not None and log_exposure:
        logger.warning(warning)

    if port is None:
        port = _pick_free_port(host)
    else:
        _check_port_free(host, port)

    (root / ARTIFACTS_DIR_NAME).mkdir(parents=True, exist_ok=True)
    environment = _server_environment()
    if auth is not None:
        environment.update(auth_server_environment(root, auth))
    process = spawn_detached(
        _server_command(root, host, port, auth=auth is not None),
        env=environment,
        log_file=log_path(root),
        cwd=root,
    )
    info = ServerInfo(
        pid=process.pid,
        host=host,
        port=port,
        uri=_format_uri(host, port),
        root=root,
        auth="none" if auth is None else "basic",
    )
    logger.info("Started MLflow server pid %d for %s at %s with auth %r", info.pid, root, info.uri, info.auth)

    started = time.monotonic()
    try:
        # The state file is written before the wait, so an interrupted start can still
        # be found and stopped.
        write_state(info)
        _wait_until_healthy(info, process, timeout_s)
        if auth is not None:
            check_credentials(info.uri, auth)
    except BaseException:
        try:
            terminate_group(info.pid, STOP_TIMEOUT_S)
        except ServerError as error:
            logger.error(
                "Failed to stop MLflow server pid %d after a failed start: %s", info.pid, error
            )
        remove_state(root)
        raise

    logger.info(
        "MLflow server pid %d is healthy at %s after %.1f s",
        info.pid,
        info.uri,
        time.monotonic() - started,
    )
    return info


def _wait_until_healthy(
    info: ServerInfo, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        exit_code = process.poll()
        if exit_code is not None:
            raise ServerError(
                f"MLflow server for {info.root} exited with code {exit_code} before "
                f"{info.uri}/health returned 200. Read {info.log_file} for the cause"
            )

        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise ServerError(
                f"MLflow server at {info.uri} timed out because /health did not return 200 "
                f"within {timeout_s:g} s. Read {info.log_file} for the cause"
            )

        if is_healthy(info.uri, timeout_s=min(HEALTH_TIMEOUT_S, remaining_s)):
            return
        time.sleep(HEALTH_POLL_INTERVAL_S)


def _server_command(root: Path, host: str, port: int, *, auth: bool = False) -> list[str]:
    executable = Path(sys.executable).parent / "mlflow"
    if executable.is_file() and os.access(executable, os.X_OK):
        launcher = [str(executable)]
    else:
        launcher = [sys.executable, "-m", "mlflow"]

    # mlflow 3.17 accepts Host headers for localhost, 127.0.0.1, [::1] and private
    # networks by default, so loopback clients need no --allowed-hosts.
    return [
        *launcher,
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / DATABASE_FILE_NAME}",
        "--artifacts-destination",
        str(root / ARTIFACTS_DIR_NAME),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        *(["--app-name", "basic-auth"] if auth else []),
    ]


def _server_environment() -> dict[str, str]:
    """Return the caller's environment with two mlflow 3.17 server defaults changed.

    A value the caller has set for either variable is kept.
    """
    environment = dict(os.environ)
    # Otherwise mlflow sends usage telemetry to an external endpoint.
    environment.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Job execution serves GenAI features (judges, trace rollups) that run tracking does
    # not use. It starts seven huey consumer processes, and each start leaves a folder
    # in /dev/shm behind after SIGTERM.
    environment.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return environment


def _check_start_arguments(host: str, port: int | None, timeout_s: float) -> None:
    if not host:
        raise ValueError("host must be a host name or IP address, but got an empty string")

    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, but got {port}")

    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, but got {timeout_s}")


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` (a name or an IP address) is this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _format_uri(host: str, port: int) -> str:
    client_host = _WILDCARD_TO_LOOPBACK.get(host, host)
    if ":" in client_host:
        client_host = f"[{client_host}]"
    return f"http://{client_host}:{port}"


def _bind_probe(host: str, port: int) -> int:
    """Bind a socket to ``host:port`` like uvicorn does, release it and return the port."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        return probe.getsockname()[1]


def _pick_free_port(host: str) -> int:
    # NOTE: another program may take the port between this probe and the server's
    # bind. The server then exits, and start_server raises with the log file to read.
    try:
        return _bind_probe(host, 0)
    except OSError as error:
        raise ServerError(f"cannot bind a free port on host {host}: {error}") from error


def _check_port_free(host: str, port: int) -> None:
    try:
        _bind_probe(host, port)
    except OSError as error:
        raise ServerError(
            f"port {port} on host {host} is not available ({error}). Choose another port, "
            "or leave it unset to pick a free one"
        ) from error
