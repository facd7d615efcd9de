"""The PyTorch OpenSimplex noise equals the opensimplex package: permutations, single points and whole images."""

from __future__ import annotations

import itertools

import numpy as np
import opensimplex
import pytest
import torch

from pipelines.diffusion.simplex_tables import permutations
from pipelines.diffusion.simplex_torch import LatticeTables, fractal_noise, noise3

# Tolerances: the kernels run in float32 (about 6e-7 measured on 128 x 128, 6 octaves).
POINT_TOLERANCE = 1e-6
IMAGE_TOLERANCE = 1e-5


def reference_image(seed: int, step: float, size: int, octaves: int, persistence: float, frequency: float) -> np.ndarray:
    """Draw one multi-octave image with opensimplex's array function."""
    simplex = opensimplex.OpenSimplex(seed)
    coordinates = np.arange(size, dtype=np.float64)
    total = np.zeros((size, size))
    amplitude = 1.0
    for _ in range(octaves):
        total += amplitude * simplex.noise3array(coordinates / frequency, coordinates / frequency, np.array([step / frequency]))[0]
        frequency /= 2
        amplitude *= persistence
    return total


def evaluate(seed: int, points: np.ndarray) -> np.ndarray:
    """Evaluate noise3 at ``points`` (shape ``(n, 3)``) with one seed."""
    x, y, z = (torch.from_numpy(np.ascontiguousarray(points[:, axis])) for axis in range(3))
    return noise3(x, y, z, torch.zeros(1, dtype=torch.int64), LatticeTables.from_seeds([seed])).double().numpy()


@pytest.mark.parametrize("seed", [0, 1, 3, 12345, -7, 2**62 - 1, 2**63 + 17, 2**70 + 5])
def test_permutations_equal_opensimplex(seed: int) -> None:
    assert np.array_equal(permutations([seed])[0], opensimplex.OpenSimplex(seed)._perm)


def test_permutations_of_several_seeds() -> None:
    seeds = [5, 6, 2**40]
    table = permutations(seeds)
    for row, seed in zip(table, seeds, strict=True):
        assert np.array_equal(row, opensimplex.OpenSimplex(seed)._perm)
        assert sorted(row) == list(range(256))


@pytest.mark.parametrize("seed", [0, 99, 2**61 + 3])
def test_noise3_equals_opensimplex_at_random_points(seed: int) -> None:
    points = np.random.default_rng(seed % 1000).uniform(-70, 70, size=(3000, 3))
    simplex = opensimplex.OpenSimplex(seed)
    expected = np.array([simplex.noise3(*point) for point in points])
    assert np.abs(evaluate(seed, points) - expected).max() < POINT_TOLERANCE


def test_noise3_breaks_ties_like_opensimplex() -> None:
    # Eighths of a unit put many points exactly on cell and region borders, where the two
    # extra lattice points switch. A tie broken the other way would be off by about 1e-4.
    values = np.arange(-8, 17) / 8
    points = np.array(list(itertools.product(values, repeat=3)))
    simplex = opensimplex.OpenSimplex(42)
    expected = np.array([simplex.noise3(*point) for point in points])
    assert np.abs(evaluate(42, points) - expected).max() < POINT_TOLERANCE


@pytest.mark.parametrize(("seed", "step"), [(11, 0), (22, 50), (2**62 - 5, 137), (44, 300)])
def test_fractal_noise_equals_opensimplex_image(seed: int, step: int) -> None:
    drawn = fractal_noise([seed], [step], 128, 128, octaves=6, persistence=0.8, frequency=64)
    expected = reference_image(seed, step, 128, 6, 0.8, 64)
    assert drawn.shape == (1, 128, 128)
    assert np.abs(drawn[0].double().numpy() - expected).max() <= IMAGE_TOLERANCE


def test_batch_equals_single_draws() -> None:
    seeds, steps = [3, 1_000_003, 2**50, 8], [10, 10, 250, 999]
    settings = {"octaves": 6, "persistence": 0.8, "frequency": 64}
    batch = fractal_noise(seeds, steps, 48, 40, **settings)
    for index, (seed, step) in enumerate(zip(seeds, steps, strict=True)):
        assert torch.equal(batch[index], fractal_noise([seed], [step], 48, 40, **settings)[0])


def test_fractal_noise_rectangular_orientation() -> None:
    # Rows are y and columns are x, as in opensimplex's noise3array.
    drawn = fractal_noise([9], [20], 12, 30, octaves=1, persistence=0.5, frequency=8)[0].double().numpy()
    simplex = opensimplex.OpenSimplex(9)
    expected = simplex.noise3array(np.arange(30) / 8, np.arange(12) / 8, np.array([20 / 8]))[0]
    assert np.abs(drawn - expected).max() < POINT_TOLERANCE


def test_fractal_noise_rejects_zero_octaves() -> None:
    with pytest.raises(ValueError, match=r"octaves must be at least 1, but got 0"):
        fractal_noise([1], [1], 8, 8, octaves=0, persistence=0.8, frequency=64)


def test_fractal_noise_rejects_step_count_mismatch() -> None:
    with pytest.raises(ValueError, match=r"steps must have one value per seed \(2\), but got 3"):
        fractal_noise([1, 2], [1, 2, 3], 8, 8, octaves=1, persistence=0.8, frequency=64)


def test_noise3_rejects_float32_coordinates() -> None:
    coordinates = torch.zeros(4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"x must be float64 so that cells match opensimplex, but got torch.float32"):
        noise3(coordinates, coordinates.double(), coordinates.double(), torch.zeros(1, dtype=torch.int64), LatticeTables.from_seeds([1]))
