"""Benchmarks of the grid evaluation: every noise level t in one ragged batch against the per-cell loop.

Both paths evaluate every cell of a spec's grid on one split of synthetic phantoms. The
untrained UNets, the schedule, the noise and the grid settings are built from the spec as a
trial builds them, and LPIPS reads the local weights (``$SWEEPER_LPIPS_WEIGHTS``). The
baseline is the loop a trial runs today, :func:`evaluate_cell` once per cell, and the
command is :func:`evaluate_grid`. Both draw the same noise and compute the same maps, and
every image takes the same number of reverse steps in both. They differ only in how the
UNet's work is batched, in fewer and larger calls in the ragged path, which the row's note
counts.

``ragged_cpu`` runs ``configs/fbau-cpu.yaml`` (the tiny preset at 48 px, t = 5 to 30 of a
100-step chain) on the CPU. ``ragged_gpu`` runs ``configs/paper.yaml`` (the reference
preset at 128 px, t = 50 to 300) on CUDA and reports images per second for the whole grid.
``--quick`` shrinks both to 32 px, t = 2, 4, 6 and four images. Without LPIPS weights a
row is skipped, with the reason. A trial runs with as many torch threads as the spec's
``resources.cpus``, so ``--threads 1`` matches a trial of ``configs/fbau-cpu.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import Context, Row, machine_for
from pipelines.data.dataset import PreparedSplit
from pipelines.data.phantoms import MIN_SIZE, generate_synthetic_phantoms
from pipelines.evaluation.grid import evaluate_cell, grid_cells
from pipelines.evaluation.ragged import evaluate_grid
from pipelines.metrics.lpips import LPIPSWeightsError, PerceptualDistance
from sweeper.spec import SweepSpec, load_yaml, set_dotted, validate
from trainables.builders import build_model, build_noise, build_schedule, grid_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Small enough to check that the benchmark runs. LPIPS's AlexNet needs at least 31 px (MIN_LPIPS_INPUT_SIZE).
QUICK_OVERRIDES: dict[str, Any] = {
    "data.image_size": 32,
    "evaluation.t": [2, 4, 6],
    "evaluation.autoddpm.t_inpaint": 2,
    "evaluation.autoddpm.resample_steps": 2,
}
QUICK_HEALTHY = QUICK_PATHOLOGICAL = 2

# NOTE: an estimate, never measured: one run of the paper's grid should take minutes on one
# GPU, so the GPU row is timed at most this many times.
GPU_MAX_REPEATS = 2


@dataclass(frozen=True)
class GridCase:
    """A spec's grid, evaluated on ``healthy`` healthy and ``pathological`` pathological phantoms."""

    spec: str
    healthy: int
    pathological: int

    @property
    def images(self) -> int:
        """Number of phantoms."""
        return self.healthy + self.pathological


CPU_CASE = GridCase(spec="fbau-cpu.yaml", healthy=4, pathological=4)
# The test split of configs/paper.yaml (its max_test).
GPU_CASE = GridCase(spec="paper.yaml", healthy=12, pathological=18)


def ragged_cpu(context: Context) -> list[Row]:
    """Time the ragged grid against the per-cell loop on the CPU."""
    return [_compare(context, "ragged_cpu", CPU_CASE, torch.device("cpu"), repeats=context.repeats)]


def ragged_gpu(context: Context) -> list[Row]:
    """Time the ragged grid against the per-cell loop on CUDA, with images per second for the whole grid."""
    if not torch.cuda.is_available():
        return [
            context.skipped(
                "ragged_gpu",
                command=_command(GPU_CASE),
                baseline=_baseline(GPU_CASE),
                device="cuda",
                reason="CUDA is not available on this machine",
            )
        ]
    return [_compare(context, "ragged_gpu", GPU_CASE, torch.device("cuda"), repeats=min(context.repeats, GPU_MAX_REPEATS))]


BENCHMARKS = {"ragged_cpu": ragged_cpu, "ragged_gpu": ragged_gpu}


def _compare(context: Context, name: str, case: GridCase, device: torch.device, *, repeats: int) -> Row:
    """Time both paths on one case and describe the UNet calls and the throughput in the note."""
    spec = _load_spec(case, quick=context.quick)
    try:
        distance = PerceptualDistance().to(device)
    except LPIPSWeightsError as error:
        return context.skipped(name, command=_command(case), baseline=_baseline(case), device=str(device), reason=str(error))

    measured = GridCase(case.spec, healthy=QUICK_HEALTHY, pathological=QUICK_PATHOLOGICAL) if context.quick else case
    count = measured.images
    data = _phantom_split(measured.healthy, measured.pathological, spec.data.image_size)
    cells = grid_cells(spec.evaluation.methods, spec.evaluation.t)
    models = {noise: build_model(spec, noise).to(device).eval() for noise in spec.noise_types}
    schedule = build_schedule(spec, device)
    settings = grid_settings(spec)
    calls = _count_calls(models.values())

    def per_cell() -> None:
        for cell in cells:
            evaluate_cell(
                cell, models[cell.noise], schedule, data, split="test", noise=build_noise(spec, cell.noise),
                distance=distance, settings=settings, device=device,
            )

    def ragged() -> None:
        evaluate_grid(
            cells, models, schedule, data, split="test", noise_for=lambda noise: build_noise(spec, noise),
            distance=distance, settings=settings, device=device,
        )

    runs = context.warmup + repeats
    context.log(f"{name}: {len(cells)} cells of {case.spec}, {count} images, {runs} runs per path")
    calls[0] = 0
    baseline_timing = context.time(per_cell, device=device, repeats=repeats)
    baseline_calls = calls[0] // runs
    calls[0] = 0
    timing = context.time(ragged, device=device, repeats=repeats)
    ragged_calls = calls[0] // runs

    note = (
        f"{len(cells)} cells, {count} images at {spec.data.image_size} px; UNet calls per run: "
        f"{ragged_calls} ragged, {baseline_calls} per cell; images/s through the whole grid: "
        f"{count / timing.median_s:.3g} ragged, {count / baseline_timing.median_s:.3g} per cell"
    )
    return Row(name, machine_for(device), _command(case), _baseline(case), timing, baseline_timing, note=note)


def _load_spec(case: GridCase, *, quick: bool) -> SweepSpec:
    """Read the case's spec, shrunk by ``QUICK_OVERRIDES`` when ``quick``."""
    raw = load_yaml(CONFIGS / case.spec)
    if quick:
        for key, value in QUICK_OVERRIDES.items():
            raw = set_dotted(raw, key, value)
    return validate(raw)


def _phantom_split(healthy: int, pathological: int, size: int) -> PreparedSplit:
    """Return synthetic phantoms of ``size`` pixels as a split, the healthy ones first."""
    # The generator draws at least MIN_SIZE pixels, so smaller phantoms are drawn at that size and shrunk.
    phantoms = generate_synthetic_phantoms(healthy=healthy, pathological=pathological, size=max(size, MIN_SIZE))

    def stack(arrays: list[np.ndarray], mode: str) -> np.ndarray:
        batch = torch.from_numpy(np.stack(arrays)[:, None].astype(np.float32))
        return F.interpolate(batch, size=(size, size), mode=mode).numpy()

    return PreparedSplit(
        images=stack([phantom.image for phantom in phantoms], "area"),
        labels=np.array([int(phantom.pathological) for phantom in phantoms], dtype=np.int64),
        ids=[phantom.case_id for phantom in phantoms],
        groups=[phantom.case_id for phantom in phantoms],
        head_masks=stack([phantom.head_mask for phantom in phantoms], "nearest") > 0.5,
        lesion_masks=stack([phantom.lesion_mask for phantom in phantoms], "nearest") > 0.5,
    )


def _count_calls(models: Iterable[torch.nn.Module]) -> list[int]:
    """Count the forward calls of every model in a one-element list that forward hooks update."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    for model in models:
        model.register_forward_hook(count)
    return calls


def _command(case: GridCase) -> str:
    return f"evaluate_grid: every cell of configs/{case.spec} on {case.images} phantoms ({QUICK_HEALTHY + QUICK_PATHOLOGICAL} with --quick)"


def _baseline(case: GridCase) -> str:
    return "evaluate_cell once per cell: the same grid and phantoms"
