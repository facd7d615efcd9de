"""SonoNet standard-plane classification of fetal ultrasound frames (Baumgartner et al., 2017).

SonoNet is a VGG-like network of fifteen convolutions with frozen batch normalisation. It maps
a grey 224×288 frame to scores for 13 standard planes and "Background", and curation uses it
to keep frames of the transventricular brain plane. The network is built here from the
published architecture and reads two weight formats:

- the authors' Theano/Lasagne release ``SonoNet16.npz``, ``SonoNet32.npz`` or ``SonoNet64.npz``
  (``arr_0`` … ``arr_74``: per convolution its kernel, then the batch-norm ``beta``, ``gamma``,
  ``mean`` and ``inv_std``);
- the state dicts ``SonoNet16.pth`` … ``SonoNet64.pth`` of the PyTorch port
  rdroste/SonoNet_PyTorch, whose key names are mapped explicitly.

Example:
    >>> model = SonoNet(16).eval()
    >>> frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    >>> [prediction] = classify_planes(model, [frame], crop="none")
    >>> prediction.label in SONONET_LABELS, prediction.probabilities.shape
    (True, (14,))
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from pipelines.curation.labels import SONONET_LABELS, SONONET_VARIANTS

logger = logging.getLogger(__name__)

SONONET_INPUT_SIZE: tuple[int, int] = (224, 288)
"""Input height and width that SonoNet was trained at."""

AUTHORS_CROP_BOX: tuple[int, int, int, int] = (115, 734, 81, 874)
"""Rows 115:734 and columns 81:874, the box the authors crop from their 735×975 example frames."""

CropBox: TypeAlias = tuple[int, int, int, int]
Crop: TypeAlias = Literal["none", "auto"] | CropBox

# Output widths of the feature convolutions of SonoNet-16 by block. A 2×2 max pooling follows
# every block except the last. SonoNet-32 and SonoNet-64 double and quadruple every width.
_FEATURE_BLOCKS_16: tuple[tuple[int, ...], ...] = ((16, 16), (32, 32), (64, 64, 64), (128, 128, 128), (128, 128, 128))
_ADAPTION_WIDTH_16 = 64

# The authors' .npz stores five arrays per convolution, in this order.
_NPZ_FIELDS: tuple[str, ...] = ("kernel", "beta", "gamma", "mean", "inv_std")

# Batch-norm eps of the PyTorch port: 1e-4 in the feature convolutions (as Lasagne used), but
# PyTorch's default 1e-5 in its two adaption layers. Its running_var is therefore read back with
# the eps of its own layer, so that the port's file computes what the port computes.
_PORT_FEATURE_EPS = 1e-4
_PORT_ADAPTION_EPS = 1e-5
_PORT_BN_FIELDS: dict[str, str] = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "running_var"}

_TORCH_SUFFIXES = (".pth", ".pt")
_HOW_TO_GET_WEIGHTS = (
    "Use the authors' SonoNet16/32/64.npz or the SonoNet_PyTorch SonoNet16/32/64.pth, "
    "for example as downloaded by 'sweeper weights fetch sononet'"
)


class SonoNetWeightsError(ValueError):
    """Error for a SonoNet weights file that is missing, unreadable or of the wrong layout."""


class SonoNetVariantError(SonoNetWeightsError):
    """Error for a SonoNet weights file of another variant than requested; ``found`` is the file's variant."""

    def __init__(self, message: str, *, found: int) -> None:
        super().__init__(message)
        self.found = found


class BlankFrameError(ValueError):
    """A frame, or its crop, has one intensity everywhere, so there is no fan to find or plane to classify."""


class CropBoxError(ValueError):
    """A fixed crop box does not lie inside a frame."""


@dataclass(frozen=True)
class _LayerSpec:
    """One convolution of SonoNet with what follows it."""

    in_channels: int
    out_channels: int
    kernel_size: int
    relu: bool
    pool_after: bool


def _check_variant(variant: object) -> int:
    """Return ``variant`` if it is a published SonoNet width, else raise ValueError."""
    if isinstance(variant, bool) or variant not in SONONET_VARIANTS:
        raise ValueError(f"SonoNet variant must be one of {list(SONONET_VARIANTS)}, but got {variant!r}")
    return int(variant)


def _layer_specs(variant: int) -> tuple[_LayerSpec, ...]:
    """List the fifteen convolutions of SonoNet-``variant`` in order: thirteen 3×3, then two 1×1."""
    scale = _check_variant(variant) // 16
    specs: list[_LayerSpec] = []
    in_channels = 1
    for block, widths in enumerate(_FEATURE_BLOCKS_16):
        for index, width in enumerate(widths):
            pool_after = index == len(widths) - 1 and block < len(_FEATURE_BLOCKS_16) - 1
            specs.append(_LayerSpec(in_channels, width * scale, 3, relu=True, pool_after=pool_after))
            in_channels = width * scale

    adaption_width = _ADAPTION_WIDTH_16 * scale
    specs.append(_LayerSpec(in_channels, adaption_width, 1, relu=True, pool_after=False))
    specs.append(_LayerSpec(adaption_width, len(SONONET_LABELS), 1, relu=False, pool_after=False))
    return tuple(specs)


class FrozenBatchNorm2d(nn.Module):
    """Batch normalisation with fixed statistics: ``(x - mean) * inv_std * gamma + beta`` per channel."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.register_buffer("gamma", torch.ones(num_channels))
        self.register_buffer("beta", torch.zeros(num_channels))
        self.register_buffer("mean", torch.zeros(num_channels))
        self.register_buffer("inv_std", torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (B, C, H, W) with the stored per-channel statistics."""
        shape = (1, -1, 1, 1)
        return (x - self.mean.view(shape)) * self.inv_std.view(shape) * self.gamma.view(shape) + self.beta.view(shape)


class _ConvBN(nn.Module):
    """A convolution without bias followed by frozen batch normalisation."""

    def __init__(self, spec: _LayerSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, padding=spec.kernel_size // 2, bias=False)
        self.bn = FrozenBatchNorm2d(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve and normalise ``x``."""
        return self.bn(self.conv(x))


class SonoNet(nn.Module):
    """SonoNet-16, -32 or -64: fifteen convolutions with frozen batch norm, then global mean pooling.

    The input is (B, 1, H, W), normally (B, 1, 224, 288) from :func:`sononet_input`.
    :meth:`forward` returns the (B, 14) class scores before softmax, in the order of
    :data:`SONONET_LABELS`. A new model has random convolutions and identity batch norm.
    Load trained weights with :func:`load_sononet`.
    """

    def __init__(self, variant: int) -> None:
        super().__init__()
        self.variant = _check_variant(variant)
        self.specs = _layer_specs(variant)
        self.layers = nn.ModuleList(_ConvBN(spec) for spec in self.specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the class scores (B, 14) of a batch of grey frames (B, 1, H, W)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"SonoNet input must have shape (B, 1, H, W), but got {tuple(x.shape)}. Build it with sononet_input()")

        for spec, layer in zip(self.specs, self.layers):
            x = layer(x)
            if spec.relu:
                x = F.relu(x)
            if spec.pool_after:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
        return x.mean(dim=(2, 3))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Return the softmax probabilities (B, 14) of a batch of grey frames (B, 1, H, W)."""
        return torch.softmax(self(x), dim=1)


# ----------------------------------------------------------------------------- weights


def load_sononet(path: str | os.PathLike[str], variant: int | None = None) -> SonoNet:
    """Build SonoNet from a weights file and return it in eval mode.

    ``.npz`` files are read as the authors' release, ``.pth`` and ``.pt`` files as state dicts
    of the PyTorch port. The variant is read from the width of the first kernel. If ``variant``
    is given, the file must match it. Every array or tensor is checked against the architecture.

    Raises:
        ValueError: if ``variant`` is not 16, 32 or 64.
        SonoNetWeightsError: if the file is missing, unreadable, of another variant, or has a
            missing, unexpected or misshapen array. The message is one line naming the file.
    """
    if variant is not None:
        _check_variant(variant)
    path = Path(path)
    if not path.is_file():
        raise SonoNetWeightsError(f"SonoNet weights file {path} was not found. {_HOW_TO_GET_WEIGHTS}")

    suffix = path.suffix.lower()
    if suffix == ".npz":
        found_variant, layers = _read_authors_npz(path, variant)
    elif suffix in _TORCH_SUFFIXES:
        found_variant, layers = _read_port_state_dict(path, variant)
    else:
        raise SonoNetWeightsError(f"SonoNet weights file {path} must end in .npz, .pth or .pt, but got {suffix or 'no suffix'!r}. {_HOW_TO_GET_WEIGHTS}")

    state_dict: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        for field, array in layer.items():
            module_key = "conv.weight" if field == "kernel" else f"bn.{field}"
            state_dict[f"layers.{index}.{module_key}"] = torch.from_numpy(array)

    model = SonoNet(found_variant)
    model.load_state_dict(state_dict, strict=True)
    logger.info("Loaded SonoNet-%d from %s", found_variant, path)
    return model.eval()


def _expected_shape(spec: _LayerSpec, field: str) -> tuple[int, ...]:
    """Return the shape of one array of a convolution layer: the kernel or a per-channel vector."""
    if field == "kernel":
        return (spec.out_channels, spec.in_channels, spec.kernel_size, spec.kernel_size)
    return (spec.out_channels,)


def _infer_variant(first_kernel_shape: tuple[int, ...], requested: int | None, path: Path, name: str) -> int:
    """Return the variant that the first kernel's width implies, checking it against ``requested``."""
    width = first_kernel_shape[0] if len(first_kernel_shape) == 4 else None
    if width not in SONONET_VARIANTS:
        raise SonoNetWeightsError(
            f"SonoNet weights file {path} must start with a (16|32|64, 1, 3, 3) kernel in {name}, but got shape {first_kernel_shape}. {_HOW_TO_GET_WEIGHTS}"
        )
    if requested is not None and width != requested:
        raise SonoNetVariantError(f"SonoNet weights file {path} must be SonoNet-{requested} as requested, but it contains SonoNet-{width}", found=int(width))
    return int(width)


def _checked_array(value: np.ndarray, expected: tuple[int, ...], path: Path, name: str, variant: int) -> np.ndarray:
    """Return ``value`` as a float32 array after checking its dtype, shape and values."""
    if not np.issubdtype(value.dtype, np.floating):
        raise SonoNetWeightsError(f"{name} in SonoNet weights file {path} must be floating point, but got dtype {value.dtype}")
    if tuple(value.shape) != expected:
        raise SonoNetWeightsError(f"{name} in SonoNet weights file {path} must have shape {expected} for SonoNet-{variant}, but got {tuple(value.shape)}")
    if not np.isfinite(value).all():
        raise SonoNetWeightsError(f"{name} in SonoNet weights file {path} must be finite, but contains NaN or infinity")
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_names(found: set[str], expected: set[str], path: Path, layout: str) -> None:
    """Raise unless ``found`` contains exactly the ``expected`` names, listing the differences."""
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        raise SonoNetWeightsError(
            f"SonoNet weights file {path} must contain exactly the {len(expected)} entries of {layout}, "
            f"but {len(missing)} are missing {missing[:5]} and {len(unexpected)} are unexpected {unexpected[:5]}"
        )


def _read_authors_npz(path: Path, requested: int | None) -> tuple[int, list[dict[str, np.ndarray]]]:
    """Read the authors' ``arr_0`` … ``arr_74`` and return the variant and the arrays of each layer."""
    # np.load reads a file that is not a zip archive as a pickle and then advises
    # allow_pickle=True, which is unsafe advice for a weights file from elsewhere.
    if not zipfile.is_zipfile(path):
        raise SonoNetWeightsError(f"SonoNet weights file {path} is not an .npz (zip) archive; it may be a text file or a truncated download. {_HOW_TO_GET_WEIGHTS}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise SonoNetWeightsError(f"SonoNet weights file {path} could not be read as an .npz archive: {_one_line(error)}") from error

    num_layers = len(_layer_specs(16))
    names = [f"arr_{index}" for index in range(num_layers * len(_NPZ_FIELDS))]
    _check_names(set(arrays), set(names), path, "the authors' release (arr_0 … arr_74)")

    variant = _infer_variant(tuple(arrays["arr_0"].shape), requested, path, "arr_0")
    layers: list[dict[str, np.ndarray]] = []
    for index, spec in enumerate(_layer_specs(variant)):
        layer: dict[str, np.ndarray] = {}
        for offset, field in enumerate(_NPZ_FIELDS):
            name = names[index * len(_NPZ_FIELDS) + offset]
            layer[field] = _checked_array(arrays[name], _expected_shape(spec, field), path, name, variant)
        layers.append(layer)
    return variant, layers


def _port_layer_names() -> list[tuple[str, str, float]]:
    """List, per SonoNet layer, the port's convolution prefix, batch-norm prefix and batch-norm eps.

    The port nests each feature convolution as ``features.<block>.<index>``, with the convolution
    at ``.0`` and the batch norm at ``.1``. The max pooling that closes a block has no weights.
    Its adaption layers form one sequence: convolution 0, batch norm 1, ReLU 2, convolution 3
    and batch norm 4.
    """
    names: list[tuple[str, str, float]] = []
    for block, widths in enumerate(_FEATURE_BLOCKS_16):
        for index in range(len(widths)):
            names.append((f"features.{block}.{index}.0", f"features.{block}.{index}.1", _PORT_FEATURE_EPS))
    names.append(("adaption.0", "adaption.1", _PORT_ADAPTION_EPS))
    names.append(("adaption.3", "adaption.4", _PORT_ADAPTION_EPS))
    return names


def _read_port_state_dict(path: Path, requested: int | None) -> tuple[int, list[dict[str, np.ndarray]]]:
    """Read a state dict of the PyTorch port and return the variant and the arrays of each layer."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise SonoNetWeightsError(f"SonoNet weights file {path} could not be read as a PyTorch state dict with weights_only=True: {_one_line(error)}") from error

    if not isinstance(loaded, Mapping):
        raise SonoNetWeightsError(f"SonoNet weights file {path} must contain a state dict of named tensors, but contains a {type(loaded).__name__}")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SonoNetWeightsError(f"SonoNet weights file {path} must map names to tensors, but maps {key!r} to a {type(value).__name__}")

    first_kernel = "features.0.0.0.weight"
    if first_kernel not in loaded:
        raise SonoNetWeightsError(f"SonoNet weights file {path} must contain {first_kernel} as the SonoNet_PyTorch port names it, but it is missing. {_HOW_TO_GET_WEIGHTS}")
    variant = _infer_variant(tuple(loaded[first_kernel].shape), requested, path, first_kernel)

    # PyTorch before 0.4.1 wrote no num_batches_tracked, and frozen batch norm never reads it,
    # so these keys may be absent. Every other key is required.
    layer_names = _port_layer_names()
    required = {f"{conv}.weight" for conv, _, _ in layer_names}
    required |= {f"{bn}.{field}" for _, bn, _ in layer_names for field in _PORT_BN_FIELDS}
    optional = {f"{bn}.num_batches_tracked" for _, bn, _ in layer_names}
    _check_names(set(loaded) - optional, required, path, "the SonoNet_PyTorch layout")

    for name in optional & set(loaded):
        if loaded[name].numel() != 1:
            raise SonoNetWeightsError(f"{name} in SonoNet weights file {path} must be a single count, but got shape {tuple(loaded[name].shape)}")

    layers: list[dict[str, np.ndarray]] = []
    for spec, (conv, bn, eps) in zip(_layer_specs(variant), layer_names):
        layer = {"kernel": _checked_array(_to_numpy(loaded[f"{conv}.weight"]), _expected_shape(spec, "kernel"), path, f"{conv}.weight", variant)}
        for port_field, field in _PORT_BN_FIELDS.items():
            name = f"{bn}.{port_field}"
            layer[field] = _checked_array(_to_numpy(loaded[name]), _expected_shape(spec, field), path, name, variant)

        running_var = layer.pop("running_var").astype(np.float64)
        if (running_var + eps <= 0).any():
            raise SonoNetWeightsError(f"{bn}.running_var in SonoNet weights file {path} must be above -{eps:g}, but its minimum is {running_var.min():g}")
        layer["inv_std"] = (1.0 / np.sqrt(running_var + eps)).astype(np.float32)
        layers.append(layer)
    return variant, layers


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Convert a CPU tensor to NumPy, as float32 if it is floating point (NumPy has no bfloat16)."""
    if tensor.is_floating_point():
        return tensor.detach().to(torch.float32).numpy()
    return tensor.detach().numpy()


def _one_line(error: BaseException) -> str:
    """Join the lines of an error message, which NumPy and torch.load sometimes wrap."""
    return " ".join(str(error).split())


# ----------------------------------------------------------------------------- input recipe


def detect_fan(image: np.ndarray, *, threshold: float = 0.01, opening_fraction: float = 0.005) -> CropBox:
    """Find the bounding box ``(row0, row1, col0, col1)`` of the ultrasound fan in a frame.

    1. Average the colour channels and mark pixels brighter than ``threshold`` times the
       frame's maximum.
    2. Remove text, tick marks and calliper dots with a morphological opening by a disk whose
       radius is ``opening_fraction`` times the shorter side, and at least 2 pixels.
    3. Return the bounding box of the largest connected component, rows and columns half-open.

    It relies on the fan lying on a black background, with vendor overlays (header bars,
    parameter text, grey-scale bars) separated from it by at least one black pixel, as on the
    GE Voluson frames of the SonoNet release. An overlay drawn on top of the fan or touching it
    stays inside the box. Because the crop is a box, the black corners beside a sector remain,
    with any text in them. A frame without black borders yields nearly the whole frame.

    NOTE: on the 13 example frames the box covers the whole sector, so it is wider and taller
    than the authors' fixed crop (intersection over union 0.78 to 0.89 with it), and the two
    low-confidence frames (3VV, Lips) change label. Prefer a fixed box for a known scanner.

    Raises:
        BlankFrameError: if the frame is black.
        ValueError: if the image is not (H, W) or (H, W, 3), or nothing is brighter than the threshold.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), but got {threshold}")
    if not 0 < opening_fraction < 0.5:
        raise ValueError(f"opening_fraction must be in (0, 0.5), but got {opening_fraction}")
    grey = _grey(_check_image(image))

    # 1. Foreground: anything above a small fraction of the brightest pixel.
    maximum = float(grey.max())
    if maximum <= 0:
        raise BlankFrameError(f"detect_fan needs a frame with a visible fan, but the {grey.shape} frame is black")
    foreground = grey > threshold * maximum

    # 2. Opening by a disk: text strokes and thin markers are narrower than the disk.
    radius = max(2, round(opening_fraction * min(grey.shape)))
    offsets = np.arange(-radius, radius + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2
    opened = ndimage.binary_opening(foreground, structure=disk)

    # 3. The fan is the largest region left.
    labels, count = ndimage.label(opened)
    if count == 0:
        raise ValueError(f"detect_fan found no region wider than {2 * radius + 1} pixels above {threshold:g} of the maximum in the {grey.shape} frame. Pass a fixed crop box instead")
    sizes = ndimage.sum_labels(opened, labels, index=np.arange(1, count + 1))
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]

    box = (int(rows.start), int(rows.stop), int(cols.start), int(cols.stop))
    logger.debug("Detected the fan at rows %d:%d and columns %d:%d of a %s frame", *box, grey.shape)
    return box


def sononet_input(image: np.ndarray, *, crop: Crop) -> torch.Tensor:
    """Turn an ultrasound frame (H, W) or (H, W, 3) into the SonoNet input (1, 224, 288).

    The authors' recipe, with the resizing that reproduces their reference confidences:

    1. Crop: ``"none"``, ``"auto"`` (:func:`detect_fan`) or a box ``(row0, row1, col0, col1)``.
    2. Resize to 224×288 (height×width) with PIL's bilinear filter, which widens its kernel
       when it shrinks and so smooths like an antialiasing filter.
    3. Average the colour channels.
    4. Standardise by the frame's own mean and standard deviation, then multiply by 255.

    A uint8 frame is resized as uint8 RGB, which rounds each resized channel to an integer
    before the average. With that rounding, SonoNet-16 matches the reference confidences of the
    release's 13 example frames to within 0.001, and without it to within 0.017. A float frame
    is resized in float32. Standardisation makes the result independent of the intensity scale.

    Raises:
        BlankFrameError: if the frame is black, or constant after the crop.
        CropBoxError: if a fixed crop box does not lie inside the frame.
        ValueError: if the image or the crop is invalid in another way.
    """
    image = _check_image(image)
    row0, row1, col0, col1 = _resolve_crop(image, crop)
    cropped = image[row0:row1, col0:col1]

    resized = _resize_bilinear(cropped, SONONET_INPUT_SIZE)
    grey = _grey(resized)

    std = float(grey.std())
    if std == 0:
        raise BlankFrameError(f"SonoNet input must vary, but the frame cropped to rows {row0}:{row1} and columns {col0}:{col1} is constant")
    standardised = (grey - grey.mean()) / std * 255.0
    return torch.from_numpy(standardised.astype(np.float32))[None]


def _check_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` if it is a real-valued (H, W) or (H, W, 3) array, else raise ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"frame must be a NumPy array, but got {type(image).__name__}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"frame must have shape (H, W) or (H, W, 3), but got {image.shape}. Drop an alpha channel with image[..., :3]")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"frame must be uint8 or floating point, but got dtype {image.dtype}")
    if min(image.shape[:2]) < 2:
        raise ValueError(f"frame must be at least 2×2 pixels, but got {image.shape}")
    if image.dtype != np.uint8 and not np.isfinite(image).all():
        raise ValueError("frame must be finite, but contains NaN or infinity")
    return image


def _resolve_crop(image: np.ndarray, crop: Crop) -> CropBox:
    """Turn ``crop`` into a box inside ``image``, raising ValueError for an invalid one."""
    height, width = image.shape[:2]
    if isinstance(crop, str):
        if crop == "none":
            return (0, height, 0, width)
        if crop == "auto":
            return detect_fan(image)
        raise ValueError(f"crop must be 'none', 'auto' or (row0, row1, col0, col1), but got {crop!r}")

    if not isinstance(crop, Sequence) or len(crop) != 4 or not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in crop):
        raise ValueError(f"crop must be 'none', 'auto' or four integers (row0, row1, col0, col1), but got {crop!r}")
    row0, row1, col0, col1 = (int(value) for value in crop)
    if not (0 <= row0 < row1 <= height and 0 <= col0 < col1 <= width):
        raise CropBoxError(f"crop box (row0, row1, col0, col1) must lie inside the {height}×{width} frame with row0 < row1 and col0 < col1, but got {crop}")
    return (row0, row1, col0, col1)


def _resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W) or (H, W, 3) to ``size`` (height, width) with PIL's bilinear filter, keeping the dtype kind."""
    height, width = size
    if image.dtype == np.uint8:
        resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample=Image.Resampling.BILINEAR)
        return np.asarray(resized)

    channels = image[..., None] if image.ndim == 2 else image
    resized_channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., index], dtype=np.float32), mode="F").resize((width, height), resample=Image.Resampling.BILINEAR))
        for index in range(channels.shape[2])
    ]
    return np.stack(resized_channels, axis=-1) if image.ndim == 3 else resized_channels[0]


def _grey(image: np.ndarray) -> np.ndarray:
    """Return a frame as float64 (H, W), averaging the colour channels of an (H, W, 3) frame."""
    as_float = image.astype(np.float64)
    return as_float.mean(axis=2) if as_float.ndim == 3 else as_float


# ----------------------------------------------------------------------------- classification


@dataclass
class PlanePrediction:
    """SonoNet's most probable plane for one frame, its probability and all 14 probabilities."""

    label: str
    confidence: float
    probabilities: np.ndarray


def classify_planes(model: SonoNet, images: list[np.ndarray], *, crop: Crop, batch_size: int = 16) -> list[PlanePrediction]:
    """Classify the standard plane of each frame with SonoNet, in batches of ``batch_size``.

    Each frame goes through :func:`sononet_input` with the same ``crop``, and the first
    frame it rejects raises its error. To skip such frames, build the inputs one by one
    and pass them to :func:`classify_inputs`.
    """
    return classify_inputs(model, [sononet_input(image, crop=crop) for image in images], batch_size=batch_size)


def classify_inputs(model: SonoNet, inputs: list[torch.Tensor], *, batch_size: int = 16) -> list[PlanePrediction]:
    """Classify SonoNet inputs (1, 224, 288) from :func:`sononet_input`, in batches of ``batch_size``.

    The model runs without gradients on the device of its parameters, in whatever train or
    eval mode it is in (:func:`load_sononet` returns it in eval mode, and batch norm is
    frozen either way).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, but got {batch_size!r}")

    device = next(model.parameters()).device
    predictions: list[PlanePrediction] = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.stack(inputs[start : start + batch_size])
        with torch.inference_mode():
            probabilities = model.predict_proba(batch.to(device)).cpu().numpy()

        for row in probabilities:
            index = int(np.argmax(row))
            predictions.append(PlanePrediction(SONONET_LABELS[index], float(row[index]), row.copy()))
    return predictions


def keep_plane(prediction: PlanePrediction, *, labels: Sequence[str] = ("Brain (Tv.)",), min_confidence: float = 0.9) -> tuple[bool, str]:
    """Decide whether to keep a frame from its SonoNet prediction, and return the decision with its reason.

    A frame is kept when its most probable plane is one of ``labels`` with a probability of at
    least ``min_confidence``.

    Example:
        >>> prediction = PlanePrediction("Brain (Cb.)", 0.97, np.zeros(14))
        >>> keep_plane(prediction)
        (False, 'plane Brain (Cb.) (0.97), not one of Brain (Tv.)')
    """
    if isinstance(labels, str) or not labels or any(label not in SONONET_LABELS for label in labels):
        raise ValueError(f"labels must be a non-empty list of SonoNet labels {list(SONONET_LABELS)}, but got {labels!r}")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], but got {min_confidence}")

    if prediction.label not in labels:
        return False, f"plane {prediction.label} ({prediction.confidence:.2f}), not one of {', '.join(labels)}"
    if prediction.confidence < min_confidence:
        return False, f"plane confidence {_format_below(prediction.confidence, min_confidence)} below {min_confidence:g}"
    return True, f"plane {prediction.label} ({prediction.confidence:.2f}) at or above {min_confidence:g}"


def _format_below(confidence: float, threshold: float) -> str:
    """Format a confidence below ``threshold`` with two decimals, or more where two would round up to it."""
    text = f"{confidence:.2f}"
    if float(text) >= threshold:
        text = f"{confidence:.6g}"
    return text
