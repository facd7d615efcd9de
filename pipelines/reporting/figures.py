"""Figures: example reconstructions and anomaly maps per cell, and AUPRC/AUROC against t."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed
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


def auc_against_t_figure(summaries: list[CellSummary], *, split: str = "test", stride: int = 1) -> Figure:
    """Plot AUPRC and AUROC against the noise level t, one line per method and noise type."""
    lines: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for summary in summaries:
        if summary.split == split:
            family = summary.cell.label(stride).split("(")[0]
            lines[family].append((summary.cell.t * stride, summary.metrics["auprc"], summary.metrics["auroc"]))

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for family, points in sorted(lines.items()):
        points.sort()
        steps = [p[0] for p in points]
        left.plot(steps, [100 * p[1] for p in points], marker="o", label=family)
        right.plot(steps, [100 * p[2] for p in points], marker="o", label=family)
    x_label = "noise level t" if stride == 1 else f"noise level t (reference chain, model step × {stride})"
    for axis, name in ((left, "AUPRC"), (right, "AUROC")):
        axis.set_xlabel(x_label)
        axis.set_ylabel(f"{name} (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    right.axhline(50, color="grey", linestyle=":", linewidth=1)
    left.legend(fontsize=7)
    figure.suptitle(f"Detection against noise level ({split} split)", fontsize=9)
    figure.tight_layout()
    return figure
