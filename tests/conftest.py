"""Shared test set-up: loopback-only Ray, no telemetry, and the read-only data in ../shared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SWEEPER_SHARED", PROJECT_ROOT.parent / "shared"))
DATA_ROOT = SHARED / "data"
LPIPS_CHECKPOINT = SHARED / "models" / "lpips" / "alexnet.ckpt"

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
