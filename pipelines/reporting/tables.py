"""Summary tables in the layout of Mykula et al.: Table 1 and the appendix tables, as CSV and Markdown.

Table 1 lists, per method and noise type, the noise level t with the best
validation AUPRC, and reports its test numbers: healthy SSIM and LPIPS, and the
AUPRC and AUROC of detecting pathological images. The noise level is never chosen
on the test split. Without a validation split every t is listed instead.
The appendix tables list every cell: MAE, SSIM and LPIPS for healthy and
pathological images, and AUPRC and AUROC for every anomaly map.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass

from pipelines.evaluation.grid import GridCell

Table = list[dict[str, str]]


@dataclass(frozen=True)
class CellSummary:
    """The summary metrics of one grid cell on one split."""

    cell: GridCell
    split: str
    metrics: dict[str, float]


def mean_std(metrics: dict[str, float], name: str) -> str:
    """Format ``name_mean ± name_std`` with three decimals, or '–' when missing."""
    mean, std = metrics.get(f"{name}_mean"), metrics.get(f"{name}_std")
    if mean is None or std is None:
        return "–"
    return f"{mean:.3f} ± {std:.3f}"


def percent(value: float | None) -> str:
    """Format a fraction as a percentage with one decimal, as Mykula et al. print AUPRC and AUROC."""
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:.1f}"


def table1(summaries: list[CellSummary], *, stride: int = 1, select_on: str = "val", report_on: str = "test") -> Table:
    """Build Table 1: per method and noise type, the t with the best ``select_on`` AUPRC."""
    reported = {s.cell: s.metrics for s in summaries if s.split == report_on}
    selection = {s.cell: s.metrics for s in summaries if s.split == select_on}
    by_family: dict[tuple[str, str], list[GridCell]] = defaultdict(list)
    for cell in sorted(reported):
        by_family[(cell.method, cell.noise)].append(cell)

    rows: Table = []
    for cells in by_family.values():
        if select_on != report_on and all(cell in selection for cell in cells):
            chosen = [max(cells, key=lambda cell: (selection[cell]["auprc"], -cell.t))]
            basis = f"best {select_on} AUPRC"
        else:
            chosen, basis = cells, f"all t (no separate {select_on} split)"
        for cell in chosen:
            metrics = reported[cell]
            rows.append(
                {
                    "Method": cell.label(stride),
                    "Healthy SSIM ↑": mean_std(metrics, "ssim_healthy"),
                    "Healthy LPIPS ↓": mean_std(metrics, "lpips_healthy"),
                    "Pathological AUPRC ↑": percent(metrics.get("auprc")),
                    "Pathological AUROC ↑": percent(metrics.get("auroc")),
                    "t chosen by": basis,
                }
            )
    return rows


def reconstruction_table(summaries: list[CellSummary], *, split: str = "test", stride: int = 1) -> Table:
    """Build the appendix table of MAE and SSIM for pathological and healthy images."""
    return [
        {
            "Cell": s.cell.label(stride),
            "MAE pathological": mean_std(s.metrics, "mae_pathological"),
            "MAE healthy ↓": mean_std(s.metrics, "mae_healthy"),
            "SSIM pathological": mean_std(s.metrics, "ssim_pathological"),
            "SSIM healthy ↑": mean_std(s.metrics, "ssim_healthy"),
        }
        for s in _sorted(summaries, split)
    ]


def lpips_table(summaries: list[CellSummary], *, split: str = "test", stride: int = 1) -> Table:
    """Build the appendix table of LPIPS for pathological and healthy images."""
    return [
        {
            "Cell": s.cell.label(stride),
            "LPIPS pathological": mean_std(s.metrics, "lpips_pathological"),
            "LPIPS healthy ↓": mean_std(s.metrics, "lpips_healthy"),
        }
        for s in _sorted(summaries, split)
    ]


def detection_table(summaries: list[CellSummary], *, split: str = "test", stride: int = 1) -> Table:
    """Build the appendix table of AUPRC and AUROC for the scoring map and every other map."""
    rows: Table = []
    for s in _sorted(summaries, split):
        row = {"Cell": s.cell.label(stride), "AUPRC ↑": percent(s.metrics.get("auprc")), "AUROC ↑": percent(s.metrics.get("auroc"))}
        for key in sorted(s.metrics):
            if key.startswith("auprc_"):
                name = key.removeprefix("auprc_")
                row[f"AUPRC {name}"] = percent(s.metrics[key])
                row[f"AUROC {name}"] = percent(s.metrics.get(f"auroc_{name}"))
        rows.append(row)
    return rows


def all_tables(summaries: list[CellSummary], *, stride: int = 1) -> dict[str, Table]:
    """Build Table 1 and the appendix tables, keyed by a file-friendly name."""
    return {
        "table1": table1(summaries, stride=stride),
        "appendix_reconstruction": reconstruction_table(summaries, stride=stride),
        "appendix_lpips": lpips_table(summaries, stride=stride),
        "appendix_detection": detection_table(summaries, stride=stride),
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


def _columns(table: Table) -> list[str]:
    columns: list[str] = []
    for row in table:
        columns += [column for column in row if column not in columns]
    return columns


def _sorted(summaries: list[CellSummary], split: str) -> list[CellSummary]:
    return sorted((s for s in summaries if s.split == split), key=lambda s: s.cell)
