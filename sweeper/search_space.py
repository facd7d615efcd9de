"""The search space: spec parameters that vary between trials, as Ray Tune domains.

Each key of ``search.parameters`` is a dotted path into the spec (``training.lr``).
A list of ``values`` becomes a grid dimension under grid sampling and a uniform
choice under random sampling; a distribution becomes the matching Tune sampler.
Every candidate is validated against the whole spec before Ray starts: each listed
value, and both ends of each distribution.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from sweeper.spec import DistributionParameter, SpecError, SweepSpec, ValuesParameter, set_dotted, validate

# Sections that hold for the whole sweep: the data is prepared once on the driver, and
# tracking, storage and resources belong to the sweep, not to a trial.
SWEEP_WIDE_SECTIONS = ("search", "name", "description", "storage", "tracking", "resources", "data")
# Trial configurations validated before Ray starts; larger spaces are checked on a sample.
MAX_CONFIGURATIONS_CHECKED = 2000
# Integer ranges up to this size are checked value by value.
MAX_INTEGERS_CHECKED = 64


def check_search_space(raw: dict[str, Any], spec: SweepSpec) -> None:
    """Validate the spec for the combinations of search values a trial can get.

    Every combination of the listed values and of points in each distribution's range
    (both ends, interior points, and for integer ranges up to 64 values every value) is
    checked. Spaces with more than 2000 combinations are checked on a seeded sample that
    still contains every single candidate.
    """
    for key in spec.search.parameters:
        section = key.split(".")[0]
        if section in SWEEP_WIDE_SECTIONS:
            reason = "the data is prepared once per sweep" if section == "data" else f"{section!r} is sweep-wide"
            raise SpecError(
                f"spec field 'search.parameters.{key}': {reason} and cannot vary between trials; "
                f"search over model, training or evaluation settings"
            )
        if key.startswith("training.checkpoint"):
            raise SpecError(
                f"spec field 'search.parameters.{key}': Tune keeps checkpoints by one rule for the whole sweep, "
                "so it cannot vary between trials"
            )
        if key == "evaluation.lpips_weights":
            raise SpecError(
                "spec field 'search.parameters.evaluation.lpips_weights': the LPIPS weights are read once "
                "per sweep and cannot vary between trials"
            )

    keys = list(spec.search.parameters)
    candidates = [_candidates(spec.search.parameters[key]) for key in keys]
    for combination in _combinations(candidates, seed=spec.search.seed):
        trial = raw
        for key, value in zip(keys, combination):
            trial = set_dotted(trial, key, value)
        try:
            validate(trial)
        except SpecError as error:
            shown = ", ".join(f"{key}={value!r}" for key, value in zip(keys, combination))
            raise SpecError(f"the search space can give a trial with {shown}, which makes an invalid spec: {error}") from None


def _candidates(parameter: ValuesParameter | DistributionParameter) -> list[Any]:
    if isinstance(parameter, ValuesParameter):
        return parameter.values
    low, high = parameter.low, parameter.high
    if parameter.distribution == "randint":
        first, last = int(low), int(math.ceil(high)) - 1
        if last - first + 1 <= MAX_INTEGERS_CHECKED:
            return list(range(first, last + 1))
        return sorted({first, last, *(round(first + (last - first) * k / 63) for k in range(64))})
    if parameter.distribution == "loguniform":
        return [low, high, math.sqrt(low * high), low * (high / low) ** 0.37]
    return [low, high, (low + high) / 2, low + (high - low) * 0.37]


def _combinations(candidates: list[list[Any]], *, seed: int) -> list[tuple[Any, ...]]:
    total = math.prod(len(values) for values in candidates)
    if total <= MAX_CONFIGURATIONS_CHECKED:
        return list(itertools.product(*candidates))
    generator = random.Random(seed)
    # Every candidate appears at least once, then random combinations fill the budget.
    longest = max(len(values) for values in candidates)
    chosen = [tuple(values[index % len(values)] for values in candidates) for index in range(longest)]
    while len(chosen) < MAX_CONFIGURATIONS_CHECKED:
        chosen.append(tuple(generator.choice(values) for values in candidates))
    return chosen


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Build Tune's param_space: one domain per search parameter, keyed by its dotted path."""
    from ray import tune  # imported here so that validating a spec does not load Ray

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
