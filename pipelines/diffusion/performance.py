"""Resolve the speed options of training (precision, memory format, torch.compile) and of evaluation (precision).

``auto`` picks bf16 autocast and the channels-last memory format on CUDA devices that
compute in bfloat16 natively, and plain fp32 in the contiguous format on the CPU, so CPU
runs keep the exact numbers they had before these options existed. ``fp16`` is offered for
GPUs without bfloat16: it trains with a gradient scaler, whose state training checkpoints
keep. ``auto`` never picks it.

Evaluation runs the UNet under the same autocast (:func:`inference_model`), with ``auto``,
``fp32`` or ``bf16``. The reverse process itself, and every map and metric, stay in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedOptions:
    """Autocast type, memory format and compilation that training uses on one device."""

    autocast_dtype: torch.dtype | None
    channels_last: bool
    compile: bool

    @property
    def scales_gradients(self) -> bool:
        """Whether training needs a gradient scaler: fp16 gradients underflow without one."""
        return self.autocast_dtype == torch.float16

    def describe(self) -> str:
        """Return the options as a short phrase, such as ``bf16 autocast, channels-last, eager``."""
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast with gradient scaling"}[
            self.autocast_dtype
        ]
        memory_format = "channels-last" if self.channels_last else "contiguous"
        return f"{precision}, {memory_format}, {'compiled' if self.compile else 'eager'}"


def resolve_speed_options(
    device: torch.device | str,
    *,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
    field: str = "training.precision",
) -> SpeedOptions:
    """Return the options for ``device``; ``precision="auto"`` and ``channels_last=None`` pick by device.

    Raises ``ValueError`` for an unknown precision and for bf16 on a CUDA device without
    bfloat16 support, naming the spec ``field`` to change.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"{field} must be one of {', '.join(PRECISIONS)}, but got {precision!r}")
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"{field} is bf16, but {name} does not support bfloat16. Set {field} to fp16, fp32 or auto")

    if precision == "auto":
        precision = "bf16" if native_bf16 else "fp32"
    return SpeedOptions(
        autocast_dtype=_AUTOCAST_DTYPES.get(precision),
        channels_last=device.type == "cuda" if channels_last is None else channels_last,
        compile=compile,
    )


INFERENCE_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


class AutocastModule(torch.nn.Module):
    """A module whose forward pass runs under autocast to ``dtype``, with the output cast back to fp32."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            output = self.module(x, *args, **kwargs)
        return output.float()


def inference_model(model: torch.nn.Module, device: torch.device | str, precision: str = "auto") -> torch.nn.Module:
    """Return ``model`` wrapped to run under bf16 autocast where ``precision`` resolves to bf16 on ``device``, else ``model``.

    ``auto`` is bf16 on CUDA devices with native bfloat16 and fp32 elsewhere, as for training.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"evaluation.precision must be one of {', '.join(INFERENCE_PRECISIONS)}, but got {precision!r}")
    options = resolve_speed_options(device, precision=precision, field="evaluation.precision")
    return model if options.autocast_dtype is None else AutocastModule(model, options.autocast_dtype)
