"""Translate a validated sweep spec into the settings objects and models of ``pipelines``."""

from __future__ import annotations

import zlib

import torch

from pipelines.data.split import SplitSettings
from pipelines.diffusion.noise import NoiseSource, make_noise
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.diffusion.training import TrainingSettings
from pipelines.diffusion.unet import build_unet
from pipelines.evaluation.grid import GridSettings
from pipelines.methods.autoddpm import AutoDDPMSettings
from sweeper.spec import SweepSpec


def split_settings(spec: SweepSpec) -> SplitSettings:
    split = spec.data.split
    return SplitSettings(
        seed=split.seed,
        val_fraction=split.val_fraction,
        test_fraction=split.test_fraction,
        images_per_frame=split.images_per_frame,
        max_val=split.max_val.model_dump(),
        max_test=split.max_test.model_dump(),
        max_train=split.max_train,
    )


def training_settings(spec: SweepSpec) -> TrainingSettings:
    training = spec.training
    return TrainingSettings(
        batch_size=training.batch_size,
        lr=training.lr,
        epochs=training.epochs,
        steps=training.steps,
        weight_decay=training.weight_decay,
        rotation_degrees=training.augmentation.rotation_degrees,
        hflip=training.augmentation.hflip,
        vflip=training.augmentation.vflip,
        ema_decay=training.ema_decay,
        precision=training.precision,
        channels_last=None if training.channels_last == "auto" else training.channels_last,
        compile=training.compile,
    )


def grid_settings(spec: SweepSpec) -> GridSettings:
    evaluation = spec.evaluation
    autoddpm = evaluation.autoddpm
    return GridSettings(
        anomaly_maps=tuple(evaluation.anomaly_maps),
        score_map=evaluation.score_map,
        batch_size=evaluation.batch_size,
        seed=evaluation.seed,
        autoddpm=AutoDDPMSettings(
            t_inpaint=autoddpm.t_inpaint,
            resample_steps=autoddpm.resample_steps,
            mask_percentile=autoddpm.mask_percentile,
            mask_threshold=autoddpm.mask_threshold,
            dilation_iterations=autoddpm.dilation_iterations,
        ),
    )


def build_schedule(spec: SweepSpec, device: torch.device | str = "cpu") -> DiffusionSchedule:
    model = spec.model
    return DiffusionSchedule(
        model.T, beta_start=model.beta_start, beta_end=model.beta_end, reference_T=model.reference_T, device=device
    )


def build_model(spec: SweepSpec, noise_type: str) -> torch.nn.Module:
    """Build the UNet for ``noise_type`` with weights seeded from the training seed."""
    torch.manual_seed(derive_seed(spec.training.seed, "init", noise_type))
    model = spec.model
    return build_unet(
        channels=model.channels,
        attention_levels=model.attention_levels,
        num_res_blocks=model.num_res_blocks,
        num_head_channels=model.num_head_channels,
        norm_num_groups=model.norm_num_groups,
    )


def build_noise(spec: SweepSpec, noise_type: str) -> NoiseSource:
    simplex = spec.model.simplex
    return make_noise(noise_type, octaves=simplex.octaves, persistence=simplex.persistence, frequency=simplex.frequency)


def derive_seed(seed: int, *parts: str) -> int:
    """Derive an independent, stable 31-bit seed for one purpose from the trial seed."""
    return zlib.crc32("/".join((str(seed), *parts)).encode()) & 0x7FFFFFFF
