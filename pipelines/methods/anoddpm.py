"""AnoDDPM (Wyatt et al., 2022): noise an image part of the way and denoise it back.

Anomalies are parts the model, trained on healthy images only, cannot restore; the
difference between the input and its reconstruction is the anomaly map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipelines.diffusion.noise import NoiseSource, data_range, from_model_range, to_model_range
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.methods.draws import Generators, draw_noise
from pipelines.methods.reverse import check_step, denoise_step, reverse_process


@torch.no_grad()
def anoddpm_reconstruct(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    images: torch.Tensor,
    t: int,
    *,
    noise_type: str,
    noise: NoiseSource,
    generator: Generators,
) -> torch.Tensor:
    """Reconstruct ``images`` (B, 1, H, W in [0, 1]) from noise level ``t``; returns [0, 1] images.

    1. Noise the image to step ``t`` with the model's noise type.
    2. Run the reverse process for exactly ``t`` steps, drawing the stochastic term
       from the same noise type.

    ``generator`` is one generator for the batch or one per image.
    """
    check_step(t, schedule)
    x_start = to_model_range(images, noise_type)
    steps = torch.full((images.shape[0],), t, device=images.device, dtype=torch.long)
    x_t = schedule.q_sample(x_start, steps, draw_noise(noise, tuple(x_start.shape), steps, generator).to(images.device))
    x_0 = reverse_process(
        model, schedule, x_t, t, noise=noise, generator=generator, clip=data_range(noise_type)
    )
    return from_model_range(x_0, noise_type)


@torch.no_grad()
def anoddpm_reconstruct_ragged(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    images: torch.Tensor,
    t: Sequence[int],
    *,
    noise_type: str,
    noise: NoiseSource,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Reconstruct each image ``images[i]`` from its own noise level ``t[i]`` in one ragged batch.

    A countdown runs from max(t) to 1. An image joins the batch when the countdown reaches
    its t: it is noised to step t, then takes one reverse step per countdown step with the
    images already in. The UNet runs max(t) times instead of sum(t) times, on batches that
    grow as images join.

    Image i draws its noise from ``generators[i]``, in the order in which
    :func:`anoddpm_reconstruct` draws it, so with one generator per image both return the
    same reconstructions up to floating-point differences between batch sizes.
    """
    count = images.shape[0]
    levels = [int(level) for level in t]
    if len(levels) != count or len(generators) != count:
        raise ValueError(
            f"t and generators must have one entry per image ({count}), but got {len(levels)} and {len(generators)}"
        )
    for level in sorted(set(levels)):
        check_step(level, schedule)

    # Sorted by t, largest first, the images in the batch at any step are a prefix.
    order = sorted(range(count), key=lambda index: -levels[index])
    ordered_levels = torch.tensor([levels[index] for index in order], device=images.device, dtype=torch.long)
    ordered_generators = [generators[index] for index in order]
    x_start = to_model_range(images[order], noise_type)
    clip = data_range(noise_type)

    x = torch.empty_like(x_start)
    active = 0
    for step in range(max(levels, default=0), 0, -1):
        # 1. Noise the images whose t is this step to x_t, in their own generators' order.
        joined = active + int((ordered_levels == step).sum())
        if joined > active:
            new = slice(active, joined)
            draws = draw_noise(noise, tuple(x_start[new].shape), ordered_levels[new], ordered_generators[new])
            x[new] = schedule.q_sample(x_start[new], ordered_levels[new], draws.to(images.device))
            active = joined

        # 2. Take one reverse step on every image in the batch.
        steps = torch.full((active,), step, device=images.device, dtype=torch.long)
        x[:active] = denoise_step(
            model, schedule, x[:active], steps, noise=noise, generator=ordered_generators[:active], clip=clip
        )

    x_0 = torch.empty_like(x)
    x_0[order] = x
    return from_model_range(x_0, noise_type)
