"""The two training loops that ``benchmarks.training`` compares, and their CPU memory measurement.

``plain_fp32_loop`` is a minimal DDPM training loop: the same UNet, batch, schedule, loss
and AdamW optimiser as ``train_ddpm``, but fp32 in the contiguous memory format, with no
augmentation, EMA, checkpoints or loss history. ``Trainer`` runs either loop, or
``train_ddpm`` with some speed options, on one case.

Peak CPU memory is measured in a fresh child process, ``python -m benchmarks._training_loops
CASE VARIANT THREADS``, which prints the growth of the resident set size (RSS) over one call
of the loop, after one warm-up call. glibc's ``MALLOC_MMAP_THRESHOLD_`` is fixed at 64 KiB
there, so that every tensor gets pages of its own and returns them when it is freed.
Without it, the allocator keeps freed memory for reuse and the growth reads low.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.diffusion.noise import GaussianNoise
from pipelines.diffusion.performance import SpeedOptions, resolve_speed_options
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.diffusion.training import TrainingSettings, train_ddpm
from sweeper.spec import SweepSpec, load_yaml, set_dotted, validate
from trainables.builders import build_model, build_schedule, training_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MALLOC_MMAP_THRESHOLD = "65536"


@dataclass(frozen=True)
class TrainCase:
    """A model preset trained on ``size`` px images in batches of ``batch``, ``steps`` steps per call."""

    spec: str
    preset: str
    size: int
    batch: int
    steps: int

    def load_spec(self) -> SweepSpec:
        """Read the spec with this case's preset, image size and batch size."""
        raw = load_yaml(CONFIGS / self.spec)
        for key, value in {"model.preset": self.preset, "data.image_size": self.size, "training.batch_size": self.batch}.items():
            raw = set_dotted(raw, key, value)
        return validate(raw)

    def describe(self) -> str:
        """Return the case as text for a row's note."""
        return f"{self.preset} preset, batch {self.batch}, {self.size} px, Gaussian noise, {self.steps} steps per call"


@dataclass(frozen=True)
class Variant:
    """The plain loop (``plain``), or ``train_ddpm`` with the spec's settings and these speed options."""

    plain: bool = False
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def settings(self, spec: SweepSpec, case: TrainCase) -> TrainingSettings:
        """Return the spec's training settings with this variant's speed options and ``case.steps`` steps."""
        settings = training_settings(spec)
        return dataclasses.replace(
            settings,
            epochs=None,
            steps=case.steps,
            precision=self.precision,
            channels_last=self.channels_last,
            compile=self.compile,
        )

    def resolve(self, device: torch.device) -> SpeedOptions | None:
        """Return the speed options this variant has on ``device``, or None for the plain loop."""
        if self.plain:
            return None
        return resolve_speed_options(device, precision=self.precision, channels_last=self.channels_last, compile=self.compile)

    def describe(self, device: torch.device) -> str:
        """Return the variant as text for a row's command or baseline."""
        if self.plain:
            return "plain_fp32_loop (fp32, contiguous, eager; no augmentation, EMA or loss history)"
        return f"train_ddpm(precision={self.precision}, channels_last={self.channels_last}, compile={self.compile}): {self.resolve(device).describe()}"


PLAIN = Variant(plain=True)
PRODUCT = Variant()


def plain_fp32_loop(
    model: torch.nn.Module, schedule: DiffusionSchedule, images: torch.Tensor, *, batch: int, steps: int, lr: float, generator: torch.Generator
) -> None:
    """Train ``model`` for ``steps`` steps on random batches of ``images`` in fp32, without extras."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, images.shape[0], (batch,), generator=generator, device=images.device)
        x_start = images[index]
        t = torch.randint(1, schedule.T + 1, (batch,), generator=generator, device=images.device)
        eps = torch.randn(x_start.shape, generator=generator, device=images.device)
        loss = F.mse_loss(model(schedule.q_sample(x_start, t, eps), t - 1), eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class Trainer:
    """One case's UNet, schedule and images on ``device``, trained by one variant per call."""

    def __init__(self, case: TrainCase, variant: Variant, device: torch.device) -> None:
        self.spec = case.load_spec()
        self.case = case
        self.variant = variant
        self.device = device
        self.model = build_model(self.spec, "gaussian").to(device)
        self.schedule = build_schedule(self.spec, device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        # Twice the batch, so that the product's epochs hold two steps.
        self.images = torch.rand((2 * case.batch, 1, case.size, case.size), generator=self.generator, device=device)
        self.settings = variant.settings(self.spec, case)

    def run(self) -> None:
        """Train for ``case.steps`` steps."""
        if self.variant.plain:
            plain_fp32_loop(
                self.model, self.schedule, self.images, batch=self.case.batch, steps=self.case.steps, lr=self.settings.lr, generator=self.generator
            )
            return
        train_ddpm(
            self.model, self.schedule, self.images, noise_type="gaussian", noise=GaussianNoise(), settings=self.settings, generator=self.generator
        )


def peak_rss_growth(case: TrainCase, variant: Variant) -> int | None:
    """Return the peak RSS growth in bytes of one call of ``variant`` on the CPU, measured in a child process.

    Returns None where the kernel offers no ``/proc/self/clear_refs`` to reset the peak (not Linux).
    """
    if not Path("/proc/self/clear_refs").exists():
        return None
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MALLOC_MMAP_THRESHOLD}
    arguments = [json.dumps(dataclasses.asdict(case)), json.dumps(dataclasses.asdict(variant)), str(torch.get_num_threads())]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks._training_loops", *arguments], capture_output=True, text=True, env=environment, cwd=PROJECT_ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"the memory measurement failed with exit status {result.returncode}: {result.stderr.strip()}")
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_growth_bytes"])


def _resident_kib(field: str) -> int:
    """Return ``field`` (VmRSS or VmHWM) of /proc/self/status in KiB."""
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not found in /proc/self/status")
    return int(match.group(1))


def _measure(case: TrainCase, variant: Variant) -> int:
    """Return the peak RSS growth in bytes of one call, after a warm-up call."""
    trainer = Trainer(case, variant, torch.device("cpu"))
    trainer.run()
    # Writing 5 resets VmHWM, the peak RSS, to the current RSS (Linux 4.0 and later).
    Path("/proc/self/clear_refs").write_text("5")
    before = _resident_kib("VmRSS")
    trainer.run()
    return (_resident_kib("VmHWM") - before) * 1024


def main(argv: list[str]) -> None:
    """Measure one case and variant given as JSON, with a thread count, and print the result as JSON."""
    if len(argv) != 3:
        raise SystemExit("usage: python -m benchmarks._training_loops CASE_JSON VARIANT_JSON THREADS")
    case = TrainCase(**json.loads(argv[0]))
    variant = Variant(**json.loads(argv[1]))
    torch.set_num_threads(int(argv[2]))
    print(json.dumps({"peak_rss_growth_bytes": _measure(case, variant)}))


if __name__ == "__main__":
    main(sys.argv[1:])
