"""Source groups and frames from file names of Roboflow exports.

Roboflow renames an uploaded ``name.png`` to ``name_png.rf.<hash>.jpg`` and several
exports of one frame get different hashes; uploaders add ``_aug_N`` to augmented
copies and ``Copy-of-`` to duplicated files. Stripping these gives the source frame.
The group is what must never straddle two splits: the patient (``PatientNNNNN``,
FETAL_PLANES_DB's naming) where the name has one, otherwise the frame's case id.
"""

from __future__ import annotations

import re

_ROBOFLOW_SUFFIX = re.compile(r"\.rf\.[0-9a-f]+$", re.IGNORECASE)
_EXTENSION = re.compile(r"\.(jpe?g|png|bmp|tiff?)$", re.IGNORECASE)
_EMBEDDED_EXTENSION = re.compile(r"_(jpe?g|png|bmp|tiff?)$", re.IGNORECASE)
_AUGMENTED_COPY = re.compile(r"_aug_\d+$")
_PATIENT = re.compile(r"^(Patient\d+)(?:_|$)")


def source_frame(filename: str) -> str:
    """Return the source frame a (possibly augmented, re-exported) file was made from."""
    stem = _EXTENSION.sub("", filename)
    stem = _ROBOFLOW_SUFFIX.sub("", stem)
    while True:
        shorter = _AUGMENTED_COPY.sub("", _EMBEDDED_EXTENSION.sub("", stem))
        if shorter == stem:
            break
        stem = shorter
    return stem.removeprefix("Copy-of-")


def source_group(filename: str) -> str:
    """Return the patient of a FETAL_PLANES_DB file, or the case id of any other file."""
    frame = source_frame(filename)
    match = _PATIENT.match(frame)
    return match.group(1) if match else frame


def is_augmented_copy(filename: str) -> bool:
    """Tell whether the uploader marked the file as an augmented copy (``_aug_N``)."""
    return "_aug_" in filename
