"""Chapter 02 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch02
"""

from __future__ import annotations

import numpy as np
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.diffusion.schedules import _check_T
from typing import Any


# Exercise 2.1 (reference: minidiff.diffusion.schedules.cosine_betas)
def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """[E6] alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2);
    beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta) (Nichol & Dhariwal 2021).

    The offset s keeps beta_1 from being tiny; the clip keeps beta_T (where f(T) ~ 0 would give
    beta_T ~ 1) away from 1. Returns beta_1..beta_T, shape (T,), float64.
    """
    T = _check_T(T)
    s = _v.finite(s, "s")
    if s < 0:
        raise ValueError(f"s: expected an offset >= 0, got {s}")
    max_beta = _v.finite(max_beta, "max_beta")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta: expected a value in (0, 1), got {max_beta}")
    raise NotImplementedError("Exercise 2.1: f(t) for t = 0..T, alpha_bar = f / f(0), beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clip")
    return betas


# Exercise 2.2 (reference: minidiff.diffusion.forward.q_sample)
def q_sample(schedule: NoiseSchedule, x0: np.ndarray, t: Any, noise: np.ndarray | None = None,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """[E3] x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I): x_t in one draw.

    noise: the eps to use (shape and dtype of x0), or rng to draw it. t: an int or an int array of
    shape (B,). Returns x_t with the shape and dtype of x0.
    """
    x0 = _v.float_array(x0, "x0")
    eps = _v.noise_for(x0, "x0", noise, rng)
    schedule.check_t(t, x0)
    raise NotImplementedError("Exercise 2.2: pick sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) with schedule.at(..., t, x0), combine")
    return xt
