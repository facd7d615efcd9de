"""The ``sweeper`` command line: launch sweeps, check their status, curate data, run the MLflow server."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from sweeper.data_commands import data_group
from sweeper.errors import user_errors
from sweeper.mlflow_commands import mlflow_group
from sweeper.paths import default_storage
from sweeper.report import report_command
from sweeper.signals import sigterm_as_interrupt
from sweeper.weights_commands import weights_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v: info, -vv: debug).")
def cli(verbose: int) -> None:
    """Ray Tune sweeps of diffusion-based anomaly detection in fetal brain ultrasound, tracked in MLflow."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec value, e.g. training.lr=3e-4 (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help="Folder that relative data paths resolve against.")
@click.option("--tracking-uri", help="MLflow tracking server URI (default: start or reuse the local server).")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), help="Folder for Ray Tune results (default: ~/.sweeper/sweeps).")
@click.option("--address", help="Ray cluster to join: 'auto' or ray://HOST:PORT (default: start Ray locally).")
@click.option("--name", help="Sweep name (default: the spec's name).")
@click.option("--new", is_flag=True, help="Start over when a sweep of this name exists; its folder is kept under another name.")
def launch(spec: Path, overrides: tuple[str, ...], data_root: Path | None, tracking_uri: str | None, storage: Path | None, address: str | None, name: str | None, new: bool) -> None:
    """Launch the sweep described by the YAML file SPEC.

    The spec, its search space, the data sources, the storage path, the model weights
    and the tracking server are all checked before Ray starts. Each trial trains one
    DDPM per noise type on healthy images and evaluates the method x noise x t grid.
    Every parameter, metric and artifact goes to MLflow.
    """
    from sweeper.launch import LaunchOptions

    _run(LaunchOptions(spec, list(overrides), data_root, tracking_uri, storage, address, name, new=new))


@cli.command()
@click.argument("name")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), help="Folder the sweep was launched with (default: ~/.sweeper/sweeps).")
@click.option("--address", help="Ray cluster to join: 'auto' or ray://HOST:PORT (default: start Ray locally).")
@click.option("--tracking-uri", help="MLflow server, if it moved (default: the one the sweep logged to).")
def resume(name: str, storage: Path | None, address: str | None, tracking_uri: str | None) -> None:
    """Resume the interrupted sweep NAME from its last saved state.

    Finished trials are kept as they are. Unfinished and failed trials continue from
    their last checkpoints, skip the grid cells they had evaluated, and log into their
    existing MLflow runs.
    """
    from sweeper.launch import finished, resume_options

    with user_errors():
        options = resume_options(name, storage=storage, address=address, tracking_uri=tracking_uri)
    if finished(options):
        # Tune would restore the sweep and run nothing, after the whole start-up of a launch.
        storage_option = _storage_option(options.storage)
        click.echo(
            f"Sweep {name!r} finished with every trial done, so there is nothing to resume; "
            f"see 'sweeper status {name}{storage_option}' and 'sweeper report {name}{storage_option}'"
        )
        return
    _run(options)


def _storage_option(storage: Path) -> str:
    """Return `` --storage DIR`` for a storage folder other than the default, else an empty string."""
    return "" if storage == default_storage().resolve() else f" --storage {storage}"


def _run(options: Any) -> None:
    """Run or resume a sweep, print its summary, and exit non-zero if a trial failed or is unfinished."""
    from sweeper.launch import run_sweep

    with user_errors(), sigterm_as_interrupt():
        summary = run_sweep(options, echo=click.echo)
    _print_summary(summary)
    folder = Path(summary["storage"])
    resume_command = f"sweeper resume {folder.name}{_storage_option(folder.parent)}"
    if summary["errored"]:
        raise click.ClickException(
            f"{summary['errored']} trial(s) failed; see 'sweeper status {folder.name}' and the trial logs, "
            f"then retry them from their checkpoints with '{resume_command}'"
        )
    if summary["incomplete"]:
        raise click.ClickException(
            f"the sweep was interrupted with {summary['incomplete']} trial(s) unfinished; continue it with '{resume_command}'"
        )


def _print_summary(summary: dict[str, Any]) -> None:
    click.echo("")
    click.echo("Trials:")
    for trial in summary["trials"]:
        sampled = ", ".join(f"{key}={value}" for key, value in trial["config"].items()) or "base spec"
        result = _format_auc(trial["best_test_auprc"], trial["best_test_auroc"])
        click.echo(f"  {trial['trial_id']}  {trial['state']:<10} {sampled}  best: {trial['best_cell'] or '-'} {result}")
        if trial["error"]:
            click.echo(f"    error: {trial['error']}")
    for trial in summary["trials"]:
        if trial["table1_markdown"]:
            click.echo(f"\nTable 1, trial {trial['trial_id']} ({trial['table1_title']}):\n")
            click.echo(trial["table1_markdown"])
    click.echo(f"MLflow UI: {summary['mlflow_url']}")
    click.echo(f"Tune results: {summary['storage']}")


def _format_auc(auprc: float | None, auroc: float | None) -> str:
    if auprc is None or auroc is None:
        return ""
    return f"(test AUPRC {100 * auprc:.1f}, AUROC {100 * auroc:.1f})"


@cli.command()
@click.argument("name")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), help="Folder the sweep was launched with (default: ~/.sweeper/sweeps).")
def status(name: str, storage: Path | None) -> None:
    """Show the trials of sweep NAME, their states and best results."""
    from sweeper.status import sweep_status

    with user_errors():
        rows = sweep_status(name, storage)
    click.echo(f"Sweep {name}: {len(rows)} trials")
    for row in rows:
        sampled = ", ".join(f"{key}={value}" for key, value in row["config"].items()) or "base spec"
        result = _format_auc(row["best_test_auprc"], row["best_test_auroc"])
        click.echo(f"  {row['trial_id']}  {row['state']:<11} {row['phase'] or '-':<16} {sampled}  {row['best_cell']} {result}")
        if row["error"]:
            click.echo(f"    error: {row['error']}")


cli.add_command(data_group)
cli.add_command(mlflow_group)
cli.add_command(weights_group)
cli.add_command(report_command)

# Nothing the CLI starts reports usage to outside hosts unless the user opts back in, and
# MLflow prints no "View run" link per run (the CLI prints the experiment's URL once).
_ENVIRONMENT_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Retry a restarting tracking server for about a minute, as the trials do.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def main() -> None:
    for name, value in _ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    cli(prog_name="sweeper")


if __name__ == "__main__":
    sys.exit(main())
