"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--quick] [--repeats N] [--threads N] [--out PATH]``.

Every module of this package with a ``BENCHMARKS`` dictionary is a topic. NAME selects a
topic (``noise``) or one benchmark of it (``noise.simplex_cpu``); no NAME runs them all.
The results print as a table and are written as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import pkgutil
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import benchmarks
from benchmarks import Context, Row

DEFAULT_OUT = Path(benchmarks.__file__).resolve().parent / "results" / "latest.json"

DEFAULT_REPEATS = 7
QUICK_REPEATS = 2

Benchmark = Callable[[Context], list[Row]]


def discover() -> dict[str, Benchmark]:
    """Return every benchmark of the package by its full name, ``topic.name``."""
    found: dict[str, Benchmark] = {}
    for module_info in pkgutil.iter_modules(benchmarks.__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{module_info.name}")
        for name, function in getattr(module, "BENCHMARKS", {}).items():
            found[f"{module_info.name}.{name}"] = function
    return found


def select(available: dict[str, Benchmark], names: Sequence[str]) -> dict[str, Benchmark]:
    """Return the benchmarks that ``names`` selects, each name a topic or a full name."""
    if not names:
        return dict(available)
    selected: dict[str, Benchmark] = {}
    for name in names:
        matches = {full: function for full, function in available.items() if full == name or full.split(".")[0] == name}
        if not matches:
            topics = sorted({full.split(".")[0] for full in available})
            raise SystemExit(f"benchmark {name!r} not found; choose a topic ({', '.join(topics)}) or a name from --list")
        selected.update(matches)
    return selected


def format_seconds(seconds: float | None) -> str:
    """Format a duration in the unit that keeps three significant digits readable."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_table(rows: Sequence[Row]) -> str:
    """Return the rows as a Markdown table, followed by the commands behind each row."""
    header = ["benchmark", "device", "runs", "median", "baseline median", "ratio", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        data = row.to_json()
        ratio = "-" if row.ratio is None else f"{row.ratio:.3g}"
        cells = [
            row.name,
            row.machine.device,
            str(data["runs"]),
            format_seconds(data["median_s"]),
            format_seconds(data["baseline_median_s"]),
            ratio,
            row.note if row.status == "ok" else f"skipped: {row.note}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for row in rows:
        lines.append(f"{row.name}: {row.command}")
        lines.append(f"{' ' * len(row.name)}  baseline: {row.baseline}")
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="topic or topic.name to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few runs, to check that benchmarks run")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per command (default 7, or 2 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's own choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to write (default {DEFAULT_OUT})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the selected benchmarks, print their table and write their JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    available = discover()
    if arguments.list:
        print("\n".join(sorted(available)))
        return
    repeats = arguments.repeats
    if repeats is None:
        repeats = QUICK_REPEATS if arguments.quick else DEFAULT_REPEATS
    if repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, but got {repeats}")
    if arguments.threads is not None:
        if arguments.threads < 1:
            raise SystemExit(f"--threads must be at least 1, but got {arguments.threads}")
        torch.set_num_threads(arguments.threads)
    context = Context(quick=arguments.quick, repeats=repeats, log=lambda message: print(message, file=sys.stderr))

    rows: list[tuple[str, Row]] = []
    for name, function in select(available, arguments.names).items():
        context.log(f"running {name}")
        topic = name.split(".")[0]
        rows.extend((topic, row) for row in function(context))

    print(format_table([row for _, row in rows]))
    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "quick": arguments.quick,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "rows": [{"topic": topic, **row.to_json()} for topic, row in rows],
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {arguments.out}")


if __name__ == "__main__":
    main()
