"""Synthetic fetal-head phantoms for a demo that needs no real data.

Every image here is SYNTHETIC: a procedural drawing loosely shaped like a transventricular
plane of a fetal brain on B-mode ultrasound. It is not a simulation of ultrasound physics and
no patient data went into it. Case ids read ``synthetic-phantom-NNNNN`` so that a synthetic
image cannot be mistaken for a clinical one in a report or an MLflow run.

A phantom is drawn as an echogenicity map and then turned into a B-mode-like image:

1. Background: dark amniotic fluid inside a fan-shaped sector, with a brighter band of
   uterine wall at the top of the fan.
2. Head: a bright elliptical skull ring with a random centre, axes, rotation and thickness,
   a thin grey scalp outside it, and darker brain parenchyma with a smooth texture inside.
   The skull is brightest where the beam hits it head-on, as in real scans.
3. Midline: a bright falx along the major axis, interrupted by a small dark cavum septi
   pellucidi in the anterior third.
4. Lateral ventricles: two dark elongated ellipses in the posterior half, mirrored about the
   midline, each holding a bright choroid plexus.
5. Pathological phantoms add one lesion (see below).
6. Attenuation with depth, multiplicative speckle (the Rayleigh-distributed magnitude of
   correlated complex Gaussian noise, with a longer grain laterally than axially), log
   compression, a light blur and a normalisation to [0, 1] by a high percentile.

Lesion kinds, and what ``lesion_mask`` marks for each:

- ``"cyst"``: an anechoic round region with a thin bright rim in the parenchyma. The mask
  marks the cavity and its rim.
- ``"hyperechoic"``: a bright blob with a lobulated outline in the parenchyma, like a
  haemorrhage. The mask marks the blob.
- ``"ventriculomegaly"``: one or both lateral ventricles strongly enlarged. The mask marks
  only the enlarged part beyond the normal ventricle and choroid plexus of the same head,
  because the normal ventricle looks the same as in healthy phantoms.

Lesions never overlap the falx, the cavum or the normal ventricles, and they keep a margin of
parenchyma (3 pixels at size 128) to the skull, so ``lesion_mask`` is a subset of ``head_mask``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
from scipy import ndimage

LesionKind = Literal["cyst", "hyperechoic", "ventriculomegaly"]
LESION_KINDS: tuple[str, ...] = get_args(LesionKind)

CASE_ID_PREFIX = "synthetic-phantom-"

# At 64 pixels the cavum is about 2 pixels wide and a cyst rim less than 1, so smaller
# images would lose the anatomy.
MIN_SIZE = 64

# Pixel lengths (speckle grain, line widths, margins) are chosen for 128 x 128 images and
# scaled by size / _REFERENCE_SIZE, so a larger phantom shows the same anatomy on a finer grid.
_REFERENCE_SIZE = 128

# Echogenicity of each tissue before speckle and compression, on a scale where bone is about 1.
_FLUID_ECHO = 0.02
_CSF_ECHO = 0.05
_SCALP_ECHO = 0.18
_UTERINE_WALL_ECHO = 0.3


@dataclass(frozen=True, eq=False)
class SyntheticPhantom:
    """One synthetic fetal-head image with its masks and label.

    ``eq=False`` makes ``==`` compare identity, because the generated ``__eq__`` would
    compare the array fields and raise.
    """

    image: np.ndarray
    """float32 array of shape (size, size) with values in [0, 1]."""
    head_mask: np.ndarray
    """bool array of shape (size, size): the pixels inside the outer edge of the skull."""
    lesion_mask: np.ndarray
    """bool array of shape (size, size): the lesion pixels. All False for healthy phantoms."""
    pathological: bool
    lesion_kind: str
    """One of ``LESION_KINDS``, or "" for healthy phantoms."""
    case_id: str
    """Id of the form ``synthetic-phantom-00012``."""


@dataclass(frozen=True)
class _Ventricle:
    """A lateral ventricle ellipse in head coordinates, in pixels, mirrored about the midline."""

    along: float  # centre on the midline axis, positive anteriorly
    lateral: float  # centre distance from the midline
    semi_length: float
    semi_width: float
    tilt: float  # radians that the posterior end turns away from the midline


@dataclass(frozen=True)
class _Head:
    """Pixel geometry of one drawn head, shared by the anatomy and the lesion steps."""

    size: int
    scale: float  # size / _REFERENCE_SIZE
    anterior: np.ndarray  # distance along the midline from the head centre, positive anteriorly
    lateral: np.ndarray  # signed distance from the midline
    major_semi_axis: float
    minor_semi_axis: float
    head_mask: np.ndarray
    brain_mask: np.ndarray  # inside the inner edge of the skull
    parenchyma_echo: float  # mean echogenicity of the parenchyma
    structures_mask: np.ndarray  # falx, cavum, normal ventricles and choroid plexus
    ventricle: _Ventricle | None


def generate_synthetic_phantom(index: int, *, size: int = 128, pathological: bool, seed: int = 0) -> SyntheticPhantom:
    """Draw synthetic phantom number ``index``, healthy or with one random lesion.

    The same ``(index, size, pathological, seed)`` always gives the same phantom. The case id
    depends on ``index`` only, so a healthy and a pathological phantom with the same index
    share it. ``generate_synthetic_phantoms`` gives each phantom of a batch its own index.
    """
    if index < 0:
        raise ValueError(f"index must be non-negative, but got {index}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, but got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, but got {seed}")

    rng = np.random.default_rng(np.random.SeedSequence([seed, index, int(pathological)]))
    fan_mask, depth, beam_y, beam_x = _fan_geometry(size)
    # Fluid, uterine wall and parenchyma never overlap, so they can share one texture field.
    texture = _smooth_noise(rng, size, 2.5 * size / _REFERENCE_SIZE)
    echo = _draw_background(rng, texture, fan_mask, depth)
    head = _draw_head(rng, echo, texture, fan_mask, beam_y, beam_x)
    head = _draw_midline_and_ventricles(rng, echo, head)

    lesion_kind = ""
    lesion_mask = np.zeros((size, size), dtype=bool)
    if pathological:
        lesion_kind = str(rng.choice(LESION_KINDS))
        lesion_mask = _LESION_DRAWERS[lesion_kind](rng, echo, head)
        if not lesion_mask.any():
            raise RuntimeError(
                f"the {lesion_kind} lesion of phantom {index} (seed {seed}, size {size}) is empty, "
                "which is a bug in the phantom generator"
            )

    attenuation = rng.uniform(0.1, 0.5)
    echo *= np.exp(-attenuation * depth)
    image = _simulate_bmode(rng, echo, fan_mask, head.scale)
    return SyntheticPhantom(
        image=image,
        head_mask=head.head_mask,
        lesion_mask=lesion_mask,
        pathological=pathological,
        lesion_kind=lesion_kind,
        case_id=f"{CASE_ID_PREFIX}{index:05d}",
    )


def generate_synthetic_phantoms(
    *, healthy: int, pathological: int, size: int = 128, seed: int = 0
) -> list[SyntheticPhantom]:
    """Draw ``healthy`` healthy phantoms followed by ``pathological`` pathological ones.

    Healthy phantoms get indices ``0 .. healthy - 1`` and pathological ones the indices after
    them, so every case id in the list is unique.
    """
    if healthy < 0:
        raise ValueError(f"healthy must be non-negative, but got {healthy}")
    if pathological < 0:
        raise ValueError(f"pathological must be non-negative, but got {pathological}")

    phantoms = [generate_synthetic_phantom(i, size=size, pathological=False, seed=seed) for i in range(healthy)]
    for i in range(healthy, healthy + pathological):
        phantoms.append(generate_synthetic_phantom(i, size=size, pathological=True, seed=seed))
    return phantoms


def _norm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Same as np.hypot, which took about five times as long on 128 x 128 float64 arrays
    # (NumPy 2.4 on one AMD EPYC core).
    return np.sqrt(x * x + y * y)


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return read-only row and column coordinates of the pixel centres."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


@functools.lru_cache(maxsize=8)
def _fan_geometry(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return read-only arrays: the sector mask, the depth and the beam direction (rows, columns).

    Depth is 0 at the top of the sector and measured in frame heights.
    """
    rows, cols = _pixel_grid(size)
    apex_y, apex_x = -0.6 * size, 0.5 * size
    near_radius, half_angle = 0.62 * size, math.radians(32.0)

    dy, dx = rows - apex_y, cols - apex_x
    radius = _norm(dy, dx)
    fan_mask = (radius >= near_radius) & (np.abs(np.arctan2(dx, dy)) <= half_angle)
    depth = np.clip(radius - near_radius, 0.0, None) / size
    geometry = (fan_mask, depth, dy / radius, dx / radius)
    for array in geometry:
        array.setflags(write=False)
    return geometry


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Return Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, truncate=3.0)
    return (noise - noise.mean()) / noise.std()


def _draw_background(
    rng: np.random.Generator, texture: np.ndarray, fan_mask: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """Return the echogenicity of amniotic fluid with a band of uterine wall at the top of the fan."""
    fluid = _FLUID_ECHO * np.clip(1.0 + 0.5 * texture, 0.2, None)
    wall_thickness = rng.uniform(0.02, 0.07)
    wall = _UTERINE_WALL_ECHO * np.clip(1.0 + 0.4 * texture, 0.2, None)
    echo = np.where(depth < wall_thickness, wall, fluid)
    return np.where(fan_mask, echo, 0.0)


def _draw_head(
    rng: np.random.Generator,
    echo: np.ndarray,
    texture: np.ndarray,
    fan_mask: np.ndarray,
    beam_y: np.ndarray,
    beam_x: np.ndarray,
) -> _Head:
    """Draw scalp, skull and parenchyma into ``echo`` and return the head geometry.

    The masks are clipped to the fan as a safeguard. With the ranges of centre and axes drawn
    here, 1,200 checked heads at sizes 64, 128 and 256 all fitted inside it.
    """
    size = echo.shape[0]
    scale = size / _REFERENCE_SIZE
    centre_y = size * (0.5 + rng.uniform(-0.05, 0.05))
    centre_x = size * (0.5 + rng.uniform(-0.05, 0.05))
    major = size * rng.uniform(0.36, 0.43)
    minor = major * rng.uniform(0.74, 0.86)
    angle = rng.uniform(-np.pi / 4, np.pi / 4)
    skull_thickness = size * rng.uniform(0.022, 0.04)
    scalp_thickness = 2.0 * scale

    # Rotate the pixel grid into the head's frame: u along the major axis, v along the minor.
    rows, cols = _pixel_grid(size)
    y, x = rows - centre_y, cols - centre_x
    cos, sin = math.cos(angle), math.sin(angle)
    u = x * cos + y * sin
    v = y * cos - x * sin

    # First-order distance to the outer skull edge: (r - 1) / |grad r| for the normalised
    # radius r, in pixels, negative inside. Its error grows away from the edge, which is
    # harmless because only the pixels near the skull use its value.
    radius = _norm(u / major, v / minor)
    safe_radius = np.maximum(radius, 1e-6)
    grad_u, grad_v = u / (major**2 * safe_radius), v / (minor**2 * safe_radius)
    grad_norm = np.maximum(_norm(grad_u, grad_v), 1e-6)
    distance = (radius - 1.0) / grad_norm

    # Bone reflects most where its normal is parallel to the beam.
    normal_x = (grad_u * cos - grad_v * sin) / grad_norm
    normal_y = (grad_u * sin + grad_v * cos) / grad_norm
    incidence = np.abs(normal_x * beam_x + normal_y * beam_y)
    skull_profile = np.exp(-np.square(np.square((distance + skull_thickness / 2) / (skull_thickness / 2))))
    skull_echo = rng.uniform(0.85, 1.1) * (0.3 + 0.7 * incidence) * skull_profile

    head_mask = (distance <= 0.0) & fan_mask
    brain_mask = (distance < -skull_thickness) & fan_mask
    scalp = (distance > 0.0) & (distance <= scalp_thickness) & fan_mask

    parenchyma_echo = rng.uniform(0.15, 0.24)
    parenchyma = parenchyma_echo * np.clip(1.0 + 0.22 * texture, 0.3, None)
    soft_tissue = np.where(brain_mask, parenchyma, 0.0)
    soft_tissue = np.where(scalp, _SCALP_ECHO, soft_tissue)
    echo[:] = np.where(head_mask | scalp, np.maximum(soft_tissue, skull_echo), echo)

    anterior_sign = float(rng.choice([-1.0, 1.0]))
    return _Head(
        size=size,
        scale=scale,
        anterior=anterior_sign * u,
        lateral=v,
        major_semi_axis=major,
        minor_semi_axis=minor,
        head_mask=head_mask,
        brain_mask=brain_mask,
        parenchyma_echo=parenchyma_echo,
        structures_mask=np.zeros((size, size), dtype=bool),
        ventricle=None,
    )


def _ventricle_radius(head: _Head, ventricle: _Ventricle) -> np.ndarray:
    """Return the normalised elliptic radius of ``ventricle`` on both sides of the midline."""
    du = head.anterior - ventricle.along
    dv = np.abs(head.lateral) - ventricle.lateral
    cos, sin = math.cos(ventricle.tilt), math.sin(ventricle.tilt)
    axial = (dv * sin - du * cos) / ventricle.semi_length
    across = (du * sin + dv * cos) / ventricle.semi_width
    return _norm(axial, across)


def _draw_midline_and_ventricles(rng: np.random.Generator, echo: np.ndarray, head: _Head) -> _Head:
    """Draw the falx, the cavum septi pellucidi and the lateral ventricles into ``echo``."""
    a, b, s = head.major_semi_axis, head.minor_semi_axis, head.scale
    brain = head.brain_mask

    # Cavum septi pellucidi: a small box-shaped fluid space on the midline, anterior third.
    cavum_centre = a * rng.uniform(0.25, 0.35)
    cavum_half_length = a * rng.uniform(0.08, 0.12)
    cavum_half_width = max(b * rng.uniform(0.05, 0.07), 1.5 * s)
    box = (
        np.square(np.square((head.anterior - cavum_centre) / cavum_half_length))
        + np.square(np.square(head.lateral / cavum_half_width))
    )
    cavum = brain & (box <= 1.0)
    cavum_wall = brain & (box > 1.0) & (box <= 1.9)

    falx_half_width = rng.uniform(0.7, 1.1) * s
    falx_echo = rng.uniform(0.55, 0.8) * np.exp(-np.square(head.lateral / falx_half_width))
    falx = brain & ~cavum & (falx_echo > 0.2 * falx_echo.max())
    np.copyto(echo, np.maximum(echo, falx_echo), where=falx)
    np.copyto(echo, np.maximum(echo, 0.55), where=cavum_wall)
    echo[cavum] = _CSF_ECHO

    # Lateral ventricles in the posterior half, diverging from the midline posteriorly.
    ventricle = _Ventricle(
        along=-a * rng.uniform(0.25, 0.4),
        lateral=b * rng.uniform(0.22, 0.3),
        semi_length=a * rng.uniform(0.28, 0.36),
        semi_width=max(b * rng.uniform(0.09, 0.12), 2.0 * s),
        tilt=rng.uniform(0.1, 0.35),
    )
    ventricles = brain & (_ventricle_radius(head, ventricle) <= 1.0)

    # The choroid plexus fills the posterior part of each ventricle.
    shift = 0.35 * ventricle.semi_length
    choroid_ellipse = replace(
        ventricle,
        along=ventricle.along - shift * math.cos(ventricle.tilt),
        lateral=ventricle.lateral + shift * math.sin(ventricle.tilt),
        semi_length=0.5 * ventricle.semi_length,
        semi_width=0.7 * ventricle.semi_width,
    )
    choroid = ventricles & (_ventricle_radius(head, choroid_ellipse) <= 1.0)
    echo[ventricles] = _CSF_ECHO
    echo[choroid] = rng.uniform(0.45, 0.65)

    structures = falx | cavum | cavum_wall | ventricles
    return replace(head, structures_mask=structures, ventricle=ventricle)


def _lesion_margin(head: _Head) -> float:
    """Return the minimum parenchyma, in pixels, between a lesion and the skull or other structures."""
    return 3.0 * head.scale


def _place_lesion(rng: np.random.Generator, head: _Head, radius: float) -> tuple[float, float, float]:
    """Pick a centre in the parenchyma with free space of ``radius`` plus the lesion margin around it.

    Shrinks the radius when no such centre exists. Returns (row, column, radius).
    """
    free = head.brain_mask & ~head.structures_mask
    clearance = ndimage.distance_transform_edt(free)
    minimum_radius = 3.0 * head.scale
    while radius >= minimum_radius:
        candidates = np.flatnonzero(clearance >= radius + _lesion_margin(head))
        if candidates.size > 0:
            row, col = np.unravel_index(rng.choice(candidates), free.shape)
            return row + 0.5, col + 0.5, radius
        radius *= 0.85
    raise RuntimeError(
        f"no room for a lesion of {minimum_radius:.1f} pixels or more in a {head.size}-pixel phantom. "
        "Use a larger size."
    )


def _lesion_frame(
    rng: np.random.Generator, head: _Head, centre_y: float, centre_x: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return pixel offsets from a lesion centre along a pair of randomly rotated axes."""
    rows, cols = _pixel_grid(head.size)
    angle = rng.uniform(0.0, np.pi)
    y, x = rows - centre_y, cols - centre_x
    cos, sin = math.cos(angle), math.sin(angle)
    return x * cos + y * sin, y * cos - x * sin


def _draw_cyst(rng: np.random.Generator, echo: np.ndarray, head: _Head) -> np.ndarray:
    """Draw an anechoic cyst with a thin bright rim and return its mask."""
    centre_y, centre_x, radius = _place_lesion(rng, head, head.size * rng.uniform(0.05, 0.085))
    p, q = _lesion_frame(rng, head, centre_y, centre_x)
    normalised = _norm(p / radius, q / (radius * rng.uniform(0.75, 1.0)))

    rim_width = 1.2 * head.scale / radius
    mask = normalised <= 1.0
    cavity = normalised <= 1.0 - rim_width
    # The rim brightness follows the parenchyma so that a cyst, rim included, is darker on
    # average than the parenchyma around it.
    echo[mask] = head.parenchyma_echo * rng.uniform(1.8, 2.5)
    echo[cavity] = _CSF_ECHO * rng.uniform(0.3, 0.8)
    return mask


def _draw_hyperechoic(rng: np.random.Generator, echo: np.ndarray, head: _Head) -> np.ndarray:
    """Draw a bright blob with a lobulated outline, like a haemorrhage, and return its mask."""
    # Three lobe terms of amplitude up to 0.12 push the outline out to at most 1.36 radii,
    # so that much room is reserved.
    max_bulge = 1.36
    centre_y, centre_x, bound = _place_lesion(rng, head, head.size * rng.uniform(0.05, 0.085) * max_bulge)
    radius = bound / max_bulge
    p, q = _lesion_frame(rng, head, centre_y, centre_x)
    normalised = _norm(p / radius, q / (radius * rng.uniform(0.7, 1.0)))

    polar_angle = np.arctan2(q, p)
    outline = np.ones_like(polar_angle)
    for lobes in (2, 3, 4):
        outline += rng.uniform(0.0, 0.12) * np.cos(lobes * polar_angle + rng.uniform(0.0, 2 * np.pi))
    mask = normalised <= outline

    texture = np.clip(1.0 + 0.12 * _smooth_noise(rng, head.size, 1.5 * head.scale), 0.5, None)
    np.copyto(echo, rng.uniform(0.75, 0.95) * texture, where=mask)
    return mask


def _draw_ventriculomegaly(rng: np.random.Generator, echo: np.ndarray, head: _Head) -> np.ndarray:
    """Enlarge one or both lateral ventricles and return the mask of the enlarged part."""
    normal = head.ventricle
    if normal is None:
        raise RuntimeError("the lateral ventricles must be drawn before they can be enlarged")
    # The atrium widens much more than it lengthens, as atrial width is what defines the condition.
    semi_length = normal.semi_length * rng.uniform(1.0, 1.15)
    semi_width = normal.semi_width * rng.uniform(2.2, 3.0)

    # Move the centre away from the midline until the enlarged ventricle clears the falx.
    lateral_extent = math.hypot(semi_length * math.sin(normal.tilt), semi_width * math.cos(normal.tilt))
    enlarged = replace(
        normal,
        along=normal.along + 0.1 * normal.semi_length,
        lateral=max(normal.lateral, lateral_extent + _lesion_margin(head)),
        semi_length=semi_length,
        semi_width=semi_width,
    )
    mask = _ventricle_radius(head, enlarged) <= 1.0

    side = rng.choice(["both", "left", "right"])
    if side == "left":
        mask &= head.lateral < 0
    elif side == "right":
        mask &= head.lateral >= 0

    # In about one phantom in five the enlarged ventricle comes within the lesion margin of
    # the skull. That part is cut off, so its edge there follows the skull.
    clearance = ndimage.distance_transform_edt(head.brain_mask)
    mask &= (clearance >= _lesion_margin(head)) & ~head.structures_mask
    echo[mask] = _CSF_ECHO
    return mask


_LESION_DRAWERS = {
    "cyst": _draw_cyst,
    "hyperechoic": _draw_hyperechoic,
    "ventriculomegaly": _draw_ventriculomegaly,
}


def _simulate_bmode(rng: np.random.Generator, echo: np.ndarray, fan_mask: np.ndarray, scale: float) -> np.ndarray:
    """Apply speckle, log compression and blur to an echogenicity map and scale it to [0, 1]."""
    # Speckle: the magnitude of low-pass complex Gaussian noise is Rayleigh distributed. Its
    # grain is longer laterally (columns) than axially (rows), because the lateral resolution
    # of an ultrasound beam is coarser than its axial resolution.
    axial_sigma = rng.uniform(0.6, 0.9) * scale
    grain = (axial_sigma, axial_sigma * rng.uniform(1.3, 2.0))
    real = ndimage.gaussian_filter(rng.standard_normal(echo.shape, dtype=np.float32), grain, truncate=3.0)
    imaginary = ndimage.gaussian_filter(rng.standard_normal(echo.shape, dtype=np.float32), grain, truncate=3.0)
    power = real * real + imaginary * imaginary
    envelope = np.sqrt(power / power.mean())

    gain = rng.uniform(0.8, 1.25)
    compression = rng.uniform(3.0, 8.0)
    bmode = np.log1p(compression * gain * echo * envelope) / np.log1p(compression)
    bmode = ndimage.gaussian_filter(bmode, 0.6 * scale, truncate=3.0)

    # Scale by a high percentile inside the fan so that a few speckle peaks do not set the range.
    ceiling = np.percentile(bmode[fan_mask], 99.7)
    return np.clip(bmode / ceiling, 0.0, 1.0).astype(np.float32)
