"""Running the trials with Ray Tune, locally or on a Ray cluster."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

import mlflow_server
import pipelines
import sweeper
import trainables
from sweeper.search_space import param_space
from trainables.trial import SweepContext, run_trial

if TYPE_CHECKING:
    from pipelines.data.dataset import PreparedData
    from sweeper.launch import PreparedLaunch
    from sweeper.tracking_setup import TrackingTarget

logger = logging.getLogger(__name__)

# Set in every trial's process. MLflow would otherwise print a "View run" link per run it
# ends and send usage telemetry to an outside host.
WORKER_ENVIRONMENT = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def connect_ray(address: str | None, worker_environment: dict[str, str] | None = None) -> bool:
    """Start local Ray, or join the cluster at ``address``; return whether this call started it."""
    if ray.is_initialized():
        return False
    runtime_env: dict[str, Any] = {"env_vars": {**WORKER_ENVIRONMENT, **(worker_environment or {})}}
    if address is None:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env)
    else:
        # The project's code travels with the job, so cluster nodes need no copy of it.
        runtime_env["py_modules"] = [
            str(Path(package.__file__).parent) for package in (pipelines, sweeper, trainables, mlflow_server)
        ]
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    return True


def run_tuner(
    launch: PreparedLaunch,
    data: PreparedData,
    tracking: TrackingTarget,
    experiment_id: str,
    sweep_run_id: str,
    *,
    address: str | None,
) -> dict[str, Any]:
    """Run every trial of the sweep and return a summary of their states and best results."""
    spec = launch.spec
    # numba's parallel loops (used by opensimplex) start one spinning thread per core unless
    # NUMBA_NUM_THREADS is set, and those threads starve the trial's own PyTorch thread.
    started = connect_ray(address, {"NUMBA_NUM_THREADS": str(max(1, int(spec.resources.cpus)))})
    try:
        context = SweepContext(
            sweep_name=spec.name, tracking_uri=tracking.uri, experiment_id=experiment_id, sweep_run_id=sweep_run_id
        )
        trainable = tune.with_parameters(
            run_trial, base_spec=launch.raw, data=data, lpips_state=launch.lpips_state, context=context
        )
        trainable = tune.with_resources(trainable, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                num_samples=spec.search.num_samples,
                search_alg=BasicVariantGenerator(random_state=spec.search.seed),
                max_concurrent_trials=spec.resources.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(name=spec.name, storage_path=str(launch.storage), verbose=1),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return summarize_results(results)


def summarize_results(results: tune.ResultGrid) -> dict[str, Any]:
    """Collect each trial's state, sampled values and final metrics from a Tune result grid."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        trials.append(
            {
                "trial_id": metrics.get("trial_id", Path(result.path).name),
                "config": result.config,
                "state": _trial_state(result, metrics),
                "error": str(result.error).splitlines()[0] if result.error else "",
                "best_cell": metrics.get("best_cell", ""),
                "best_test_auprc": metrics.get("best_test_auprc"),
                "best_test_auroc": metrics.get("best_test_auroc"),
                "table1_markdown": metrics.get("table1_markdown", ""),
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
