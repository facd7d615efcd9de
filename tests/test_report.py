"""`sweeper report` and the results files it reads, on metrics and intervals computed from generated scores.

Every number in the results files is computed here: anomaly scores are drawn with a known
separation between healthy and pathological images, and AUPRC, AUROC and their bootstrap
intervals come from ``pipelines.metrics``. Example images are synthetic phantoms.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from scipy import ndimage
from sklearn.metrics import confusion_matrix, precision_recall_curve

from pipelines.data.phantoms import generate_synthetic_phantoms
from pipelines.evaluation.grid import CellOutputs, GridCell
from pipelines.metrics.bootstrap import detection_intervals
from pipelines.metrics.detection import auprc, auroc
from pipelines.reporting.figures import cell_examples_figure
from pipelines.reporting.report import pool_metrics
from pipelines.reporting.results import (
    CellRecord,
    ImageScores,
    IntervalRecord,
    PostprocessRecord,
    PostprocessTest,
    SplitResult,
    TrialRecord,
    load_sweep_results,
    results_folder,
    write_cell,
    write_trial,
)
from pipelines.reporting.tables import to_latex
from sweeper.cli import cli
from sweeper.driver_state import write_driver_state

CELLS = [GridCell("anoddpm", "gaussian", 5), GridCell("anoddpm", "gaussian", 10), GridCell("autoddpm", "gaussian", 5), GridCell("autoddpm", "gaussian", 10)]

# Separation of pathological from healthy scores, in standard deviations, per cell and split.
# AnoDDPM separates best at t=5 on validation but at t=10 on test, so Table 1 must report t=5.
SEPARATION = {
    ("anoddpm", 5, "val"): 2.5, ("anoddpm", 10, "val"): 0.2,
    ("anoddpm", 5, "test"): 0.2, ("anoddpm", 10, "test"): 3.0,
    ("autoddpm", 5, "val"): 0.5, ("autoddpm", 10, "val"): 1.5,
    ("autoddpm", 5, "test"): 0.5, ("autoddpm", 10, "test"): 1.5,
}
LABELS = np.array([0] * 12 + [1] * 18)  # 12 healthy and 18 pathological images, the test split size of Mykula et al.
N_RESAMPLES = 300


def split_scores(cell: GridCell, split: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, cell.t, len(cell.method), len(split)])
    return rng.normal(size=LABELS.size) + SEPARATION[(cell.method, cell.t, split)] * LABELS


def split_result(cell: GridCell, split: str, seed: int) -> SplitResult:
    scores = split_scores(cell, split, seed)
    rng = np.random.default_rng([seed, cell.t, 7])
    ssim, lpips = rng.uniform(0.7, 0.95, LABELS.size), rng.uniform(0.02, 0.2, LABELS.size)
    metrics = {"auprc": auprc(LABELS, scores), "auroc": auroc(LABELS, scores), "auprc_mae": auprc(LABELS, -scores), "auroc_mae": auroc(LABELS, -scores)}
    for name, values in (("ssim", ssim), ("lpips", lpips)):
        for label, label_name in ((0, "healthy"), (1, "pathological")):
            metrics[f"{name}_{label_name}_mean"] = float(values[LABELS == label].mean())
            metrics[f"{name}_{label_name}_std"] = float(values[LABELS == label].std())
    intervals = detection_intervals(LABELS, scores, n_resamples=N_RESAMPLES, seed=seed)
    ids = [f"image-{index}" for index in range(LABELS.size)]
    image_scores = ImageScores(ids, LABELS.tolist(), ids, scores.tolist())
    return SplitResult(metrics, {name: IntervalRecord.of(interval) for name, interval in intervals.items()}, LABELS.size, image_scores)


def postprocess_record(cell: GridCell, seed: int) -> PostprocessRecord:
    """Fit an F1-optimal threshold on validation scores and measure it on test scores."""
    val, test = split_scores(cell, "val", seed), split_scores(cell, "test", seed)
    precision, recall, thresholds = precision_recall_curve(LABELS, val)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    threshold = float(thresholds[np.argmax(f1)])
    tn, fp, fn, tp = confusion_matrix(LABELS, test >= threshold).ravel()
    intervals = detection_intervals(LABELS, test, n_resamples=N_RESAMPLES, seed=seed)
    return PostprocessRecord(
        params={"map": "mae_lpips", "sigma": 2.0, "score": "top_k", "top_k_percent": 5.0},
        objective="auprc",
        val_value=auprc(LABELS, val),
        threshold=threshold,
        test=PostprocessTest(
            IntervalRecord.of(intervals["auprc"]), IntervalRecord.of(intervals["auroc"]),
            int(tp), int(tn), int(fp), int(fn), tp / (tp + fn), tn / (tn + fp),
        ),
    )


def examples_png() -> bytes:
    """Draw the examples figure of a cell whose reconstruction is a blurred phantom."""
    phantoms = generate_synthetic_phantoms(healthy=2, pathological=2, size=64)
    images = np.stack([p.image for p in phantoms])[:, None]
    reconstructions = ndimage.gaussian_filter(images, sigma=(0, 0, 1.5, 1.5))
    maps = np.abs(images - reconstructions)
    masks = np.stack([p.head_mask for p in phantoms])[:, None]
    scores = (maps * masks).sum(axis=(1, 2, 3)) / masks.sum(axis=(1, 2, 3))
    labels = np.array([int(p.pathological) for p in phantoms])
    outputs = CellOutputs(
        CELLS[0], "test", labels, [p.case_id for p in phantoms], images, reconstructions,
        maps={"mae": maps}, scores={"mae": scores}, image_metrics={}, score_map="mae",
    )
    buffer = io.BytesIO()
    cell_examples_figure(outputs, per_label=2).savefig(buffer, format="png")
    return buffer.getvalue()


def add_trial(
    sweep: Path, trial_id: str, config: dict, seed: int, cells: list[GridCell], *,
    status: str = "done", postprocess: bool = False, examples: bytes | None = None,
) -> None:
    results = results_folder(sweep)
    write_trial(results, TrialRecord(sweep.name, trial_id, f"run_{trial_id}", {**config, "training.seed": seed}, seed, status, len(CELLS)))
    for cell in cells:
        splits = {split: split_result(cell, split, seed) for split in ("val", "test")}
        record = CellRecord(trial_id, cell, splits, postprocess_record(cell, seed) if postprocess else None)
        write_cell(results, record, examples_png=examples)


def run_report(*args: str, env: dict[str, str] | None = None) -> Result:
    """Report from the storage folder; the MLflow source is tested end to end in test_launch_e2e."""
    return CliRunner().invoke(cli, ["report", "--source", "files", *args], env=env)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pooled_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """Three seeds of one learning rate and one seed of another, reported once for several tests."""
    storage = tmp_path_factory.mktemp("sweeps")
    sweep = storage / "pooled"
    png = examples_png()
    for number, seed in enumerate((0, 1, 2)):
        add_trial(sweep, f"p_0000{number}", {"training.lr": 0.0001}, seed, CELLS, postprocess=True, examples=png)
    add_trial(sweep, "p_00003", {"training.lr": 0.0002}, 0, CELLS)
    return sweep, run_report("pooled", "--storage", str(storage))


def test_report_prints_table1_and_paths(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, result = pooled_sweep
    assert result.exit_code == 0, result.output
    assert "Trials: 4 of 4 done; cells: 16 of 16 evaluated." in result.output
    assert "Table 1, training.lr=0.0001 (seeds 0, 1, 2):" in result.output
    assert "| Method | Healthy SSIM ↑ |" in result.output
    assert f"  {sweep / 'report' / 'report.md'}" in result.output
    assert f"  {sweep / 'report' / 'config-2' / 'table1.tex'}" in result.output


def test_seeds_pooled_with_per_seed_intervals(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, _ = pooled_sweep
    row = read_csv(sweep / "report" / "config-1" / "table1.csv")[0]
    runs = [split_result(CELLS[0], "test", seed) for seed in (0, 1, 2)]
    auprcs = [100 * run.metrics["auprc"] for run in runs]
    assert row["Method"] == "AnoDDPM-Gaussian(t=5)"
    assert row["Seeds"] == "3"
    assert row["Pathological AUPRC ↑"] == f"{statistics.fmean(auprcs):.1f} ± {statistics.stdev(auprcs):.1f}"
    first = runs[0].intervals["auprc"]
    assert row["AUPRC per seed"].startswith(f"0: {100 * first.estimate:.1f} [{100 * first.low:.1f}, {100 * first.high:.1f}]; 1: ")
    assert row["AUPRC per seed"].count("[") == 3


def test_single_seed_shows_interval(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, _ = pooled_sweep
    rows = read_csv(sweep / "report" / "config-2" / "table1.csv")
    interval = re.compile(r"\d+\.\d \[\d+\.\d, \d+\.\d\]")
    assert [row["Seeds"] for row in rows] == ["1", "1"]
    for row in rows:
        assert interval.fullmatch(row["Pathological AUPRC ↑"])
        assert interval.fullmatch(row["Pathological AUROC ↑"])
    detection = read_csv(sweep / "report" / "config-2" / "appendix_detection.csv")
    assert all(interval.fullmatch(row["AUPRC ↑"]) for row in detection)


def test_table1_chooses_t_on_validation(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, _ = pooled_sweep
    t5, t10 = CELLS[0], CELLS[1]
    val = {cell: split_result(cell, "val", 0).metrics["auprc"] for cell in (t5, t10)}
    test = {cell: split_result(cell, "test", 0).metrics["auprc"] for cell in (t5, t10)}
    assert val[t5] > val[t10]
    assert test[t10] > test[t5]
    row = read_csv(sweep / "report" / "config-2" / "table1.csv")[0]
    assert row["Method"] == "AnoDDPM-Gaussian(t=5)"
    assert row["Pathological AUPRC ↑"].startswith(f"{100 * test[t5]:.1f} [")
    assert row["t chosen by"] == "best val AUPRC"


def test_postprocess_table_lists_choices(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, _ = pooled_sweep
    rows = read_csv(sweep / "report" / "config-1" / "postprocess.csv")
    expected = postprocess_record(CELLS[0], 1)
    assert len(rows) == len(CELLS) * 3
    row = next(row for row in rows if row["Cell"] == "AnoDDPM-Gaussian(t=5)" and row["Seed"] == "1")
    assert row["Choices"] == "map=mae_lpips, sigma=2.0, score=top_k, top_k_percent=5.0"
    assert row["Threshold"] == f"{expected.threshold:.4g}"
    assert [row["TP"], row["TN"], row["FP"], row["FN"]] == [str(expected.test.tp), str(expected.test.tn), str(expected.test.fp), str(expected.test.fn)]
    assert not (sweep / "report" / "config-2" / "postprocess.csv").exists()


def test_latex_written_escaped(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, _ = pooled_sweep
    tex = (sweep / "report" / "config-1" / "postprocess.tex").read_text(encoding="utf-8")
    assert tex.startswith("\\begin{table}\n\\centering\n\\begin{tabular}{")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1
    assert "map=mae\\_lpips" in tex
    assert "Test AUPRC $\\uparrow$" in tex
    for raw in ("↑", "±", "—", "mae_lpips"):
        assert raw not in tex


def test_latex_escapes_special_characters() -> None:
    tex = to_latex([{"Cell": "a_b & 50% #1 {x} ~y^2 \\z", "AUPRC ↑": "85.2 ± 1.0", "Note": "—"}])
    assert "a\\_b \\& 50\\% \\#1 \\{x\\} \\textasciitilde{}y\\textasciicircum{}2 \\textbackslash{}z" in tex
    assert "85.2 $\\pm$ 1.0" in tex
    assert "AUPRC $\\uparrow$" in tex
    assert " & --- \\\\" in tex


def test_figures_written_as_png(pooled_sweep: tuple[Path, Result]) -> None:
    sweep, _ = pooled_sweep
    for name in ("config-1/auc_against_t.png", "config-1/examples.png", "config-2/auc_against_t.png"):
        assert (sweep / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (sweep / "report" / "config-2" / "examples.png").exists()
    report = (sweep / "report" / "report.md").read_text(encoding="utf-8")
    assert "![AUPRC and AUROC against t](config-1/auc_against_t.png)" in report
    assert "![Examples of the cells of Table 1](config-1/examples.png)" in report


def test_partial_sweep_marks_missing_cells(tmp_path: Path) -> None:
    sweep = tmp_path / "partial"
    add_trial(sweep, "q_00000", {"training.lr": 0.0001}, 0, CELLS)
    add_trial(sweep, "q_00001", {"training.lr": 0.0002}, 0, CELLS[:1], status="running")
    result = run_report("partial", "--storage", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Trials: 1 of 2 done (1 running); cells: 5 of 8 evaluated." in result.output

    table1 = read_csv(sweep / "report" / "config-2" / "table1.csv")
    assert [row["Method"] for row in table1] == ["AnoDDPM-Gaussian(t=5)", "AutoDDPM-Gaussian"]
    assert table1[0]["t chosen by"] == "best val AUPRC of 1/2 t evaluated"
    assert table1[1]["Pathological AUPRC ↑"] == "—"
    assert table1[1]["t chosen by"] == "no t evaluated yet"
    detection = read_csv(sweep / "report" / "config-2" / "appendix_detection.csv")
    assert [row["AUPRC ↑"] == "—" for row in detection] == [False, True, True, True]
    assert set(detection[1].values()) == {"AnoDDPM-Gaussian(t=10)", "—"}


def test_interrupted_and_pending_trials_counted(tmp_path: Path) -> None:
    sweep = tmp_path / "stopped"
    add_trial(sweep, "r_00000", {}, 0, CELLS[:2], status="running")
    trial_data = [
        [json.dumps({"trial_id": trial_id, "status": "RUNNING" if trial_id.endswith("0") else "PENDING", "config": {}}), json.dumps({})]
        for trial_id in ("r_00000", "r_00001")
    ]
    (sweep / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}), encoding="utf-8")
    write_driver_state(sweep, "interrupted")
    result = run_report("stopped", "--storage", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Trials: 0 of 2 done (1 interrupted, 1 interrupted with no results files); cells: 2 of 8 evaluated." in result.output


def test_corrupt_files_skipped_with_warning(tmp_path: Path) -> None:
    sweep = tmp_path / "damaged"
    add_trial(sweep, "s_00000", {}, 0, CELLS)
    cells = results_folder(sweep) / "s_00000" / "cells"
    (cells / "anoddpm-gaussian-t10.json").write_text('{"version": 1, "trial_id": "s_0', encoding="utf-8")
    newer = json.loads((cells / "autoddpm-gaussian-t5.json").read_text(encoding="utf-8")) | {"version": 2}
    (cells / "autoddpm-gaussian-t5.json").write_text(json.dumps(newer), encoding="utf-8")
    result = run_report("damaged", "--storage", str(tmp_path))
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"warning: {cells / 'anoddpm-gaussian-t10.json'}: unreadable (JSONDecodeError:")
    assert warnings[1].startswith(f"warning: {cells / 'autoddpm-gaussian-t5.json'}: schema version 2 is not supported")
    assert "Traceback" not in result.output
    assert "cells: 2 of 4 evaluated." in result.stdout
    assert "Files skipped:" in (sweep / "report" / "report.md").read_text(encoding="utf-8")


def test_invalid_field_names_file_and_field(tmp_path: Path) -> None:
    add_trial(tmp_path / "typo", "u_00000", {}, 0, CELLS[:1])
    path = results_folder(tmp_path / "typo") / "u_00000" / "trial.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"done"', '"finished"'), encoding="utf-8")
    results = load_sweep_results(results_folder(tmp_path / "typo"))
    assert results.trials == []
    assert results.warnings == [f"{path}: invalid field status: Input should be 'running', 'done' or 'failed'; skipped trial u_00000 and its cells"]


def test_unknown_sweep_lists_existing(tmp_path: Path) -> None:
    storage = tmp_path / "sweeps"
    add_trial(storage / "alpha", "t_00000", {}, 0, CELLS[:1])
    (storage / "beta").mkdir()
    (storage / "beta" / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}', encoding="utf-8")
    (storage / "not-a-sweep").mkdir()
    result = run_report("gamma", env={"SWEEPER_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert f"Error: no sweep 'gamma' in '{storage}' (sweeps there: alpha, beta);" in result.output


def test_split_without_results_rejected(tmp_path: Path) -> None:
    add_trial(tmp_path / "splits", "v_00000", {}, 0, CELLS[:1])
    result = run_report("splits", "--storage", str(tmp_path), "--split", "train")
    assert result.exit_code == 1
    assert "split 'train' has no results in sweep 'splits'; pass --split with one of: test, val" in result.output


def test_results_round_trip_atomically(tmp_path: Path) -> None:
    results = tmp_path / "results"
    trial = TrialRecord("sweep", "w_00000", "run_w", {"training.lr": 0.001}, 3, "running", 1, "a1b2", stride=10)
    cell = CellRecord("w_00000", CELLS[2], {"test": split_result(CELLS[2], "test", 3)}, postprocess_record(CELLS[2], 3))
    write_trial(results, trial)
    path = write_cell(results, cell, examples_png=examples_png())
    loaded = load_sweep_results(results)
    assert loaded.warnings == []
    assert loaded.trials[0].record == trial
    assert loaded.trials[0].cells[CELLS[2].name] == CellRecord(**{**cell.__dict__, "examples": "autoddpm-gaussian-t5.png"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["autoddpm-gaussian-t5.json", "autoddpm-gaussian-t5.png"]
    assert json.loads(path.read_text(encoding="utf-8"))["cell"] == {"method": "autoddpm", "noise": "gaussian", "t": 5, "name": "autoddpm-gaussian-t5"}
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_trial_id_with_separator_rejected(tmp_path: Path) -> None:
    record = TrialRecord("sweep", "../x", "run", {}, 0, "running", 1)
    with pytest.raises(ValueError, match=r"trial_id must contain only .* but got '\.\./x'"):
        write_trial(tmp_path, record)


def test_pooled_std_equals_std_of_pooled_images() -> None:
    rng = np.random.default_rng(0)
    runs = [rng.uniform(0.6, 0.9, 20) + shift for shift in (0.0, 0.05, 0.1)]
    pooled = pool_metrics([{"ssim_healthy_mean": float(r.mean()), "ssim_healthy_std": float(r.std()), "auprc": float(r[0])} for r in runs])
    assert math.isclose(pooled["ssim_healthy_mean"], float(np.concatenate(runs).mean()), rel_tol=1e-12)
    assert math.isclose(pooled["ssim_healthy_std"], float(np.concatenate(runs).std()), rel_tol=1e-12)
    assert math.isclose(pooled["auprc"], statistics.fmean(float(r[0]) for r in runs), rel_tol=1e-12)


def test_report_pairs_table1_cells(tmp_path: Path) -> None:
    sweep = tmp_path / "sweeps" / "paired"
    add_trial(sweep, "p_00000", {}, 0, CELLS)
    result = run_report("paired", "--storage", str(tmp_path / "sweeps"))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((sweep / "report" / "config-1" / "comparisons.csv").read_text(encoding="utf-8"))))
    # Table 1 contains AnoDDPM at t=5 and AutoDDPM at t=10 (chosen on validation): one pair.
    assert len(rows) == 1
    row = rows[0]
    assert (row["Cell A"], row["Cell B"]) == ("AnoDDPM-Gaussian(t=5)", "AutoDDPM-Gaussian(t=10)")
    a, b = split_scores(CELLS[0], "test", 0), split_scores(CELLS[3], "test", 0)
    difference = 100 * (auprc(LABELS, a) - auprc(LABELS, b))
    assert row["ΔAUPRC (A − B)"].startswith(f"{difference:.1f} [")
    # On test AutoDDPM(t=10) separates far better than AnoDDPM(t=5), so the difference is clearly negative.
    assert float(row["p (AUROC)"]) < 0.05
