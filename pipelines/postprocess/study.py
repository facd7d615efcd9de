"""Optuna search of the post-processing of one grid cell on validation maps, and its report on test maps.

Each trial picks an anomaly map, a smoothing sigma, whether to score inside the head mask and
an image score, and returns the validation AUPRC or AUROC of the resulting image scores. No
diffusion runs because the maps are given, so scoring a candidate takes milliseconds. The
test split is read only after the search, to report the chosen candidate at the threshold
fitted on validation.

A search resumes where it stopped. The study lives in durable storage under a fixed name, and
each call runs only the trials still missing to reach ``n_trials`` complete ones. Every
trial gets a fresh TPE sampler seeded from the seed and the number of trials completed
before it. Its parameters therefore depend only on the earlier trials, not on how many calls
the search took, and a search cut short and resumed makes the same trials, and picks the
same best, as one that ran through.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from pipelines.metrics.detection import auprc, auroc
from pipelines.postprocess.candidates import Candidate, CandidateScorer
from pipelines.postprocess.result import PostprocessResult
from pipelines.postprocess.settings import PostprocessSettings, SplitMaps, check_split, check_study_name, searched_maps
from pipelines.postprocess.storage import describe_storage, open_storage
from pipelines.postprocess.thresholds import confusion_counts, fit_threshold

logger = logging.getLogger(__name__)

# Study attribute that records what a study searched, so a resumed search can check it.
SEARCH_ATTRIBUTE = "postprocess_search"
_OBJECTIVES = {"auprc": auprc, "auroc": auroc}


def search_postprocessing(
    val: SplitMaps,
    test: SplitMaps,
    settings: PostprocessSettings,
    *,
    study_name: str,
    folder: Path,
) -> PostprocessResult:
    """Search the post-processing of one cell on ``val``, then report the best candidate on ``test``.

    The study ``study_name`` is stored in a journal file in ``folder``, or in the RDB at
    ``settings.storage``. It is created or resumed: only the trials still missing to reach
    ``settings.n_trials`` complete ones run, and a study that already has more keeps them
    all and runs none. A study must have one process at a time, so trials left running by a
    stopped process are marked failed and run again. With a shared RDB, make the name unique
    per Tune trial and cell, such as ``f"{trial_id}-{cell.name}"``.

    Raises:
        ValueError: if a split or the study name is invalid, or the stored study was made
            with other search settings, seed or validation images.
    """
    check_study_name(study_name)
    maps = searched_maps(settings, val)
    needs_head_masks = True in settings.head_mask
    check_split(val, "val", maps, needs_head_masks=needs_head_masks)
    check_split(test, "test", maps, needs_head_masks=needs_head_masks)

    storage_name = describe_storage(settings.storage, folder, study_name)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(settings.storage, folder, study_name),
        sampler=_trial_sampler(settings.seed, 0),
        direction="maximize",
        load_if_exists=True,
    )
    _check_search(study, _search_record(settings, maps, val), storage_name)
    _fail_stale_trials(study)

    val_scorer = CandidateScorer(val)
    metric = _OBJECTIVES[settings.objective]

    def objective(trial: Trial) -> float:
        return metric(val.labels, val_scorer.scores(_suggest_candidate(trial, settings, maps)))

    _run_missing_trials(study, objective, settings)

    best = _best_trial(study)
    candidate = Candidate.from_params(best.params)
    val_scores = val_scorer.scores(candidate)
    threshold = fit_threshold(val.labels, val_scores, settings.threshold_rule)
    test_scores = CandidateScorer(test).scores(candidate)
    logger.info(
        "post-processing study %s: best trial %d, val %s %.4f, params %s, threshold %.6g",
        study_name, best.number, settings.objective, best.value, best.params, threshold,
    )

    return PostprocessResult(
        study_name=study_name,
        storage=storage_name,
        n_complete_trials=len(_complete_trials(study)),
        best_trial=best.number,
        best_params=dict(best.params),
        objective=settings.objective,
        best_value=float(best.value),
        threshold_rule=settings.threshold_rule,
        threshold=threshold,
        val_auprc=auprc(val.labels, val_scores),
        val_auroc=auroc(val.labels, val_scores),
        val_counts=confusion_counts(val.labels, val_scores, threshold),
        test_auprc=auprc(test.labels, test_scores),
        test_auroc=auroc(test.labels, test_scores),
        test_counts=confusion_counts(test.labels, test_scores, threshold),
        val_ids=list(val.ids),
        val_scores=np.array(val_scores),
        test_ids=list(test.ids),
        test_scores=np.array(test_scores),
        history=_history(study),
        importances=_importances(study),
    )


def _suggest_candidate(trial: Trial, settings: PostprocessSettings, maps: tuple[str, ...]) -> Candidate:
    """Draw one candidate; the percentile and k are drawn only for the scores that use them."""
    map_name = trial.suggest_categorical("map", maps)
    sigma = trial.suggest_categorical("sigma", settings.sigmas)
    head_mask = trial.suggest_categorical("head_mask", settings.head_mask)
    score = trial.suggest_categorical("score", settings.scores)
    percentile = trial.suggest_categorical("percentile", settings.percentiles) if score == "percentile" else None
    top_k_percent = trial.suggest_categorical("top_k_percent", settings.top_k_percents) if score == "top_k" else None
    return Candidate(map_name, sigma, head_mask, score, percentile=percentile, top_k_percent=top_k_percent)


def _trial_sampler(seed: int, completed: int) -> optuna.samplers.TPESampler:
    """Return a TPE sampler whose seed depends only on ``seed`` and the number of completed trials."""
    trial_seed = int(np.random.SeedSequence([seed, completed]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=trial_seed)


def _run_missing_trials(study: optuna.Study, objective: Callable[[Trial], float], settings: PostprocessSettings) -> None:
    """Run one trial at a time, each with its own sampler, until ``n_trials`` trials are complete."""
    completed = len(_complete_trials(study))
    if completed >= settings.n_trials:
        logger.info("post-processing study %s already has %d complete trials", study.study_name, completed)
        return

    logger.info("post-processing study %s: %d of %d trials complete, running the rest", study.study_name, completed, settings.n_trials)
    while completed < settings.n_trials:
        study.sampler = _trial_sampler(settings.seed, completed)
        study.optimize(objective, n_trials=1, n_jobs=1)
        now_completed = len(_complete_trials(study))
        if now_completed == completed:
            last = study.get_trials(deepcopy=False)[-1]
            raise RuntimeError(
                f"trial {last.number} of post-processing study {study.study_name} ended {last.state.name} "
                "without an error; check that every map gives finite scores"
            )
        completed = now_completed


def _complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _best_trial(study: optuna.Study) -> FrozenTrial:
    """Return the complete trial with the highest value, the earliest among ties, whatever the storage."""
    trials = _complete_trials(study)
    best_value = max(trial.value for trial in trials)
    return min((trial for trial in trials if trial.value == best_value), key=lambda trial: trial.number)


def _search_record(settings: PostprocessSettings, maps: tuple[str, ...], val: SplitMaps) -> dict[str, Any]:
    """Describe what the trials of a study depend on: the search space, objective, seed and validation images."""
    images = hashlib.sha256("\n".join(val.ids).encode() + np.asarray(val.labels, dtype=np.int64).tobytes())
    return {
        "maps": list(maps),
        "sigmas": list(settings.sigmas),
        "head_mask": list(settings.head_mask),
        "scores": list(settings.scores),
        "percentiles": list(settings.percentiles),
        "top_k_percents": list(settings.top_k_percents),
        "objective": settings.objective,
        "seed": settings.seed,
        "val_images": images.hexdigest(),
    }


def _check_search(study: optuna.Study, record: dict[str, Any], storage_name: str) -> None:
    """Record the search of a new study, or check that a resumed study searched the same."""
    stored = study.user_attrs.get(SEARCH_ATTRIBUTE)
    if stored is None:
        study.set_user_attr(SEARCH_ATTRIBUTE, record)
        return

    changed = sorted(key for key in record.keys() | stored.keys() if record.get(key) != stored.get(key))
    if changed:
        raise ValueError(
            f"study {study.study_name!r} in {storage_name} was run with other {', '.join(changed)}; "
            "pass a new study_name or delete the stored study to search again"
        )


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials left running by a stopped process as failed, so the count of complete trials is right."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.warning("post-processing study %s: trial %d was left running by a stopped process; marking it failed", study.study_name, trial.number)
        study.tell(trial.number, state=TrialState.FAIL)


def _history(study: optuna.Study) -> list[dict[str, Any]]:
    """List every finished trial with its number, state, value (None unless complete) and parameters."""
    return [
        {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": dict(trial.params)}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    ]


def _importances(study: optuna.Study) -> dict[str, float]:
    """Return PED-ANOVA parameter importances summing to 1, or an empty dict when they carry no information.

    PED-ANOVA is deterministic, unlike fANOVA, so one study always gives the same importances.
    It returns all zeros, with a warning, when there are too few trials or the best trials do
    not differ from the rest. This function returns an empty dict in both cases.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # normalize=False is experimental since Optuna 3.0, but only raw values show all zeros.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            raw = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=False)
    except (RuntimeError, ValueError) as error:
        logger.info("post-processing study %s: no parameter importances (%s)", study.study_name, error)
        return {}

    reasons = "; ".join(str(warning.message) for warning in caught)
    total = sum(raw.values())
    if total <= 0:
        logger.info("post-processing study %s: no parameter importances (%s)", study.study_name, reasons or "every importance is 0")
        return {}

    if reasons:
        logger.info("post-processing study %s: parameter importances came with warnings: %s", study.study_name, reasons)
    return {name: value / total for name, value in raw.items()}
