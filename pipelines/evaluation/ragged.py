"""Evaluating many cells of the grid at once, with every noise level t of a method in one ragged batch.

Cells that share a method and a noise type, and so a model, run together. Every image of
every such cell is one sample of the batch, and a sample joins the batch when the
countdown reaches its cell's t (see :func:`anoddpm_reconstruct_ragged`). The UNet then runs
max(t) times per chunk of images instead of sum(t) times. AutoDDPM's re-sampling loops run
once for all of its cells. Each image draws its noise from the same per-image generator as
in :func:`evaluate_cell`, so both return the same outputs up to floating-point differences
between batch sizes.

Every image still takes t reverse steps, so the UNet does the same work in fewer and larger
calls. That pays where small batches leave the device idle, as on a GPU. On a CPU both paths
took about as long in ``python -m benchmarks grid.ragged_cpu``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from pipelines.data.dataset import PreparedSplit
from pipelines.diffusion.noise import NoiseSource
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.evaluation.grid import (
    CellOutputs,
    GridCell,
    GridSettings,
    autoddpm_parts,
    cell_outputs,
    check_method,
    collect_batch,
    image_generators,
)
from pipelines.methods.anoddpm import anoddpm_reconstruct_ragged
from pipelines.methods.autoddpm import autoddpm_from_coarse
from pipelines.metrics.lpips import PerceptualDistance

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_grid(
    cells: Sequence[GridCell],
    models: Mapping[str, torch.nn.Module],
    schedule: DiffusionSchedule,
    data: PreparedSplit,
    *,
    split: str,
    noise_for: Callable[[str], NoiseSource],
    distance: PerceptualDistance,
    settings: GridSettings,
    device: torch.device | str = "cpu",
    max_batch_size: int | None = None,
) -> dict[GridCell, CellOutputs]:
    """Reconstruct and score every image of ``data`` for every cell, returning what :func:`evaluate_cell` returns per cell.

    Args:
        cells: distinct grid cells. The result keeps their order.
        models: the trained UNet of each noise type, already on ``device``.
        schedule: the diffusion schedule that every model was trained with.
        data: the images of one split.
        split: the split's name, which seeds the noise together with ``settings.seed``.
        noise_for: builds the noise source of a noise type.
        distance: LPIPS, for the anomaly maps, the image metrics and AutoDDPM's likelihood map.
        settings: as for :func:`evaluate_cell`. Images are taken ``settings.batch_size``
            at a time, so one UNet batch contains at most that many images times the
            number of cells run together.
        device: where the images and the noise generators live.
        max_batch_size: the maximum number of samples (images times cells) in one UNet
            batch. Images are then taken in smaller chunks. None keeps ``settings.batch_size``
            images per chunk.

    Raises:
        ValueError: if a cell repeats, its method is unknown, ``models`` has no model for
            its noise type, or ``max_batch_size`` is below the number of cells run together.
    """
    groups = _group_cells(cells, models)
    images = torch.tensor(data.images)  # a copy: shared arrays may be read-only
    masks = torch.tensor(data.head_masks)
    collected: dict[GridCell, dict[str, list[torch.Tensor]]] = {cell: {} for cell in cells}

    for (method, noise_type), group in groups.items():
        noise = noise_for(noise_type)
        generators = {cell: image_generators(settings.seed, cell, split, len(data), device) for cell in group}
        chunk = _images_per_chunk(settings.batch_size, len(group), max_batch_size)
        logger.debug(
            "%s-%s on %s: %d cells, t = %s, %d images per chunk",
            method, noise_type, split, len(group), [cell.t for cell in group], chunk,
        )
        for start in range(0, len(data), chunk):
            stop = min(start + chunk, len(data))
            batch = images[start:stop].to(device)
            parts = _reconstruct_group(
                method,
                group,
                models[noise_type],
                schedule,
                batch,
                noise=noise,
                generators=[generators[cell][start:stop] for cell in group],
                distance=distance,
                settings=settings,
            )
            batch_masks = masks[start:stop].to(device)
            for cell, cell_parts in zip(group, parts, strict=True):
                collect_batch(collected[cell], cell, batch, batch_masks, cell_parts, distance=distance, settings=settings)

    return {cell: cell_outputs(cell, split, data, collected[cell], settings) for cell in cells}


def _group_cells(cells: Sequence[GridCell], models: Mapping[str, torch.nn.Module]) -> dict[tuple[str, str], list[GridCell]]:
    """Group the cells by method and noise type, checking each cell once."""
    groups: dict[tuple[str, str], list[GridCell]] = {}
    seen: set[GridCell] = set()
    for cell in cells:
        check_method(cell.method)
        if cell in seen:
            raise ValueError(f"cells must be distinct, but got {cell.name} more than once")
        if cell.noise not in models:
            raise ValueError(
                f"models must contain a model for noise type {cell.noise!r} of cell {cell.name}, "
                f"but got models for {sorted(models)}"
            )
        seen.add(cell)
        groups.setdefault((cell.method, cell.noise), []).append(cell)
    return groups


def _images_per_chunk(batch_size: int, cells: int, max_batch_size: int | None) -> int:
    """Return how many images to take at a time so that a UNet batch of all ``cells`` fits ``max_batch_size``."""
    if max_batch_size is None:
        return batch_size
    if max_batch_size < cells:
        raise ValueError(
            f"max_batch_size must be at least the number of cells run together ({cells}), but got {max_batch_size}. "
            "Raise it, or pass fewer t values per call"
        )
    return min(batch_size, max_batch_size // cells)


def _reconstruct_group(
    method: str,
    group: list[GridCell],
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    batch: torch.Tensor,
    *,
    noise: NoiseSource,
    generators: list[list[torch.Generator]],
    distance: PerceptualDistance,
    settings: GridSettings,
) -> list[dict[str, torch.Tensor]]:
    """Reconstruct one chunk of images for every cell of a group in one ragged batch, and return each cell's parts."""
    count = batch.shape[0]
    noise_type = group[0].noise

    # Samples are cell-major: cell k owns samples k * count to (k + 1) * count - 1.
    samples = batch.repeat(len(group), 1, 1, 1)
    levels = [cell.t for cell in group for _ in range(count)]
    sample_generators = [generator for cell_generators in generators for generator in cell_generators]

    coarse = anoddpm_reconstruct_ragged(
        model, schedule, samples, levels, noise_type=noise_type, noise=noise, generators=sample_generators
    )
    if method == "anoddpm":
        parts = {"reconstruction": coarse}
    else:
        output = autoddpm_from_coarse(
            model,
            schedule,
            samples,
            coarse,
            noise_type=noise_type,
            noise=noise,
            generator=sample_generators,
            distance=distance.spatial,
            settings=settings.autoddpm,
        )
        parts = autoddpm_parts(output)

    per_cell = {name: value.split(count) for name, value in parts.items()}
    return [{name: pieces[index] for name, pieces in per_cell.items()} for index in range(len(group))]
