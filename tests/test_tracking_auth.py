"""MLflow's basic-auth app switched on from the spec, with credentials read only from the environment.

The servers are real ``mlflow server --app-name basic-auth`` processes on 127.0.0.1, started
by the product's own code in tmp roots and stopped by every test or fixture that starts
one. The sweep at the end joins a Ray cluster whose raylet was started without the
credentials, so its trials can log only with the credentials the driver sends them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_server import ServerError, ServerInfo, ensure_server, find_running, is_healthy, start_server, stop_server
from mlflow_server.auth import (
    AUTH_CONFIG_FILE_NAME,
    AUTH_DATABASE_FILE_NAME,
    PASSWORD_VARIABLE,
    USERNAME_VARIABLE,
    BasicAuthCredentials,
    CredentialsError,
    check_credentials,
    requires_login,
)
from sweeper.cli import cli
from sweeper.spec import SpecError, validate
from sweeper.tracking_setup import open_tracking
from tests.conftest import PROJECT_ROOT, launch
from tests.test_resume import SPEC

USER = "sweeper-admin"
# Distinctive, so that finding it in a file can only mean a leak.
PASSWORD = "Kp4-auth-test-7Qx2-leakcheck"
CREDENTIALS = BasicAuthCredentials(USER, PASSWORD)
PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
DEMO = str(PROJECT_ROOT / "configs" / "demo.yaml")
SWEEPER = str(Path(sys.executable).parent / "sweeper")


def status_of(uri: str, auth: tuple[str, str] | None = None) -> int:
    with requests.Session() as session:
        session.trust_env = False
        return session.get(f"{uri}{PROBE_PATH}", auth=auth, timeout=10).status_code


def files_containing(folder: Path, secret: str) -> list[str]:
    """Return the regular files under ``folder`` whose bytes contain ``secret``."""
    needle = secret.encode()
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            found.append(str(path))
    return found


def no_echo(message: str) -> None:
    pass


@pytest.fixture
def logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USERNAME_VARIABLE, USER)
    monkeypatch.setenv(PASSWORD_VARIABLE, PASSWORD)


@pytest.fixture
def logged_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(USERNAME_VARIABLE, raising=False)
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    root = tmp_path_factory.mktemp("auth-mlflow")
    info = start_server(root, auth=CREDENTIALS)
    yield info
    stop_server(root)


# --- the server --------------------------------------------------------------------------


def test_health_needs_no_login(auth_server: ServerInfo) -> None:
    assert is_healthy(auth_server.uri)
    assert requires_login(auth_server.uri)


def test_request_without_login_rejected(auth_server: ServerInfo) -> None:
    assert status_of(auth_server.uri) == 401


def test_wrong_password_rejected(auth_server: ServerInfo) -> None:
    assert status_of(auth_server.uri, (USER, "wrong-password-0000")) == 401
    with pytest.raises(CredentialsError, match=f"rejected user '{USER}' from MLFLOW_TRACKING_USERNAME"):
        check_credentials(auth_server.uri, BasicAuthCredentials(USER, "wrong-password-0000"))


def test_unknown_user_rejected(auth_server: ServerInfo) -> None:
    assert status_of(auth_server.uri, ("somebody-else", PASSWORD)) == 401


def test_right_credentials_log_run(auth_server: ServerInfo, logged_in: None, tmp_path: Path) -> None:
    assert status_of(auth_server.uri, (USER, PASSWORD)) == 200

    client = MlflowClient(auth_server.uri)
    experiment_id = client.create_experiment("auth-run")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.log_text(run.info.run_id, "logged behind basic auth", "note.txt")
    client.set_terminated(run.info.run_id)

    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    downloaded = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
    assert Path(downloaded).read_text() == "logged behind basic auth"


def test_client_without_credentials_rejected(auth_server: ServerInfo, logged_out: None) -> None:
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(auth_server.uri).search_experiments()


def test_auth_files_private(auth_server: ServerInfo) -> None:
    config = auth_server.root / AUTH_CONFIG_FILE_NAME
    database = auth_server.root / AUTH_DATABASE_FILE_NAME
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

    text = config.read_text()
    assert f"admin_username = {USER}" in text
    assert "default_permission = NO_PERMISSIONS" in text
    assert f"database_uri = sqlite:///{database}" in text
    assert PASSWORD not in text


def test_password_in_no_server_file(auth_server: ServerInfo) -> None:
    assert files_containing(auth_server.root, PASSWORD) == []


def test_state_records_auth(auth_server: ServerInfo) -> None:
    record = json.loads((auth_server.root / "server.json").read_text())
    assert record["auth"] == "basic"
    assert find_running(auth_server.root).auth == "basic"


def test_reuse_without_auth_rejected(auth_server: ServerInfo) -> None:
    with pytest.raises(ServerError, match="has auth 'basic', but auth 'none' was requested; stop it with"):
        ensure_server(auth_server.root)


def test_reuse_with_same_auth(auth_server: ServerInfo) -> None:
    info, started = ensure_server(auth_server.root, auth=CREDENTIALS)
    assert not started
    assert info.pid == auth_server.pid


def test_reuse_with_wrong_password_rejected(auth_server: ServerInfo) -> None:
    with pytest.raises(CredentialsError, match="rejected user"):
        ensure_server(auth_server.root, auth=BasicAuthCredentials(USER, "wrong-password-0000"))


def test_open_tracking_without_auth_rejected(auth_server: ServerInfo) -> None:
    with pytest.raises(SpecError, match="requires a login \\(HTTP 401\\); set tracking.auth: basic"):
        open_tracking(auth_server.uri, None, echo=no_echo)


def test_open_tracking_given_uri_with_auth(auth_server: ServerInfo, logged_in: None) -> None:
    target = open_tracking(auth_server.uri, None, echo=no_echo, auth=CREDENTIALS)
    assert target.credentials == CREDENTIALS
    assert target.experiment_id("auth-driver") == target.experiment_id("auth-driver")


def test_open_tracking_local_server_with_auth(auth_server: ServerInfo, logged_in: None) -> None:
    messages: list[str] = []
    target = open_tracking(None, str(auth_server.root), echo=messages.append, auth=CREDENTIALS)
    assert target.uri == auth_server.uri
    assert messages[0].startswith("Reusing the local MLflow server")


def test_credentials_hidden_from_repr() -> None:
    assert PASSWORD not in repr(CREDENTIALS)


# --- a server without auth ---------------------------------------------------------------


def test_open_server_reused_with_auth_rejected(server: ServerInfo) -> None:
    with pytest.raises(ServerError, match="has auth 'none', but auth 'basic' was requested"):
        ensure_server(server.root, auth=CREDENTIALS)


def test_basic_auth_on_open_server_rejected(server: ServerInfo) -> None:
    assert not requires_login(server.uri)
    with pytest.raises(SpecError, match="accepts requests without a login, so it does not run MLflow's basic-auth app"):
        open_tracking(server.uri, None, echo=no_echo, auth=CREDENTIALS)


# --- starting and restarting -------------------------------------------------------------


def test_serve_restart_keeps_auth(tmp_path: Path) -> None:
    root = tmp_path / "mlflow"
    runner = CliRunner()
    environment = {USERNAME_VARIABLE: USER, PASSWORD_VARIABLE: PASSWORD}
    try:
        served = runner.invoke(cli, ["mlflow", "serve", "--root", str(root), "--auth", "basic", "--detach"], env=environment)
        assert served.exit_code == 0, served.output
        assert f"Basic auth: on; user '{USER}' logs in" in served.output
        assert PASSWORD not in served.output
        stopped = runner.invoke(cli, ["mlflow", "stop", "--root", str(root)])
        assert stopped.exit_code == 0, stopped.output

        # Runs that were behind a login are not opened up by a later start without auth.
        with pytest.raises(ServerError, match="was served with basic auth .* delete .*basic_auth.db to switch auth off"):
            start_server(root)
        assert find_running(root) is None

        # The admin keeps the password of the first start, so another one is rejected and the server stopped.
        with pytest.raises(CredentialsError, match="rejected user"):
            start_server(root, auth=BasicAuthCredentials(USER, "another-password-1234"))
        assert not (root / "server.json").exists()
    finally:
        stop_server(root)


def test_short_admin_password_rejected(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="has 5 characters, but MLflow's basic-auth app needs at least 12"):
        start_server(tmp_path, auth=BasicAuthCredentials(USER, "short"))
    assert not (tmp_path / "server.json").exists()


def test_serve_without_credentials_rejected(tmp_path: Path, logged_out: None) -> None:
    result = CliRunner().invoke(cli, ["mlflow", "serve", "--root", str(tmp_path), "--auth", "basic", "--detach"])
    assert result.exit_code == 1
    assert (
        "Error: --auth basic needs credentials, but MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are not set"
        in result.output
    )
    assert not (tmp_path / "server.json").exists()


# --- the spec and the launch -------------------------------------------------------------


@pytest.mark.parametrize("key", ["password", "username", "token", "api_key", "credentials"])
def test_credential_key_in_spec_rejected(key: str) -> None:
    raw = {"name": "x", "data": {"sources": [{"kind": "synthetic"}]}, "tracking": {"auth": "basic", key: "s3cret-value"}}
    with pytest.raises(SpecError) as error:
        validate(raw)
    message = str(error.value)
    assert f"spec field 'tracking.{key}' is not allowed: credentials are never read from the spec" in message
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message
    assert "s3cret-value" not in message


def test_auth_mode_validated() -> None:
    raw = {"name": "x", "data": {"sources": [{"kind": "synthetic"}]}, "tracking": {"auth": "oauth"}}
    with pytest.raises(SpecError, match="spec field 'tracking.auth': got 'oauth', input should be 'none' or 'basic'"):
        validate(raw)


def test_launch_without_credentials_fails_early(home: Path, logged_out: None) -> None:
    code, output = launch(DEMO, "--set", "tracking.auth=basic", "--storage", str(home / "sweeps"))
    assert code == 1
    assert len(output.strip().splitlines()) == 1, output
    assert (
        "Error: spec field 'tracking.auth' is 'basic', but MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
        "are not set or empty; export" in output
    )
    assert not (home / "sweeps" / "demo").exists()


def test_launch_names_the_missing_variable(home: Path, logged_out: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USERNAME_VARIABLE, USER)
    code, output = launch(DEMO, "--set", "tracking.auth=basic", "--storage", str(home / "sweeps"))
    assert code == 1
    assert "but MLFLOW_TRACKING_PASSWORD is not set or empty" in output


def test_launch_rejects_password_in_uri(home: Path) -> None:
    code, output = launch(DEMO, "--tracking-uri", "http://alice:pw-in-uri@127.0.0.1:9", "--storage", str(home / "sweeps"))
    assert code == 1
    assert "Error: tracking URI for host '127.0.0.1' contains a user name or password" in output
    assert "pw-in-uri" not in output
    assert not (home / "sweeps" / "demo").exists()


def test_launch_rejects_password_set(home: Path) -> None:
    code, output = launch(DEMO, "--set", "tracking.password=set-on-command-line", "--storage", str(home / "sweeps"))
    assert code == 1
    assert "Error: spec field 'tracking.password' is not allowed" in output
    assert "set-on-command-line" not in output


# --- a tiny sweep ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Run one one-epoch trial on phantoms against a basic-auth server that the launch starts itself.

    The Ray cluster is started in this process, whose environment lacks the credentials, so
    its raylet and workers do not inherit them from the driver.
    """
    from ray.cluster_utils import Cluster

    work = tmp_path_factory.mktemp("auth-sweep")
    server_root = work / "mlflow"
    spec = {
        **SPEC,
        "name": "auth",
        "tracking": {"auth": "basic", "server_root": str(server_root)},
        "training": {**SPEC["training"], "epochs": 1},
        "evaluation": {**SPEC["evaluation"], "t": [2]},
        "search": {"sampling": "grid", "parameters": {}},
        "resources": {"cpus": 1},
    }
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")

    # Ray's socket paths must stay under 108 characters, which pytest's tmp paths can exceed.
    ray_folder = Path(tempfile.mkdtemp(prefix="ray-auth-", dir="/tmp"))
    environment = {**os.environ, "SWEEPER_HOME": str(work / "home"), USERNAME_VARIABLE: USER, PASSWORD_VARIABLE: PASSWORD}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv(USERNAME_VARIABLE, raising=False)
            patch.delenv(PASSWORD_VARIABLE, raising=False)
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": str(ray_folder)},
            )
        try:
            cluster.wait_for_nodes()
            completed = subprocess.run(
                [SWEEPER, "launch", str(spec_path), "--address", cluster.address, "--storage", str(work / "sweeps")],
                capture_output=True, text=True, timeout=900, cwd=work, env=environment,
            )
        finally:
            cluster.shutdown()
        yield {
            "completed": completed,
            "storage": work / "sweeps",
            "server_root": server_root,
            "ray_leaks": files_containing(ray_folder, PASSWORD),
        }
    finally:
        stop_server(server_root)
        shutil.rmtree(ray_folder, ignore_errors=True)


@pytest.mark.slow
def test_sweep_logs_behind_auth(auth_sweep: dict, logged_in: None) -> None:
    completed = auth_sweep["completed"]
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    server = find_running(auth_sweep["server_root"])
    assert server is not None
    assert server.auth == "basic"
    assert status_of(server.uri) == 401

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("auth")
    runs = client.search_runs([experiment.experiment_id])
    levels = sorted(run.data.tags["sweeper.level"] for run in runs)
    assert levels == ["cell", "sweep", "trial"]
    trial = next(run for run in runs if run.data.tags["sweeper.level"] == "trial")
    assert [metric.step for metric in client.get_metric_history(trial.info.run_id, "train/loss_gaussian")] == [1]
    assert all(run.info.status == "FINISHED" for run in runs)


@pytest.mark.slow
def test_sweep_stores_no_password(auth_sweep: dict) -> None:
    completed = auth_sweep["completed"]
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    assert files_containing(auth_sweep["storage"], PASSWORD) == []
    assert files_containing(auth_sweep["server_root"], PASSWORD) == []
    assert auth_sweep["ray_leaks"] == []
    assert PASSWORD not in completed.stdout
    assert PASSWORD not in completed.stderr

    launch_record = json.loads((auth_sweep["storage"] / "auth" / "launch.json").read_text())
    assert launch_record["spec"]["tracking"]["auth"] == "basic"
