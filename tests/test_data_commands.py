"""`sweeper data prepare` and `sweeper data review` on a small real folder, and the review page in Chromium."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sweeper.cli import cli
from tests.conftest import DATA_ROOT, SONONET16

FBAU = DATA_ROOT / "fetal-brain-abnormalities" / "train"
HC18 = DATA_ROOT / "hc18"


def build_source(folder: Path) -> None:
    """Write 12 healthy patients and 6 pathological cases of the real data, with labels.csv."""
    folder.mkdir(parents=True)
    rows = []
    healthy = sorted(FBAU.glob("Patient*"))
    patients: dict[str, Path] = {}
    for path in healthy:
        patients.setdefault(path.name.split("_")[0], path)
    for index, path in enumerate(list(patients.values())[:12]):
        shutil.copy(path, folder / f"h{index:02d}.jpg")
        rows.append((f"h{index:02d}.jpg", "healthy", f"patient{index}"))
    for index, path in enumerate(sorted(FBAU.glob("Copy-of-*"))[:60:10]):
        shutil.copy(path, folder / f"p{index:02d}.jpg")
        rows.append((f"p{index:02d}.jpg", "cyst", f"case{index}"))
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "group"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory, small_segmenter) -> Path:
    root = tmp_path_factory.mktemp("data-commands")
    build_source(root / "images")
    (root / "exclude.txt").write_text("local/h03.jpg  # reviewer: head cut off\n", encoding="utf-8")
    spec = {
        "name": "curation-check",
        "data": {
            "root": str(root),
            "cache_dir": str(root / "cache"),
            "image_size": 32,
            "sources": [
                {"kind": "folder-csv", "path": "images", "name": "local"},
                {"kind": "hc18", "path": str(HC18), "name": "hc18", "role": "train"},
            ],
            "curation": {
                "gestational_age": {"enabled": True, "missing": "keep"},
                "plane": {"enabled": True, "variant": 16, "weights": str(SONONET16), "labels": ["Brain (Tv.)", "Brain (Cb.)"], "min_confidence": 0.5, "apply_to": ["healthy"]},
                "segmentation": {"enabled": True, "weights": str(small_segmenter.path), "mc_samples": 2, "max_uncertainty": 0.5},
                "exclude_list": "exclude.txt",
            },
        },
        "model": {"preset": "tiny", "T": 100, "reference_T": 1000},
        "training": {"epochs": 1},
        "evaluation": {"t": [2]},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared_twice(spec_path: Path) -> tuple[str, str]:
    # HC18 has 600 images; 40 of them keep the test fast while still exercising the train role.
    overrides = ["--set", "data.split.max_train=40"]
    first = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), *overrides])
    second = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), *overrides])
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    return first.output, second.output


def test_prepare_prints_stage_counts(prepared_twice: tuple[str, str]) -> None:
    first, _ = prepared_twice
    for stage in ("read", "gestational age", "plane", "segmentation", "crop"):
        assert re.search(rf"^{stage}\s+\d+\s+\d+\s+", first, re.MULTILINE), stage
    assert re.search(r"^train\s+\d+ healthy\s+0 pathological", first, re.MULTILINE)
    assert "Prepared in" in first


def test_second_prepare_is_cache_hit(prepared_twice: tuple[str, str]) -> None:
    _, second = prepared_twice
    match = re.search(r"Cache hit [0-9a-f]{12}: ([\d.]+) s, against ([\d.]+) s for the first preparation \((\d+)x faster\)", second)
    assert match, second
    assert float(match.group(2)) > float(match.group(1))


def test_gestational_age_window_applies_to_hc18(spec_path: Path) -> None:
    from sweeper.data_setup import prepare_data
    from sweeper.spec import load_yaml, set_dotted, validate

    raw = set_dotted(load_yaml(spec_path), "data.split.max_train", 40)
    data = prepare_data(validate(raw), spec_path=spec_path, data_root=spec_path.parent, cache_dir=spec_path.parent / "cache")
    hc18 = [record for record in data.records if record.source == "hc18"]
    outside = [record for record in hc18 if record.reason.startswith("gestational age")]
    assert outside and len(outside) < len(hc18)
    assert all(record.split in ("", "train") for record in hc18)
    assert all(record.ga_source == "Hadlock, HC from CSV" for record in hc18)
    excluded = next(record for record in data.records if record.id == "local/h03.jpg")
    assert excluded.reason == "excluded by review: reviewer: head cut off"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_review_page_shows_every_image(spec_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "review", str(spec_path), "--set", "data.split.max_train=40", "--out", str(tmp_path / "review")])
    assert result.exit_code == 0, result.output
    page = tmp_path / "review" / "index.html"
    cards = page.read_text(encoding="utf-8").count('<figure class="card')
    assert cards == int(re.search(r"\((\d+) images\)", result.output).group(1))

    browser = chromium()
    if browser is None:
        if os.environ.get("SWEEPER_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (SWEEPER_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Chromium is not installed; .ci/run installs it")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    check = re.search(r'id="image-check" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert check, dom[:2000]
    loaded, total = int(check.group(1)), int(check.group(2))
    assert total >= cards
    assert loaded == total
