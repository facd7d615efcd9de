"""Benchmarks of DDPM training: ``train_ddpm`` and its speed options against a plain fp32 loop.

Every row times calls of a training loop on the same UNet, images and batch size, and
reports seconds per step (a call's time over its steps). The rows of each device:

- ``step_*``: ``train_ddpm`` with the spec's settings and the device's default speed options
  (fp32 and contiguous on the CPU, bf16 autocast and channels-last on CUDA) against
  ``plain_fp32_loop`` (see ``_training_loops``), which has none of the product's extras;
- ``channels_last_*``: ``train_ddpm`` with ``channels_last=True`` against ``False``;
- ``bf16_*``: ``precision="bf16"`` against ``"fp32"``;
- ``compile_*``: ``compile=True`` against the defaults; skipped with ``--quick`` on the CPU,
  where compiling takes minutes.

The note gives images per second and peak memory of the command and of the baseline, in that
order. On CUDA, peak memory is ``torch.cuda.max_memory_allocated`` over one call, with the
model and images counted, and the note adds the model FLOP utilisation (MFU, see
``_flops``). On the CPU it is the RSS growth over one call in a child process (see
``_training_loops``). The CPU case is the tiny preset at the size of ``configs/demo.yaml``,
and the CUDA case the reference preset at 128 px in batches of 32, as in
``configs/paper.yaml``. Both use Gaussian noise, so that noise costs little in any row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks import Context, Row, Timing, machine_for
from benchmarks._flops import Peak, device_peak, forward_flops, training_tflops
from benchmarks._training_loops import PLAIN, PRODUCT, TrainCase, Trainer, Variant, peak_rss_growth
from trainables.builders import build_model

CPU_CASE = TrainCase(spec="demo.yaml", preset="tiny", size=32, batch=16, steps=5)
QUICK_CASE = TrainCase(spec="demo.yaml", preset="tiny", size=32, batch=2, steps=2)
GPU_CASE = TrainCase(spec="paper.yaml", preset="reference", size=128, batch=32, steps=10)
QUICK_COMPILE_REASON = "--quick skips torch.compile, whose first call takes minutes on a CPU; run without --quick"


@dataclass(frozen=True)
class Comparison:
    """A row: ``command`` timed against ``baseline``."""

    name: str
    command: Variant
    baseline: Variant


COMPARISONS = (
    Comparison("step", PRODUCT, PLAIN),
    Comparison("channels_last", Variant(channels_last=True), Variant(channels_last=False)),
    Comparison("bf16", Variant(precision="bf16"), Variant(precision="fp32")),
    Comparison("compile", Variant(compile=True), PRODUCT),
)


@dataclass(frozen=True)
class Measurement:
    """Seconds per step and peak memory in bytes (None where it cannot be measured) of one variant."""

    timing: Timing
    peak_bytes: int | None


def cpu(context: Context) -> list[Row]:
    """Compare the training variants on the CPU."""
    case = QUICK_CASE if context.quick else CPU_CASE
    skip = {"compile": QUICK_COMPILE_REASON} if context.quick else {}
    return _rows(context, case, torch.device("cpu"), skip=skip)


def gpu(context: Context) -> list[Row]:
    """Compare the training variants on CUDA."""
    case = QUICK_CASE if context.quick else GPU_CASE
    if not torch.cuda.is_available():
        return [_skipped(context, comparison, case, "cuda", "CUDA is not available") for comparison in COMPARISONS]
    return _rows(context, case, torch.device("cuda"), skip={})


def _rows(context: Context, case: TrainCase, device: torch.device, *, skip: dict[str, str]) -> list[Row]:
    """Measure every variant that the comparisons need once, then build one row per comparison."""
    comparisons = [comparison for comparison in COMPARISONS if comparison.name not in skip]
    measurements: dict[tuple, Measurement] = {}
    for comparison in comparisons:
        for variant in (comparison.command, comparison.baseline):
            key = _key(variant, device)
            if key not in measurements:
                context.log(f"training.{device.type}: {variant.describe(device)}; {case.describe()}")
                measurements[key] = _measure(context, case, variant, device)

    peak = device_peak(device) if device.type == "cuda" else None
    flops = forward_flops(build_model(case.load_spec(), "gaussian").to(device).eval(), case.size, device) if peak else None
    machine = machine_for(device)
    rows = []
    for comparison in COMPARISONS:
        if comparison.name in skip:
            rows.append(_skipped(context, comparison, case, device.type, skip[comparison.name]))
            continue
        command = measurements[_key(comparison.command, device)]
        baseline = measurements[_key(comparison.baseline, device)]
        note = _note(case, device, command, baseline, peak, flops)
        rows.append(
            Row(
                _name(comparison, case, device.type),
                machine,
                _describe(comparison.command, case, device),
                _describe(comparison.baseline, case, device),
                command.timing,
                baseline.timing,
                note=note,
            )
        )
    return rows


def _key(variant: Variant, device: torch.device) -> tuple:
    """Return what a variant runs on ``device``, so that variants that resolve alike are measured once."""
    return ("plain",) if variant.plain else ("train_ddpm", variant.resolve(device))


def _measure(context: Context, case: TrainCase, variant: Variant, device: torch.device) -> Measurement:
    """Time calls of ``variant`` in seconds per step, then measure its peak memory."""
    trainer = Trainer(case, variant, device)
    runs = context.time(trainer.run, device=device)
    timing = Timing(tuple(seconds / case.steps for seconds in runs.seconds))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.run()
        torch.cuda.synchronize(device)
        peak_bytes: int | None = torch.cuda.max_memory_allocated(device)
        del trainer
        torch.cuda.empty_cache()
    else:
        del trainer
        peak_bytes = peak_rss_growth(case, variant)
    return Measurement(timing, peak_bytes)


def _note(case: TrainCase, device: torch.device, command: Measurement, baseline: Measurement, peak: Peak | None, flops: float | None) -> str:
    """Describe the case, then images/s, peak memory and (on CUDA with a known peak) MFU of command and baseline."""
    rates = [case.batch / measurement.timing.median_s for measurement in (command, baseline)]
    parts = [case.describe(), f"images/s {rates[0]:.3g} vs {rates[1]:.3g}"]
    memory_kind = "memory allocated (torch.cuda.max_memory_allocated)" if device.type == "cuda" else "RSS growth (child process)"
    parts.append(f"peak {memory_kind} {_mebibytes(command.peak_bytes)} vs {_mebibytes(baseline.peak_bytes)}")
    if peak is not None and flops is not None:
        shares = [training_tflops(flops, rate) / peak.tflops for rate in rates]
        parts.append(f"MFU {shares[0]:.1%} vs {shares[1]:.1%} of {peak.tflops:g} TFLOP/s ({peak.source})")
    elif device.type == "cuda":
        parts.append("MFU not computed: peak unknown for this device; set $SWEEPER_PEAK_TFLOPS")
    return "; ".join(parts)


def _mebibytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def _name(comparison: Comparison, case: TrainCase, device_type: str) -> str:
    label = "gpu" if device_type == "cuda" else device_type
    return f"{comparison.name}_{label}_{case.preset}"


def _describe(variant: Variant, case: TrainCase, device: torch.device) -> str:
    return f"{variant.describe(device)}, {case.steps} steps / {case.steps}"


def _skipped(context: Context, comparison: Comparison, case: TrainCase, device: str, reason: str) -> Row:
    # The variants are named by their settings: without the device they cannot be resolved.
    command, baseline = _settings(comparison.command, case), _settings(comparison.baseline, case)
    return context.skipped(_name(comparison, case, device), command=command, baseline=baseline, device=device, reason=reason)


def _settings(variant: Variant, case: TrainCase) -> str:
    if variant.plain:
        return f"plain_fp32_loop, {case.steps} steps / {case.steps}"
    return f"train_ddpm(precision={variant.precision}, channels_last={variant.channels_last}, compile={variant.compile}), {case.steps} steps / {case.steps}"


BENCHMARKS = {"cpu": cpu, "gpu": gpu}
