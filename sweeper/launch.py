"""``sweeper launch``: validate the spec, prepare the data, start tracking and run the Ray Tune sweep.

Everything that can be checked is checked before Ray starts: the spec, every
candidate of the search space, the data sources, the storage path and the tracking
server. The data is prepared once on the driver and shared with the trials.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pipelines.data.dataset import PreparedData, prepare_dataset, resolve_source_path
from pipelines.data.records import write_manifest
from pipelines.metrics.lpips import load_lpips_weights, resolve_lpips_weights
from sweeper.paths import default_cache_dir, default_storage
from sweeper.search_space import check_search_space, count_trials, param_space
from sweeper.spec import SpecError, SweepSpec, load_yaml, parse_override, set_dotted, validate
from sweeper.tracking_setup import TrackingTarget, open_tracking

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The sweep cannot start; the message is one line that says what to do."""


@dataclass
class LaunchOptions:
    """The command-line options of ``sweeper launch``; None means: take it from the spec."""

    spec_path: Path
    overrides: list[str] = field(default_factory=list)
    data_root: Path | None = None
    tracking_uri: str | None = None
    storage: Path | None = None
    address: str | None = None
    name: str | None = None


@dataclass
class PreparedLaunch:
    """A validated sweep, ready for Ray: spec, raw spec for the trials, resolved paths and LPIPS weights."""

    raw: dict[str, Any]
    spec: SweepSpec
    data_root: Path
    storage: Path
    cache_dir: Path
    lpips_weights: Path
    lpips_state: dict[str, torch.Tensor]


def load_spec(options: LaunchOptions) -> tuple[dict[str, Any], SweepSpec]:
    """Read the spec file, apply ``--set`` and ``--name``, and validate it with its search space."""
    raw = load_yaml(options.spec_path)
    for override in options.overrides:
        key, value = parse_override(override)
        raw = set_dotted(raw, key, value)
    if options.name is not None:
        raw = set_dotted(raw, "name", options.name)
    spec = validate(raw)
    check_search_space(raw, spec)
    return raw, spec


def prepare_launch(options: LaunchOptions) -> PreparedLaunch:
    """Validate everything that does not need Ray: spec, data sources and storage."""
    raw, spec = load_spec(options)
    data_root = _data_root(options, spec)
    for index, source in enumerate(spec.data.sources):
        if source.kind == "synthetic":
            continue
        folder = resolve_source_path(source.path, data_root)
        if not folder.is_dir():
            raise SpecError(
                f"spec field 'data.sources[{index}].path': folder {str(folder)!r} not found; "
                f"pass --data-root DIR or fix the path (relative paths resolve against the data root {str(data_root)!r})"
            )
    storage = (options.storage or (Path(spec.storage).expanduser() if spec.storage else default_storage())).resolve()
    _check_writable(storage, "storage")
    cache_dir = Path(spec.data.cache_dir).expanduser() if spec.data.cache_dir else default_cache_dir()
    _check_writable(cache_dir, "data.cache_dir")
    if (storage / spec.name).exists():
        raise LaunchError(
            f"sweep {spec.name!r} already exists in {str(storage)!r}; launch it under another --name, "
            f"or remove {str(storage / spec.name)!r} to start over"
        )
    # The driver reads and checks the LPIPS weights once and ships them to the trials, so
    # worker nodes need no copy of the file.
    lpips_weights = _lpips_weights_path(options, spec)
    lpips_state = load_lpips_weights(lpips_weights)
    return PreparedLaunch(
        raw=raw,
        spec=spec,
        data_root=data_root,
        storage=storage,
        cache_dir=cache_dir,
        lpips_weights=lpips_weights,
        lpips_state=lpips_state,
    )


def prepare_data(launch: PreparedLaunch) -> PreparedData:
    """Prepare the sweep's data on the driver (cached on disk)."""
    from trainables.builders import split_settings

    spec = launch.spec
    return prepare_dataset(
        [source.model_dump() for source in spec.data.sources],
        data_root=launch.data_root,
        image_size=spec.data.image_size,
        percentile=spec.data.preprocessing.percentile,
        split=split_settings(spec),
        cache_dir=launch.cache_dir,
    )


def run_sweep(options: LaunchOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a whole sweep and return its summary (trial states, MLflow URL)."""
    launch = prepare_launch(options)
    spec = launch.spec
    tracking = open_tracking(options.tracking_uri or spec.tracking.uri, spec.tracking.server_root, echo=echo)

    echo(f"Preparing data for sweep {spec.name!r} ({count_trials(spec)} trials)")
    data = prepare_data(launch)
    counts = data.counts()
    echo(
        "  "
        + ", ".join(f"{split}: {c['healthy']} healthy / {c['pathological']} pathological" for split, c in counts.items())
        + (" (cache hit)" if data.cache_hit else "")
    )

    experiment_id, sweep_run_id = _start_sweep_run(tracking, launch, data)
    echo(f"MLflow: {tracking.experiment_url(experiment_id)}")

    from sweeper.tune_runner import run_tuner

    status = "FAILED"
    try:
        summary = run_tuner(launch, data, tracking, experiment_id, sweep_run_id, address=options.address)
        if summary["errored"]:
            status = "FAILED"
        elif summary["incomplete"]:
            status = "KILLED"
        else:
            status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.client.set_terminated(sweep_run_id, status=status)
    summary["mlflow_url"] = tracking.experiment_url(experiment_id)
    summary["storage"] = str(launch.storage / spec.name)
    return summary


def _start_sweep_run(tracking: TrackingTarget, launch: PreparedLaunch, data: PreparedData) -> tuple[str, str]:
    """Create the sweep's experiment (or reuse it) and its parent run, with the spec and manifest."""
    from trainables.tracking import RunLogger, flatten

    spec = launch.spec
    experiment_id = tracking.experiment_id(spec.tracking.experiment or spec.name)
    run = tracking.client.create_run(
        experiment_id,
        run_name=spec.name,
        tags={"sweeper.level": "sweep", "sweeper.sweep": spec.name, "sweeper.data_root": str(launch.data_root)},
    )
    sweep = RunLogger(tracking.client, run.info.run_id)
    sweep.log_params(flatten(spec.model_dump(mode="json")))
    sweep.log_params(
        {"sweep.trials": count_trials(spec), "data.cache_key": data.cache_key, "lpips.weights": str(launch.lpips_weights)}
    )
    sweep.log_text(yaml.safe_dump(launch.raw, sort_keys=False), "spec.yaml")
    with tempfile.TemporaryDirectory() as folder:
        manifest = write_manifest(data.records, Path(folder) / "manifest.csv")
        sweep.log_artifact(manifest)
        (launch.storage / spec.name).mkdir(parents=True, exist_ok=True)
        write_manifest(data.records, launch.storage / spec.name / "manifest.csv")
    return experiment_id, run.info.run_id


def _lpips_weights_path(options: LaunchOptions, spec: SweepSpec) -> Path:
    """Resolve evaluation.lpips_weights (relative to the spec file) or $SWEEPER_LPIPS_WEIGHTS."""
    configured = spec.evaluation.lpips_weights
    if configured is None:
        return resolve_lpips_weights(None).resolve()
    path = Path(configured).expanduser()
    if not path.is_absolute():
        path = options.spec_path.parent / path
    return resolve_lpips_weights(path).resolve()


def _data_root(options: LaunchOptions, spec: SweepSpec) -> Path:
    if options.data_root is not None:
        root = options.data_root
    elif spec.data.root is not None:
        root = Path(spec.data.root).expanduser()
        if not root.is_absolute():
            root = options.spec_path.parent / root
    else:
        root = Path.cwd()
    root = root.resolve()
    if not root.is_dir():
        raise SpecError(f"data root {str(root)!r} not found; pass an existing folder with --data-root")
    return root


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise SpecError(
            f"{what} path {str(folder)!r} is not writable ({error.strerror or error}); choose another folder"
        ) from error
    if not os.access(folder, os.W_OK):
        raise SpecError(f"{what} path {str(folder)!r} is not writable; choose another folder")
