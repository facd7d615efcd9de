"""Noise sources: reproducible under a seed, independent per sample, and simplex as AnoDDPM draws it."""

from __future__ import annotations

import numpy as np
import opensimplex
import pytest
import torch

from pipelines.diffusion.noise import GaussianNoise, SimplexNoise, from_model_range, make_noise, to_model_range


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_reproducible() -> None:
    t = torch.tensor([3, 4])
    first = GaussianNoise()((2, 1, 8, 8), t, generator(1))
    second = GaussianNoise()((2, 1, 8, 8), t, generator(1))
    assert torch.equal(first, second)


def test_simplex_reproducible_and_independent() -> None:
    noise = SimplexNoise()
    t = torch.tensor([5, 5, 5])
    first = noise((3, 1, 32, 32), t, generator(7))
    second = noise((3, 1, 32, 32), t, generator(7))
    assert torch.equal(first, second)
    assert not torch.allclose(first[0], first[1])
    assert not torch.allclose(first[1], first[2])


def test_simplex_equals_opensimplex_octaves() -> None:
    noise = SimplexNoise(octaves=6, persistence=0.8, frequency=64)
    drawn = noise.draw(seed=1234, step=50, height=20, width=24)
    expected = np.zeros((20, 24))
    frequency, amplitude = 64.0, 1.0
    simplex = opensimplex.OpenSimplex(1234)
    for _ in range(6):
        for row in range(20):
            for column in range(24):
                expected[row, column] += amplitude * simplex.noise3(column / frequency, row / frequency, 50 / frequency)
        frequency /= 2
        amplitude *= 0.8
    # The kernels run in float32, which keeps every pixel within 1e-5 of opensimplex.
    assert np.abs(drawn - expected).max() <= 1e-5


def test_simplex_seeds_come_from_generator() -> None:
    # Each sample and channel gets the next seed below 2**62 from the generator, and its
    # noise is the opensimplex pattern of that seed at the sample's step.
    noise = SimplexNoise(octaves=3, persistence=0.5, frequency=16)
    t = torch.tensor([7, 90])
    drawn = noise((2, 3, 12, 10), t, generator(5))
    seeds = torch.randint(0, 2**62, (2, 3), generator=generator(5))
    rows, columns = np.arange(12) / 16, np.arange(10) / 16
    for b, c in np.ndindex(2, 3):
        simplex = opensimplex.OpenSimplex(int(seeds[b, c]))
        expected = sum(
            0.5**octave * simplex.noise3array(columns * 2**octave, rows * 2**octave, np.array([int(t[b]) / 16 * 2**octave]))[0]
            for octave in range(3)
        )
        assert np.abs(drawn[b, c].double().numpy() - expected).max() <= 1e-5


def test_simplex_depends_on_step() -> None:
    noise = SimplexNoise()
    assert not np.allclose(noise.draw(9, 10, 16, 16), noise.draw(9, 200, 16, 16))


def test_simplex_is_smooth_unlike_gaussian() -> None:
    simplex = SimplexNoise()((1, 1, 64, 64), torch.tensor([100]), generator())
    gaussian = GaussianNoise()((1, 1, 64, 64), torch.tensor([100]), generator())

    def neighbour_correlation(x: torch.Tensor) -> float:
        a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert neighbour_correlation(simplex) > 0.9
    assert abs(neighbour_correlation(gaussian)) < 0.1


def test_model_range_round_trip() -> None:
    images = torch.rand(2, 1, 4, 4)
    assert torch.allclose(from_model_range(to_model_range(images, "simplex"), "simplex"), images, atol=1e-6)
    assert to_model_range(images, "simplex").min() >= -1
    assert torch.equal(to_model_range(images, "gaussian"), images)


def test_unknown_noise_type_rejected() -> None:
    with pytest.raises(ValueError, match=r"noise type must be 'gaussian' or 'simplex', but got 'perlin'"):
        make_noise("perlin")
