"""AnoDDPM (Wyatt et al., 2022): noise an image part of the way and denoise it back.

Anomalies are parts the model, trained on healthy images only, cannot restore; the
difference between the input and its reconstruction is the anomaly map.
"""

from __future__ import annotations

import torch

from pipelines.diffusion.noise import NoiseSource, data_range, from_model_range, to_model_range
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.methods.reverse import check_step, reverse_process


@torch.no_grad()
def anoddpm_reconstruct(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    images: torch.Tensor,
    t: int,
    *,
    noise_type: str,
    noise: NoiseSource,
    generator: torch.Generator,
) -> torch.Tensor:
    """Reconstruct ``images`` (B, 1, H, W in [0, 1]) from noise level ``t``; returns [0, 1] images.

    1. Noise the image to step ``t`` with the model's noise type.
    2. Run the reverse process for exactly ``t`` steps, drawing the stochastic term
       from the same noise type.
    """
    check_step(t, schedule)
    x_start = to_model_range(images, noise_type)
    steps = torch.full((images.shape[0],), t, device=images.device, dtype=torch.long)
    x_t = schedule.q_sample(x_start, steps, noise(tuple(x_start.shape), steps, generator).to(images.device))
    x_0 = reverse_process(
        model, schedule, x_t, t, noise=noise, generator=generator, clip=data_range(noise_type)
    )
    return from_model_range(x_0, noise_type)
