"""``sweeper report``: the tables and figures of a sweep, from its MLflow runs or its storage folder.

Every trial logs one results file per trial and per grid cell to its MLflow runs and
writes the same files under ``<storage>/<name>/results``. The report reads them from MLflow
by default (``--source files`` reads the folder instead, with no server), and Tune's state
file where one exists to count trials that have written nothing yet. It starts no Ray, so
it works while the sweep runs, after it ends, or after it was interrupted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sweeper.paths import default_storage
from sweeper.report_source import results_from_mlflow
from sweeper.status import NAME_PATTERN, SweepNotFoundError, sweep_status

if TYPE_CHECKING:
    from pipelines.reporting.results import SweepResults

RESULTS_FOLDER = "results"  # the same name as pipelines.reporting.results, which imports PyTorch


@click.command("report")
@click.argument("name")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), help="Folder the sweep was launched with (default: ~/.sweeper/sweeps).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder to write the report to (default: <storage>/NAME/report).")
@click.option("--split", default="test", show_default=True, help="Split the tables report; Table 1 chooses t on the validation split.")
@click.option(
    "--source",
    type=click.Choice(["mlflow", "files"]),
    default="mlflow",
    show_default=True,
    help="Read the results from the sweep's MLflow runs, or from its storage folder alone.",
)
@click.option("--tracking-uri", help="MLflow server to read from (default: the one the sweep logged to).")
def report_command(name: str, storage: Path | None, out: Path | None, split: str, source: str, tracking_uri: str | None) -> None:
    """Write the tables and figures of sweep NAME and print its Table 1.

    Tables come as Markdown, CSV and LaTeX, with AUPRC and AUROC x100 and their bootstrap
    intervals, such as 85.2 [78.1, 91.0]. Trials that differ only in training.seed are
    pooled: mean ± std over seeds, the number of seeds, and each seed's interval. Table 1
    chooses t per method and noise type on validation AUPRC and reports the chosen t on
    --split. Figures show AUPRC and AUROC against t with interval bands, and example
    images. A sweep that is still running or was interrupted is reported as far as it got,
    with cells not yet evaluated marked "—". Needs no running Ray; --source files needs no MLflow.
    """
    folder = find_sweep(name, storage, need_results=source == "files")
    # Imported here because the reporting modules import PyTorch, which slows every other command.
    from pipelines.reporting.results import load_sweep_results

    with tempfile.TemporaryDirectory(prefix="sweeper-report-") as download:
        if source == "mlflow":
            results = load_sweep_results(results_from_mlflow(folder, Path(download), tracking_uri=tracking_uri))
        else:
            results = load_sweep_results(folder / RESULTS_FOLDER)
        _write(name, storage, out, split, folder, results)


def _write(name: str, storage: Path | None, out: Path | None, split: str, folder: Path, results: SweepResults) -> None:
    """Write the report of ``results`` and print its Table 1 and the files written."""
    from pipelines.reporting.report import available_splits, sweep_progress, write_report
    from pipelines.reporting.tables import to_markdown

    for warning in results.warnings:
        click.echo(f"warning: {warning}", err=True)
    splits = available_splits(results)
    if splits and split not in splits:
        raise click.ClickException(f"split {split!r} has no results in sweep {name!r}; pass --split with one of: {', '.join(splits)}")

    progress = sweep_progress(results, _tune_states(name, storage))
    destination = (out or folder / "report").expanduser()
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot create the report folder {str(destination)!r} ({error.strerror}); pass another --out") from None
    written = write_report(results, destination, sweep=name, split=split, progress=progress)
    click.echo(f"Sweep {name}, {split} split. {progress.text()}")
    for group, table in written.table1:
        seeds = ", ".join(str(seed) for seed in group.seeds)
        click.echo(f"\nTable 1, {group.label} (seeds {seeds}):\n")
        click.echo(to_markdown(table), nl=False)
    click.echo("\nWrote:")
    for path in written.paths:
        click.echo(f"  {path}")


def find_sweep(name: str, storage: Path | None, *, need_results: bool = True) -> Path:
    """Return the folder of sweep ``name``, or raise a one-line error that lists the sweeps in the storage folder."""
    if not NAME_PATTERN.fullmatch(name):
        raise click.ClickException(f"sweep name {name!r} is invalid; use the name the sweep was launched with, not a path")
    root = (storage or default_storage()).expanduser()
    folder = root / name
    if not _is_sweep(folder):
        existing = ", ".join(sweep.name for sweep in list_sweeps(root)) or "none"
        raise click.ClickException(
            f"no sweep {name!r} in {str(root)!r} (sweeps there: {existing}); "
            "check the name, or pass the --storage the sweep was launched with"
        )
    if need_results and not (folder / RESULTS_FOLDER).is_dir():
        raise click.ClickException(
            f"sweep {name!r} in {str(folder)!r} has no {RESULTS_FOLDER}/ folder yet; "
            "its trials create it when they start, so try again once a trial runs"
        )
    return folder


def list_sweeps(root: Path) -> list[Path]:
    """List the sweep folders in a storage folder: those with a Tune state file or results files."""
    if not root.is_dir():
        return []
    return sorted(folder for folder in root.iterdir() if _is_sweep(folder))


def _is_sweep(folder: Path) -> bool:
    return folder.is_dir() and ((folder / RESULTS_FOLDER).is_dir() or any(folder.glob("experiment_state-*.json")))


def _tune_states(name: str, storage: Path | None) -> dict[str, str]:
    """Read Tune's state of every trial, or nothing where the sweep has no readable Tune state file."""
    try:
        return {row["trial_id"]: row["state"] for row in sweep_status(name, storage)}
    except SweepNotFoundError:
        return {}
