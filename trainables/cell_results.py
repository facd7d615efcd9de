"""Per-cell results of a trial: metrics with bootstrap intervals, pixel metrics and the post-processing search.

Every number lands in two places: the cell's MLflow run, and the cell's results file in the
sweep's storage folder (``pipelines.reporting.results``), which `sweeper report` also reads.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.dataset import PreparedSplit
from pipelines.evaluation.grid import CellOutputs, summarize_cell
from pipelines.metrics.bootstrap import detection_intervals
from pipelines.metrics.normalise import fit_map_normalisation
from pipelines.metrics.pixel import pixel_metrics
from pipelines.postprocess.settings import PostprocessSettings, SplitMaps
from pipelines.postprocess.study import search_postprocessing
from pipelines.postprocess.result import PostprocessResult
from pipelines.reporting.results import ImageScores, IntervalRecord, PostprocessRecord, PostprocessTest, SplitResult
from trainables.tracking import RunLogger

logger = logging.getLogger(__name__)


def split_result(
    outputs: CellOutputs, split: PreparedSplit, spec: Any, *, reference: tuple[CellOutputs, PreparedSplit] | None = None
) -> SplitResult:
    """Summarise one cell on one split: AUPRC and AUROC with bootstrap intervals, and pixel metrics where lesion masks exist.

    ``reference`` is the validation output of the same cell and its split (default: this split).
    Anomaly maps are scaled by a statistic of its healthy images, one scale for the data set and
    never one per image, before the pixel threshold is chosen.
    """
    metrics = summarize_cell(outputs)
    bootstrap = spec.evaluation.bootstrap
    intervals = detection_intervals(
        outputs.labels,
        outputs.scores[outputs.score_map],
        groups=_groups_if_label_pure(split),
        n_resamples=bootstrap.n_resamples,
        level=bootstrap.level,
        seed=bootstrap.seed,
    )
    for name, interval in intervals.items():
        # Named ci_*, so tables do not read the bounds as AUPRC of a map called "low" or "high".
        metrics[f"ci_{name}_low"], metrics[f"ci_{name}_high"] = interval.low, interval.high
    if split.lesion_masks is not None and split.lesion_masks.any():
        metrics.update(_pixel_metrics(outputs, split, reference or (outputs, split)))
    return SplitResult(
        metrics=metrics,
        intervals={name: IntervalRecord.of(interval) for name, interval in intervals.items()},
        n_images=len(outputs.labels),
        image_scores=ImageScores(
            ids=list(outputs.ids),
            labels=[int(label) for label in outputs.labels],
            groups=list(split.groups),
            scores=[float(score) for score in outputs.scores[outputs.score_map]],
        ),
    )


def postprocess_settings(spec: Any, seed: int) -> PostprocessSettings:
    """Translate the spec's ``evaluation.postprocess`` section into the search's settings."""
    section = spec.evaluation.postprocess
    return PostprocessSettings(
        n_trials=section.n_trials,
        seed=seed,
        objective=section.objective,
        threshold_rule=section.threshold,
        maps=tuple(section.maps),
        sigmas=tuple(section.sigmas),
        scores=tuple(section.scores),
        percentiles=tuple(section.percentiles),
        top_k_percents=tuple(section.top_k_percents),
        head_mask=tuple(section.head_mask),
        storage=section.storage,
    )


def run_postprocess(
    outputs: dict[str, CellOutputs],
    splits: dict[str, PreparedSplit],
    settings: PostprocessSettings,
    *,
    study_name: str,
    folder: Path,
) -> PostprocessResult:
    """Search the post-processing of one cell on its validation maps and report it on test."""
    val, test = (
        SplitMaps(labels=outputs[name].labels, maps=outputs[name].maps, head_masks=splits[name].head_masks, ids=outputs[name].ids)
        for name in ("val", "test")
    )
    return search_postprocessing(val, test, settings, study_name=study_name, folder=folder)


def postprocess_record(result: PostprocessResult, test_split: PreparedSplit, spec: Any) -> PostprocessRecord:
    """Attach bootstrap intervals to the test AUPRC and AUROC of the chosen post-processing."""
    bootstrap = spec.evaluation.bootstrap
    intervals = detection_intervals(
        test_split.labels,
        result.test_scores,
        groups=_groups_if_label_pure(test_split),
        n_resamples=bootstrap.n_resamples,
        level=bootstrap.level,
        seed=bootstrap.seed,
    )
    counts = result.test_counts
    return PostprocessRecord(
        params=dict(result.best_params),
        objective=result.objective,
        val_value=result.best_value,
        threshold=result.threshold,
        test=PostprocessTest(
            auprc=IntervalRecord.of(intervals["auprc"]),
            auroc=IntervalRecord.of(intervals["auroc"]),
            tp=counts.tp,
            tn=counts.tn,
            fp=counts.fp,
            fn=counts.fn,
            sensitivity=counts.sensitivity,
            specificity=counts.specificity,
        ),
    )


def log_postprocess(run: RunLogger, result: PostprocessResult, record: PostprocessRecord) -> None:
    """Log the chosen post-processing, its test results, the optimisation history and the importances."""
    run.log_params({f"postprocess.{key}": value for key, value in result.best_params.items()})
    run.log_params({"postprocess.threshold_rule": result.threshold_rule, "postprocess.storage": result.storage})
    test = record.test
    run.log_metrics(
        {
            f"postprocess/val_{result.objective}": result.best_value,
            "postprocess/threshold": result.threshold,
            "postprocess/test_auprc": test.auprc.estimate,
            "postprocess/test_auprc_low": test.auprc.low,
            "postprocess/test_auprc_high": test.auprc.high,
            "postprocess/test_auroc": test.auroc.estimate,
            "postprocess/test_auroc_low": test.auroc.low,
            "postprocess/test_auroc_high": test.auroc.high,
            "postprocess/test_tp": test.tp,
            "postprocess/test_tn": test.tn,
            "postprocess/test_fp": test.fp,
            "postprocess/test_fn": test.fn,
            "postprocess/test_sensitivity": test.sensitivity,
            "postprocess/test_specificity": test.specificity,
            **{f"postprocess/importance/{name}": value for name, value in result.importances.items()},
        }
    )
    # The history as a curve: each study trial's objective, and the best so far.
    best = -np.inf
    for entry in result.history:
        if entry.get("value") is None:
            continue
        best = max(best, float(entry["value"]))
        run.log_metrics(
            {f"postprocess/history_val_{result.objective}": entry["value"], f"postprocess/best_val_{result.objective}": best},
            step=int(entry["number"]),
        )
    run.log_dict(result.to_dict(), "postprocess/study.json")


def figure_png(figure: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pixel_metrics(outputs: CellOutputs, split: PreparedSplit, reference: tuple[CellOutputs, PreparedSplit]) -> dict[str, float]:
    """Pooled pixel AUPRC and best Dice of the score map inside the head, after data-set normalisation."""
    name = outputs.score_map
    reference_outputs, reference_split = reference
    normalisation = fit_map_normalisation(
        reference_outputs.maps[name], masks=reference_split.head_masks, labels=reference_outputs.labels
    )
    # Lesions that reach past the head mask still count as lesion pixels.
    region = split.head_masks | split.lesion_masks
    result = pixel_metrics(normalisation.apply(outputs.maps[name]), split.lesion_masks, region_masks=region)
    return {"pixel_auprc": result.auprc, "pixel_best_dice": result.best_dice, "pixel_dice_threshold": result.threshold}


def _groups_if_label_pure(split: PreparedSplit) -> list[str] | None:
    """Return the split's groups for the bootstrap, or None when a group mixes labels (resample images then)."""
    labels_by_group: dict[str, set[int]] = {}
    for group, label in zip(split.groups, split.labels.tolist()):
        labels_by_group.setdefault(group, set()).add(int(label))
    mixed = sorted(group for group, labels in labels_by_group.items() if len(labels) > 1)
    if mixed:
        logger.warning(
            "groups %s hold both healthy and pathological images, so the bootstrap resamples images, not groups", mixed[:5]
        )
        return None
    if len(labels_by_group) == len(split.groups):
        return None  # one image per group: the same as resampling images
    return list(split.groups)
