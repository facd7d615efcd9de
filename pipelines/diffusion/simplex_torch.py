"""3D OpenSimplex noise in PyTorch, equal to the ``opensimplex`` package, for whole batches on any device.

``opensimplex`` (0.4.5.1) evaluates Kurt Spencer's 3D OpenSimplex noise one point at a
time. This module evaluates the same function for every pixel of every sample at once. Each
sample has its own seed, and so its own permutation table.

OpenSimplex skews a point onto a lattice of rhombohedral cells. Inside its cell the point
lies in one of three regions: the tetrahedron at corner (0,0,0), the one at (1,1,1), or the
octahedron between them. The noise is a sum of kernels ``(2 - |d|^2)^4 * (g . d)`` over the
corners of that region and two extra lattice points, where ``d`` is the offset from the
lattice point and ``g`` its hashed gradient. The extra points are a fixed choice that depends
on a few comparisons (see ``simplex_tables``), not every lattice point within reach, so the
same comparisons are made here.

Dtypes: the skew, the cells and all comparisons are float64, as in ``opensimplex``. In
float32 they would move cell and region borders, and the noise jumps by up to about 1e-4
across a region border.
The kernels are float32 (``KERNEL_DTYPE``), which keeps the result within 1e-6 of
``opensimplex`` (measured on 128 x 128 images, 6 octaves) and halves their memory traffic.
Lattice coordinates and hashes are int64.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opensimplex.constants import GRADIENTS3, NORM_CONSTANT3, SQUISH_CONSTANT3, STRETCH_CONSTANT3

from pipelines.diffusion.simplex_tables import EXTRA_OFFSETS, FAR_KEYS, NEAR_KEYS, OCTAHEDRON_KEYS, TABLE_SIZE, permutations

KERNEL_DTYPE = torch.float32

_GRADIENTS = GRADIENTS3.reshape(-1, 3).astype(np.float64)
# Each sample's tables are stored twice in a row of 512, so perm[perm[a] + b] with a and b
# in 0..255 needs no second "mod 256".
_ROW = 2 * TABLE_SIZE
# Corner v of the cell is (v >> 2 & 1, v >> 1 & 1, v & 1), the order the hashing below produces.
_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int64)
_EXTRA_KEYS = len(EXTRA_OFFSETS)
# Points per noise3 call in fractal_noise. Its temporaries take about 200 bytes per point, and
# larger calls were no faster per point on a 2-core CPU.
_MAX_POINTS = 2**17


def _unskewed(offsets: np.ndarray) -> np.ndarray:
    """Return the position, relative to the cell's origin, of lattice points at ``offsets`` (shape ``(..., 3)``)."""
    return offsets + offsets.sum(-1, keepdims=True) * SQUISH_CONSTANT3


@dataclass(frozen=True)
class _Constants:
    """Small tables on one device that depend on the lattice geometry and the gradients alone."""

    # Components of each of the 24 gradients, shape (3, 24).
    gradients: torch.Tensor
    # Unskewed offsets of the 8 corners, shape (3, 8, 1) to broadcast against (3, 8, points).
    corners: torch.Tensor
    # Each corner's number of ones (0..3), which selects its row of the "unused" masks.
    corner_sums: torch.Tensor
    # The extra points of every key, flattened from (3 axes, 2 points, 64 keys): integer offsets
    # and unskewed offsets.
    extra_offsets: torch.Tensor
    extra_unskewed: torch.Tensor

    @classmethod
    def build(cls, device: torch.device) -> _Constants:
        """Compute the tables and store them on ``device``."""
        corners = _unskewed(_CORNERS.astype(np.float64)).T.reshape(3, 8, 1)
        extras = EXTRA_OFFSETS.transpose(2, 1, 0)
        extras_unskewed = _unskewed(EXTRA_OFFSETS.astype(np.float64)).transpose(2, 1, 0)

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)

        return cls(
            gradients=tensor(_GRADIENTS.T, KERNEL_DTYPE),
            corners=tensor(corners, KERNEL_DTYPE),
            corner_sums=tensor(_CORNERS.sum(1), torch.int64),
            extra_offsets=tensor(extras.reshape(-1), torch.int64),
            extra_unskewed=tensor(extras_unskewed.reshape(-1), KERNEL_DTYPE),
        )


_CONSTANTS: dict[torch.device, _Constants] = {}


def _constants(device: torch.device) -> _Constants:
    if device not in _CONSTANTS:
        _CONSTANTS[device] = _Constants.build(device)
    return _CONSTANTS[device]


@dataclass(frozen=True)
class LatticeTables:
    """The permutation and gradient tables of several seeds, flattened into rows of 512 on one device.

    ``perm[n * 512 + k]`` is ``n * 512 + p[k % 256]`` for seed ``n``'s permutation ``p``, so a
    value read from the table is already an index into the seed's row.
    ``gradient_index[n * 512 + k]`` is the number (0..23) of the gradient that opensimplex
    gives hash ``k``: ``p[k % 256] % 24``.
    """

    perm: torch.Tensor
    gradient_index: torch.Tensor
    # Carried here, not looked up inside noise3, so that torch.compile traces no global state.
    constants: _Constants

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> LatticeTables:
        """Build the tables of ``seeds`` on ``device``; row ``n`` belongs to ``seeds[n]``."""
        table = np.tile(permutations(seeds), (1, 2))
        rows = np.arange(len(seeds)).reshape(-1, 1) * _ROW
        perm = torch.from_numpy((table + rows).reshape(-1)).to(device)
        gradient_index = torch.from_numpy((table % len(_GRADIENTS)).reshape(-1)).to(device)
        return cls(perm=perm, gradient_index=gradient_index, constants=_constants(torch.device(device)))


def noise3(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, sample: torch.Tensor, tables: LatticeTables) -> torch.Tensor:
    """Evaluate 3D OpenSimplex noise at ``(x, y, z)`` with the tables of seed number ``sample``.

    ``x``, ``y``, ``z`` (float64) and ``sample`` (int64 row numbers of ``tables``) broadcast to
    one shape, which the result has. It equals ``opensimplex.OpenSimplex(seeds[sample]).noise3``
    to within 1e-6, in ``KERNEL_DTYPE``.
    """
    for name, coordinate in (("x", x), ("y", y), ("z", z)):
        if coordinate.dtype != torch.float64:
            raise ValueError(f"{name} must be float64 so that cells match opensimplex, but got {coordinate.dtype}")
    shape = torch.broadcast_shapes(x.shape, y.shape, z.shape, sample.shape)
    x, y, z = (coordinate.expand(shape).reshape(-1) for coordinate in (x, y, z))
    rows = sample.expand(shape).reshape(-1) * _ROW
    constants = tables.constants

    # 1. Skew onto the lattice ("stretch"), find the cell, and skew its origin back ("squish").
    #    Points run along the last axis of every tensor below, so each operation is one
    #    contiguous pass; lattice points and axes run along the first.
    stretch = (x + y + z) * STRETCH_CONSTANT3
    xs, ys, zs = x + stretch, y + stretch, z + stretch
    xsb, ysb, zsb = torch.floor(xs), torch.floor(ys), torch.floor(zs)
    squish = (xsb + ysb + zsb) * SQUISH_CONSTANT3
    inside = (xs - xsb, ys - ysb, zs - zsb)
    lattice = torch.stack([xsb, ysb, zsb]).to(torch.int64)

    # 2. The point's region and the key of its two extra points.
    in_sum = inside[0] + inside[1] + inside[2]
    near, far = in_sum <= 1, in_sum >= 2
    key = _extra_point_keys(*inside, in_sum, near, far)

    # 3. The corners of the cell that the region uses (sums 0..1 near (0,0,0), 1..2 in the
    #    octahedron, 2..3 near (1,1,1)), then the two extra points.
    offset = torch.stack([x - (xsb + squish), y - (ysb + squish), z - (zsb + squish)]).to(KERNEL_DTYPE).unsqueeze(1)
    unused = torch.stack([~near, far, near, ~far]).index_select(0, constants.corner_sums)
    gradients = _corner_gradients(lattice, rows, tables)
    value = _kernel_sum(offset - constants.corners, gradients, constants, unused)

    index = key + _EXTRA_KEYS * torch.arange(6, device=x.device).view(6, 1)
    extra = _lookup(constants.extra_offsets, index).view(3, 2, -1)
    gradients = _hash(lattice.unsqueeze(1) + extra, rows, tables)
    value += _kernel_sum(offset - _lookup(constants.extra_unskewed, index).view(3, 2, -1), gradients, constants)
    return (value / NORM_CONSTANT3).view(shape)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return ``table[index]`` for a 1-D table; ``index_select`` is several times faster than ``take`` on CPU."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _kernel_sum(
    distance: torch.Tensor, gradients: torch.Tensor, constants: _Constants, unused: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the sum over lattice points of ``max(2 - |d|^2, 0)^4 * (g . d)``.

    ``distance`` is ``d``, of shape ``(3, lattice points, points)``, and ``gradients`` the
    gradient numbers ``(lattice points, points)``; ``unused`` marks the terms to leave out.
    """
    dx, dy, dz = distance
    attenuation = 2 - dx * dx
    attenuation.addcmul_(dy, dy, value=-1).addcmul_(dz, dz, value=-1).clamp_(min=0)
    if unused is not None:
        attenuation.masked_fill_(unused, 0)
    gx, gy, gz = (_lookup(component, gradients) for component in constants.gradients)
    dot = (gx * dx).addcmul_(gy, dy).addcmul_(gz, dz)
    squared = attenuation.mul_(attenuation)
    return dot.mul_(squared).mul_(squared).sum(0)


def _corner_gradients(lattice: torch.Tensor, rows: torch.Tensor, tables: LatticeTables) -> torch.Tensor:
    """Return the gradient numbers of the 8 corners of each point's cell, shape ``(8, points)``.

    The hash is ``perm[perm[perm[x] + y] + z]``; corners share its first two steps.
    """
    step = torch.arange(2, device=lattice.device).view(2, 1)
    x, y, z = ((lattice[axis] + step) & 255 for axis in range(3))
    hashed = _lookup(tables.perm, x + rows)
    hashed = _lookup(tables.perm, hashed.unsqueeze(1) + y)
    gradients = _lookup(tables.gradient_index, hashed.unsqueeze(2) + z)
    return gradients.view(8, -1)


def _hash(points: torch.Tensor, rows: torch.Tensor, tables: LatticeTables) -> torch.Tensor:
    """Return the gradient numbers of lattice points, given as integer coordinates ``(3, ..., points)``."""
    x, y, z = points & 255
    hashed = _lookup(tables.perm, x + rows)
    hashed = _lookup(tables.perm, hashed + y)
    return _lookup(tables.gradient_index, hashed + z)


def _extra_point_keys(
    xins: torch.Tensor, yins: torch.Tensor, zins: torch.Tensor, in_sum: torch.Tensor, near: torch.Tensor, far: torch.Tensor
) -> torch.Tensor:
    """Return each point's row of ``EXTRA_OFFSETS``, from the comparisons that ``opensimplex`` makes."""
    # Tetrahedron at (0,0,0): a is corner x and b corner y unless corner z is closer.
    a_takes_z = (xins < yins) & (zins > xins)
    b_takes_z = (xins >= yins) & (zins > yins)
    a_score, b_score = torch.where(a_takes_z, zins, xins), torch.where(b_takes_z, zins, yins)
    origin_score = 1 - in_sum
    near_key = _pack(NEAR_KEYS, [a_takes_z, b_takes_z, b_score > a_score, (origin_score > a_score) | (origin_score > b_score)])

    # Tetrahedron at (1,1,1), the mirror image: here a lower score is closer.
    a_takes_z = (xins > yins) & (zins < xins)
    b_takes_z = (xins <= yins) & (zins < yins)
    a_score, b_score = torch.where(a_takes_z, zins, xins), torch.where(b_takes_z, zins, yins)
    corner_score = 3 - in_sum
    far_key = _pack(FAR_KEYS, [a_takes_z, b_takes_z, b_score < a_score, (corner_score < a_score) | (corner_score < b_score)])

    # Octahedron: of each opposite pair of corners, the one on the point's side of the middle plane.
    p1, p2, p3 = xins + yins, xins + zins, yins + zins
    a_score, b_score, score = (p1 - 1).abs(), (p2 - 1).abs(), (p3 - 1).abs()
    replace_a = (a_score <= b_score) & (a_score < score)
    replace_b = (a_score > b_score) & (b_score < score)
    octahedron_key = _pack(OCTAHEDRON_KEYS, [p1 > 1, p2 > 1, p3 > 1, replace_a, replace_b])

    return torch.where(near, near_key, torch.where(far, far_key, octahedron_key)).to(torch.int64)


def _pack(start: int, bits: list[torch.Tensor]) -> torch.Tensor:
    """Return ``start + sum(2**k * bits[k])`` as uint8."""
    key = torch.full(bits[0].shape, start, dtype=torch.uint8, device=bits[0].device)
    for position, bit in enumerate(bits):
        key.add_(bit, alpha=1 << position)
    return key


@functools.cache
def _compiled_noise3() -> Callable[..., torch.Tensor]:
    """Return ``noise3`` compiled by ``torch.compile`` into fused kernels, built on first use."""
    # NOTE: checked against eager noise3 on the CPU only, where it agreed within 3e-7 after a
    # 47 s compile on 2 busy cores. Its speed and compile time on CUDA are not measured yet.
    return torch.compile(noise3, dynamic=True)


def fractal_noise(
    seeds: Sequence[int],
    steps: torch.Tensor | Sequence[float],
    height: int,
    width: int,
    *,
    octaves: int,
    persistence: float,
    frequency: float,
    device: torch.device | str = "cpu",
    compile: bool = False,
) -> torch.Tensor:
    """Draw multi-octave noise, one ``(height, width)`` image per seed at its own step, in ``KERNEL_DTYPE``.

    Image ``n`` is the sum over octaves ``k`` of ``persistence**k * noise3(x / f_k, y / f_k,
    steps[n] / f_k)`` with ``f_k = frequency / 2**k``, where ``x`` is the column and ``y`` the
    row, under seed ``seeds[n]``. ``compile`` runs ``noise3`` through ``torch.compile``: the
    first call of a process then takes tens of seconds, later calls run fused kernels.
    """
    if octaves < 1:
        raise ValueError(f"octaves must be at least 1, but got {octaves}")
    device = torch.device(device)
    steps = torch.as_tensor(steps, dtype=torch.float64).to(device).reshape(-1)
    if steps.shape[0] != len(seeds):
        raise ValueError(f"steps must have one value per seed ({len(seeds)}), but got {steps.shape[0]}")
    evaluate = _compiled_noise3() if compile else noise3
    tables = LatticeTables.from_seeds(seeds, device)
    sample = torch.arange(len(seeds), device=device).view(1, -1, 1, 1)
    frequencies = torch.tensor([frequency / 2**octave for octave in range(octaves)], dtype=torch.float64, device=device)
    amplitudes = torch.tensor([persistence**octave for octave in range(octaves)], dtype=KERNEL_DTYPE, device=device)
    columns = torch.arange(width, dtype=torch.float64, device=device).view(1, 1, 1, width)
    rows = torch.arange(height, dtype=torch.float64, device=device).view(1, 1, height, 1)
    steps = steps.view(1, -1, 1, 1)

    # Octaves go through noise3 together, as one more axis, in groups of at most
    # _MAX_POINTS points: fewer, larger operations, with bounded memory.
    total = torch.zeros(len(seeds), height, width, dtype=KERNEL_DTYPE, device=device)
    group = max(1, _MAX_POINTS // (len(seeds) * height * width))
    for first in range(0, octaves, group):
        octave_frequencies = frequencies[first : first + group].view(-1, 1, 1, 1)
        layers = evaluate(columns / octave_frequencies, rows / octave_frequencies, steps / octave_frequencies, sample, tables)
        total += (layers * amplitudes[first : first + group].view(-1, 1, 1, 1)).sum(0)
    return total
