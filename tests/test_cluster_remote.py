"""Joining a cluster from outside: a sweep over Ray Client, and a storage folder that one node cannot see.

Both use real Ray nodes on 127.0.0.1. For the storage check, the worker node runs in its own
mount namespace (``unshare -m``) with an empty tmpfs mounted over the sweep's storage
folder, which is what a folder on a node's local disk looks like from the other nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from mlflow_server import ServerInfo
from tests.conftest import free_port
from tests.test_resume import SPEC

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")

# A worker node as `ray.cluster_utils.Cluster.add_node` starts one, run as its own process
# so that it can live in another mount namespace. It stops its Ray processes on SIGTERM.
WORKER_NODE = textwrap.dedent(
    """
    import signal, sys, time
    import ray._private.node, ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0,
        object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0,
        include_log_monitor=False, node_manager_port=0,
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)

    def stop(*_):
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("node started", flush=True)
    while True:
        time.sleep(1)
    """
)


def write_spec(work: Path, name: str) -> Path:
    spec = {
        **SPEC,
        "name": name,
        "training": {**SPEC["training"], "epochs": 2},
        "search": {"sampling": "grid", "parameters": {"training.seed": {"values": [0]}}},
    }
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def can_unshare_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def head() -> Iterator[Cluster]:
    """A one-node cluster whose head also runs a Ray Client server; its port is ``head.client_port``."""
    port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "ray_client_server_port": port})
    cluster.client_port = port
    yield cluster
    cluster.shutdown()


def test_sweep_over_ray_client(head: Cluster, server: ServerInfo, tmp_path: Path) -> None:
    """``--address ray://`` runs the sweep from a client, with the project's code sent in the runtime environment."""
    spec_path = write_spec(tmp_path, "client")
    result = subprocess.run(
        [SWEEPER, "launch", str(spec_path), "--address", f"ray://127.0.0.1:{head.client_port}",
         "--tracking-uri", server.uri, "--storage", str(tmp_path / "sweeps")],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "TERMINATED" in result.stdout
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("client")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'")
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert list((tmp_path / "sweeps" / "client").glob("experiment_state-*.json"))


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs 'unshare -m' (root, or a user namespace) to hide a folder from one node")
def test_node_local_storage_rejected_before_trials(head: Cluster, server: ServerInfo, tmp_path: Path) -> None:
    storage = tmp_path / "node-local"
    storage.mkdir()
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{storage}" && exec "{sys.executable}" -c "$0" "$1"',
         WORKER_NODE, head.gcs_address],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        ray.init(address=head.address)

        try:
            while len([node for node in ray.nodes() if node["Alive"]]) < 2:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the worker node did not join"
                time.sleep(0.5)
        finally:
            ray.shutdown()

        spec_path = write_spec(tmp_path, "local-storage")
        result = subprocess.run(
            [SWEEPER, "launch", str(spec_path), "--address", head.address,
             "--tracking-uri", server.uri, "--storage", str(storage)],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"storage {str(storage / 'local-storage')!r} is local to this node" in errors[0]
    assert "pass --storage on a file system that every node mounts" in errors[0]
    assert "Traceback" not in result.stderr
    # No trial started: Tune wrote no state, and MLflow contains no trial run.
    assert not list(storage.rglob("experiment_state-*.json"))
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("local-storage")
    if experiment is not None:
        assert not client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'")
