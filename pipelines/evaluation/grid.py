"""Evaluating the grid of method x noise type x noise level t on one split of images.

Each cell reconstructs every image, builds the anomaly maps, scores each image by
the mean of its map inside the head, and summarises reconstruction quality (MAE,
SSIM, LPIPS for healthy and pathological images) and detection (AUPRC, AUROC).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines.data.dataset import PreparedSplit
from pipelines.diffusion.noise import NoiseSource
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.methods.anoddpm import anoddpm_reconstruct
from pipelines.methods.autoddpm import AutoDDPMOutput, AutoDDPMSettings, autoddpm
from pipelines.metrics.detection import auprc, auroc
from pipelines.metrics.image import mae, ssim
from pipelines.metrics.lpips import PerceptualDistance
from pipelines.metrics.maps import anomaly_maps, image_scores

METHOD_LABELS = {"anoddpm": "AnoDDPM", "autoddpm": "AutoDDPM"}
NOISE_LABELS = {"gaussian": "Gaussian", "simplex": "Simplex"}
AUTODDPM_MAP = "autoddpm"

# Per-image seeds are drawn below the largest int64, the highest bound torch.randint accepts.
_IMAGE_SEED_LIMIT = 2**63 - 1


@dataclass(frozen=True, order=True)
class GridCell:
    """One evaluation setting: a method, the noise type of its model and a noise level t."""

    method: str
    noise: str
    t: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.noise}-t{self.t}"

    def label(self, stride: int = 1) -> str:
        """Return a label in the style of Mykula et al.'s tables, such as ``AnoDDPM-Gaussian(t=250)``."""
        shown = f"{self.t}" if stride == 1 else f"{self.t}, ≙{self.t * stride}"
        return f"{METHOD_LABELS[self.method]}-{NOISE_LABELS[self.noise]}(t={shown})"


def grid_cells(methods: dict[str, list[str]], t_values: list[int]) -> list[GridCell]:
    """Return every cell of the grid, ordered by method, noise type and t."""
    return sorted(GridCell(method, noise, t) for method, noises in methods.items() for noise in noises for t in t_values)


@dataclass(frozen=True)
class GridSettings:
    """How to evaluate a cell: maps to build, the map that scores images, batching and seed."""

    anomaly_maps: tuple[str, ...] = ("mae", "lpips", "mae_lpips")
    score_map: str = "mae_lpips"
    batch_size: int = 32
    seed: int = 0
    autoddpm: AutoDDPMSettings = field(default_factory=AutoDDPMSettings)


@dataclass
class CellOutputs:
    """Per-image results of one cell on one split (NumPy arrays, images first)."""

    cell: GridCell
    split: str
    labels: np.ndarray
    ids: list[str]
    images: np.ndarray
    reconstructions: np.ndarray
    maps: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    image_metrics: dict[str, np.ndarray]
    score_map: str
    intermediates: dict[str, np.ndarray] = field(default_factory=dict)


def cell_seed(seed: int, cell: GridCell, split: str) -> int:
    """Derive a stable seed per cell and split, independent of the order cells run in."""
    return zlib.crc32(f"{seed}/{cell.name}/{split}".encode())


def image_generators(
    seed: int, cell: GridCell, split: str, count: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """Return one generator per image of a split for one cell, seeded from :func:`cell_seed`.

    Each image draws its noise from its own generator, so its reconstruction does not depend
    on the batch size or on which other images and cells share its batch.
    """
    root = torch.Generator().manual_seed(cell_seed(seed, cell, split))
    seeds = torch.randint(0, _IMAGE_SEED_LIMIT, (count,), generator=root).tolist()
    return [torch.Generator(device=device).manual_seed(image_seed) for image_seed in seeds]


@torch.no_grad()
def evaluate_cell(
    cell: GridCell,
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    data: PreparedSplit,
    *,
    split: str,
    noise: NoiseSource,
    distance: PerceptualDistance,
    settings: GridSettings,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
) -> CellOutputs:
    """Reconstruct and score every image of ``data`` for one grid cell."""
    generators = image_generators(settings.seed, cell, split, len(data), device)
    images = torch.tensor(data.images)  # a copy: shared arrays may be read-only
    masks = torch.tensor(data.head_masks)
    collected: dict[str, list[torch.Tensor]] = {}

    for start in range(0, len(data), settings.batch_size):
        batch = images[start : start + settings.batch_size].to(device)
        parts = _reconstruct(
            cell,
            model,
            schedule,
            batch,
            noise=noise,
            generators=generators[start : start + settings.batch_size],
            distance=distance,
            settings=settings,
        )
        batch_masks = masks[start : start + settings.batch_size].to(device)
        collect_batch(collected, cell, batch, batch_masks, parts, distance=distance, settings=settings)
        if on_batch is not None:
            on_batch(min(start + settings.batch_size, len(data)), len(data))

    return cell_outputs(cell, split, data, collected, settings)


def collect_batch(
    collected: dict[str, list[torch.Tensor]],
    cell: GridCell,
    batch: torch.Tensor,
    batch_masks: torch.Tensor,
    parts: dict[str, torch.Tensor],
    *,
    distance: PerceptualDistance,
    settings: GridSettings,
) -> None:
    """Append one batch's anomaly maps, image scores, image metrics and reconstruction parts to ``collected``."""
    maps = anomaly_maps(batch, parts["reconstruction"], list(settings.anomaly_maps), distance=distance)
    if cell.method == "autoddpm":
        maps[AUTODDPM_MAP] = parts["anomaly_map"]
    for name, value in maps.items():
        _append(collected, f"map/{name}", value)
        _append(collected, f"score/{name}", image_scores(value, batch_masks))
    _append(collected, "metric/mae", mae(batch, parts["reconstruction"]))
    _append(collected, "metric/ssim", ssim(batch, parts["reconstruction"]))
    _append(collected, "metric/lpips", distance(batch, parts["reconstruction"]))
    for name, value in parts.items():
        _append(collected, f"part/{name}", value)


def cell_outputs(
    cell: GridCell, split: str, data: PreparedSplit, collected: dict[str, list[torch.Tensor]], settings: GridSettings
) -> CellOutputs:
    """Assemble the outputs of one cell from the batches that :func:`collect_batch` collected."""
    arrays = {key: torch.cat(values).cpu().numpy() for key, values in collected.items()}
    return CellOutputs(
        cell=cell,
        split=split,
        labels=data.labels,
        ids=list(data.ids),
        images=data.images,
        reconstructions=arrays["part/reconstruction"],
        maps=_with_prefix(arrays, "map/"),
        scores=_with_prefix(arrays, "score/"),
        image_metrics=_with_prefix(arrays, "metric/"),
        score_map=AUTODDPM_MAP if cell.method == "autoddpm" else settings.score_map,
        intermediates={
            name: value
            for name, value in _with_prefix(arrays, "part/").items()
            if name in ("coarse", "mask", "stitched")
        },
    )


def autoddpm_parts(output: AutoDDPMOutput) -> dict[str, torch.Tensor]:
    """Return the parts of an AutoDDPM pass that :func:`collect_batch` records."""
    return {
        "reconstruction": output.reconstruction,
        "coarse": output.coarse,
        "mask": output.mask,
        "stitched": output.stitched,
        "anomaly_map": output.anomaly_map,
    }


def check_method(method: str) -> None:
    """Raise unless ``method`` is a method of the grid."""
    if method not in METHOD_LABELS:
        raise ValueError(f"method must be one of {sorted(METHOD_LABELS)}, but got {method!r}")


def _reconstruct(
    cell: GridCell,
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    batch: torch.Tensor,
    *,
    noise: NoiseSource,
    generators: list[torch.Generator],
    distance: PerceptualDistance,
    settings: GridSettings,
) -> dict[str, torch.Tensor]:
    check_method(cell.method)
    if cell.method == "anoddpm":
        reconstruction = anoddpm_reconstruct(
            model, schedule, batch, cell.t, noise_type=cell.noise, noise=noise, generator=generators
        )
        return {"reconstruction": reconstruction}
    output = autoddpm(
        model,
        schedule,
        batch,
        cell.t,
        noise_type=cell.noise,
        noise=noise,
        generator=generators,
        distance=distance.spatial,
        settings=settings.autoddpm,
    )
    return autoddpm_parts(output)


def summarize_cell(outputs: CellOutputs) -> dict[str, float]:
    """Return the cell's summary metrics: reconstruction quality per label, AUPRC and AUROC."""
    labels = outputs.labels
    summary: dict[str, float] = {
        "n_healthy": float((labels == 0).sum()),
        "n_pathological": float((labels == 1).sum()),
    }
    for metric, values in outputs.image_metrics.items():
        for label_value, label_name in ((0, "healthy"), (1, "pathological")):
            chosen = values[labels == label_value]
            if chosen.size:
                summary[f"{metric}_{label_name}_mean"] = float(chosen.mean())
                summary[f"{metric}_{label_name}_std"] = float(chosen.std())
    for name, scores in outputs.scores.items():
        summary[f"auprc_{name}"] = auprc(labels, scores)
        summary[f"auroc_{name}"] = auroc(labels, scores)
    summary["auprc"] = summary[f"auprc_{outputs.score_map}"]
    summary["auroc"] = summary[f"auroc_{outputs.score_map}"]
    return summary


def _append(collected: dict[str, list[torch.Tensor]], key: str, value: torch.Tensor) -> None:
    collected.setdefault(key, []).append(value.detach().float().cpu())


def _with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key.removeprefix(prefix): value for key, value in arrays.items() if key.startswith(prefix)}
