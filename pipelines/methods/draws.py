"""Noise draws for a batch, from one generator for the whole batch or from one generator per sample.

With one generator per sample, each sample's noise depends only on its own generator and
the order of its own draws, not on which other samples share its batch. That is what lets
a ragged batch, which mixes noise levels and cells, reproduce the noise of separate runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipelines.diffusion.noise import NoiseSource

# One generator for the whole batch, or one per sample, in batch order.
Generators = torch.Generator | Sequence[torch.Generator]


def draw_noise(noise: NoiseSource, shape: tuple[int, ...], t: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Draw noise of ``shape`` for samples at steps ``t``, per sample when given one generator per sample."""
    if isinstance(generator, torch.Generator):
        return noise(shape, t, generator)

    if len(generator) != shape[0]:
        raise ValueError(
            f"generator must be one torch.Generator or one per sample ({shape[0]}), but got {len(generator)} generators"
        )
    sample_shape = (1, *shape[1:])
    return torch.cat([noise(sample_shape, t[index : index + 1], sample) for index, sample in enumerate(generator)])

