"""``sweeper launch``: validate the spec, prepare the data, start tracking and run the Ray Tune sweep.

Everything that can be checked is checked before anything is written: the spec,
every combination of the search space, the data sources, the storage path, the
model weights, the tracking server and the resources Ray can offer. The data is
prepared once on the driver and shared with the trials.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.data_setup import prepare_data, resolve_spec_path
from sweeper.driver_state import (
    driver_running,
    read_driver_state,
    read_launch_record,
    read_tracking_record,
    write_driver_state,
    write_launch_record,
    write_tracking_record,
)
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
    new: bool = False
    resume: bool = False
    raw: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the options as JSON data, stored with the sweep so that `sweeper resume` can repeat them."""
        return {
            "spec_path": str(self.spec_path.resolve()),
            "overrides": list(self.overrides),
            "data_root": str(self.data_root.resolve()) if self.data_root else None,
            "tracking_uri": self.tracking_uri,
            "storage": str(self.storage.resolve()) if self.storage else None,
            "name": self.name,
        }

    def with_spec(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Return :meth:`to_record` with the validated spec, so a resume runs exactly what was launched."""
        return {**self.to_record(), "spec": raw}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LaunchOptions:
        """Rebuild the options of a launch from :meth:`to_record`'s output."""
        return cls(
            spec_path=Path(record["spec_path"]),
            overrides=list(record.get("overrides", [])),
            data_root=Path(record["data_root"]) if record.get("data_root") else None,
            tracking_uri=record.get("tracking_uri"),
            storage=Path(record["storage"]) if record.get("storage") else None,
            name=record.get("name"),
            raw=record.get("spec") if isinstance(record.get("spec"), dict) else None,
        )


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
    """Read the spec file, apply ``--set`` and ``--name``, and validate it with its search space.

    A resume uses the spec recorded at launch instead, so later edits of the file cannot change it.
    """
    if options.raw is not None:
        raw = options.raw
        spec = validate(raw)
        check_search_space(raw, spec)
        return raw, spec
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
    _check_tracking_settings(options, spec)
    data_root = resolve_data_root(options, spec)
    check_sources(spec, data_root)
    storage = (options.storage or (Path(spec.storage).expanduser() if spec.storage else default_storage())).resolve()
    check_writable(storage, "storage")
    cache_dir = Path(spec.data.cache_dir).expanduser() if spec.data.cache_dir else default_cache_dir()
    check_writable(cache_dir, "data.cache_dir")
    sweep_folder = storage / spec.name
    if options.resume:
        check_resumable(sweep_folder)
    elif sweep_folder.exists() and not options.new and not any(sweep_folder.glob("experiment_state-*.json")):
        raise LaunchError(
            f"sweep {spec.name!r} in {str(storage)!r} stopped before Ray Tune saved any state, so there is nothing "
            f"to resume; start it again with --new (the old folder is kept under another name), or pick another --name"
        )
    elif sweep_folder.exists() and not options.new:
        raise LaunchError(
            f"sweep {spec.name!r} already exists in {str(storage)!r}; continue it with 'sweeper resume {spec.name}', "
            f"start it over with --new (the old folder is kept under another name), or pick another --name"
        )
    if options.address is None:
        check_local_resources(spec)

    from pipelines.metrics.lpips import load_lpips_weights

    # The driver reads and checks the LPIPS weights once and ships them to the trials, so
    # worker nodes need no copy of the file.
    lpips_weights = _lpips_weights_path(options, spec)
    lpips_state = load_lpips_weights(lpips_weights)
    if not options.resume:
        _claim_sweep_folder(sweep_folder, replace=options.new)
        write_launch_record(sweep_folder, options.with_spec(raw))
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


def _check_tracking_settings(options: LaunchOptions, spec: SweepSpec) -> None:
    """Check the tracking URIs and, for tracking.auth: basic, that the credentials are in the environment.

    Runs before launch.json is written, so a URI with a password in it is never stored.
    """
    from sweeper.tracking_setup import check_tracking_uri, tracking_credentials

    check_tracking_uri(options.tracking_uri)
    check_tracking_uri(spec.tracking.uri)
    tracking_credentials(spec.tracking.auth)


def check_resumable(sweep_folder: Path) -> None:
    """Raise a one-line error unless ``sweep_folder`` contains a sweep that Tune can restore and no driver runs it."""
    name = sweep_folder.name
    if not sweep_folder.is_dir():
        raise LaunchError(f"no sweep {name!r} in {str(sweep_folder.parent)!r}; pass the --storage it was launched with")
    if driver_running(read_driver_state(sweep_folder)):
        raise LaunchError(f"sweep {name!r} is still running (see sweep.json); stop its driver before resuming it")
    states = sorted(sweep_folder.glob("experiment_state-*.json"))
    if not states:
        raise LaunchError(
            f"sweep {name!r} stopped before Ray Tune saved any state, so there is nothing to resume; "
            f"start it again with 'sweeper launch SPEC --name {name} --new'"
        )
    newest = states[-1]
    try:
        json.loads(newest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LaunchError(
            f"sweep state file {str(newest)!r} is damaged ({type(error).__name__}), so Tune cannot restore the sweep; "
            f"restore the file from a backup, or start over with 'sweeper launch SPEC --name {name} --new'"
        ) from None


def _claim_sweep_folder(folder: Path, *, replace: bool) -> None:
    """Create the sweep's folder, failing if another launch created it first; with ``replace`` move an old one aside."""
    if replace and folder.exists():
        kept = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(kept)
        logger.warning("moved the earlier sweep folder %s to %s", folder, kept)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise LaunchError(
            f"sweep {folder.name!r} was created by another launch a moment ago; continue it with "
            f"'sweeper resume {folder.name}' once that launch has stopped"
        ) from None


def run_sweep(options: LaunchOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a whole sweep and return its summary (trial states, MLflow URL).

    A new sweep that fails before Tune has saved any state leaves no folder behind, so the
    same name can be launched again.
    """
    launch = prepare_launch(options)
    sweep_folder = launch.storage / launch.spec.name
    lock = _lock_driver(sweep_folder)
    try:
        return _run_prepared(options, launch, echo)
    except BaseException:
        if not options.resume and not any(sweep_folder.glob("experiment_state-*.json")):
            shutil.rmtree(sweep_folder, ignore_errors=True)
        raise
    finally:
        lock.close()


def _lock_driver(sweep_folder: Path) -> Any:
    """Hold an exclusive lock on the sweep folder for this driver, so two drivers never run one sweep.

    NOTE: ``flock`` is not shared between hosts on every network file system; the lock then
    only guards against a second driver on the same machine.
    """
    handle = (sweep_folder / ".driver.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LaunchError(
            f"sweep {sweep_folder.name!r} is being run by another sweeper process on this machine; "
            "wait for it to end, or stop it first"
        ) from None
    return handle


def _run_prepared(options: LaunchOptions, launch: PreparedLaunch, echo: Callable[[str], None]) -> dict[str, Any]:
    spec = launch.spec

    from sweeper.tracking_setup import open_tracking, tracking_credentials
    from sweeper.tune_runner import check_cluster, connect_ray, describe_cluster, disconnect_ray, run_tuner

    sweep_folder = launch.storage / spec.name
    previous = read_tracking_record(sweep_folder) if options.resume else None
    if options.resume and previous is None:
        raise LaunchError(
            f"sweep {spec.name!r} has no readable tracking.json, so its MLflow runs are unknown; restore the file from "
            f"a backup to resume, or start over with --new, which keeps the old folder but runs every trial again"
        )
    uri = options.tracking_uri or (previous["uri"] if previous else None) or spec.tracking.uri
    tracking = open_tracking(uri, spec.tracking.server_root, echo=echo, auth=tracking_credentials(spec.tracking.auth))
    # Ray and the cluster checks come before the data, so that a wrong address or a node that
    # cannot see the storage fails in seconds rather than after minutes of preparation.
    started_ray = connect_ray(options.address, spec)
    try:
        if options.address is not None:
            # 'auto' joins whichever cluster runs on this machine, so the output names the one joined.
            echo(describe_cluster(options.address))
        check_cluster(launch, tracking.uri)
        echo(f"Preparing data for sweep {spec.name!r} ({count_trials(spec)} trials)")
        data = prepare_data(spec, spec_path=launch.spec_path, data_root=launch.data_root, cache_dir=launch.cache_dir)
        counts = data.counts()
        echo(
            "  "
            + ", ".join(f"{split}: {c['healthy']} healthy / {c['pathological']} pathological" for split, c in counts.items())
            + (" (cache hit)" if data.cache_hit else "")
        )
        if previous is not None:
            experiment_id, sweep_run_id = previous["experiment_id"], previous["sweep_run_id"]
            tracking.client.update_run(sweep_run_id, status="RUNNING")
            echo(f"Resuming sweep {spec.name!r}")
        else:
            experiment_id, sweep_run_id = _start_sweep_run(tracking, launch, data)
        echo(f"MLflow: {tracking.experiment_url(experiment_id)}")
        status = "FAILED"
        write_driver_state(sweep_folder, "running")
        write_tracking_record(sweep_folder, uri=tracking.uri, experiment_id=experiment_id, sweep_run_id=sweep_run_id)
        try:
            summary = run_tuner(launch, data, tracking, experiment_id, sweep_run_id, restore=options.resume)
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
            write_driver_state(sweep_folder, {"FINISHED": "finished", "KILLED": "interrupted"}.get(status, "failed"))
            _close_orphaned_runs(tracking.client, experiment_id, spec.name, sweep_run_id)
            _end_sweep_run(tracking.client, sweep_run_id, status)
    finally:
        if started_ray:
            disconnect_ray()
    summary["mlflow_url"] = tracking.experiment_url(experiment_id)
    summary["storage"] = str(launch.storage / spec.name)
    return summary


def _close_orphaned_runs(client: Any, experiment_id: str, sweep_name: str, sweep_run_id: str) -> None:
    """Mark trial and cell runs of the sweep that are still RUNNING as KILLED, since no trial runs after Tune returns.

    A stopped trial closes its own runs, but Tune kills trial processes that do not stop in
    time, and a killed process cannot.
    """
    from mlflow.exceptions import MlflowException

    try:
        orphans = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`sweeper.sweep` = '{sweep_name}' and attributes.status = 'RUNNING'",
            max_results=10000,
        )
        for run in orphans:
            if run.info.run_id != sweep_run_id:
                client.set_terminated(run.info.run_id, status="KILLED")
                logger.info("marked MLflow run %s (%s) as KILLED: its trial had stopped", run.info.run_id, run.info.run_name)
    except MlflowException as error:
        logger.warning("could not close the sweep's unfinished MLflow runs: %s", str(error).splitlines()[0])


def _end_sweep_run(client: Any, run_id: str, status: str) -> None:
    """Mark the sweep's MLflow run as ended; an unreachable server costs a warning, not the summary."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_terminated(run_id, status=status)
    except MlflowException as error:
        logger.warning("could not mark the sweep's MLflow run %s as %s: %s", run_id, status, str(error).splitlines()[0])


def resume_options(name: str, *, storage: Path | None, address: str | None, tracking_uri: str | None) -> LaunchOptions:
    """Return the options the sweep ``name`` was launched with, marked for a resume, with any new address or URI."""
    folder = (storage or default_storage()).expanduser().resolve() / name
    record = read_launch_record(folder)
    if record is None:
        if not folder.is_dir():
            raise LaunchError(f"no sweep {name!r} in {str(folder.parent)!r}; pass the --storage it was launched with")
        raise LaunchError(
            f"sweep {name!r} has no readable launch.json, so the options it was launched with are unknown; "
            f"restore the file from a backup to resume, or start over with 'sweeper launch SPEC --name {name} --new', "
            f"which keeps the old folder but runs every trial again"
        )
    options = LaunchOptions.from_record(record)
    launched_as = (options.raw or {}).get("name")
    if launched_as is not None and launched_as != name:
        # Its Tune state and MLflow runs belong to that name, so resuming under another would split the sweep.
        raise LaunchError(
            f"folder {str(folder)!r} contains sweep {launched_as!r}, not {name!r}; rename the folder back to "
            f"{launched_as!r} and run 'sweeper resume {launched_as}'"
        )
    options.storage = folder.parent
    options.name = name
    options.address = address
    options.tracking_uri = tracking_uri or options.tracking_uri
    options.resume = True
    return options


def finished(options: LaunchOptions) -> bool:
    """Return whether the sweep that ``options`` resume ended with every trial done, so a resume would run nothing."""
    state = read_driver_state(options.storage / options.name)
    return state is not None and state.get("status") == "finished"


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
