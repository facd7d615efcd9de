"""The post-processing search space and the per-split inputs it is searched on, both checked up front."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from pipelines.postprocess.scoring import SCORE_NAMES
from pipelines.postprocess.thresholds import ThresholdRule

Objective = Literal["auprc", "auroc"]

# Only AutoDDPM cells have this map, so the search uses it where the validation split has it.
OPTIONAL_MAPS = frozenset({"autoddpm"})
KNOWN_MAPS = ("mae", "lpips", "mae_lpips", "autoddpm")
STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class PostprocessSettings:
    """The search space, objective, threshold rule, trial budget and study storage of one search.

    Smoothing widths ``sigmas`` (pixels, Gaussian standard deviation) are a list of choices,
    not a range, because smoothing is the costliest step of a candidate. With a list, each
    (map, sigma) pair is smoothed once per split and cached. Every later candidate then only
    aggregates and ranks, which takes milliseconds. A sigma of 0 means no smoothing.

    ``storage`` is ``None`` for an Optuna journal file in the folder given to the search,
    or an RDB URL such as ``sqlite:///path/postprocess.db`` or ``postgresql://host/db``.
    Sequences given as lists (for example from YAML) are stored as tuples.
    """

    n_trials: int = 50
    seed: int = 0
    objective: Objective = "auprc"
    threshold_rule: ThresholdRule = "f1"
    maps: tuple[str, ...] = KNOWN_MAPS
    sigmas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    scores: tuple[str, ...] = SCORE_NAMES
    percentiles: tuple[float, ...] = (95.0, 99.0)
    top_k_percents: tuple[float, ...] = (1.0, 5.0, 10.0)
    head_mask: tuple[bool, ...] = (True, False)
    storage: str | None = None

    def __post_init__(self) -> None:
        _check_int("n_trials", self.n_trials, minimum=1)
        _check_int("seed", self.seed, minimum=0)

        if self.objective not in get_args(Objective):
            raise ValueError(f"objective must be one of {list(get_args(Objective))}, but got {self.objective!r}")

        if self.threshold_rule not in get_args(ThresholdRule):
            raise ValueError(f"threshold_rule must be one of {list(get_args(ThresholdRule))}, but got {self.threshold_rule!r}")

        maps = _choices("maps", self.maps, str)
        unknown = [name for name in maps if name not in KNOWN_MAPS]
        if unknown:
            raise ValueError(f"maps must be chosen from {list(KNOWN_MAPS)}, but got {unknown}")

        scores = _choices("scores", self.scores, str)
        unknown = [name for name in scores if name not in SCORE_NAMES]
        if unknown:
            raise ValueError(f"scores must be chosen from {list(SCORE_NAMES)}, but got {unknown}")

        sigmas = tuple(float(value) for value in _choices("sigmas", self.sigmas, (int, float)))
        if not all(math.isfinite(value) and value >= 0 for value in sigmas):
            raise ValueError(f"sigmas must be finite and at least 0 pixels, but got {list(sigmas)}")

        percentiles = tuple(float(value) for value in _choices("percentiles", self.percentiles, (int, float), allow_empty="percentile" not in scores))
        if not all(0 < value <= 100 for value in percentiles):
            raise ValueError(f"percentiles must lie in (0, 100], but got {list(percentiles)}")

        top_k_percents = tuple(float(value) for value in _choices("top_k_percents", self.top_k_percents, (int, float), allow_empty="top_k" not in scores))
        if not all(0 < value <= 100 for value in top_k_percents):
            raise ValueError(f"top_k_percents must lie in (0, 100], but got {list(top_k_percents)}")

        head_mask = _choices("head_mask", self.head_mask, bool)

        if self.storage is not None and "://" not in self.storage:
            raise ValueError(
                f"storage must be None (a journal file in the trial folder) or an RDB URL such as "
                f"sqlite:///path/postprocess.db, but got {self.storage!r}"
            )

        for name, value in (
            ("maps", maps),
            ("scores", scores),
            ("sigmas", sigmas),
            ("percentiles", percentiles),
            ("top_k_percents", top_k_percents),
            ("head_mask", head_mask),
        ):
            object.__setattr__(self, name, value)


@dataclass
class SplitMaps:
    """The anomaly maps of one cell on one split, with labels (1 = anomalous), head masks and ids.

    ``maps`` are float arrays of shape ``(N, 1, H, W)`` by name, ``head_masks`` a boolean array
    of the same shape and ``labels`` 0/1 of shape ``(N,)``.
    """

    labels: np.ndarray
    maps: dict[str, np.ndarray]
    head_masks: np.ndarray
    ids: list[str] = field(default_factory=list)


def searched_maps(settings: PostprocessSettings, val: SplitMaps) -> tuple[str, ...]:
    """Return the maps of ``settings`` that the search tries, skipping optional maps that ``val`` lacks.

    Raises:
        ValueError: if a map that is not optional is missing from ``val``.
    """
    missing = [name for name in settings.maps if name not in val.maps and name not in OPTIONAL_MAPS]
    if missing:
        raise ValueError(f"the validation maps lack {missing} (they contain {sorted(val.maps)}); remove them from maps")

    chosen = tuple(name for name in settings.maps if name in val.maps)
    if not chosen:
        raise ValueError(f"none of the maps {list(settings.maps)} is in the validation maps {sorted(val.maps)}; add one to maps")
    return chosen


def check_split(split: SplitMaps, role: str, map_names: Sequence[str], *, needs_head_masks: bool) -> None:
    """Check that one split has binary labels of both classes and finite maps, masks and ids of one size.

    Raises:
        ValueError: naming the split, the value at fault and how to fix it.
    """
    labels = np.asarray(split.labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"{role} labels must be a non-empty array of shape (N,), but got shape {labels.shape}")

    present = sorted(set(np.unique(labels).tolist()))
    if present != [0, 1]:
        raise ValueError(f"{role} labels must contain both 0 (normal) and 1 (anomalous) and nothing else, but got {present}")

    count = labels.size
    if split.ids and len(split.ids) != count:
        raise ValueError(f"{role} ids must have one entry per label ({count}), but got {len(split.ids)}")

    shape = None
    for name in map_names:
        if name not in split.maps:
            raise ValueError(f"{role} maps lack {name!r} (they contain {sorted(split.maps)}); give every split the same maps")
        values = split.maps[name]
        if values.ndim != 4 or values.shape[0] != count or values.shape[1] != 1:
            raise ValueError(f"{role} map {name!r} must have shape ({count}, 1, H, W), but got {values.shape}")
        if shape is not None and values.shape != shape:
            raise ValueError(f"{role} maps must share one shape, but {name!r} has {values.shape} and others {shape}")
        shape = values.shape
        if not np.isfinite(values).all():
            raise ValueError(f"{role} map {name!r} contains NaN or infinite values; check the reconstructions")

    masks = split.head_masks
    if masks.shape != shape or masks.dtype != np.bool_:
        raise ValueError(f"{role} head_masks must be a bool array of shape {shape}, but got {masks.dtype} {masks.shape}")

    if needs_head_masks:
        empty = np.flatnonzero(~masks.reshape(count, -1).any(axis=1))
        if empty.size:
            names = [split.ids[i] for i in empty[:5]] if split.ids else empty[:5].tolist()
            raise ValueError(f"{role} head masks of images {names} are empty; fix them or search with head_mask=(False,)")


def check_study_name(study_name: str) -> None:
    """Check that ``study_name`` can name a study and its journal file.

    Raises:
        ValueError: if it has characters other than letters, digits, ``.``, ``_`` and ``-``.
    """
    if not STUDY_NAME_PATTERN.fullmatch(study_name):
        raise ValueError(
            f"study_name must start with a letter or digit and contain only letters, digits, '.', '_' and '-', "
            f"but got {study_name!r}; derive it from the cell name, such as 'anoddpm-gaussian-t50'"
        )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, but got {value!r}")


def _choices(name: str, values: Sequence[object], kinds: type | tuple[type, ...], *, allow_empty: bool = False) -> tuple:
    """Return ``values`` as a tuple after checking their type, that they are distinct and, unless allowed, not empty."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of choices, but got {values!r}")

    chosen = tuple(values)
    if not chosen and not allow_empty:
        raise ValueError(f"{name} must list at least one choice, but got none")

    wrong = [value for value in chosen if not isinstance(value, kinds) or (kinds is not bool and isinstance(value, bool))]
    if wrong:
        raise ValueError(f"{name} must contain only {_type_names(kinds)} values, but got {wrong}")

    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{name} must not repeat a choice, but got {list(chosen)}")
    return chosen


def _type_names(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(kind.__name__ for kind in (kinds if isinstance(kinds, tuple) else (kinds,)))
