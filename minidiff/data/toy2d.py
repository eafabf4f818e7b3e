"""Two-dimensional toy distributions, the first thing a diffusion model should learn.

Each is `f(n, rng, *, noise=..., dtype=np.float64) -> (n, 2) array`: n independent draws from `rng` (a
numpy Generator), plus Gaussian noise of standard deviation `noise` on each coordinate (in the output's
units). Each is scaled to roughly unit variance per coordinate, as the noise schedules assume of the data;
its docstring gives the exact mean and standard deviation. float64 by default (the samplers' closed-form
tests work in float64); pass dtype=np.float32 for training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidiff.data import _validate as _v

__all__ = ["TOY_DATASETS", "checkerboard", "eight_gaussians", "moons", "spirals", "swiss_roll"]

# The fixed affine maps that bring each shape to roughly unit scale (documented in each function).
MOONS_CENTER = (0.5, 0.25)  # the mean of sklearn's two moons
MOONS_SCALE = math.sqrt(2.0)  # so the arcs have radius sqrt(2) and the mean variance per coordinate is ~1
SWISS_ROLL_SCALE = 1.0 / 7.0  # radius t / 7 at angle t
SWISS_ROLL_ANGLES = (1.5 * math.pi, 4.5 * math.pi)  # one and a half turns, as sklearn's make_swiss_roll
EIGHT_GAUSSIANS_RADIUS = math.sqrt(2.0)  # so each coordinate has variance 1 + noise^2
SPIRAL_MAX_ANGLE = 3.0 * math.pi  # one and a half turns per arm
SPIRAL_SCALE = 2.0 / (3.0 * math.pi)  # radius (2 / 3 pi) theta, so E|x|^2 = 2 (+ 2 noise^2)
CHECKERBOARD_CELLS = 4  # a 4 x 4 board of unit squares over [-2, 2]^2


def moons(n: int, rng: np.random.Generator, *, noise: float = 0.1, dtype: Any = np.float64) -> np.ndarray:
    """Two interleaving half circles (sklearn's make_moons, with uniformly random angles).

    Each point lies, with probability 1/2 each, on the upper arc (cos a, sin a) or on the lower arc
    (1 - cos a, 1/2 - sin a), a ~ U[0, pi]; then x is
    sqrt(2) ((arc) - (1/2, 1/4)) + noise eps. So both arcs have radius sqrt(2), the mean is 0 and the
    standard deviations are sqrt(3/2 + noise^2) and sqrt(0.488 + noise^2) (1.23 and 0.71 at noise 0.1).
    """
    n, dtype, noise = _check(n, rng, noise, dtype)
    angle = rng.uniform(0.0, math.pi, n)  # (n,)
    lower = rng.random(n) < 0.5  # (n,) which arc
    arc = _direction(angle)  # (n, 2)
    arc[lower] = np.array([1.0, 0.5]) - arc[lower]
    return _finish(MOONS_SCALE * (arc - np.array(MOONS_CENTER)), noise, rng, dtype)


def swiss_roll(n: int, rng: np.random.Generator, *, noise: float = 0.1, dtype: Any = np.float64) -> np.ndarray:
    """A spiral whose radius grows linearly with its angle (sklearn's make_swiss_roll, seen from above).

    t ~ U[3 pi / 2, 9 pi / 2] and x = (t cos t, t sin t) / 7 + noise eps: one and a half turns around the
    origin. Mean (2 / 7, 2 / (21 pi)) = (0.29, 0.03); standard deviations sqrt(0.895 + noise^2) and
    sqrt(0.986 + noise^2) (0.95 and 1.00 at noise 0.1).
    """
    n, dtype, noise = _check(n, rng, noise, dtype)
    t = rng.uniform(*SWISS_ROLL_ANGLES, n)  # (n,)
    return _finish(SWISS_ROLL_SCALE * t[:, None] * _direction(t), noise, rng, dtype)


def eight_gaussians(n: int, rng: np.random.Generator, *, noise: float = 0.1, dtype: Any = np.float64) -> np.ndarray:
    """Eight equally weighted Gaussians of standard deviation `noise`, centered on the circle of radius sqrt(2)
    at the angles k pi / 4, k = 0..7. Mean 0, each coordinate of standard deviation sqrt(1 + noise^2)."""
    n, dtype, noise = _check(n, rng, noise, dtype)
    k = rng.integers(0, 8, n)  # (n,) which component
    return _finish(EIGHT_GAUSSIANS_RADIUS * _direction(k * (math.pi / 4)), noise, rng, dtype)


def checkerboard(n: int, rng: np.random.Generator, *, noise: float = 0.0, dtype: Any = np.float64) -> np.ndarray:
    """Uniform on the 8 black squares of a 4 x 4 board of unit squares over [-2, 2]^2: the cells
    [i, i + 1) x [j, j + 1) with i + j even (the lower left one, [-2, -1)^2, is black). Both coordinates
    are uniform on [-2, 2]: mean 0, standard deviation sqrt(4/3 + noise^2) (1.15 without noise, the default).
    """
    n, dtype, noise = _check(n, rng, noise, dtype)
    cell = rng.integers(0, CHECKERBOARD_CELLS**2 // 2, n)  # (n,) one of the 8 black cells
    row = cell // (CHECKERBOARD_CELLS // 2)  # (n,) 0..3
    column = 2 * (cell % (CHECKERBOARD_CELLS // 2)) + row % 2  # (n,) 0..3, with row + column even
    corner = np.stack([column, row], axis=1) - CHECKERBOARD_CELLS / 2  # (n, 2) lower left corner
    return _finish(corner + rng.random((n, 2)), noise, rng, dtype)


def spirals(n: int, rng: np.random.Generator, *, noise: float = 0.05, dtype: Any = np.float64) -> np.ndarray:
    """Two interleaved spiral arms, each the point reflection of the other through the origin.

    theta = 3 pi sqrt(u), u ~ U[0, 1] (uniform along the arm, whose length grows as theta^2), and
    x = +-(2 / (3 pi)) theta (cos theta, sin theta) + noise eps, the sign picking the arm. The radius grows
    linearly with the angle, one and a half turns per arm. Mean 0, standard deviations sqrt(1.034 + noise^2)
    and sqrt(0.966 + noise^2) (1.02 and 0.98 at noise 0.05, the default).
    """
    n, dtype, noise = _check(n, rng, noise, dtype)
    theta = SPIRAL_MAX_ANGLE * np.sqrt(rng.random(n))  # (n,)
    arm = np.where(rng.random(n) < 0.5, 1.0, -1.0)  # (n,)
    return _finish((arm * SPIRAL_SCALE * theta)[:, None] * _direction(theta), noise, rng, dtype)


TOY_DATASETS = {
    "moons": moons,
    "swiss_roll": swiss_roll,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "spirals": spirals,
}


def _check(n: Any, rng: Any, noise: Any, dtype: Any) -> tuple[int, np.dtype, float]:
    _v.generator(rng)
    return _v.positive_int(n, "n"), _v.float_dtype(dtype), _v.non_negative(noise, "noise")


def _direction(angle: np.ndarray) -> np.ndarray:
    """The unit vectors (cos a, sin a) of shape (n, 2) for angles of shape (n,)."""
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _finish(x: np.ndarray, noise: float, rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
    """x (n, 2) plus Gaussian noise of standard deviation `noise` (drawn only when noise > 0), cast to dtype."""
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape)
    return x.astype(dtype, copy=False)
