"""The search space: spec parameters that vary between trials, as Ray Tune domains.

Each key of ``search.parameters`` is a dotted path into the spec (``training.lr``).
A list of ``values`` becomes a grid dimension under grid sampling and a uniform
choice under random sampling; a distribution becomes the matching Tune sampler.
Every candidate is validated against the whole spec before Ray starts: each listed
value, and both ends of each distribution.
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from sweeper.spec import DistributionParameter, SpecError, SweepSpec, ValuesParameter, set_dotted, validate


def check_search_space(raw: dict[str, Any], spec: SweepSpec) -> None:
    """Validate the spec with every candidate of every search parameter substituted in turn."""
    for key, parameter in spec.search.parameters.items():
        if key.split(".")[0] in ("search", "name", "storage", "tracking", "resources"):
            raise SpecError(
                f"spec field 'search.parameters.{key}': {key.split('.')[0]!r} is sweep-wide and cannot vary "
                f"between trials; search over model, training, data or evaluation settings"
            )
        if key == "evaluation.lpips_weights":
            raise SpecError(
                "spec field 'search.parameters.evaluation.lpips_weights': the LPIPS weights are read once "
                "per sweep and cannot vary between trials"
            )
        for candidate in _candidates(parameter):
            try:
                validate(set_dotted(raw, key, candidate))
            except SpecError as error:
                raise SpecError(f"search parameter {key!r} = {candidate!r} makes an invalid spec: {error}") from None


def _candidates(parameter: ValuesParameter | DistributionParameter) -> list[Any]:
    if isinstance(parameter, ValuesParameter):
        return parameter.values
    if parameter.distribution == "randint":
        return [int(parameter.low), int(math.ceil(parameter.high)) - 1]
    return [parameter.low, parameter.high]


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Build Tune's param_space: one domain per search parameter, keyed by its dotted path."""
    space: dict[str, Any] = {}
    for key, parameter in spec.search.parameters.items():
        if isinstance(parameter, ValuesParameter):
            if spec.search.sampling == "grid":
                space[key] = tune.grid_search(parameter.values)
            else:
                space[key] = tune.choice(parameter.values)
        elif parameter.distribution == "uniform":
            space[key] = tune.uniform(parameter.low, parameter.high)
        elif parameter.distribution == "loguniform":
            space[key] = tune.loguniform(parameter.low, parameter.high)
        else:
            space[key] = tune.randint(int(parameter.low), int(math.ceil(parameter.high)))
    return space


def count_trials(spec: SweepSpec) -> int:
    """Return how many trials the sweep will run."""
    grid = 1
    if spec.search.sampling == "grid":
        for parameter in spec.search.parameters.values():
            if isinstance(parameter, ValuesParameter):
                grid *= len(parameter.values)
    return grid * spec.search.num_samples


def apply_trial_config(raw: dict[str, Any], config: dict[str, Any]) -> SweepSpec:
    """Return the validated spec of one trial: the base spec with the trial's sampled values."""
    for key, value in sorted(config.items()):
        raw = set_dotted(raw, key, value)
    return validate(raw)
