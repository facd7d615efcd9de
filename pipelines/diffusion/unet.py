"""The noise-prediction UNet: MONAI's ``DiffusionModelUNet`` for one grey channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet


def build_unet(
    *,
    channels: Sequence[int],
    attention_levels: Sequence[bool],
    num_res_blocks: int,
    num_head_channels: int,
    norm_num_groups: int,
) -> torch.nn.Module:
    """Build a 2D UNet that maps a noisy grey image and its timestep to predicted noise."""
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(channels),
        attention_levels=tuple(attention_levels),
        num_res_blocks=num_res_blocks,
        num_head_channels=num_head_channels,
        norm_num_groups=norm_num_groups,
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
