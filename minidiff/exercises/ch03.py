"""Chapter 03 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch03
"""

from __future__ import annotations

import numpy as np
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.parameterization import _eps_is_informative
from minidiff.diffusion.schedules import NoiseSchedule
from typing import Any


# Exercise 3.1 (reference: minidiff.diffusion.schedules.posterior_coefficients)
def posterior_coefficients(betas: np.ndarray, alpha_bars: np.ndarray,
                           one_minus_alpha_bars: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[E11] mu_tilde_t = c0_t x_0 + ct_t x_t and beta_tilde_t of q(x_{t-1} | x_t, x_0), for t = 1..T:
    c0_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t), ct_t = sqrt(alpha_t) (1 - alpha_bar_{t-1}) /
    (1 - alpha_bar_t), beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

    All arguments and results are indexed by t (length T + 1; betas[0] = 0, alpha_bars[0] = 1,
    one_minus_alpha_bars[0] = 0). Returns (c0, ct, beta_tilde), with NaN at index 0 (no step 0).
    """
    raise NotImplementedError("Exercise 3.1: slice t = 1..T and t - 1 = 0..T-1, then the three formulas of E11")
    nan = np.array([np.nan])
    return (np.concatenate((nan, coef_x0)), np.concatenate((nan, coef_xt)), np.concatenate((nan, variance)))


# Exercise 3.2 (reference: minidiff.diffusion.parameterization.predict_x0_from_eps)
def predict_x0_from_eps(schedule: NoiseSchedule, xt: Any, t: Any, eps: Any) -> Any:
    """[E13] x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    _v.same_shape(eps, "eps", xt, "xt")
    _eps_is_informative(schedule, t, "x0 from eps")
    raise NotImplementedError("Exercise 3.2: pick sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) with schedule.at(..., t, xt), then E13")
    return x0
