"""Turning the product's user-facing errors into one-line CLI errors, without tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

# Errors caused by the user's input or environment, by module and class name. A class
# is looked up only if its module was imported, so this list costs no import time.
USER_ERRORS = (
    ("sweeper.spec", "SpecError"),
    ("sweeper.launch", "LaunchError"),
    ("sweeper.status", "SweepNotFoundError"),
    ("sweeper.tune_runner", "RayConnectionError"),
    ("sweeper.weights", "WeightsDownloadError"),
    ("pipelines.data.dataset", "EmptyDatasetError"),
    ("pipelines.data.roboflow", "DataSourceError"),
    ("pipelines.data.split", "SplitError"),
    ("pipelines.metrics.lpips_weights", "LPIPSWeightsError"),
    ("pipelines.curation.exclude", "ExcludeListError"),
    ("pipelines.curation.sononet", "SonoNetWeightsError"),
    ("pipelines.curation.hc18", "HC18DataError"),
    ("mlflow_server.state", "ServerError"),
)


@contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise the product's user-facing errors as ``click.ClickException`` with a one-line message."""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as error:
        known = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
        if known and isinstance(error, known):
            raise click.ClickException(" ".join(str(error).split())) from None
        raise
