"""The one tolerance table: |actual - expected| <= atol + rtol * scale, per dtype.

`scale` is |expected| by default. For a sum of products (a fused kernel, a dot product) rounding
error is proportional to the sum of the terms' magnitudes, not to the possibly cancelled result, so
such tests pass scale = sum of |terms|. The rtol values are a few units in the last place times the
depth of the longest reduction the suite uses; a wrong coefficient or a wrong index is off by O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


TOLERANCES = {
    np.dtype(np.float32): Tol(atol=1e-6, rtol=1e-5),
    np.dtype(np.float64): Tol(atol=1e-13, rtol=1e-11),
}

# Many-step comparisons with PyTorch, float64. Each step rounds a few ulp differently (another order
# of operations, lerp for a multiply-add), and the updates carry those differences forward, so these
# bound the drift over the whole run; a wrong formula is off by O(1) within a step or two.
OPTIMIZER_STEPS = Tol(atol=1e-12, rtol=1e-9)  # 100 optimizer steps on parameters of size O(1)
TRAINING_CURVE = Tol(atol=1e-12, rtol=1e-8)  # the losses of 50 training steps of a small model

# The diffusion math, float64. A conversion followed by its inverse (E13, E14, E27) is a few operations,
# so with scale = the sum of the magnitudes of the terms (times the 1/sqrt(alpha_bar) or
# 1/sqrt(1 - alpha_bar) it divides by) it is exact to a few ulp; the issue asks 1e-12.
ROUND_TRIP = Tol(atol=0.0, rtol=1e-12)
# The ELBO of the exact Gaussian reverse process against log q(x0), summed over up to 1000 steps:
# observed error ~1e-13 relative; the issue asks 1e-6; a wrong coefficient anywhere is off by far more.
ORACLE = Tol(atol=0.0, rtol=1e-9)


def assert_close(actual, expected, dtype=None, scale=None, what: str = "", tol: Tol | None = None) -> None:
    """tol: one of the named entries above instead of the dtype's."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what} shape {actual.shape} != expected {expected.shape}"
    tol = tol or TOLERANCES[np.dtype(dtype or actual.dtype)]
    scale = np.abs(expected) if scale is None else np.asarray(scale)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = tol.atol + tol.rtol * scale
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), bad.shape) if bad.ndim else ()
        raise AssertionError(
            f"{what} {int(bad.sum())} of {bad.size} elements off: at {i} got {actual[i]!r}, expected "
            f"{expected[i]!r} (|err| {err[i]:.3g} > {bound[i] if np.ndim(bound) else bound:.3g})"
        )
