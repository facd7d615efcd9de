"""Tables for 3D OpenSimplex noise: each seed's permutation and the extra lattice points of each case.

Both reproduce ``opensimplex`` 0.4.5.1 (``opensimplex/internals.py``): ``permutations``
builds the tables of ``_init``, and ``EXTRA_OFFSETS`` contains the two extra lattice points
that ``_noise3`` adds to the corners of the region that contains a point.

``PACKED_GRADIENTS`` and ``PACKED_EXTRA_OFFSETS`` store the same numbers packed into one
integer per entry, so that ``simplex_torch`` reads each with a single table lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from opensimplex.constants import GRADIENTS3

# The seed's linear congruential generator: Knuth's MMIX constants, modulo 2**64.
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407
_MASK_64 = 2**64 - 1
# opensimplex advances the generator three times before the first draw.
_LCG_WARMUP = 3
TABLE_SIZE = 256


def _lcg_coefficients() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(a, c)`` such that the draw for entry ``255 - j`` is ``a[j] * seed + c[j]`` modulo 2**64."""
    multipliers, increments = [], []
    multiplier, increment = 1, 0
    for step in range(_LCG_WARMUP + TABLE_SIZE):
        multiplier = (multiplier * _LCG_MULTIPLIER) & _MASK_64
        increment = (increment * _LCG_MULTIPLIER + _LCG_INCREMENT) & _MASK_64
        if step >= _LCG_WARMUP:
            multipliers.append(multiplier)
            increments.append(increment)
    return np.array(multipliers, dtype=np.uint64), np.array(increments, dtype=np.uint64)


_LCG_MULTIPLIERS, _LCG_INCREMENTS = _lcg_coefficients()


def permutations(seeds: Sequence[int]) -> np.ndarray:
    """Return the ``(len(seeds), 256)`` int64 permutations that ``opensimplex.OpenSimplex(seed)`` builds.

    For ``i`` from 255 down to 0, opensimplex draws the next LCG state ``s`` as a signed
    64-bit integer, takes ``r = (s + 31) mod (i + 1)`` and moves ``source[r]`` to ``perm[i]``
    (a Fisher-Yates shuffle). Here the states of all seeds and draws come from one uint64
    product, whose wrap-around equals opensimplex's ``ctypes.c_int64`` arithmetic, and only
    the shuffle runs draw by draw.
    """
    count = len(seeds)
    unsigned = np.array([int(seed) & _MASK_64 for seed in seeds], dtype=np.uint64).reshape(count, 1)
    with np.errstate(over="ignore"):
        states = (unsigned * _LCG_MULTIPLIERS + _LCG_INCREMENTS).view(np.int64)
    # NumPy's % with a positive divisor is never negative, like Python's.
    divisors = np.arange(TABLE_SIZE, 0, -1, dtype=np.int64)
    picks = (states % divisors + 31) % divisors

    source = np.tile(np.arange(TABLE_SIZE, dtype=np.int64), (count, 1))
    table = np.empty((count, TABLE_SIZE), dtype=np.int64)
    rows = np.arange(count)
    for j in range(TABLE_SIZE):
        i = TABLE_SIZE - 1 - j
        pick = picks[:, j]
        table[:, i] = source[rows, pick]
        source[rows, pick] = source[:, i]
    return table


Offset = tuple[int, int, int]

# Corner codes of the cell: bit 0 is x, bit 1 is y, bit 2 is z, so 0x05 is corner (1,0,1).
X, Y, Z = 0x01, 0x02, 0x04


def _bit(point: int, axis: int) -> bool:
    return bool(point & axis)


def _minus_one_on_first_missing(point: int) -> Offset:
    """Return (1,1,1) with -1 on the first axis, of x, y and z, that ``point`` lacks."""
    if not _bit(point, X):
        return (-1, 1, 1)
    if not _bit(point, Y):
        return (1, -1, 1)
    return (1, 1, -1)


def _two_on_first_present(point: int) -> Offset:
    """Return (0,0,0) with 2 on the first axis, of x, y and z, that ``point`` has."""
    if _bit(point, X):
        return (2, 0, 0)
    if _bit(point, Y):
        return (0, 2, 0)
    return (0, 0, 2)


def near_tetrahedron_extras(a_takes_z: bool, b_takes_z: bool, b_is_closer: bool, origin_is_close: bool) -> tuple[Offset, Offset]:
    """Return the extra points in the tetrahedron at (0,0,0).

    ``a`` starts as corner x and ``b`` as corner y; either may be replaced by corner z. When
    (0,0,0) is one of the two closest corners, the other (the closer of ``a`` and ``b``)
    decides the extra points, otherwise ``a`` and ``b`` together do.
    """
    a_point = Z if a_takes_z else X
    b_point = Z if b_takes_z else Y
    if origin_is_close:
        c = b_point if b_is_closer else a_point
        x = (1, 1) if _bit(c, X) else (-1, 0)
        if _bit(c, Y):
            y = (1, 1)
        else:
            y = (-1, 0) if _bit(c, X) else (0, -1)
        z = (1, 1) if _bit(c, Z) else (0, -1)
    else:
        c = a_point | b_point
        x, y, z = ((1, 1) if _bit(c, axis) else (0, -1) for axis in (X, Y, Z))
    return (x[0], y[0], z[0]), (x[1], y[1], z[1])


def far_tetrahedron_extras(a_takes_z: bool, b_takes_z: bool, b_is_closer: bool, corner_is_close: bool) -> tuple[Offset, Offset]:
    """Return the extra points in the tetrahedron at (1,1,1), the mirror image of the one at (0,0,0).

    ``a`` starts as corner (0,1,1) and ``b`` as (1,0,1); either may be replaced by (1,1,0).
    """
    a_point = X | Y if a_takes_z else Y | Z
    b_point = X | Y if b_takes_z else X | Z
    if corner_is_close:
        c = b_point if b_is_closer else a_point
        x = (2, 1) if _bit(c, X) else (0, 0)
        if _bit(c, Y):
            y = (1, 2) if _bit(c, X) else (2, 1)
        else:
            y = (0, 0)
        z = (1, 2) if _bit(c, Z) else (0, 0)
    else:
        c = a_point & b_point
        x, y, z = ((1, 2) if _bit(c, axis) else (0, 0) for axis in (X, Y, Z))
    return (x[0], y[0], z[0]), (x[1], y[1], z[1])


def octahedron_extras(a_is_far: bool, b_is_far: bool, p3_is_far: bool, replace_a: bool, replace_b: bool) -> tuple[Offset, Offset]:
    """Return the extra points in the octahedron between the two tetrahedra.

    ``a`` is the closer of (0,0,1) and (1,1,0), ``b`` the closer of (0,1,0) and (1,0,1), and
    the closer of (1,0,0) and (0,1,1) replaces one of them if it is closer still. A point
    is "far" when it lies on the (1,1,1) side, that is, has two bits set.
    """
    a_point = X | Y if a_is_far else Z
    b_point = X | Z if b_is_far else Y
    if replace_a:
        a_point, a_is_far = (Y | Z if p3_is_far else X), p3_is_far
    elif replace_b:
        b_point, b_is_far = (Y | Z if p3_is_far else X), p3_is_far
    if a_is_far == b_is_far:
        if a_is_far:
            return (1, 1, 1), _two_on_first_present(a_point & b_point)
        return (0, 0, 0), _minus_one_on_first_missing(a_point | b_point)
    far_point, near_point = (a_point, b_point) if a_is_far else (b_point, a_point)
    return _minus_one_on_first_missing(far_point), _two_on_first_present(near_point)


def _bits_of(key: int, count: int) -> list[bool]:
    return [bool(key >> bit & 1) for bit in range(count)]


# Keys 0..15: near tetrahedron, 16..31: far tetrahedron, 32..63: octahedron. Bit k of a key
# is argument k of the region's function above.
NEAR_KEYS, FAR_KEYS, OCTAHEDRON_KEYS = 0, 16, 32
EXTRA_OFFSETS = np.array(
    [near_tetrahedron_extras(*_bits_of(key, 4)) for key in range(16)]
    + [far_tetrahedron_extras(*_bits_of(key, 4)) for key in range(16)]
    + [octahedron_extras(*_bits_of(key, 5)) for key in range(32)],
    dtype=np.int64,
)


# The 24 gradients of opensimplex, one row each; hash h selects gradient h % 24.
GRADIENTS = GRADIENTS3.reshape(-1, 3).astype(np.int64)
# Components are packed as bytes 0 (x), 1 (y) and 2 (z) of an int32, each plus GRADIENT_BIAS
# so that the -11..11 of opensimplex become 117..139.
GRADIENT_BIAS = 128
PACKED_GRADIENTS = ((GRADIENTS + GRADIENT_BIAS) << np.array([0, 8, 16])).sum(1)
# Extra-point coordinates (-1..2) are packed 2 bits each, plus EXTRA_OFFSET_BIAS, into an
# int32 per key: bits 0-5 are the first point's x, y and z, bits 6-11 the second point's.
EXTRA_OFFSET_BIAS = 1
EXTRA_OFFSET_BITS = 2
PACKED_EXTRA_OFFSETS = ((EXTRA_OFFSETS.reshape(len(EXTRA_OFFSETS), 6) + EXTRA_OFFSET_BIAS) << (EXTRA_OFFSET_BITS * np.arange(6))).sum(1)
