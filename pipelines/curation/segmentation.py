"""Fetal head segmentation: a MONAI UNet trained on HC18 masks, run with Monte Carlo dropout.

:func:`train_head_segmenter` trains on images and head masks, holding out whole groups
(a subject's frames) for validation. :func:`segment_heads` runs the trained model with
its dropout layers active, several times per image, and returns the mean probability,
a clean head mask and an uncertainty score. :func:`uncertainty_gate` turns that score
into a keep-or-drop decision for curation.

Uncertainty is the disagreement between the Monte Carlo samples and their consensus::

    uncertainty = 1 - mean_k Dice(P_k > 0.5, M)

where ``P_k`` is the k-th sample's probability map and ``M`` the consensus head mask
(mean probability > 0.5, largest region, holes filled), both at the segmenter's
``image_size``. It is 0 when every sample gives the consensus mask and approaches 1
when samples and consensus barely overlap. An image with an empty consensus mask (no
head found) gets 1, since the samples then agree on no head at all.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import pickle
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from pipelines.curation.head_geometry import head_region, touches_border
from pipelines.data.atomic import atomic_write_path
from pipelines.diffusion.training import augment

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fetal-head-segmenter/1"

# Held-out Dice below which a segmenter is flagged as unfit for curation. The default
# training (128 px, 30 epochs) reaches 0.96 on HC18, and a 2-epoch run at 64 px 0.31,
# whose masks miss or cut most heads.
MIN_HELD_OUT_DICE = 0.9

_DROPOUT_TYPES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)

# Images are resized in chunks of this many, so a large set never sits in memory at full size twice.
_RESIZE_CHUNK = 32


class SegmenterLossError(RuntimeError):
    """The segmenter's training loss became NaN or infinite."""


class SegmenterCheckpointError(ValueError):
    """A file is not a head segmenter checkpoint written by :func:`save_segmenter`; the message gives the cause."""


@dataclass(frozen=True)
class SegmenterSettings:
    """Architecture, training and augmentation settings of a head segmenter.

    ``image_size`` is the side of the square grid that images are resized to, and must be
    divisible by the product of ``strides``. ``channels`` has one entry more than
    ``strides``: the feature channels of each UNet level. ``dropout`` is the dropout
    probability of every convolution block, and must be above 0 for Monte Carlo dropout.
    """

    image_size: int = 256
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 16
    lr: float = 5e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    rotation_degrees: float = 20.0
    hflip: bool = True
    vflip: bool = True
    # Measured on HC18 at 128 px over 40 epochs: with zooming up to 1.3 times, 120 of 121
    # held-out heads cut by a quarter were flagged as touching the border, and 112 without
    # zooming. Held-out mean Dice fell from 0.970 to 0.967.
    max_zoom: float = 1.3

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, minimum=8)

        if len(self.strides) < 1 or len(self.channels) != len(self.strides) + 1:
            raise ValueError(
                f"channels must have one entry more than strides, but got channels={self.channels} and strides={self.strides}"
            )
        for name, values in (("channels", self.channels), ("strides", self.strides)):
            for value in values:
                _check_int(f"every entry of {name}", value, minimum=1)

        downsampling = math.prod(self.strides)
        if self.image_size % downsampling:
            raise ValueError(
                f"image_size must be divisible by the product of strides ({downsampling}), but got {self.image_size}; "
                f"use {max(2, round(self.image_size / downsampling)) * downsampling}"
            )
        # Instance normalisation at the deepest level needs more than one pixel there.
        if self.image_size < 2 * downsampling:
            raise ValueError(
                f"image_size must be at least twice the product of strides ({2 * downsampling}), so that the deepest "
                f"level keeps 2 x 2 pixels, but got {self.image_size}"
            )

        _check_int("num_res_units", self.num_res_units, minimum=0)
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("seed", self.seed, minimum=0)

        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got {self.dropout!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, but got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, but got {self.weight_decay!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), but got {self.val_fraction!r}")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ValueError(f"rotation_degrees must be in [0, 180], but got {self.rotation_degrees!r}")
        if not (math.isfinite(self.max_zoom) and self.max_zoom >= 1.0):
            raise ValueError(f"max_zoom must be a number of at least 1 (1 turns zooming off), but got {self.max_zoom!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain Python values, which ``torch.load(weights_only=True)`` reads back."""
        values = dataclasses.asdict(self)
        values["channels"] = list(self.channels)
        values["strides"] = list(self.strides)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmenterSettings:
        """Build settings from :meth:`to_dict` output, rejecting unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"segmenter settings must use only the keys {sorted(known)}, but got unknown keys {unknown}")

        converted = dict(values)
        for name in ("channels", "strides"):
            if name in converted:
                converted[name] = tuple(converted[name])
        return cls(**converted)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, but got {value!r}")


class HeadSegmenter(torch.nn.Module):
    """A 2D MONAI UNet from one grey channel to one head logit per pixel, with its settings attached.

    ``held_out_dice`` is the mean Dice on held-out subjects from the training report, or
    None when the model was not trained or loaded with a report.
    """

    def __init__(self, settings: SegmenterSettings) -> None:
        super().__init__()
        self.settings = settings
        self.held_out_dice: float | None = None
        self.unet = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=settings.channels,
            strides=settings.strides,
            num_res_units=settings.num_res_units,
            dropout=settings.dropout,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.unet(images)


def build_segmenter(settings: SegmenterSettings) -> HeadSegmenter:
    """Build an untrained head segmenter. Its initial weights come from torch's global random generator."""
    return HeadSegmenter(settings)


@dataclass(frozen=True)
class EpochSummary:
    """Mean training loss and held-out mean Dice after one pass through the training images."""

    epoch: int
    train_loss: float
    val_mean_dice: float
    seconds: float


@dataclass
class SegmenterReport:
    """The course and result of one training: losses, the held-out images and their Dice.

    Dice is measured at the segmenter's ``image_size`` on the cleaned predicted mask
    (probability > 0.5, largest region, holes filled) of the model after the last epoch.
    """

    epoch_loss: list[float]
    epoch_val_dice: list[float]
    train_ids: list[str]
    val_ids: list[str]
    val_dice: dict[str, float]
    mean_dice: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain Python values."""
        return dataclasses.asdict(self)


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Compute the Dice overlap ``2|A and B| / (|A| + |B|)`` of two masks. Two empty masks give 1.

    >>> dice_score(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise ValueError(f"masks must have the same shape, but got {prediction.shape} and {target.shape}")

    total = int(prediction.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, target).sum()) / total


def split_groups(groups: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation so that no group falls in both.

    The sorted distinct groups are shuffled with ``seed``, and the first
    ``round(val_fraction * number of groups)`` of them (at least one) go to validation.
    """
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError(f"a train/validation split needs at least 2 groups, but got {len(names)}; pass more images or distinct groups")

    order = np.random.default_rng(seed).permutation(len(names))
    num_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    val_names = {names[index] for index in order[:num_val]}
    is_val = np.array([group in val_names for group in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def train_head_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    ids: list[str],
    settings: SegmenterSettings,
    *,
    groups: list[str] | None = None,
    on_epoch: Callable[[EpochSummary], None] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[HeadSegmenter, SegmenterReport]:
    """Train a head segmenter on ``images`` (N, H, W, float in [0, 1]) and ``masks`` (N, H, W, bool).

    A ``val_fraction`` of the groups, chosen with ``settings.seed``, is held out. Each
    image is its own group unless ``groups`` is given. Pass the subject there, so that
    the frames of one fetus stay on one side. Inputs are resized to ``image_size``. The loss
    is MONAI's ``DiceCELoss`` on the sigmoid, optimised by AdamW with a cosine learning
    rate decay to 0, on batches flipped, rotated and (with ``max_zoom`` above 1) zoomed
    at random. ``on_epoch`` is called after every epoch.

    Every random choice (weights, split, order, augmentation, dropout) follows from
    ``settings.seed``, and torch's global random state is restored afterwards, so a
    second run on the same CPU with the same thread count gives the same model.

    Raises:
        ValueError: the inputs have the wrong shapes, values or ids.
        SegmenterLossError: the loss becomes NaN or infinite.
    """
    images, masks = _check_training_inputs(images, masks, ids, groups)
    train_index, val_index = split_groups(groups if groups is not None else ids, settings.val_fraction, settings.seed)
    size = settings.image_size
    image_tensor = _resize_stack(images, size).to(device)
    mask_tensor = (_resize_stack(masks.astype(np.float32), size) >= 0.5).float().to(device)
    logger.info(
        "training head segmenter on %d images, validating on %d, at %d px for %d epochs",
        len(train_index),
        len(val_index),
        size,
        settings.epochs,
    )

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build_segmenter(settings).to(device)
        generator = torch.Generator().manual_seed(settings.seed)
        epoch_loss, epoch_val_dice = [], []
        for epoch, loss in enumerate(_fit(model, image_tensor[train_index], mask_tensor[train_index], settings, generator), start=1):
            val_dice = _held_out_dice(model, image_tensor[val_index], mask_tensor[val_index], settings.batch_size)
            epoch_loss.append(loss)
            epoch_val_dice.append(float(np.mean(val_dice)))
            summary = EpochSummary(epoch, loss, epoch_val_dice[-1], time.perf_counter() - started)
            logger.info("epoch %d/%d: loss %.4f, held-out mean Dice %.4f", epoch, settings.epochs, loss, summary.val_mean_dice)
            if on_epoch is not None:
                on_epoch(summary)

    model.eval()
    model.held_out_dice = epoch_val_dice[-1]
    logger.info("trained head segmenter in %.1f s: held-out mean Dice %.4f", time.perf_counter() - started, epoch_val_dice[-1])
    report = SegmenterReport(
        epoch_loss=epoch_loss,
        epoch_val_dice=epoch_val_dice,
        train_ids=[ids[index] for index in train_index],
        val_ids=[ids[index] for index in val_index],
        val_dice={ids[index]: dice for index, dice in zip(val_index, val_dice)},
        mean_dice=epoch_val_dice[-1],
        train_seconds=time.perf_counter() - started,
    )
    return model, report


def _check_training_inputs(
    images: np.ndarray, masks: np.ndarray, ids: list[str], groups: list[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks)
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"images and masks must both have shape (N, H, W), but got {images.shape} and {masks.shape}")

    if masks.dtype != bool:
        raise ValueError(f"masks must be boolean, but got dtype {masks.dtype}; pass mask > 0")

    _check_unit_range(images, "images")

    if len(ids) != len(images) or len(set(ids)) != len(ids):
        raise ValueError(
            f"ids must be {len(images)} distinct strings, one per image, but got {len(ids)} ids with {len(set(ids))} distinct"
        )

    if groups is not None and len(groups) != len(images):
        raise ValueError(f"groups must have one entry per image ({len(images)}), but got {len(groups)}")
    return images, masks


def _fit(
    model: HeadSegmenter, images: torch.Tensor, masks: torch.Tensor, settings: SegmenterSettings, generator: torch.Generator
) -> Iterator[float]:
    """Train ``model`` in place and yield the mean training loss after each epoch."""
    loss_function = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(images) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * steps_per_epoch)

    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator).to(images.device)
        total_loss = 0.0
        for start in range(0, len(images), settings.batch_size):
            batch = order[start : start + settings.batch_size]

            # Image and mask go through one random flip and rotation as two channels.
            pair = torch.cat([images[batch], masks[batch]], dim=1)
            pair = augment(pair, generator, rotation_degrees=settings.rotation_degrees, hflip=settings.hflip, vflip=settings.vflip)
            pair = _random_zoom(pair, generator, settings.max_zoom)
            batch_images, batch_masks = pair[:, :1], (pair[:, 1:] >= 0.5).float()

            loss = loss_function(model(batch_images), batch_masks)
            if not torch.isfinite(loss):
                raise SegmenterLossError(f"segmenter training loss is {loss.item()} in epoch {epoch}; lower the learning rate or check the input data")

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        yield total_loss / len(images)


def _random_zoom(pair: torch.Tensor, generator: torch.Generator, max_zoom: float) -> torch.Tensor:
    """Zoom each sample in by a random factor in ``[1, max_zoom]`` around a random point.

    The sampled window stays inside the image, so a zoomed head can be cut by the border,
    and the segmenter learns to draw such a head up to the border, where
    ``touches_border`` catches it.
    """
    if max_zoom == 1.0:
        return pair

    batch = pair.shape[0]
    scale = 1.0 / (1.0 + (max_zoom - 1.0) * torch.rand(batch, generator=generator))
    shift = (1.0 - scale)[:, None] * (2.0 * torch.rand(batch, 2, generator=generator) - 1.0)
    zeros = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([scale, zeros, shift[:, 0]], 1), torch.stack([zeros, scale, shift[:, 1]], 1)], 1).to(pair.device)
    grid = F.affine_grid(theta, list(pair.shape), align_corners=False)
    return F.grid_sample(pair, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _held_out_dice(model: HeadSegmenter, images: torch.Tensor, masks: torch.Tensor, batch_size: int) -> list[float]:
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            probabilities = torch.sigmoid(model(images[start : start + batch_size])).cpu().numpy()[:, 0]
            targets = masks[start : start + batch_size].cpu().numpy()[:, 0] > 0.5
            scores.extend(dice_score(head_region(probability > 0.5), target) for probability, target in zip(probabilities, targets))
    return scores


def _resize_stack(images: np.ndarray, size: int) -> torch.Tensor:
    """Resize (N, H, W) arrays to an (N, 1, size, size) float tensor, bilinear with antialiasing."""
    chunks = []
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + _RESIZE_CHUNK], dtype=np.float32))[:, None]
        chunks.append(_resize(chunk, (size, size)))
    return torch.cat(chunks)


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)


@dataclass
class HeadSegmentation:
    """One image's Monte Carlo dropout segmentation, at the image's own size.

    ``probability`` is the mean head probability over the samples (float32, H x W),
    ``mask`` the head mask (mean probability > 0.5, largest region, holes filled),
    ``uncertainty`` the disagreement score in [0, 1] defined in this module's docstring,
    and ``touches_border`` whether the mask reaches the outermost image rows or columns.
    """

    probability: np.ndarray
    mask: np.ndarray
    uncertainty: float
    touches_border: bool

    @property
    def found(self) -> bool:
        """Whether a head was found at all."""
        return bool(self.mask.any())


def segment_heads(
    model: HeadSegmenter,
    images: np.ndarray | Sequence[np.ndarray],
    *,
    mc_samples: int = 8,
    seed: int = 0,
    batch_size: int = 16,
) -> list[HeadSegmentation]:
    """Segment the head in each image with Monte Carlo dropout.

    ``images`` is an (N, H, W) array or a sequence of 2D arrays of any sizes, float in
    [0, 1]. Each is resized to the model's ``image_size`` and run ``mc_samples`` times
    with dropout active and every other layer in evaluation mode. The mean probability
    is resized back to the image's size, where the mask is taken. The same model,
    inputs, ``seed`` and ``batch_size`` give the same result, and torch's global random
    state is restored afterwards.
    """
    if not isinstance(model, HeadSegmenter):
        raise TypeError(f"model must be a HeadSegmenter from train_head_segmenter or load_segmenter, but got {type(model).__name__}")
    _check_int("mc_samples", mc_samples, minimum=2)
    _check_int("batch_size", batch_size, minimum=1)

    arrays = [_check_image(image, index) for index, image in enumerate(images)]
    size = model.settings.image_size
    device = next(model.parameters()).device
    results: list[HeadSegmentation] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _mc_dropout(model):
        torch.manual_seed(seed)
        for start in range(0, len(arrays), batch_size):
            batch = arrays[start : start + batch_size]
            inputs = torch.cat([_resize(torch.from_numpy(image)[None, None], (size, size)) for image in batch]).to(device)
            samples = torch.stack([torch.sigmoid(model(inputs))[:, 0] for _ in range(mc_samples)], dim=1)
            results.extend(_summarise(image, image_samples) for image, image_samples in zip(batch, samples.cpu()))

    logger.debug("segmented %d images with %d Monte Carlo dropout samples each", len(results), mc_samples)
    return results


def _check_image(image: np.ndarray, index: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"image {index} must be a 2D grey array, but got shape {array.shape}")

    _check_unit_range(array, f"image {index}")
    return np.ascontiguousarray(array)


def _check_unit_range(array: np.ndarray, name: str) -> None:
    if array.size and (not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(
            f"{name} must be finite and in [0, 1], but got values from {np.nanmin(array):g} to {np.nanmax(array):g}; "
            f"divide 8-bit images by 255"
        )


@contextmanager
def _mc_dropout(model: HeadSegmenter) -> Iterator[None]:
    """Put ``model`` in evaluation mode with its dropout layers in training mode, then restore its mode."""
    dropouts = [module for module in model.modules() if isinstance(module, _DROPOUT_TYPES) and module.p > 0]
    if not dropouts:
        raise ValueError(
            f"Monte Carlo dropout needs a segmenter with dropout above 0, but got dropout={model.settings.dropout}; "
            f"retrain with dropout > 0"
        )

    was_training = model.training
    model.eval()
    for module in dropouts:
        module.train()
    try:
        yield
    finally:
        model.train(was_training)


def _summarise(image: np.ndarray, samples: torch.Tensor) -> HeadSegmentation:
    """Reduce one image's (K, size, size) probability samples to its segmentation."""
    mean_probability = samples.mean(dim=0)
    consensus = head_region(mean_probability.numpy() > 0.5)
    if consensus.any():
        agreement = [dice_score(sample.numpy() > 0.5, consensus) for sample in samples]
        uncertainty = 1.0 - float(np.mean(agreement))
    else:
        uncertainty = 1.0

    probability = _resize(mean_probability[None, None], image.shape)[0, 0].clamp(0.0, 1.0).numpy()
    mask = head_region(probability > 0.5)
    return HeadSegmentation(probability=probability, mask=mask, uncertainty=uncertainty, touches_border=touches_border(mask))


def uncertainty_gate(segmentation: HeadSegmentation, *, max_uncertainty: float) -> tuple[bool, str]:
    """Decide whether a segmentation is trusted: return ``(True, "")`` or ``(False, reason)``.

    A segmentation is rejected when no head was found or its uncertainty is above
    ``max_uncertainty``. An uncertainty equal to ``max_uncertainty`` passes.
    """
    if isinstance(max_uncertainty, bool) or not isinstance(max_uncertainty, numbers.Real) or not 0.0 <= max_uncertainty <= 1.0:
        raise ValueError(f"max_uncertainty must be in [0, 1], but got {max_uncertainty!r}")

    if not segmentation.found:
        return False, "no head found"

    if segmentation.uncertainty > max_uncertainty:
        return False, f"segmentation uncertainty {segmentation.uncertainty:.3f} is above the maximum {max_uncertainty:.3f}"
    return True, ""


def save_segmenter(model: HeadSegmenter, settings: SegmenterSettings, report: SegmenterReport | None, path: Path | str) -> Path:
    """Write the model's weights, settings and training report to ``path`` with ``torch.save``.

    Everything but the weights is stored as plain Python values, so that
    :func:`load_segmenter` can read the file with ``weights_only=True``. The file is
    written to a temporary name first, so an interrupted save leaves no half file.
    """
    if model.settings != settings:
        raise ValueError(f"settings must be the ones the model was built with, but got {settings} for a model built with {model.settings}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "settings": settings.to_dict(),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "report": report.to_dict() if report is not None else None,
    }
    with atomic_write_path(path) as temporary:
        torch.save(payload, temporary)

    logger.info("saved head segmenter to %s", path)
    return path


def load_segmenter(path: Path | str, *, device: str | torch.device = "cpu") -> tuple[HeadSegmenter, SegmenterSettings]:
    """Read a segmenter written by :func:`save_segmenter`, in evaluation mode on ``device``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SegmenterCheckpointError: the file is not a head segmenter checkpoint of this
            format. The message is one line that gives the cause.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter checkpoint not found at {path}; train one and save it with save_segmenter")

    # torch.save writes a zip archive; checking first keeps PyTorch's long messages for
    # other files (text, YAML, truncated downloads) out of the error.
    if not zipfile.is_zipfile(path):
        raise SegmenterCheckpointError(f"{path} is not a zip archive as torch.save writes it (a text file or a truncated copy?)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise SegmenterCheckpointError(f"{path} contains Python objects other than tensors and plain values, such as a whole nn.Module") from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise SegmenterCheckpointError(f"{path} cannot be read by torch.load ({type(error).__name__})") from error

    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise SegmenterCheckpointError(f"{path} must be a head segmenter checkpoint of format {CHECKPOINT_FORMAT!r}, but got {found!r}")

    try:
        settings = SegmenterSettings.from_dict(payload["settings"])
        model = build_segmenter(settings)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise SegmenterCheckpointError(f"{path} has settings or weights that do not fit a head segmenter ({type(error).__name__})") from error

    report = payload.get("report")
    if isinstance(report, dict) and isinstance(report.get("mean_dice"), float):
        model.held_out_dice = report["mean_dice"]
    model.to(device).eval()
    return model, settings
