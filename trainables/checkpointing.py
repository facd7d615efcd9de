"""Trial checkpoints through Tune: model weights, training state, evaluated cells and MLflow run ids.

A trial reports a checkpoint every ``training.checkpoint.every_epochs`` epochs, when a
model finishes training, and after every grid cell. Tune keeps the newest
``training.checkpoint.keep`` of them in the trial's storage folder. A restored trial
reads the newest one. If that one is missing or damaged, it falls back to the one before
with a warning, rather than starting again from zero.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ray import tune

from pipelines.diffusion.training import TrainingCheckpoint

logger = logging.getLogger(__name__)

STATE_FILE = "trial-state.pt"
FORMAT_VERSION = 1


@dataclass
class TrialState:
    """What a trial has done so far, by noise type and by grid cell.

    ``models`` contains the weights of every model that finished training, and ``training``
    the state of the one in progress. ``cells`` contains the results record (as JSON data) of
    every evaluated cell, and ``cell_runs`` the MLflow run id of every cell that has one.
    """

    trial_run_id: str
    models: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    training: dict[str, TrainingCheckpoint] = field(default_factory=dict)
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    cell_runs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "trial_run_id": self.trial_run_id,
            "models": self.models,
            "training": {noise: checkpoint.to_dict() for noise, checkpoint in self.training.items()},
            "cells": self.cells,
            "cell_runs": self.cell_runs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialState:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"trial checkpoint format {data.get('version')!r} is not {FORMAT_VERSION}")
        return cls(
            trial_run_id=data["trial_run_id"],
            models=data["models"],
            training={noise: TrainingCheckpoint.from_dict(value) for noise, value in data["training"].items()},
            cells=data["cells"],
            cell_runs=data["cell_runs"],
        )


def report_checkpoint(state: TrialState, metrics: dict[str, Any]) -> None:
    """Report ``metrics`` to Tune together with a checkpoint of ``state``."""
    with tempfile.TemporaryDirectory(prefix="trial-checkpoint-") as folder:
        torch.save(state.to_dict(), Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def restore_state() -> TrialState | None:
    """Return the state of the newest readable checkpoint of this trial, or None for a fresh trial.

    When the newest checkpoint is missing or damaged, older ones kept next to it are tried
    in turn, each failure logged as a warning.
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    newest = Path(checkpoint.path)
    candidates = [newest, *sorted((p for p in newest.parent.glob("checkpoint_*") if p != newest and p.name < newest.name), reverse=True)]
    for folder in candidates:
        try:
            return load_state(folder / STATE_FILE)
        except (OSError, ValueError, KeyError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            logger.warning("trial checkpoint %s is unreadable (%s: %s); trying the one before it", folder, type(error).__name__, error)
    raise RuntimeError(
        f"no readable trial checkpoint in {str(newest.parent)!r} (tried {len(candidates)}); "
        "start the sweep over with 'sweeper launch SPEC --name NAME --new' (the old folder is kept)"
    )


def load_state(path: Path) -> TrialState:
    """Read a trial state file written by :func:`report_checkpoint`."""
    return TrialState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
