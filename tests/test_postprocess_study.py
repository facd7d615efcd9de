"""Tests for the resumable, seeded post-processing search, on phantom images with real LPIPS maps.

The reconstructions are Gaussian blurs of the phantoms, not diffusion outputs, because the
search reads only maps. A blur gives maps that differ between map types, smoothing and
scores, so the objective varies across the search space.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from scipy import ndimage

from pipelines.data.phantoms import generate_synthetic_phantoms
from pipelines.metrics.detection import auprc, auroc
from pipelines.metrics.lpips import PerceptualDistance
from pipelines.metrics.maps import anomaly_maps
from pipelines.postprocess.candidates import Candidate, CandidateScorer
from pipelines.postprocess.settings import PostprocessSettings, SplitMaps
from pipelines.postprocess.storage import journal_path
from pipelines.postprocess.study import search_postprocessing
from pipelines.postprocess.thresholds import confusion_counts, fit_threshold
from tests.conftest import LPIPS_CHECKPOINT

SIZE = 64
PER_CLASS = 8
# More than TPE's 10 random start-up trials, so the model-based sampling runs too.
N_TRIALS = 14
SETTINGS = PostprocessSettings(n_trials=N_TRIALS, seed=3, sigmas=(0.0, 1.0, 3.0))


def phantom_split(distance: PerceptualDistance, *, seed: int) -> SplitMaps:
    """Build the maps of 8 healthy and 8 pathological phantoms against blurred reconstructions."""
    phantoms = generate_synthetic_phantoms(healthy=PER_CLASS, pathological=PER_CLASS, size=SIZE, seed=seed)
    images = np.stack([phantom.image for phantom in phantoms])[:, None]
    reconstructions = ndimage.gaussian_filter(images, sigma=(0, 0, 1.5, 1.5))
    maps = anomaly_maps(torch.from_numpy(images), torch.from_numpy(reconstructions), ["mae", "lpips", "mae_lpips"], distance=distance)
    return SplitMaps(
        labels=np.array([int(phantom.pathological) for phantom in phantoms]),
        maps={name: value.numpy() for name, value in maps.items()},
        head_masks=np.stack([phantom.head_mask for phantom in phantoms])[:, None],
        ids=[phantom.case_id for phantom in phantoms],
    )


@pytest.fixture(scope="module")
def splits() -> tuple[SplitMaps, SplitMaps]:
    distance = PerceptualDistance(LPIPS_CHECKPOINT)
    return phantom_split(distance, seed=0), phantom_split(distance, seed=1)


@pytest.fixture(scope="module")
def uninterrupted(splits, tmp_path_factory: pytest.TempPathFactory):
    val, test = splits
    return search_postprocessing(val, test, SETTINGS, study_name="anoddpm-gaussian-t50", folder=tmp_path_factory.mktemp("uninterrupted"))


def trial_params(result) -> list[dict]:
    return [entry["params"] for entry in result.history if entry["state"] == "COMPLETE"]


def test_result_consistent_with_best(uninterrupted, splits) -> None:
    val, test = splits
    result = uninterrupted
    candidate = Candidate.from_params(result.best_params)
    val_scores = CandidateScorer(val).scores(candidate)
    test_scores = CandidateScorer(test).scores(candidate)

    assert result.n_complete_trials == N_TRIALS
    assert result.best_value == max(entry["value"] for entry in result.history)
    assert result.best_value == auprc(val.labels, val_scores)
    assert result.val_auprc == result.best_value
    np.testing.assert_array_equal(result.val_scores, val_scores)
    np.testing.assert_array_equal(result.test_scores, test_scores)
    assert result.threshold == fit_threshold(val.labels, val_scores, "f1")
    assert result.test_auprc == auprc(test.labels, test_scores)
    assert result.test_auroc == auroc(test.labels, test_scores)
    assert result.test_counts == confusion_counts(test.labels, test_scores, result.threshold)
    assert result.val_counts == confusion_counts(val.labels, val_scores, result.threshold)
    assert result.test_ids == test.ids


def test_history_and_importances(uninterrupted) -> None:
    history = uninterrupted.history

    assert [entry["number"] for entry in history] == list(range(N_TRIALS))
    assert {"map", "sigma", "head_mask", "score"} <= set(history[0]["params"])
    assert all(entry["params"]["sigma"] in SETTINGS.sigmas for entry in history)
    assert all(("percentile" in entry["params"]) == (entry["params"]["score"] == "percentile") for entry in history)
    assert uninterrupted.importances
    assert sum(uninterrupted.importances.values()) == pytest.approx(1.0)
    assert set(uninterrupted.importances) <= {"map", "sigma", "head_mask", "score", "percentile", "top_k_percent"}


def test_search_explores_space(uninterrupted) -> None:
    values = {entry["value"] for entry in uninterrupted.history}
    maps = {entry["params"]["map"] for entry in uninterrupted.history}

    assert len(values) > 3
    assert maps == {"mae", "lpips", "mae_lpips"}


def test_result_to_json(uninterrupted) -> None:
    document = json.loads(json.dumps(uninterrupted.to_dict(), allow_nan=False))

    assert document["best_params"] == uninterrupted.best_params
    assert document["test"]["tp"] + document["test"]["fn"] == PER_CLASS
    assert document["test"]["sensitivity"] == uninterrupted.test_counts.sensitivity
    assert len(document["val_scores"]) == 2 * PER_CLASS
    assert document["storage"].endswith("anoddpm-gaussian-t50.optuna-journal.log")


def test_same_seed_same_search(uninterrupted, splits, tmp_path: Path) -> None:
    val, test = splits
    again = search_postprocessing(val, test, SETTINGS, study_name="anoddpm-gaussian-t50", folder=tmp_path)

    assert again.history == uninterrupted.history
    assert again.best_params == uninterrupted.best_params
    assert again.threshold == uninterrupted.threshold
    assert again.importances == uninterrupted.importances


def test_other_seed_other_trials(uninterrupted, splits, tmp_path: Path) -> None:
    val, test = splits
    other = search_postprocessing(val, test, replace(SETTINGS, seed=4), study_name="anoddpm-gaussian-t50", folder=tmp_path)

    assert trial_params(other) != trial_params(uninterrupted)


def test_test_data_never_chooses(uninterrupted, splits, tmp_path: Path) -> None:
    val, test = splits
    generator = np.random.default_rng(7)
    changed = SplitMaps(
        labels=1 - test.labels,
        maps={name: generator.permutation(values) * 3.0 for name, values in test.maps.items()},
        head_masks=test.head_masks,
        ids=test.ids,
    )

    result = search_postprocessing(val, changed, SETTINGS, study_name="anoddpm-gaussian-t50", folder=tmp_path)

    assert result.best_params == uninterrupted.best_params
    assert result.threshold == uninterrupted.threshold
    assert result.history == uninterrupted.history
    np.testing.assert_array_equal(result.val_scores, uninterrupted.val_scores)
    assert result.test_auprc != uninterrupted.test_auprc


def test_resumed_search_matches(uninterrupted, splits, tmp_path: Path) -> None:
    val, test = splits
    first = search_postprocessing(val, test, replace(SETTINGS, n_trials=4), study_name="anoddpm-gaussian-t50", folder=tmp_path)
    resumed = search_postprocessing(val, test, SETTINGS, study_name="anoddpm-gaussian-t50", folder=tmp_path)

    assert first.n_complete_trials == 4
    assert resumed.n_complete_trials == N_TRIALS
    assert resumed.history == uninterrupted.history
    assert resumed.best_params == uninterrupted.best_params
    assert resumed.threshold == uninterrupted.threshold


def test_trial_left_running_is_redone(uninterrupted, splits, tmp_path: Path) -> None:
    val, test = splits
    search_postprocessing(val, test, replace(SETTINGS, n_trials=5), study_name="anoddpm-gaussian-t50", folder=tmp_path)
    # A process stopped mid-trial leaves a running trial in the journal.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal_path(tmp_path, "anoddpm-gaussian-t50"))))
    optuna.load_study(study_name="anoddpm-gaussian-t50", storage=storage).ask()

    resumed = search_postprocessing(val, test, SETTINGS, study_name="anoddpm-gaussian-t50", folder=tmp_path)

    states = [entry["state"] for entry in resumed.history]
    assert states.count("FAIL") == 1
    assert states.count("COMPLETE") == N_TRIALS
    assert trial_params(resumed) == trial_params(uninterrupted)
    assert resumed.best_params == uninterrupted.best_params


def test_finished_study_runs_nothing(uninterrupted, splits, tmp_path: Path) -> None:
    val, test = splits
    search_postprocessing(val, test, SETTINGS, study_name="anoddpm-gaussian-t50", folder=tmp_path)

    again = search_postprocessing(val, test, replace(SETTINGS, n_trials=3), study_name="anoddpm-gaussian-t50", folder=tmp_path)

    assert again.history == uninterrupted.history
    assert again.best_params == uninterrupted.best_params


def test_changed_search_rejected(splits, tmp_path: Path) -> None:
    val, test = splits
    search_postprocessing(val, test, replace(SETTINGS, n_trials=2), study_name="cell", folder=tmp_path)

    with pytest.raises(ValueError, match=r"study 'cell' in .*cell.optuna-journal.log was run with other seed, sigmas; pass a new study_name"):
        search_postprocessing(val, test, replace(SETTINGS, n_trials=2, seed=9, sigmas=(0.0,)), study_name="cell", folder=tmp_path)


def test_rdb_storage(splits, tmp_path: Path) -> None:
    val, test = splits
    settings = replace(SETTINGS, n_trials=3, objective="auroc", threshold_rule="youden", storage=f"sqlite:///{tmp_path / 'studies.db'}")

    first = search_postprocessing(val, test, settings, study_name="cell", folder=tmp_path / "unused")
    resumed = search_postprocessing(val, test, replace(settings, n_trials=5), study_name="cell", folder=tmp_path / "unused")

    assert first.storage == settings.storage
    assert resumed.n_complete_trials == 5
    assert resumed.history[:3] == first.history
    assert resumed.best_value == auroc(val.labels, resumed.val_scores)
    assert resumed.threshold == fit_threshold(val.labels, resumed.val_scores, "youden")
    assert not (tmp_path / "unused").exists()


def test_autoddpm_map_searched_when_present(splits, tmp_path: Path) -> None:
    val, test = splits
    # The search handles any map named "autoddpm" alike, so the LPIPS map replaces AutoDDPM's here.
    with_autoddpm = [replace(split, maps={**split.maps, "autoddpm": split.maps["lpips"]}) for split in (val, test)]
    settings = replace(SETTINGS, n_trials=2, maps=("mae", "autoddpm"))

    search_postprocessing(val, test, settings, study_name="anoddpm", folder=tmp_path)
    search_postprocessing(*with_autoddpm, settings, study_name="autoddpm", folder=tmp_path)

    for name, expected in (("anoddpm", ("mae",)), ("autoddpm", ("mae", "autoddpm"))):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal_path(tmp_path, name))))
        trial = optuna.load_study(study_name=name, storage=storage).trials[0]
        assert trial.distributions["map"].choices == expected, name


@pytest.mark.parametrize("n_trials", [1, 3])
def test_constant_space_no_importances(splits, tmp_path: Path, n_trials: int) -> None:
    val, test = splits
    settings = replace(SETTINGS, n_trials=n_trials, maps=("mae",), sigmas=(0.0,), scores=("mean",), head_mask=(True,))

    result = search_postprocessing(val, test, settings, study_name="cell", folder=tmp_path)

    assert result.importances == {}
    assert result.best_params == {"map": "mae", "sigma": 0.0, "head_mask": True, "score": "mean"}
    assert len(result.history) == n_trials


def test_bad_study_name_rejected(splits, tmp_path: Path) -> None:
    val, test = splits

    with pytest.raises(ValueError, match="study_name must start with a letter or digit"):
        search_postprocessing(val, test, SETTINGS, study_name="../cell", folder=tmp_path)
    assert not any(tmp_path.iterdir())
