"""Download pretrained weights and verify each file by its git blob id before it is used.

The published weights are plain files in public git repositories, so the git blob id
(SHA-1 of ``b"blob <size>\\0"`` followed by the content) identifies each file exactly without
knowing its size in advance. A download goes to a temporary file next to its destination and
is renamed into place only after its blob id matches the table below.

Example:
    >>> SONONET_WEIGHTS[(16, "npz")].file_name
    'SonoNet16.npz'
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, get_args
from urllib.parse import urlsplit

import requests

from sweeper.paths import sweeper_home

logger = logging.getLogger(__name__)

GITHUB_RAW_URL = "https://raw.githubusercontent.com"
DEFAULT_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20

WeightsFormat = Literal["npz", "pth"]


@dataclass(frozen=True)
class WeightsFile:
    """A weights file in a public git repository, identified by its git blob id."""

    repository: str
    path: str
    blob_id: str
    branch: str = "master"

    @property
    def file_name(self) -> str:
        """Base name of the file, which is also its name on disk after a download."""
        return PurePosixPath(self.path).name

    @property
    def url(self) -> str:
        """Address of the file on raw.githubusercontent.com."""
        return f"{GITHUB_RAW_URL}/{self.repository}/{self.branch}/{self.path}"


SONONET_WEIGHTS: dict[tuple[int, WeightsFormat], WeightsFile] = {
    (16, "npz"): WeightsFile("baumgach/SonoNet-weights", "SonoNet16.npz", "0227172ddbae62e67c0e309ebfb93f0e7ea1b1f0"),
    (32, "npz"): WeightsFile("baumgach/SonoNet-weights", "SonoNet32.npz", "b8c9f0614266d99fcec6fa3800bd5ec10c0cdec9"),
    (64, "npz"): WeightsFile("baumgach/SonoNet-weights", "SonoNet64.npz", "e8b7981b3997e221d1d4bfdcb68f73d436c5856c"),
    (16, "pth"): WeightsFile("rdroste/SonoNet_PyTorch", "sononet/SonoNet16.pth", "a01e9f4e0d294f84a0461b2fd4aeceda8800cc04"),
    (32, "pth"): WeightsFile("rdroste/SonoNet_PyTorch", "sononet/SonoNet32.pth", "0b53fac85ebe430db8bf3ad7abb79a8b7b7fc547"),
    (64, "pth"): WeightsFile("rdroste/SonoNet_PyTorch", "sononet/SonoNet64.pth", "f096ffd1a6b74dab7b62a7e04bc247c1a32eef53"),
}
"""SonoNet weights by (variant, format): the authors' Lasagne release (``npz``, Apache-2.0) and
the state dicts of the PyTorch port rdroste/SonoNet_PyTorch (``pth``)."""


class WeightsDownloadError(RuntimeError):
    """Error for a weights download that failed or whose content did not match its git blob id."""


def default_weights_dir() -> Path:
    """Return the folder for downloaded weights: ``$SWEEPER_HOME/weights``."""
    return sweeper_home() / "weights"


def git_blob_id(path: str | os.PathLike[str]) -> str:
    """Compute the git blob id of a file, reading it in chunks: SHA-1 of ``b"blob <size>\\0" + content``.

    Raises:
        WeightsDownloadError: if the file changed size while it was read.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode("ascii"))

    read = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            read += len(chunk)

    if read != size:
        raise WeightsDownloadError(f"{path} must keep its size while its git blob id is computed, but it changed from {size} to {read} bytes. Retry once nothing writes to it")
    return digest.hexdigest()


def fetch_sononet(
    variant: int,
    *,
    file_format: WeightsFormat = "npz",
    dest_dir: Path,
    base_url: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download SonoNet weights into ``dest_dir`` unless they are already there, and return the file's path.

    By default the file comes from its GitHub repository (see :data:`SONONET_WEIGHTS`). With
    ``base_url``, it comes from ``<base_url>/<file name>``, for example a mirror or a local
    folder served over HTTP. A file already in ``dest_dir`` with the expected git blob id is
    returned without any request. One with another blob id is downloaded again and replaced.

    Raises:
        ValueError: if ``variant``, ``file_format``, ``base_url`` or ``timeout_s`` is invalid.
        WeightsDownloadError: if the download fails or its git blob id differs from the
            expected one. No partial file is left in ``dest_dir`` then.
    """
    if isinstance(variant, bool) or variant not in (16, 32, 64):
        raise ValueError(f"SonoNet variant must be one of [16, 32, 64], but got {variant!r}")
    if file_format not in get_args(WeightsFormat):
        raise ValueError(f"file_format must be one of {list(get_args(WeightsFormat))}, but got {file_format!r}")
    return fetch_verified(SONONET_WEIGHTS[(variant, file_format)], dest_dir=dest_dir, base_url=base_url, timeout_s=timeout_s)


def fetch_verified(entry: WeightsFile, *, dest_dir: Path, base_url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download ``entry`` into ``dest_dir`` and verify its git blob id, unless a verified copy is already there.

    See :func:`fetch_sononet` for ``base_url``, ``timeout_s`` and the errors raised.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, but got {timeout_s}")
    url = entry.url if base_url is None else _mirror_url(base_url, entry.file_name)

    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / entry.file_name

    if target.is_file():
        present_id = git_blob_id(target)
        if present_id == entry.blob_id:
            logger.info("Using %s, already present with git blob id %s", target, present_id)
            return target
        logger.warning("Replacing %s: its git blob id is %s, but %s was expected", target, present_id, entry.blob_id)

    descriptor, temporary_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry.file_name}.", suffix=".part")
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            _download(url, file, timeout_s=timeout_s)

        actual_id = git_blob_id(temporary)
        if actual_id != entry.blob_id:
            raise WeightsDownloadError(
                f"download of {url} has git blob id {actual_id}, but {entry.file_name} must have {entry.blob_id}. "
                "The server sent other content: check the URL or mirror"
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)

    logger.info("Downloaded %s from %s and verified git blob id %s", target, url, entry.blob_id)
    return target


def _mirror_url(base_url: str, file_name: str) -> str:
    """Return ``<base_url>/<file_name>`` after checking that ``base_url`` is an http(s) URL."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http:// or https:// URL with a host, but got {base_url!r}")
    return f"{base_url.rstrip('/')}/{file_name}"


def _is_loopback_url(url: str) -> bool:
    """Check whether ``url`` points at this machine: localhost or a loopback IP address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _download(url: str, file: BinaryIO, *, timeout_s: float) -> None:
    """Stream ``url`` into the open binary ``file``, raising WeightsDownloadError on any failure."""
    logger.info("Downloading %s", url)
    with requests.Session() as session:
        # Proxy variables (HTTP_PROXY, ALL_PROXY) would send a loopback download to the proxy
        # host, which cannot reach this machine's loopback server, so they are ignored for it.
        session.trust_env = not _is_loopback_url(url)
        try:
            with session.get(url, stream=True, timeout=timeout_s) as response:
                if response.status_code != 200:
                    raise WeightsDownloadError(f"download of {url} failed with HTTP status {response.status_code}. Check the URL, or pass another --base-url")
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    file.write(chunk)
        except requests.RequestException as error:
            raise WeightsDownloadError(f"download of {url} failed: {type(error).__name__}: {error}. Check the network connection, or pass --base-url to use a mirror") from error
