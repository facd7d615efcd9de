"""Spec validation: the shipped configs load, and bad values give one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeper.search_space import apply_trial_config, check_search_space, count_trials, param_space
from sweeper.spec import SpecError, load_yaml, parse_override, set_dotted, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def minimal_spec() -> dict:
    return {
        "name": "unit",
        "data": {"sources": [{"kind": "synthetic", "healthy": 10, "pathological": 4}], "image_size": 32},
        "model": {"preset": "tiny", "T": 100, "reference_T": 1000},
        "training": {"epochs": 1},
        "evaluation": {"t": [5, 10]},
    }


@pytest.mark.parametrize("name", ["demo.yaml", "fbau-cpu.yaml", "paper.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    raw = load_yaml(CONFIGS / name)
    spec = validate(raw)
    check_search_space(raw, spec)
    assert count_trials(spec) >= 2


def test_paper_config_matches_paper_setup() -> None:
    spec = validate(load_yaml(CONFIGS / "paper.yaml"))
    assert spec.model.channels == [128, 256, 256]
    assert spec.model.attention_levels == [False, True, True]
    assert spec.model.num_head_channels == 256
    assert spec.model.T == 1000
    assert spec.evaluation.t == [50, 100, 150, 200, 250, 300]
    assert spec.data.image_size == 128
    assert spec.evaluation.autoddpm.resample_steps == 5


def test_preset_fills_and_explicit_values_win() -> None:
    raw = set_dotted(minimal_spec(), "model.channels", [64, 128, 128])
    spec = validate(raw)
    assert spec.model.channels == [64, 128, 128]
    assert spec.model.num_head_channels == 64  # from the tiny preset


def test_noise_types_follow_grid() -> None:
    raw = set_dotted(minimal_spec(), "evaluation.methods", {"autoddpm": ["gaussian"]})
    assert validate(raw).noise_types == ["gaussian"]
    assert validate(minimal_spec()).noise_types == ["gaussian", "simplex"]


BAD_VALUES = [
    ("evaluation.t", [5, 150], r"'evaluation.t\[1\]': got 150, expected a noise level from 1 to model.T \(100\)"),
    ("evaluation.methods", {"anoddpm": ["gaussian"], "vae": ["gaussian"]}, r"evaluation.methods.*'vae'.*'anoddpm' or 'autoddpm'"),
    ("evaluation.methods", {"anoddpm": ["perlin"]}, r"evaluation.methods.anoddpm\[0\]'.*'perlin'.*'gaussian' or 'simplex'"),
    ("evaluation.methods", {}, r"evaluation.methods': the grid is empty"),
    ("evaluation.methods", {"anoddpm": []}, r"evaluation.methods.anoddpm': got an empty list"),
    ("resources.gpus", 0.3, r"'resources.gpus': got 0.3, expected 0, a fraction 1/k"),
    ("training.lr", -0.001, r"'training.lr': got -0.001, input should be greater than 0"),
    ("training.epochs", "many", r"'training.epochs': got 'many', input should be a valid integer"),
    ("training.epoch", 3, r"unknown spec field 'training.epoch': did you mean 'training.epochs'\?|did you mean 'epochs'"),
    ("model.reference_T", 250, r"'model.reference_T': got 250, expected a multiple of model.T \(100\)"),
    ("data.image_size", 16, r"'data.image_size': got 16, expected at least 31 pixels"),
    ("data.image_size", 36 + 2, r"'data.image_size': got 38, expected a multiple of 4"),
    ("evaluation.autoddpm.t_inpaint", 101, r"'evaluation.autoddpm.t_inpaint': got 101, expected at most model.T"),
    ("evaluation.score_map", "ssim", r"'evaluation.score_map': got 'ssim'"),
    ("data.split.val_fraction", 0.85, r"val_fraction \+ test_fraction must be below 1"),
    ("data.sources", [], r"'data.sources': got \[\], list should have at least 1 item"),
    ("data.sources", [{"kind": "dicom-folder", "path": "x"}], r"'data.sources\[0\].kind': got 'dicom-folder', expected one of 'folder-csv'"),
    ("name", "bad name!", r"'name': got 'bad name!'"),
    ("model.preset", "huge", r"'model.preset': got 'huge'"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES, ids=[case[0] + "=" + repr(case[1]) for case in BAD_VALUES])
def test_bad_value_names_field(key: str, value: object, message: str) -> None:
    raw = set_dotted(minimal_spec(), key, value)
    with pytest.raises(SpecError, match=message) as caught:
        validate(raw)
    assert "\n" not in str(caught.value)


def test_unknown_key_suggests_closest() -> None:
    raw = set_dotted(minimal_spec(), "training.batchsize", 8)
    with pytest.raises(SpecError, match=r"unknown spec field 'training.batchsize': did you mean 'batch_size'\?"):
        validate(raw)


def test_unknown_section_lists_choices() -> None:
    raw = {**minimal_spec(), "modle": {"T": 10}}
    with pytest.raises(SpecError, match=r"unknown spec field 'modle': did you mean 'model'\?"):
        validate(raw)


def test_epochs_and_steps_exclusive() -> None:
    raw = set_dotted(minimal_spec(), "training.steps", 10)
    with pytest.raises(SpecError, match=r"set exactly one of epochs or steps, but got epochs=1, steps=10"):
        validate(raw)


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"is not valid YAML at line \d+"):
        load_yaml(path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read spec file .*nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")


def test_override_parses_yaml_values() -> None:
    assert parse_override("training.lr=3e-4") == ("training.lr", 3e-4)
    assert parse_override("evaluation.t=[5, 10]") == ("evaluation.t", [5, 10])
    assert parse_override("data.sources.0.healthy=12") == ("data.sources.0.healthy", 12)


def test_override_without_equals_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"invalid --set 'training.lr': expected dotted.key=value"):
        parse_override("training.lr")


def test_set_dotted_indexes_lists() -> None:
    raw = set_dotted(minimal_spec(), "data.sources.0.healthy", 99)
    assert raw["data"]["sources"][0]["healthy"] == 99
    with pytest.raises(SpecError, match=r"expected a list index below 1, but got '3'"):
        set_dotted(minimal_spec(), "data.sources.3.healthy", 1)


def test_search_candidate_validated() -> None:
    raw = set_dotted(minimal_spec(), "search.parameters", {"evaluation.t": {"values": [[5], [500]]}})
    spec = validate(raw)
    with pytest.raises(SpecError, match=r"the search space can give a trial with evaluation.t=\[500\], which makes an invalid spec: .*expected a noise level"):
        check_search_space(raw, spec)


def test_search_distribution_ends_validated() -> None:
    raw = set_dotted(minimal_spec(), "search.parameters", {"training.lr": {"distribution": "uniform", "low": -1, "high": 1}})
    spec = validate(raw)
    with pytest.raises(SpecError, match=r"the search space can give a trial with training.lr=-1.0, which makes an invalid spec"):
        check_search_space(raw, spec)


def test_search_over_sweep_wide_field_rejected() -> None:
    raw = set_dotted(minimal_spec(), "search.parameters", {"resources.cpus": {"values": [1, 2]}})
    spec = validate(raw)
    with pytest.raises(SpecError, match=r"'resources' is sweep-wide and cannot vary"):
        check_search_space(raw, spec)


def test_grid_and_random_param_space() -> None:
    raw = set_dotted(minimal_spec(), "search.parameters", {"training.seed": {"values": [0, 1, 2]}, "training.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3}})
    spec = validate(raw)
    space = param_space(spec)
    assert space["training.seed"] == {"grid_search": [0, 1, 2]}
    assert type(space["training.lr"]).__name__ == "Float"
    assert count_trials(spec) == 3

    random = validate(set_dotted(set_dotted(raw, "search.sampling", "random"), "search.num_samples", 4))
    assert type(param_space(random)["training.seed"]).__name__ == "Categorical"
    assert count_trials(random) == 4


def test_apply_trial_config_sets_values() -> None:
    spec = apply_trial_config(minimal_spec(), {"training.lr": 0.002, "model.channels": [64, 64, 64]})
    assert spec.training.lr == 0.002
    assert spec.model.channels == [64, 64, 64]


def test_spec_round_trips_through_yaml() -> None:
    spec = validate(minimal_spec())
    again = validate(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again == spec


def search(raw: dict, parameters: dict) -> dict:
    return set_dotted(raw, "search.parameters", parameters)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"data.image_size": {"values": [32, 64]}}, r"the data is prepared once per sweep and cannot vary between trials"),
        ({"model.T": {"values": [10, 100]}, "evaluation.t": {"values": [[5], [50]]}}, r"trial with model.T=10, evaluation.t=\[50\]"),
        ({"training.batch_size": {"distribution": "uniform", "low": 8, "high": 32}}, r"training.batch_size=.*input should be a valid integer"),
        ({"model.T": {"distribution": "randint", "low": 20, "high": 60}}, r"model.T=21, which makes an invalid spec: spec field 'model.reference_T': got 1000, expected a multiple of model.T \(21\)"),
    ],
    ids=["data-section", "T-and-t-combination", "uniform-on-integer", "randint-non-divisor"],
)
def test_search_space_checks_combinations(parameters: dict, message: str) -> None:
    raw = search(set_dotted(minimal_spec(), "evaluation.autoddpm.t_inpaint", 2), parameters)
    spec = validate(raw)
    with pytest.raises(SpecError, match=message):
        check_search_space(raw, spec)


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ({"distribution": "loguniform", "low": 0, "high": 1}, r"loguniform needs low > 0, but got low=0"),
        ({"distribution": "uniform", "low": 2, "high": 1}, r"low must be below high, but got low=2.0, high=1.0"),
        ({"distribution": "normal", "low": 0, "high": 1}, r"distribution': got 'normal'"),
        ({"valuse": [1, 2]}, r"expected a mapping with 'values: \[...\]' or 'distribution"),
    ],
    ids=["loguniform-zero", "reversed", "unknown-distribution", "misspelt-values"],
)
def test_search_parameter_errors_are_precise(parameter: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate(search(minimal_spec(), {"training.lr": parameter}))


def test_head_channels_must_divide_attention_width() -> None:
    raw = set_dotted(minimal_spec(), "model.num_head_channels", 48)
    with pytest.raises(SpecError, match=r"'model.num_head_channels': got 48, expected a divisor of model.channels\[2\] \(64\)"):
        validate(raw)


@pytest.mark.parametrize(("key", "value"), [("training.lr", True), ("training.weight_decay", float("inf")), ("resources.cpus", float("nan"))])
def test_non_numbers_rejected(key: str, value: object) -> None:
    with pytest.raises(SpecError, match=rf"spec field '{key.split('.')[0]}|{key}"):
        validate(set_dotted(minimal_spec(), key, value))


def test_source_without_kind_lists_kinds() -> None:
    raw = set_dotted(minimal_spec(), "data.sources", [{"path": "x"}])
    with pytest.raises(SpecError, match=r"missing spec field 'data.sources\[0\].kind': each data source needs a kind, one of 'folder-csv'"):
        validate(raw)
