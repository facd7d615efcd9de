"""Per-trial and per-cell results files of a sweep: dataclasses, atomic JSON writers and a tolerant reader.

A trial writes ``<storage>/<sweep>/results/<trial_id>/trial.json`` when it starts and
when its status changes, and ``cells/<cell name>.json`` after each grid cell, so a
report can be built from these files alone: while the sweep runs, after it ends, or
after it was interrupted. Every file carries ``"version": 1``. A writer replaces a
file atomically (a temporary file in the same folder, fsync, ``os.replace``), so a
reader sees the old or the new file, never half of one. The reader skips a file it
cannot parse and records one line that names it.

AUPRC and AUROC are stored on a 0–1 scale. A NaN metric is written as the bare ``NaN``
token, which Python's ``json`` module reads back but strict JSON parsers reject.

Example:
    >>> import tempfile
    >>> results = Path(tempfile.mkdtemp())
    >>> trial = TrialRecord("demo", "a1_00000", "trial_0", {"training.lr": 1e-4}, seed=0, status="running", cells_total=1)
    >>> path = write_trial(results, trial)
    >>> load_sweep_results(results).trials[0].record == trial
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter, ValidationError

from pipelines.evaluation.grid import METHOD_LABELS, NOISE_LABELS, GridCell

SCHEMA_VERSION = 1
RESULTS_FOLDER = "results"
TRIAL_FILE = "trial.json"
CELLS_FOLDER = "cells"

TrialStatus = Literal["running", "done", "failed"]

# Trial ids become folder names, so they must not contain separators or start with a dot.
_TRIAL_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class IntervalLike(Protocol):
    """Anything with the fields of a bootstrap interval, such as ``pipelines.metrics.bootstrap.Interval``."""

    @property
    def estimate(self) -> float: ...

    @property
    def low(self) -> float: ...

    @property
    def high(self) -> float: ...

    @property
    def level(self) -> float: ...


@dataclass(frozen=True)
class IntervalRecord:
    """A point estimate and its bootstrap confidence interval; ``level`` is 0.95 for 95%."""

    estimate: float
    low: float
    high: float
    level: float

    @classmethod
    def of(cls, interval: IntervalLike) -> IntervalRecord:
        """Copy any interval object with ``estimate``, ``low``, ``high`` and ``level`` fields."""
        return cls(float(interval.estimate), float(interval.low), float(interval.high), float(interval.level))


@dataclass(frozen=True)
class ImageScores:
    """The anomaly score of every image of a split, for paired comparisons between cells."""

    ids: list[str]
    labels: list[int]
    groups: list[str]
    scores: list[float]


@dataclass(frozen=True)
class SplitResult:
    """The summary metrics of one cell on one split, with intervals for AUPRC and AUROC.

    ``image_scores`` contains the per-image scores behind AUPRC and AUROC, where the trial kept them.
    """

    metrics: dict[str, float]
    intervals: dict[str, IntervalRecord]
    n_images: int
    image_scores: ImageScores | None = None


@dataclass(frozen=True)
class PostprocessTest:
    """Test-split results of the post-processing chosen on validation, at its fitted threshold."""

    auprc: IntervalRecord
    auroc: IntervalRecord
    tp: int
    tn: int
    fp: int
    fn: int
    sensitivity: float
    specificity: float


@dataclass(frozen=True)
class PostprocessRecord:
    """The post-processing an Optuna study chose for one cell on validation, and its test results."""

    params: dict[str, Any]
    objective: Literal["auprc", "auroc"]
    val_value: float
    threshold: float
    test: PostprocessTest


@dataclass(frozen=True)
class CellRecord:
    """Everything one trial measured for one grid cell: ``cells/<cell name>.json``.

    ``examples`` is the file name of a PNG of example images in the same folder, or None, and
    ``mlflow_run_id`` the id of the cell's MLflow run.
    """

    trial_id: str
    cell: GridCell
    splits: dict[str, SplitResult]
    postprocess: PostprocessRecord | None = None
    examples: str | None = None
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep: ``trial.json``.

    ``config`` contains the values sampled for the trial by dotted spec key, ``seed`` is its
    ``training.seed``, and ``stride`` is the schedule stride that cell labels multiply t by.
    """

    sweep: str
    trial_id: str
    trial_name: str
    config: dict[str, Any]
    seed: int
    status: TrialStatus
    cells_total: int
    mlflow_run_id: str | None = None
    stride: int = 1


@dataclass
class TrialResults:
    """A trial's record, its folder, and the cells it has finished so far, by cell name."""

    record: TrialRecord
    folder: Path
    cells: dict[str, CellRecord] = field(default_factory=dict)


@dataclass
class SweepResults:
    """Every readable results file of a sweep, and one warning line per file that was skipped."""

    folder: Path
    trials: list[TrialResults]
    warnings: list[str]


class ResultsFileError(ValueError):
    """A results file is missing, is not valid JSON, or does not match schema version 1."""


_TRIAL_ADAPTER = TypeAdapter(TrialRecord)
_CELL_ADAPTER = TypeAdapter(CellRecord)


def results_folder(sweep_folder: Path) -> Path:
    """Return the results folder of the sweep stored in ``sweep_folder`` (``<storage>/<sweep name>``)."""
    return Path(sweep_folder) / RESULTS_FOLDER


def write_trial(results: Path, record: TrialRecord) -> Path:
    """Write ``record`` to ``<results>/<trial_id>/trial.json`` atomically and return its path."""
    path = _trial_folder(results, record.trial_id) / TRIAL_FILE
    _write_atomic(path, _to_json(dataclasses.asdict(record)))
    return path


def write_cell(results: Path, record: CellRecord, *, examples_png: bytes | None = None) -> Path:
    """Write ``record`` to ``<results>/<trial_id>/cells/<cell name>.json`` atomically and return its path.

    With ``examples_png``, the PNG is first written to ``<cell name>.png`` in the same folder and
    the record's ``examples`` field is set to that name.
    """
    folder = _trial_folder(results, record.trial_id) / CELLS_FOLDER
    if examples_png is not None:
        if not examples_png.startswith(b"\x89PNG"):
            raise ValueError(f"examples_png of cell {record.cell.name} must be PNG bytes, but starts with {examples_png[:8]!r}")
        examples = f"{record.cell.name}.png"
        _write_atomic(folder / examples, examples_png)
        record = dataclasses.replace(record, examples=examples)

    data = dataclasses.asdict(record)
    data["cell"]["name"] = record.cell.name
    path = folder / f"{record.cell.name}.json"
    _write_atomic(path, _to_json(data))
    return path


def read_trial(path: Path) -> TrialRecord:
    """Read one ``trial.json``.

    Raises:
        ResultsFileError: if the file is missing, unreadable or does not match the schema.
    """
    return _validate(path, _TRIAL_ADAPTER)


def read_cell(path: Path) -> CellRecord:
    """Read one cell file and check that its cell is a valid grid cell whose name matches.

    Raises:
        ResultsFileError: if the file is missing, unreadable or does not match the schema.
    """
    record: CellRecord = _validate(path, _CELL_ADAPTER)
    cell = record.cell
    if cell.method not in METHOD_LABELS or cell.noise not in NOISE_LABELS:
        raise ResultsFileError(
            f"{path}: cell has method {cell.method!r} and noise {cell.noise!r}, "
            f"but they must be one of {sorted(METHOD_LABELS)} and one of {sorted(NOISE_LABELS)}"
        )
    return record


def load_sweep_results(results: Path) -> SweepResults:
    """Read every trial and cell file under ``results``, skipping files that cannot be read.

    A trial whose ``trial.json`` cannot be read is skipped with its cells. A cell file whose
    trial id or name does not match its location is skipped too. Each skipped file adds one
    line to ``SweepResults.warnings``. A missing ``results`` folder gives an empty result.
    """
    results = Path(results)
    trials: list[TrialResults] = []
    warnings: list[str] = []
    folders = sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")) if results.is_dir() else []
    for folder in folders:
        try:
            record = read_trial(folder / TRIAL_FILE)
        except ResultsFileError as error:
            warnings.append(f"{error}; skipped trial {folder.name} and its cells")
            continue
        if record.trial_id != folder.name:
            warnings.append(f"{folder / TRIAL_FILE}: trial_id is {record.trial_id!r} but the folder is {folder.name!r}; skipped the trial")
            continue

        trial = TrialResults(record, folder)
        for path in sorted((folder / CELLS_FOLDER).glob("*.json")):
            try:
                cell = read_cell(path)
            except ResultsFileError as error:
                warnings.append(f"{error}; skipped the cell")
                continue
            if cell.trial_id != record.trial_id or cell.cell.name != path.stem:
                warnings.append(
                    f"{path}: contains cell {cell.cell.name!r} of trial {cell.trial_id!r}, "
                    f"which does not match its location; skipped the cell"
                )
                continue
            trial.cells[cell.cell.name] = cell
        trials.append(trial)
    return SweepResults(results, trials, warnings)


def _trial_folder(results: Path, trial_id: str) -> Path:
    if not _TRIAL_ID_PATTERN.fullmatch(trial_id):
        raise ValueError(f"trial_id must contain only letters, digits, '_', '-' and '.', and not start with '.', but got {trial_id!r}")
    return Path(results) / trial_id


def _to_json(data: dict[str, Any]) -> bytes:
    return (json.dumps({"version": SCHEMA_VERSION, **data}, indent=2) + "\n").encode("utf-8")


def _write_atomic(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` so that readers see either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; other users of shared storage read reports
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Flush the folder entry of a renamed file to disk, where the platform allows it."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_versioned(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ResultsFileError(f"{path}: unreadable ({type(error).__name__}: {' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise ResultsFileError(f"{path}: must contain a JSON object, but contains {type(data).__name__}")
    if data.get("version") != SCHEMA_VERSION:
        raise ResultsFileError(
            f"{path}: schema version {data.get('version')!r} is not supported (expected {SCHEMA_VERSION}); "
            "read it with the sweeper version that wrote it"
        )
    return data


def _validate(path: Path, adapter: TypeAdapter[Any]) -> Any:
    data = _read_versioned(path)
    try:
        return adapter.validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        more = f" (and {error.error_count() - 1} more errors)" if error.error_count() > 1 else ""
        raise ResultsFileError(f"{path}: invalid field {where}: {first['msg']}{more}") from None
