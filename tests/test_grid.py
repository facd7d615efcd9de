"""Grid evaluation and the paper's tables, on phantoms with a tiny untrained UNet and real LPIPS weights."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest

from pipelines.curation.pipeline import CurationSettings
from pipelines.data.dataset import prepare_dataset
from pipelines.data.split import SplitSettings
from pipelines.diffusion.noise import make_noise
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.evaluation.grid import GridCell, GridSettings, evaluate_cell, grid_cells, summarize_cell
from pipelines.methods.autoddpm import AutoDDPMSettings
from pipelines.reporting.figures import auc_against_t_figure, cell_examples_figure
from pipelines.reporting.tables import CellSummary, all_tables, table1, to_csv, to_markdown
from trainables.tracking import flatten, sanitize_key

SETTINGS = GridSettings(batch_size=8, autoddpm=AutoDDPMSettings(t_inpaint=2, resample_steps=2))


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("grid")
    source = {"kind": "synthetic", "name": "synthetic-phantoms", "healthy": 24, "pathological": 10, "size": 64, "seed": 0}
    settings = SplitSettings(max_test={"healthy": 5, "pathological": 5})
    return prepare_dataset([source], data_root=folder, curation=CurationSettings(image_size=32), split=settings, cache_dir=folder / "cache").splits["test"]


def run(cell: GridCell, model, split, distance):
    return evaluate_cell(
        cell, model, DiffusionSchedule(20), split, split="test", noise=make_noise(cell.noise), distance=distance, settings=SETTINGS
    )


def test_grid_cells_cover_methods_and_t() -> None:
    cells = grid_cells({"anoddpm": ["gaussian", "simplex"], "autoddpm": ["gaussian"]}, [5, 10])
    assert len(cells) == 6
    assert cells[0] == GridCell("anoddpm", "gaussian", 5)
    assert GridCell("autoddpm", "gaussian", 25).label(10) == "AutoDDPM-Gaussian(t=25, ≙250)"


@pytest.mark.parametrize("cell", [GridCell("anoddpm", "gaussian", 3), GridCell("anoddpm", "simplex", 3), GridCell("autoddpm", "gaussian", 3)], ids=lambda c: c.name)
def test_cell_outputs_and_summary(cell: GridCell, model, split, distance) -> None:
    outputs = run(cell, model, split, distance)
    count = len(split)
    assert outputs.reconstructions.shape == (count, 1, 32, 32)
    assert set(outputs.maps) >= {"mae", "lpips", "mae_lpips"}
    assert all(scores.shape == (count,) for scores in outputs.scores.values())
    summary = summarize_cell(outputs)
    for key in ("mae_healthy_mean", "ssim_pathological_std", "lpips_healthy_mean", "auprc", "auroc", "auprc_mae", "auroc_lpips"):
        assert key in summary, key
    assert summary["n_healthy"] == 5
    assert summary["n_pathological"] == 5
    assert 0 <= summary["auprc"] <= 1
    if cell.method == "autoddpm":
        assert outputs.score_map == "autoddpm"
        assert set(outputs.intermediates) == {"coarse", "mask", "stitched"}
        assert summary["auprc"] == summary["auprc_autoddpm"]
    else:
        assert summary["auprc"] == summary["auprc_mae_lpips"]


def test_cell_reproducible_under_seed(model, split, distance) -> None:
    cell = GridCell("anoddpm", "gaussian", 3)
    first, second = run(cell, model, split, distance), run(cell, model, split, distance)
    assert np.array_equal(first.reconstructions, second.reconstructions)
    assert summarize_cell(first) == summarize_cell(second)


def test_cell_independent_of_batch_size(model, split, distance) -> None:
    # Every image draws its noise from its own generator, so batching does not change its reconstruction.
    cell = GridCell("autoddpm", "gaussian", 2)
    whole = run(cell, model, split, distance)
    settings = dataclasses.replace(SETTINGS, batch_size=3)
    chunked = evaluate_cell(
        cell, model, DiffusionSchedule(20), split, split="test", noise=make_noise(cell.noise), distance=distance, settings=settings
    )
    np.testing.assert_allclose(chunked.reconstructions, whole.reconstructions, atol=1e-5)
    np.testing.assert_allclose(chunked.scores[chunked.score_map], whole.scores[whole.score_map], atol=1e-5)


def summaries() -> list[CellSummary]:
    def metrics(val_auprc: float) -> dict[str, float]:
        return {"auprc": val_auprc, "auroc": 0.5, "ssim_healthy_mean": 0.9, "ssim_healthy_std": 0.01,
                "lpips_healthy_mean": 0.05, "lpips_healthy_std": 0.01, "auprc_mae": 0.6, "auroc_mae": 0.4}

    result = []
    for t, val, test in [(5, 0.9, 0.5), (10, 0.7, 0.99)]:
        cell = GridCell("anoddpm", "gaussian", t)
        result.append(CellSummary(cell, "val", metrics(val)))
        result.append(CellSummary(cell, "test", metrics(test)))
    return result


def test_table1_chooses_t_on_validation_only() -> None:
    rows = table1(summaries(), stride=10)
    assert len(rows) == 1
    assert rows[0]["Method"] == "AnoDDPM-Gaussian(t=5, ≙50)"
    assert rows[0]["Pathological AUPRC ↑"] == "50.0"
    assert rows[0]["Healthy SSIM ↑"] == "0.900 ± 0.010"


def test_table1_without_validation_lists_every_t() -> None:
    rows = table1([s for s in summaries() if s.split == "test"])
    assert [row["t chosen by"] for row in rows] == ["all t (no separate val split)"] * 2


def test_tables_render(tmp_path: Path) -> None:
    tables = all_tables(summaries())
    assert set(tables) == {"table1", "appendix_reconstruction", "appendix_lpips", "appendix_detection"}
    markdown = to_markdown(tables["appendix_detection"])
    assert markdown.splitlines()[0].startswith("| Cell | AUPRC ↑ | AUROC ↑ | AUPRC mae | AUROC mae |")
    assert to_csv(tables["table1"]).splitlines()[0].startswith("Method,Healthy SSIM ↑")


def test_figures_render(model, split, distance) -> None:
    outputs = run(GridCell("autoddpm", "gaussian", 2), model, split, distance)
    for figure in (cell_examples_figure(outputs, per_label=2), auc_against_t_figure(summaries(), stride=10)):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue()[:4] == b"\x89PNG"


def test_metric_keys_sanitized() -> None:
    assert sanitize_key("test/auprc_mae_lpips") == "test/auprc_mae_lpips"
    assert sanitize_key("test/auprc_mae*lpips (t=5)").startswith("test/auprc_mae_lpips _t_5__")
    assert sanitize_key("a*b") != sanitize_key("a?b")
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
