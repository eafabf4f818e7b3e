"""Chapter 10 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch10
"""

from __future__ import annotations

import math
import numpy as np
from minidiff.kernels.sampler_step import StepCoefs
from minidiff.kernels.sampler_step import sampler_step
from minidiff.samplers.sigmas import Denoiser


# Exercise 10.1 (reference: minidiff.samplers.dpm_solver.dpm_solver_2m_update)
def dpm_solver_2m_update(x: np.ndarray, m0: np.ndarray, m1: np.ndarray, lambdas: tuple[float, float, float],
                         alphas: tuple[float, float, float], sigmas: tuple[float, float, float]) -> np.ndarray:
    """[E35] One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2, the "midpoint" form), from t_i to t_{i+1}:

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) (m0 + D1 / 2),
        h = lambda_{i+1} - lambda_i,  r = (lambda_i - lambda_{i-1}) / h,  D1 = (m0 - m1) / r.

    x: the VP sample x_i at t_i, shape (B, ...); m0, m1: the data predictions x0_hat at t_i and t_{i-1}
    (same shape and dtype). lambdas, alphas, sigmas: lambda = log(alpha / sigma), alpha_t = sqrt(alpha_bar) and
    sigma_t = sqrt(1 - alpha_bar) at the three times (t_{i-1}, t_i, t_{i+1}), as Python floats; t_{i+1} must
    be a noise level above 0 (lambda finite). m0 + D1 / 2 is the straight line through (lambda_{i-1}, m1)
    and (lambda_i, m0) at the middle of the step, lambda_i + h / 2; the step integrates the linear part of the
    ODE exactly with x0_hat held at that value. With m1 = m0 it is the first-order step, DDIM (E32).
    The update is affine in (x, m0, m1), so it runs as one call of the fused kernel. Returns x_{i+1}, in the
    dtype of x.
    """
    lambdas, alphas, sigmas = (tuple(float(v) for v in seq) for seq in (lambdas, alphas, sigmas))
    if not all(math.isfinite(v) for v in lambdas) or not lambdas[0] < lambdas[1] < lambdas[2]:
        raise ValueError(f"lambdas: expected finite lambda_(i-1) < lambda_i < lambda_(i+1), got {lambdas}")
    raise NotImplementedError("Exercise 10.1: the step h, the ratio r of the previous step to it, then the weights of x, m0 and m1")
    return sampler_step(x, m0, m1, StepCoefs(c_x=c_x, c_eps=c_m0, c_z=c_m1))  # one fused pass over the arrays


# Exercise 10.2 (reference: minidiff.samplers.edm.edm_heun_step)
def edm_heun_step(denoiser: Denoiser, x: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    """[E36] One step of Heun's method on dx/dsigma = (x - D(x; sigma)) / sigma, from sigma to sigma_next < sigma
    (Karras et al. 2022, Algorithm 1, lines 4-8, without churn):

        d = (x - D(x; sigma)) / sigma,                x' = x + (sigma_next - sigma) d          (Euler predictor)
        d' = (x' - D(x'; sigma_next)) / sigma_next,   x_next = x + (sigma_next - sigma) (d + d') / 2  (trapezoid)

    and, when sigma_next = 0, the Euler predictor alone (d' would divide by 0; x' is then D(x; sigma)).
    denoiser: D(x, sigma) returning an array of x's shape and dtype; called twice (once for the last step).
    x: the sample at sigma, shape (B, ...). sigma, sigma_next: Python floats. Returns the sample at sigma_next,
    in the dtype of x.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    if not (sigma > 0.0 and 0.0 <= sigma_next < sigma and math.isfinite(sigma)):
        raise ValueError(f"sigma, sigma_next: expected 0 <= sigma_next < sigma, finite, got {sigma}, {sigma_next}")
    raise NotImplementedError("Exercise 10.2: slope d at x, Euler predictor (the answer if sigma_next = 0), slope there, average slope")
    return x_next
