"""One Gaussian: the exact denoiser E[x0 | x_t] by Bayes' rule (chapter 00's tour, exercise 0.1).

If x0 ~ N(mean, diag(var)) and x_t = scale x0 + std eps with eps ~ N(0, I) independent (E3 has
scale = sqrt(alpha_bar_t), std = sqrt(1 - alpha_bar_t)), every coordinate of x0 is jointly Gaussian with the
same coordinate of x_t and independent of the others, so the best guess of x0 from x_t is a per-coordinate
linear function of x_t. `GaussianMixture.posterior_mean` computes the same for a mixture of full-covariance
Gaussians; with one diagonal component the two agree, which the tests check, along with Monte Carlo.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.exercise_tools import exercise

__all__ = ["gaussian_posterior_mean"]


def _broadcast_values(value: Any, name: str, xt: np.ndarray, low: float | None = None) -> np.ndarray:
    """A number or an array broadcasting against xt, as an array of xt's dtype (every value >= low if given)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating, np.ndarray)):
        raise TypeError(f"{name}: expected a number or an array broadcasting against xt, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got a NaN or an infinity")
    if low is not None and arr.size and arr.min() < low:
        raise ValueError(f"{name}: expected values >= {low}, got {arr.min()}")
    _v.broadcasts_to(arr, name, xt.shape, "the shape of xt")
    return arr.astype(xt.dtype)


@exercise("ex00.1")
def gaussian_posterior_mean(xt: np.ndarray, scale: Any, std: Any, mean: Any, var: Any) -> np.ndarray:
    """E[x0 | scale x0 + std eps = xt] for x0 ~ N(mean, diag(var)) and eps ~ N(0, I) independent of x0: the exact
    denoiser of Gaussian data, one coordinate at a time (for E3's x_t: scale = sqrt(alpha_bar_t),
    std = sqrt(1 - alpha_bar_t)).

    xt: a float32 or float64 array. scale, std (>= 0): numbers, or arrays broadcasting against xt (shape
    (B, 1, ..., 1) gives one per example). mean, var (>= 0): numbers or arrays broadcasting against xt (one per
    coordinate). scale^2 var + std^2 must be positive everywhere (else xt is a constant and says nothing).
    Returns an array of xt's shape and dtype.
    """
    xt = _v.float_array(xt, "xt")
    scale = _broadcast_values(scale, "scale", xt)
    std = _broadcast_values(std, "std", xt, low=0.0)
    mean = _broadcast_values(mean, "mean", xt)
    var = _broadcast_values(var, "var", xt, low=0.0)
    if np.any(scale * scale * var + std * std == 0.0):
        raise ValueError("scale, std, var: scale^2 var + std^2 is 0 somewhere, where xt is a constant that says "
                         "nothing about x0; give std > 0 or var > 0")
    # BEGIN SOLUTION ex00.1: x0 and xt are jointly Gaussian: E[x0 | xt] = E[x0] + Cov(x0, xt) / Var(xt) (xt - E[xt])
    gain = scale * var / (scale * scale * var + std * std)  # Cov(x0, xt) / Var(xt), per coordinate
    x0 = mean + gain * (xt - scale * mean)  # (shape of xt)
    # END SOLUTION
    return x0
