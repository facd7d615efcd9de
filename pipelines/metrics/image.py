"""Per-image reconstruction quality: mean absolute error and SSIM between two image batches.

Example:
    >>> import torch
    >>> x = torch.zeros(2, 1, 16, 16)
    >>> mae(x, x + 0.25)
    tensor([0.2500, 0.2500])
    >>> ssim(x, x)
    tensor([1., 1.])
"""

from __future__ import annotations

import torch
from monai.metrics.regression import compute_ssim_and_cs

# SSIM window of Wang et al. (2004): an 11×11 Gaussian with standard deviation 1.5 pixels.
SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def mae(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Compute the mean absolute error of each image pair over channels and pixels, shape ``(B,)``."""
    check_image_pair(x, y)
    return (x - y).abs().flatten(start_dim=1).mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Compute the SSIM of each image pair, shape ``(B,)``, with MONAI's ``compute_ssim_and_cs``.

    The window is an 11×11 Gaussian with sigma 1.5, and the constants are
    ``C1 = (0.01 * data_range) ** 2`` and ``C2 = (0.03 * data_range) ** 2``. The local SSIM is
    computed only where the window fits inside the image (no padding) and averaged over those
    positions and over channels. This matches scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
    with the same ``data_range``, which also drops the 5-pixel border from its mean. MONAI
    computes in float32. The default ``data_range=1.0`` fits images in [0, 1], the range of
    the value contract in :mod:`pipelines.metrics`.

    Raises:
        ValueError: if the shapes differ, are not ``(B, C, H, W)``, or are smaller than 11×11,
            or if ``data_range`` is not positive.
    """
    check_image_pair(x, y)

    height, width = x.shape[-2:]
    if min(height, width) < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"images must be at least {SSIM_WINDOW_SIZE}×{SSIM_WINDOW_SIZE} pixels for the SSIM window, but got {height}×{width}"
        )

    if data_range <= 0:
        raise ValueError(f"data_range must be positive, but got {data_range}")

    local_ssim, _ = compute_ssim_and_cs(
        x,
        y,
        spatial_dims=2,
        kernel_size=(SSIM_WINDOW_SIZE, SSIM_WINDOW_SIZE),
        kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA),
        data_range=data_range,
        kernel_type="gaussian",
        k1=SSIM_K1,
        k2=SSIM_K2,
    )
    return local_ssim.flatten(start_dim=1).mean(dim=1)


def check_image_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` and ``y`` are floating-point batches of one ``(B, C, H, W)`` shape with B >= 1."""
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (B, C, H, W) with B >= 1, but got {tuple(x.shape)}")

    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, but got {tuple(x.shape)} and {tuple(y.shape)}")

    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"x and y must be floating-point tensors, but got {x.dtype} and {y.dtype}")
