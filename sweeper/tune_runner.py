"""Running the trials with Ray Tune, locally or on a Ray cluster."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

import mlflow_server
import pipelines
import sweeper
import trainables
from pipelines.reporting.results import RESULTS_FOLDER
from sweeper.search_space import param_space
from sweeper.signals import sigterm_as_interrupt
from sweeper.spec import SpecError, SweepSpec
from trainables.logged_in_trial import run_trial
from trainables.trial import SweepContext

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipelines.data.dataset import PreparedData
    from sweeper.launch import PreparedLaunch
    from sweeper.tracking_setup import TrackingTarget

logger = logging.getLogger(__name__)

# Set in every trial's process. MLflow would otherwise print a "View run" link per run it
# ends and send usage telemetry to an outside host.
WORKER_ENVIRONMENT = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # A tracking server that restarts is retried for about a minute (waits of 2, 4, ... 32 s);
    # a longer outage fails the trial with MLflow's error, and the trial can be resumed.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class RayConnectionError(RuntimeError):
    """Ray could not be started or joined; the message names the address and what to do."""


def connect_ray(address: str | None, spec: SweepSpec) -> bool:
    """Start local Ray, or join the cluster at ``address``; return whether this call connected.

    Raises :class:`RayConnectionError` when the cluster cannot be reached, and
    :class:`SpecError` when it has fewer CPUs or GPUs than one trial asks for.
    """
    if ray.is_initialized():
        return False
    # numba's parallel loops (used by opensimplex) start one spinning thread per core unless
    # NUMBA_NUM_THREADS is set, and those threads starve the trial's own PyTorch thread.
    environment = {**WORKER_ENVIRONMENT, "NUMBA_NUM_THREADS": str(max(1, int(spec.resources.cpus)))}
    runtime_env: dict[str, Any] = {"env_vars": environment}
    if address is not None:
        _check_reachable(address)
    # ray.init replaces the SIGTERM handler with one that exits at once. The caller's handler
    # is put back, so SIGTERM still unwinds like Ctrl-C and the sweep's folders are cleaned.
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    try:
        if address is None:
            # "local" always starts a new instance, never one that `ray start` left on this machine.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env)
        else:
            # The project's code travels with the job, so cluster nodes need no copy of it.
            runtime_env["py_modules"] = [
                str(Path(package.__file__).parent) for package in (pipelines, sweeper, trainables, mlflow_server)
            ]
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as error:
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address!r}"
        raise RayConnectionError(
            f"could not connect to {where}: {str(error).splitlines()[0] if str(error) else type(error).__name__}; "
            f"check the address ('auto' needs 'ray start --head' on this machine, ray://HOST:10001 a Ray Client server)"
        ) from error
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm_handler)
    _check_cluster_resources(spec)
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`RayConnectionError` at once when ``address`` names a host and port that do not accept connections.

    ``ray.init`` retries an unreachable GCS for minutes (more than 2 in one try on 127.0.0.1:1). Addresses without a port
    (``auto``, or a name Ray cannot parse) are left to ``ray.init``.
    """
    target = address.removeprefix("ray://")
    host, separator, port = target.rpartition(":")
    if not separator or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayConnectionError(
            f"could not connect to the Ray cluster at {address!r}: {host}:{port} cannot be reached ({reason}); "
            f"check the address ('auto' needs 'ray start --head' on this machine, ray://HOST:10001 a Ray Client server)"
        ) from None


def check_cluster(launch: PreparedLaunch, tracking_uri: str) -> None:
    """On a cluster of several nodes, check that every node can read the storage folder and can reach the tracking server."""
    from ray.util import get_node_ip_address

    from sweeper.cluster_checks import alive_nodes, check_shared_storage, check_tracking_reachable

    nodes = alive_nodes()
    folder = launch.storage / launch.spec.name
    folder.mkdir(parents=True, exist_ok=True)
    check_shared_storage(folder, nodes)
    check_tracking_reachable(tracking_uri, nodes, get_node_ip_address())


def disconnect_ray() -> None:
    ray.shutdown()


def describe_cluster(address: str) -> str:
    """Return a line naming the Ray cluster joined at ``address``: its nodes, CPUs and GPUs."""
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return (
        f"Joined the Ray cluster at {address!r}: {nodes} node(s), {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs"
    )


def _check_cluster_resources(spec: SweepSpec) -> None:
    available = ray.cluster_resources()
    for resource, wanted in (("CPU", spec.resources.cpus), ("GPU", spec.resources.gpus)):
        if wanted > available.get(resource, 0):
            ray.shutdown()
            raise SpecError(
                f"spec field 'resources.{resource.lower()}s': got {wanted:g}, but the Ray cluster has "
                f"{available.get(resource, 0):g} {resource}s, so no trial could start; lower it or add nodes"
            )


def run_tuner(
    launch: PreparedLaunch,
    data: PreparedData,
    tracking: TrackingTarget,
    experiment_id: str,
    sweep_run_id: str,
    *,
    restore: bool = False,
) -> dict[str, Any]:
    """Run every trial of the sweep on the connected Ray and return a summary of their states.

    With ``restore`` Tune restores the sweep from its storage folder: finished trials stay
    finished, and unfinished and failed trials continue from their last checkpoints.
    """
    spec = launch.spec
    context = SweepContext(
        sweep_name=spec.name,
        tracking_uri=tracking.uri,
        experiment_id=experiment_id,
        sweep_run_id=sweep_run_id,
        results_dir=str(launch.storage / spec.name / RESULTS_FOLDER),
    )
    # The credentials travel like the data, through the object store, so no file or log of the sweep contains them.
    trainable = tune.with_parameters(
        run_trial,
        base_spec=launch.raw,
        data=data,
        lpips_state=launch.lpips_state,
        context=context,
        credentials=tracking.credentials,
    )
    trainable = tune.with_resources(trainable, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
    if spec.search.sampling == "optuna":
        # Trials report search.metric only in their final result; without this Tune rejects the
        # progress reports before it.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if restore:
        tuner = tune.Tuner.restore(
            str(launch.storage / spec.name), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = _new_tuner(spec, launch, trainable)
    with sigterm_as_interrupt(), _without_tune_resume_hint():
        results = tuner.fit()
    return summarize_results(results)


def _new_tuner(spec: SweepSpec, launch: PreparedLaunch, trainable: Any) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            num_samples=spec.search.num_samples,
            search_alg=build_search_alg(spec),
            max_concurrent_trials=spec.resources.max_concurrent_trials if spec.search.sampling == "optuna" else None,
        ),
        run_config=run_config(spec, launch.storage),
    )


def run_config(spec: SweepSpec, storage: Path) -> tune.RunConfig:
    """Return where Tune keeps the sweep, how many trial checkpoints it keeps, and how often it retries a trial."""
    return tune.RunConfig(
        name=spec.name,
        storage_path=str(storage),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.training.checkpoint.keep),
        failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        verbose=1,
    )


def build_search_alg(spec: SweepSpec) -> Searcher | BasicVariantGenerator:
    """Return the outer searcher: Tune's variant generator for grid and random sampling, or Optuna's TPE.

    Optuna proposes training hyperparameters from the trials already finished, optimising
    ``search.metric`` (a value every trial reports at its end). Tune saves the searcher with the
    experiment, so a restored sweep keeps every observation it had.
    """
    if spec.search.sampling != "optuna":
        # Tune ignores TuneConfig.max_concurrent_trials for a variant generator passed in, so it gets the limit here.
        return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=spec.resources.max_concurrent_trials or 0)
    return FinalResultOptunaSearch(metric=spec.search.metric, mode=spec.search.mode, seed=spec.search.seed)


class FinalResultOptunaSearch(OptunaSearch):
    """Tune's Optuna searcher, fed only by results that contain the searched metric.

    A trial reports its progress (training loss, cells done) many times, and the metric
    only at its end. The stock searcher reads the metric from every result.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


@contextmanager
def _without_tune_resume_hint() -> Iterator[None]:
    """Drop Tune's "Resume experiment with: Tuner.restore(...)" warning, because the CLI prints the `sweeper resume` command."""

    def keep_record(record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()

    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(keep_record)
    try:
        yield
    finally:
        tune_logger.removeFilter(keep_record)


def summarize_results(results: tune.ResultGrid) -> dict[str, Any]:
    """Collect each trial's state, sampled values and final metrics from a Tune result grid."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        trials.append(
            {
                "trial_id": metrics.get("trial_id", Path(result.path).name if result.path else "?"),
                "config": result.config or {},
                "state": _trial_state(result, metrics),
                "error": _error_line(result.error, result.path),
                "best_cell": metrics.get("best_cell", ""),
                "best_test_auprc": metrics.get("best_test_auprc"),
                "best_test_auroc": metrics.get("best_test_auroc"),
                "table1_markdown": metrics.get("table1_markdown", ""),
                "table1_title": metrics.get("table1_title", ""),
            }
        )
    return {
        "trials": trials,
        "errored": sum(1 for trial in trials if trial["state"] == "ERROR"),
        "incomplete": sum(1 for trial in trials if trial["state"] == "INCOMPLETE"),
    }


def _trial_state(result: tune.Result, metrics: dict[str, Any]) -> str:
    """Return ERROR, TERMINATED (the trial reported its final summary) or INCOMPLETE (it was stopped)."""
    if result.error:
        return "ERROR"
    return "TERMINATED" if metrics.get("phase") == "done" else "INCOMPLETE"


def _error_line(error: BaseException | None, trial_path: str | None) -> str:
    """Return the last line of a trial's error, which names the exception and its message.

    Tune keeps the traceback in the trial folder's ``error.txt``; the error object of a
    restored or retried trial may only point there.
    """
    if error is None:
        return ""
    text = str(error)
    if trial_path is not None:
        try:
            text = (Path(trial_path) / "error.txt").read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
