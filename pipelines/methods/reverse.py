"""The reverse diffusion process, run from a chosen step down to x_0."""

from __future__ import annotations

import torch

from pipelines.diffusion.noise import NoiseSource
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.methods.draws import Generators, draw_noise


@torch.no_grad()
def denoise_step(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    noise: NoiseSource,
    generator: Generators,
    clip: tuple[float, float],
) -> torch.Tensor:
    """Take one reverse step x_t to x_{t-1}, drawing the stochastic term from ``noise``."""
    eps = model(x_t, t - 1)
    z = draw_noise(noise, tuple(x_t.shape), t, generator).to(x_t.device)
    return schedule.p_sample(x_t, t, eps, z, clip=clip)


@torch.no_grad()
def reverse_process(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    x_t: torch.Tensor,
    t: int,
    *,
    noise: NoiseSource,
    generator: Generators,
    clip: tuple[float, float],
) -> torch.Tensor:
    """Run exactly ``t`` reverse steps from x_t to x_0, one UNet call per step."""
    check_step(t, schedule)
    x = x_t
    for step in range(t, 0, -1):
        steps = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        x = denoise_step(model, schedule, x, steps, noise=noise, generator=generator, clip=clip)
    return x


def check_step(t: int, schedule: DiffusionSchedule) -> None:
    """Raise unless ``t`` is a step of the chain (1 to T)."""
    if not 1 <= t <= schedule.T:
        raise ValueError(f"noise level t must be between 1 and T={schedule.T}, but got {t}")
