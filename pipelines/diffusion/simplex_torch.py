"""3D OpenSimplex noise in PyTorch, equal to the ``opensimplex`` package, for whole batches on any device.

``opensimplex`` (0.4.5.1) evaluates Kurt Spencer's 3D OpenSimplex noise one point at a
time. This module evaluates the same function for every pixel of every sample at once. Each
sample has its own seed, and so its own permutation table.

The algorithm, per point:

1. Skew the point onto a lattice of rhombohedral cells ("stretch"), take the cell's origin
   by flooring, and skew the origin back ("squish") to get the point's offset from it.
2. Find the point's region in the cell: the tetrahedron at corner (0,0,0), the one at
   (1,1,1), or the octahedron between them, from the sum of its coordinates inside the cell.
   A few more comparisons select two extra lattice points (see ``simplex_tables``), as
   ``opensimplex`` makes them.
3. Sum the kernels ``max(2 - |d|^2, 0)^4 * (g . d)`` over the corners of the region and the
   two extra points, where ``d`` is the offset from the lattice point and ``g`` its gradient,
   found by hashing the lattice point through the seed's permutation table.

``noise3`` writes this as operations on tensors of points, one point's value depending on
that point alone. Under ``torch.compile`` (see ``simplex_compile``) the whole function
becomes a single loop over the points, so no intermediate tensor reaches memory. Uncompiled,
``fractal_noise`` runs it on chunks of points that stay in the CPU's cache. All 8 corners of
the cell are evaluated, and the region's mask zeroes the 2 to 4 that it does not use. In
compiled code the corners then share the first two of their three table lookups, so the 10
lattice points of a point take 10 lookups in ``perm`` and 10 in the gradient table.

Dtypes: the skew, the cells and all comparisons are float64, as in ``opensimplex``. In
float32 they would move cell and region borders, and the noise jumps by up to about 1e-4
across a region border. The kernels are float32 (``KERNEL_DTYPE``), which keeps the result
within 1e-6 of ``opensimplex`` (measured on 128 x 128 images, 6 octaves). Lattice
coordinates and hashes are int64. Each gradient and each key's extra-point offsets are read
as one packed int32 (see ``simplex_tables``). Masks stay bool tensors from float64
comparisons and take effect only through ``torch.where``. When the keys were sums of masks
turned into uint8, the compiled CPU code converted each mask lane by lane and ran about 2.5
times slower.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opensimplex.constants import NORM_CONSTANT3, SQUISH_CONSTANT3, STRETCH_CONSTANT3

from pipelines.diffusion.simplex_compile import compiled
from pipelines.diffusion.simplex_tables import (
    EXTRA_OFFSET_BIAS,
    EXTRA_OFFSET_BITS,
    FAR_KEYS,
    GRADIENT_BIAS,
    GRADIENTS,
    NEAR_KEYS,
    OCTAHEDRON_KEYS,
    PACKED_EXTRA_OFFSETS,
    PACKED_GRADIENTS,
    TABLE_SIZE,
    permutations,
)

KERNEL_DTYPE = torch.float32

# Each sample's tables are stored twice in a row of 512, so perm[perm[a] + b] with a and b
# in 0..255 needs no second "mod 256".
_ROW = 2 * TABLE_SIZE
# The cell's corners, with the number of ones in each (0..3).
_CORNERS = [(corner, sum(corner)) for corner in itertools.product((0, 1), repeat=3)]
# Points per call of noise3 in fractal_noise. On the CPU an uncompiled chunk's tensors stay
# in the cache: on a 2-core Xeon, 2**16 points took about 10 % less time than 2**14 and 25 %
# less than 2**18.
# The compiled kernel pads every call to a full chunk, so a larger chunk would slow small
# draws. On CUDA larger calls keep the GPU busy.
# NOTE: the CUDA chunk is an estimate; its speed on a GPU has not been measured.
_CHUNK_POINTS = {"cpu": 2**16}
_DEFAULT_CHUNK_POINTS = 2**22


@dataclass(frozen=True)
class LatticeTables:
    """The permutation and gradient tables of several seeds, flattened into rows of 512 on one device.

    ``perm[n * 512 + k]`` is ``n * 512 + p[k % 256]`` for seed ``n``'s permutation ``p``, so a
    value read from the table is already an index into the seed's row. ``gradients[n * 512 +
    k]`` is the gradient that opensimplex gives hash ``k``, number ``p[k % 256] % 24``, packed
    as in ``simplex_tables.PACKED_GRADIENTS``. ``extra_offsets`` is ``PACKED_EXTRA_OFFSETS``.
    """

    perm: torch.Tensor
    gradients: torch.Tensor
    extra_offsets: torch.Tensor

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> LatticeTables:
        """Build the tables of ``seeds`` on ``device``; row ``n`` belongs to ``seeds[n]``."""
        table = np.tile(permutations(seeds), (1, 2))
        rows = np.arange(len(seeds)).reshape(-1, 1) * _ROW
        return cls(
            perm=torch.from_numpy((table + rows).reshape(-1)).to(device),
            gradients=torch.from_numpy(PACKED_GRADIENTS[table % len(GRADIENTS)].reshape(-1)).to(device, torch.int32),
            extra_offsets=torch.from_numpy(PACKED_EXTRA_OFFSETS).to(device, torch.int32),
        )


def noise3(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, sample: torch.Tensor, tables: LatticeTables) -> torch.Tensor:
    """Evaluate 3D OpenSimplex noise at ``(x, y, z)`` with the tables of seed number ``sample``.

    ``x``, ``y``, ``z`` (float64) and ``sample`` (int64 row numbers of ``tables``) broadcast to
    one shape, which the result has. It equals ``opensimplex.OpenSimplex(seeds[sample]).noise3``
    to within 1e-6, in ``KERNEL_DTYPE``.
    """
    for name, coordinate in (("x", x), ("y", y), ("z", z)):
        if coordinate.dtype != torch.float64:
            raise ValueError(f"{name} must be float64 so that cells match opensimplex, but got {coordinate.dtype}")
    rows = sample * _ROW

    # 1. Skew onto the lattice ("stretch"), find the cell, and skew its origin back ("squish").
    stretch = (x + y + z) * STRETCH_CONSTANT3
    xs, ys, zs = x + stretch, y + stretch, z + stretch
    xsb, ysb, zsb = torch.floor(xs), torch.floor(ys), torch.floor(zs)
    squish = (xsb + ysb + zsb) * SQUISH_CONSTANT3
    xins, yins, zins = xs - xsb, ys - ysb, zs - zsb
    origin = (xsb.to(torch.int64), ysb.to(torch.int64), zsb.to(torch.int64))
    offset = tuple((coordinate - (base + squish)).to(KERNEL_DTYPE) for coordinate, base in ((x, xsb), (y, ysb), (z, zsb)))

    # 2. The point's region, and the key of its two extra points.
    in_sum = xins + yins + zins
    near, far = in_sum <= 1, in_sum >= 2
    key = _extra_point_keys(xins, yins, zins, in_sum, near, far)

    # 3. The corners of the cell that the region uses (sums 0..1 near (0,0,0), 1..2 in the
    #    octahedron, 2..3 near (1,1,1)), then the two extra points.
    used = {0: near, 1: ~far, 2: ~near, 3: far}
    value = torch.zeros_like(offset[0])
    for corner, corner_sum in _CORNERS:
        lattice = tuple(base + step for base, step in zip(origin, corner, strict=True))
        term = _kernel(lattice, _distance(offset, corner), tables, rows)
        value = value + torch.where(used[corner_sum], term, 0.0)
    packed = _lookup(tables.extra_offsets, key)
    for point in range(2):
        extra = [_unpack(packed, EXTRA_OFFSET_BITS * (3 * point + axis), EXTRA_OFFSET_BITS, EXTRA_OFFSET_BIAS) for axis in range(3)]
        lattice = tuple(base + step for base, step in zip(origin, extra, strict=True))
        value = value + _kernel(lattice, _distance(offset, [step.to(KERNEL_DTYPE) for step in extra]), tables, rows)
    return value / NORM_CONSTANT3


def _distance(offset: Sequence[torch.Tensor], point: Sequence[float] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Return ``d``, the point's offset from a lattice point, from ``offset``, its offset from the cell's origin.

    ``point`` gives the lattice point in lattice steps from the origin, which unskew to
    ``point + sum(point) * SQUISH_CONSTANT3``.
    """
    squish = (point[0] + point[1] + point[2]) * SQUISH_CONSTANT3
    return [start - (step + squish) for start, step in zip(offset, point, strict=True)]


def _kernel(lattice: Sequence[torch.Tensor], distance: Sequence[torch.Tensor], tables: LatticeTables, rows: torch.Tensor) -> torch.Tensor:
    """Return ``max(2 - |d|^2, 0)^4 * (g . d)`` for ``d = distance`` and the gradient ``g`` of lattice point ``lattice``."""
    dx, dy, dz = distance
    gradient = _gradient(*lattice, tables, rows)
    gx, gy, gz = (_unpack(gradient, 8 * axis, 8, GRADIENT_BIAS).to(KERNEL_DTYPE) for axis in range(3))
    attenuation = (2 - dx * dx - dy * dy - dz * dz).clamp(min=0)
    attenuation = attenuation * attenuation
    return attenuation * attenuation * (gx * dx + gy * dy + gz * dz)


def _gradient(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, tables: LatticeTables, rows: torch.Tensor) -> torch.Tensor:
    """Return the packed gradient of lattice point ``(x, y, z)``: ``gradients[perm[perm[x] + y] + z]`` in the sample's row."""
    hashed = _lookup(tables.perm, (x & 255) + rows)
    hashed = _lookup(tables.perm, hashed + (y & 255))
    return _lookup(tables.gradients, hashed + (z & 255))


def _unpack(packed: torch.Tensor, shift: int, bits: int, bias: int) -> torch.Tensor:
    """Return the ``bits``-bit field of ``packed`` that starts at bit ``shift``, minus ``bias``."""
    return ((packed >> shift) & ((1 << bits) - 1)) - bias


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return ``table[index]`` for a 1-D table; ``index_select`` is several times faster than ``take`` on CPU."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _extra_point_keys(
    xins: torch.Tensor, yins: torch.Tensor, zins: torch.Tensor, in_sum: torch.Tensor, near: torch.Tensor, far: torch.Tensor
) -> torch.Tensor:
    """Return each point's row of ``EXTRA_OFFSETS``, from the comparisons that ``opensimplex`` makes.

    Bit ``k`` of a key is argument ``k`` of the region's function in ``simplex_tables``. The
    bits are summed as float64, and masks are combined by nesting ``torch.where``. In compiled
    CPU code, every ``&`` of two masks and every mask turned into an integer costs a
    conversion, and these conversions took about 15 % of the kernel's time.
    """
    # Tetrahedron at (0,0,0): a is corner x and b corner y unless corner z is closer.
    x_below_y, z_above_x, z_above_y = xins < yins, zins > xins, zins > yins
    a_score = torch.where(x_below_y, torch.where(z_above_x, zins, xins), xins)
    b_score = torch.where(x_below_y, yins, torch.where(z_above_y, zins, yins))
    origin_score = 1 - in_sum
    near_key = NEAR_KEYS + _both(x_below_y, z_above_x, 0) + _both(~x_below_y, z_above_y, 1)
    near_key = near_key + _flag(b_score > a_score, 2) + _either(origin_score > a_score, origin_score > b_score, 3)

    # Tetrahedron at (1,1,1), the mirror image: here a lower score is closer.
    x_above_y, z_below_x, z_below_y = xins > yins, zins < xins, zins < yins
    a_score = torch.where(x_above_y, torch.where(z_below_x, zins, xins), xins)
    b_score = torch.where(x_above_y, yins, torch.where(z_below_y, zins, yins))
    corner_score = 3 - in_sum
    far_key = FAR_KEYS + _both(x_above_y, z_below_x, 0) + _both(~x_above_y, z_below_y, 1)
    far_key = far_key + _flag(b_score < a_score, 2) + _either(corner_score < a_score, corner_score < b_score, 3)

    # Octahedron: of each opposite pair of corners, the one on the point's side of the middle
    # plane. The third pair replaces a or b when the point is closer to its plane.
    p1, p2, p3 = xins + yins, xins + zins, yins + zins
    a_score, b_score, score = (p1 - 1).abs(), (p2 - 1).abs(), (p3 - 1).abs()
    octahedron_key = OCTAHEDRON_KEYS + _flag(p1 > 1, 0) + _flag(p2 > 1, 1) + _flag(p3 > 1, 2)
    octahedron_key = octahedron_key + _both(a_score <= b_score, a_score < score, 3) + _both(a_score > b_score, b_score < score, 4)

    return torch.where(near, near_key, torch.where(far, far_key, octahedron_key)).to(torch.int64)


def _flag(condition: torch.Tensor, bit: int) -> torch.Tensor:
    """Return ``2**bit`` where ``condition`` is true and 0 elsewhere, as float64."""
    return torch.where(condition, float(1 << bit), 0.0)


def _both(first: torch.Tensor, second: torch.Tensor, bit: int) -> torch.Tensor:
    """Return ``2**bit`` where ``first`` and ``second`` are true and 0 elsewhere, as float64."""
    return torch.where(first, _flag(second, bit), 0.0)


def _either(first: torch.Tensor, second: torch.Tensor, bit: int) -> torch.Tensor:
    """Return ``2**bit`` where ``first`` or ``second`` is true and 0 elsewhere, as float64."""
    return torch.where(first, float(1 << bit), _flag(second, bit))


def _pixel_points(frequencies: torch.Tensor, steps: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
    """Return ``x``, ``y``, ``z`` and the sample of every pixel of every image at every octave, as 1-D tensors.

    Pixel ``(row, column)`` of sample ``n`` at octave ``k`` is the point ``(column / f_k,
    row / f_k, steps[n] / f_k)`` with ``f_k = frequencies[k]``. Points run octave by octave,
    then by sample, row and column. They take 32 bytes each: 100 MB for 32 images of 128 x 128
    pixels with 6 octaves.
    """
    shape = (len(frequencies), len(steps), height, width)
    frequencies = frequencies.view(-1, 1, 1, 1)
    columns = torch.arange(width, dtype=torch.float64, device=steps.device).view(1, 1, 1, width)
    rows = torch.arange(height, dtype=torch.float64, device=steps.device).view(1, 1, height, 1)
    samples = torch.arange(len(steps), device=steps.device).view(1, -1, 1, 1)
    points = (columns / frequencies, rows / frequencies, steps.view(1, -1, 1, 1) / frequencies, samples)
    # contiguous() copies even a tensor that expand() made of one value, whose reshape would
    # be a view with stride 0, and a compiled function is specialised on its inputs' strides.
    return [values.expand(shape).contiguous().view(-1) for values in points]


# Noise needs no gradients. Under no_grad the compiled noise3 runs in the same grad mode in
# training and in evaluation, so switching between them needs no new compile.
@torch.no_grad()
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
    row, under seed ``seeds[n]``. ``compile`` runs ``noise3`` through ``torch.compile`` (see
    ``simplex_compile``): the first call of a process then compiles or loads the kernel, and
    on a CPU without a C++ compiler the noise is evaluated uncompiled.
    """
    if octaves < 1:
        raise ValueError(f"octaves must be at least 1, but got {octaves}")
    device = torch.device(device)
    steps = torch.as_tensor(steps, dtype=torch.float64).to(device).reshape(-1)
    if steps.shape[0] != len(seeds):
        raise ValueError(f"steps must have one value per seed ({len(seeds)}), but got {steps.shape[0]}")
    frequencies = torch.tensor([frequency / 2**octave for octave in range(octaves)], dtype=torch.float64, device=device)
    amplitudes = torch.tensor([persistence**octave for octave in range(octaves)], dtype=KERNEL_DTYPE, device=device)
    points = _pixel_points(frequencies, steps, height, width)
    tables = LatticeTables.from_seeds(seeds, device)
    evaluate = compiled(noise3, device) if compile else None
    chunk = _CHUNK_POINTS.get(device.type, _DEFAULT_CHUNK_POINTS)

    total = len(points[0])
    layers = torch.empty(total, dtype=KERNEL_DTYPE, device=device)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        piece = [values[start:stop] for values in points]
        if evaluate is None:
            layers[start:stop] = noise3(*piece, tables)
            continue
        # Every call gets a full chunk, so that one compiled kernel serves every image size
        # and batch. The padding is the point (0, 0, 0) of seed row 0, dropped after.
        if stop - start < chunk:
            piece = [torch.nn.functional.pad(values, (0, chunk - (stop - start))) for values in piece]
        layers[start:stop] = evaluate(*piece, tables)[: stop - start]
    return (layers.view(octaves, len(seeds), height, width) * amplitudes.view(-1, 1, 1, 1)).sum(0)
