"""Training and reverse steps of a spec's UNet with a chosen noise source, for timing in benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import Context, Timing
from pipelines.diffusion.noise import NoiseSource
from pipelines.diffusion.training import TrainingSettings, train_ddpm
from pipelines.methods.reverse import denoise_step
from sweeper.spec import SweepSpec, load_yaml, set_dotted, validate
from trainables.builders import build_model, build_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Training steps per run of train_ddpm, so that its set-up is spread over several steps.
TRAIN_STEPS = 3


@dataclass(frozen=True)
class StepCase:
    """A model preset trained and run at ``size`` px in batches of ``batch``, with the rest of ``spec``'s settings."""

    label: str
    spec: str
    preset: str
    size: int
    batch: int

    def load_spec(self) -> SweepSpec:
        """Read the spec with this case's preset, image size and batch size."""
        raw = load_yaml(CONFIGS / self.spec)
        for key, value in {"model.preset": self.preset, "data.image_size": self.size, "training.batch_size": self.batch}.items():
            raw = set_dotted(raw, key, value)
        return validate(raw)

    def noise_command(self, source: str) -> str:
        """Describe one noise draw of a batch, by ``source``."""
        return f"{source}(({self.batch}, 1, {self.size}, {self.size}), t, generator)"

    def step_command(self, kind: str, source: str) -> str:
        """Describe one training (``kind`` "train") or reverse step with noise from ``source``."""
        if kind == "train":
            return f"train_ddpm({self.preset} UNet, {self.batch} images of {self.size} px, {source}, steps={TRAIN_STEPS}) / {TRAIN_STEPS}"
        return f"denoise_step({self.preset} UNet, batch {self.batch} at {self.size} px, {source})"


class Steps:
    """One case's untrained UNet, schedule and batch on ``device``, with noise from ``noise``."""

    def __init__(self, case: StepCase, device: torch.device, noise: NoiseSource) -> None:
        spec = case.load_spec()
        self.device = device
        self.noise = noise
        self.model = build_model(spec, "simplex").to(device)
        self.schedule = build_schedule(spec, device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.shape = (case.batch, 1, case.size, case.size)
        self.images = torch.rand(self.shape, generator=self.generator, device=device)
        self.t = torch.randint(1, self.schedule.T + 1, (case.batch,), generator=self.generator, device=device)
        self.settings = TrainingSettings(batch_size=case.batch, lr=spec.training.lr, steps=TRAIN_STEPS)

    def draw(self) -> None:
        """Draw the noise of one batch."""
        self.noise(self.shape, self.t, self.generator)

    def train(self) -> None:
        """Run ``TRAIN_STEPS`` training steps."""
        train_ddpm(self.model, self.schedule, self.images, noise_type="simplex", noise=self.noise, settings=self.settings, generator=self.generator)

    def reverse(self) -> None:
        """Take one reverse step of the batch."""
        denoise_step(self.model, self.schedule, self.images * 2 - 1, self.t, noise=self.noise, generator=self.generator, clip=(-1.0, 1.0))

    def time_train(self, context: Context, *, repeats: int | None = None) -> Timing:
        """Time training, in seconds per step."""
        runs = context.time(self.train, device=self.device, repeats=repeats)
        return Timing(tuple(seconds / TRAIN_STEPS for seconds in runs.seconds))
