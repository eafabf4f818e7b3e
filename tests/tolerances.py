"""The one tolerance table: |actual - expected| <= atol + rtol * scale, per dtype.

`scale` is |expected| by default. For a sum of products (a fused kernel, a dot product) rounding
error is proportional to the sum of the terms' magnitudes, not to the possibly cancelled result, so
such tests pass scale = sum of |terms|. The rtol values are a few units in the last place times the
depth of the longest reduction the suite uses; a wrong coefficient or a wrong index is off by O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from feedback import mismatch


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
# A derivative against float64 central differences with step h = 1e-5, for functions of O(1) scale whose
# third derivatives are below ~1e2 (the GMM oracle's log density and score): truncation h^2 |f'''| / 6 ~ 2e-9,
# rounding u |f| / h ~ 1e-11 per unit of |f|; 1e-6 leaves room for steeper regions, a wrong formula is off by O(1).
FINITE_DIFFERENCES = Tol(atol=1e-6, rtol=1e-6)
# minidiff's RK45 against scipy's solve_ivp(method="RK45"), float64: the same tableau and step-size controller
# take the same steps; only the order of floating-point sums differs (~1e-16 per step), and it reaches the
# step sizes through err^(-1/5), err being a cancelling difference y5 - y4; observed <= 1e-14 over a few
# hundred steps. A wrong tableau entry or controller constant changes the steps and the result by about the
# solver tolerance (>= 1e-8 in those tests) and the evaluation count.
RK45_TWIN = Tol(atol=1e-12, rtol=1e-10)
# An adaptive RK45 solve at rtol = atol = 1e-10 of a smooth ODE over [eps, 1] (the probability flow of Gaussian
# data) against the exact solution: the global error is a few times the tolerance per unit of |y| (observed
# <= 6e-10 relative); a wrong coefficient of the velocity moves the end point by O(1).
ODE_SOLVE = Tol(atol=1e-8, rtol=1e-8)
# [E34] log-likelihoods by the probability flow ODE, in nats per dimension (compare log p / D): the bound the
# task sets. RK45 at rtol = atol = 1e-6 is observed within 5e-5 nats; starting at t = eps = 1e-5 instead of 0
# adds O(n(eps)^2 |lap log p|) ~ 1e-5; a wrong divergence or drift term is off by 0.1 nats or more.
LOG_LIKELIHOOD_PER_DIM = Tol(atol=1e-3, rtol=0.0)

# Sigma-based samplers (Euler, Heun, Euler ancestral, DPM-Solver) against diffusers, which builds alpha_bar in
# float32. Near t = 1, alpha_bar_1 = 1 - beta_1 is stored to 2^-25 absolute, so 1 - alpha_bar_1 (~1e-4) is off by
# up to 2^-25 / 1e-4 = 3e-4 relative and sigma_1 by half that (observed 8.3e-5 at beta_1 = 1e-4; smaller for larger
# beta_1). DIFFUSERS_SIGMAS compares sigmas and the timesteps found from Karras sigmas (t ~ sigma^2 near t = 1,
# so t inherits twice sigma's relative error): 3e-4. One timestep off changes sigma by >= beta_T / 2 (0.6-1%).
DIFFUSERS_SIGMAS = Tol(atol=0.0, rtol=3e-4)
# The samples and x0 estimates of those runs, replayed on diffusers' own float32 sigma table. diffusers rounds
# the sample to float32 at every step (Euler, Euler ancestral and DPM-Solver cast it) and its sigmas and step
# scalars are float32, so each step adds a few 2^-24 relative to the terms it sums (tests pass scale = the sum
# of their magnitudes); carried through 10-16 steps and amplified by the multistep weights (up to ~2), this
# reaches 1.15 x the float32 table's rtol (observed). A wrong coefficient, sigma or index changes a step by O(1)
# relative (>= 0.5% for a sigma one timestep off), far outside 2e-5.
DIFFUSERS_SIGMA_RUN = Tol(atol=1e-6, rtol=2e-5)


def assert_close(actual, expected, dtype=None, scale=None, what: str = "", tol: Tol | None = None) -> None:
    """tol: one of the named entries above instead of the dtype's. A failure says what is wrong in a sentence
    (None, a shape, NaN or inf, the worst element, a guess at the mistake: see feedback.mismatch), no array dump."""
    if tol is None:
        kind = np.dtype(dtype) if dtype is not None else np.asarray(expected if actual is None else actual).dtype
        tol = TOLERANCES.get(kind, TOLERANCES[np.dtype(np.float64)])  # an integer result: judged as float64
    why = mismatch(actual, expected, tol, scale=scale, what=what)
    if why:
        raise AssertionError(why)


# A float32 U-Net against diffusers' float32 UNet2DModel, max |error| relative to the output's largest value (the
# issue asks 1e-4). Both round each of ~100 layers to 2^-24 relative, in other orders of summation, and diffusers
# computes the embedding angles t w in float32 (off by up to ulp(1000) ~ 6e-5 at t ~ 1000, minidiff's are float64);
# observed <= 2e-6 for the 35.7M-parameter DDPM CIFAR-10 U-Net. A timestep off by one is off by ~5e-2, a wrong key
# mapping by O(1).
DIFFUSERS_MODEL = Tol(atol=0.0, rtol=1e-4)
