"""``sweeper launch``: validate the spec, prepare the data, start tracking and run the Ray Tune sweep.

Everything that can be checked is checked before anything is written: the spec,
every combination of the search space, the data sources, the storage path, the
model weights, the tracking server and the resources Ray can offer. The data is
prepared once on the driver and shared with the trials.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.data_setup import prepare_data, resolve_spec_path
from sweeper.driver_state import write_driver_state, write_tracking_record
from sweeper.paths import default_cache_dir, default_storage
from sweeper.search_space import check_search_space, count_trials
from sweeper.spec import SpecError, SweepSpec, load_yaml, parse_override, set_dotted, validate

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
    spec_path: Path
    data_root: Path
    storage: Path
    cache_dir: Path
    lpips_weights: Path
    lpips_state: Any


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
    """Validate everything that needs neither Ray nor MLflow: spec, data, storage, resources, weights."""
    raw, spec = load_spec(options)
    data_root = resolve_data_root(options, spec)
    check_sources(spec, data_root)
    storage = (options.storage or (Path(spec.storage).expanduser() if spec.storage else default_storage())).resolve()
    check_writable(storage, "storage")
    cache_dir = Path(spec.data.cache_dir).expanduser() if spec.data.cache_dir else default_cache_dir()
    check_writable(cache_dir, "data.cache_dir")
    if (storage / spec.name).exists():
        raise LaunchError(
            f"sweep {spec.name!r} already exists in {str(storage)!r}; launch it under another --name, "
            f"or remove {str(storage / spec.name)!r} to start over"
        )
    if options.address is None:
        check_local_resources(spec)

    from pipelines.metrics.lpips import load_lpips_weights

    # The driver reads and checks the LPIPS weights once and ships them to the trials, so
    # worker nodes need no copy of the file.
    lpips_weights = _lpips_weights_path(options, spec)
    lpips_state = load_lpips_weights(lpips_weights)
    return PreparedLaunch(
        raw=raw,
        spec=spec,
        spec_path=options.spec_path,
        data_root=data_root,
        storage=storage,
        cache_dir=cache_dir,
        lpips_weights=lpips_weights,
        lpips_state=lpips_state,
    )


def run_sweep(options: LaunchOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a whole sweep and return its summary (trial states, MLflow URL)."""
    launch = prepare_launch(options)
    spec = launch.spec

    from sweeper.tracking_setup import open_tracking
    from sweeper.tune_runner import connect_ray, disconnect_ray, run_tuner

    tracking = open_tracking(options.tracking_uri or spec.tracking.uri, spec.tracking.server_root, echo=echo)
    echo(f"Preparing data for sweep {spec.name!r} ({count_trials(spec)} trials)")
    data = prepare_data(spec, spec_path=launch.spec_path, data_root=launch.data_root, cache_dir=launch.cache_dir)
    counts = data.counts()
    echo(
        "  "
        + ", ".join(f"{split}: {c['healthy']} healthy / {c['pathological']} pathological" for split, c in counts.items())
        + (" (cache hit)" if data.cache_hit else "")
    )

    started_ray = connect_ray(options.address, spec)
    try:
        experiment_id, sweep_run_id = _start_sweep_run(tracking, launch, data)
        echo(f"MLflow: {tracking.experiment_url(experiment_id)}")
        status = "FAILED"
        sweep_folder = launch.storage / spec.name
        write_driver_state(sweep_folder, "running")
        write_tracking_record(sweep_folder, uri=tracking.uri, experiment_id=experiment_id, sweep_run_id=sweep_run_id)
        try:
            summary = run_tuner(launch, data, tracking, experiment_id, sweep_run_id)
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
            write_driver_state(sweep_folder, {"FINISHED": "finished", "KILLED": "interrupted"}.get(status, "failed"))
    finally:
        if started_ray:
            disconnect_ray()
    summary["mlflow_url"] = tracking.experiment_url(experiment_id)
    summary["storage"] = str(launch.storage / spec.name)
    return summary


def _start_sweep_run(tracking: Any, launch: PreparedLaunch, data: Any) -> tuple[str, str]:
    """Create the sweep's experiment (or reuse it) and its parent run, with the spec and manifest."""
    import yaml

    from pipelines.data.records import write_manifest
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
    """Find the LPIPS weights: evaluation.lpips_weights, $SWEEPER_LPIPS_WEIGHTS, torchvision's cache, or the fetched file.

    A relative evaluation.lpips_weights resolves against the spec file's folder. The fetched
    file is the one that ``sweeper weights fetch lpips`` writes to its default folder.
    """
    from pipelines.metrics.lpips import resolve_lpips_weights
    from sweeper.weights import default_lpips_weights_path

    configured = spec.evaluation.lpips_weights
    explicit = None if configured is None else resolve_spec_path(configured, options.spec_path)
    return resolve_lpips_weights(explicit, fetched_path=default_lpips_weights_path()).resolve()


def resolve_data_root(options: LaunchOptions, spec: SweepSpec) -> Path:
    """Return --data-root, else data.root (relative to the spec file), else the working directory."""
    if options.data_root is not None:
        root = options.data_root
    elif spec.data.root is not None:
        root = resolve_spec_path(spec.data.root, options.spec_path)
    else:
        root = Path.cwd()
    root = root.resolve()
    if not root.is_dir():
        raise SpecError(f"data root {str(root)!r} not found; pass an existing folder with --data-root")
    return root


def check_sources(spec: SweepSpec, data_root: Path) -> None:
    """Check that every file-based source's folder exists under the data root."""
    from pipelines.data.sources import resolve_source_path

    for index, source in enumerate(spec.data.sources):
        if source.kind == "synthetic":
            continue
        folder = resolve_source_path(source.path, data_root)
        if not folder.is_dir():
            raise SpecError(
                f"spec field 'data.sources[{index}].path': folder {str(folder)!r} not found; "
                f"pass --data-root DIR or fix the path (relative paths resolve against the data root {str(data_root)!r})"
            )


def check_local_resources(spec: SweepSpec) -> None:
    """Reject a trial that asks for more CPUs or GPUs than this machine has, since it would never start."""
    cpus = os.cpu_count() or 1
    if spec.resources.cpus > cpus:
        raise SpecError(
            f"spec field 'resources.cpus': got {spec.resources.cpus:g}, but this machine has {cpus} CPUs, so no "
            f"trial could start; lower it or join a larger cluster with --address"
        )
    if spec.resources.gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        if spec.resources.gpus > gpus:
            raise SpecError(
                f"spec field 'resources.gpus': got {spec.resources.gpus:g}, but this machine has {gpus} GPUs, so no "
                f"trial could start; set resources.gpus=0 or join a GPU cluster with --address"
            )


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and check that a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise SpecError(
            f"{what} path {str(folder)!r} is not writable ({error.strerror or error}); choose another folder"
        ) from error
