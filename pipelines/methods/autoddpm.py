"""AutoDDPM, "mask, stitch and re-sample" (Bercea et al., 2023).

1. A coarse reconstruction, as AnoDDPM at noise level t.
2. A likelihood map: spatial LPIPS(x, coarse) times the residual |x - coarse|, the
   residual divided by its own 95th percentile and clipped to [0, 1].
3. A binary mask where the likelihood map is high, dilated with a 3x3 kernel.
4. Stitch: the coarse reconstruction inside the mask, the input outside it.
5. Re-sample: noise the stitched image to ``t_inpaint`` and denoise it. At every step
   the unmasked region is replaced by the input noised to the same step, with
   ``resample_steps`` RePaint-style jumps back (Lugmayr et al., 2022).
6. The anomaly map is |x - final| times the likelihood map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.diffusion.noise import NoiseSource, data_range, from_model_range, to_model_range
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.methods.anoddpm import anoddpm_reconstruct
from pipelines.methods.draws import Generators, draw_noise
from pipelines.methods.reverse import check_step, denoise_step

# Maps a pair of image batches in [0, 1] to a spatial distance map of shape (B, 1, H, W).
SpatialDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AutoDDPMSettings:
    """Settings of the mask and re-sampling stages."""

    t_inpaint: int = 50
    resample_steps: int = 5
    mask_percentile: float = 95.0
    mask_threshold: float | None = None
    dilation_iterations: int = 1
    residual_percentile: float = 95.0


@dataclass(frozen=True)
class AutoDDPMOutput:
    """Every intermediate image of one AutoDDPM pass, each of shape (B, 1, H, W), in [0, 1]."""

    coarse: torch.Tensor
    likelihood_map: torch.Tensor
    mask: torch.Tensor
    stitched: torch.Tensor
    reconstruction: torch.Tensor
    anomaly_map: torch.Tensor


def likelihood_map(images: torch.Tensor, reconstruction: torch.Tensor, distance: SpatialDistance, percentile: float) -> torch.Tensor:
    """Return spatial LPIPS times the residual scaled by its own per-image percentile."""
    residual = (images - reconstruction).abs()
    scale = per_image_quantile(residual, percentile / 100).clamp_min(1e-8)
    residual = (residual / scale).clamp(0.0, 1.0)
    return distance(images, reconstruction) * residual


def anomaly_mask(
    likelihood: torch.Tensor, *, percentile: float, threshold: float | None, dilation_iterations: int
) -> torch.Tensor:
    """Threshold the likelihood map (per-image percentile, or a fixed value) and dilate it."""
    if threshold is None:
        cut = per_image_quantile(likelihood, percentile / 100)
    else:
        cut = torch.full_like(likelihood[:, :1, :1, :1], threshold)
    mask = (likelihood > cut).to(likelihood.dtype)
    for _ in range(dilation_iterations):
        mask = F.max_pool2d(mask, kernel_size=3, stride=1, padding=1)
    return mask


def per_image_quantile(maps: torch.Tensor, q: float) -> torch.Tensor:
    """Return the q-quantile of every image, shaped (B, 1, 1, 1)."""
    return torch.quantile(maps.flatten(1), q, dim=1).reshape(-1, 1, 1, 1)


@torch.no_grad()
def resample_inpaint(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    stitched: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    t_inpaint: int,
    resample_steps: int,
    noise: NoiseSource,
    generator: Generators,
    clip: tuple[float, float],
) -> torch.Tensor:
    """Inpaint the masked region of ``stitched`` while keeping ``known`` outside it (model range).

    Runs ``t_inpaint * resample_steps`` UNet calls. After each reverse step the
    unmasked region is replaced by ``known`` noised to the new step; all but the last
    pass of each step then jump back one forward step and denoise again.
    """
    check_step(t_inpaint, schedule)
    batch = stitched.shape[0]
    device = stitched.device

    def draw(steps: torch.Tensor) -> torch.Tensor:
        return draw_noise(noise, tuple(stitched.shape), steps, generator).to(device)

    steps = torch.full((batch,), t_inpaint, device=device, dtype=torch.long)
    x = schedule.q_sample(stitched, steps, draw(steps))
    for step in range(t_inpaint, 0, -1):
        steps = torch.full((batch,), step, device=device, dtype=torch.long)
        for jump in range(resample_steps):
            x_unknown = denoise_step(model, schedule, x, steps, noise=noise, generator=generator, clip=clip)
            if step > 1:
                x_known = schedule.q_sample(known, steps - 1, draw(steps - 1))
            else:
                x_known = known
            x_prev = mask * x_unknown + (1.0 - mask) * x_known
            if jump < resample_steps - 1:
                x = schedule.q_step(x_prev, steps, draw(steps))
        x = x_prev
    return x


@torch.no_grad()
def autoddpm(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    images: torch.Tensor,
    t: int,
    *,
    noise_type: str,
    noise: NoiseSource,
    generator: Generators,
    distance: SpatialDistance,
    settings: AutoDDPMSettings,
) -> AutoDDPMOutput:
    """Run AutoDDPM at noise level ``t`` on ``images`` (B, 1, H, W in [0, 1]).

    ``generator`` is one generator for the batch or one per image.
    """
    coarse = anoddpm_reconstruct(model, schedule, images, t, noise_type=noise_type, noise=noise, generator=generator)
    return autoddpm_from_coarse(
        model,
        schedule,
        images,
        coarse,
        noise_type=noise_type,
        noise=noise,
        generator=generator,
        distance=distance,
        settings=settings,
    )


@torch.no_grad()
def autoddpm_from_coarse(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    images: torch.Tensor,
    coarse: torch.Tensor,
    *,
    noise_type: str,
    noise: NoiseSource,
    generator: Generators,
    distance: SpatialDistance,
    settings: AutoDDPMSettings,
) -> AutoDDPMOutput:
    """Run AutoDDPM's stages 2 to 6 on ``images`` and their coarse reconstructions, both in [0, 1].

    Every image goes through the same ``t_inpaint`` re-sampling steps, so images whose
    coarse reconstructions came from different noise levels share one batch.
    """
    likelihood = likelihood_map(images, coarse, distance, settings.residual_percentile)
    mask = anomaly_mask(
        likelihood,
        percentile=settings.mask_percentile,
        threshold=settings.mask_threshold,
        dilation_iterations=settings.dilation_iterations,
    )
    stitched = mask * coarse + (1.0 - mask) * images

    final = resample_inpaint(
        model,
        schedule,
        to_model_range(stitched, noise_type),
        to_model_range(images, noise_type),
        mask,
        t_inpaint=settings.t_inpaint,
        resample_steps=settings.resample_steps,
        noise=noise,
        generator=generator,
        clip=data_range(noise_type),
    )
    reconstruction = from_model_range(final, noise_type)
    return AutoDDPMOutput(
        coarse=coarse,
        likelihood_map=likelihood,
        mask=mask,
        stitched=stitched,
        reconstruction=reconstruction,
        anomaly_map=(images - reconstruction).abs() * likelihood,
    )
