"""A trial that runs out of memory fails alone, tagged as such, and the other trial finishes.

The out-of-memory errors are real. On the CPU the sweep runs under a 6 GiB limit on each
process's data segment (``RLIMIT_DATA``, which Ray's workers inherit from the driver). One
trial requests a UNet of 4096 channels at every level: 6.4 billion weights, 25 GB in fp32. On a GPU the two trials share one device (``resources.gpus: 0.5``), so each may use
half of its memory, and the same UNet with its gradients and AdamW state needs about 100 GB.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from mlflow_server import ServerInfo
from tests.test_resume import SPEC

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")
SMALL, HUGE = [32, 64, 64], [4096, 4096, 4096]
DATA_LIMIT = 6 * 2**30


def limit_data_segment() -> None:
    """Cap the data segment of the launched process and every process it starts, Ray's included."""
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))


def run_sweep(server: ServerInfo, work: Path, *, name: str, gpus: float) -> dict:
    spec = {
        **SPEC,
        "name": name,
        "training": {**SPEC["training"], "epochs": 2},
        "search": {"sampling": "grid", "parameters": {"model.channels": {"values": [SMALL, HUGE]}}},
        "resources": {**SPEC["resources"], "gpus": gpus, "max_failures": 1},
    }
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    storage = work / "sweeps"
    command = [SWEEPER, "launch", str(spec_path), "--tracking-uri", server.uri, "--storage", str(storage)]
    launched = subprocess.run(
        command, capture_output=True, text=True, timeout=900, cwd=work, preexec_fn=None if gpus else limit_data_segment
    )
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(name)
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'")
    by_width = {run.data.params["model.channels"]: run for run in trials}
    status = subprocess.run([SWEEPER, "status", name, "--storage", str(storage)], capture_output=True, text=True, timeout=120)
    return {"launched": launched, "client": client, "trials": by_width, "status": status}


@pytest.fixture(scope="module")
def cpu_sweep(server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_sweep(server, tmp_path_factory.mktemp("oom-cpu"), name="oom-cpu", gpus=0)


def check_sweep(sweep: dict, status: str, memory: str) -> None:
    launched = sweep["launched"]
    output = launched.stdout + launched.stderr
    assert launched.returncode == 1, output[-3000:]
    assert "1 trial(s) failed" in output
    # The summary gives the error with the settings to lower, not the allocator's message alone.
    errors = [line.strip() for line in launched.stdout.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 1, errors
    assert f"ran out of {memory}" in errors[0]
    assert "lower training.batch_size" in errors[0]

    huge = sweep["trials"][str(HUGE)]
    assert huge.info.status == "FAILED"
    assert huge.data.tags["sweeper.status"] == status
    # The retry (resources.max_failures: 1) ran out of memory again, and the tags record both attempts.
    assert huge.data.tags["sweeper.previous_status"] == status

    small = sweep["trials"][str(SMALL)]
    assert small.info.status == "FINISHED"
    assert "sweeper.status" not in small.data.tags
    assert "best/test_auprc" in small.data.metrics

    status_output = sweep["status"]
    assert status_output.returncode == 0, status_output.stderr
    assert status_output.stdout.count("ERROR") == 1
    assert status_output.stdout.count("TERMINATED") == 1


def test_host_out_of_memory_fails_only_that_trial(cpu_sweep: dict) -> None:
    check_sweep(cpu_sweep, "cpu_oom", "host memory")


# NOTE: this variant has not yet run on a GPU, so the 100 GB estimate and the timeout are unchecked there.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_out_of_memory_fails_only_that_trial(server: ServerInfo, tmp_path: Path) -> None:
    check_sweep(run_sweep(server, tmp_path, name="oom-cuda", gpus=0.5), "cuda_oom", "GPU memory")
