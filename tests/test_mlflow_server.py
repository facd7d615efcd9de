"""Tests of the MLflow tracking server package and the ``sweeper mlflow`` commands.

They run real ``mlflow server`` processes on 127.0.0.1 with roots under pytest's tmp
paths. Each start takes a few seconds, so tests that only read share one server, and
every fixture that starts a server stops it in its teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlflow_server
from mlflow_server import (
    ServerError,
    ServerInfo,
    default_root,
    ensure_server,
    find_running,
    is_healthy,
    network_exposure_warning,
    start_server,
    stop_server,
)
from sweeper import mlflow_commands
from sweeper.mlflow_commands import mlflow_group

REPO_ROOT = Path(__file__).resolve().parents[1]
FOREGROUND_START_TIMEOUT_S = 90.0
FOREGROUND_STOP_TIMEOUT_S = 30.0


def _set_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep mlflow clients and servers off the network by disabling telemetry and proxies.
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _process_group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_state_file(root: Path, pid: int, port: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "server.json"
    record = {
        "pid": pid,
        "host": "127.0.0.1",
        "port": port,
        "uri": f"http://127.0.0.1:{port}",
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def _wait_for_output(
    cli: subprocess.Popen[bytes], output_file: Path, expected: str, timeout_s: float
) -> str:
    """Wait until the output of ``cli`` contains ``expected`` and return the output."""
    deadline = time.monotonic() + timeout_s
    while True:
        output = output_file.read_text(encoding="utf-8")
        if expected in output:
            return output
        if cli.poll() is not None or time.monotonic() >= deadline:
            raise AssertionError(f"output never contained {expected!r}:\n{output}")
        time.sleep(0.1)


def _wait_for_state_file(root: Path, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    state_file = root / "server.json"
    while not state_file.exists():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{state_file} did not appear within {timeout_s:g} s")
        time.sleep(0.05)
    return json.loads(state_file.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """One server for the tests that only read from it or log to it."""
    root = tmp_path_factory.mktemp("shared-mlflow")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _set_client_environment(monkeypatch)
        info = start_server(root)
        try:
            yield info
        finally:
            stop_server(root)


@pytest.fixture
def own_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A root for a test that starts its own server, which is stopped at teardown."""
    _set_client_environment(monkeypatch)
    root = tmp_path / "mlflow"
    yield root
    stop_server(root)


@pytest.fixture
def serve_in_foreground(
    own_root: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``sweeper mlflow serve --root <own_root>`` in a child process and its output file."""
    # A shell starts background jobs with SIGINT ignored, and the child would inherit
    # that, so the command restores the handler that a terminal session has.
    script = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from sweeper.mlflow_commands import mlflow_group; mlflow_group()"
    )
    command = [sys.executable, "-c", script, "serve", "--root", str(own_root)]
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    output_file = tmp_path / "serve-output.txt"
    with open(output_file, "wb") as output_stream:
        cli = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=output_stream, stderr=subprocess.STDOUT
        )
    yield cli, output_file
    if cli.poll() is None:
        cli.kill()
        cli.wait()


# Shared server: start, health, logging through the proxied artifact store, reuse.


def test_start_server_records_state(shared_server: ServerInfo) -> None:
    record = json.loads((shared_server.root / "server.json").read_text(encoding="utf-8"))

    assert record["pid"] == shared_server.pid
    assert record["host"] == "127.0.0.1"
    assert record["port"] == shared_server.port
    assert record["uri"] == f"http://127.0.0.1:{shared_server.port}"
    assert "started_at" in record
    assert shared_server.uri == record["uri"]
    assert shared_server.log_file == shared_server.root / "server.log"
    assert shared_server.log_file.is_file()
    assert (shared_server.root / "mlflow.db").is_file()


def test_start_server_is_healthy(shared_server: ServerInfo) -> None:
    assert is_healthy(shared_server.uri)
    assert is_healthy(shared_server.uri + "/")


def test_client_logs_artifact_into_root(shared_server: ServerInfo, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    mlruns_existed = (Path.cwd() / "mlruns").exists()
    client = MlflowClient(shared_server.uri)
    experiment_id = client.create_experiment("server-test")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_metric(run_id, "auprc", 0.625, step=3)
    notes = tmp_path / "notes.txt"
    notes.write_text("anomaly map written by the test\n", encoding="utf-8")
    client.log_artifact(run_id, str(notes))
    client.set_terminated(run_id)

    history = client.get_metric_history(run_id, "auprc")
    assert [(metric.value, metric.step) for metric in history] == [(0.625, 3)]
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [artifact.path for artifact in client.list_artifacts(run_id)] == ["notes.txt"]

    stored = list((shared_server.root / "artifacts").rglob("notes.txt"))
    assert len(stored) == 1
    assert run_id in stored[0].parts
    assert stored[0].read_text(encoding="utf-8") == "anomaly map written by the test\n"
    assert not (shared_server.root / "mlruns").exists()
    assert (Path.cwd() / "mlruns").exists() == mlruns_existed


def test_find_running_returns_server(shared_server: ServerInfo) -> None:
    assert find_running(shared_server.root) == shared_server


def test_ensure_server_reuses_running(shared_server: ServerInfo) -> None:
    info, started = ensure_server(shared_server.root)

    assert started is False
    assert info == shared_server
    record = json.loads((shared_server.root / "server.json").read_text(encoding="utf-8"))
    assert record["pid"] == shared_server.pid


def test_start_server_rejects_second(shared_server: ServerInfo) -> None:
    with pytest.raises(ServerError, match=r"already running at http://127\.0\.0\.1:\d+\. Stop it"):
        start_server(shared_server.root)

    assert find_running(shared_server.root) == shared_server


def test_start_server_rejects_taken_port(shared_server: ServerInfo, own_root: Path) -> None:
    with pytest.raises(ServerError, match=rf"port {shared_server.port} on host 127\.0\.0\.1"):
        start_server(own_root, port=shared_server.port)

    assert not (own_root / "server.json").exists()


# Servers started per test: stop, failed start, foreground serve.


def test_stop_server_ends_process_group(own_root: Path) -> None:
    info, started = ensure_server(own_root)
    assert started is True
    assert is_healthy(info.uri)

    stopped = stop_server(own_root)

    assert stopped == info
    assert not _process_group_exists(info.pid)
    assert not (own_root / "server.json").exists()
    assert not is_healthy(info.uri, timeout_s=0.5)
    assert find_running(own_root) is None


def test_start_server_timeout_stops_process(own_root: Path) -> None:
    # A start takes several seconds (uvicorn imports the app and the database is
    # created), so a 0.5 s timeout expires first.
    with pytest.raises(ServerError, match=r"within 0\.5 s\. Read .*server\.log"):
        start_server(own_root, timeout_s=0.5)

    assert not (own_root / "server.json").exists()
    assert find_running(own_root) is None


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_serve_foreground_stops_on_signal(
    own_root: Path,
    serve_in_foreground: tuple[subprocess.Popen[bytes], Path],
    signal_number: signal.Signals,
) -> None:
    cli, output_file = serve_in_foreground
    _wait_for_output(cli, output_file, "Press Ctrl-C to stop it.", FOREGROUND_START_TIMEOUT_S)
    pid = json.loads((own_root / "server.json").read_text(encoding="utf-8"))["pid"]

    cli.send_signal(signal_number)
    exit_code = cli.wait(timeout=FOREGROUND_STOP_TIMEOUT_S)

    output = output_file.read_text(encoding="utf-8")
    assert exit_code == 0, output
    assert f"Stopped MLflow server (pid {pid})" in output
    assert not _process_group_exists(pid)
    assert not (own_root / "server.json").exists()


def test_serve_interrupted_while_starting(
    own_root: Path, serve_in_foreground: tuple[subprocess.Popen[bytes], Path]
) -> None:
    # server.json is written as soon as the process starts, seconds before /health works.
    cli, output_file = serve_in_foreground
    pid = _wait_for_state_file(own_root, FOREGROUND_START_TIMEOUT_S)["pid"]

    cli.send_signal(signal.SIGTERM)
    exit_code = cli.wait(timeout=FOREGROUND_STOP_TIMEOUT_S)

    output = output_file.read_text(encoding="utf-8")
    assert exit_code == 1, output
    assert "Error: interrupted before the MLflow server was ready" in output
    assert "Traceback" not in output
    assert isinstance(pid, int)
    assert not _process_group_exists(pid)
    assert not (own_root / "server.json").exists()


# State files that name no running server.


def test_find_running_removes_dead_pid_state(tmp_path: Path) -> None:
    state_file = _write_state_file(tmp_path, _dead_pid())

    assert find_running(tmp_path) is None
    assert not state_file.exists()


def test_stop_server_ignores_dead_pid_state(tmp_path: Path) -> None:
    state_file = _write_state_file(tmp_path, _dead_pid())

    assert stop_server(tmp_path) is None
    assert not state_file.exists()


def test_stop_server_spares_unrelated_process(tmp_path: Path) -> None:
    # A recycled pid: a live process group leader that is not an mlflow server.
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state_file = _write_state_file(tmp_path, sleeper.pid)

        assert find_running(tmp_path) is None
        assert not state_file.exists()

        _write_state_file(tmp_path, sleeper.pid)
        assert stop_server(tmp_path) is None
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_find_running_removes_invalid_state(tmp_path: Path) -> None:
    state_file = tmp_path / "server.json"
    state_file.write_text("{not json", encoding="utf-8")

    assert find_running(tmp_path) is None
    assert not state_file.exists()


def test_stop_server_without_state(tmp_path: Path) -> None:
    assert stop_server(tmp_path) is None


def test_is_healthy_without_server() -> None:
    assert not is_healthy(f"http://127.0.0.1:{_free_loopback_port()}", timeout_s=0.5)


# Arguments, warnings and defaults: no server involved.


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"port": 0}, r"port must be between 1 and 65535, but got 0"),
        ({"port": 70000}, r"port must be between 1 and 65535, but got 70000"),
        ({"timeout_s": 0.0}, r"timeout_s must be positive, but got 0\.0"),
        ({"host": ""}, r"host must be a host name or IP address"),
    ],
)
def test_start_server_rejects_invalid_arguments(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        start_server(tmp_path, **arguments)

    assert not (tmp_path / "server.json").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_network_exposure_warning_loopback(host: str) -> None:
    assert network_exposure_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "tracking.example.org"])
def test_network_exposure_warning_other_hosts(host: str) -> None:
    warning = network_exposure_warning(host)

    assert warning == (
        f"binding to {host} exposes the tracking server to the network; "
        "anyone who can reach it can read and change runs"
    )


def test_default_root_uses_sweeper_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SWEEPER_HOME", str(tmp_path / "home"))

    assert default_root() == tmp_path / "home" / "mlflow"


def test_default_root_without_sweeper_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SWEEPER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert default_root() == tmp_path / ".sweeper" / "mlflow"


def test_public_api_exports() -> None:
    assert set(mlflow_server.__all__) == {
        "ServerError",
        "ServerInfo",
        "default_root",
        "ensure_server",
        "find_running",
        "is_healthy",
        "network_exposure_warning",
        "start_server",
        "stop_server",
        "wait_for_exit",
    }


# The `sweeper mlflow` commands through click's CliRunner.


def test_cli_serve_detach_then_stop(own_root: Path) -> None:
    runner = CliRunner()

    served = runner.invoke(mlflow_group, ["serve", "--root", str(own_root), "--detach"])

    assert served.exit_code == 0, served.output
    info = find_running(own_root)
    assert info is not None
    assert f"Started MLflow server (pid {info.pid})" in served.stdout
    assert f"Tracking URI: {info.uri}\n" in served.stdout
    assert f"UI: {info.uri}/\n" in served.stdout
    assert f"sweeper mlflow stop --root {own_root}" in served.stdout
    assert served.stderr == ""

    stopped = runner.invoke(mlflow_group, ["stop", "--root", str(own_root)])

    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout == f"Stopped MLflow server (pid {info.pid}) at {info.uri}\n"
    assert not _process_group_exists(info.pid)
    assert not (own_root / "server.json").exists()


def test_cli_serve_reuses_running(shared_server: ServerInfo) -> None:
    result = CliRunner().invoke(
        mlflow_group, ["serve", "--root", str(shared_server.root), "--detach"]
    )

    assert result.exit_code == 0, result.output
    assert f"Reusing the MLflow server (pid {shared_server.pid})" in result.stdout
    assert f"Tracking URI: {shared_server.uri}\n" in result.stdout
    assert find_running(shared_server.root) == shared_server


def test_cli_serve_foreground_reuse_returns(shared_server: ServerInfo) -> None:
    # Without --detach, a reused server is not this command's to stop, so it returns.
    result = CliRunner().invoke(mlflow_group, ["serve", "--root", str(shared_server.root)])

    assert result.exit_code == 0, result.output
    assert "Press Ctrl-C" not in result.stdout
    assert find_running(shared_server.root) == shared_server


def test_cli_serve_taken_port_fails(shared_server: ServerInfo, own_root: Path) -> None:
    result = CliRunner().invoke(
        mlflow_group,
        ["serve", "--root", str(own_root), "--port", str(shared_server.port), "--detach"],
    )

    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: port {shared_server.port} on host 127.0.0.1")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_cli_serve_warns_non_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # ensure_server is replaced so that nothing binds to a public interface.
    def fail_to_start(root: Path, **kwargs: object) -> tuple[ServerInfo, bool]:
        raise ServerError("start skipped by the test")

    monkeypatch.setattr(mlflow_commands, "ensure_server", fail_to_start)

    result = CliRunner().invoke(
        mlflow_group, ["serve", "--root", str(tmp_path), "--host", "0.0.0.0", "--detach"]
    )

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Warning: binding to 0.0.0.0 exposes the tracking server to the network; "
        "anyone who can reach it can read and change runs",
        "Error: start skipped by the test",
    ]


def test_cli_stop_without_server(tmp_path: Path) -> None:
    result = CliRunner().invoke(mlflow_group, ["stop", "--root", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"No MLflow server was running for {tmp_path}\n"


def test_cli_serve_rejects_invalid_port(tmp_path: Path) -> None:
    result = CliRunner().invoke(mlflow_group, ["serve", "--root", str(tmp_path), "--port", "0"])

    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.stderr
    assert not (tmp_path / "server.json").exists()
