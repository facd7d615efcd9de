"""`sweeper data` on small real folders: prepare, review (and its page in Chromium), train-segmenter, and their errors."""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sweeper.cli import cli
from tests.conftest import DATA_ROOT, SONONET16

FBAU = DATA_ROOT / "fetal-brain-abnormalities" / "train"
HC18 = DATA_ROOT / "hc18"
HC18_CSV = "training_set_pixel_size_and_HC.csv"
PATHOLOGICAL_IDS = [f"local/p{index:02d}.jpg" for index in range(6)]


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


def build_hc18(folder: Path) -> None:
    """Copy every 20th HC18 image (30 subjects, 14 of them from 19+0 to 22+6 weeks) and add one unusable CSV row."""
    images = folder / "training_set"
    images.mkdir(parents=True)
    with open(HC18 / HC18_CSV, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    chosen = rows[::20]
    for name, *_ in chosen:
        for file in (name, name.replace(".png", "_Annotation.png")):
            shutil.copy(HC18 / "training_set" / file, images / file)
    shutil.copy(HC18 / "training_set" / chosen[0][0], images / "999_HC.png")
    with open(folder / HC18_CSV, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *chosen, ["999_HC.png", "not a number", "170"]])


@pytest.fixture(scope="module")
def hc18_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hc18") / "hc18"
    build_hc18(folder)
    return folder


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory, small_segmenter, hc18_folder: Path) -> Path:
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
                {"kind": "hc18", "path": str(hc18_folder), "name": "hc18", "role": "train"},
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
    # A cap on the training images exercises the sampling row.
    overrides = ["--set", "data.split.max_train=10"]
    first = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), *overrides])
    second = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), *overrides])
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    return first.output, second.output


STAGES = ("list", "read", "gestational age from metadata", "plane", "segmentation", "gestational age from head", "crop", "exclude list", "sampling")


def stage_rows(output: str) -> list[tuple[str, int, int]]:
    """Read (stage, in, kept) from the stage table that `sweeper data prepare` prints."""
    pattern = rf"^({'|'.join(re.escape(stage) for stage in STAGES)})\s+(\d+)\s+(\d+)\s"
    return [(match[1], int(match[2]), int(match[3])) for match in re.finditer(pattern, output, re.MULTILINE)]


def test_prepare_prints_stage_counts(prepared_twice: tuple[str, str]) -> None:
    first, _ = prepared_twice
    rows = stage_rows(first)
    assert [stage for stage, _, _ in rows] == list(STAGES)
    for (_, _, kept), (stage, entered, _) in zip(rows, rows[1:]):
        assert entered == kept, stage
    assert re.search(r"^exclude list\s+\d+\s+\d+\s+1 excluded by review", first, re.MULTILINE)
    assert re.search(r"^train\s+\d+ healthy\s+0 pathological", first, re.MULTILINE)
    assert re.search(r"^Prepared in [\d.]+ s \(listing, curation and split\) and cached as [0-9a-f]{12}$", first, re.MULTILINE)
    assert re.search(r"^The command took [\d.]+ s so far, [\d.]+ s of it start-up and model loading$", first, re.MULTILINE)


def test_second_prepare_is_cache_hit(prepared_twice: tuple[str, str]) -> None:
    _, second = prepared_twice
    match = re.search(
        r"Cache hit [0-9a-f]{12}: listing, cache read and split took ([\d.]+) s, against ([\d.]+) s of listing and "
        r"curation the first time \((\d+)x faster\)",
        second,
    )
    assert match, second
    assert float(match.group(2)) > float(match.group(1))


def test_gestational_age_window_applies_to_hc18(spec_path: Path) -> None:
    from sweeper.data_setup import prepare_data
    from sweeper.spec import load_yaml, set_dotted, validate

    raw = set_dotted(load_yaml(spec_path), "data.split.max_train", 10)
    data = prepare_data(validate(raw), spec_path=spec_path, data_root=spec_path.parent, cache_dir=spec_path.parent / "cache")
    hc18 = [record for record in data.records if record.source == "hc18"]
    outside = [record for record in hc18 if record.reason.startswith("gestational age")]
    assert outside and len(outside) < len(hc18)
    assert all(record.split in ("", "train") for record in hc18)
    unusable = next(record for record in hc18 if record.id == "hc18/999_HC")
    assert unusable.reason == "invalid pixel size 'not a number'"
    assert all(record.ga_source == "Hadlock, HC from CSV" for record in hc18 if record is not unusable)
    excluded = next(record for record in data.records if record.id == "local/h03.jpg")
    assert excluded.reason == "excluded by review: reviewer: head cut off"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_review_page_shows_every_image(spec_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "review", str(spec_path), "--set", "data.split.max_train=10", "--out", str(tmp_path / "review")])
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


def exclude_pathological(spec_path: Path) -> list[str]:
    """Write an exclude list of every pathological image and return the --set that uses it (a cache hit)."""
    path = spec_path.parent / "exclude-pathological.txt"
    path.write_text("".join(f"{identifier}  # test: leave val and test without findings\n" for identifier in PATHOLOGICAL_IDS), encoding="utf-8")
    return ["--set", f"data.curation.exclude_list={path.name}", "--set", "data.split.max_train=10"]


def test_split_failure_prints_table_first(spec_path: Path, prepared_twice: tuple[str, str]) -> None:
    result = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), *exclude_pathological(spec_path)])

    assert result.exit_code == 1
    table, error = result.output.split("Error: ")
    assert [stage for stage, _, _ in stage_rows(table)] == list(STAGES[:-1])
    assert re.search(r"^exclude list\s+\d+\s+\d+\s+6 excluded by review", table, re.MULTILINE)
    assert re.match(r"\d+ of \d+ listed images were dropped \(.*\), which left too few to split: found 0 pathological source groups", error)
    assert error.strip().endswith("add pathological data, or keep more of it through data.curation")
    assert "\n" not in error.strip()


def test_review_written_when_split_fails(spec_path: Path, prepared_twice: tuple[str, str], tmp_path: Path) -> None:
    out = tmp_path / "review"
    result = CliRunner().invoke(cli, ["data", "review", str(spec_path), *exclude_pathological(spec_path), "--out", str(out)])

    assert result.exit_code == 1
    assert "which left too few to split" in result.output
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<figure class="card') == int(re.search(r"\((\d+) images\)", result.output).group(1))
    assert "excluded by review: test: leave val and test without findings" in page
    assert "<th>notes</th>" in page


def test_exclude_list_errors_and_warnings(spec_path: Path, prepared_twice: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    latin1 = spec_path.parent / "latin1.txt"
    latin1.write_bytes("hc18/197_HC # caf\xe9 blurry\n".encode("latin-1"))
    unknown = spec_path.parent / "unknown.txt"
    unknown.write_text("local/h03 # no extension\nhc18/999_HC # unusable record, listed but dropped\nnope/x.jpg # typo\n", encoding="utf-8")

    bad = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), "--set", f"data.curation.exclude_list={latin1}"])
    with caplog.at_level(logging.WARNING):
        warned = CliRunner().invoke(cli, ["data", "prepare", str(spec_path), "--set", f"data.curation.exclude_list={unknown}", "--set", "data.split.max_train=10"])

    assert bad.exit_code == 1
    assert bad.output == f"Error: data.curation.exclude_list: exclude list '{latin1}' is not UTF-8 text (byte 17 is 0xe9); save it as UTF-8\n"
    assert warned.exit_code == 0, warned.output
    warnings = [message for message in caplog.messages if message.startswith("exclude list ids")]
    assert warnings == ["exclude list ids that match no listed image exclude nothing: 2 of 3, such as 'local/h03' (did you mean 'local/h03.jpg'?), 'nope/x.jpg'"]
    assert re.search(r"^exclude list\s+(\d+)\s+\1\s+none", warned.output, re.MULTILINE)


def test_weights_errors_name_spec_fields(spec_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "segmenter.pt"
    text.write_text("hello\n", encoding="utf-8")
    prepare = ["data", "prepare", str(spec_path)]

    segmenter = CliRunner().invoke(cli, [*prepare, "--set", f"data.curation.segmentation.weights={text}"])
    variant = CliRunner().invoke(cli, [*prepare, "--set", "data.curation.plane.variant=32"])
    from_environment = CliRunner().invoke(
        cli, [*prepare, "--set", "data.curation.plane.variant=32", "--set", "data.curation.plane.weights=null"], env={"SWEEPER_SONONET_WEIGHTS": str(SONONET16)}
    )
    cache_file = CliRunner().invoke(cli, [*prepare, "--set", f"data.cache_dir={text}"])

    assert segmenter.exit_code == 1
    assert segmenter.output == (
        f"Error: head segmenter '{text}' (from data.curation.segmentation.weights) is not a checkpoint written by "
        f"'sweeper data train-segmenter': {text} is not a zip archive as torch.save writes it (a text file or a truncated "
        f"copy?); train one with 'sweeper data train-segmenter --hc18 DIR' or fix the path\n"
    )
    assert variant.exit_code == 1
    assert "contains SonoNet-16, from data.curation.plane.weights; set data.curation.plane.variant: 16, or replace" in variant.output
    assert "from $SWEEPER_SONONET_WEIGHTS; set data.curation.plane.variant: 16" in from_environment.output
    assert cache_file.output == f"Error: data.cache_dir path '{text}' is a file, not a folder; choose a folder\n"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1."),
        (["--image-size", "16"], "Invalid value for '--image-size': 16 is not in the range x>=32."),
        (["--image-size", "44"], "Invalid value for '--image-size': 44 is not a multiple of 16, which the U-Net's downsampling needs; use 48"),
        (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1."),
        (["--val-fraction", "0"], "Invalid value for '--val-fraction': 0.0 is not in the range 0<x<1."),
        (["--val-fraction", "1.5"], "Invalid value for '--val-fraction': 1.5 is not in the range 0<x<1."),
        (["--max-images", "1"], "Invalid value for '--max-images': 1 is not in the range x>=2."),
        (["--max-images", "-5"], "Invalid value for '--max-images': -5 is not in the range x>=2."),
    ],
    ids=["epochs", "size-small", "size-multiple", "batch", "val-zero", "val-above-one", "max-one", "max-negative"],
)
def test_train_segmenter_rejects_bad_options(hc18_folder: Path, tmp_path: Path, options: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["data", "train-segmenter", "--hc18", str(hc18_folder), "--out", str(tmp_path / "seg.pt"), *options])

    assert result.exit_code == 2
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "seg.pt").exists()


def test_train_segmenter_rejects_bad_paths(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")

    folder = CliRunner().invoke(cli, ["data", "train-segmenter", "--hc18", str(tmp_path), "--out", str(tmp_path / "seg.pt")])
    out = CliRunner().invoke(cli, ["data", "train-segmenter", "--hc18", str(tmp_path), "--out", str(blocker / "seg.pt")])

    assert folder.exit_code == 1
    assert folder.output.startswith(f"Error: --hc18 {tmp_path}: HC18 {HC18_CSV} not found at ")
    assert out.exit_code == 1
    assert out.output.startswith(f"Error: --out {blocker / 'seg.pt'} cannot be written (")


def test_train_segmenter_warns_on_low_dice(hc18_folder: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    arguments = ["data", "train-segmenter", "--hc18", str(hc18_folder), "--max-images", "8", "--image-size", "32", "--epochs", "1", "--batch-size", "4"]

    result = CliRunner().invoke(cli, arguments, env={"SWEEPER_HOME": str(home)})

    assert result.exit_code == 0, result.output
    assert "Training on 8 HC18 images at 32 px, the first 8 of 30 usable (--max-images); 1 unusable records skipped" in result.output
    assert re.search(r"Warning: held-out Dice 0\.\d{3} is below 0\.9, so curation with this model drops or mis-crops many heads", result.output)
    assert "It is now the default segmenter that curation uses" in result.output
    saved = home / "weights" / "segmenter" / "head-segmenter.pt"
    assert saved.is_file()
    assert saved.with_suffix(".json").is_file()


def test_sigterm_stops_like_ctrl_c() -> None:
    from sweeper.signals import sigterm_as_interrupt

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler's KeyboardInterrupt ends the sleep at once
    assert signal.getsignal(signal.SIGTERM) is previous


def test_review_page_replaces_own_thumbnails(tmp_path: Path) -> None:
    import numpy as np

    from pipelines.curation.review import ReviewItem, write_review_page

    thumbnails = tmp_path / "thumbnails"
    thumbnails.mkdir()
    (thumbnails / "00099-original.png").write_bytes(b"stale")
    (thumbnails / "notes.txt").write_text("the reviewer's own file", encoding="utf-8")
    wide = np.linspace(0, 1, 24 * 320, dtype=np.float32).reshape(24, 320)
    items = [
        ReviewItem("local/wide.png", wide, None, None, None, None, None, "", "plane Femur (0.91), not one of Brain (Tv.)"),
        ReviewItem("local/broken.png", None, None, None, None, None, None, "", "unreadable: UnidentifiedImageError"),
    ]
    rows = [{"stage": "list", "in": 2, "kept": 2, "dropped": "none", "notes": ""}, {"stage": "read", "in": 2, "kept": 1, "dropped": "1 unreadable", "notes": "1 without an age, kept"}]

    page = write_review_page(items, tmp_path, title="check", stage_counts=rows).read_text(encoding="utf-8")

    assert sorted(path.name for path in thumbnails.iterdir()) == ["00000-original.png", "notes.txt"]
    from PIL import Image

    assert Image.open(thumbnails / "00000-original.png").size == (320, 24)
    assert '<div class="none">no image: unreadable: UnidentifiedImageError</div>' in page
    assert "<td>1 without an age, kept</td>" in page
    assert "not one of Brain (Tv.)" in page


def test_prepare_warns_on_low_dice_segmenter(hc18_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.curation.hc18 import list_hc18, load_hc18_arrays
    from pipelines.curation.segmentation import SegmenterSettings, save_segmenter, train_head_segmenter
    from sweeper.data_setup import _load_segmenter

    data = load_hc18_arrays([record for record in list_hc18(hc18_folder) if record.kept][:8], size=(32, 32))
    settings = SegmenterSettings(image_size=32, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, epochs=1, batch_size=4)
    model, report = train_head_segmenter(data.images, data.masks, data.ids, settings, groups=data.groups)
    path = save_segmenter(model, settings, report, tmp_path / "quick.pt")

    caplog.clear()  # listing HC18 above logs its own warnings
    with caplog.at_level(logging.WARNING):
        _load_segmenter(path, "data.curation.segmentation.weights")

    assert report.mean_dice < 0.9
    assert caplog.messages == [
        f"head segmenter {path} (from data.curation.segmentation.weights) has a held-out Dice of {report.mean_dice:.3f}, "
        f"below 0.9, so curation will drop or mis-crop many heads; train it longer with 'sweeper data train-segmenter'"
    ]
