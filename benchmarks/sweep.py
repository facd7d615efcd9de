"""Benchmark of Ray Tune's cost per trial: N trivial trials through Tune against the same work in a plain loop.

Each trial runs the same small piece of PyTorch work (``WORK_STEPS`` matrix products) and
reports one result. The command runs N such trials with ``tune.Tuner`` on a local Ray
instance, one trial at a time, with the folder a sweep would write. The baseline calls the
work N times in a loop. One row starts a new worker process per trial, as `sweeper launch`
does; the other lets Tune reuse the worker (``reuse_actors=True``). Ray starts once before the timed runs, so its start-up is not part
of the ratio; the note gives the overhead per trial, (Tune - loop) / N. ``--quick`` runs
4 trials in place of 16.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import Context, Row, machine_for

TRIALS = 16
QUICK_TRIALS = 4
WORK_STEPS = 20
WORK_SIZE = 256
# Each timed Tune run takes seconds per trial, so fewer repeats than the default keep the row short.
MAX_REPEATS = 3


def work() -> float:
    """Do a fixed amount of CPU work, about what one cheap trial computes, and return a number from it."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.rand(WORK_SIZE, WORK_SIZE, generator=generator)
    for _ in range(WORK_STEPS):
        matrix = torch.tanh(matrix @ matrix / WORK_SIZE)
    return float(matrix.mean())


def _trainable(config: dict[str, Any]) -> dict[str, float]:
    return {"value": work() + config["index"]}


def tune_overhead_cpu(context: Context) -> list[Row]:
    """Time N trivial trials through Ray Tune, with and without reused workers, against N calls of the work in a loop."""
    import ray

    trials = QUICK_TRIALS if context.quick else TRIALS
    repeats = min(context.repeats, MAX_REPEATS)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start_s = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory(prefix="benchmark-tune-") as folder:

            def plain_loop() -> None:
                for index in range(trials):
                    work() + index

            baseline = context.time(plain_loop, repeats=repeats)
            timings = {
                reuse: context.time(lambda reuse=reuse: _through_tune(trials, Path(folder), reuse), repeats=repeats)
                for reuse in (False, True)
            }
    finally:
        ray.shutdown()

    machine = machine_for(torch.device("cpu"))
    baseline_command = f"for loop, {trials} calls of the work ({WORK_STEPS} tanh(matmul) steps at {WORK_SIZE}x{WORK_SIZE})"
    rows = []
    for reuse, timing in timings.items():
        overhead_s = (timing.median_s - baseline.median_s) / trials
        note = (
            f"{trials} trials, one at a time on 1 CPU; overhead {overhead_s:.2f} s per trial; "
            f"ray.init {ray_start_s:.1f} s, not timed"
        )
        command = f"tune.Tuner, {trials} function trials of the work, max_concurrent_trials=1, reuse_actors={reuse}"
        name = "tune_overhead_reuse_cpu" if reuse else "tune_overhead_cpu"
        rows.append(Row(name, machine, command, baseline_command, timing, baseline, note=note))
    return rows


def _through_tune(trials: int, folder: Path, reuse_actors: bool) -> None:
    from ray import tune

    tuner = tune.Tuner(
        _trainable,
        param_space={"index": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=str(folder), verbose=0),
    )
    results = tuner.fit()
    if results.errors or len(results) != trials:
        raise RuntimeError(f"expected {trials} finished trials, but got {len(results)} with {len(results.errors)} errors")


BENCHMARKS = {"tune_overhead_cpu": tune_overhead_cpu}
