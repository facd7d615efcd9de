"""Benchmark of the preprocessing cache: preparing the data again against preparing it the first time.

Both paths run ``sweeper.data_setup.prepare_data`` (which calls
``pipelines.data.dataset.prepare_dataset``) on the synthetic phantoms of
``configs/demo.yaml``. The baseline is a cache miss: each run starts from an empty cache
folder. The command is a cache hit, which reads the entry that an earlier preparation
wrote. The ratio is the hit's time over the miss's time, so its inverse is the speed-up.
``--quick`` prepares 12 phantoms in place of 160.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch

from benchmarks import Context, Row, machine_for
from pipelines.data.dataset import PreparedData
from sweeper.data_setup import prepare_data
from sweeper.spec import SweepSpec, load_yaml, set_dotted, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPEC_PATH = CONFIGS / "demo.yaml"
QUICK_OVERRIDES = {"data.sources.0.healthy": 8, "data.sources.0.pathological": 4}


def prepare_cpu(context: Context) -> list[Row]:
    """Time a cache hit against a cache miss of the demo's data preparation."""
    spec = _load_spec(quick=context.quick)
    images = sum(source.healthy + source.pathological for source in spec.data.sources)
    context.log(f"prepare_cpu: {images} synthetic phantoms of {SPEC_PATH.name}")

    with tempfile.TemporaryDirectory(prefix="benchmark-cache-") as folder:
        root = Path(folder)
        misses = itertools.count()

        def miss() -> None:
            _prepare(spec, root / f"miss-{next(misses)}")

        def hit() -> None:
            data = _prepare(spec, root / "hit")
            if not data.cache_hit:
                raise RuntimeError(f"expected a cache hit in {root / 'hit'}, but the data was prepared again")

        _prepare(spec, root / "hit")
        baseline = context.time(miss)
        timing = context.time(hit)

    command = f"prepare_data({SPEC_PATH.name}, {images} phantoms), cache hit"
    baseline_command = f"prepare_data({SPEC_PATH.name}, {images} phantoms), empty cache folder"
    note = f"{images} phantoms at {spec.data.image_size} px"
    return [Row("prepare_cpu", machine_for(torch.device("cpu")), command, baseline_command, timing, baseline, note=note)]


def _load_spec(*, quick: bool) -> SweepSpec:
    raw = load_yaml(SPEC_PATH)
    if quick:
        for key, value in QUICK_OVERRIDES.items():
            raw = set_dotted(raw, key, value)
    return validate(raw)


def _prepare(spec: SweepSpec, cache_dir: Path) -> PreparedData:
    return prepare_data(spec, spec_path=SPEC_PATH, data_root=CONFIGS, cache_dir=cache_dir)


BENCHMARKS = {"prepare_cpu": prepare_cpu}
