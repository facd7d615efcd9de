"""The outcome of one post-processing search: the chosen candidate, its threshold and its validation and test results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.postprocess.thresholds import ConfusionCounts


@dataclass
class PostprocessResult:
    """The best candidate of a study, chosen and thresholded on validation, and its test results.

    ``val_scores`` and ``test_scores`` are the image scores of the best candidate, in the order
    of ``val_ids`` and ``test_ids``, for bootstrap intervals. ``history`` lists every finished
    trial as ``{"number", "state", "value", "params"}``, and ``importances`` maps parameter
    names to PED-ANOVA importances that sum to 1, or is empty when Optuna cannot tell the
    parameters apart.
    """

    study_name: str
    storage: str
    n_complete_trials: int
    best_trial: int
    best_params: dict[str, Any]
    objective: str
    best_value: float
    threshold_rule: str
    threshold: float
    val_auprc: float
    val_auroc: float
    val_counts: ConfusionCounts
    test_auprc: float
    test_auroc: float
    test_counts: ConfusionCounts
    val_ids: list[str]
    val_scores: np.ndarray
    test_ids: list[str]
    test_scores: np.ndarray
    history: list[dict[str, Any]]
    importances: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Return every field as JSON-ready values, with arrays as lists and counts as dicts."""
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "n_complete_trials": self.n_complete_trials,
            "best_trial": self.best_trial,
            "best_params": dict(self.best_params),
            "objective": self.objective,
            "best_value": self.best_value,
            "threshold_rule": self.threshold_rule,
            "threshold": self.threshold,
            "val": {"auprc": self.val_auprc, "auroc": self.val_auroc, **_json_counts(self.val_counts)},
            "test": {"auprc": self.test_auprc, "auroc": self.test_auroc, **_json_counts(self.test_counts)},
            "val_ids": list(self.val_ids),
            "val_scores": self.val_scores.tolist(),
            "test_ids": list(self.test_ids),
            "test_scores": self.test_scores.tolist(),
            "history": [dict(entry) for entry in self.history],
            "importances": dict(self.importances),
        }


def _json_counts(counts: ConfusionCounts) -> dict[str, float | None]:
    """Return the counts with NaN rates as ``None``, which JSON can store."""
    return {name: None if isinstance(value, float) and np.isnan(value) else value for name, value in counts.to_dict().items()}
