"""Data loading on the real Fetal Brain Abnormalities export: labels, groups, the split and the manifest."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.curation.pipeline import CurationSettings
from pipelines.data.cache import ArrayCache
from pipelines.data.dataset import EmptyDatasetError, prepare_dataset
from pipelines.data.naming import source_frame, source_group
from pipelines.data.records import MANIFEST_COLUMNS, read_manifest, write_manifest
from pipelines.data.roboflow import DataSourceError, load_roboflow_multilabel
from pipelines.data.split import SplitSettings
from pipelines.data.thumbnails import pack_thumbnails, unpack_thumbnails

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
FBAU = DATA_ROOT / "fetal-brain-abnormalities"
FBAU_SOURCE = {"kind": "roboflow-multilabel", "path": "fetal-brain-abnormalities", "name": "fbau", "splits": ["train", "valid", "test"], "healthy_label": "normal"}


@pytest.fixture(scope="module")
def fbau_records():
    return load_roboflow_multilabel(FBAU, name="fbau", splits=["train", "valid", "test"], relative_to=DATA_ROOT)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = SplitSettings(seed=0, max_val={"healthy": 12, "pathological": 18}, max_test={"healthy": 12, "pathological": 18})
    first = prepare_dataset([FBAU_SOURCE], data_root=DATA_ROOT, curation=CurationSettings(image_size=32), split=settings, cache_dir=cache)
    second = prepare_dataset([FBAU_SOURCE], data_root=DATA_ROOT, curation=CurationSettings(image_size=32), split=settings, cache_dir=cache)
    return first, second


@pytest.mark.parametrize(
    ("name", "frame", "group"),
    [
        ("Patient00710_Plane3_1_of_6_aug_0_png_jpg.rf.6b0eab5ba5e29f4cc64a176e10866c10.jpg", "Patient00710_Plane3_1_of_6", "Patient00710"),
        ("Copy-of-arachnoid-cyst-36b_aug_4_png_jpg.rf.3a6fbed402ecc83f6463820093afd4f6.jpg", "arachnoid-cyst-36b", "arachnoid-cyst-36b"),
        ("Copy-of-cerebellah-hypoplasia_20c_aug_2_png_jpg.rf.792161deea65a9c3b0c3f8011b5e73b9.jpg", "cerebellah-hypoplasia_20c", "cerebellah-hypoplasia_20c"),
    ],
)
def test_frame_and_group_from_name(name: str, frame: str, group: str) -> None:
    assert source_frame(name) == frame
    assert source_group(name) == group


def test_roboflow_counts_match_export(fbau_records) -> None:
    per_split = defaultdict(lambda: [0, 0])
    for record in fbau_records:
        split = record.id.split("/")[1]
        per_split[split][0] += 1
        per_split[split][1] += record.label == "healthy"
    assert per_split["train"] == [1127, 163]
    assert per_split["valid"] == [140, 26]
    assert per_split["test"] == [139, 18]
    assert all(record.sha256 and len(record.sha256) == 64 for record in fbau_records)
    assert not any(record.path.startswith("/") for record in fbau_records)


def test_published_splits_leak_groups(fbau_records) -> None:
    # The reason for re-splitting: the export puts frames of one group into several splits.
    splits_of_group = defaultdict(set)
    for record in fbau_records:
        splits_of_group[record.group].add(record.id.split("/")[1])
    assert sum(len(splits) > 1 for splits in splits_of_group.values()) > 5


def test_group_split_leaves_no_group_in_two_splits(prepared) -> None:
    data, _ = prepared
    split_of_group = defaultdict(set)
    for record in data.records:
        if record.kept:
            split_of_group[record.group].add(record.split)
    assert split_of_group
    assert all(len(splits) == 1 for splits in split_of_group.values())
    for name, split in data.splits.items():
        assert len(set(split.groups)) >= 1, name


def test_split_sizes_and_labels(prepared) -> None:
    data, _ = prepared
    assert (data.splits["train"].labels == 0).all()
    assert len(data.splits["train"]) > 50
    for name in ("val", "test"):
        labels = data.splits[name].labels
        assert (labels == 0).sum() == 12, name
        assert (labels == 1).sum() == 18, name
        assert data.splits[name].images.shape[1:] == (1, 32, 32)
    assert data.splits["train"].images.dtype == np.float32
    assert 0 <= data.splits["train"].images.min() and data.splits["train"].images.max() <= 1


def test_evaluation_uses_one_image_per_frame(prepared) -> None:
    data, _ = prepared
    for name in ("val", "test"):
        frames = [record.frame for record in data.records if record.kept and record.split == name]
        assert len(frames) == len(set(frames)), name


def test_duplicates_dropped_with_reason(prepared) -> None:
    data, _ = prepared
    duplicates = [record for record in data.records if record.reason.startswith("duplicate of")]
    for record in duplicates:
        original = record.reason.removeprefix("duplicate of ")
        assert original != record.id


def test_second_prepare_is_cache_hit(prepared) -> None:
    first, second = prepared
    assert not first.cache_hit
    assert second.cache_hit
    assert first.cache_key == second.cache_key
    assert np.array_equal(first.splits["test"].images, second.splits["test"].images)


def test_stage_rows_chain_from_listing(prepared) -> None:
    data, again = prepared
    rows = data.stage_counts
    assert [row["stage"] for row in rows] == ["list", "read", "gestational age from metadata", "crop", "sampling"]
    assert rows[0]["in"] == len(data.records)
    assert "duplicate" in rows[0]["dropped"]
    for previous, row in zip(rows, rows[1:]):
        assert row["in"] == previous["kept"], (previous, row)
    assert rows[-1]["kept"] == sum(record.kept for record in data.records)
    assert "over images_per_frame=1" in rows[-1]["dropped"]
    assert again.stage_counts == rows


def test_manifest_lists_every_file(prepared, tmp_path: Path) -> None:
    data, _ = prepared
    path = write_manifest(data.records, tmp_path / "manifest.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == 1127 + 140 + 139
    for row in rows:
        assert bool(row["split"]) or bool(row["reason"]), row["id"]
    assert read_manifest(path)[0].id == rows[0]["id"]


def write_folder_csv(folder: Path, rows: list[tuple[str, str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", " label", " group"])
        writer.writerows(rows)


def copy_real_images(folder: Path, count: int, healthy: bool) -> list[str]:
    pattern = "Patient*" if healthy else "Copy-of-*"
    sources = sorted((FBAU / "train").glob(pattern))[: count * 8 : 8]
    names = []
    for index, source in enumerate(sources):
        name = f"{'h' if healthy else 'p'}{index:02d}.jpg"
        shutil.copy(source, folder / name)
        names.append(name)
    return names


def test_unreadable_image_skipped_and_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    healthy = copy_real_images(folder, 8, healthy=True)
    pathological = copy_real_images(folder, 4, healthy=False)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "broken2.png").write_bytes(b"\x89PNG\r\n garbage")
    rows = [(name, "healthy", f"g{i}") for i, name in enumerate(healthy)]
    rows += [(name, "cyst", f"p{i}") for i, name in enumerate(pathological)]
    rows += [("broken.jpg", "healthy", "gx"), ("broken2.png", "healthy", "gy")]
    write_folder_csv(folder, rows)
    source = {"kind": "folder-csv", "path": "images", "name": "local", "csv": "labels.csv", "file_column": "file",
              "label_column": "label", "group_column": "group", "healthy_labels": ["healthy"]}

    with caplog.at_level(logging.WARNING):
        data = prepare_dataset([source], data_root=tmp_path, curation=CurationSettings(image_size=16), split=SplitSettings(), cache_dir=tmp_path / "cache")
    broken = [record for record in data.records if record.id.startswith("local/broken")]
    assert len(broken) == 2
    assert all(record.reason.startswith("unreadable:") for record in broken)
    warnings = [message for message in caplog.messages if "unreadable" in message]
    assert len(warnings) == 1
    assert "skipped 2 unreadable images" in warnings[0]
    assert sum(len(split) for split in data.splits.values()) == 12


def test_empty_after_filtering_is_clear(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    names = copy_real_images(folder, 3, healthy=False) + copy_real_images(folder, 3, healthy=True)
    write_folder_csv(folder, [(name, "healthy" if name.startswith("h") else "cyst", name) for name in names])
    for name in names:
        if name.startswith("h"):
            (folder / name).write_bytes(b"corrupt")
    source = {"kind": "folder-csv", "path": "images", "name": "local", "csv": "labels.csv", "file_column": "file",
              "label_column": "label", "group_column": "group", "healthy_labels": ["healthy"]}
    with pytest.raises(EmptyDatasetError, match=r"^3 of 6 listed images were dropped \(list: 2 duplicate; read: 1 unreadable\), which left too few to split: found 0 healthy source groups, but a group split needs at least 3 .*; add healthy data, or keep more of it through data.curation$") as raised:
        prepare_dataset([source], data_root=tmp_path, curation=CurationSettings(image_size=16), split=SplitSettings(), cache_dir=tmp_path / "cache", keep_thumbnails=True)
    data = raised.value.data
    assert [row["stage"] for row in data.stage_counts] == ["list", "read", "gestational age from metadata", "crop"]
    assert data.stage_counts[1]["dropped"] == "1 unreadable"
    assert len(data.thumbnails) == 3


def test_no_pathological_in_evaluation_is_clear(tmp_path: Path) -> None:
    source = {"kind": "synthetic", "name": "synthetic-phantoms", "healthy": 12, "pathological": 2, "size": 64, "seed": 0}
    settings = SplitSettings(max_test={"pathological": 1}, max_val={"pathological": 1})
    data = prepare_dataset([source], data_root=tmp_path, curation=CurationSettings(image_size=32), split=settings, cache_dir=tmp_path / "cache")
    assert (data.splits["test"].labels == 1).sum() == 1
    with pytest.raises(EmptyDatasetError, match=r"^found 1 pathological source groups for evaluation, but val and test each need at least one"):
        prepare_dataset([{**source, "pathological": 1}], data_root=tmp_path, curation=CurationSettings(image_size=32), split=settings, cache_dir=tmp_path / "cache")


def test_missing_export_folder_named(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"data source 'fbau': folder .*nowhere.* not found"):
        load_roboflow_multilabel(tmp_path / "nowhere", name="fbau", splits=["train"])


def test_header_spaces_and_missing_classes(tmp_path: Path) -> None:
    split = tmp_path / "export" / "train"
    split.mkdir(parents=True)
    Image.fromarray(np.full((20, 20), 128, dtype=np.uint8)).save(split / "a.jpg")
    (split / "_classes.csv").write_text("filename, cyst, normal\na.jpg, 0, 1\nb.jpg, 1, 0\n", encoding="utf-8")
    records = load_roboflow_multilabel(tmp_path / "export", name="x", splits=["train"])
    assert [(r.label, r.reason) for r in records] == [("healthy", ""), ("pathological", "missing file")]
    with pytest.raises(DataSourceError, match=r"_classes.csv' not found"):
        load_roboflow_multilabel(tmp_path / "export", name="x", splits=["valid"])


def test_path_outside_source_folder_dropped(tmp_path: Path) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"x")
    folder = tmp_path / "images"
    write_folder_csv(folder, [("../secret.jpg", "healthy", "g")])
    from pipelines.data.folder_csv import load_folder_csv

    records = load_folder_csv(folder, name="local")
    assert records[0].reason == "outside the source folder"
    assert records[0].sha256 == ""


@pytest.mark.parametrize("link", ["file", "folder"])
def test_symlink_out_of_source_folder_dropped(tmp_path: Path, link: str) -> None:
    """A link inside the source folder that points outside it is not read, whether it names the file or a folder."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    folder = tmp_path / "images"
    folder.mkdir()
    if link == "file":
        (folder / "secret.jpg").symlink_to(outside / "secret.jpg")
        entry = "secret.jpg"
    else:
        (folder / "sub").symlink_to(outside, target_is_directory=True)
        entry = "sub/secret.jpg"
    write_folder_csv(folder, [(entry, "healthy", "g")])
    from pipelines.data.folder_csv import load_folder_csv

    records = load_folder_csv(folder, name="local")
    assert records[0].reason == "outside the source folder"
    assert records[0].sha256 == ""


def test_synthetic_source_keeps_lesion_masks(tmp_path: Path) -> None:
    source = {"kind": "synthetic", "name": "synthetic-phantoms", "healthy": 20, "pathological": 8, "size": 64, "seed": 0}
    data = prepare_dataset([source], data_root=tmp_path, curation=CurationSettings(image_size=32), split=SplitSettings(), cache_dir=tmp_path / "cache")
    test = data.splits["test"]
    assert test.lesion_masks is not None
    assert test.lesion_masks[test.labels == 1].any(axis=(1, 2, 3)).all()
    assert not test.lesion_masks[test.labels == 0].any()
    assert all(identifier.startswith("synthetic-phantoms/synthetic-phantom-") for identifier in test.ids)


def folder_source(**overrides: object) -> dict:
    source = {"kind": "folder-csv", "path": "images", "name": "local", "csv": "labels.csv", "file_column": "file",
              "label_column": "label", "group_column": "group", "healthy_labels": ["healthy"]}
    return {**source, **overrides}


def test_file_listed_twice_rejected(tmp_path: Path) -> None:
    from pipelines.data.folder_csv import load_folder_csv

    folder = tmp_path / "images"
    write_folder_csv(folder, [("a.png", "healthy", "g1"), ("b.png", "healthy", "g2"), ("a.png", "cyst", "p9")])
    with pytest.raises(DataSourceError, match=r"lists 'a.png' twice \(again on line 4\)"):
        load_folder_csv(folder, name="local")


def test_non_utf8_csv_rejected(tmp_path: Path) -> None:
    from pipelines.data.folder_csv import load_folder_csv

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "labels.csv").write_bytes("file,label,group\nbébé.png,healthy,g\n".encode("latin-1"))
    with pytest.raises(DataSourceError, match=r"is not UTF-8 text \(byte \d+\); save it as UTF-8"):
        load_folder_csv(folder, name="local")


def test_missing_group_column_suggests_null(tmp_path: Path) -> None:
    from pipelines.data.folder_csv import load_folder_csv

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "labels.csv").write_text("file,label\na.png,healthy\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"has no column 'group'; columns are file, label; set group_column: null"):
        load_folder_csv(folder, name="local")
    records = load_folder_csv(folder, name="local", group_column=None)
    assert records[0].group == "a"


def test_damaged_cache_entry_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = {"kind": "synthetic", "name": "synthetic-phantoms", "healthy": 12, "pathological": 4, "size": 64, "seed": 0}
    settings = {"data_root": tmp_path, "curation": CurationSettings(image_size=32), "split": SplitSettings(), "cache_dir": tmp_path / "cache"}
    first = prepare_dataset([source], **settings)
    entry = tmp_path / "cache" / f"{first.cache_key}.npz"
    content = bytearray(entry.read_bytes())
    content[len(content) // 2] ^= 0xFF
    entry.write_bytes(bytes(content))
    with caplog.at_level(logging.WARNING):
        second = prepare_dataset([source], **settings)
    assert not second.cache_hit
    assert any("is unreadable" in message for message in caplog.messages)
    assert np.array_equal(first.splits["test"].images, second.splits["test"].images)
    assert prepare_dataset([source], **settings).cache_hit


def test_listing_drops_counted_in_first_row(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    healthy = copy_real_images(folder, 6, healthy=True)
    pathological = copy_real_images(folder, 3, healthy=False)
    shutil.copy(folder / healthy[0], folder / "copy.jpg")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    rows = [(name, "healthy", f"g{index}", "21+0") for index, name in enumerate(healthy)]
    rows += [(name, "cyst", f"p{index}", "") for index, name in enumerate(pathological)]
    rows += [("copy.jpg", "healthy", "gc", ""), ("missing.jpg", "healthy", "gm", ""), ("../secret.jpg", "healthy", "gs", ""),
             ("nolabel.jpg", "", "gn", ""), ("bad-age.jpg", "healthy", "gb", "22+9")]
    shutil.copy(folder / healthy[1], folder / "nolabel.jpg")
    shutil.copy(folder / healthy[2], folder / "bad-age.jpg")
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("file", "label", "group", "ga"), *rows])
    source = folder_source(ga_column="ga")

    data = prepare_dataset([source], data_root=tmp_path, curation=CurationSettings(image_size=16), split=SplitSettings(), cache_dir=tmp_path / "cache", exclude={})

    listing = data.stage_counts[0]
    assert listing["stage"] == "list"
    assert listing["in"] == len(rows) == 14
    assert listing["kept"] == 9
    for drop in ("1 duplicate", "1 missing file", "1 outside the source folder", "1 no label", "1 invalid gestational age"):
        assert drop in listing["dropped"]
    assert [row["stage"] for row in data.stage_counts][-2:] == ["exclude list", "sampling"]
    for previous, row in zip(data.stage_counts, data.stage_counts[1:]):
        assert row["in"] == previous["kept"], (previous, row)


def test_exclude_list_row_and_unknown_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = {"kind": "synthetic", "name": "synthetic-phantoms", "healthy": 12, "pathological": 4, "size": 64, "seed": 0}
    exclude = {
        "synthetic-phantoms/synthetic-phantom-00000": "blurry",
        "synthetic-phantoms/synthetic-phantom-00000.png": "with an extension",
        "nope/x": "typo",
    }
    with caplog.at_level(logging.WARNING):
        data = prepare_dataset([source], data_root=tmp_path, curation=CurationSettings(image_size=32), split=SplitSettings(), cache_dir=tmp_path / "cache", exclude=exclude)

    row = next(row for row in data.stage_counts if row["stage"] == "exclude list")
    assert (row["in"], row["kept"], row["dropped"]) == (16, 15, "1 excluded by review")
    warnings = [message for message in caplog.messages if message.startswith("exclude list ids")]
    assert len(warnings) == 1
    assert "match no listed image exclude nothing: 2 of 3, such as" in warnings[0]
    assert "'synthetic-phantoms/synthetic-phantom-00000.png' (did you mean 'synthetic-phantoms/synthetic-phantom-00000'?)" in warnings[0]
    assert "'nope/x'" in warnings[0]


def test_cache_put_keeps_umask_and_removes_stale_partials(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path)
    stale = tmp_path / "tmpkilled.npz.partial"
    stale.write_bytes(b"half an archive")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".other-writer.npz.partial"
    fresh.write_bytes(b"still being written")

    previous = os.umask(0o022)
    try:
        path = cache.put("key", {"values": np.arange(3)})
    finally:
        os.umask(previous)

    assert os.stat(path).st_mode & 0o777 == 0o644
    assert not stale.exists()
    assert fresh.exists()
    assert np.array_equal(cache.get("key")["values"], np.arange(3))


def test_thumbnails_round_trip_any_width() -> None:
    wide = np.arange(24 * 320, dtype=np.uint8).reshape(24, 320)
    tall = np.full((160, 100), 7, dtype=np.uint8)
    mask = np.zeros((160, 100), dtype=bool)
    mask[40:120, 30:70] = True

    unpacked = unpack_thumbnails(pack_thumbnails({"wide": (wide, None), "tall": (tall, mask)}))

    assert np.array_equal(unpacked["wide"][0], wide)
    assert unpacked["wide"][1] is None
    assert np.array_equal(unpacked["tall"][0], tall)
    assert np.array_equal(unpacked["tall"][1], mask)
    assert unpack_thumbnails(pack_thumbnails({})) == {}
