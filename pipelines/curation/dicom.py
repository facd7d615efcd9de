"""Reading ultrasound frames and their pixel spacing from DICOM files with pydicom.

Only pixel data and geometry are read out. Nothing that identifies a patient (names,
ids, dates, institution) is returned, so no such tag can reach a manifest, a log or
an MLflow run through this module. Error messages name the file path only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_voi_lut, convert_color_space

# PhysicalUnitsXDirection code for centimetres in an ultrasound region (DICOM PS3.3 C.8.5.5.1.15).
_UNITS_CENTIMETRE = 3


class DicomReadError(ValueError):
    """A DICOM file could not be read as an image; the message names the file and the cause."""


@dataclass(frozen=True)
class DicomFrame:
    """One grey frame in [0, 1], its pixel spacing in mm where the header gives it, and the frame count."""

    image: np.ndarray
    pixel_spacing_mm: float | None
    num_frames: int


def is_dicom(path: Path) -> bool:
    """Tell whether a file starts with the DICOM preamble and the ``DICM`` marker, or ends in .dcm."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_frame(path: Path, *, frame: int = 0) -> DicomFrame:
    """Read frame ``frame`` (0 = the first frame of a cine loop) as a grey image in [0, 1]."""
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, NotImplementedError, RuntimeError) as error:
        raise DicomReadError(f"{path.name}: not a readable DICOM image ({type(error).__name__})") from error

    num_frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
    if num_frames > 1:
        if not 0 <= frame < num_frames:
            raise DicomReadError(f"{path.name}: frame must be between 0 and {num_frames - 1}, but got {frame}")
        pixels = pixels[frame]
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))

    if samples == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        image = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        image /= 255.0 if pixels.dtype == np.uint8 else max(float(image.max()), 1.0)
    else:
        image = apply_voi_lut(pixels, dataset).astype(np.float32) if "WindowCenter" in dataset else pixels.astype(np.float32)
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
    return DicomFrame(image=np.clip(image, 0.0, 1.0), pixel_spacing_mm=pixel_spacing_mm(dataset), num_frames=num_frames)


def pixel_spacing_mm(dataset: pydicom.Dataset) -> float | None:
    """Return the pixel spacing in mm from PixelSpacing, or from the first ultrasound region in cm.

    Rows and columns must have the same spacing to within 1 %; otherwise a single
    spacing would misstate lengths, and None is returned.
    """
    spacing = getattr(dataset, "PixelSpacing", None)
    if spacing is not None and len(spacing) == 2:
        row, column = float(spacing[0]), float(spacing[1])
    else:
        regions = getattr(dataset, "SequenceOfUltrasoundRegions", None)
        if not regions:
            return None
        region = regions[0]
        if int(getattr(region, "PhysicalUnitsXDirection", 0)) != _UNITS_CENTIMETRE:
            return None
        row = abs(float(getattr(region, "PhysicalDeltaY", 0.0))) * 10.0
        column = abs(float(getattr(region, "PhysicalDeltaX", 0.0))) * 10.0
    if row <= 0 or column <= 0 or abs(row - column) > 0.01 * max(row, column):
        return None
    return (row + column) / 2
