"""Turning a spec's data section into prepared arrays: weights, curation settings, exclude list.

Shared by ``sweeper launch`` and the ``sweeper data`` commands, so both curate the
same way and share one cache. Paths in the spec resolve against the spec file's
folder; model weights can also come from environment variables or the default
folders that ``sweeper weights fetch`` and ``sweeper data train-segmenter`` write to.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.data.records import file_sha256
from sweeper.paths import sweeper_home
from sweeper.spec import SpecError, SweepSpec

logger = logging.getLogger(__name__)

SONONET_ENV = "SWEEPER_SONONET_WEIGHTS"
SEGMENTER_ENV = "SWEEPER_SEGMENTER_WEIGHTS"


def resolve_spec_path(value: str, spec_path: Path) -> Path:
    """Resolve a path written in a spec: absolute, or relative to the spec file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (spec_path.parent / path).resolve()


def default_segmenter_path() -> Path:
    """Return where ``sweeper data train-segmenter`` saves the head segmenter by default."""
    return sweeper_home() / "weights" / "segmenter" / "head-segmenter.pt"


def default_sononet_path(variant: int) -> Path:
    """Return where ``sweeper weights fetch sononet`` saves the authors' weights by default."""
    return sweeper_home() / "weights" / "sononet" / f"SonoNet{variant}.npz"


def sononet_weights_path(spec: SweepSpec, spec_path: Path) -> tuple[Path, str]:
    """Find the SonoNet weights: data.curation.plane.weights, $SWEEPER_SONONET_WEIGHTS, or the fetch folder.

    Returns the path and where it came from, for messages.
    """
    plane = spec.data.curation.plane
    path, origin = _weights_path(plane.weights, spec_path, SONONET_ENV, default_sononet_path(plane.variant), "data.curation.plane.weights")
    if not path.is_file():
        raise SpecError(
            f"SonoNet weights not found at {str(path)!r} (from {origin}); run 'sweeper weights fetch sononet "
            f"--variant {plane.variant}', or set data.curation.plane.weights or {SONONET_ENV}"
        )
    return path, origin


def segmenter_weights_path(spec: SweepSpec, spec_path: Path) -> tuple[Path, str]:
    """Find the head segmenter: data.curation.segmentation.weights, $SWEEPER_SEGMENTER_WEIGHTS, or the default.

    Returns the path and where it came from, for messages.
    """
    configured = spec.data.curation.segmentation.weights
    path, origin = _weights_path(configured, spec_path, SEGMENTER_ENV, default_segmenter_path(), "data.curation.segmentation.weights")
    if not path.is_file():
        raise SpecError(
            f"head segmenter not found at {str(path)!r} (from {origin}); train one with 'sweeper data "
            f"train-segmenter --hc18 DIR', or set data.curation.segmentation.weights or {SEGMENTER_ENV}"
        )
    return path, origin


def _weights_path(configured: str | None, spec_path: Path, environment: str, default: Path, spec_field: str) -> tuple[Path, str]:
    if configured:
        return resolve_spec_path(configured, spec_path), spec_field
    if os.environ.get(environment):
        return Path(os.environ[environment]).expanduser().resolve(), f"${environment}"
    return default, "the default location"


@dataclass
class CurationInputs:
    """Everything curation needs besides the images: settings, loaded models, fingerprints, exclusions."""

    settings: Any
    sononet: Any = None
    segmenter: Any = None
    fingerprints: dict[str, str] | None = None
    exclude: dict[str, str] | None = None
    weights_paths: dict[str, str] | None = None


def curation_inputs(spec: SweepSpec, spec_path: Path) -> CurationInputs:
    """Build the curation settings and load the models of the enabled stages."""
    from pipelines.curation.exclude import ExcludeListError, read_exclude_list
    from pipelines.curation.pipeline import (
        CurationSettings,
        GestationalAgeSettings,
        PlaneSettings,
        SegmentationSettings,
    )

    curation = spec.data.curation
    ga, plane, segmentation = curation.gestational_age, curation.plane, curation.segmentation
    low, high = ga.window_weeks()
    settings = CurationSettings(
        image_size=spec.data.image_size,
        percentile=spec.data.preprocessing.percentile,
        min_side=curation.min_side,
        gestational_age=GestationalAgeSettings(
            enabled=ga.enabled, low=low, high=high, missing=ga.missing, apply_to=tuple(ga.apply_to)
        ),
        plane=PlaneSettings(
            enabled=plane.enabled,
            labels=tuple(plane.labels),
            min_confidence=plane.min_confidence,
            crop=plane.crop,
            apply_to=tuple(plane.apply_to),
        ),
        segmentation=SegmentationSettings(
            enabled=segmentation.enabled,
            mc_samples=segmentation.mc_samples,
            max_uncertainty=segmentation.max_uncertainty,
            drop_border=segmentation.drop_border,
            margin=segmentation.margin,
            apply_to=tuple(segmentation.apply_to),
        ),
    )
    inputs = CurationInputs(settings=settings, fingerprints={}, weights_paths={})
    # The exclude list is read first: it is cheap, and its errors should not wait for the models.
    if curation.exclude_list:
        try:
            inputs.exclude = read_exclude_list(resolve_spec_path(curation.exclude_list, spec_path))
        except ExcludeListError as error:
            raise SpecError(f"data.curation.exclude_list: {error}") from None
    if plane.enabled:
        path, origin = sononet_weights_path(spec, spec_path)
        inputs.sononet = _load_sononet(path, origin, plane.variant)
        inputs.fingerprints["sononet"] = file_sha256(path)
        inputs.weights_paths["sononet"] = str(path)
    if segmentation.enabled:
        path, origin = segmenter_weights_path(spec, spec_path)
        inputs.segmenter = _load_segmenter(path, origin)
        inputs.fingerprints["segmenter"] = file_sha256(path)
        inputs.weights_paths["segmenter"] = str(path)
    return inputs


def _load_sononet(path: Path, origin: str, variant: int) -> Any:
    from pipelines.curation.sononet import SonoNetVariantError, SonoNetWeightsError, load_sononet

    try:
        return load_sononet(path, variant)
    except SonoNetVariantError as error:
        raise SpecError(
            f"{error}, from {origin}; set data.curation.plane.variant: {error.found}, or replace the file with a "
            f"SonoNet-{variant} file"
        ) from None
    except SonoNetWeightsError as error:
        raise SpecError(f"SonoNet weights from {origin}: {error}") from None


def _load_segmenter(path: Path, origin: str) -> Any:
    from pipelines.curation.segmentation import MIN_HELD_OUT_DICE, SegmenterCheckpointError, load_segmenter

    try:
        segmenter, _ = load_segmenter(path)
    except SegmenterCheckpointError as error:
        raise SpecError(
            f"head segmenter {str(path)!r} (from {origin}) is not a checkpoint written by 'sweeper data train-segmenter': "
            f"{error}; train one with 'sweeper data train-segmenter --hc18 DIR' or fix the path"
        ) from None
    dice = segmenter.held_out_dice
    if dice is not None and dice < MIN_HELD_OUT_DICE:
        logger.warning(
            "head segmenter %s (from %s) has a held-out Dice of %.3f, below %g, so curation will drop or mis-crop "
            "many heads; train it longer with 'sweeper data train-segmenter'",
            path,
            origin,
            dice,
            MIN_HELD_OUT_DICE,
        )
    return segmenter


def prepare_data(
    spec: SweepSpec,
    *,
    spec_path: Path,
    data_root: Path,
    cache_dir: Path,
    keep_thumbnails: bool = False,
    on_progress: Any = None,
) -> Any:
    """Curate and split the spec's data (cached on disk) and return the PreparedData."""
    from pipelines.data.dataset import prepare_dataset
    from trainables.builders import split_settings

    inputs = curation_inputs(spec, spec_path)
    return prepare_dataset(
        [source.model_dump() for source in spec.data.sources],
        data_root=data_root,
        curation=inputs.settings,
        split=split_settings(spec),
        cache_dir=cache_dir,
        sononet=inputs.sononet,
        segmenter=inputs.segmenter,
        weights_fingerprints=inputs.fingerprints,
        exclude=inputs.exclude,
        keep_thumbnails=keep_thumbnails,
        on_progress=on_progress,
    )
