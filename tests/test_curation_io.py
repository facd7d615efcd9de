"""DICOM frames and spacing, head cropping, and exclude lists."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines.curation.crop import crop_to_head
from pipelines.curation.dicom import DicomReadError, is_dicom, read_dicom_frame
from pipelines.curation.exclude import ExcludeListError, read_exclude_list

ULTRASOUND_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
ULTRASOUND_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def write_dicom(path: Path, pixels: np.ndarray, *, spacing: tuple[float, float] | None = None, region_cm: float | None = None, photometric: str | None = None) -> Path:
    """Write a minimal ultrasound DICOM file with identifying tags that must never leak."""
    multiframe = pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ULTRASOUND_MULTIFRAME_STORAGE if multiframe else ULTRASOUND_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "SECRET-4711"
    dataset.PatientBirthDate = "19900101"
    dataset.Modality = "US"
    rgb = pixels.shape[-1] == 3
    dataset.SamplesPerPixel = 3 if rgb else 1
    dataset.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
    if rgb:
        dataset.PlanarConfiguration = 0
    if multiframe:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.Rows, dataset.Columns = pixels.shape[1:3] if multiframe else pixels.shape[:2]
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    if spacing is not None:
        dataset.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    if region_cm is not None:
        region = Dataset()
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = region_cm
        region.PhysicalDeltaY = region_cm
        dataset.SequenceOfUltrasoundRegions = [region]
    dataset.PixelData = pixels.astype(np.uint8).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_single_frame_with_spacing(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    path = write_dicom(tmp_path / "a.dcm", pixels, spacing=(0.2, 0.2))
    frame = read_dicom_frame(path)
    assert frame.image.shape == (48, 64)
    assert frame.image.min() == 0.0 and frame.image.max() == 1.0
    assert frame.pixel_spacing_mm == pytest.approx(0.2)
    assert frame.num_frames == 1


def test_cine_loop_frame_choice_and_region_spacing(tmp_path: Path) -> None:
    frames = np.stack([np.full((32, 40, 3), 10 * (index + 1), dtype=np.uint8) for index in range(5)])
    frames[:, 0, 0] = 0
    path = write_dicom(tmp_path / "cine", frames, region_cm=0.015)
    assert is_dicom(path)
    first = read_dicom_frame(path)
    third = read_dicom_frame(path, frame=2)
    assert first.num_frames == 5
    assert first.image[5, 5] == pytest.approx(10 / 255, abs=1e-3)
    assert third.image[5, 5] == pytest.approx(30 / 255, abs=1e-3)
    assert first.pixel_spacing_mm == pytest.approx(0.15)
    with pytest.raises(DicomReadError, match=r"frame must be between 0 and 4, but got 7"):
        read_dicom_frame(path, frame=7)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16), dtype=np.uint8)
    pixels[4:8, 4:8] = 200
    frame = read_dicom_frame(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert frame.image[5, 5] == 0.0
    assert frame.image[0, 0] == 1.0


def test_unreadable_dicom_names_only_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage")
    with pytest.raises(DicomReadError, match=r"broken.dcm: not a readable DICOM image"):
        read_dicom_frame(path)


def test_frame_never_carries_patient_tags(tmp_path: Path) -> None:
    frame = read_dicom_frame(write_dicom(tmp_path / "p.dcm", np.full((8, 8), 9, dtype=np.uint8), spacing=(0.1, 0.1)))
    text = repr(frame) + str(vars(frame).keys())
    assert "Doe" not in text and "SECRET" not in text
    assert set(vars(frame)) == {"image", "pixel_spacing_mm", "num_frames"}


def test_crop_keeps_aspect_and_zeroes_background() -> None:
    image = np.full((100, 200), 0.5, dtype=np.float32)
    rows, columns = np.ogrid[:100, :200]
    mask = ((rows - 50) / 30) ** 2 + ((columns - 100) / 60) ** 2 <= 1
    image[mask] = 0.4
    crop = crop_to_head(image, mask, size=64, margin=0.0)
    assert crop.image.shape == crop.mask.shape == (64, 64)
    assert crop.image[~crop.mask].max() == 0.0
    # A 2:1 ellipse stays 2:1 because the crop is padded, not stretched.
    height = crop.mask.any(axis=1).sum()
    width = crop.mask.any(axis=0).sum()
    assert width / height == pytest.approx(2.0, rel=0.1)
    assert crop.image[crop.mask].max() == pytest.approx(1.0)


def test_crop_rejects_empty_mask() -> None:
    with pytest.raises(ValueError, match=r"the head mask is empty"):
        crop_to_head(np.zeros((10, 10)), np.zeros((10, 10), dtype=bool), size=8)


def test_exclude_list_parses_comments(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_text("# reviewed 2026-12-01\n\nfbau/train/a.jpg  # head cut off\nhc18/001_HC # wrong plane\n", encoding="utf-8")
    assert read_exclude_list(path) == {"fbau/train/a.jpg": "head cut off", "hc18/001_HC": "wrong plane"}


def test_exclude_entry_without_comment_rejected(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_text("fbau/train/a.jpg\n", encoding="utf-8")
    with pytest.raises(ExcludeListError, match=r"line 1: entry 'fbau/train/a.jpg' has no comment"):
        read_exclude_list(path)


def test_exclude_list_strips_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_bytes("\ufeffhc18/197_HC # saved by Notepad\r\n".encode("utf-8"))
    assert read_exclude_list(path) == {"hc18/197_HC": "saved by Notepad"}


def test_exclude_list_not_utf8_rejected(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_bytes("hc18/197_HC # café blurry\n".encode("latin-1"))
    with pytest.raises(ExcludeListError, match=r"exclude list '.*exclude.txt' is not UTF-8 text \(byte 17 is 0xe9\); save it as UTF-8$"):
        read_exclude_list(path)


def test_exclude_list_warns_on_duplicates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "exclude.txt"
    path.write_text("hc18/001_HC # blurry\nhc18/002_HC # cut\nhc18/001_HC # wrong plane\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        excluded = read_exclude_list(path)
    assert excluded == {"hc18/001_HC": "wrong plane", "hc18/002_HC": "cut"}
    assert len(caplog.messages) == 1
    assert "repeats ids, and the last comment of each counts: 'hc18/001_HC' (line 3)" in caplog.messages[0]


def test_exclude_list_id_with_hash(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_text("local/scan#2.png  # duplicate sweep\nlocal/a.png#no space before the comment\n", encoding="utf-8")
    assert read_exclude_list(path) == {"local/scan#2.png": "duplicate sweep", "local/a.png": "no space before the comment"}
