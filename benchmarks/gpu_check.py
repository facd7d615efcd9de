"""Check a GPU with the paper's set-up: training speed and memory, grid speed, and the UNet's FLOPs.

``python -m benchmarks.gpu_check`` (or ``benchmarks/gpu_check.sh``) runs three steps on
CUDA with the settings of ``configs/paper.yaml``:

1. train the reference UNet on 128 x 128 synthetic phantoms with simplex noise for 200
   steps in batches of 32, with ``train_ddpm``'s default speed options for the device
   (bf16 autocast and channels-last on CUDA; ``--compile`` adds ``torch.compile``), and
   report images per second and peak GPU memory;
2. evaluate the full grid (AnoDDPM with Gaussian and simplex noise, AutoDDPM with Gaussian
   noise, t = 50 to 300: 18 cells) on 32 phantoms with untrained UNets, as a trial does:
   ``evaluate_grid`` runs every t of a method in one ragged batch, and the UNet runs under
   ``evaluation.precision`` (bf16 autocast on CUDA). Report images per second;
3. count the UNet's FLOPs per image with ``torch.utils.flop_counter.FlopCounterMode``, turn
   both speeds into achieved TFLOP/s and divide them by the device's dense bf16 peak: the
   model FLOP utilisation (MFU). The peak comes from ``--peak-tflops``, else
   ``$SWEEPER_PEAK_TFLOPS``, else the table in ``benchmarks/_flops.py``.

It needs the LPIPS weights (``--lpips-weights`` or ``$SWEEPER_LPIPS_WEIGHTS``) for the
grid's anomaly maps. ``--smoke`` runs the same steps at tiny sizes (tiny preset, 64 px,
t = 1 to 6, 2 training steps, 1 grid image) on whatever device there is, to test the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import machine_for
from benchmarks._flops import device_peak, forward_flops, training_tflops
from pipelines.data.dataset import PreparedSplit
from pipelines.data.phantoms import generate_synthetic_phantoms
from pipelines.diffusion.performance import inference_model
from pipelines.diffusion.training import TrainingSettings, train_ddpm
from pipelines.evaluation.grid import grid_cells
from pipelines.evaluation.ragged import evaluate_grid
from pipelines.metrics.lpips import LPIPSWeightsError, PerceptualDistance
from sweeper.spec import SweepSpec, load_yaml, set_dotted, validate
from trainables.builders import build_model, build_noise, build_schedule, grid_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"


@dataclass(frozen=True)
class CheckSize:
    """How much work each step does."""

    overrides: dict[str, Any]
    train_steps: int
    warmup_steps: int
    batch_size: int
    grid_images: int


# NOTE: the 5-minute budget is an estimate from FLOP counts, not a measurement. The reference
# UNet needs 188 GFLOP per image and forward pass at 128 px, so training needs about 3.6 PFLOP
# and the grid about 150,000 image passes (28 PFLOP): about 3.5 minutes at 150 TFLOP/s.
# --grid-images and --train-steps shrink the check if it runs over.
FULL = CheckSize(overrides={}, train_steps=200, warmup_steps=10, batch_size=32, grid_images=32)
SMOKE = CheckSize(
    overrides={
        "model.preset": "tiny",
        "data.image_size": 64,
        "evaluation.t": [1, 2, 3, 4, 5, 6],
        "evaluation.autoddpm.t_inpaint": 1,
        "evaluation.autoddpm.resample_steps": 1,
    },
    train_steps=2,
    warmup_steps=1,
    batch_size=2,
    grid_images=1,
)


@dataclass(frozen=True)
class Report:
    """The results of one check, as printed and written to JSON."""

    machine: dict[str, Any]
    smoke: bool
    image_size: int
    preset: str
    forward_flops_per_image: float
    train_steps: int
    train_batch_size: int
    train_options: str
    train_seconds: float
    train_images_per_s: float
    train_tflops: float
    train_peak_memory_gib: float | None
    grid_cells: int
    grid_images: int
    grid_seconds: float
    grid_images_per_s: float
    grid_unet_images: int
    grid_tflops: float
    peak_tflops: float | None
    peak_source: str | None
    train_mfu: float | None
    grid_mfu: float | None

    def lines(self) -> list[str]:
        """Return the report as lines of text."""
        memory = "n/a (CPU)" if self.train_peak_memory_gib is None else f"{self.train_peak_memory_gib:.2f} GiB"
        lines = [
            f"device: {self.machine['device']}, torch {self.machine['torch']}, CPU {self.machine['cpu']} ({self.machine['cores']} cores)",
            f"UNet: {self.preset} preset at {self.image_size} px, {self.forward_flops_per_image / 1e9:.3g} GFLOP per image forward",
            f"1. training ({self.train_options}): {self.train_steps} steps of {self.train_batch_size} in {self.train_seconds:.1f} s: "
            f"{self.train_images_per_s:.1f} images/s, {self.train_tflops:.2f} TFLOP/s, peak memory {memory}",
            f"2. grid: {self.grid_cells} cells, {self.grid_images} images, in {self.grid_seconds:.1f} s: "
            f"{self.grid_images_per_s:.2f} images/s through the whole grid, {self.grid_unet_images} UNet image passes, "
            f"{self.grid_tflops:.2f} TFLOP/s in the UNet (LPIPS not counted)",
        ]
        if self.train_mfu is not None and self.grid_mfu is not None:
            lines.append(
                f"3. against a peak of {self.peak_tflops:g} TFLOP/s ({self.peak_source}): "
                f"MFU of training {self.train_mfu:.1%}, of the grid {self.grid_mfu:.1%}"
            )
        else:
            lines.append("3. MFU not computed: no peak is known for this device; pass --peak-tflops or set $SWEEPER_PEAK_TFLOPS")
        return lines


def load_spec(size: CheckSize) -> SweepSpec:
    """Read ``configs/paper.yaml`` with the size's overrides."""
    raw = load_yaml(CONFIGS / "paper.yaml")
    for key, value in size.overrides.items():
        raw = set_dotted(raw, key, value)
    return validate(raw)


def phantom_split(images: int, size: int) -> PreparedSplit:
    """Return ``images`` synthetic phantoms of ``size`` px, half healthy, as one split."""
    healthy = images // 2
    phantoms = generate_synthetic_phantoms(healthy=healthy, pathological=images - healthy, size=size)
    return PreparedSplit(
        images=np.stack([phantom.image for phantom in phantoms])[:, None].astype(np.float32),
        labels=np.array([int(phantom.pathological) for phantom in phantoms], dtype=np.int64),
        ids=[phantom.case_id for phantom in phantoms],
        groups=[phantom.case_id for phantom in phantoms],
        head_masks=np.stack([phantom.head_mask for phantom in phantoms])[:, None],
        lesion_masks=np.stack([phantom.lesion_mask for phantom in phantoms])[:, None],
    )


def synchronise(device: torch.device) -> None:
    """Wait for queued work on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_settings(spec: SweepSpec, size: CheckSize, steps: int, *, compile: bool) -> TrainingSettings:
    """Return the settings of ``steps`` training steps, with the default speed options and ``compile``."""
    return TrainingSettings(batch_size=size.batch_size, lr=spec.training.lr, steps=steps, compile=compile)


def time_training(spec: SweepSpec, size: CheckSize, device: torch.device, *, compile: bool) -> tuple[float, float | None]:
    """Train with simplex noise after a warm-up and return the seconds and the peak GPU memory in GiB."""
    model = build_model(spec, "simplex").to(device)
    schedule = build_schedule(spec, device)
    noise = build_noise(spec, "simplex")
    images = torch.from_numpy(phantom_split(2 * size.batch_size, spec.data.image_size).images).to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def train(steps: int) -> None:
        settings = training_settings(spec, size, steps, compile=compile)
        train_ddpm(model, schedule, images, noise_type="simplex", noise=noise, settings=settings, generator=generator)

    # The warm-up also compiles the simplex noise on CUDA, and the UNet with compile.
    train(size.warmup_steps)
    synchronise(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train(size.train_steps)
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def time_grid(spec: SweepSpec, size: CheckSize, device: torch.device, distance: PerceptualDistance) -> tuple[int, float, int]:
    """Evaluate every grid cell once and return the cell count, the seconds and the UNet image passes."""
    data = phantom_split(size.grid_images, spec.data.image_size)
    cells = grid_cells(spec.evaluation.methods, spec.evaluation.t)
    models = {noise: build_model(spec, noise).to(device).eval() for noise in spec.noise_types}
    schedule = build_schedule(spec, device)
    settings = grid_settings(spec)
    passes = [0]

    def count(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        passes[0] += inputs[0].shape[0]

    for model in models.values():
        model.register_forward_hook(count)

    start = time.perf_counter()
    # As trials evaluate: every t of a method in one ragged batch, the UNet under evaluation.precision.
    evaluate_grid(
        cells,
        {noise: inference_model(model, device, spec.evaluation.precision) for noise, model in models.items()},
        schedule,
        data,
        split="test",
        noise_for=functools.partial(build_noise, spec),
        distance=distance,
        settings=settings,
        device=device,
        max_batch_size=spec.evaluation.max_batch_size,
    )
    synchronise(device)
    return len(cells), time.perf_counter() - start, passes[0]


def run_check(
    *,
    smoke: bool,
    lpips_weights: str | None,
    peak_tflops: float | None,
    train_steps: int | None = None,
    grid_images: int | None = None,
    compile: bool = False,
) -> Report:
    """Run the three steps and return their report; ``train_steps`` and ``grid_images`` override the size's."""
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device, but torch.cuda.is_available() is False; run with --smoke to test it on the CPU")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = SMOKE if smoke else FULL
    if train_steps is not None:
        size = dataclasses.replace(size, train_steps=train_steps)
    if grid_images is not None:
        size = dataclasses.replace(size, grid_images=grid_images)
    if size.train_steps < 1 or size.grid_images < 1:
        raise SystemExit(f"--train-steps and --grid-images must be at least 1, but got {size.train_steps} and {size.grid_images}")
    spec = load_spec(size)
    try:
        peak = device_peak(device, peak_tflops)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    try:
        distance = PerceptualDistance(lpips_weights).to(device)
    except LPIPSWeightsError as error:
        raise SystemExit(f"gpu_check needs the LPIPS weights for the grid: {error}") from None

    flops = forward_flops(build_model(spec, "gaussian").to(device).eval(), spec.data.image_size, device)
    print(f"UNet forward: {flops / 1e9:.3g} GFLOP per image; training ...", file=sys.stderr)
    train_options = training_settings(spec, size, size.train_steps, compile=compile).speed_options(device).describe()
    train_seconds, peak_memory = time_training(spec, size, device, compile=compile)
    train_images_per_s = size.train_steps * size.batch_size / train_seconds
    print(f"training: {train_seconds:.1f} s; grid ...", file=sys.stderr)
    cells, grid_seconds, unet_images = time_grid(spec, size, device, distance)
    train_tflops = training_tflops(flops, train_images_per_s)
    grid_tflops = flops * unet_images / grid_seconds / 1e12

    return Report(
        machine=asdict(machine_for(device)),
        smoke=smoke,
        image_size=spec.data.image_size,
        preset=spec.model.preset,
        forward_flops_per_image=flops,
        train_steps=size.train_steps,
        train_batch_size=size.batch_size,
        train_options=train_options,
        train_seconds=train_seconds,
        train_images_per_s=train_images_per_s,
        train_tflops=train_tflops,
        train_peak_memory_gib=peak_memory,
        grid_cells=cells,
        grid_images=size.grid_images,
        grid_seconds=grid_seconds,
        grid_images_per_s=size.grid_images / grid_seconds,
        grid_unet_images=unet_images,
        grid_tflops=grid_tflops,
        peak_tflops=peak.tflops if peak else None,
        peak_source=peak.source if peak else None,
        train_mfu=train_tflops / peak.tflops if peak else None,
        grid_mfu=grid_tflops / peak.tflops if peak else None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the check, print its report and write it as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device, to test the script")
    parser.add_argument("--lpips-weights", default=None, help="LPIPS weights file (default: $SWEEPER_LPIPS_WEIGHTS)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak in TFLOP/s, for the MFU (default: $SWEEPER_PEAK_TFLOPS, else benchmarks/_flops.py's table)",
    )
    parser.add_argument("--compile", action="store_true", help="train with torch.compile (train_ddpm's compile option)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps to time (default 200, 2 with --smoke)")
    parser.add_argument("--grid-images", type=int, default=None, help="phantoms to evaluate (default 32, 1 with --smoke)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to write (default {DEFAULT_OUT})")
    arguments = parser.parse_args(argv)

    report = run_check(
        smoke=arguments.smoke,
        lpips_weights=arguments.lpips_weights,
        peak_tflops=arguments.peak_tflops,
        train_steps=arguments.train_steps,
        grid_images=arguments.grid_images,
        compile=arguments.compile,
    )
    print("\n".join(report.lines()))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
