"""The curation stages run together on real images and on every kind of bad input.

A folder-csv source mixes real HC18 and Fetal Brain Abnormalities frames with a 16-bit
PNG, a DICOM file carrying patient tags, a frame of another standard plane, a black and
a white frame, a tiny image and a corrupt file. SonoNet-16 and a small head segmenter trained on HC18 are real.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.curation.gestational_age import hadlock_ga_weeks
from pipelines.curation.pipeline import (
    CurationSettings,
    GestationalAgeSettings,
    PlaneSettings,
    SegmentationSettings,
    curate,
    segmentation_outcome,
)
from pipelines.curation.segmentation import HeadSegmentation
from pipelines.curation.sononet import load_sononet
from pipelines.data.records import write_manifest
from pipelines.data.sources import list_source
from tests.conftest import DATA_ROOT, SHARED, SONONET16
from tests.test_curation_io import write_dicom

HC18_IMAGES = DATA_ROOT / "hc18" / "training_set"
FBAU = DATA_ROOT / "fetal-brain-abnormalities" / "train"
HC18_SPACING = {row["filename"]: row["pixel size(mm)"] for row in csv.DictReader(open(DATA_ROOT / "hc18" / "training_set_pixel_size_and_HC.csv", encoding="utf-8"))}


def build_folder(folder: Path) -> None:
    """Write the mixed folder and its labels.csv (file, label, group, ga, spacing)."""
    folder.mkdir()
    rows = []
    hc18 = sorted(HC18_IMAGES.glob("*_HC.png"))[200:206]
    for index, path in enumerate(hc18):
        name = f"hc18-{index}.png"
        shutil.copy(path, folder / name)
        ga = ["21+2", "20+0", "22+6", "30+0", "", ""][index]
        rows.append((name, "healthy", f"h{index}", ga, HC18_SPACING[path.name]))
    for index, path in enumerate(sorted(FBAU.glob("Copy-of-*"))[:40:10]):
        name = f"fbau-{index}.jpg"
        shutil.copy(path, folder / name)
        rows.append((name, "cyst", f"p{index}", "", ""))

    deep = np.asarray(Image.open(hc18[0]), dtype=np.uint16) * 257
    Image.fromarray(deep).save(folder / "deep.png")
    rows.append(("deep.png", "healthy", "d", "21+0", HC18_SPACING[hc18[0].name]))

    write_dicom(folder / "scan.dcm", np.asarray(Image.open(hc18[1])), spacing=(0.15, 0.15))
    rows.append(("scan.dcm", "healthy", "dicom", "", ""))

    shutil.copy(SHARED / "models" / "sononet" / "example_images" / "FEMUR.tiff", folder / "femur.tiff")
    rows.append(("femur.tiff", "healthy", "f", "21+0", ""))

    # Blank frames, as cine exports contain: SonoNet finds no fan in the black one and no contrast in the white one.
    Image.fromarray(np.zeros((300, 400), dtype=np.uint8)).save(folder / "black.png")
    rows.append(("black.png", "healthy", "k", "21+0", ""))
    Image.fromarray(np.full((300, 400), 255, dtype=np.uint8)).save(folder / "white.png")
    rows.append(("white.png", "healthy", "w", "21+0", ""))

    Image.fromarray(np.full((20, 20), 90, dtype=np.uint8)).save(folder / "tiny.png")
    rows.append(("tiny.png", "healthy", "t", "21+0", ""))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows.append(("corrupt.png", "healthy", "c", "21+0", ""))

    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "group", "ga", "spacing"])
        writer.writerows(rows)


SOURCE = {
    "kind": "folder-csv",
    "path": "mixed",
    "name": "mixed",
    "csv": "labels.csv",
    "file_column": "file",
    "label_column": "label",
    "group_column": "group",
    "healthy_labels": ["healthy"],
    "ga_column": "ga",
    "ga_unit": "weeks",
    "pixel_spacing_column": "spacing",
    "role": "split",
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, small_segmenter):
    root = tmp_path_factory.mktemp("curation")
    build_folder(root / "mixed")
    items = list_source(SOURCE, root)
    settings = CurationSettings(
        image_size=48,
        gestational_age=GestationalAgeSettings(enabled=True, missing="keep"),
        plane=PlaneSettings(enabled=True, labels=("Brain (Tv.)", "Brain (Cb.)", "Background"), min_confidence=0.3, apply_to=("healthy",)),
        segmentation=SegmentationSettings(enabled=True, mc_samples=4, max_uncertainty=0.5, drop_border=False),
    )
    logging.getLogger().setLevel(logging.DEBUG)
    outputs, counts = curate(items, settings, sononet=load_sononet(SONONET16), segmenter=small_segmenter.model)
    records = {item.record.id.removeprefix("mixed/"): item.record for item in items}
    return root, records, outputs, counts


def test_bad_inputs_get_defined_reasons(curated) -> None:
    _, records, _, _ = curated
    assert records["corrupt.png"].reason.startswith("unreadable:")
    assert records["tiny.png"].reason == "image too small: 20x20 pixels, need at least 64"
    assert records["hc18-3.png"].reason == "gestational age 30+0 outside 19+0 to 22+6"
    assert records["femur.tiff"].reason.startswith("plane Femur")
    assert records["femur.tiff"].plane == "Femur"


def test_sixteen_bit_and_dicom_are_read(curated) -> None:
    _, records, outputs, _ = curated
    for name in ("deep.png", "scan.dcm"):
        assert not records[name].reason.startswith("unreadable"), records[name].reason
        assert f"mixed/{name}" in outputs
    assert records["scan.dcm"].pixel_spacing_mm == pytest.approx(0.15)


def test_missing_age_estimated_from_head(curated) -> None:
    _, records, _, _ = curated
    estimated = [record for record in records.values() if record.ga_source == "Hadlock, HC from segmentation"]
    assert estimated
    for record in estimated:
        assert record.ga_weeks == pytest.approx(hadlock_ga_weeks(record.hc_mm))
        assert record.hc_mm > 50


def test_pathological_images_skip_plane_filter(curated) -> None:
    _, records, _, _ = curated
    for name in (f"fbau-{index}.jpg" for index in range(4)):
        assert records[name].plane == ""
        assert not records[name].reason.startswith("plane")


def test_kept_images_are_cropped_heads(curated) -> None:
    _, records, outputs, _ = curated
    kept = [identifier for identifier, record in records.items() if record.kept]
    assert len(kept) >= 6
    for name in kept:
        output = outputs[f"mixed/{name}"]
        assert output.image.shape == output.head_mask.shape == (48, 48)
        assert output.head_mask.any()
        assert output.image[~output.head_mask].max() == 0.0
        assert 0.99 <= output.image.max() <= 1.0
        assert records[name].head_uncertainty is not None


def test_blank_frames_dropped_by_plane_stage(curated) -> None:
    _, records, outputs, counts = curated
    for name in ("black.png", "white.png"):
        assert records[name].reason == "blank frame: the SonoNet input has one intensity everywhere"
        assert outputs[f"mixed/{name}"].thumbnail is not None
    rows = {row["stage"]: row for row in counts.rows()}
    assert "2 blank frame" in rows["plane"]["dropped"]


def test_stage_counts_add_up(curated) -> None:
    _, records, _, counts = curated
    rows = {row["stage"]: row for row in counts.rows()}
    assert list(rows) == ["read", "gestational age from metadata", "plane", "segmentation", "gestational age from head", "crop"]
    assert rows["read"]["in"] == len(records)
    assert rows["read"]["kept"] == len(records) - 2
    assert "1 unreadable" in rows["read"]["dropped"] and "1 too small" in rows["read"]["dropped"]
    assert "outside the window" in rows["gestational age from metadata"]["dropped"]
    assert "1 plane Femur" in rows["plane"]["dropped"]
    assert "4 pathological not checked" in rows["plane"]["notes"]
    assert rows["crop"]["kept"] == sum(record.kept for record in records.values())
    for row in rows.values():
        dropped = sum(int(part.split()[0]) for part in row["dropped"].split(", ") if part != "none")
        assert row["in"] == row["kept"] + dropped, row


def test_stage_rows_chain(curated) -> None:
    _, _, _, counts = curated
    rows = counts.rows()
    for previous, row in zip(rows, rows[1:]):
        assert row["in"] == previous["kept"], (previous, row)


def test_fixed_crop_box_outside_frame_drops_image(tmp_path: Path) -> None:
    folder = tmp_path / "boxes"
    folder.mkdir()
    hc18 = sorted(HC18_IMAGES.glob("*_HC.png"))[0]
    shutil.copy(hc18, folder / "hc18.png")  # 540 rows, 800 columns
    shutil.copy(sorted(FBAU.glob("Patient*"))[0], folder / "fbau.jpg")  # 640 x 640
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["file", "label", "group"], ["hc18.png", "healthy", "a"], ["fbau.jpg", "healthy", "b"]])
    source = {**SOURCE, "path": "boxes", "name": "boxes", "ga_column": None, "pixel_spacing_column": None}
    items = list_source(source, tmp_path)
    settings = CurationSettings(image_size=32, plane=PlaneSettings(enabled=True, labels=("Brain (Tv.)",), min_confidence=0.0, crop=(0, 500, 0, 700)))

    _, counts = curate(items, settings, sononet=load_sononet(SONONET16))

    records = {item.record.id: item.record for item in items}
    assert records["boxes/fbau.jpg"].reason == "crop box [0, 500, 0, 700] of data.curation.plane.crop does not fit the 640x640 frame"
    assert records["boxes/hc18.png"].plane != ""
    plane = next(row for row in counts.rows() if row["stage"] == "plane")
    assert plane["in"] == 2
    assert "1 crop box outside the frame" in plane["dropped"]


def test_patient_tags_never_leave_the_file(curated, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, records, _, _ = curated
    manifest = write_manifest(list(records.values()), tmp_path / "manifest.csv").read_text(encoding="utf-8")
    for secret in ("Doe", "Jane", "SECRET-4711", "19900101"):
        assert secret not in manifest
        assert secret not in " ".join(caplog.messages)
        assert all(secret not in str(value) for record in records.values() for value in vars(record).values())


def segmentation(*, found: bool = True, uncertainty: float = 0.01, border: bool = False) -> HeadSegmentation:
    mask = np.zeros((8, 8), dtype=bool)
    if found:
        mask[2:6, 2:6] = True
    return HeadSegmentation(probability=mask.astype(np.float32), mask=mask, uncertainty=uncertainty, touches_border=border)


@pytest.mark.parametrize(
    ("result", "label", "expected"),
    [
        (segmentation(), "healthy", None),
        (segmentation(found=False), "healthy", "no head found"),
        (segmentation(uncertainty=0.4), "healthy", "uncertain mask"),
        (segmentation(border=True), "healthy", "mask touches border"),
        (segmentation(uncertainty=0.4), "pathological", None),
        (segmentation(found=False), "pathological", None),
    ],
    ids=["confident", "no-head", "uncertain", "border", "gate-not-applied", "no-head-not-applied"],
)
def test_segmentation_outcome(result: HeadSegmentation, label: str, expected: str | None) -> None:
    settings = SegmentationSettings(enabled=True, max_uncertainty=0.2, drop_border=True, apply_to=("healthy",))
    kind, reason = segmentation_outcome(result, label, settings)
    assert kind == expected
    assert bool(reason) == (expected is not None)
