"""Tests for the checks on the post-processing search space, the split inputs and the study name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.postprocess.settings import PostprocessSettings, SplitMaps, check_split, check_study_name, searched_maps
from pipelines.postprocess.storage import describe_storage, journal_path

MAP_NAMES = ("mae", "lpips", "mae_lpips")


def make_split(count: int = 4, size: int = 8) -> SplitMaps:
    generator = np.random.default_rng(0)
    maps = {name: generator.random((count, 1, size, size), dtype=np.float32) for name in MAP_NAMES}
    masks = np.ones((count, 1, size, size), dtype=bool)
    return SplitMaps(labels=np.array([0, 1] * (count // 2)), maps=maps, head_masks=masks, ids=[f"image-{i}" for i in range(count)])


def test_defaults_cover_search_space() -> None:
    settings = PostprocessSettings()

    assert settings.maps == ("mae", "lpips", "mae_lpips", "autoddpm")
    assert settings.scores == ("mean", "max", "percentile", "top_k")
    assert settings.sigmas == (0.0, 1.0, 2.0, 4.0)
    assert settings.head_mask == (True, False)
    assert settings.objective == "auprc"
    assert settings.storage is None


def test_lists_become_tuples_of_floats() -> None:
    settings = PostprocessSettings(sigmas=[0, 2], percentiles=[99], top_k_percents=[5], maps=["mae"], head_mask=[True])

    assert settings.sigmas == (0.0, 2.0)
    assert all(isinstance(value, float) for value in settings.sigmas)
    assert settings.percentiles == (99.0,)
    assert settings.top_k_percents == (5.0,)
    assert settings.maps == ("mae",)
    assert settings.head_mask == (True,)


def test_unused_parameter_lists_may_be_empty() -> None:
    settings = PostprocessSettings(scores=("mean", "max"), percentiles=(), top_k_percents=())

    assert settings.percentiles == ()
    assert settings.top_k_percents == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_trials": 0}, "n_trials must be an integer of at least 1, but got 0"),
        ({"n_trials": True}, "n_trials must be an integer"),
        ({"seed": -1}, "seed must be an integer of at least 0"),
        ({"objective": "f1"}, r"objective must be one of \['auprc', 'auroc'\], but got 'f1'"),
        ({"threshold_rule": "auc"}, r"threshold_rule must be one of \['f1', 'youden'\]"),
        ({"maps": ("mae", "ssim")}, r"maps must be chosen from .*, but got \['ssim'\]"),
        ({"maps": ()}, "maps must list at least one choice"),
        ({"maps": "mae"}, "maps must be a list of choices, but got 'mae'"),
        ({"scores": ("median",)}, r"scores must be chosen from .*, but got \['median'\]"),
        ({"sigmas": (0.0, -1.0)}, "sigmas must be finite and at least 0 pixels"),
        ({"sigmas": (1.0, 1)}, "sigmas must not repeat a choice"),
        ({"sigmas": ("2",)}, "sigmas must contain only int or float values"),
        ({"percentiles": (0.0,)}, r"percentiles must lie in \(0, 100\]"),
        ({"percentiles": ()}, "percentiles must list at least one choice"),
        ({"top_k_percents": (150.0,)}, r"top_k_percents must lie in \(0, 100\]"),
        ({"head_mask": ("yes",)}, "head_mask must contain only bool values"),
        ({"head_mask": (1,)}, "head_mask must contain only bool values"),
        ({"storage": "studies.db"}, "storage must be None .* or an RDB URL"),
    ],
)
def test_settings_reject_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostprocessSettings(**changes)


def test_autoddpm_map_skipped_when_absent() -> None:
    split = make_split()

    assert searched_maps(PostprocessSettings(), split) == MAP_NAMES

    split.maps["autoddpm"] = split.maps["mae"]
    assert searched_maps(PostprocessSettings(), split) == (*MAP_NAMES, "autoddpm")
    assert searched_maps(PostprocessSettings(maps=("autoddpm",)), split) == ("autoddpm",)


def test_missing_required_map_rejected() -> None:
    split = make_split()
    del split.maps["lpips"]

    with pytest.raises(ValueError, match=r"the validation maps lack \['lpips'\]"):
        searched_maps(PostprocessSettings(), split)


def test_only_optional_map_absent_rejected() -> None:
    with pytest.raises(ValueError, match=r"none of the maps \['autoddpm'\] is in the validation maps"):
        searched_maps(PostprocessSettings(maps=("autoddpm",)), make_split())


def test_valid_split_passes() -> None:
    check_split(make_split(), "val", MAP_NAMES, needs_head_masks=True)


def _one_class(split: SplitMaps) -> None:
    split.labels = np.zeros_like(split.labels)


def _bad_map_shape(split: SplitMaps) -> None:
    split.maps["lpips"] = split.maps["lpips"][:, :, :4]


def _nan_map(split: SplitMaps) -> None:
    split.maps["mae"][0, 0, 0, 0] = np.nan


def _float_masks(split: SplitMaps) -> None:
    split.head_masks = split.head_masks.astype(np.float32)


def _empty_mask(split: SplitMaps) -> None:
    split.head_masks[2] = False


def _missing_map(split: SplitMaps) -> None:
    del split.maps["mae_lpips"]


def _short_ids(split: SplitMaps) -> None:
    split.ids = split.ids[:2]


def _wrong_count(split: SplitMaps) -> None:
    split.maps["mae"] = split.maps["mae"][:3]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_one_class, r"test labels must contain both 0 \(normal\) and 1 \(anomalous\) and nothing else, but got \[0\]"),
        (_bad_map_shape, r"test maps must share one shape, but 'lpips' has \(4, 1, 4, 8\)"),
        (_nan_map, "test map 'mae' contains NaN or infinite values"),
        (_float_masks, "test head_masks must be a bool array of shape"),
        (_empty_mask, r"test head masks of images \['image-2'\] are empty"),
        (_missing_map, r"test maps lack 'mae_lpips'"),
        (_short_ids, r"test ids must have one entry per label \(4\), but got 2"),
        (_wrong_count, r"test map 'mae' must have shape \(4, 1, H, W\), but got \(3, 1, 8, 8\)"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_split_check_rejects(corrupt, message: str) -> None:
    split = make_split()
    corrupt(split)

    with pytest.raises(ValueError, match=message):
        check_split(split, "test", MAP_NAMES, needs_head_masks=True)


def test_empty_mask_allowed_without_head_mask() -> None:
    split = make_split()
    split.head_masks[2] = False

    check_split(split, "test", MAP_NAMES, needs_head_masks=False)


@pytest.mark.parametrize("name", ["", "a/b", "-cell", "cell name", "../cell"])
def test_study_name_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="study_name must start with a letter or digit"):
        check_study_name(name)


def test_study_name_from_cell_accepted(tmp_path) -> None:
    check_study_name("anoddpm-gaussian-t50")

    assert journal_path(tmp_path, "anoddpm-gaussian-t50") == tmp_path / "anoddpm-gaussian-t50.optuna-journal.log"


def test_storage_description_hides_password(tmp_path) -> None:
    description = describe_storage("postgresql://sweeper:secret@127.0.0.1:5432/studies", tmp_path, "cell")

    assert "secret" not in description
    assert description == "postgresql://sweeper:***@127.0.0.1:5432/studies"
    assert describe_storage(None, tmp_path, "cell") == str(tmp_path / "cell.optuna-journal.log")
