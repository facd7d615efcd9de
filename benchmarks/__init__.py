"""Benchmark types: the context every benchmark receives and the rows it returns.

A benchmark module ``benchmarks/<topic>.py`` exposes
``BENCHMARKS: dict[str, Callable[[Context], list[Row]]]``; ``python -m benchmarks`` finds
it by that attribute. Each row times one command against a baseline timed in the same run,
and ``Row.ratio`` is the row's median divided by the baseline's median.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

__all__ = ["Context", "Machine", "Row", "Timing", "machine_for"]

Status = Literal["ok", "skipped"]


@dataclass(frozen=True)
class Machine:
    """The hardware and software a row was measured on."""

    cpu: str
    cores: int
    torch: str
    device: str
    # PyTorch's intra-op threads on the CPU when the row was measured.
    threads: int = 0


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of one command, after warm-up runs."""

    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        """Median seconds per run."""
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class Row:
    """One result: a command's median time, its baseline's median time and their ratio.

    ``ratio`` is ``median_s / baseline_median_s``: below 1 the command is faster than its
    baseline, or, where the baseline is a whole step that contains the command, the
    command's share of that step. A skipped row has no times, and ``note`` gives the reason.
    """

    name: str
    machine: Machine
    command: str
    baseline: str
    timing: Timing | None
    baseline_timing: Timing | None
    status: Status = "ok"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """The row's median over its baseline's median, or None for a skipped row."""
        if self.timing is None or self.baseline_timing is None:
            return None
        return self.timing.median_s / self.baseline_timing.median_s

    def to_json(self) -> dict[str, Any]:
        """Return the row as the JSON object that ``python -m benchmarks`` writes."""
        return {
            "name": self.name,
            "status": self.status,
            "machine": asdict(self.machine),
            "command": self.command,
            "baseline": self.baseline,
            "runs": len(self.timing.seconds) if self.timing else 0,
            "median_s": self.timing.median_s if self.timing else None,
            "baseline_median_s": self.baseline_timing.median_s if self.baseline_timing else None,
            "ratio": self.ratio,
            "seconds": list(self.timing.seconds) if self.timing else [],
            "baseline_seconds": list(self.baseline_timing.seconds) if self.baseline_timing else [],
            "note": self.note,
        }


def _cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or what ``platform`` reports elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_for(device: torch.device | str) -> Machine:
    """Describe this machine with ``device`` named as the device the row ran on."""
    device = torch.device(device)
    name = str(device)
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    return Machine(cpu=_cpu_model(), cores=os.cpu_count() or 0, torch=torch.__version__, device=name, threads=torch.get_num_threads())


@dataclass
class Context:
    """Settings of one benchmark run, shared by every benchmark in it.

    ``quick`` selects small sizes, for tests, so its times are not comparable with full
    runs. ``repeats`` timed runs follow ``warmup`` untimed ones.
    """

    quick: bool = False
    repeats: int = 7
    warmup: int = 1
    log: Callable[[str], None] = field(default=print)

    def time(self, function: Callable[[], object], *, device: torch.device | str = "cpu", repeats: int | None = None) -> Timing:
        """Run ``function`` ``warmup`` times, then time ``repeats`` runs, waiting for ``device`` after each."""
        device = torch.device(device)
        runs = self.repeats if repeats is None else repeats
        if runs < 1:
            raise ValueError(f"repeats must be at least 1, but got {runs}")
        for _ in range(self.warmup):
            function()
        _synchronise(device)
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            function()
            _synchronise(device)
            seconds.append(time.perf_counter() - start)
        return Timing(tuple(seconds))

    def skipped(self, name: str, *, command: str, baseline: str, device: str, reason: str) -> Row:
        """Return a row that records why ``name`` was not measured on this machine."""
        machine = Machine(
            cpu=_cpu_model(), cores=os.cpu_count() or 0, torch=torch.__version__, device=device, threads=torch.get_num_threads()
        )
        return Row(name, machine, command, baseline, None, None, status="skipped", note=reason)


def _synchronise(device: torch.device) -> None:
    """Wait for queued work on ``device``, so that a timing covers the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
