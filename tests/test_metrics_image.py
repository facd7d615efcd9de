"""Tests for MAE and SSIM, with SSIM checked against scikit-image, and the metrics' value contract, on real ultrasound frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage.metrics import structural_similarity

from pipelines.metrics.image import mae, ssim
from pipelines.metrics.lpips import PerceptualDistance
from tests.conftest import DATA_ROOT, LPIPS_CHECKPOINT
from tests.reference.make_lpips_reference import FBA_CYST, FBA_HEALTHY, HC18_A, HC18_B, load_grey

IMAGE_DIR = DATA_ROOT / "fetal-brain-abnormalities" / "test"

# Largest |ours - scikit-image| allowed. Both average the local SSIM over the positions where the
# 11×11 window fits, so borders agree. What remains is MONAI computing in float32, where variances
# as E[x²] - E[x]² lose digits, against scikit-image's float64. On the 14 pairs of
# test_ssim_matches_skimage the largest difference measured was 6.9e-6 (x86-64 CPU, torch 2.14.1,
# MONAI 1.6.1, scikit-image 0.26.0), so 1e-4 leaves a margin for other CPUs and library versions.
SKIMAGE_TOLERANCE = 1e-4


def load_frames(count: int, size: int) -> list[np.ndarray]:
    """Load ``count`` test-split frames, evenly spread, as grey float64 arrays in [0, 1]."""
    files = sorted(IMAGE_DIR.glob("*.jpg"))
    if len(files) < count:
        pytest.skip(f"fewer than {count} ultrasound images in {IMAGE_DIR}")
    chosen = files[:: len(files) // count][:count]
    frames = []
    for path in chosen:
        image = Image.open(path).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        frames.append(np.asarray(image, dtype=np.float64) / 255.0)
    return frames


def as_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)[:, None]).to(torch.float32)


def blurred(frame: np.ndarray) -> np.ndarray:
    image = Image.fromarray(np.round(frame * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    return np.asarray(image, dtype=np.float64) / 255.0


def noised(frame: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frame + rng.normal(0.0, 0.1, frame.shape), 0.0, 1.0)


@pytest.mark.skipif(not LPIPS_CHECKPOINT.is_file(), reason=f"LPIPS weights not found at {LPIPS_CHECKPOINT}")
def test_self_comparison_contract() -> None:
    # Two HC18 frames and two Fetal Brain Abnormalities frames, one healthy and one with a cyst.
    images = as_batch([load_grey(DATA_ROOT / path, 64) for path in (HC18_A, HC18_B, FBA_HEALTHY, FBA_CYST)])
    distance = PerceptualDistance(LPIPS_CHECKPOINT)

    assert torch.equal(mae(images, images), torch.zeros(4))
    torch.testing.assert_close(ssim(images, images), torch.ones(4), rtol=0.0, atol=1e-6)
    assert distance(images, images).abs().max().item() < 1e-6
    # The same frames against each other are far from those values.
    shifted = images.roll(1, dims=0)
    assert mae(images, shifted).min().item() > 0.01
    assert ssim(images, shifted).max().item() < 0.9
    assert distance(images, shifted).min().item() > 0.1


def test_mae_identical_is_zero() -> None:
    x = torch.rand(3, 1, 8, 8)

    assert torch.equal(mae(x, x), torch.zeros(3))


def test_mae_hand_values() -> None:
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[0.2, 0.2], [0.2, 0.2]]]])
    y = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]], [[[0.2, 0.2], [0.2, 0.6]]]])

    # Image 0: (1 + 0 + 0.5 + 0) / 4 = 0.375. Image 1: (0 + 0 + 0 + 0.4) / 4 = 0.1.
    torch.testing.assert_close(mae(x, y), torch.tensor([0.375, 0.1]))


def test_ssim_identical_is_one() -> None:
    frames = load_frames(3, 128)
    x = as_batch(frames)

    torch.testing.assert_close(ssim(x, x), torch.ones(3), rtol=0.0, atol=1e-6)


def test_ssim_constant_images_is_one() -> None:
    x = torch.full((2, 1, 16, 16), 0.3)

    torch.testing.assert_close(ssim(x, x), torch.ones(2), rtol=0.0, atol=1e-6)


def test_ssim_matches_skimage() -> None:
    frames = load_frames(7, 128)
    others = [blurred(frame) for frame in frames] + [noised(frame, seed) for seed, frame in enumerate(frames)]
    references = frames + frames

    ours = ssim(as_batch(references), as_batch(others))

    for index, (reference, other) in enumerate(zip(references, others)):
        expected = structural_similarity(
            reference, other, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        assert abs(ours[index].item() - expected) < SKIMAGE_TOLERANCE, f"pair {index}: {ours[index].item()} vs {expected}"


def test_ssim_orders_degradations() -> None:
    frame = load_frames(1, 128)[0]
    mild = np.clip(frame + np.random.default_rng(0).normal(0.0, 0.02, frame.shape), 0.0, 1.0)
    strong = noised(frame, 0)

    values = ssim(as_batch([frame, frame]), as_batch([mild, strong]))

    assert values[0] > values[1]
    assert values[0] < 1.0


def test_ssim_data_range() -> None:
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))

    # SSIM is unchanged when images and data range are scaled together.
    torch.testing.assert_close(ssim(x * 255, y * 255, data_range=255.0), ssim(x, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.rand(1, 16, 16), torch.rand(1, 16, 16), r"x must have shape \(B, C, H, W\)"),
        (torch.rand(0, 1, 16, 16), torch.rand(0, 1, 16, 16), r"with B >= 1"),
        (torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17), r"x and y must have the same shape"),
        (torch.ones(1, 1, 16, 16, dtype=torch.int64), torch.ones(1, 1, 16, 16, dtype=torch.int64), r"floating-point"),
    ],
)
def test_invalid_pairs_raise(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mae(x, y)
    with pytest.raises(ValueError, match=message):
        ssim(x, y)


def test_ssim_too_small_raises() -> None:
    x = torch.rand(1, 1, 10, 32)

    with pytest.raises(ValueError, match=r"at least 11×11 pixels for the SSIM window, but got 10×32"):
        ssim(x, x)


def test_ssim_data_range_positive() -> None:
    x = torch.rand(1, 1, 16, 16)

    with pytest.raises(ValueError, match=r"data_range must be positive, but got 0"):
        ssim(x, x, data_range=0.0)
