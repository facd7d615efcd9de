"""Summary tables in the layout of Mykula et al.: Table 1 and the appendix tables, as CSV, Markdown and LaTeX.

Table 1 lists, per method and noise type, the noise level t with the best
validation AUPRC, and reports its test numbers: healthy SSIM and LPIPS, and the
AUPRC and AUROC of detecting pathological images. The noise level is never chosen
on the test split. Without a validation split every t is listed instead.
The appendix tables list every cell: MAE, SSIM and LPIPS for healthy and
pathological images, and AUPRC and AUROC for every anomaly map.

AUPRC and AUROC are printed ×100 with one decimal. A summary with a bootstrap
interval prints it in brackets, ``85.2 [78.1, 91.0]``. A summary pooled over
several seeds prints the mean ± sample standard deviation over seeds, with the
number of seeds and every seed's own value and interval in extra columns. Cells
listed in ``expected`` but not yet evaluated get a row of "—".
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipelines.evaluation.grid import METHOD_LABELS, NOISE_LABELS, GridCell
from pipelines.reporting.results import IntervalLike

Table = list[dict[str, str]]

MISSING = "—"


@dataclass(frozen=True)
class SeedRun:
    """One trial's metrics for a cell on a split: one of the seeds that a pooled ``CellSummary`` averages."""

    seed: int
    trial_id: str
    metrics: dict[str, float]
    intervals: Mapping[str, IntervalLike] = field(default_factory=dict)


@dataclass(frozen=True)
class CellSummary:
    """The summary metrics of one grid cell on one split.

    ``intervals`` maps "auprc" and "auroc" to bootstrap intervals, when they were computed.
    ``seeds`` lists the trials a pooled summary averages; ``metrics`` then contains their means.
    """

    cell: GridCell
    split: str
    metrics: dict[str, float]
    intervals: Mapping[str, IntervalLike] = field(default_factory=dict)
    seeds: tuple[SeedRun, ...] = ()


def mean_std(metrics: dict[str, float], name: str) -> str:
    """Format ``name_mean ± name_std`` with three decimals, or "—" when missing."""
    mean, std = metrics.get(f"{name}_mean"), metrics.get(f"{name}_std")
    if mean is None or std is None:
        return MISSING
    return f"{mean:.3f} ± {std:.3f}"


def percent(value: float | None) -> str:
    """Format a fraction as a percentage with one decimal, as Mykula et al. print AUPRC and AUROC."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{100 * value:.1f}"


def interval_text(interval: IntervalLike) -> str:
    """Format an interval of a fraction as ``85.2 [78.1, 91.0]``, ×100 like ``percent``."""
    return f"{percent(interval.estimate)} [{percent(interval.low)}, {percent(interval.high)}]"


def detection_text(summary: CellSummary, metric: str) -> str:
    """Format a detection metric: mean ± std over seeds, else the value with its interval, else the value."""
    values = [run.metrics[metric] for run in summary.seeds if not math.isnan(run.metrics.get(metric, math.nan))]
    if len(values) >= 2:
        return f"{percent(statistics.fmean(values))} ± {percent(statistics.stdev(values))}"
    interval = summary.intervals.get(metric)
    if interval is None and len(summary.seeds) == 1:
        interval = summary.seeds[0].intervals.get(metric)
    if interval is not None:
        return interval_text(interval)
    return percent(summary.metrics.get(metric))


def per_seed_text(summary: CellSummary, metric: str) -> str:
    """Format every seed's value of a detection metric with its interval, as ``0: 85.2 [78.1, 91.0]; 1: …``."""
    parts = []
    for run in summary.seeds:
        interval = run.intervals.get(metric)
        parts.append(f"{run.seed}: {interval_text(interval) if interval is not None else percent(run.metrics.get(metric))}")
    return "; ".join(parts) or MISSING


@dataclass(frozen=True)
class TChoice:
    """The cells Table 1 reports for one method and noise type, and how they were chosen."""

    method: str
    noise: str
    cells: tuple[GridCell, ...]
    basis: str


def choose_t(
    summaries: list[CellSummary], *, select_on: str = "val", report_on: str = "test", expected: Sequence[GridCell] = ()
) -> list[TChoice]:
    """Choose, per method and noise type, the t with the best ``select_on`` AUPRC among the evaluated cells.

    Ties go to the smaller t. Without any ``select_on`` results, or when ``select_on`` is
    ``report_on``, every evaluated t is kept. A method and noise type in ``expected`` with no
    evaluated cell gets a choice with no cells.
    """
    reported = {s.cell for s in summaries if s.split == report_on}
    selection = {s.cell: s.metrics for s in summaries if s.split == select_on}
    selects = select_on != report_on and bool(selection)
    by_family: dict[tuple[str, str], list[GridCell]] = defaultdict(list)
    for cell in sorted(reported | set(expected)):
        by_family[(cell.method, cell.noise)].append(cell)

    choices: list[TChoice] = []
    for (method, noise), cells in by_family.items():
        done = [cell for cell in cells if cell in reported]
        candidates = [cell for cell in done if cell in selection]
        if not done:
            choices.append(TChoice(method, noise, (), "no t evaluated yet"))
        elif selects and candidates:
            best = max(candidates, key=lambda cell: (_auprc_or_lowest(selection[cell]), -cell.t))
            basis = f"best {select_on} AUPRC"
            if len(candidates) < len(cells):
                basis += f" of {len(candidates)}/{len(cells)} t evaluated"
            choices.append(TChoice(method, noise, (best,), basis))
        elif selects:
            choices.append(TChoice(method, noise, tuple(done), f"all t (no {select_on} results yet)"))
        else:
            choices.append(TChoice(method, noise, tuple(done), f"all t (no separate {select_on} split)"))
    return choices


def table1(
    summaries: list[CellSummary],
    *,
    stride: int = 1,
    select_on: str = "val",
    report_on: str = "test",
    expected: Sequence[GridCell] = (),
) -> Table:
    """Build Table 1: per method and noise type, the t with the best ``select_on`` AUPRC (see ``choose_t``).

    A method and noise type in ``expected`` with no evaluated cell gets one row of "—".
    """
    reported = {s.cell: s for s in summaries if s.split == report_on}
    extra = _seed_columns(list(reported.values()))
    rows: Table = []
    for choice in choose_t(summaries, select_on=select_on, report_on=report_on, expected=expected):
        if not choice.cells:
            label = f"{METHOD_LABELS[choice.method]}-{NOISE_LABELS[choice.noise]}"
            rows.append(_table1_row(label, None, choice.basis, extra))
        rows += [_table1_row(cell.label(stride), reported[cell], choice.basis, extra) for cell in choice.cells]
    return rows


def _table1_row(label: str, summary: CellSummary | None, basis: str, extra: tuple[bool, bool]) -> dict[str, str]:
    """Build one row of Table 1; without a summary every value is "—"."""
    row = {"Method": label}
    if summary is None:
        row |= dict.fromkeys(("Healthy SSIM ↑", "Healthy LPIPS ↓", "Pathological AUPRC ↑", "Pathological AUROC ↑"), MISSING)
    else:
        row |= {
            "Healthy SSIM ↑": mean_std(summary.metrics, "ssim_healthy"),
            "Healthy LPIPS ↓": mean_std(summary.metrics, "lpips_healthy"),
            "Pathological AUPRC ↑": detection_text(summary, "auprc"),
            "Pathological AUROC ↑": detection_text(summary, "auroc"),
        }
    return row | _seed_values(summary, extra) | {"t chosen by": basis}


def reconstruction_table(
    summaries: list[CellSummary], *, split: str = "test", stride: int = 1, expected: Sequence[GridCell] = ()
) -> Table:
    """Build the appendix table of MAE and SSIM for pathological and healthy images."""
    columns = {
        "MAE pathological": "mae_pathological",
        "MAE healthy ↓": "mae_healthy",
        "SSIM pathological": "ssim_pathological",
        "SSIM healthy ↑": "ssim_healthy",
    }
    return _mean_std_table(summaries, split, stride, expected, columns)


def lpips_table(
    summaries: list[CellSummary], *, split: str = "test", stride: int = 1, expected: Sequence[GridCell] = ()
) -> Table:
    """Build the appendix table of LPIPS for pathological and healthy images."""
    columns = {"LPIPS pathological": "lpips_pathological", "LPIPS healthy ↓": "lpips_healthy"}
    return _mean_std_table(summaries, split, stride, expected, columns)


def _mean_std_table(
    summaries: list[CellSummary], split: str, stride: int, expected: Sequence[GridCell], columns: dict[str, str]
) -> Table:
    """Build a table of one row per cell and one ``mean ± std`` column per metric, keyed header to metric name."""
    rows: Table = []
    for cell, summary in _rows(summaries, split, expected):
        row = {"Cell": cell.label(stride)}
        if summary is not None:
            row |= {header: mean_std(summary.metrics, name) for header, name in columns.items()}
        rows.append(row)
    return _fill_missing(rows)


def detection_table(
    summaries: list[CellSummary], *, split: str = "test", stride: int = 1, expected: Sequence[GridCell] = ()
) -> Table:
    """Build the appendix table of AUPRC and AUROC for the scoring map and every other map."""
    pairs = _rows(summaries, split, expected)
    extra = _seed_columns([summary for _, summary in pairs if summary is not None])
    rows: Table = []
    for cell, summary in pairs:
        row = {"Cell": cell.label(stride)}
        if summary is not None:
            row |= {"AUPRC ↑": detection_text(summary, "auprc"), "AUROC ↑": detection_text(summary, "auroc")}
            row |= _seed_values(summary, extra)
            for key in sorted(summary.metrics):
                if key.startswith("auprc_"):
                    name = key.removeprefix("auprc_")
                    row[f"AUPRC {name}"] = percent(summary.metrics[key])
                    row[f"AUROC {name}"] = percent(summary.metrics.get(f"auroc_{name}"))
        rows.append(row)
    return _fill_missing(rows)


def all_tables(
    summaries: list[CellSummary], *, stride: int = 1, report_on: str = "test", expected: Sequence[GridCell] = ()
) -> dict[str, Table]:
    """Build Table 1 and the appendix tables of the ``report_on`` split, keyed by a file-friendly name."""
    return {
        "table1": table1(summaries, stride=stride, report_on=report_on, expected=expected),
        "appendix_reconstruction": reconstruction_table(summaries, split=report_on, stride=stride, expected=expected),
        "appendix_lpips": lpips_table(summaries, split=report_on, stride=stride, expected=expected),
        "appendix_detection": detection_table(summaries, split=report_on, stride=stride, expected=expected),
    }


def to_markdown(table: Table) -> str:
    """Render a table as GitHub-flavoured Markdown."""
    if not table:
        return "(no rows)\n"
    columns = _columns(table)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row.get(column, "") for column in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Render a table as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(table), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_latex(table: Table, *, caption: str = "", label: str = "") -> str:
    """Render a table as a LaTeX ``tabular`` with booktabs rules, every cell escaped.

    With a caption or label the tabular is wrapped in a ``table`` float. The output needs
    ``\\usepackage{booktabs}``.

    Example:
        >>> print(to_latex([{"Cell": "a_b", "AUPRC ↑": "85.2 ± 1.0"}]), end="")
        \\begin{tabular}{ll}
        \\toprule
        Cell & AUPRC $\\uparrow$ \\\\
        \\midrule
        a\\_b & 85.2 $\\pm$ 1.0 \\\\
        \\bottomrule
        \\end{tabular}
    """
    columns = _columns(table)
    lines = [f"\\begin{{tabular}}{{{'l' * max(len(columns), 1)}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(column) for column in columns) + " \\\\")
    lines.append("\\midrule")
    lines += [" & ".join(latex_escape(row.get(column, "")) for column in columns) + " \\\\" for row in table]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption or label:
        lines = ["\\begin{table}", "\\centering", *lines]
        lines += [f"\\caption{{{latex_escape(caption)}}}"] if caption else []
        lines += [f"\\label{{{label}}}"] if label else []
        lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


# LaTeX's special characters, and the symbols these tables print, in text-mode LaTeX.
_LATEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "≙": r"$\hat{=}$",
    "σ": r"$\sigma$",
    "—": "---",
    "–": "--",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and write the tables' symbols (±, ↑, —, …) as LaTeX."""
    return "".join(_LATEX_REPLACEMENTS.get(character, character) for character in text)


def _columns(table: Table) -> list[str]:
    columns: list[str] = []
    for row in table:
        columns += [column for column in row if column not in columns]
    return columns


def _rows(summaries: list[CellSummary], split: str, expected: Sequence[GridCell]) -> list[tuple[GridCell, CellSummary | None]]:
    """Pair every evaluated or expected cell, in grid order, with its summary on ``split`` or None."""
    by_cell = {s.cell: s for s in summaries if s.split == split}
    return [(cell, by_cell.get(cell)) for cell in sorted(set(by_cell) | set(expected))]


def _fill_missing(table: Table) -> Table:
    """Give every row every column, with "—" where a row has no value.

    Columns are ordered as in the fullest rows, so a missing cell's short row cannot reorder them.
    """
    columns = _columns(sorted(table, key=len, reverse=True))
    return [{column: row.get(column, MISSING) for column in columns} for row in table]


def _seed_columns(summaries: list[CellSummary]) -> tuple[bool, bool]:
    """Return whether a table needs a seed count column and per-seed columns."""
    return any(s.seeds for s in summaries), any(len(s.seeds) >= 2 for s in summaries)


def _seed_values(summary: CellSummary | None, columns: tuple[bool, bool]) -> dict[str, str]:
    """Fill the seed columns that ``_seed_columns`` asked for; without a summary every value is "—"."""
    count, per_seed = columns
    values: dict[str, str] = {}
    if count:
        values["Seeds"] = str(len(summary.seeds)) if summary is not None else MISSING
    if per_seed:
        for metric in ("auprc", "auroc"):
            values[f"{metric.upper()} per seed"] = per_seed_text(summary, metric) if summary is not None else MISSING
    return values


def _auprc_or_lowest(metrics: dict[str, float]) -> float:
    """Return the AUPRC to choose t by; a missing or NaN value ranks below every number."""
    value = metrics.get("auprc", math.nan)
    return -math.inf if math.isnan(value) else value
