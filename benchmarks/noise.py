"""Benchmarks of simplex noise: ``simplex_torch`` against ``opensimplex``, and its share of a step.

``simplex_cpu`` (compiled, as ``SimplexNoise`` draws by default), ``simplex_cpu_eager``
(uncompiled, the fallback without a C++ compiler) and ``simplex_gpu`` draw a batch of
128 x 128 images with 6 octaves (persistence 0.8, frequency 64) and compare with the
``opensimplex`` package compiled by numba, timed in a separate process (see
``_opensimplex_baseline``). numba runs as many threads as PyTorch (``NUMBA_NUM_THREADS`` is
set to ``torch.get_num_threads()``), and the note states that number. The ratio is the
PyTorch time over the opensimplex time, so below 1 is faster. The untimed warm-up call
compiles the kernel or loads it from Inductor's cache, and the note gives its time.

``share_cpu`` and ``share_gpu`` time one noise draw against one full training step
(``train_ddpm``) and one reverse step (``denoise_step``) that draw the same noise, for the
tiny preset at the size of ``configs/demo.yaml`` and the reference preset at 128 px. The
ratio is the share of the step spent on noise, which the note also prints as a percentage.
The aim is at most 10 %.

``steps_cpu`` times whole training and reverse steps of the tiny preset with
``SimplexNoise`` against the same steps with opensimplex noise drawn in the same process, as
``SimplexNoise`` drew it before. The opensimplex steps run with ``OMP_WAIT_POLICY=PASSIVE``,
as the draw baseline does, so that idle numba threads do not compete with PyTorch for the
cores. The ratio is the new step's time over the old one's.

``--quick`` shrinks images and batches so that the rows only check that everything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import Context, Row, Timing, machine_for
from benchmarks._opensimplex_baseline import FREQUENCY, PERSISTENCE, STEP
from benchmarks._steps import StepCase, Steps
from pipelines.diffusion.noise import SimplexNoise
from pipelines.diffusion.simplex_torch import fractal_noise

OCTAVES = 6
# The GPU draw must take under this long for a batch of 64.
GPU_TARGET_S = 5e-3


@dataclass(frozen=True)
class DrawCase:
    """A batch of ``batch`` noise images of ``size`` x ``size`` pixels."""

    batch: int
    size: int

    def describe(self) -> str:
        """Return the case as text for a row's command."""
        return f"{self.batch} x {self.size}x{self.size}, {OCTAVES} octaves"


def simplex_cpu(context: Context) -> list[Row]:
    """Time a batch of 8 on the CPU, compiled and uncompiled, against opensimplex with numba."""
    case = DrawCase(batch=2, size=32) if context.quick else DrawCase(batch=8, size=128)
    device = torch.device("cpu")
    return [
        _draw_row(context, "simplex_cpu", case, device, compile=True),
        _draw_row(context, "simplex_cpu_eager", case, device, compile=False),
    ]


def simplex_gpu(context: Context) -> list[Row]:
    """Time a batch of 64 on CUDA, compiled and eager, against opensimplex with numba on the CPU."""
    case = DrawCase(batch=4, size=32) if context.quick else DrawCase(batch=64, size=128)
    if not torch.cuda.is_available():
        reason = "CUDA is not available"
        return [
            context.skipped(f"simplex_gpu{suffix}", command=_draw_command(case, "cuda", compile), baseline=_baseline_command(case), device="cuda", reason=reason)
            for suffix, compile in (("", True), ("_eager", False))
        ]
    device = torch.device("cuda")
    return [
        _draw_row(context, "simplex_gpu", case, device, compile=True, target_s=GPU_TARGET_S),
        _draw_row(context, "simplex_gpu_eager", case, device, compile=False, target_s=GPU_TARGET_S),
    ]


def _draw_row(context: Context, name: str, case: DrawCase, device: torch.device, *, compile: bool, target_s: float | None = None) -> Row:
    """Time ``fractal_noise`` for ``case`` on ``device`` and opensimplex for the same sizes, step and threads."""
    seeds, steps = list(range(case.batch)), [STEP] * case.batch

    def draw() -> None:
        fractal_noise(seeds, steps, case.size, case.size, octaves=OCTAVES, persistence=PERSISTENCE, frequency=FREQUENCY, device=device, compile=compile)

    context.log(f"{name}: {case.describe()} on {device}")
    start = time.perf_counter()
    draw()
    first_call_s = time.perf_counter() - start
    timing = context.time(draw, device=device)
    baseline = _time_opensimplex(context, case)
    notes = [f"threads: {torch.get_num_threads()} for PyTorch and numba", f"first call {first_call_s:.1f} s"]
    if target_s is not None:
        verdict = "meets" if timing.median_s < target_s else "misses"
        notes.append(f"{verdict} the {target_s * 1e3:g} ms target")
    return Row(name, machine_for(device), _draw_command(case, device.type, compile), _baseline_command(case), timing, baseline, note="; ".join(notes))


def _draw_command(case: DrawCase, device: str, compile: bool) -> str:
    return f"simplex_torch.fractal_noise({case.describe()}, device={device}, compile={compile})"


def _baseline_command(case: DrawCase) -> str:
    arguments = f"draw {case.batch} {case.size} {OCTAVES} WARMUP REPEATS"
    environment = " ".join(f"{key}={value}" for key, value in _opensimplex_environment().items())
    return f"{environment} python -m benchmarks._opensimplex_baseline {arguments} (opensimplex + numba, CPU)"


def _time_opensimplex(context: Context, case: DrawCase) -> Timing:
    """Time opensimplex in a child process, with the context's warm-up and repeats and PyTorch's thread count."""
    arguments = [case.batch, case.size, OCTAVES, max(context.warmup, 1), context.repeats]
    return Timing(tuple(_run_opensimplex("draw", arguments, _opensimplex_environment())))


def _opensimplex_environment() -> dict[str, str]:
    """Return the environment of the opensimplex child process: passive OpenMP threads, as many as PyTorch's."""
    return {"OMP_WAIT_POLICY": "PASSIVE", "NUMBA_NUM_THREADS": str(torch.get_num_threads())}


def _run_opensimplex(mode: str, arguments: list[object], environment: dict[str, str]) -> Any:
    """Run ``_opensimplex_baseline`` in a child process and return the JSON it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks._opensimplex_baseline", mode, *(str(argument) for argument in arguments)],
        capture_output=True,
        text=True,
        env={**os.environ, **environment},
        cwd=Path(__file__).resolve().parents[1],
    )
    if result.returncode != 0:
        raise RuntimeError(f"the opensimplex baseline failed with exit status {result.returncode}: {result.stderr.strip()}")
    return json.loads(result.stdout)


# configs/demo.yaml: the tiny preset at 32 px with batches of 16. The reference preset runs
# at 128 px, the size of configs/paper.yaml, but in smaller batches on the CPU.
DEMO_TINY = StepCase("tiny", "demo.yaml", "tiny", 32, 16)
QUICK_TINY = StepCase("tiny", "demo.yaml", "tiny", 32, 2)
CPU_REFERENCE = StepCase("reference", "paper.yaml", "reference", 128, 2)
GPU_REFERENCE = StepCase("reference", "paper.yaml", "reference", 128, 32)
SOURCE = "SimplexNoise()"
OPENSIMPLEX_SOURCE = "opensimplex noise (OMP_WAIT_POLICY=PASSIVE python -m benchmarks._opensimplex_baseline steps ...)"


def share_cpu(context: Context) -> list[Row]:
    """Time noise draws against a training step and a reverse step on the CPU."""
    device = torch.device("cpu")
    if context.quick:
        return _share_rows(context, QUICK_TINY, device)
    return _share_rows(context, DEMO_TINY, device) + _share_rows(context, CPU_REFERENCE, device, repeats=min(context.repeats, 2))


def share_gpu(context: Context) -> list[Row]:
    """Time noise draws against a training step and a reverse step on CUDA."""
    cases = [QUICK_TINY] if context.quick else [DEMO_TINY, GPU_REFERENCE]
    if not torch.cuda.is_available():
        return [
            context.skipped(
                f"share_gpu_{case.label}_{kind}",
                command=case.noise_command(SOURCE),
                baseline=case.step_command(kind, SOURCE),
                device="cuda",
                reason="CUDA is not available",
            )
            for case in cases
            for kind in ("train", "reverse")
        ]
    return [row for case in cases for row in _share_rows(context, case, torch.device("cuda"))]


def _share_rows(context: Context, case: StepCase, device: torch.device, *, repeats: int | None = None) -> list[Row]:
    """Return the train-step and reverse-step rows of ``case`` on ``device``."""
    steps = Steps(case, device, _simplex_noise(case))
    prefix = f"share_{device.type}_{case.label}"
    context.log(f"{prefix}: {case.preset} preset, batch {case.batch} at {case.size} px on {device}")
    noise_timing = context.time(steps.draw, device=device, repeats=repeats)
    train_timing = steps.time_train(context, repeats=repeats)
    reverse_timing = context.time(steps.reverse, device=device, repeats=repeats)
    machine = machine_for(device)
    command = case.noise_command(SOURCE)
    rows = []
    for kind, step_timing in (("train", train_timing), ("reverse", reverse_timing)):
        share = noise_timing.median_s / step_timing.median_s
        note = f"{case.preset} preset, batch {case.batch}, {case.size} px; noise is {share:.1%} of the step (aim: at most 10 %)"
        rows.append(Row(f"{prefix}_{kind}", machine, command, case.step_command(kind, SOURCE), noise_timing, step_timing, note=note))
    return rows


def steps_cpu(context: Context) -> list[Row]:
    """Time whole steps with ``SimplexNoise`` against the same steps with opensimplex noise.

    The opensimplex steps run in a child process with passive OpenMP threads, because busy-waiting
    numba threads slow the PyTorch work between draws by a factor that depends on the
    machine's load (see ``_opensimplex_baseline``).
    """
    case = QUICK_TINY if context.quick else DEMO_TINY
    device = torch.device("cpu")
    context.log(f"steps_cpu: {case.preset} preset, batch {case.batch} at {case.size} px, with each noise source")
    steps = Steps(case, device, _simplex_noise(case))
    train_timing, reverse_timing = steps.time_train(context), context.time(steps.reverse)
    arguments = [case.spec, case.preset, case.size, case.batch, torch.get_num_threads(), context.warmup, context.repeats]
    old = _run_opensimplex("steps", arguments, _opensimplex_environment())
    machine = machine_for(device)
    note = f"{case.preset} preset, batch {case.batch}, {case.size} px"
    rows = []
    for kind, timing in (("train", train_timing), ("reverse", reverse_timing)):
        command, baseline = case.step_command(kind, SOURCE), case.step_command(kind, OPENSIMPLEX_SOURCE)
        rows.append(Row(f"steps_cpu_{kind}", machine, command, baseline, timing, Timing(tuple(old[kind])), note=note))
    return rows


def _simplex_noise(case: StepCase) -> SimplexNoise:
    simplex = case.load_spec().model.simplex
    return SimplexNoise(octaves=simplex.octaves, persistence=simplex.persistence, frequency=simplex.frequency)


BENCHMARKS = {
    "simplex_cpu": simplex_cpu,
    "simplex_gpu": simplex_gpu,
    "share_cpu": share_cpu,
    "share_gpu": share_gpu,
    "steps_cpu": steps_cpu,
}
