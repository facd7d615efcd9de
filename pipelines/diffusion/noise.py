"""Noise for the forward and reverse diffusion process: Gaussian, or simplex as in AnoDDPM.

A noise source is called with the shape of a batch, the step ``t`` of every sample and
a ``torch.Generator``; the same generator state gives the same noise.

Simplex noise follows AnoDDPM (Wyatt et al., 2022): 3D OpenSimplex noise sampled at
``(x / f, y / f, t / f)`` for pixel coordinates ``x, y`` and step ``t``, summed over
octaves whose frequency ``f`` halves and whose amplitude is multiplied by the
persistence each time. The sum is not renormalised, as in AnoDDPM. Every sample and
channel of a batch draws a new seed, so no two samples share a pattern. The whole batch
is drawn at once on the generator's device by ``simplex_torch``, which equals the
``opensimplex`` package to within 1e-6 per octave.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch

from pipelines.diffusion.simplex_torch import fractal_noise

NoiseType = Literal["gaussian", "simplex"]

# Seeds are drawn below 2**62, which fits the signed 64-bit seeds of the opensimplex package.
_SEED_LIMIT = 2**62


class NoiseSource(Protocol):
    """Draws noise of ``shape`` for samples at steps ``t`` (a tensor of shape ``(B,)``)."""

    def __call__(self, shape: tuple[int, ...], t: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


class GaussianNoise:
    """Standard normal noise, independent per pixel."""

    def __call__(self, shape: tuple[int, ...], t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device)


class SimplexNoise:
    """Multi-octave 3D OpenSimplex noise with a fresh seed per sample and channel.

    ``compile`` (default True) runs the noise through ``torch.compile``, which fuses it into one
    kernel, on the CPU as on CUDA. On a shared 2-core CPU a compiled draw took 0.3 to 0.6 times
    the time of ``opensimplex`` with numba, and an uncompiled one 3 to 12 times as long (see
    ``benchmarks/README.md``). The first draw of each process then compiles the kernel, or loads
    it from Inductor's on-disk cache in a few seconds. On a CPU without a C++ compiler the noise
    runs uncompiled, after a warning (see ``simplex_compile``). ``compile=False`` skips the
    compile, which pays off for processes that draw only a few batches.
    """

    def __init__(
        self, *, octaves: int = 6, persistence: float = 0.8, frequency: float = 64.0, compile: bool = True
    ) -> None:
        if octaves < 1:
            raise ValueError(f"octaves must be at least 1, but got {octaves}")
        self.octaves = octaves
        self.persistence = persistence
        self.frequency = frequency
        self.compile = compile

    def __call__(self, shape: tuple[int, ...], t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = shape
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), but got {tuple(t.shape)}")
        seeds = torch.randint(0, _SEED_LIMIT, (batch, channels), generator=generator, device=generator.device)
        steps = t.to(torch.float64).cpu().repeat_interleave(channels)
        noise = self._fractal(seeds.flatten().tolist(), steps, height, width, generator.device)
        return noise.view(shape)

    def draw(self, seed: int, step: float, height: int, width: int) -> np.ndarray:
        """Return one ``(height, width)`` float32 noise image for ``seed`` at step ``step``."""
        return self._fractal([seed], [step], height, width, torch.device("cpu"))[0].numpy()

    def _fractal(self, seeds: list[int], steps: torch.Tensor | list[float], height: int, width: int, device: torch.device) -> torch.Tensor:
        return fractal_noise(
            seeds,
            steps,
            height,
            width,
            octaves=self.octaves,
            persistence=self.persistence,
            frequency=self.frequency,
            device=device,
            compile=self.compile,
        )


def make_noise(noise_type: str, *, octaves: int = 6, persistence: float = 0.8, frequency: float = 64.0) -> NoiseSource:
    """Build the noise source for ``noise_type`` ('gaussian' or 'simplex')."""
    if noise_type == "gaussian":
        return GaussianNoise()
    if noise_type == "simplex":
        return SimplexNoise(octaves=octaves, persistence=persistence, frequency=frequency)
    raise ValueError(f"noise type must be 'gaussian' or 'simplex', but got {noise_type!r}")


def data_range(noise_type: str) -> tuple[float, float]:
    """Return the model's input range: [0, 1] for Gaussian noise and [-1, 1] for simplex."""
    return (0.0, 1.0) if noise_type == "gaussian" else (-1.0, 1.0)


def to_model_range(images: torch.Tensor, noise_type: str) -> torch.Tensor:
    """Map images in [0, 1] to the model's input range for ``noise_type``."""
    low, high = data_range(noise_type)
    return images * (high - low) + low


def from_model_range(images: torch.Tensor, noise_type: str) -> torch.Tensor:
    """Map model outputs back to [0, 1], clipping what falls outside."""
    low, high = data_range(noise_type)
    return ((images - low) / (high - low)).clamp(0.0, 1.0)
