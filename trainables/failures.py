"""Out-of-memory failures of a trial: telling them apart from other errors, and what to change.

A trial that runs out of GPU or host memory fails alone: its MLflow run is tagged
``sweeper.status = cuda_oom`` or ``cpu_oom``, and Tune gets a :class:`TrialOutOfMemoryError`
that names the settings to lower.
"""

from __future__ import annotations

import torch

OUT_OF_MEMORY_STATUSES = ("cuda_oom", "cpu_oom")

_ADVICE = {
    "cuda_oom": (
        "GPU memory",
        "lower training.batch_size, evaluation.batch_size or evaluation.max_batch_size, use a smaller model, "
        "or raise resources.gpus so that fewer trials share a GPU",
    ),
    "cpu_oom": (
        "host memory",
        "lower training.batch_size, evaluation.batch_size or evaluation.max_batch_size, use a smaller model, "
        "or lower resources.max_concurrent_trials",
    ),
}


class TrialOutOfMemoryError(RuntimeError):
    """A trial ran out of GPU or host memory; the message names the settings to lower."""


def out_of_memory_status(error: BaseException) -> str | None:
    """Return ``cuda_oom`` or ``cpu_oom`` when ``error`` is a failed allocation on the GPU or the host, else None."""
    if isinstance(error, torch.OutOfMemoryError):
        return "cuda_oom"
    # The CPU allocator raises a plain RuntimeError, and Python raises MemoryError.
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error)):
        return "cpu_oom"
    return None


def out_of_memory_error(trial_id: str, status: str, error: BaseException) -> TrialOutOfMemoryError:
    """Build the error that reports trial ``trial_id`` out of memory and names the settings to lower."""
    memory, advice = _ADVICE[status]
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TrialOutOfMemoryError(f"trial {trial_id} ran out of {memory} ({detail}); {advice}")
