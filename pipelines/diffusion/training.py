"""Training a DDPM on healthy images with the simplified loss ||eps - eps_theta(x_t, t)||^2.

Training can stop and resume: ``on_checkpoint`` receives a :class:`TrainingCheckpoint`
(weights, EMA weights, optimiser, gradient scaler, epoch, step, generator state and loss
history) every
``checkpoint_every`` epochs and at the end, and ``resume`` continues from one. Given
the same checkpoint, a resumed run draws the same batches and noise as one that never
stopped.

The images stay on their device and are augmented there, and the step losses stay there
until the end of each epoch, so that a step waits for the host only where the noise source
does (simplex noise copies its seeds to the host). ``TrainingSettings.precision``,
``channels_last`` and ``compile`` select bf16 or fp16 autocast (fp16 with a gradient
scaler), the channels-last memory format and ``torch.compile`` (see :mod:`pipelines.diffusion.performance`). Checkpoints always hold the
uncompiled model's weights, so their keys do not depend on ``compile``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.diffusion.noise import NoiseSource, to_model_range
from pipelines.diffusion.performance import SpeedOptions, resolve_speed_options
from pipelines.diffusion.schedule import DiffusionSchedule


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(
            f"training loss is {value} at epoch {epoch}, step {step}; lower training.lr or check the input data"
        )
        self.epoch = epoch
        self.step = step
        self.value = value

    def __reduce__(self) -> tuple:
        # Rebuild from the constructor's arguments, so the error survives pickling across Ray processes.
        return (type(self), (self.epoch, self.step, self.value))


@dataclass(frozen=True)
class TrainingSettings:
    """How long and how to train; exactly one of ``epochs`` and ``steps`` is set."""

    batch_size: int
    lr: float
    epochs: int | None = None
    steps: int | None = None
    weight_decay: float = 0.0
    rotation_degrees: float = 15.0
    hflip: bool = True
    vflip: bool = True
    ema_decay: float | None = None
    # "auto", "fp32", "bf16" or "fp16". "auto" is bf16 autocast on CUDA with native bfloat16, else fp32.
    precision: str = "auto"
    # None: channels-last on CUDA only.
    channels_last: bool | None = None
    compile: bool = False

    def speed_options(self, device: torch.device | str) -> SpeedOptions:
        """Resolve ``precision``, ``channels_last`` and ``compile`` for ``device``."""
        return resolve_speed_options(device, precision=self.precision, channels_last=self.channels_last, compile=self.compile)

    def total_steps(self, num_images: int) -> int:
        """Return the number of optimiser steps for a training set of ``num_images``."""
        if self.steps is not None:
            return self.steps
        return self.epochs * math.ceil(num_images / self.batch_size)


@dataclass(frozen=True)
class EpochStats:
    """Mean loss over one pass through the training images."""

    epoch: int
    step: int
    loss: float


@dataclass
class TrainingCheckpoint:
    """Everything needed to continue training: weights, EMA weights, optimiser, position and RNG state.

    ``scaler`` is the gradient scaler's state under fp16, and None otherwise.
    """

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    epoch: int
    step: int
    generator_state: torch.Tensor
    history: list[EpochStats]
    scaler: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return plain containers that ``torch.load(weights_only=True)`` can read back."""
        return {
            "model": self.model,
            "ema": self.ema,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "step": self.step,
            "generator_state": self.generator_state,
            "history": [[stats.epoch, stats.step, stats.loss] for stats in self.history],
            "scaler": self.scaler,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingCheckpoint:
        """Rebuild a checkpoint from :meth:`to_dict`'s output."""
        history = [EpochStats(int(epoch), int(step), float(loss)) for epoch, step, loss in data["history"]]
        return cls(
            data["model"],
            data["ema"],
            data["optimizer"],
            int(data["epoch"]),
            int(data["step"]),
            data["generator_state"],
            history,
            # Checkpoints from before fp16 training have no scaler entry.
            data.get("scaler"),
        )


def ema_model(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """Wrap ``model`` in an exponential moving average of its weights (and buffers) with ``decay``."""
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    rotation_degrees: float,
    hflip: bool,
    vflip: bool,
) -> torch.Tensor:
    """Rotate each image by a random angle and flip it at random, zero-filling the corners."""
    batch = images.shape[0]
    device = images.device
    if hflip:
        flip = torch.rand(batch, generator=generator, device=generator.device).to(device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if vflip:
        flip = torch.rand(batch, generator=generator, device=generator.device).to(device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-2), images)
    if rotation_degrees > 0:
        angles = (torch.rand(batch, generator=generator, device=generator.device).to(device) * 2 - 1)
        angles = angles * math.radians(rotation_degrees)
        cos, sin = angles.cos(), angles.sin()
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return images


def train_ddpm(
    model: torch.nn.Module,
    schedule: DiffusionSchedule,
    images: torch.Tensor,
    *,
    noise_type: str,
    noise: NoiseSource,
    settings: TrainingSettings,
    generator: torch.Generator,
    on_epoch: Callable[[EpochStats], None] | None = None,
    resume: TrainingCheckpoint | None = None,
    on_checkpoint: Callable[[TrainingCheckpoint], None] | None = None,
    checkpoint_every: int = 0,
) -> list[EpochStats]:
    """Train ``model`` to predict the noise added to ``images`` (N, 1, H, W, values in [0, 1]).

    The images are augmented on their device, mapped to the model's input range for
    ``noise_type``, noised to a uniformly drawn step and the UNet learns the noise.
    ``on_epoch`` is called after every pass through the data, and ``on_checkpoint`` every
    ``checkpoint_every`` epochs (0: only at the end) and once training ends. With
    ``settings.ema_decay`` the model ends with the EMA weights. ``model`` is trained in
    place, and with channels-last it returns to the contiguous memory format at the end.
    With ``settings.compile`` a compiled wrapper of ``model`` runs the steps, and ``model``
    itself stays uncompiled.

    Raises :class:`NonFiniteLossError` at the end of the first epoch with a NaN or infinite
    loss, naming that loss's step. The losses are checked once per epoch, so that steps do
    not wait for the device, and the steps after a bad loss in that epoch still run.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), but got {tuple(images.shape)}")
    num_images = images.shape[0]
    if num_images == 0:
        raise ValueError("there are no training images")
    device = images.device
    options = settings.speed_options(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # The EMA copy and the checkpoints use the uncompiled module, whose state dict keys
    # lack the "_orig_mod." prefix of a compiled one.
    ema = ema_model(model, settings.ema_decay) if settings.ema_decay is not None else None
    # dynamic=False: one static graph for full batches and one for a smaller last batch.
    forward = torch.compile(model, dynamic=False) if options.compile else model
    # Disabled (every call passes through) unless fp16 needs it.
    scaler = torch.amp.GradScaler(device.type, enabled=options.scales_gradients)
    total_steps = settings.total_steps(num_images)

    history: list[EpochStats] = []
    step, epoch = 0, 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        if ema is not None and resume.ema is not None:
            ema.load_state_dict(resume.ema)
        if scaler.is_enabled() and resume.scaler is not None:
            scaler.load_state_dict(resume.scaler)
        generator.set_state(resume.generator_state)
        step, epoch, history = resume.step, resume.epoch, list(resume.history)

    def checkpoint() -> TrainingCheckpoint:
        # Copies: the live state dicts hold the tensors that later steps update in place.
        return TrainingCheckpoint(
            model=copy.deepcopy(model.state_dict()),
            ema=copy.deepcopy(ema.state_dict()) if ema is not None else None,
            optimizer=copy.deepcopy(optimizer.state_dict()),
            epoch=epoch,
            step=step,
            generator_state=generator.get_state(),
            history=list(history),
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
        )

    model.train()
    while step < total_steps:
        epoch += 1
        order = torch.randperm(num_images, generator=generator, device=generator.device).to(device)
        first_step = step
        losses: list[torch.Tensor] = []
        for start in range(0, num_images, settings.batch_size):
            if step >= total_steps:
                break
            batch = images[order[start : start + settings.batch_size]]
            batch = augment(
                batch,
                generator,
                rotation_degrees=settings.rotation_degrees,
                hflip=settings.hflip,
                vflip=settings.vflip,
            )
            x_start = to_model_range(batch, noise_type)

            # Draw t uniformly from 1..T, noise the batch to it and regress the noise.
            t = torch.randint(1, schedule.T + 1, (x_start.shape[0],), generator=generator, device=generator.device)
            t = t.to(device)
            eps = noise(tuple(x_start.shape), t, generator).to(device)
            x_t = schedule.q_sample(x_start, t, eps)
            if options.channels_last:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            with _autocast(device, options):
                prediction = forward(x_t, t - 1)
            # The loss is taken in fp32 (a no-op without autocast).
            loss = F.mse_loss(prediction.float(), eps)

            step += 1
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            # With fp16, a step whose gradients overflowed is skipped and the scale lowered.
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.detach())

        # The epoch's only wait for the device: its losses come to the host together.
        values = torch.stack(losses).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch, first_step + offset + 1, value)
        stats = EpochStats(epoch=epoch, step=step, loss=sum(values) / len(values))
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if on_checkpoint is not None and step < total_steps and checkpoint_every and epoch % checkpoint_every == 0:
            on_checkpoint(checkpoint())
    if on_checkpoint is not None:
        on_checkpoint(checkpoint())
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    if options.channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _autocast(device: torch.device, options: SpeedOptions) -> contextlib.AbstractContextManager:
    """Return bf16 or fp16 autocast on ``device`` where ``options`` ask for it, else a context that does nothing."""
    if options.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=options.autocast_dtype)
