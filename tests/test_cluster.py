"""A sweep on a real two-node Ray cluster on this machine: trials spread over both nodes and survive losing one.

``ray.cluster_utils.Cluster`` starts a head node and a worker node as separate raylets on
127.0.0.1. `sweeper launch --address` joins it from a subprocess, like a user on the head
node. When the worker node is removed in the middle of its trial, Tune retries that trial
from its last checkpoint on the head node, and the sweep ends with every result.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from mlflow_server import ServerInfo
from sweeper.cluster_checks import check_tracking_reachable
from sweeper.spec import SpecError
from tests.test_resume import SPEC

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")


@pytest.fixture(scope="module")
def cluster_run(server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("cluster")
    spec = {**SPEC, "name": "cluster", "resources": {"cpus": 1, "max_failures": 2}}
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        log = (work / "launch.log").open("w")
        driver = subprocess.Popen(
            [SWEEPER, "launch", str(spec_path), "--address", cluster.address, "--tracking-uri", server.uri,
             "--storage", str(work / "sweeps")],
            stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 900
        removed_from = None
        while removed_from is None:
            assert driver.poll() is None, (work / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial checkpointed on the worker node in time"
            removed_from = _trial_checkpointed_on(client, work / "sweeps" / "cluster", worker.node_id)
            time.sleep(0.5)
        cluster.remove_node(worker)
        driver.wait(timeout=900)
        log.close()
        yield {"driver": driver, "work": work, "client": client, "worker": worker.node_id, "moved": removed_from}
    finally:
        if driver.poll() is None:
            driver.kill()
        cluster.shutdown()


def _trial_checkpointed_on(client: MlflowClient, sweep: Path, node_id: str) -> str | None:
    """Return the id of a trial that runs on ``node_id`` and has written a checkpoint, or None."""
    experiment = client.get_experiment_by_name("cluster")
    if experiment is None:
        return None
    for run in client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.level` = 'trial'"):
        trial_id = run.data.tags["sweeper.trial_id"]
        if run.data.tags.get("sweeper.nodes", "").endswith(node_id) and list(sweep.glob(f"run_trial_{trial_id}_*/checkpoint_*")):
            return trial_id
    return None


def test_sweep_completes_after_losing_a_node(cluster_run: dict) -> None:
    output = (cluster_run["work"] / "launch.log").read_text()
    assert cluster_run["driver"].returncode == 0, output[-3000:]
    # The launch names the cluster it joined: both nodes, one CPU each.
    assert re.search(r"Joined the Ray cluster at '127\.0\.0\.1:\d+': 2 node\(s\), 2 CPUs, 0 GPUs", output), output[:3000]
    assert output.count("TERMINATED") >= 2


def test_trials_spread_and_the_lost_one_moved(cluster_run: dict) -> None:
    client = cluster_run["client"]
    experiment = client.get_experiment_by_name("cluster")
    trials = [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags["sweeper.level"] == "trial"]
    assert len(trials) == 2
    nodes = {run.data.tags["sweeper.trial_id"]: run.data.tags["sweeper.nodes"].split(",") for run in trials}
    first_nodes = {path[0] for path in nodes.values()}
    assert len(first_nodes) == 2
    moved = nodes[cluster_run["moved"]]
    assert moved[0] == cluster_run["worker"]
    assert moved[-1] != cluster_run["worker"]
    assert all(run.info.status == "FINISHED" for run in trials)
    # The retried trial continued from its checkpoint: each epoch's loss is logged once.
    run = next(run for run in trials if run.data.tags["sweeper.trial_id"] == cluster_run["moved"])
    steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "train/loss_gaussian")]
    assert sorted(steps) == list(range(1, SPEC["training"]["epochs"] + 1))


def test_loopback_tracking_rejected_with_remote_workers() -> None:
    nodes = [{"NodeManagerAddress": "10.0.0.1"}, {"NodeManagerAddress": "10.0.0.2"}]
    with pytest.raises(SpecError, match="loopback address, which trials on 10.0.0.2 cannot reach"):
        check_tracking_reachable("http://127.0.0.1:5000", nodes, "10.0.0.1")
    check_tracking_reachable("http://10.0.0.1:5000", nodes, "10.0.0.1")
    check_tracking_reachable("http://127.0.0.1:5000", [{"NodeManagerAddress": "127.0.0.1"}] * 2, "127.0.0.1")
