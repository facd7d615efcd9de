"""Simplex noise drawn with the ``opensimplex`` package, as ``SimplexNoise`` drew it before ``simplex_torch``.

``OpensimplexNoise`` is that noise source, for steps timed in the benchmarks' own process.

As a program it times that noise and prints the seconds of each run as JSON:

- ``draw BATCH SIZE OCTAVES WARMUP REPEATS`` draws ``BATCH`` images of ``SIZE`` x ``SIZE``
  pixels, with one ``OpenSimplex(seed)`` per image and one ``noise3array`` call, compiled
  by numba, per image and octave;
- ``steps SPEC PRESET SIZE BATCH THREADS WARMUP REPEATS`` runs training and reverse steps
  (see ``_steps``) that draw this noise.

These timings run in a process of their own because numba's OpenMP threads keep
busy-waiting after a parallel call under the default ``OMP_WAIT_POLICY``. On a shared
2-core machine that slowed PyTorch in the same process 10 to 30 times, for seconds after
the last call. The benchmarks run this program with ``OMP_WAIT_POLICY=PASSIVE``, under which
numba was fastest there.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import opensimplex
import torch

from benchmarks import Context
from benchmarks._steps import StepCase, Steps

PERSISTENCE = 0.8
FREQUENCY = 64.0
STEP = 100


class OpensimplexNoise:
    """Multi-octave noise from one ``opensimplex.OpenSimplex`` per sample and channel, seeded by ``generator``."""

    def __init__(self, *, octaves: int, persistence: float, frequency: float) -> None:
        self.octaves = octaves
        self.persistence = persistence
        self.frequency = frequency

    def __call__(self, shape: tuple[int, ...], t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = shape
        seeds = torch.randint(0, 2**62, (batch, channels), generator=generator, device=generator.device)
        rows, columns = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
        noise = np.zeros(shape, dtype=np.float32)
        for b, step in enumerate(t.tolist()):
            for c in range(channels):
                simplex = opensimplex.OpenSimplex(int(seeds[b, c]))
                frequency, amplitude = self.frequency, 1.0
                for _ in range(self.octaves):
                    layer = simplex.noise3array(columns / frequency, rows / frequency, np.array([step / frequency]))
                    noise[b, c] += amplitude * layer[0]
                    frequency /= 2
                    amplitude *= self.persistence
        return torch.from_numpy(noise).to(generator.device)


def draw_batch(batch: int, size: int, octaves: int) -> torch.Tensor:
    """Draw ``batch`` multi-octave images of ``size`` px at step ``STEP``."""
    noise = OpensimplexNoise(octaves=octaves, persistence=PERSISTENCE, frequency=FREQUENCY)
    return noise((batch, 1, size, size), torch.full((batch,), STEP), torch.Generator().manual_seed(0))


def main(arguments: list[str]) -> None:
    """Time noise draws (``draw``) or whole steps (``steps``) and print their seconds as JSON."""
    mode, *values = arguments
    if mode == "draw":
        batch, size, octaves, warmup, repeats = (int(value) for value in values)
        context = Context(repeats=repeats, warmup=warmup)
        print(json.dumps(context.time(lambda: draw_batch(batch, size, octaves)).seconds))
    elif mode == "steps":
        spec, preset, size, batch, threads, warmup, repeats = values
        torch.set_num_threads(int(threads))
        case = StepCase("opensimplex", spec, preset, int(size), int(batch))
        simplex = case.load_spec().model.simplex
        noise = OpensimplexNoise(octaves=simplex.octaves, persistence=simplex.persistence, frequency=simplex.frequency)
        steps = Steps(case, torch.device("cpu"), noise)
        context = Context(repeats=int(repeats), warmup=int(warmup))
        print(json.dumps({"train": steps.time_train(context).seconds, "reverse": context.time(steps.reverse).seconds}))
    else:
        raise SystemExit(f"mode must be 'draw' or 'steps', but got {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
