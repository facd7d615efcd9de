"""The sweep spec: a YAML file, validated in full before Ray starts.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an
error with a suggestion. Checks that span sections (t ≤ T, image size against the
UNet depth) run in :func:`check_consistency`. All problems surface as one-line
:class:`SpecError` messages naming the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from pipelines.curation.gestational_age import parse_gestational_age
from pipelines.curation.labels import SONONET_LABELS
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

Method = Literal["anoddpm", "autoddpm"]
NoiseType = Literal["gaussian", "simplex"]
AnomalyMap = Literal["mae", "lpips", "mae_lpips"]
# The post-processing search may also use AutoDDPM's own map, on AutoDDPM cells.
PostprocessMap = Literal["mae", "lpips", "mae_lpips", "autoddpm"]
EvalSplit = Literal["val", "test"]

# Smallest image side that LPIPS's AlexNet trunk accepts (lpips 0.1.4); every cell logs LPIPS.
MIN_IMAGE_SIZE = 31

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The UNet of Mykula et al.: widths 128, 256, 256, attention at the two deeper levels.
    "reference": {
        "channels": [128, 256, 256],
        "attention_levels": [False, True, True],
        "num_res_blocks": 1,
        "num_head_channels": 256,
        "norm_num_groups": 32,
    },
    # A CPU-sized UNet for demos and tests.
    "tiny": {
        "channels": [32, 64, 64],
        "attention_levels": [False, False, True],
        "num_res_blocks": 1,
        "num_head_channels": 64,
        "norm_num_groups": 32,
    },
}


class SpecError(ValueError):
    """An invalid sweep spec; the message is one line that names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """Reject ``true``/``false`` given for a number, which pydantic would read as 1 or 0."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is not None and isinstance(value, bool) and _is_number_type(field.annotation):
                    raise ValueError(f"{name} must be a number, but got {str(value).lower()}")
        return data


def _is_number_type(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    arguments = getattr(annotation, "__args__", ())
    return bool(arguments) and bool not in arguments and all(argument in (int, float, type(None)) for argument in arguments)


# --- data -------------------------------------------------------------------------------


# Where a source's images may go: shared out by group, training only, or val and test only.
Role = Literal["split", "train", "eval"]
Label = Literal["healthy", "pathological"]


class RoboflowSource(_Section):
    """Roboflow's multi-label classification export (train/, valid/, test/ with _classes.csv)."""

    kind: Literal["roboflow-multilabel"]
    path: str
    name: str | None = None
    role: Role = "split"
    splits: list[str] = Field(default_factory=lambda: ["train", "valid", "test"], min_length=1)
    healthy_label: str = "normal"


class FolderCsvSource(_Section):
    """A folder of images plus a CSV with file, label and group columns."""

    kind: Literal["folder-csv"]
    path: str
    name: str | None = None
    role: Role = "split"
    csv: str = "labels.csv"
    file_column: str = "file"
    label_column: str = "label"
    group_column: str | None = "group"
    healthy_labels: list[str] = Field(default_factory=lambda: ["healthy", "normal", "0"], min_length=1)
    ga_column: str | None = None
    ga_unit: Literal["weeks", "days"] = "weeks"
    pixel_spacing_column: str | None = None
    dicom_frame: int = Field(0, ge=0, description="Frame of a DICOM cine loop to use (0 = the first).")


class HC18Source(_Section):
    """The HC18 challenge training set; gestational age comes from its head circumference."""

    kind: Literal["hc18"]
    path: str
    name: str | None = None
    role: Role = "train"


class SyntheticSource(_Section):
    """Generated fetal-head phantoms, for the zero-set-up demo (clearly not real data)."""

    kind: Literal["synthetic"]
    name: str | None = None
    role: Role = "split"
    healthy: int = Field(160, ge=1)
    pathological: int = Field(40, ge=1)
    size: int = Field(128, ge=32, le=1024)
    seed: int = 0


Source = Annotated[Union[RoboflowSource, FolderCsvSource, HC18Source, SyntheticSource], Field(discriminator="kind")]


class LabelCounts(_Section):
    healthy: int | None = Field(None, ge=1)
    pathological: int | None = Field(None, ge=1)


class SplitSpec(_Section):
    """Group-level split: no source group falls in two splits."""

    seed: int = 0
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    images_per_frame: int | None = Field(1, ge=1)
    max_val: LabelCounts = Field(default_factory=LabelCounts)
    max_test: LabelCounts = Field(default_factory=LabelCounts)
    max_train: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _fractions_leave_a_training_set(self) -> SplitSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 to leave training groups, "
                f"but got {self.val_fraction} + {self.test_fraction}"
            )
        return self


class PreprocessingSpec(_Section):
    percentile: float = Field(98.0, gt=50, le=100)


class GestationalAgeSpec(_Section):
    """Keep images whose gestational age lies in the window; ``missing`` decides for images without one."""

    enabled: bool = True
    window: tuple[str | float, str | float] = ("19+0", "22+6")
    missing: Literal["keep", "drop"] = "keep"
    apply_to: list[Label] = Field(default_factory=lambda: ["healthy", "pathological"])

    @field_validator("window", mode="before")
    @classmethod
    def _no_booleans_in_window(cls, window: Any) -> Any:
        """Reject ``true``/``false`` as an age, which pydantic would read as 1 or 0 weeks."""
        if isinstance(window, (list, tuple)) and any(isinstance(value, bool) for value in window):
            raise ValueError("expected gestational ages such as ['19+0', '22+6'], but got a true/false value")
        return window

    @field_validator("window")
    @classmethod
    def _window_in_weeks(cls, window: tuple[str | float, str | float]) -> tuple[str | float, str | float]:
        low, high = (parse_gestational_age(value) for value in window)
        if low is None or high is None or not low < high:
            raise ValueError("expected [low, high] gestational ages such as ['19+0', '22+6'] with low < high")
        return window

    def window_weeks(self) -> tuple[float, float]:
        low, high = (parse_gestational_age(value) for value in self.window)
        return low, high


class PlaneSpec(_Section):
    """SonoNet standard-plane filter: keep images whose top label is in ``labels`` with enough confidence."""

    enabled: bool = False
    weights: str | None = None
    variant: Literal[16, 32, 64] = 32
    labels: list[str] = Field(default_factory=lambda: ["Brain (Tv.)"], min_length=1)
    min_confidence: float = Field(0.9, gt=0, le=1)
    crop: Literal["none", "auto"] | tuple[int, int, int, int] = "auto"
    apply_to: list[Label] = Field(default_factory=lambda: ["healthy", "pathological"])

    @field_validator("labels")
    @classmethod
    def _known_labels(cls, labels: list[str]) -> list[str]:
        unknown = [label for label in labels if label not in SONONET_LABELS]
        if unknown:
            raise ValueError(f"unknown SonoNet label {unknown[0]!r}; expected some of {', '.join(SONONET_LABELS)}")
        return labels

    @field_validator("crop")
    @classmethod
    def _ordered_box(cls, crop: Any) -> Any:
        if isinstance(crop, tuple) and not (0 <= crop[0] < crop[1] and 0 <= crop[2] < crop[3]):
            raise ValueError("expected a box [row0, row1, col0, col1] with row0 < row1 and col0 < col1")
        return crop


class SegmentationSpec(_Section):
    """Head segmentation with Monte Carlo dropout, its uncertainty gate, and the crop margin."""

    enabled: bool = False
    weights: str | None = None
    mc_samples: int = Field(8, ge=2, le=64)
    max_uncertainty: float = Field(0.15, ge=0, le=1)
    drop_border: bool = True
    margin: float = Field(0.1, ge=0, le=1)
    apply_to: list[Label] = Field(default_factory=lambda: ["healthy", "pathological"])


class CurationSpec(_Section):
    """The curation stages run before the split; each can be switched off."""

    gestational_age: GestationalAgeSpec = Field(default_factory=GestationalAgeSpec)
    plane: PlaneSpec = Field(default_factory=PlaneSpec)
    segmentation: SegmentationSpec = Field(default_factory=SegmentationSpec)
    exclude_list: str | None = None
    min_side: int = Field(64, ge=16)


class DataSpec(_Section):
    root: str | None = None
    sources: list[Source] = Field(min_length=1)
    image_size: int = Field(128, ge=16, le=1024)
    cache_dir: str | None = None
    split: SplitSpec = Field(default_factory=SplitSpec)
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    curation: CurationSpec = Field(default_factory=CurationSpec)


# --- model and training ----------------------------------------------------------------


class SimplexSpec(_Section):
    """AnoDDPM's simplex noise: octaves sampled at (x/f, y/f, t/f), f halving per octave."""

    octaves: int = Field(6, ge=1, le=12)
    persistence: float = Field(0.8, gt=0, le=1)
    frequency: float = Field(64.0, gt=0)


class ModelSpec(_Section):
    preset: Literal["reference", "tiny"] = "reference"
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(min_length=2, max_length=6)
    attention_levels: list[bool]
    num_res_blocks: int = Field(ge=1, le=4)
    num_head_channels: int = Field(ge=1)
    norm_num_groups: int = Field(ge=1)
    T: int = Field(1000, ge=2, le=10000)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    reference_T: int | None = Field(
        None, ge=2, description="Chain whose noise levels a shorter chain of T steps reproduces."
    )
    simplex: SimplexSpec = Field(default_factory=SimplexSpec)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "reference")
        if preset not in MODEL_PRESETS:
            return data  # the Literal check reports the bad preset
        return {**MODEL_PRESETS[preset], **data}


class AugmentationSpec(_Section):
    rotation_degrees: float = Field(15.0, ge=0, le=180)
    hflip: bool = True
    vflip: bool = True


class CheckpointSpec(_Section):
    """How often a trial saves a checkpoint while training, and how many Tune keeps."""

    every_epochs: int = Field(50, ge=0, description="0: only when a model finishes and after each grid cell.")
    keep: int = Field(2, ge=1)


class TrainingSpec(_Section):
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of the weights; evaluation uses it.")
    # Speed options, resolved per device by pipelines/diffusion/performance.py.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA with native bfloat16, else fp32. fp16 uses a gradient scaler."
    )
    channels_last: bool | Literal["auto"] = Field("auto", description="auto: channels-last on CUDA only.")
    compile: bool = Field(False, description="torch.compile the UNet for training; the first step compiles for minutes.")
    seed: int = 0
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)

    @field_validator("channels_last", mode="before")
    @classmethod
    def _channels_last_choice(cls, value: Any) -> Any:
        # Checked here so that a bad value gets one message, not one per member of the union.
        if value is not True and value is not False and value != "auto":
            raise ValueError("expected true, false or 'auto'")
        return value

    @model_validator(mode="after")
    def _one_length(self) -> TrainingSpec:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(
                f"set exactly one of epochs or steps, but got epochs={self.epochs}, steps={self.steps}"
            )
        return self


# --- evaluation -----------------------------------------------------------------------


class AutoDDPMSpec(_Section):
    t_inpaint: int = Field(50, ge=1)
    resample_steps: int = Field(5, ge=1)
    mask_percentile: float = Field(95.0, gt=0, lt=100)
    mask_threshold: float | None = Field(None, ge=0, description="Fixed threshold; default: per-image percentile.")
    dilation_iterations: int = Field(1, ge=0)


class PostprocessSpec(_Section):
    """The Optuna search of anomaly map, smoothing, head mask, image score and threshold, fitted on validation."""

    enabled: bool = True
    n_trials: int = Field(60, ge=1, le=10000)
    objective: Literal["auprc", "auroc"] = "auprc"
    threshold: Literal["f1", "youden"] = "f1"
    maps: list[PostprocessMap] = Field(default_factory=lambda: ["mae", "lpips", "mae_lpips", "autoddpm"], min_length=1)
    sigmas: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0], min_length=1)
    scores: list[Literal["mean", "max", "percentile", "top_k"]] = Field(
        default_factory=lambda: ["mean", "max", "percentile", "top_k"], min_length=1
    )
    percentiles: list[float] = Field(default_factory=lambda: [95.0, 99.0], min_length=1)
    top_k_percents: list[float] = Field(default_factory=lambda: [1.0, 5.0, 10.0], min_length=1)
    head_mask: list[bool] = Field(default_factory=lambda: [True, False], min_length=1)
    storage: str | None = Field(None, description="An Optuna RDB URL; default: a journal file in the trial folder.")

    @field_validator("sigmas")
    @classmethod
    def _non_negative_sigmas(cls, sigmas: list[float]) -> list[float]:
        if any(sigma < 0 for sigma in sigmas):
            raise ValueError("expected smoothing sigmas of 0 (no smoothing) or more pixels")
        return sigmas

    @field_validator("percentiles", "top_k_percents")
    @classmethod
    def _percent_range(cls, values: list[float]) -> list[float]:
        if any(not 0 < value <= 100 for value in values):
            raise ValueError("expected percentages above 0 and at most 100")
        return values


class BootstrapSpec(_Section):
    """Bootstrap confidence intervals: stratified by label, resampled by group, seeded."""

    n_resamples: int = Field(2000, ge=100, le=100000)
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class EvaluationSpec(_Section):
    methods: dict[Method, list[NoiseType]] = Field(
        default_factory=lambda: {"anoddpm": ["gaussian", "simplex"], "autoddpm": ["gaussian"]}
    )
    t: list[int] = Field(default_factory=lambda: [50, 100, 150, 200, 250, 300], min_length=1)
    anomaly_maps: list[AnomalyMap] = Field(default_factory=lambda: ["mae", "lpips", "mae_lpips"], min_length=1)
    score_map: AnomalyMap = "mae_lpips"
    splits: list[EvalSplit] = Field(default_factory=lambda: ["val", "test"], min_length=1)
    batch_size: int = Field(32, ge=1)
    # Samples (images times the t values run together) in one UNet call; None: batch_size images at a time.
    max_batch_size: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="UNet autocast in evaluation. auto: bf16 on CUDA with native bfloat16, else fp32."
    )
    autoddpm: AutoDDPMSpec = Field(default_factory=AutoDDPMSpec)
    figure_examples: int = Field(3, ge=0, le=16)
    lpips_weights: str | None = None
    seed: int = 0
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)

    @model_validator(mode="after")
    def _batch_holds_every_t(self) -> EvaluationSpec:
        if self.max_batch_size is not None and self.max_batch_size < len(self.t):
            raise ValueError(
                f"max_batch_size must be at least the number of t values ({len(self.t)}), since every t of a "
                f"method runs in one batch, but got {self.max_batch_size}"
            )
        return self


# --- search, resources, tracking -------------------------------------------------------


class ValuesParameter(_Section):
    values: list[Any] = Field(min_length=1)


class DistributionParameter(_Section):
    distribution: Literal["uniform", "loguniform", "randint"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> DistributionParameter:
        if not self.low < self.high:
            raise ValueError(f"low must be below high, but got low={self.low}, high={self.high}")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, but got low={self.low}")
        return self


def _parameter_kind(value: Any) -> str | None:
    # Validation receives mappings, and serialisation the parsed models.
    if isinstance(value, ValuesParameter):
        return "values-parameter"
    if isinstance(value, DistributionParameter):
        return "distribution-parameter"
    if isinstance(value, dict):
        if "values" in value:
            return "values-parameter"
        if "distribution" in value:
            return "distribution-parameter"
    return None


SearchParameter = Annotated[
    Union[Annotated[ValuesParameter, Tag("values-parameter")], Annotated[DistributionParameter, Tag("distribution-parameter")]],
    Discriminator(
        _parameter_kind,
        custom_error_type="invalid_search_parameter",
        custom_error_message="expected a mapping with 'values: [...]' or 'distribution: uniform|loguniform|randint' with low and high",
    ),
]


# Values a trial reports at its end that an adaptive searcher (Optuna) can optimise.
SearchMetric = Literal["best_val_auprc", "best_val_auroc"]


class SearchSpec(_Section):
    sampling: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, le=10000)
    seed: int = 0
    metric: SearchMetric = "best_val_auprc"
    mode: Literal["max", "min"] = "max"
    parameters: dict[str, SearchParameter] = Field(default_factory=dict)


class ResourcesSpec(_Section):
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0, description="Retries of a failed trial, from its last checkpoint.")

    @field_validator("gpus")
    @classmethod
    def _gpu_fraction_packs(cls, gpus: float) -> float:
        if 0 < gpus < 1 and not math.isclose(1 / gpus, round(1 / gpus), rel_tol=1e-6):
            raise ValueError("expected 0, a fraction 1/k (0.5, 0.25, ...) so trials pack without over-subscribing GPU memory, or a whole number")
        if gpus > 1 and gpus != int(gpus):
            raise ValueError("expected a whole number of GPUs above 1")
        return gpus


class TrackingSpec(_Section):
    uri: str | None = None
    experiment: str | None = None
    server_root: str | None = None
    # basic: log in with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, which are read
    # from the environment only, and run the local server with MLflow's basic-auth app.
    auth: Literal["none", "basic"] = "none"


class SweepSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str = ""
    storage: str | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec(epochs=1000))
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @property
    def noise_types(self) -> list[str]:
        """Noise types that need a trained model, in a stable order."""
        wanted = {noise for noises in self.evaluation.methods.values() for noise in noises}
        return [noise for noise in ("gaussian", "simplex") if noise in wanted]

    @property
    def schedule_stride(self) -> int:
        """Steps of the reference chain per model step (1 without respacing)."""
        return (self.model.reference_T or self.model.T) // self.model.T


# --- loading, overrides and error messages ---------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """A safe YAML loader that also reads ``1e-4`` as a float (YAML 1.1 needs ``1.0e-4``)."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a spec file into a plain dict, with a one-line error for unreadable YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"cannot read spec file {str(path)!r}: {error.strerror}") from error
    try:
        raw = _load_yaml_text(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"spec file {str(path)!r} is not valid YAML{where}: fix the syntax and retry") from error
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {str(path)!r} must hold a mapping of sections, but got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is parsed as YAML (numbers, lists, booleans)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*", key):
        raise SpecError(f"invalid --set {text!r}: expected dotted.key=value, for example training.lr=3e-4")
    try:
        return key, _load_yaml_text(value)
    except yaml.YAMLError as error:
        raise SpecError(f"invalid --set {text!r}: the value is not valid YAML") from error


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key`` (``a.b.c`` or ``a.list.0.c``) set to ``value``."""
    result = copy.deepcopy(raw)
    node: Any = result
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, ".".join(parts[: depth + 1]))]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise SpecError(f"cannot set {key!r}: {'.'.join(parts[: depth + 1])!r} is a value, not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value
    return result


def _list_index(node: list[Any], part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(f"cannot set {key!r}: expected a list index below {len(node)}, but got {part!r}")
    return int(part)


def validate(raw: dict[str, Any]) -> SweepSpec:
    """Validate a raw spec dict, raising :class:`SpecError` with a one-line message."""
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_describe(error)) from None
    check_consistency(spec)
    return spec


def check_consistency(spec: SweepSpec) -> None:
    """Run the checks that span sections; each failure names the field and what is allowed."""
    model, evaluation = spec.model, spec.evaluation

    if model.beta_start >= model.beta_end:
        raise SpecError(
            f"spec field 'model.beta_start': got {model.beta_start}, expected a value below "
            f"model.beta_end ({model.beta_end}) so that betas rise"
        )
    if model.reference_T is not None and (model.reference_T < model.T or model.reference_T % model.T):
        raise SpecError(
            f"spec field 'model.reference_T': got {model.reference_T}, expected a multiple of "
            f"model.T ({model.T}) such as {model.T * 10}, or null for no respacing"
        )
    if len(model.attention_levels) != len(model.channels):
        raise SpecError(
            f"spec field 'model.attention_levels': got {len(model.attention_levels)} entries, "
            f"expected one per level of model.channels ({len(model.channels)})"
        )
    for index, width in enumerate(model.channels):
        if width % model.norm_num_groups:
            raise SpecError(
                f"spec field 'model.channels[{index}]': got {width}, expected a multiple of "
                f"model.norm_num_groups ({model.norm_num_groups})"
            )
        if model.attention_levels[index] and width % model.num_head_channels:
            raise SpecError(
                f"spec field 'model.num_head_channels': got {model.num_head_channels}, expected a divisor of "
                f"model.channels[{index}] ({width}), a level with attention"
            )
    if spec.data.image_size < MIN_IMAGE_SIZE:
        raise SpecError(
            f"spec field 'data.image_size': got {spec.data.image_size}, expected at least {MIN_IMAGE_SIZE} "
            f"pixels, the smallest input that LPIPS's AlexNet trunk accepts"
        )
    downsampling = 2 ** (len(model.channels) - 1)
    if spec.data.image_size % downsampling:
        raise SpecError(
            f"spec field 'data.image_size': got {spec.data.image_size}, expected a multiple of "
            f"{downsampling} for a UNet with {len(model.channels)} levels"
        )

    for index, t in enumerate(evaluation.t):
        if not 1 <= t <= model.T:
            raise SpecError(
                f"spec field 'evaluation.t[{index}]': got {t}, expected a noise level from 1 to "
                f"model.T ({model.T})"
            )
    if len(set(evaluation.t)) != len(evaluation.t):
        raise SpecError(f"spec field 'evaluation.t': got {evaluation.t}, expected distinct noise levels")
    if spec.training.precision == "fp16" and spec.resources.gpus == 0:
        # CPUs have no fast fp16 arithmetic: a tiny UNet's training step took about 150 times as long as in fp32.
        raise SpecError(
            "spec field 'training.precision': got 'fp16' with resources.gpus 0, but fp16 is for GPUs and "
            "trains far slower than fp32 on the CPU; use fp32 or bf16, or give trials a GPU"
        )
    if not evaluation.methods:
        raise SpecError("spec field 'evaluation.methods': the grid is empty; name at least one method")
    for method, noises in evaluation.methods.items():
        if not noises:
            raise SpecError(
                f"spec field 'evaluation.methods.{method}': got an empty list, expected noise types "
                f"from 'gaussian', 'simplex'"
            )
    if "autoddpm" in evaluation.methods and evaluation.autoddpm.t_inpaint > model.T:
        raise SpecError(
            f"spec field 'evaluation.autoddpm.t_inpaint': got {evaluation.autoddpm.t_inpaint}, "
            f"expected at most model.T ({model.T})"
        )
    if evaluation.postprocess.enabled and not {"val", "test"} <= set(evaluation.splits):
        raise SpecError(
            f"spec field 'evaluation.splits': got {evaluation.splits}, but the post-processing search fits on 'val' "
            "and reports on 'test'; add both, or set evaluation.postprocess.enabled: false"
        )
    postprocess = evaluation.postprocess
    if postprocess.enabled and postprocess.storage is not None and "://" not in postprocess.storage:
        raise SpecError(
            f"spec field 'evaluation.postprocess.storage': got {postprocess.storage!r}, expected an Optuna RDB URL "
            "such as sqlite:////shared/postprocess.db or postgresql://host/db, or null for a journal file per trial"
        )
    own_maps = set(postprocess.maps) - {"autoddpm"}
    if postprocess.enabled and not own_maps and set(evaluation.methods) != {"autoddpm"}:
        raise SpecError(
            f"spec field 'evaluation.postprocess.maps': got {postprocess.maps}, but AnoDDPM cells have no 'autoddpm' "
            "map; add at least one of 'mae', 'lpips', 'mae_lpips'"
        )
    if spec.search.sampling == "optuna" and "val" not in evaluation.splits:
        raise SpecError(
            f"spec field 'search.sampling': got 'optuna', which optimises {spec.search.metric} on the 'val' split, "
            f"but evaluation.splits is {evaluation.splits}; add 'val'"
        )
    if evaluation.score_map not in evaluation.anomaly_maps:
        raise SpecError(
            f"spec field 'evaluation.score_map': got {evaluation.score_map!r}, expected one of "
            f"evaluation.anomaly_maps {evaluation.anomaly_maps}"
        )


# --- error formatting ---------------------------------------------------------------------

_SOURCE_KINDS = {"roboflow-multilabel", "folder-csv", "hc18", "synthetic"}
# Unknown keys that look like credentials get a pointer to the environment variables.
_CREDENTIAL_KEY = re.compile(r"user(name)?|login|pass(word|wd)?|secret|token|api_?key|credentials?|auth_\w+", re.IGNORECASE)
_PARAMETER_TAGS = {"values-parameter", "distribution-parameter"}


def _describe(error: ValidationError) -> str:
    """Turn the first pydantic error into one line that also counts the remaining errors."""
    errors = error.errors(include_url=False)
    first = errors[0]
    field = _format_loc(first["loc"])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""

    if first["type"] == "extra_forbidden":
        if _CREDENTIAL_KEY.fullmatch(str(first["loc"][-1])):
            return (
                f"spec field '{field}' is not allowed: credentials are never read from the spec; remove it and "
                f"export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, with tracking.auth: basic{more}"
            )
        return f"unknown spec field '{field}'{_suggestion(first['loc'])}{more}"
    if first["type"] == "missing":
        return f"missing spec field '{field}': add it to the spec{more}"
    message = first["msg"].removeprefix("Value error, ")
    kinds = ", ".join(repr(kind) for kind in sorted(_SOURCE_KINDS))
    if first["type"] == "union_tag_invalid":
        return f"spec field '{field}.kind': got {first['input'].get('kind')!r}, expected one of {kinds}{more}"
    if first["type"] == "union_tag_not_found":
        return f"missing spec field '{field}.kind': each data source needs a kind, one of {kinds}{more}"
    value = first.get("input")
    shown = f"got {value!r}, " if not isinstance(value, dict) else ""
    return f"spec field '{field or '<top level>'}': {shown}{message[0].lower()}{message[1:]}{more}"


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if part in _SOURCE_KINDS or part in _PARAMETER_TAGS or part == "[key]":
            continue  # a union tag or pydantic's marker for a bad dict key, not a field name
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _suggestion(loc: tuple[Any, ...]) -> str:
    """Suggest the closest valid key for an unknown one, walking the spec's models along ``loc``."""
    model: Any = SweepSpec
    for part in loc[:-1]:
        if isinstance(part, int) or part in _PARAMETER_TAGS:
            continue
        if part in _SOURCE_KINDS:
            model = {
                "roboflow-multilabel": RoboflowSource,
                "folder-csv": FolderCsvSource,
                "hc18": HC18Source,
                "synthetic": SyntheticSource,
            }[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = _model_in(field.annotation)
        if model is None:
            return ""
    valid = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
    if close:
        return f": did you mean '{close[0]}'?"
    return f": expected one of {', '.join(valid)}" if valid else ""


def _model_in(annotation: Any) -> Any:
    """Find the pydantic model inside an annotation such as ``list[Model]`` or ``Model | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
