"""Time simplex noise drawn with the ``opensimplex`` package, in a process of its own.

``python -m benchmarks._opensimplex_baseline BATCH SIZE OCTAVES WARMUP REPEATS`` draws
``BATCH`` images of ``SIZE`` x ``SIZE`` pixels, one seed each, the way ``SimplexNoise``
drew them before ``simplex_torch``: one ``OpenSimplex(seed)`` and one ``noise3array`` call
per image and octave, compiled by numba. It prints the seconds of each timed run as a JSON
list.

It runs apart from the benchmarks because numba's OpenMP threads busy-wait after every
parallel call under the default ``OMP_WAIT_POLICY``, which slowed PyTorch in the same
process by 10 to 20 times on a shared 2-core machine. Its parent starts it with
``OMP_WAIT_POLICY=PASSIVE``, the setting under which numba was fastest there.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import opensimplex

PERSISTENCE = 0.8
FREQUENCY = 64.0
STEP = 100


def draw_batch(batch: int, size: int, octaves: int) -> np.ndarray:
    """Draw ``batch`` multi-octave images with seeds 0 to ``batch - 1`` at step ``STEP``."""
    coordinates = np.arange(size, dtype=np.float64)
    images = np.zeros((batch, size, size))
    for seed in range(batch):
        simplex = opensimplex.OpenSimplex(seed)
        frequency, amplitude = FREQUENCY, 1.0
        for _ in range(octaves):
            layer = simplex.noise3array(coordinates / frequency, coordinates / frequency, np.array([STEP / frequency]))
            images[seed] += amplitude * layer[0]
            frequency /= 2
            amplitude *= PERSISTENCE
    return images


def main(arguments: list[str]) -> None:
    """Warm up, then print the seconds of each timed ``draw_batch``."""
    batch, size, octaves, warmup, repeats = (int(argument) for argument in arguments)
    for _ in range(warmup):
        draw_batch(batch, size, octaves)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw_batch(batch, size, octaves)
        seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
