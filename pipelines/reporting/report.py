"""A sweep's report from its results files: trials pooled over seeds, progress, tables and figures in one folder.

Trials whose sampled configurations differ only in ``training.seed`` form one group.
Within a group every cell's metrics are averaged over the trials that have evaluated it,
and the per-trial values and intervals are kept, so tables can print mean ± std over
seeds next to each seed's own bootstrap interval. A sweep that is still running or was
interrupted is reported as far as it got: the progress counts what is done, and cells
that another trial of the sweep has evaluated are listed as expected everywhere.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from pipelines.evaluation.grid import GridCell
from pipelines.reporting.figures import auc_against_t_figure, examples_panel_figure
from pipelines.metrics.bootstrap import PairedComparison, paired_bootstrap
from pipelines.reporting.results import CELLS_FOLDER, ImageScores, SweepResults, TrialResults
from pipelines.reporting.tables import (
    MISSING,
    CellSummary,
    SeedRun,
    Table,
    all_tables,
    choose_t,
    interval_text,
    percent,
    to_csv,
    to_latex,
    to_markdown,
)

SEED_KEY = "training.seed"

# Tune states of a trial that may still write results.
_LIVE_TUNE_STATES = ("PENDING", "RUNNING", "PAUSED")

_TABLE_TITLES = {
    "table1": "Table 1",
    "comparisons": "Paired comparisons of the Table 1 cells (bootstrap on the same images)",
    "postprocess": "Post-processing chosen by Optuna on validation",
    "appendix_reconstruction": "Reconstruction: MAE and SSIM",
    "appendix_lpips": "Reconstruction: LPIPS",
    "appendix_detection": "Detection per anomaly map",
}

_POSTPROCESS_COLUMNS = (
    "Cell", "Seed", "Choices", "Objective", "Val value", "Threshold", "Test AUPRC ↑", "Test AUROC ↑",
    "TP", "TN", "FP", "FN", "Sensitivity", "Specificity",
)


@dataclass
class ConfigGroup:
    """The trials of a sweep whose sampled configurations differ only in ``training.seed``, ordered by seed."""

    number: int
    config: dict[str, Any]
    trials: list[TrialResults]

    @property
    def label(self) -> str:
        """Return the shared sampled values, such as ``training.lr=0.0001``, or "base spec"."""
        return ", ".join(f"{key}={value}" for key, value in self.config.items()) or "base spec"

    @property
    def seeds(self) -> list[int]:
        """Return the seed of every trial, in trial order."""
        return [trial.record.seed for trial in self.trials]

    @property
    def stride(self) -> int:
        """Return the schedule stride that cell labels multiply t by."""
        return self.trials[0].record.stride


@dataclass(frozen=True)
class WrittenReport:
    """Table 1 of each configuration, and the path of every file that ``write_report`` wrote."""

    table1: list[tuple[ConfigGroup, Table]]
    paths: list[Path]


@dataclass(frozen=True)
class Progress:
    """How far a sweep has got: trials by state, and evaluated cells out of those expected."""

    trial_states: dict[str, int]
    cells_done: int
    cells_total: int

    @property
    def trials_total(self) -> int:
        """Return the number of trials in the sweep, with or without results files."""
        return sum(self.trial_states.values())

    def text(self) -> str:
        """Describe the progress in one line, such as ``Trials: 2 of 3 done (1 running); cells: 10 of 12 evaluated.``"""
        others = ", ".join(f"{count} {state}" for state, count in sorted(self.trial_states.items()) if state != "done")
        trials = f"Trials: {self.trial_states.get('done', 0)} of {self.trials_total} done" + (f" ({others})" if others else "")
        return f"{trials}; cells: {self.cells_done} of {self.cells_total} evaluated."


def group_trials(results: SweepResults) -> list[ConfigGroup]:
    """Group the trials whose configurations differ only in ``training.seed``, in order of first trial id."""
    groups: dict[str, ConfigGroup] = {}
    for trial in sorted(results.trials, key=lambda trial: trial.record.trial_id):
        config = {key: value for key, value in trial.record.config.items() if key != SEED_KEY}
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in groups:
            groups[key] = ConfigGroup(len(groups) + 1, config, [])
        groups[key].trials.append(trial)
    for group in groups.values():
        group.trials.sort(key=lambda trial: (trial.record.seed, trial.record.trial_id))
    return list(groups.values())


def pooled_summaries(group: ConfigGroup) -> list[CellSummary]:
    """Summarise every cell and split of a group, pooled over the trials that evaluated it.

    With one trial the summary is that trial's metrics and intervals. With several,
    ``metrics`` contains the mean over trials (see ``pool_metrics``) and ``seeds`` each
    trial's own values and intervals.
    """
    runs: dict[tuple[GridCell, str], list[SeedRun]] = defaultdict(list)
    for trial in group.trials:
        for record in trial.cells.values():
            for split, result in record.splits.items():
                runs[(record.cell, split)].append(SeedRun(trial.record.seed, trial.record.trial_id, result.metrics, result.intervals))

    summaries = []
    for (cell, split), seeds in sorted(runs.items()):
        if len(seeds) == 1:
            summaries.append(CellSummary(cell, split, seeds[0].metrics, seeds[0].intervals, tuple(seeds)))
        else:
            summaries.append(CellSummary(cell, split, pool_metrics([run.metrics for run in seeds]), {}, tuple(seeds)))
    return summaries


def pool_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    """Average metrics over runs; a ``*_std`` next to a ``*_mean`` becomes the std of the pooled images.

    The runs evaluate the same images, so each gets the same weight, and the pooled
    variance is the mean within-run variance plus the variance of the run means (both
    population variances, as ``summarize_cell`` computes them). NaN values are left out.
    """
    pooled: dict[str, float] = {}
    for key in sorted({key for metrics in runs for key in metrics}):
        values = [metrics[key] for metrics in runs if key in metrics and not math.isnan(metrics[key])]
        pooled[key] = statistics.fmean(values) if values else math.nan

    for key in [key for key in pooled if key.endswith("_std") and f"{key[:-4]}_mean" in pooled]:
        mean_key = f"{key[:-4]}_mean"
        pairs = [(metrics[mean_key], metrics[key]) for metrics in runs if mean_key in metrics and key in metrics]
        pairs = [(mean, std) for mean, std in pairs if not (math.isnan(mean) or math.isnan(std))]
        if pairs:
            within = statistics.fmean(std**2 for _, std in pairs)
            between = statistics.pvariance([mean for mean, _ in pairs])
            pooled[key] = math.sqrt(within + between)
    return pooled


def expected_cells(group: ConfigGroup, results: SweepResults) -> list[GridCell]:
    """List the cells a group's tables show, evaluated or not.

    These are the group's own evaluated cells. While that is fewer than a trial's
    ``cells_total``, the cells any trial of the sweep has evaluated are added, because
    the trials of a sweep share its grid unless the search space changes it.
    """
    own = {record.cell for trial in group.trials for record in trial.cells.values()}
    if len(own) >= max(trial.record.cells_total for trial in group.trials):
        return sorted(own)
    return sorted(own | {record.cell for trial in results.trials for record in trial.cells.values()})


def sweep_progress(results: SweepResults, tune_states: Mapping[str, str] | None = None) -> Progress:
    """Count trials by state and evaluated cells.

    ``tune_states`` maps trial ids to Tune's trial states, where Tune's state file is
    readable. A trial whose file has status "running" while Tune no longer runs it counts as
    interrupted. A trial that Tune lists but that wrote no results file counts by its Tune
    state, such as "pending with no results files", and expects as many cells as the others.
    """
    tune_states = dict(tune_states or {})
    states: Counter[str] = Counter()
    for trial in results.trials:
        state = trial.record.status
        tune_state = tune_states.pop(trial.record.trial_id, None)
        if state == "running" and tune_state is not None and tune_state not in _LIVE_TUNE_STATES:
            state = "interrupted"
        states[state] += 1
    for tune_state in tune_states.values():
        states[f"{tune_state.lower()} with no results files"] += 1

    per_trial = max((trial.record.cells_total for trial in results.trials), default=0)
    cells_total = sum(trial.record.cells_total for trial in results.trials) + per_trial * len(tune_states)
    cells_done = sum(len(trial.cells) for trial in results.trials)
    return Progress(dict(states), cells_done, cells_total)


def postprocess_table(group: ConfigGroup, expected: list[GridCell]) -> Table:
    """Build the table of post-processing choices per cell and trial, or no rows if no cell has any.

    Each row shows what the Optuna study chose on validation, its validation objective, the
    fitted threshold, and the test AUPRC and AUROC with their intervals and the confusion
    counts at that threshold. A cell not yet evaluated, or without a study, shows "—".
    """
    rows: Table = []
    found = False
    for cell in expected:
        for trial in group.trials:
            row = dict.fromkeys(_POSTPROCESS_COLUMNS, MISSING)
            row |= {"Cell": cell.label(group.stride), "Seed": str(trial.record.seed)}
            record = trial.cells.get(cell.name)
            if record is not None and record.postprocess is not None:
                found = True
                chosen, test = record.postprocess, record.postprocess.test
                row |= {
                    "Choices": ", ".join(f"{key}={value}" for key, value in chosen.params.items()),
                    "Objective": f"val {chosen.objective.upper()}",
                    "Val value": percent(chosen.val_value),
                    "Threshold": f"{chosen.threshold:.4g}",
                    "Test AUPRC ↑": interval_text(test.auprc),
                    "Test AUROC ↑": interval_text(test.auroc),
                    "TP": str(test.tp),
                    "TN": str(test.tn),
                    "FP": str(test.fp),
                    "FN": str(test.fn),
                    "Sensitivity": percent(test.sensitivity),
                    "Specificity": percent(test.specificity),
                }
            rows.append(row)
    return rows if found else []


def comparisons_table(group: ConfigGroup, summaries: list[CellSummary], *, split: str, expected: list[GridCell]) -> Table:
    """Compare every pair of Table 1 cells on the same images with a paired bootstrap, per trial.

    Each row gives the difference in AUPRC and in AUROC (first cell minus second) with its
    95% interval and two-sided bootstrap p-value. Pairs whose trial kept no per-image scores,
    or scored other images, are left out.
    """
    chosen = [choice.cells[0] for choice in choose_t(summaries, report_on=split, expected=expected) if len(choice.cells) == 1]
    rows: Table = []
    for trial in group.trials:
        scores = {cell: _image_scores(trial, cell, split) for cell in chosen}
        available = [cell for cell in chosen if scores[cell] is not None]
        for index, first in enumerate(available):
            for second in available[index + 1 :]:
                a, b = scores[first], scores[second]
                if a.ids != b.ids:
                    continue
                row = {"Seed": str(trial.record.seed), "Cell A": first.label(group.stride), "Cell B": second.label(group.stride)}
                for metric in ("auprc", "auroc"):
                    comparison = _paired(a, b, metric)
                    name = metric.upper()
                    row[f"Δ{name} (A − B)"] = interval_text(_Difference(comparison))
                    row[f"p ({name})"] = f"{comparison.p_value:.3g}"
                rows.append(row)
    return rows


@dataclass(frozen=True)
class _Difference:
    """A paired difference shaped like an interval, so ``interval_text`` formats it."""

    comparison: PairedComparison

    @property
    def estimate(self) -> float:
        return self.comparison.difference

    @property
    def low(self) -> float:
        return self.comparison.low

    @property
    def high(self) -> float:
        return self.comparison.high

    @property
    def level(self) -> float:
        return 0.95


def _image_scores(trial: TrialResults, cell: GridCell, split: str) -> ImageScores | None:
    record = trial.cells.get(cell.name)
    result = record.splits.get(split) if record is not None else None
    return result.image_scores if result is not None else None


def _paired(a: ImageScores, b: ImageScores, metric: str) -> PairedComparison:
    """Run the paired bootstrap, by group where every group contains one label, else by image."""
    labels_by_group: dict[str, set[int]] = defaultdict(set)
    for group, label in zip(a.groups, a.labels):
        labels_by_group[group].add(label)
    pure = all(len(labels) == 1 for labels in labels_by_group.values())
    return paired_bootstrap(
        a.labels, a.scores, b.scores, groups=a.groups if pure else None, metric=metric, ids_a=a.ids, ids_b=b.ids
    )


def example_panels(
    group: ConfigGroup, summaries: list[CellSummary], *, split: str, expected: list[GridCell]
) -> list[tuple[str, Path]]:
    """List the example PNGs of the cells Table 1 reports, one per cell, from the lowest seed that has one."""
    panels = []
    for choice in choose_t(summaries, report_on=split, expected=expected):
        for cell in choice.cells:
            for trial in group.trials:
                record = trial.cells.get(cell.name)
                if record is None or record.examples is None:
                    continue
                path = trial.folder / CELLS_FOLDER / record.examples
                if path.is_file():
                    panels.append((f"{cell.label(group.stride)}, seed {trial.record.seed}", path))
                    break
    return panels


def available_splits(results: SweepResults) -> list[str]:
    """List every split that any evaluated cell of the sweep has results for."""
    return sorted({split for trial in results.trials for record in trial.cells.values() for split in record.splits})


def interval_levels(results: SweepResults) -> list[float]:
    """List the confidence levels of every interval in the results, such as ``[0.95]``."""
    levels = set()
    for trial in results.trials:
        for record in trial.cells.values():
            levels.update(interval.level for result in record.splits.values() for interval in result.intervals.values())
            if record.postprocess is not None:
                levels.update((record.postprocess.test.auprc.level, record.postprocess.test.auroc.level))
    return sorted(levels)


def write_report(
    results: SweepResults, out: Path, *, sweep: str, split: str = "test", progress: Progress | None = None
) -> WrittenReport:
    """Write ``report.md`` and, per configuration, its tables (Markdown, CSV, LaTeX) and figures under ``out``.

    Each configuration gets a folder ``config-N`` with ``table1``, ``postprocess`` and the
    ``appendix_*`` tables, ``auc_against_t.png``, and ``examples.png`` when the trials saved
    example images for the cells of Table 1.
    """
    progress = progress or sweep_progress(results)
    out.mkdir(parents=True, exist_ok=True)
    table1: list[tuple[ConfigGroup, Table]] = []
    sections: list[str] = []
    paths: list[Path] = []
    for group in group_trials(results):
        tables, section = _write_group(group, results, out, sweep=sweep, split=split, paths=paths)
        table1.append((group, tables["table1"]))
        sections.append(section)

    report_path = out / "report.md"
    report_path.write_text(_report_header(sweep, split, results, progress) + "".join(sections), encoding="utf-8")
    return WrittenReport(table1, [report_path, *paths])


def _write_group(
    group: ConfigGroup, results: SweepResults, out: Path, *, sweep: str, split: str, paths: list[Path]
) -> tuple[dict[str, Table], str]:
    """Write one configuration's tables and figures, appending to ``paths``; return its tables and report section."""
    folder = out / f"config-{group.number}"
    folder.mkdir(parents=True, exist_ok=True)
    summaries = pooled_summaries(group)
    expected = expected_cells(group, results)
    tables = all_tables(summaries, stride=group.stride, report_on=split, expected=expected)
    tables = {
        "table1": tables.pop("table1"),
        "comparisons": comparisons_table(group, summaries, split=split, expected=expected),
        "postprocess": postprocess_table(group, expected),
        **tables,
    }

    seeds = ", ".join(str(seed) for seed in group.seeds)
    section = [f"\n## Configuration {group.number}: {group.label}\n\nSeeds: {seeds} ({len(group.trials)} trials).\n"]
    for key, table in tables.items():
        title = _TABLE_TITLES[key]
        if not table:
            section.append(f"\n### {title}\n\nNo results.\n")
            continue
        caption = f"{title}, sweep {sweep}, {group.label}, {split} split."
        for suffix, text in (
            ("md", to_markdown(table)),
            ("csv", to_csv(table)),
            ("tex", to_latex(table, caption=caption, label=f"tab:{sweep}-{group.number}-{key}")),
        ):
            paths.append(folder / f"{key}.{suffix}")
            paths[-1].write_text(text, encoding="utf-8")
        section.append(f"\n### {title}\n\n{to_markdown(table)}")

    title = f"{group.label}: detection against t ({split} split)"
    paths.append(_save(auc_against_t_figure(summaries, split=split, stride=group.stride, title=title), folder / "auc_against_t.png"))
    section.append(f"\n![AUPRC and AUROC against t]({paths[-1].relative_to(out).as_posix()})\n")
    panels = example_panels(group, summaries, split=split, expected=expected)
    if panels:
        paths.append(_save(examples_panel_figure(panels, title=f"{group.label}: cells of Table 1"), folder / "examples.png"))
        section.append(f"\n![Examples of the cells of Table 1]({paths[-1].relative_to(out).as_posix()})\n")
    else:
        section.append("\nNo example images were saved for the cells of Table 1.\n")
    return tables, "".join(section)


def _report_header(sweep: str, split: str, results: SweepResults, progress: Progress) -> str:
    levels = ", ".join(f"{100 * level:g}%" for level in interval_levels(results)) or "no"
    lines = [
        f"# Sweep {sweep}: report on the {split} split",
        "",
        progress.text(),
        "",
        f"AUPRC and AUROC are ×100; brackets give {levels} bootstrap intervals. Table 1 chooses t per",
        "method and noise type on validation AUPRC (the mean over seeds) and reports that t on the",
        f"{split} split. Trials that differ only in training.seed are pooled: mean ± sample standard",
        "deviation over seeds, with each seed's value and interval in the per-seed columns. MAE, SSIM",
        'and LPIPS are mean ± std over images, pooled over seeds. "—" marks a cell not evaluated yet.',
    ]
    if results.warnings:
        lines += ["", "Files skipped:", *[f"- {warning}" for warning in results.warnings]]
    return "\n".join(lines) + "\n"


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
