"""The Ray Tune trainable: one trial trains a DDPM per noise type and evaluates the grid.

The driver prepares the data once and hands it to every trial through Ray's object
store (``tune.with_parameters``), so a trial never reads raw images. Everything a
trial produces is logged to MLflow over HTTP, under the sweep's parent run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from pydantic import TypeAdapter
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

from pipelines.data.dataset import PreparedData
from pipelines.data.records import write_manifest
from pipelines.diffusion.performance import inference_model
from pipelines.diffusion.training import EpochStats, NonFiniteLossError, TrainingCheckpoint, train_ddpm
from pipelines.diffusion.unet import count_parameters
from pipelines.evaluation.grid import CellOutputs, GridCell, grid_cells
from pipelines.evaluation.ragged import evaluate_grid
from pipelines.metrics.lpips import PerceptualDistance
from pipelines.reporting.figures import auc_against_t_figure, cell_examples_figure
from pipelines.reporting.results import CellRecord, TrialRecord, write_cell, write_trial
from pipelines.reporting.tables import CellSummary, all_tables, table1, to_csv, to_latex, to_markdown
from sweeper.search_space import apply_trial_config
from trainables.checkpointing import TrialState, report_checkpoint, restore_state
from trainables.cell_results import (
    figure_png,
    log_postprocess,
    postprocess_record,
    postprocess_settings,
    run_postprocess,
    split_result,
)
from trainables.failures import OUT_OF_MEMORY_STATUSES, out_of_memory_error, out_of_memory_status
from trainables.builders import build_model, build_noise, build_schedule, derive_seed, grid_settings, training_settings
from trainables.tracking import RunLogger, flatten, start_child_run

logger = logging.getLogger(__name__)

_CELL_RECORD = TypeAdapter(CellRecord)


@dataclass(frozen=True)
class SweepContext:
    """The tracking target every trial of a sweep shares: server, experiment and parent run."""

    sweep_name: str
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str
    results_dir: str


def run_trial(
    config: dict[str, Any],
    *,
    base_spec: dict[str, Any],
    data: PreparedData,
    lpips_state: dict[str, torch.Tensor],
    context: SweepContext,
) -> None:
    """Train, evaluate and log one trial; ``config`` contains the values sampled for it.

    ``data`` and the LPIPS weights ``lpips_state`` come from the driver through Ray's object store.
    """
    spec = apply_trial_config(base_spec, config)
    # One line per post-processing study trial would drown the sweep's output; MLflow keeps the history.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = tune.get_context()
    trial_id, trial_name = trial.get_trial_id(), trial.get_trial_name()
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    device = torch.device("cuda" if spec.resources.gpus > 0 and torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and spec.resources.gpus < 1:
        # Trials that share a GPU each get their share of its memory: one that needs more fails
        # alone with an out-of-memory error instead of starving the others.
        torch.cuda.set_per_process_memory_fraction(spec.resources.gpus, device)

    client = MlflowClient(context.tracking_uri)
    run = start_child_run(
        client,
        context.experiment_id,
        context.sweep_run_id,
        run_name=trial_name,
        tags={"sweeper.sweep": context.sweep_name, "sweeper.trial_id": trial_id, "sweeper.level": "trial"},
    )
    logger.info("trial %s: logging to MLflow run %s", trial_id, run.run_id)
    state = restore_state() or TrialState(trial_run_id=run.run_id)
    if state.trial_run_id != run.run_id:
        raise RuntimeError(
            f"trial {trial_id}: its checkpoint belongs to MLflow run {state.trial_run_id}, but the run found is {run.run_id}; "
            "resume the sweep against the tracking server it was launched with"
        )
    tags = client.get_run(run.run_id).data.tags if run.resumed else {}
    if tags.get("sweeper.status") == "nan_loss":
        run.finish("FAILED")  # reopening the run set it running again
        raise RuntimeError(f"trial {trial_id} stopped earlier with a NaN or infinite training loss; lower training.lr")
    if tags.get("sweeper.status") in OUT_OF_MEMORY_STATUSES:
        # A retry may fit where the first attempt did not (another process held the memory),
        # so the status describes this attempt and the earlier one is kept beside it.
        run.set_tags({"sweeper.previous_status": tags["sweeper.status"]})
        client.delete_tag(run.run_id, "sweeper.status")
    # Every node the trial has run on, in order: a retried trial shows where it moved.
    node = ray.get_runtime_context().get_node_id()
    run.set_tags({"sweeper.nodes": ",".join(filter(None, [tags.get("sweeper.nodes"), node]))})
    record = TrialRecord(
        sweep=context.sweep_name,
        trial_id=trial_id,
        trial_name=trial_name,
        config=dict(config),
        seed=spec.training.seed,
        status="running",
        cells_total=len(grid_cells(spec.evaluation.methods, spec.evaluation.t)),
        mlflow_run_id=run.run_id,
        stride=spec.schedule_stride,
    )
    results = Path(context.results_dir)
    run.log_artifact(write_trial(results, record), "results")
    try:
        _log_trial_inputs(run, spec, config, data)
        models = {noise: _train(spec, noise, data, run, device, trial_id, state) for noise in spec.noise_types}
        distance = PerceptualDistance(lpips_state).to(device)
        summaries = _evaluate(spec, models, data, distance, client, context, run, device, record, state)
        final = _log_summary(run, spec, summaries)
    except NonFiniteLossError as error:
        logger.error("trial %s: %s", trial_id, error)
        run.set_tags({"sweeper.status": "nan_loss"})
        _close(run, results, record, "FAILED")
        raise
    except (SystemExit, KeyboardInterrupt):
        # Tune stops a trial by raising SystemExit inside tune.report.
        logger.info("trial %s: stopped by Tune", trial_id)
        _close(run, results, record, "KILLED")
        raise
    except BaseException as error:
        status = out_of_memory_status(error)
        if status is None:
            logger.error("trial %s: failed with %s: %s", trial_id, type(error).__name__, error)
            _close(run, results, record, "FAILED")
            raise
        # Only this trial fails, and the message names the settings to lower.
        failure = out_of_memory_error(trial_id, status, error)
        logger.error("%s", failure)
        run.set_tags({"sweeper.status": status})
        _close(run, results, record, "FAILED")
        raise failure from error
    _close(run, results, record, "FINISHED")
    tune.report(final)


def _close(run: RunLogger, results: Path, record: TrialRecord, status: str) -> None:
    """End the trial's MLflow run and record its final state in its results file."""
    # A stopped trial can be resumed, so its results stay "running" rather than "failed".
    state = {"FINISHED": "done", "FAILED": "failed"}.get(status, "running")
    run.log_artifact(write_trial(results, dataclasses.replace(record, status=state)), "results")
    run.finish(status)


def _log_trial_inputs(run: RunLogger, spec: Any, config: dict[str, Any], data: PreparedData) -> None:
    run.log_params(flatten(spec.model_dump(mode="json")))
    run.set_tags({f"sweeper.search.{key}": value for key, value in config.items()})
    run.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    counts = data.counts()
    run.log_metrics({f"data/{split}_{label}": n for split, labels in counts.items() for label, n in labels.items()})
    with tempfile.TemporaryDirectory() as folder:
        run.log_artifact(write_manifest(data.records, Path(folder) / "manifest.csv"))


def _train(
    spec: Any, noise_type: str, data: PreparedData, run: RunLogger, device: torch.device, trial_id: str, state: TrialState
) -> tuple[torch.nn.Module, Any]:
    """Train the model of one noise type from where the trial's state left it, logging the loss curve and checkpoints."""
    model = build_model(spec, noise_type).to(device)
    schedule = build_schedule(spec, device)
    if noise_type in state.models:
        model.load_state_dict(state.models[noise_type])
        model.eval()
        logger.info("trial %s: the %s model was trained before the restart; loaded it", trial_id, noise_type)
        return model, schedule

    # Arrays from Ray's object store are read-only, so the tensor gets its own copy.
    images = torch.tensor(data.splits["train"].images, device=device)
    generator = torch.Generator(device=device).manual_seed(derive_seed(spec.training.seed, "train", noise_type))
    settings = training_settings(spec)
    total_steps = settings.total_steps(len(images))
    resume = state.training.get(noise_type)
    logger.info(
        "trial %s: training the %s model (%d parameters) for %d steps on %d images%s",
        trial_id, noise_type, count_parameters(model), total_steps, len(images),
        f", from epoch {resume.epoch}" if resume is not None else "",
    )

    def on_epoch(stats: EpochStats) -> None:
        run.log_metrics({f"train/loss_{noise_type}": stats.loss}, step=stats.epoch)
        tune.report({"phase": f"train_{noise_type}", "epoch": stats.epoch, "step": stats.step, "loss": stats.loss})

    def on_checkpoint(checkpoint: TrainingCheckpoint) -> None:
        state.training[noise_type] = checkpoint
        if checkpoint.step < total_steps:
            report_checkpoint(state, {"phase": f"train_{noise_type}", "epoch": checkpoint.epoch, "step": checkpoint.step})

    history = train_ddpm(
        model,
        schedule,
        images,
        noise_type=noise_type,
        noise=build_noise(spec, noise_type),
        settings=settings,
        generator=generator,
        on_epoch=on_epoch,
        resume=resume,
        on_checkpoint=on_checkpoint,
        checkpoint_every=spec.training.checkpoint.every_epochs,
    )
    state.models[noise_type] = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    state.training.pop(noise_type, None)
    report_checkpoint(state, {"phase": f"trained_{noise_type}", "epoch": history[-1].epoch, "step": history[-1].step})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model-{noise_type}.pt"
        torch.save(
            {
                "state_dict": model.state_dict(),
                "noise_type": noise_type,
                "model": spec.model.model_dump(mode="json"),
                "image_size": data.image_size,
                "epochs": history[-1].epoch,
                "steps": history[-1].step,
            },
            path,
        )
        run.log_artifact(path, "checkpoints")
    return model, schedule


def _evaluate(
    spec: Any,
    models: dict[str, tuple[torch.nn.Module, Any]],
    data: PreparedData,
    distance: PerceptualDistance,
    client: MlflowClient,
    context: SweepContext,
    run: RunLogger,
    device: torch.device,
    trial: TrialRecord,
    state: TrialState,
) -> list[CellSummary]:
    """Evaluate every grid cell on every evaluation split, one MLflow run and one results file per cell.

    Cells already recorded in the trial's state are not evaluated again.
    """
    settings = grid_settings(spec)
    cells = grid_cells(spec.evaluation.methods, spec.evaluation.t)
    results = Path(context.results_dir)
    records = {name: _CELL_RECORD.validate_python(saved) for name, saved in state.cells.items()}
    pending = [cell for cell in cells if cell.name not in records]
    for group in _cell_groups(pending):
        model, schedule = models[group[0].noise]
        model = inference_model(model, device, spec.evaluation.precision)
        # Every t of the group in one ragged batch per split: the same outputs as cell by cell.
        by_split = {
            split: evaluate_grid(
                group,
                {group[0].noise: model},
                schedule,
                data.splits[split],
                split=split,
                noise_for=functools.partial(build_noise, spec),
                distance=distance,
                settings=settings,
                device=device,
                max_batch_size=spec.evaluation.max_batch_size,
            )
            for split in spec.evaluation.splits
        }
        for cell in group:
            records[cell.name] = _log_cell(spec, cell, {split: by_split[split][cell] for split in by_split}, data, client, context, run, trial, results)
            state.cells[cell.name] = _CELL_RECORD.dump_python(records[cell.name])
            state.cell_runs[cell.name] = records[cell.name].mlflow_run_id
            logger.info("trial %s: evaluated cell %d/%d %s", trial.trial_id, len(records), len(cells), cell.name)
            report_checkpoint(state, {"phase": "evaluate", "cells_done": len(records), "cells_total": len(cells)})
    return [
        CellSummary(cell, split, result.metrics, intervals=result.intervals)
        for cell in cells
        for split, result in records[cell.name].splits.items()
    ]


def _cell_groups(cells: list[GridCell]) -> list[list[GridCell]]:
    """Group cells that share a method and a noise type, and so a model and one ragged batch, keeping their order."""
    groups: dict[tuple[str, str], list[GridCell]] = {}
    for cell in cells:
        groups.setdefault((cell.method, cell.noise), []).append(cell)
    return list(groups.values())


def _log_cell(
    spec: Any,
    cell: GridCell,
    outputs: dict[str, CellOutputs],
    data: PreparedData,
    client: MlflowClient,
    context: SweepContext,
    run: RunLogger,
    trial: TrialRecord,
    results: Path,
) -> CellRecord:
    """Open the cell's MLflow run (or reopen it after a resume), log its parameters and results, and close it."""
    cell_run = start_child_run(
        client,
        context.experiment_id,
        run.run_id,
        run_name=cell.name,
        tags={"sweeper.sweep": context.sweep_name, "sweeper.trial_id": trial.trial_id, "sweeper.level": "cell"},
    )
    try:
        cell_run.log_params(
            {"method": cell.method, "noise": cell.noise, "t": cell.t, "t_reference": cell.t * spec.schedule_stride, "T": spec.model.T}
        )
        record = _record_cell(spec, cell, outputs, data, cell_run, trial, results)
    except BaseException:
        cell_run.finish("FAILED")
        raise
    cell_run.finish("FINISHED")
    return record


def _record_cell(
    spec: Any,
    cell: GridCell,
    outputs: dict[str, CellOutputs],
    data: PreparedData,
    cell_run: RunLogger,
    trial: TrialRecord,
    results: Path,
) -> CellRecord:
    """Summarise a cell with intervals, search its post-processing, and log and write the results."""
    splits = data.splits
    reference = (outputs["val"], splits["val"]) if "val" in outputs else None
    split_results = {
        split: split_result(output, splits[split], spec, reference=reference) for split, output in outputs.items()
    }
    for split, result in split_results.items():
        cell_run.log_metrics({f"{split}/{key}": value for key, value in result.metrics.items()})

    postprocess = None
    if spec.evaluation.postprocess.enabled:
        search = run_postprocess(
            outputs,
            splits,
            postprocess_settings(spec, seed=derive_seed(spec.evaluation.seed, "postprocess", cell.name)),
            study_name=_study_name(spec, trial, cell),
            folder=results / trial.trial_id / "postprocess",
        )
        postprocess = postprocess_record(search, splits["test"], spec)
        log_postprocess(cell_run, search, postprocess)

    examples = None
    if "test" in outputs and spec.evaluation.figure_examples:
        examples = figure_png(cell_examples_figure(outputs["test"], per_label=spec.evaluation.figure_examples))
    record = CellRecord(
        trial_id=trial.trial_id, cell=cell, splits=split_results, postprocess=postprocess, mlflow_run_id=cell_run.run_id
    )
    path = write_cell(results, record, examples_png=examples)
    cell_run.log_artifact(path, "results")
    if examples is not None:
        cell_run.log_artifact(path.with_suffix(".png"), "results")
    return record


def _study_name(spec: Any, trial: TrialRecord, cell: GridCell) -> str:
    """Name the study by its cell; a shared RDB needs the sweep and trial in the name too."""
    if spec.evaluation.postprocess.storage is None:
        return cell.name
    return f"{trial.sweep}.{trial.trial_id}.{cell.name}"


def _log_summary(run: RunLogger, spec: Any, summaries: list[CellSummary]) -> dict[str, Any]:
    """Log Table 1, the appendix tables and the AUPRC/AUROC-against-t plot; return the final result."""
    stride = spec.schedule_stride
    report_split = "test" if "test" in spec.evaluation.splits else spec.evaluation.splits[0]
    for name, table in all_tables(summaries, stride=stride, report_on=report_split).items():
        run.log_text(to_csv(table), f"tables/{name}.csv")
        run.log_text(to_markdown(table), f"tables/{name}.md")
        run.log_text(to_latex(table), f"tables/{name}.tex")
    run.log_figure(auc_against_t_figure(summaries, split=report_split, stride=stride), "auc_against_t.png")

    rows = table1(summaries, stride=stride, report_on=report_split)
    chosen_on = "t chosen on validation" if "val" in spec.evaluation.splits and report_split != "val" else "every t"
    final: dict[str, Any] = {
        "phase": "done",
        "table1_markdown": to_markdown(rows),
        "table1_title": f"{report_split} split, {chosen_on}",
    }
    chosen = [s for s in summaries if s.split == report_split]
    selection = {s.cell: s.metrics["auprc"] for s in summaries if s.split == "val"}
    # The best cell is chosen on validation AUPRC only, never on the split it is reported on.
    if chosen and selection and report_split != "val":
        best = max(chosen, key=lambda s: (selection[s.cell], -s.cell.t))
        validation = next(s for s in summaries if s.split == "val" and s.cell == best.cell)
        final.update(
            {
                "best_cell": best.cell.name,
                "best_val_auprc": validation.metrics["auprc"],
                "best_val_auroc": validation.metrics["auroc"],
                f"best_{report_split}_auprc": best.metrics["auprc"],
                f"best_{report_split}_auroc": best.metrics["auroc"],
            }
        )
        run.log_metrics({f"best/{report_split}_auprc": best.metrics["auprc"], f"best/{report_split}_auroc": best.metrics["auroc"]})
        run.set_tags({"sweeper.best_cell": best.cell.name})
    return final
