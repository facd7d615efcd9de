"""The ``sweeper weights`` commands: download pretrained weights and verify them by git blob id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from sweeper.weights import SONONET_WEIGHTS, WeightsDownloadError, default_weights_dir, fetch_sononet


@dataclass(frozen=True)
class _FetchOptions:
    """Options of ``weights fetch`` that a weights family may use."""

    variant: int
    file_format: str
    dest_dir: Path
    base_url: str | None


def _fetch_sononet(options: _FetchOptions) -> tuple[Path, str]:
    """Fetch one SonoNet file and return its path and verified git blob id."""
    path = fetch_sononet(options.variant, file_format=options.file_format, dest_dir=options.dest_dir, base_url=options.base_url)
    return path, SONONET_WEIGHTS[(options.variant, options.file_format)].blob_id


# Weights families that ``weights fetch NAME`` can download. Each fetcher returns the path of
# the verified file and its git blob id.
_FETCHERS: dict[str, Callable[[_FetchOptions], tuple[Path, str]]] = {"sononet": _fetch_sononet}


@click.group("weights")
def weights_group() -> None:
    """Download pretrained weights and verify them by their git blob id."""


@weights_group.command("fetch")
@click.argument("name", metavar="NAME", type=click.Choice(sorted(_FETCHERS)))
@click.option("--variant", type=click.Choice(["16", "32", "64"]), default="32", show_default=True, help="SonoNet variant, the width of its first convolution.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["npz", "pth"]),
    default="npz",
    show_default=True,
    help="npz is the authors' Lasagne release, pth the state dict of the SonoNet_PyTorch port.",
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to save the file in [default: $SWEEPER_HOME/weights/NAME, with SWEEPER_HOME defaulting to ~/.sweeper].",
)
@click.option("--base-url", metavar="URL", default=None, help="Download URL/<file name> instead of from GitHub, for example from a mirror.")
def fetch(name: str, variant: str, file_format: str, dest: Path | None, base_url: str | None) -> None:
    """Download the weights NAME unless a verified copy is already there.

    The file goes to a temporary name first and is renamed into place only when its git
    blob id matches the published one. The command prints the path and the blob id.
    """
    options = _FetchOptions(int(variant), file_format, dest if dest is not None else default_weights_dir() / name, base_url)
    try:
        path, blob_id = _FETCHERS[name](options)
    except (WeightsDownloadError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"could not write {name} weights to {options.dest_dir}: {error}") from None

    click.echo(str(path))
    click.echo(f"verified git blob id {blob_id}")
