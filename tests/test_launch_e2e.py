"""End to end: `sweeper launch configs/fbau-cpu.yaml` on the real data, 2 trials, a real MLflow server.

The sweep is shrunk with --set (one epoch, two noise levels, 32-pixel images) so it
fits the test budget; everything else is the shipped spec. The results are then read
back through MlflowClient and `sweeper status`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import ServerInfo
from tests.conftest import DATA_ROOT, PROJECT_ROOT, SONONET16

pytestmark = pytest.mark.slow

SWEEPER = str(Path(sys.executable).parent / "sweeper")
SHRINK = [
    "training.steps=4",
    "evaluation.t=[2, 4]",
    "evaluation.autoddpm.t_inpaint=2",
    "evaluation.autoddpm.resample_steps=1",
    "evaluation.figure_examples=2",
    "data.image_size=32",
    "data.split.max_val.healthy=6",
    "data.split.max_val.pathological=6",
    "data.curation.segmentation.mc_samples=2",
    "evaluation.postprocess.n_trials=6",
    "evaluation.bootstrap.n_resamples=200",
]


def ray_processes() -> set[int]:
    """Return the PIDs of Ray's cluster processes on this machine (GCS servers and raylets)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(line.split(None, 1)[0]) for line in listing.splitlines() if "gcs_server" in line or "/raylet" in line}


@pytest.fixture(scope="module")
def sweep(server: ServerInfo, tmp_path_factory: pytest.TempPathFactory, small_segmenter) -> dict:
    work = tmp_path_factory.mktemp("sweep")
    ray_before = ray_processes()
    command = [
        SWEEPER, "launch", str(PROJECT_ROOT / "configs" / "fbau-cpu.yaml"),
        "--data-root", str(DATA_ROOT),
        "--tracking-uri", server.uri,
        "--storage", str(work / "sweeps"),
        "--name", "e2e",
        "--set", f"data.cache_dir={work / 'cache'}",
        "--set", f"data.curation.segmentation.weights={small_segmenter.path}",
        "--set", f"data.curation.plane.weights={SONONET16}",
    ]
    for override in SHRINK:
        command += ["--set", override]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=work)
    return {
        "completed": completed,
        "storage": work / "sweeps",
        "work": work,
        "ray_before": ray_before,
        "ray_after": ray_processes(),
    }


@pytest.fixture(scope="module")
def runs(sweep: dict, server: ServerInfo) -> dict:
    assert sweep["completed"].returncode == 0, sweep["completed"].stdout[-3000:] + sweep["completed"].stderr[-3000:]
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("e2e")
    assert experiment is not None
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    by_level: dict[str, list] = {"sweep": [], "trial": [], "cell": []}
    for run in everything:
        by_level[run.data.tags["sweeper.level"]].append(run)
    return {"client": client, "experiment": experiment, **by_level}


def test_launch_prints_url_and_table(sweep: dict, runs: dict, server: ServerInfo) -> None:
    output = sweep["completed"].stdout
    assert f"MLflow UI: {server.uri}/#/experiments/{runs['experiment'].experiment_id}" in output
    assert "| Method | Healthy SSIM ↑ | Healthy LPIPS ↓ | Pathological AUPRC ↑ | Pathological AUROC ↑ |" in output
    assert output.count("TERMINATED") >= 2


def test_one_sweep_run_two_trial_runs(runs: dict) -> None:
    assert len(runs["sweep"]) == 1
    sweep_run = runs["sweep"][0]
    assert len(runs["trial"]) == 2
    for trial in runs["trial"]:
        assert trial.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert trial.info.status == "FINISHED"
    assert sweep_run.info.status == "FINISHED"
    assert {trial.data.params["training.lr"] for trial in runs["trial"]} == {"0.001", "0.0005"}


def test_every_grid_cell_has_a_run(runs: dict) -> None:
    trial_ids = {trial.info.run_id for trial in runs["trial"]}
    per_trial = Counter(cell.data.tags["mlflow.parentRunId"] for cell in runs["cell"])
    assert set(per_trial) == trial_ids
    # anoddpm x {gaussian, simplex} + autoddpm x {gaussian}, at t = 2 and 4.
    assert all(count == 6 for count in per_trial.values())
    names = {(cell.data.params["method"], cell.data.params["noise"], cell.data.params["t"]) for cell in runs["cell"]}
    assert names == {(m, n, t) for m, n in [("anoddpm", "gaussian"), ("anoddpm", "simplex"), ("autoddpm", "gaussian")] for t in ("2", "4")}
    for cell in runs["cell"]:
        metrics = cell.data.metrics
        for split in ("val", "test"):
            assert 0 <= metrics[f"{split}/auprc"] <= 1
            assert 0 <= metrics[f"{split}/auroc"] <= 1
        assert 0 <= metrics["test/ssim_healthy_mean"] <= 1
        # The curated test split is capped at 12 healthy and 18 pathological images.
        assert 5 <= metrics["test/n_healthy"] <= 12
        assert 5 <= metrics["test/n_pathological"] <= 18
        assert cell.data.params["t_reference"] == str(int(cell.data.params["t"]) * 10)
        assert cell.info.status == "FINISHED"


def test_trial_artifacts_and_loss_curve(runs: dict) -> None:
    client = runs["client"]
    trial = runs["trial"][0]
    top = {item.path for item in client.list_artifacts(trial.info.run_id)}
    assert {"spec.yaml", "manifest.csv", "checkpoints", "tables", "auc_against_t.png"} <= top
    checkpoints = {item.path for item in client.list_artifacts(trial.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/model-gaussian.pt", "checkpoints/model-simplex.pt"}
    tables = {item.path for item in client.list_artifacts(trial.info.run_id, "tables")}
    assert {"tables/table1.csv", "tables/table1.md", "tables/appendix_detection.csv", "tables/appendix_reconstruction.md"} <= tables
    history = client.get_metric_history(trial.info.run_id, "train/loss_gaussian")
    assert len(history) == 1
    cell = next(c for c in runs["cell"] if c.data.tags["mlflow.parentRunId"] == trial.info.run_id and c.data.params["method"] == "autoddpm")
    assert {item.path for item in client.list_artifacts(cell.info.run_id)} == {"results", "postprocess"}
    results = {item.path for item in client.list_artifacts(cell.info.run_id, "results")}
    assert results == {"results/autoddpm-gaussian-t2.json", "results/autoddpm-gaussian-t2.png"} or results == {
        "results/autoddpm-gaussian-t4.json",
        "results/autoddpm-gaussian-t4.png",
    }


def test_cells_log_intervals_and_the_postprocessing_search(runs: dict) -> None:
    client = runs["client"]
    for cell in runs["cell"]:
        metrics, params = cell.data.metrics, cell.data.params
        for split in ("val", "test"):
            assert metrics[f"{split}/ci_auprc_low"] <= metrics[f"{split}/auprc"] <= metrics[f"{split}/ci_auprc_high"]
            assert metrics[f"{split}/ci_auroc_low"] <= metrics[f"{split}/auroc"] <= metrics[f"{split}/ci_auroc_high"]
        assert params["postprocess.map"] in {"mae", "lpips", "mae_lpips", "autoddpm"}
        assert {"postprocess.sigma", "postprocess.head_mask", "postprocess.score"} <= set(params)
        counts = sum(metrics[f"postprocess/test_{name}"] for name in ("tp", "tn", "fp", "fn"))
        assert counts == metrics["test/n_healthy"] + metrics["test/n_pathological"]
        assert 0 <= metrics["postprocess/test_sensitivity"] <= 1
    cell = runs["cell"][0]
    history = client.get_metric_history(cell.info.run_id, "postprocess/history_val_auprc")
    assert sorted(point.step for point in history) == list(range(6))
    assert {item.path for item in client.list_artifacts(cell.info.run_id, "postprocess")} == {"postprocess/study.json"}


def test_report_from_mlflow_writes_every_table_and_figure(sweep: dict, runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    completed = subprocess.run(
        [SWEEPER, "report", "e2e", "--storage", str(sweep["storage"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Trials: 2 of 2 done; cells: 12 of 12 evaluated." in completed.stdout
    written = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    for config in ("config-1", "config-2"):
        for table in ("table1", "postprocess", "appendix_reconstruction", "appendix_lpips", "appendix_detection"):
            assert {f"{config}/{table}.md", f"{config}/{table}.csv", f"{config}/{table}.tex"} <= written
        assert {f"{config}/auc_against_t.png", f"{config}/examples.png"} <= written
    # Intervals stand next to every AUPRC and AUROC, as in "85.2 [78.1, 91.0]".
    table1 = (out / "config-1" / "table1.md").read_text(encoding="utf-8")
    assert re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", table1)


def test_artifacts_are_served_not_local(sweep: dict, runs: dict, server: ServerInfo) -> None:
    trial = runs["trial"][0]
    assert trial.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert not list(sweep["work"].rglob("mlruns"))
    assert list((server.root / "artifacts").rglob("model-gaussian.pt"))


def test_manifest_lists_splits(runs: dict, tmp_path: Path) -> None:
    client = runs["client"]
    path = client.download_artifacts(runs["trial"][0].info.run_id, "manifest.csv", str(tmp_path))
    text = Path(path).read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("id,path,sha256,source,role,group,frame,label,finding,split,reason,ga_weeks")
    assert len(text.splitlines()) == 1 + 1127 + 140 + 139 + 600


def test_status_lists_trials(sweep: dict, runs: dict) -> None:
    completed = subprocess.run(
        [SWEEPER, "status", "e2e", "--storage", str(sweep["storage"])], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "Sweep e2e: 2 trials" in completed.stdout
    assert completed.stdout.count("TERMINATED") == 2
    assert "training.lr=0.001" in completed.stdout


def test_no_ray_process_left(sweep: dict) -> None:
    # Other users' Ray processes may come and go; the sweep must leave none of its own.
    assert not sweep["ray_after"] - sweep["ray_before"]


def test_second_launch_same_name_refused(sweep: dict, server: ServerInfo) -> None:
    completed = subprocess.run(
        [SWEEPER, "launch", str(PROJECT_ROOT / "configs" / "fbau-cpu.yaml"), "--data-root", str(DATA_ROOT),
         "--tracking-uri", server.uri, "--storage", str(sweep["storage"]), "--name", "e2e"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert "Error: sweep 'e2e' already exists" in completed.stderr
