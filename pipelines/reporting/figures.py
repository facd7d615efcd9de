"""Figures: example reconstructions and anomaly maps per cell, panels of them, and AUPRC/AUROC against t."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines.evaluation.grid import CellOutputs  # noqa: E402
from pipelines.reporting.tables import CellSummary  # noqa: E402

_PANEL_TITLES = {
    "input": "input",
    "coarse": "coarse reconstruction",
    "mask": "mask",
    "stitched": "stitched",
    "reconstruction": "reconstruction",
    "map": "anomaly map",
}


def example_indices(labels: np.ndarray, per_label: int) -> list[int]:
    """Pick the first ``per_label`` healthy and the first ``per_label`` pathological images."""
    healthy = np.flatnonzero(labels == 0)[:per_label]
    pathological = np.flatnonzero(labels == 1)[:per_label]
    return [int(i) for i in np.concatenate([healthy, pathological])]


def cell_examples_figure(outputs: CellOutputs, *, per_label: int = 3, title: str = "") -> Figure:
    """Show input, reconstruction and anomaly map (AutoDDPM adds its intermediates) per example image."""
    indices = example_indices(outputs.labels, per_label)
    panels = ["input", *[name for name in ("coarse", "mask", "stitched") if name in outputs.intermediates]]
    panels += ["reconstruction", "map"]
    score_map = outputs.maps[outputs.score_map]
    map_top = float(np.percentile(score_map, 99.5)) or 1.0  # one colour scale for every example

    figure, axes = plt.subplots(
        len(indices), len(panels), figsize=(2.0 * len(panels), 2.1 * max(len(indices), 1)), squeeze=False
    )
    for row, index in enumerate(indices):
        for column, panel in enumerate(panels):
            axis = axes[row][column]
            if panel == "input":
                axis.imshow(outputs.images[index, 0], cmap="gray", vmin=0, vmax=1)
            elif panel == "reconstruction":
                axis.imshow(outputs.reconstructions[index, 0], cmap="gray", vmin=0, vmax=1)
            elif panel == "map":
                axis.imshow(score_map[index, 0], cmap="inferno", vmin=0, vmax=map_top)
            else:
                axis.imshow(outputs.intermediates[panel][index, 0], cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(_PANEL_TITLES[panel], fontsize=8)
        label = "pathological" if outputs.labels[index] else "healthy"
        score = outputs.scores[outputs.score_map][index]
        axes[row][0].set_ylabel(f"{label}\nscore {score:.3g}", fontsize=7)
    figure.suptitle(title or f"{outputs.cell.name} ({outputs.split}, map: {outputs.score_map})", fontsize=9)
    figure.tight_layout()
    return figure


def examples_panel_figure(panels: Sequence[tuple[str, Path]], *, title: str = "") -> Figure:
    """Stack saved example figures (PNG files, such as ``cell_examples_figure``'s) into one figure, each under its caption."""
    if not panels:
        raise ValueError("panels must list at least one (caption, PNG path) pair, but got none")
    images = [matplotlib.image.imread(path) for _, path in panels]
    width = 8.0
    heights = [width * image.shape[0] / image.shape[1] for image in images]
    figure, axes = plt.subplots(
        len(images), 1, figsize=(width, sum(heights) + 0.4 * len(images)), squeeze=False, height_ratios=heights
    )
    for axis, image, (caption, _) in zip(axes[:, 0], images, panels, strict=True):
        axis.imshow(image)
        axis.set_axis_off()
        axis.set_title(caption, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def auc_against_t_figure(summaries: list[CellSummary], *, split: str = "test", stride: int = 1, title: str = "") -> Figure:
    """Plot AUPRC and AUROC against the noise level t, one line per method and noise type.

    Shaded bands show each summary's bootstrap interval. For a summary pooled over several
    seeds the line is the mean and the band spans the lowest lower bound to the highest upper
    bound of the seeds' intervals. Points without an interval get no band.
    """
    lines: dict[str, list[tuple[int, CellSummary]]] = defaultdict(list)
    for summary in summaries:
        if summary.split == split:
            family = summary.cell.label(stride).split("(")[0]
            lines[family].append((summary.cell.t * stride, summary))

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    levels: set[float] = set()
    for family, points in sorted(lines.items()):
        points.sort(key=lambda point: point[0])
        steps = [step for step, _ in points]
        for axis, metric in ((left, "auprc"), (right, "auroc")):
            values = [100 * summary.metrics.get(metric, math.nan) for _, summary in points]
            (line,) = axis.plot(steps, values, marker="o", label=family)
            bands = [_band(summary, metric) for _, summary in points]
            if any(band is not None for band in bands):
                low = [100 * band[0] if band is not None else math.nan for band in bands]
                high = [100 * band[1] if band is not None else math.nan for band in bands]
                axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
                levels.update(band[2] for band in bands if band is not None)

    x_label = "noise level t" if stride == 1 else f"noise level t (reference chain, model step × {stride})"
    for axis, name in ((left, "AUPRC"), (right, "AUROC")):
        axis.set_xlabel(x_label)
        axis.set_ylabel(f"{name} (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    right.axhline(50, color="grey", linestyle=":", linewidth=1)
    left.legend(fontsize=7)
    heading = title or f"Detection against noise level ({split} split)"
    if levels:
        shown = ", ".join(f"{100 * level:g}%" for level in sorted(levels))
        heading += f"\nbands: {shown} bootstrap intervals"
        if any(len(summary.seeds) >= 2 for points in lines.values() for _, summary in points):
            heading += " (several seeds: lowest to highest bound over seeds)"
    figure.suptitle(heading, fontsize=9)
    figure.tight_layout()
    return figure


def _band(summary: CellSummary, metric: str) -> tuple[float, float, float] | None:
    """Return the low and high bound and level of the band around one point, or None without an interval."""
    interval = summary.intervals.get(metric)
    if interval is not None:
        return interval.low, interval.high, interval.level
    intervals = [run.intervals[metric] for run in summary.seeds if metric in run.intervals]
    if not intervals:
        return None
    return min(i.low for i in intervals), max(i.high for i in intervals), intervals[0].level
