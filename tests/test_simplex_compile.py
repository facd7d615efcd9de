"""Compiled simplex noise equals opensimplex, serves every size with one compile, and falls back without a compiler.

The first test run on a machine compiles the kernel, which took one to two minutes on a busy
2-core CPU. Later runs load it from Inductor's on-disk cache.
"""

from __future__ import annotations

import logging

import numpy as np
import opensimplex
import pytest
import torch
import torch._dynamo
import torch._inductor.config

from pipelines.diffusion.simplex_compile import cpu_compiler
from pipelines.diffusion.simplex_torch import fractal_noise

SETTINGS = {"octaves": 6, "persistence": 0.8, "frequency": 64}
IMAGE_TOLERANCE = 1e-5
POINT_TOLERANCE = 1e-6


def reference_image(seed: int, step: float, height: int, width: int, octaves: int, persistence: float, frequency: float) -> np.ndarray:
    """Draw one multi-octave image with opensimplex's array function."""
    simplex = opensimplex.OpenSimplex(seed)
    rows, columns = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    total = np.zeros((height, width))
    amplitude = 1.0
    for _ in range(octaves):
        total += amplitude * simplex.noise3array(columns / frequency, rows / frequency, np.array([step / frequency]))[0]
        frequency /= 2
        amplitude *= persistence
    return total


@pytest.mark.parametrize(("seeds", "steps"), [([11, 2**62 - 5], [0, 137]), ([22, 44, 7], [50, 300, 999.5])])
def test_compiled_noise_equals_opensimplex(seeds: list[int], steps: list[float]) -> None:
    # 128 x 128 pixels and 6 octaves make 98304 points per image, so the draws end inside a
    # chunk of 65536 points and exercise the padding.
    drawn = fractal_noise(seeds, steps, 128, 128, **SETTINGS, compile=True)
    assert drawn.shape == (len(seeds), 128, 128)
    for index, (seed, step) in enumerate(zip(seeds, steps, strict=True)):
        expected = reference_image(seed, step, 128, 128, **SETTINGS)
        assert np.abs(drawn[index].double().numpy() - expected).max() <= IMAGE_TOLERANCE


def test_compiled_noise_breaks_ties_like_opensimplex() -> None:
    # At frequency 8 every point lies on eighths of a unit, so many lie exactly on cell and
    # region borders, where a tie broken the other way would be off by about 1e-4.
    steps = list(range(9))
    drawn = fractal_noise([42] * len(steps), steps, 25, 25, octaves=1, persistence=1.0, frequency=8, compile=True)
    for index, step in enumerate(steps):
        expected = reference_image(42, step, 25, 25, octaves=1, persistence=1.0, frequency=8)
        assert np.abs(drawn[index].double().numpy() - expected).max() < POINT_TOLERANCE


def test_compiled_batch_equals_single_draws() -> None:
    seeds, steps = [3, 1_000_003, 2**50, 8], [10, 10, 250, 999]
    batch = fractal_noise(seeds, steps, 128, 128, **SETTINGS, compile=True)
    for index, (seed, step) in enumerate(zip(seeds, steps, strict=True)):
        assert torch.equal(batch[index], fractal_noise([seed], [step], 128, 128, **SETTINGS, compile=True)[0])


def test_compiled_noise_equals_uncompiled() -> None:
    seeds, steps = [5, 6, 7], [1, 20, 300]
    compiled = fractal_noise(seeds, steps, 40, 56, **SETTINGS, compile=True)
    uncompiled = fractal_noise(seeds, steps, 40, 56, **SETTINGS, compile=False)
    assert (compiled - uncompiled).abs().max() <= POINT_TOLERANCE


def test_compiled_noise_needs_no_recompile() -> None:
    # Forget the kernels of earlier tests, which may have been compiled for other inputs.
    torch._dynamo.reset()
    # Two full chunks of 65536 points and one padded chunk.
    fractal_noise([1, 2], [3, 4], 128, 96, **SETTINGS, compile=True)
    cases = [([1], 128, 128, 6), ([1], 20, 24, 6), ([1, 2, 3, 4, 5], 64, 48, 3), (list(range(16)), 128, 128, 6)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seeds, height, width, octaves in cases:
            drawn = fractal_noise(seeds, [7] * len(seeds), height, width, octaves=octaves, persistence=0.8, frequency=64, compile=True)
            assert drawn.shape == (len(seeds), height, width)
        # Training draws noise with gradients enabled and evaluation under no_grad.
        with torch.no_grad():
            assert fractal_noise([1], [7], 20, 24, **SETTINGS, compile=True).shape == (1, 20, 24)


def test_missing_compiler_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    cpu_compiler.cache_clear()
    try:
        with torch._inductor.config.patch({"cpp.cxx": ("no-such-cxx-compiler",)}), caplog.at_level(logging.WARNING):
            first = fractal_noise([9, 10], [5, 6], 24, 20, **SETTINGS, compile=True)
            second = fractal_noise([9, 10], [5, 6], 24, 20, **SETTINGS, compile=True)
    finally:
        cpu_compiler.cache_clear()
    warnings = [record for record in caplog.records if "no C++ compiler found" in record.getMessage()]
    assert len(warnings) == 1
    uncompiled = fractal_noise([9, 10], [5, 6], 24, 20, **SETTINGS, compile=False)
    assert torch.equal(first, uncompiled)
    assert torch.equal(second, uncompiled)
