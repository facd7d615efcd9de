"""The CLI rejects bad input with one-line errors before Ray starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from sweeper.cli import cli
from tests.conftest import DATA_ROOT, PROJECT_ROOT, free_port, launch

DEMO = str(PROJECT_ROOT / "configs" / "demo.yaml")
FBAU = str(PROJECT_ROOT / "configs" / "fbau-cpu.yaml")


CASES = [
    ([DEMO, "--set", "evaluation.t=[5, 500]"], r"Error: spec field 'evaluation.t\[1\]': got 500, expected a noise level from 1 to model.T \(100\)"),
    ([DEMO, "--set", "evaluation.methods={vae: [gaussian]}"], r"Error: spec field 'evaluation.methods.vae': got 'vae', input should be 'anoddpm' or 'autoddpm'"),
    ([DEMO, "--set", "resources.gpus=0.4"], r"Error: spec field 'resources.gpus': got 0.4"),
    ([DEMO, "--set", "training.lr=-1"], r"Error: spec field 'training.lr': got -1, input should be greater than 0"),
    ([DEMO, "--set", "trainig.lr=1"], r"Error: unknown spec field 'trainig': did you mean 'training'\?"),
    ([DEMO, "--set", "training.lr"], r"Error: invalid --set 'training.lr': expected dotted.key=value"),
    ([FBAU, "--data-root", "/nonexistent-data-root"], r"Error: data root '/nonexistent-data-root' not found; pass an existing folder with --data-root"),
    ([FBAU, "--data-root", str(PROJECT_ROOT)], r"Error: spec field 'data.sources\[0\].path': folder .*fetal-brain-abnormalities' not found; pass --data-root DIR"),
    ([DEMO, "--tracking-uri", "sqlite:///mlflow.db"], r"Error: tracking URI 'sqlite:///mlflow.db' is not an HTTP URI"),
    ([DEMO, "--storage", "/proc/sweeps"], r"Error: storage path '/proc/sweeps' is not writable"),
    (["/nonexistent/spec.yaml"], r"Error: cannot read spec file '/nonexistent/spec.yaml'"),
    ([DEMO, "--set", "evaluation.methods={}"], r"Error: spec field 'evaluation.methods': the grid is empty"),
    ([DEMO, "--set", "training.epochs=many"], r"Error: spec field 'training.epochs': got 'many', input should be a valid integer"),
    ([DEMO, "--set", "training.batch_size=0"], r"Error: spec field 'training.batch_size': got 0, input should be greater than or equal to 1"),
    ([DEMO, "--set", "data.image_size=24"], r"Error: spec field 'data.image_size': got 24, expected at least 31 pixels, the smallest input that LPIPS"),
    ([DEMO, "--set", "search.parameters={data.image_size: {values: [32, 64]}}"], r"Error: spec field 'search.parameters.data.image_size': the data is prepared once per sweep"),
    ([DEMO, "--set", "evaluation.postprocess.sigmas=[-1]"], r"Error: spec field 'evaluation.postprocess.sigmas': got \[-1\], expected smoothing sigmas"),
    ([DEMO, "--set", "evaluation.postprocess.storage=notaurl"], r"Error: spec field 'evaluation.postprocess.storage': got 'notaurl', expected an Optuna RDB URL"),
    ([DEMO, "--set", "evaluation.postprocess.maps=[autoddpm]"], r"Error: spec field 'evaluation.postprocess.maps': got \['autoddpm'\], but AnoDDPM cells have no 'autoddpm' map"),
    ([DEMO, "--set", "search.sampling=bayes"], r"Error: spec field 'search.sampling': got 'bayes', input should be 'grid', 'random' or 'optuna'"),
]


@pytest.mark.parametrize(("arguments", "message"), CASES, ids=[" ".join(case[0][1:]) or case[0][0] for case in CASES])
def test_bad_input_one_line_error(home: Path, arguments: list[str], message: str) -> None:
    code, output = launch(*arguments)
    assert code == 1, output
    assert len(output.strip().splitlines()) == 1, output
    assert re.search(message, output), output


def test_tracking_uri_not_responding(home: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    code, output = launch(DEMO, "--tracking-uri", uri, "--storage", str(home / "sweeps"))
    assert code == 1
    assert f"Error: tracking URI '{uri}' does not respond; start a server with 'sweeper mlflow serve'" in output


def test_status_of_unknown_sweep(home: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "nothing-here", "--storage", str(home)])
    assert result.exit_code == 1
    assert "Error: no sweep 'nothing-here' in" in result.output


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("launch", "status", "mlflow"):
        assert command in result.output


def test_data_root_used_for_relative_paths(home: Path) -> None:
    # The spec is valid and the data is found, so the launch gets as far as the tracking check.
    uri = f"http://127.0.0.1:{free_port()}"
    code, output = launch(FBAU, "--data-root", str(DATA_ROOT), "--tracking-uri", uri, "--storage", str(home / "s"))
    assert code == 1
    assert "does not respond" in output


def test_missing_lpips_weights_named(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_LPIPS_WEIGHTS", str(home / "absent.ckpt"))
    code, output = launch(DEMO, "--storage", str(home / "sweeps"))
    assert code == 1
    assert len(output.strip().splitlines()) == 1, output
    assert "absent.ckpt" in output
    assert "SWEEPER_LPIPS_WEIGHTS" in output


def test_lpips_weights_not_searchable(home: Path) -> None:
    code, output = launch(DEMO, "--set", "search.parameters={evaluation.lpips_weights: {values: [a, b]}}")
    assert code == 1
    assert "the LPIPS weights are read once per sweep and cannot vary between trials" in output


def test_more_cpus_than_machine_rejected(home: Path) -> None:
    code, output = launch(DEMO, "--set", "resources.cpus=512", "--storage", str(home / "sweeps"))
    assert code == 1
    assert "spec field 'resources.cpus': got 512, but this machine has" in output
    assert "no trial could start" in output


# A port that refuses connections fails at once; Ray itself would retry it for a minute or more.
@pytest.mark.parametrize("address", ["nonsense-address", "127.0.0.1:1", "ray://127.0.0.1:1"])
def test_bad_address_is_one_line_and_keeps_name(home: Path, address: str) -> None:
    from mlflow_server import start_server, stop_server

    server = start_server(home / "mlflow")
    try:
        code, output = launch(DEMO, "--address", address, "--tracking-uri", server.uri, "--storage", str(home / "sweeps"))
    finally:
        stop_server(home / "mlflow")
    assert code == 1
    assert output.strip().splitlines()[-1].startswith(f"Error: could not connect to the Ray cluster at '{address}'")
    # The address is tried before the data is prepared, so the error comes in seconds.
    assert "Preparing data" not in output
    assert not (home / "sweeps" / "demo").exists()
