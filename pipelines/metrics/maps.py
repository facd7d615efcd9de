"""Anomaly maps from images and their reconstructions, anomaly scores as map means inside a mask, and mask checks.

Example:
    >>> import torch
    >>> images = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    >>> reconstructions = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]]])
    >>> maps = anomaly_maps(images, reconstructions, ["mae"], distance=None)
    >>> maps["mae"]
    tensor([[[[0.0000, 0.5000],
              [0.0000, 0.5000]]]])
    >>> image_scores(maps["mae"], None)
    tensor([0.2500])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, get_args

import numpy as np
import torch

from pipelines.metrics.image import check_image_pair
from pipelines.metrics.lpips import PerceptualDistance

MapName = Literal["mae", "lpips", "mae_lpips"]
MAP_NAMES: tuple[MapName, ...] = get_args(MapName)

# Maps that need the spatial LPIPS map.
_LPIPS_MAPS = frozenset({"lpips", "mae_lpips"})

SpatialDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def anomaly_maps(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    names: Iterable[MapName],
    *,
    distance: PerceptualDistance | SpatialDistance | None,
) -> dict[MapName, torch.Tensor]:
    """Compute the named anomaly maps, each of shape ``(B, 1, H, W)``.

    ``mae`` is ``|images - reconstructions|``, ``lpips`` is the spatial LPIPS map, and
    ``mae_lpips`` is their product. The LPIPS map is computed once however many maps use it.

    Args:
        images: the input batch, ``(B, 1, H, W)`` in [0, 1].
        reconstructions: the reconstructed batch, same shape and range.
        names: maps to compute, each one of :data:`MAP_NAMES`.
        distance: a :class:`PerceptualDistance`, whose ``spatial`` method is used, or any
            callable that returns a ``(B, 1, H, W)`` map for two batches. It may be ``None``
            when no requested map needs LPIPS.

    Raises:
        ValueError: if a name is unknown, no name is given, the shapes differ, or a map
            needs LPIPS but ``distance`` is ``None``.
    """
    requested = list(dict.fromkeys(names))
    unknown = [name for name in requested if name not in MAP_NAMES]
    if unknown or not requested:
        raise ValueError(f"names must be a non-empty list of {list(MAP_NAMES)}, but got {requested}")

    check_image_pair(images, reconstructions)
    if images.shape[1] != 1:
        raise ValueError(f"images must have one channel, shape (B, 1, H, W), but got {tuple(images.shape)}")

    needs_lpips = sorted(_LPIPS_MAPS.intersection(requested))
    if needs_lpips and distance is None:
        raise ValueError(
            f"distance must be a PerceptualDistance or a callable returning a (B, 1, H, W) map for the maps {needs_lpips}, "
            "but got None. Build one with PerceptualDistance(weights_path)"
        )

    absolute_error = (images - reconstructions).abs()
    lpips_map = _spatial_lpips(images, reconstructions, distance) if needs_lpips else None

    maps: dict[MapName, torch.Tensor] = {}
    for name in requested:
        if name == "mae":
            maps[name] = absolute_error
        elif name == "lpips":
            maps[name] = lpips_map
        else:
            maps[name] = absolute_error * lpips_map
    return maps


def image_scores(maps: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Average each anomaly map inside its mask, or over the whole image when ``masks`` is ``None``, shape ``(B,)``.

    Raises:
        ValueError: if the shapes differ, ``masks`` is not boolean, or a mask selects no pixel.
    """
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must have shape (B, 1, H, W), but got {tuple(maps.shape)}")

    if masks is None:
        return maps.flatten(start_dim=1).mean(dim=1)

    if masks.shape != maps.shape:
        raise ValueError(f"masks must have the shape of maps {tuple(maps.shape)}, but got {tuple(masks.shape)}")

    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be boolean, but got dtype {masks.dtype}. Threshold them first, for example masks > 0.5")

    pixel_counts = masks.flatten(start_dim=1).sum(dim=1)
    empty = torch.nonzero(pixel_counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"every mask must select at least one pixel, but the masks of images {empty} are empty. Check the brain masks")

    # torch.where, not a product, so NaN or infinite values outside the mask cannot leak in.
    masked_sums = torch.where(masks, maps, torch.zeros_like(maps)).flatten(start_dim=1).sum(dim=1)
    return masked_sums / pixel_counts.to(maps.dtype)


def _spatial_lpips(
    images: torch.Tensor, reconstructions: torch.Tensor, distance: PerceptualDistance | SpatialDistance | None
) -> torch.Tensor:
    """Run the spatial LPIPS of ``distance`` and check that it returns one map per image."""
    spatial = distance.spatial if isinstance(distance, PerceptualDistance) else distance
    lpips_map = spatial(images, reconstructions)
    if lpips_map.shape != images.shape:
        raise ValueError(f"distance must return a map of shape {tuple(images.shape)}, but returned {tuple(lpips_map.shape)}")
    return lpips_map


def as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return a NumPy view of an array, or a CPU copy of a tensor, with its shape unchanged."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def check_boolean_mask(mask: np.ndarray | torch.Tensor, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Convert ``mask`` to NumPy and raise ``ValueError`` unless it is boolean and of the maps' ``shape``."""
    array = as_numpy(mask)
    if array.shape != shape:
        raise ValueError(f"{name} must have the shape of maps {shape}, but got {array.shape}")

    if array.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean, but got dtype {array.dtype}. Threshold it first, for example {name} > 0.5")
    return array
