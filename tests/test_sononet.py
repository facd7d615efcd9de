"""Tests for SonoNet plane classification, its two weight formats and the verified weights download."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipelines.curation.sononet import (
    SONONET_LABELS,
    BlankFrameError,
    CropBoxError,
    PlanePrediction,
    SonoNet,
    SonoNetVariantError,
    SonoNetWeightsError,
    classify_planes,
    detect_fan,
    keep_plane,
    load_sononet,
    sononet_input,
)
from sweeper.weights import SONONET_WEIGHTS, WeightsDownloadError, fetch_sononet, git_blob_id
from sweeper.weights_commands import weights_group
from tests.conftest import SHARED, serve_folder

SONONET_DIR = SHARED / "models" / "sononet"
NPZ_PATH = SONONET_DIR / "SonoNet16.npz"
NPZ_BLOB_ID = "0227172ddbae62e67c0e309ebfb93f0e7ea1b1f0"

# The authors crop their 735×975 example frames to rows 115:734 and columns 81:874.
AUTHORS_BOX = (115, 734, 81, 874)
# On these GE Voluson frames the header bar with the probe and date ends at row 73.
HEADER_LAST_ROW = 73
CONFIDENCE_TOLERANCE = 0.05

@dataclass(frozen=True)
class ExampleFrame:
    """One example frame of the SonoNet release with its expected label and reference confidence."""

    file: str
    image: np.ndarray
    label: str
    confidence: float


@pytest.fixture(scope="module")
def npz_path() -> Path:
    """Return the authors' SonoNet16.npz, skipping the test where the shared copy is missing."""
    if not NPZ_PATH.is_file():
        pytest.skip(f"SonoNet weights not found at {NPZ_PATH}")
    return NPZ_PATH


@pytest.fixture(scope="module")
def sononet16(npz_path: Path) -> SonoNet:
    """Load SonoNet-16 from the authors' .npz once for the module."""
    return load_sononet(npz_path)


@pytest.fixture(scope="module")
def examples() -> list[ExampleFrame]:
    """Read the 13 example frames and the expected labels and confidences listed for them."""
    if not (SONONET_DIR / "expected_predictions.csv").is_file():
        pytest.skip(f"SonoNet example frames not found in {SONONET_DIR}")
    with (SONONET_DIR / "expected_predictions.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    frames = []
    for row in rows:
        with Image.open(SONONET_DIR / "example_images" / row["file"]) as image:
            frames.append(ExampleFrame(row["file"], np.asarray(image.convert("RGB")), row["expected_label"], float(row["reference_confidence"])))
    return frames


def port_state_dict(npz_path: Path) -> dict[str, torch.Tensor]:
    """Convert the authors' .npz into the layout of the SonoNet_PyTorch port, as the port would store it.

    The port names feature convolutions features.<block>.<index>.0 and their batch norms
    .1 (eps 1e-4), and its adaption layers adaption.0 (convolution), .1 (batch norm, eps
    1e-5), .3 and .4. Its running_var is 1 / inv_std² - eps, so it computes inv_std again.
    """
    prefixes = [(f"features.{block}.{index}.0", f"features.{block}.{index}.1", 1e-4) for block, count in enumerate((2, 2, 3, 3, 3)) for index in range(count)]
    prefixes += [("adaption.0", "adaption.1", 1e-5), ("adaption.3", "adaption.4", 1e-5)]

    state: dict[str, torch.Tensor] = {}
    with np.load(npz_path) as arrays:
        for layer, (conv, bn, eps) in enumerate(prefixes):
            kernel, beta, gamma, mean, inv_std = (arrays[f"arr_{5 * layer + offset}"].astype(np.float64) for offset in range(5))
            state[f"{conv}.weight"] = torch.tensor(kernel, dtype=torch.float32)
            state[f"{bn}.weight"] = torch.tensor(gamma, dtype=torch.float32)
            state[f"{bn}.bias"] = torch.tensor(beta, dtype=torch.float32)
            state[f"{bn}.running_mean"] = torch.tensor(mean, dtype=torch.float32)
            state[f"{bn}.running_var"] = torch.tensor(inv_std**-2 - eps, dtype=torch.float32)
            state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    return state


# ----------------------------------------------------------------------------- classification


def test_example_frames_match_reference(sononet16: SonoNet, examples: list[ExampleFrame]) -> None:
    predictions = classify_planes(sononet16, [frame.image for frame in examples], crop=AUTHORS_BOX, batch_size=5)

    assert len(predictions) == len(examples)
    for frame, prediction in zip(examples, predictions):
        assert prediction.label == frame.label, f"{frame.file}: got {prediction.label} ({prediction.confidence:.3f})"
        assert abs(prediction.confidence - frame.confidence) <= CONFIDENCE_TOLERANCE, f"{frame.file}: confidence {prediction.confidence:.3f}, reference {frame.confidence:.3f}"
        assert prediction.probabilities.shape == (len(SONONET_LABELS),)
        assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("crop", ["auto", "none"])
def test_other_crops_keep_brain_tv(sononet16: SonoNet, examples: list[ExampleFrame], crop: str) -> None:
    # Frames whose reference confidence is low (3VV 0.51, Lips 0.62) change label with the crop,
    # so only the transventricular frame, the one curation keeps, is checked here.
    by_file = {frame.file: frame for frame in examples}
    predictions = classify_planes(sononet16, [by_file["BRAIN-TV.tiff"].image, by_file["BRAIN-CB.tiff"].image], crop=crop)

    assert keep_plane(predictions[0]) == (True, f"plane Brain (Tv.) ({predictions[0].confidence:.2f}) at or above 0.9")
    assert keep_plane(predictions[1])[0] is False


@pytest.mark.parametrize("variant", [16, 32, 64])
def test_random_variant_outputs_14_scores(variant: int) -> None:
    torch.manual_seed(0)
    model = SonoNet(variant).eval()

    with torch.inference_mode():
        scores = model(torch.randn(2, 1, 64, 80))
        probabilities = model.predict_proba(torch.randn(2, 1, 64, 80))

    assert scores.shape == (2, len(SONONET_LABELS))
    assert probabilities.sum(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert model.layers[0].conv.out_channels == variant
    assert model.layers[13].conv.out_channels == 4 * variant


def test_sononet_rejects_colour_batch() -> None:
    with pytest.raises(ValueError, match=r"must have shape \(B, 1, H, W\), but got \(1, 3, 32, 32\)"):
        SonoNet(16)(torch.zeros(1, 3, 32, 32))


def test_keep_plane_reasons() -> None:
    cerebellum = PlanePrediction("Brain (Cb.)", 0.97, np.zeros(14))
    unsure = PlanePrediction("Brain (Tv.)", 0.62, np.zeros(14))
    confident = PlanePrediction("Brain (Tv.)", 0.95, np.zeros(14))

    assert keep_plane(cerebellum) == (False, "plane Brain (Cb.) (0.97), not one of Brain (Tv.)")
    assert keep_plane(cerebellum, labels=["Brain (Tv.)", "Femur"]) == (False, "plane Brain (Cb.) (0.97), not one of Brain (Tv.), Femur")
    assert keep_plane(unsure) == (False, "plane confidence 0.62 below 0.9")
    assert keep_plane(PlanePrediction("Brain (Tv.)", 0.8996, np.zeros(14))) == (False, "plane confidence 0.8996 below 0.9")
    assert keep_plane(confident) == (True, "plane Brain (Tv.) (0.95) at or above 0.9")
    assert keep_plane(cerebellum, labels=["Brain (Tv.)", "Brain (Cb.)"])[0] is True
    with pytest.raises(ValueError, match=r"labels must be a non-empty list of SonoNet labels"):
        keep_plane(confident, labels=["Brain"])


# ----------------------------------------------------------------------------- input recipe and fan


def test_sononet_input_is_standardised() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)

    tensor = sononet_input(frame, crop="none")

    assert tensor.shape == (1, 224, 288)
    assert tensor.dtype == torch.float32
    assert float(tensor.mean()) == pytest.approx(0.0, abs=1e-2)
    assert float(tensor.std(correction=0)) == pytest.approx(255.0, rel=1e-4)


def test_sononet_input_ignores_intensity_scale() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (300, 400), dtype=np.uint8)
    box = (10, 290, 20, 380)

    from_unit = sononet_input(frame.astype(np.float32) / 255.0, crop=box)
    from_large = sononet_input(frame.astype(np.float32) * 40.0, crop=box)
    from_uint8 = sononet_input(frame, crop=box)

    assert torch.allclose(from_unit, from_large, atol=1e-2)
    # uint8 frames are rounded to integers after resizing and float frames are not, which on
    # this noise frame moves pixels by a few percent of the standard deviation (255).
    assert float((from_unit - from_uint8).abs().mean()) < 0.02 * 255


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        ((0, 400, 0, 100), r"must lie inside the 300×400 frame"),
        ((50, 50, 0, 100), r"row0 < row1"),
        ("center", r"crop must be 'none', 'auto' or"),
        ((0.0, 10.0, 0.0, 10.0), r"four integers"),
    ],
)
def test_sononet_input_rejects_bad_crop(crop: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sononet_input(np.ones((300, 400), dtype=np.uint8), crop=crop)


def test_sononet_input_rejects_box_outside_frame() -> None:
    with pytest.raises(CropBoxError, match=r"must lie inside the 300×400 frame .* but got \(5000, 6000, 5000, 6000\)"):
        sononet_input(np.ones((300, 400), dtype=np.uint8), crop=(5000, 6000, 5000, 6000))


@pytest.mark.parametrize("crop", ["none", "auto", (0, 100, 0, 100)])
@pytest.mark.parametrize("value", [0, 255], ids=["black", "white"])
def test_blank_frame_raises_blank_frame_error(value: int, crop: object) -> None:
    with pytest.raises(BlankFrameError, match=r"frame is black|must vary, but the frame cropped to rows .* is constant"):
        sononet_input(np.full((300, 400, 3), value, dtype=np.uint8), crop=crop)


def test_detect_fan_drops_text_and_border() -> None:
    frame = np.zeros((200, 300, 3), dtype=np.uint8)
    frame[10:20, 20:280] = 90  # header bar, separated from the fan by black rows
    frame[30:190, 50:250] = np.random.default_rng(2).integers(40, 255, (160, 200, 1), dtype=np.uint8)
    frame[40:60, 270:272] = 255  # a text stroke, two pixels wide, beside the fan

    assert detect_fan(frame) == (30, 190, 50, 250)


def test_detect_fan_rejects_black_frame() -> None:
    with pytest.raises(BlankFrameError, match="frame is black"):
        detect_fan(np.zeros((100, 120), dtype=np.uint8))


def test_detect_fan_on_examples(examples: list[ExampleFrame]) -> None:
    for frame in examples:
        row0, row1, col0, col1 = detect_fan(frame.image)
        height, width = frame.image.shape[:2]

        assert 0 <= row0 < row1 <= height, f"{frame.file}: rows {row0}:{row1}"
        assert 0 <= col0 < col1 <= width, f"{frame.file}: columns {col0}:{col1}"
        assert row0 > HEADER_LAST_ROW, f"{frame.file}: box starts at row {row0}, inside the header"
        assert intersection_over_union((row0, row1, col0, col1), AUTHORS_BOX) >= 0.7, f"{frame.file}: box {(row0, row1, col0, col1)}"


def intersection_over_union(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> float:
    """Compute the intersection over union of two (row0, row1, col0, col1) boxes."""
    rows = max(0, min(first[1], second[1]) - max(first[0], second[0]))
    cols = max(0, min(first[3], second[3]) - max(first[2], second[2]))
    intersection = rows * cols
    area = (first[1] - first[0]) * (first[3] - first[2]) + (second[1] - second[0]) * (second[3] - second[2])
    return intersection / (area - intersection)


# ----------------------------------------------------------------------------- weight files


def test_npz_and_port_pth_agree(sononet16: SonoNet, examples: list[ExampleFrame], npz_path: Path, tmp_path: Path) -> None:
    pth_path = tmp_path / "SonoNet16.pth"
    torch.save(port_state_dict(npz_path), pth_path)
    from_pth = load_sononet(pth_path, variant=16)
    batch = torch.stack([sononet_input(frame.image, crop=AUTHORS_BOX) for frame in examples[:3]])

    with torch.inference_mode():
        expected = sononet16.predict_proba(batch)
        actual = from_pth.predict_proba(batch)

    assert from_pth.variant == 16
    assert not from_pth.training
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0)


def test_pth_missing_key_rejected(npz_path: Path, tmp_path: Path) -> None:
    state = port_state_dict(npz_path)
    del state["features.2.1.1.running_var"]
    torch.save(state, tmp_path / "SonoNet16.pth")

    with pytest.raises(SonoNetWeightsError, match=r"SonoNet16\.pth .* 1 are missing \['features\.2\.1\.1\.running_var'\]"):
        load_sononet(tmp_path / "SonoNet16.pth")


def test_pth_unexpected_key_rejected(npz_path: Path, tmp_path: Path) -> None:
    state = port_state_dict(npz_path)
    state["classifier.weight"] = torch.zeros(14, 64)
    torch.save(state, tmp_path / "SonoNet16.pth")

    with pytest.raises(SonoNetWeightsError, match=r"1 are unexpected \['classifier\.weight'\]"):
        load_sononet(tmp_path / "SonoNet16.pth")


def test_pth_wrong_shape_rejected(npz_path: Path, tmp_path: Path) -> None:
    state = port_state_dict(npz_path)
    state["features.3.0.0.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(state, tmp_path / "SonoNet16.pth")

    with pytest.raises(SonoNetWeightsError, match=r"features\.3\.0\.0\.weight in SonoNet weights file .* must have shape \(128, 64, 3, 3\) for SonoNet-16, but got \(128, 32, 3, 3\)"):
        load_sononet(tmp_path / "SonoNet16.pth")


def test_npz_wrong_shape_rejected(npz_path: Path, tmp_path: Path) -> None:
    with np.load(npz_path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["arr_7"] = np.ones(17, dtype=np.float32)
    np.savez(tmp_path / "SonoNet16.npz", **arrays)

    with pytest.raises(SonoNetWeightsError, match=r"arr_7 in SonoNet weights file .* must have shape \(16,\) for SonoNet-16, but got \(17,\)"):
        load_sononet(tmp_path / "SonoNet16.npz")


def test_npz_variant_mismatch_rejected(npz_path: Path) -> None:
    with pytest.raises(SonoNetVariantError, match=r"must be SonoNet-32 as requested, but it contains SonoNet-16$") as raised:
        load_sononet(npz_path, variant=32)
    assert raised.value.found == 16


def test_text_file_named_npz_rejected_without_pickle_advice(tmp_path: Path) -> None:
    path = tmp_path / "SonoNet16.npz"
    path.write_text("not a weights file\n", encoding="utf-8")

    with pytest.raises(SonoNetWeightsError, match=r"SonoNet weights file .* is not an \.npz \(zip\) archive") as raised:
        load_sononet(path)
    assert "pickle" not in str(raised.value)


def test_unknown_suffix_rejected(tmp_path: Path) -> None:
    (tmp_path / "SonoNet16.h5").write_bytes(b"")

    with pytest.raises(SonoNetWeightsError, match=r"must end in \.npz, \.pth or \.pt, but got '\.h5'"):
        load_sononet(tmp_path / "SonoNet16.h5")


# ----------------------------------------------------------------------------- download


@dataclass
class WeightsServer:
    """A loopback HTTP server of a folder, with the paths requested from it."""

    url: str
    folder: Path
    requested_paths: list[str]


@pytest.fixture
def weights_server(npz_path: Path, tmp_path: Path) -> Iterator[WeightsServer]:
    """Serve a copy of SonoNet16.npz at http://127.0.0.1:<port>/sononet/ from a background thread."""
    folder = tmp_path / "served"
    (folder / "sononet").mkdir(parents=True)
    shutil.copyfile(npz_path, folder / "sononet" / "SonoNet16.npz")
    with serve_folder(folder, "weights-server") as (url, requested_paths):
        yield WeightsServer(url, folder, requested_paths)


def test_git_blob_id_of_npz(npz_path: Path) -> None:
    assert git_blob_id(npz_path) == NPZ_BLOB_ID
    assert SONONET_WEIGHTS[(16, "npz")].blob_id == NPZ_BLOB_ID


def test_fetch_downloads_and_verifies(weights_server: WeightsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy that nothing listens on: the loopback download must not go through it.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    dest = tmp_path / "dest"

    path = fetch_sononet(16, dest_dir=dest, base_url=f"{weights_server.url}/sononet")

    assert path == dest / "SonoNet16.npz"
    assert git_blob_id(path) == NPZ_BLOB_ID
    assert weights_server.requested_paths == ["/sononet/SonoNet16.npz"]
    assert sorted(item.name for item in dest.iterdir()) == ["SonoNet16.npz"]


def test_fetch_keeps_query_and_umask(weights_server: WeightsServer, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    previous = os.umask(0o022)
    try:
        path = fetch_sononet(16, dest_dir=dest, base_url=f"{weights_server.url}/sononet?token=1")
    finally:
        os.umask(previous)

    assert weights_server.requested_paths == ["/sononet/SonoNet16.npz?token=1"]
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_fetch_rejects_tampered_file(weights_server: WeightsServer, tmp_path: Path) -> None:
    served = weights_server.folder / "sononet" / "SonoNet16.npz"
    content = bytearray(served.read_bytes())
    content[1000] ^= 0xFF
    served.write_bytes(bytes(content))
    dest = tmp_path / "dest"

    with pytest.raises(WeightsDownloadError, match=rf"has git blob id [0-9a-f]{{40}}, but SonoNet16\.npz must have {NPZ_BLOB_ID}"):
        fetch_sononet(16, dest_dir=dest, base_url=f"{weights_server.url}/sononet")

    assert list(dest.iterdir()) == []


def test_fetch_skips_present_file(weights_server: WeightsServer, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    first = fetch_sononet(16, dest_dir=dest, base_url=f"{weights_server.url}/sononet")
    weights_server.requested_paths.clear()

    second = fetch_sononet(16, dest_dir=dest, base_url=f"{weights_server.url}/sononet")

    assert second == first
    assert weights_server.requested_paths == []


def test_fetch_reports_http_error(weights_server: WeightsServer, tmp_path: Path) -> None:
    with pytest.raises(WeightsDownloadError, match=r"SonoNet32\.npz failed with HTTP status 404"):
        fetch_sononet(32, dest_dir=tmp_path / "dest", base_url=f"{weights_server.url}/sononet")


def test_cli_fetch_sononet(weights_server: WeightsServer, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    arguments = ["fetch", "sononet", "--variant", "16", "--base-url", f"{weights_server.url}/sononet", "--dest", str(dest)]

    result = CliRunner().invoke(weights_group, arguments)

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(dest / "SonoNet16.npz"), f"verified git blob id {NPZ_BLOB_ID}"]


def test_cli_fetch_reports_mismatch(weights_server: WeightsServer, tmp_path: Path) -> None:
    (weights_server.folder / "sononet" / "SonoNet16.npz").write_bytes(b"not the weights")
    arguments = ["fetch", "sononet", "--variant", "16", "--base-url", f"{weights_server.url}/sononet", "--dest", str(tmp_path / "dest")]

    result = CliRunner().invoke(weights_group, arguments)

    assert result.exit_code == 1
    assert "Error: download of" in result.output
    assert f"must have {NPZ_BLOB_ID}" in result.output


def test_cli_fetch_names_options(tmp_path: Path) -> None:
    no_scheme = CliRunner().invoke(weights_group, ["fetch", "sononet", "--variant", "16", "--base-url", "127.0.0.1:9/x", "--dest", str(tmp_path)])
    assert no_scheme.exit_code == 1
    assert "Error: --base-url must be an http:// or https:// URL with a host, but got '127.0.0.1:9/x'" in no_scheme.output

    both = CliRunner().invoke(weights_group, ["fetch", "lpips", "--index-url", "http://127.0.0.1:9/simple", "--find-links", str(tmp_path)])
    assert both.exit_code == 2
    assert "--index-url and --find-links cannot be used together" in both.output
