"""The Ray Tune overhead benchmark: a quick run times trials through Tune against the plain loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_benchmarks import ROW_FIELDS, run_module


@pytest.mark.slow
def test_tune_overhead_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    result = run_module("benchmarks", "sweep", "--quick", "--repeats", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]

    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"tune_overhead_cpu", "tune_overhead_reuse_cpu"}
    for row in rows.values():
        assert set(row) == ROW_FIELDS
        assert row["status"] == "ok"
        assert row["runs"] == 1
        # Four trials through Tune cannot take less than the same work without it.
        assert row["ratio"] > 1
        assert "s per trial" in row["note"]
    assert "reuse_actors=True" in rows["tune_overhead_reuse_cpu"]["command"]
