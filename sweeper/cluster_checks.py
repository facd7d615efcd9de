"""Checks that a multi-node Ray cluster can run the sweep: shared storage and a reachable tracking server.

Both run after Ray connects and before any trial starts. The storage check writes a probe
file into the storage folder and runs one task on every alive node that checks whether it is visible there,
so it finds node-local folders whatever the file system is called.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlparse

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mlflow_server.server import is_loopback
from sweeper.spec import SpecError

# Seconds to wait for the probe tasks; a node busy starting workers can take a while.
PROBE_TIMEOUT_S = 120


@ray.remote(num_cpus=0)
def _sees(path: str) -> bool:
    return Path(path).is_file()


def alive_nodes() -> list[dict]:
    """Return Ray's records of the alive nodes of the connected cluster."""
    return [node for node in ray.nodes() if node.get("Alive")]


def check_shared_storage(storage: Path, nodes: list[dict]) -> None:
    """Raise a one-line error if a node cannot see ``storage``, the folder Tune writes trial checkpoints to."""
    if len(nodes) < 2:
        return
    probe = storage / f".sweeper-probe-{uuid.uuid4().hex}"
    probe.write_text("visible\n", encoding="utf-8")
    try:
        checks = {
            node["NodeManagerAddress"] + " (" + node["NodeID"][:8] + ")": _sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(probe))
            for node in nodes
        }
        blind = [name for name, seen in zip(checks, ray.get(list(checks.values()), timeout=PROBE_TIMEOUT_S)) if not seen]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise SpecError(
            f"storage {str(storage)!r} is local to this node: nodes {', '.join(blind)} cannot see it, so their "
            "trials' checkpoints would be lost; pass --storage on a file system that every node mounts at the "
            "same path (NFS, Lustre)"
        )


def check_tracking_reachable(tracking_uri: str, nodes: list[dict], driver_address: str) -> None:
    """Raise a one-line error if the tracking URI is a loopback address while trials run on other machines."""
    host = urlparse(tracking_uri).hostname or ""
    if not is_loopback(host):
        return
    remote = sorted({node["NodeManagerAddress"] for node in nodes} - {driver_address})
    remote = [address for address in remote if not is_loopback(address)]
    if remote:
        raise SpecError(
            f"tracking URI {tracking_uri} is a loopback address, which trials on {', '.join(remote)} cannot reach; "
            "start the server with 'sweeper mlflow serve --host 0.0.0.0' (behind a firewall) and pass "
            "--tracking-uri http://HEAD-NODE-ADDRESS:PORT"
        )
