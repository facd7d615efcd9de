"""The outer sweep's Optuna searcher: it proposes training values and keeps its observations across a restore.

The trainable here is a cheap function of the sampled learning rate, so the test exercises
Tune's real searcher, experiment checkpoint and ``Tuner.restore`` in seconds. The searcher
is the one `sweeper launch` builds from a spec with ``search.sampling: optuna``.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from ray import tune

from mlflow_server import ServerInfo
from sweeper.search_space import param_space
from sweeper.spec import SpecError, validate
from sweeper.tune_runner import build_search_alg
from tests.conftest import PROJECT_ROOT
from tests.test_spec import minimal_spec

TRIALS = 3
BEFORE_RESTORE = 1


def optuna_spec(**search: Any) -> dict[str, Any]:
    raw = minimal_spec()
    raw["search"] = {
        "sampling": "optuna",
        "num_samples": TRIALS,
        "seed": 3,
        "parameters": {"training.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2}},
        **search,
    }
    return raw


def objective(config: dict[str, Any]) -> dict[str, float]:
    # Best at lr = 1e-3: a smooth function the TPE sampler can learn from.
    return {"best_val_auprc": 1.0 - (math.log10(config["training.lr"]) + 3.0) ** 2 / 10.0}


class InterruptAfter(tune.Callback):
    """Press Ctrl-C (SIGINT to this process) once ``count`` trials have completed, while ``flag`` exists.

    Tune handles the signal as a user's interruption: it saves the experiment and the searcher
    and returns. The callback is pickled with the experiment, so the flag keeps the restored
    sweep from being interrupted again.
    """

    def __init__(self, flag: Path, count: int) -> None:
        self.flag, self.count, self.completed = flag, count, 0

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.completed += 1
        if self.flag.exists() and self.completed == self.count:
            os.kill(os.getpid(), signal.SIGINT)


def saved_study(experiment: Path) -> optuna.Study:
    """Read the Optuna study out of the searcher state Tune saved in the experiment folder."""
    # Each driver session writes its own file, named by the session's start time. Tune copies
    # all of them to storage at once, so their modification times cannot tell them apart.
    state_file = max(experiment.glob("searcher-state-*.pkl"), key=lambda path: path.name)
    with state_file.open("rb") as handle:
        state = pickle.load(handle)
    return state["_ot_study"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_optuna_sampling_turns_values_into_choices() -> None:
    raw = optuna_spec(parameters={"training.lr": {"values": [1e-3, 5e-4]}})
    space = param_space(validate(raw))
    assert sorted(space["training.lr"].categories) == [5e-4, 1e-3]


def test_optuna_sampling_needs_the_validation_split() -> None:
    raw = optuna_spec()
    raw["evaluation"].update(splits=["test"], postprocess={"enabled": False})
    with pytest.raises(SpecError, match="search.sampling.*'val'"):
        validate(raw)


def test_searcher_keeps_observations_across_restore(tmp_path: Path, local_ray: None) -> None:
    spec = validate(optuna_spec())
    flag = tmp_path / "stop-early"
    flag.touch()
    tuner = tune.Tuner(
        objective,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(num_samples=TRIALS, search_alg=build_search_alg(spec), max_concurrent_trials=1),
        run_config=tune.RunConfig(
            name="outer",
            storage_path=str(tmp_path),
            callbacks=[InterruptAfter(flag, BEFORE_RESTORE)],
            verbose=0,
        ),
    )
    first = tuner.fit()
    experiment = tmp_path / "outer"

    study = saved_study(experiment)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == BEFORE_RESTORE
    assert len(first) == BEFORE_RESTORE

    flag.unlink()
    restored = tune.Tuner.restore(str(experiment), trainable=objective, resume_unfinished=True)
    results = restored.fit()

    assert len(results) == TRIALS
    assert not results.errors
    study = saved_study(experiment)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == TRIALS
    # The first observations are the same trials, not new ones that replaced them.
    observed = [trial.params["training.lr"] for trial in complete[:BEFORE_RESTORE]]
    assert observed == [result.config["training.lr"] for result in first]
    # Every trial has its own configuration: nothing ran twice.
    assert len({result.config["training.lr"] for result in results}) == TRIALS


@pytest.mark.slow
def test_optuna_sweep_runs_the_real_trial(server: ServerInfo, tmp_path: Path) -> None:
    """The real trial reports progress without the searched metric; only its final result has it."""
    parameters = "search.parameters={training.lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}}"
    command = [
        str(Path(sys.executable).parent / "sweeper"), "launch", str(PROJECT_ROOT / "configs" / "demo.yaml"),
        "--tracking-uri", server.uri, "--storage", str(tmp_path / "sweeps"), "--name", "optuna",
        "--set", "search.sampling=optuna", "--set", "search.num_samples=2", "--set", parameters,
        "--set", "training.epochs=1", "--set", "evaluation.t=[5]", "--set", "evaluation.methods={anoddpm: [gaussian]}",
        "--set", "evaluation.postprocess.n_trials=2", "--set", "evaluation.bootstrap.n_resamples=100",
        "--set", "data.sources.0.healthy=40", "--set", "data.sources.0.pathological=12",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "SWEEPER_HOME": str(tmp_path)})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count("TERMINATED") >= 2
