"""The benchmark runner and the GPU check: quick runs print their table and write the documented JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import Context, Machine, Row, Timing
from benchmarks.__main__ import discover, format_table, select
from benchmarks._flops import PEAK_TFLOPS_ENV, device_peak
from pipelines.diffusion.performance import resolve_speed_options
from tests.conftest import PROJECT_ROOT

MACHINE_FIELDS = {"cpu", "cores", "torch", "device", "threads"}
ROW_FIELDS = {
    "topic", "name", "status", "machine", "command", "baseline", "runs", "median_s",
    "baseline_median_s", "ratio", "seconds", "baseline_seconds", "note",
}


def run_module(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ARGUMENTS`` in the project with one PyTorch thread, as on a shared machine."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", *arguments], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def test_noise_quick_run_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    result = run_module("benchmarks", "noise", "--quick", "--repeats", "1", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| benchmark | device | runs | median | baseline median | ratio | note |" in result.stdout
    assert "| simplex_cpu | cpu | 1 |" in result.stdout

    document = json.loads(out.read_text())
    assert document["command"] == f"python -m benchmarks noise --quick --repeats 1 --threads 1 --out {out}"
    assert document["quick"] is True
    assert document["repeats"] == 1
    assert document["threads"] == 1
    rows = {row["name"]: row for row in document["rows"]}
    assert {"simplex_cpu", "simplex_gpu", "share_cpu_tiny_train", "share_cpu_tiny_reverse", "share_gpu_tiny_train"} <= set(rows)
    for row in rows.values():
        assert set(row) == ROW_FIELDS
        assert set(row["machine"]) == MACHINE_FIELDS
        assert row["topic"] == "noise"
        assert row["command"]
        assert row["baseline"]

    measured = rows["simplex_cpu"]
    assert measured["status"] == "ok"
    assert measured["runs"] == 1
    assert measured["machine"]["device"] == "cpu"
    assert measured["ratio"] == pytest.approx(measured["median_s"] / measured["baseline_median_s"])
    assert rows["share_cpu_tiny_train"]["status"] == "ok"
    assert rows["steps_cpu_train"]["status"] == "ok"

    gpu_rows = [row for name, row in rows.items() if "gpu" in name]
    assert len(gpu_rows) == 4
    if not torch.cuda.is_available():
        for row in gpu_rows:
            assert row["status"] == "skipped"
            assert row["note"] == "CUDA is not available"
            assert row["median_s"] is None
            assert row["ratio"] is None


def test_training_quick_run_compares_with_plain_loop(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    result = run_module("benchmarks", "training", "--quick", "--repeats", "1", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr

    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {f"{kind}_{device}_tiny" for kind in ("step", "channels_last", "bf16", "compile") for device in ("cpu", "gpu")}
    for row in rows.values():
        assert set(row) == ROW_FIELDS
        assert row["topic"] == "training"

    step = rows["step_cpu_tiny"]
    assert step["status"] == "ok"
    assert step["command"].startswith("train_ddpm(precision=auto, channels_last=None, compile=False): fp32, contiguous, eager")
    assert step["baseline"].startswith("plain_fp32_loop")
    assert step["ratio"] == pytest.approx(step["median_s"] / step["baseline_median_s"])
    assert "images/s" in step["note"]
    assert "peak RSS growth (child process)" in step["note"]
    assert " MiB vs " in step["note"]
    assert rows["bf16_cpu_tiny"]["command"].startswith("train_ddpm(precision=bf16, channels_last=None, compile=False): bf16 autocast")
    assert rows["compile_cpu_tiny"]["status"] == "skipped"
    assert "--quick skips torch.compile" in rows["compile_cpu_tiny"]["note"]
    if not torch.cuda.is_available():
        for name in ("step_gpu_tiny", "channels_last_gpu_tiny", "bf16_gpu_tiny", "compile_gpu_tiny"):
            assert rows[name]["status"] == "skipped"
            assert rows[name]["note"] == "CUDA is not available"


def test_device_peak_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PEAK_TFLOPS_ENV, raising=False)
    assert device_peak("cpu") is None
    assert device_peak("cpu", 100.0).tflops == 100.0
    monkeypatch.setenv(PEAK_TFLOPS_ENV, "250")
    peak = device_peak("cpu")
    assert (peak.tflops, peak.source) == (250.0, f"${PEAK_TFLOPS_ENV}")
    assert device_peak("cpu", 100.0).source == "--peak-tflops"


@pytest.mark.parametrize("text", ["fast", "0", "-5"])
def test_device_peak_rejects_bad_environment(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(PEAK_TFLOPS_ENV, text)
    with pytest.raises(ValueError, match=rf"\${PEAK_TFLOPS_ENV} must be a (positive )?number of TFLOP/s, but got"):
        device_peak("cpu")


def test_gpu_check_smoke_reports_each_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = run_module("benchmarks.gpu_check", "--smoke", "--peak-tflops", "100", "--out", str(out))
    assert result.returncode == 0, result.stderr
    options = resolve_speed_options("cuda" if torch.cuda.is_available() else "cpu").describe()
    assert f"1. training ({options}): 2 steps of 2" in result.stdout
    assert "2. grid: 18 cells, 1 images" in result.stdout
    assert "3. against a peak of 100 TFLOP/s (--peak-tflops): MFU of training" in result.stdout

    report = json.loads(out.read_text())
    assert report["smoke"] is True
    assert report["grid_cells"] == 18
    assert report["forward_flops_per_image"] > 0
    assert report["train_images_per_s"] > 0
    assert report["grid_images_per_s"] > 0
    assert report["grid_unet_images"] > 0
    assert report["peak_tflops"] == 100
    assert report["train_mfu"] == pytest.approx(report["train_tflops"] / 100)
    assert report["grid_mfu"] == pytest.approx(report["grid_tflops"] / 100)
    assert report["train_options"] == options
    assert set(report["machine"]) == MACHINE_FIELDS


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_gpu_check_without_cuda_fails_clearly() -> None:
    result = run_module("benchmarks.gpu_check", "--out", os.devnull)
    assert result.returncode == 1
    assert "gpu_check needs a CUDA device" in result.stderr
    assert "--smoke" in result.stderr


def test_discover_finds_topic_modules() -> None:
    names = discover()
    assert {"noise.simplex_cpu", "noise.simplex_gpu", "noise.share_cpu", "noise.share_gpu", "cache.prepare_cpu"} <= set(names)
    assert {"training.cpu", "training.gpu"} <= set(names)
    assert not any(name.startswith(("gpu_check.", "_")) for name in names)


def test_select_by_topic_and_by_name() -> None:
    available = {"noise.a": print, "noise.b": print, "cache.c": print}
    assert set(select(available, ["noise"])) == {"noise.a", "noise.b"}
    assert set(select(available, ["cache.c", "noise.b"])) == {"cache.c", "noise.b"}
    assert set(select(available, [])) == set(available)


def test_select_rejects_unknown_name() -> None:
    with pytest.raises(SystemExit, match=r"benchmark 'grid' not found; choose a topic \(cache, noise\) or a name from --list"):
        select({"noise.a": print, "cache.c": print}, ["grid"])


def test_row_ratio_and_table() -> None:
    machine = Machine(cpu="test CPU", cores=2, torch="2.x", device="cpu", threads=1)
    row = Row("fast", machine, "new()", "old()", Timing((0.002, 0.001, 0.003)), Timing((0.004,)), note="n")
    skipped = Row("gpu", machine, "new()", "old()", None, None, status="skipped", note="CUDA is not available")
    assert row.ratio == pytest.approx(0.5)
    assert skipped.ratio is None
    table = format_table([row, skipped])
    assert "| fast | cpu | 3 | 2.00 ms | 4.00 ms | 0.5 | n |" in table
    assert "| gpu | cpu | 0 | - | - | - | skipped: CUDA is not available |" in table
    assert "fast: new()" in table


def test_context_rejects_zero_repeats() -> None:
    with pytest.raises(ValueError, match=r"repeats must be at least 1, but got 0"):
        Context(repeats=0).time(lambda: None)
