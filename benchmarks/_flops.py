"""FLOPs of the UNet and the device peak they are divided by for model FLOP utilisation (MFU).

MFU is the FLOP rate the model's own arithmetic reaches, counted by
``torch.utils.flop_counter.FlopCounterMode``, over the device's dense bf16 peak. A training
step costs about three forward passes, because the backward pass costs about two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

# Training FLOPs per image, in forward passes: a backward pass costs about twice a forward pass.
TRAIN_FLOPS_PER_FORWARD = 3

# Dense bf16 Tensor Core peaks in TFLOP/s (without 2:4 sparsity, which roughly doubles them),
# by torch.cuda.get_device_name. The H200 SXM's is about 989, as tabulated at
# https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html and in the fp16_dense_tflops
# column of https://huggingface.co/datasets/devidasmishra/ai-inference-hardware-economics-2026.
# NOTE: both are third-party tables, and no NVIDIA datasheet was at hand to check them. An
# estimate of 790 would raise every MFU 1.25-fold. Other devices, the H200 NVL among them, are
# not listed. Set PEAK_TFLOPS_ENV or --peak-tflops for them.
DENSE_BF16_PEAK_TFLOPS: dict[str, float] = {"NVIDIA H200": 989.0}
PEAK_TFLOPS_ENV = "SWEEPER_PEAK_TFLOPS"


@dataclass(frozen=True)
class Peak:
    """A device's peak TFLOP/s and where the number comes from."""

    tflops: float
    source: str


def device_peak(device: torch.device | str, override: float | None = None) -> Peak | None:
    """Return ``override``, else ``$SWEEPER_PEAK_TFLOPS``, else the listed peak of ``device``, else None."""
    if override is not None:
        return Peak(_positive(override, "--peak-tflops"), "--peak-tflops")
    text = os.environ.get(PEAK_TFLOPS_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"${PEAK_TFLOPS_ENV} must be a number of TFLOP/s, but got {text!r}") from None
        return Peak(_positive(value, f"${PEAK_TFLOPS_ENV}"), f"${PEAK_TFLOPS_ENV}")
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if name not in DENSE_BF16_PEAK_TFLOPS:
        return None
    return Peak(DENSE_BF16_PEAK_TFLOPS[name], f"dense bf16 peak of the {name}")


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of TFLOP/s, but got {value}")
    return value


def forward_flops(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """Count the FLOPs of one UNet forward pass on one ``image_size`` x ``image_size`` image."""
    image = torch.zeros(1, 1, image_size, image_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(image, t)
    return float(counter.get_total_flops())


def training_tflops(forward_flops_per_image: float, images_per_s: float) -> float:
    """Return the TFLOP/s of training at ``images_per_s``, a step costing three forward passes."""
    return TRAIN_FLOPS_PER_FORWARD * forward_flops_per_image * images_per_s / 1e12
