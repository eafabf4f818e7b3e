"""Diffusion as a stochastic differential equation in continuous time t in [0, 1] (Song et al. 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations"): [E29], [E30], [E31].

  forward SDE [E29]          dx = f(x, t) dt + g(t) dw
  reverse-time SDE [E30]     dx = [f(x, t) - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar   (Anderson 1982)
  probability flow ODE [E31] dx = [f(x, t) - g(t)^2 grad_x log p_t(x) / 2] dt  (the same marginals p_t)

The three SDEs of the paper have a drift linear in x, f(x, t) = a(t) x (`drift_coef`), so x(t) given
x(0) = x0 is Gaussian, N(s(t) x0, n(t)^2 I), with s(t) = exp(int_0^t a) (`marginal_mean_coef`) and n(t)
(`marginal_std`) solving the moment equation d n^2 / dt = 2 a(t) n^2 + g(t)^2, n(0) = 0:

  VP      beta(t) = beta_min + t (beta_max - beta_min), a = -beta / 2, g = sqrt(beta),
          s = exp(-1/2 int_0^t beta), n^2 = 1 - s^2               (the continuous DDPM)
  sub-VP  a = -beta / 2, g = sqrt(beta (1 - exp(-2 int_0^t beta))), s as VP, n = 1 - s^2
  VE      sigma(t) = sigma_min (sigma_max / sigma_min)^t, a = 0, g = sigma sqrt(2 log(sigma_max / sigma_min)),
          s = 1, n^2 = sigma(t)^2 - sigma_min^2                     (the continuous NCSN)

VE convention: n^2 = sigma(t)^2 - sigma_min^2 is the exact variance of the SDE started at x(0) = x0
(Song et al.'s code writes n = sigma(t), which is the same SDE started at x(0) = x0 + sigma_min z; the
two differ by sigma_min^2, which is visible only for small t). The VE prior is consistent with it:
N(0, n(1)^2 I) = N(0, (sigma_max^2 - sigma_min^2) I), the law at t = 1 of x0 = 0. The VP and sub-VP
priors are N(0, I), the stationary law the drift pulls towards (at t = 1 the data keeps a weight s(1) =
exp(-5.025) = 0.0066 with the default betas).

Times: t is a float or a float array with one time per example, shape (B,), every value in [0, 1].
Coefficient functions return float64 of t's shape; functions of x return x's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.exercise_tools import exercise

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "check_times", "per_example", "score_at"]

LOG_2PI = math.log(2.0 * math.pi)


def check_times(t: Any, name: str = "t") -> np.ndarray:
    """t as a float64 array: a number or a 0-d/1-d array of times in [0, 1]."""
    if isinstance(t, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a time in [0, 1], got a bool")
    if isinstance(t, (int, float, np.integer, np.floating)):
        arr = np.asarray(t, dtype=np.float64)
    elif isinstance(t, np.ndarray) and t.dtype.kind in "fiu":
        if t.ndim > 1:
            raise ValueError(f"{name}: expected a number or a 1-d array (one time per example), got shape {t.shape}")
        arr = t.astype(np.float64)
    else:
        raise TypeError(f"{name}: expected a float or a float array of times in [0, 1], got {type(t).__name__}")
    outside = ~((arr >= 0.0) & (arr <= 1.0))  # NaN fails both comparisons
    if np.any(outside):
        raise ValueError(f"{name}: expected times in [0, 1], got {arr[outside].ravel()[0]}")
    return arr


def per_example(coef: np.ndarray, x: Any, name: str = "t") -> np.ndarray:
    """A coefficient of shape () or (B,) shaped to multiply x (B, ...): (B, 1, ..., 1), in x's dtype."""
    dtype = _v.float_dtype(x)
    shape = _v.shape_of(x)
    if coef.ndim == 0:
        return coef.astype(dtype)
    if len(shape) < 1 or coef.shape[0] != shape[0]:
        raise ValueError(f"{name}: expected one time per example, shape ({shape[0] if shape else '?'},), got "
                         f"shape {coef.shape} for x of shape {shape}")
    return coef.reshape((-1,) + (1,) * (len(shape) - 1)).astype(dtype)


def _positive(value: Any, name: str) -> float:
    value = _v.finite(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value}")
    return value


class SDE:
    """[E29] dx = f(x, t) dt + g(t) dw on t in [0, 1], with a linear drift f(x, t) = a(t) x.

    A subclass gives a(t) (`drift_coef`), g(t) (`diffusion`), the marginal's s(t) and n(t) in closed form
    and the prior's standard deviation `prior_std`; everything else follows from those.
    """

    prior_std: float = 1.0

    # --- what a subclass defines -------------------------------------------------------------------

    def drift_coef(self, t: Any) -> np.ndarray:
        raise NotImplementedError

    def diffusion(self, t: Any) -> np.ndarray:
        raise NotImplementedError

    def marginal_mean_coef(self, t: Any) -> np.ndarray:
        raise NotImplementedError

    def marginal_std(self, t: Any) -> np.ndarray:
        raise NotImplementedError

    # --- the SDE and its marginals -----------------------------------------------------------------

    def drift(self, x: Any, t: Any) -> Any:
        """[E29] f(x, t) = a(t) x, the drift of dx = f(x, t) dt + g(t) dw (x of shape (B, ...))."""
        return x * per_example(self.drift_coef(t), x)

    def marginal(self, x0: np.ndarray, t: Any) -> tuple[np.ndarray, np.ndarray]:
        """[E29] x(t) | x(0) = x0 ~ N(s(t) x0, n(t)^2 I): returns (mean, std), std as a read-only array of
        x0's shape (a broadcast view)."""
        x0 = _v.float_array(x0, "x0")
        mean = x0 * per_example(self.marginal_mean_coef(t), x0)  # (B, ...)
        return mean, np.broadcast_to(per_example(self.marginal_std(t), x0), x0.shape)

    def transition(self, t_from: Any, t_to: Any) -> tuple[np.ndarray, np.ndarray]:
        """[E29] x(t_to) | x(t_from) ~ N(r x(t_from), G^2 I), t_from <= t_to: returns (r, G) with
        r = s(t_to) / s(t_from), G^2 = n(t_to)^2 - r^2 n(t_from)^2 (the variance E29 adds in between)."""
        t_from, t_to = check_times(t_from, "t_from"), check_times(t_to, "t_to")
        if np.any(t_from > t_to):
            raise ValueError("t_from: expected t_from <= t_to (the forward transition)")
        r = self.marginal_mean_coef(t_to) / self.marginal_mean_coef(t_from)
        variance = self.marginal_std(t_to) ** 2 - r**2 * self.marginal_std(t_from) ** 2
        return r, np.sqrt(np.maximum(variance, 0.0))

    # --- the prior p_1 -----------------------------------------------------------------------------

    def prior_sample(self, rng: np.random.Generator, shape: Any, dtype: Any = np.float64) -> np.ndarray:
        """x(1) ~ N(0, prior_std^2 I), of the given shape, from rng."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        return (rng.standard_normal(tuple(shape)) * self.prior_std).astype(dtype)

    def prior_log_prob(self, x: np.ndarray) -> np.ndarray:
        """log N(x; 0, prior_std^2 I) per example, summed over all but the first axis: shape (B,)."""
        x = _v.float_array(x, "x")
        if x.ndim < 1:
            raise ValueError("x: expected a batch, shape (B, ...), got a 0-d array")
        flat = x.reshape(x.shape[0], -1).astype(np.float64)  # (B, D)
        variance = self.prior_std**2
        return -0.5 * (flat.shape[1] * (LOG_2PI + math.log(variance)) + np.sum(flat**2, axis=1) / variance)

    # --- reverse time ------------------------------------------------------------------------------

    @exercise("ex06.2")
    def reverse_drift(self, x: Any, t: Any, score: Any) -> Any:
        """[E30] f(x, t) - g(t)^2 score, the drift of the reverse-time SDE
        dx = [f - g^2 grad_x log p_t(x)] dt + g dw_bar (Anderson 1982; Song et al. 2021), run from t = 1 to 0.

        x: shape (B, ...); t: one time for the batch or one per example, shape (B,); score: grad_x log p_t at x
        (an exact score or a model's), shape of x. The forward drift is self.drift(x, t) and g(t) is
        self.diffusion(t), of t's shape: per_example(coef, x) shapes such a coefficient to multiply x.
        Returns an array of x's shape and dtype."""
        _v.same_shape(score, "score", x, "x")
        # BEGIN SOLUTION ex06.2: the forward drift at (x, t), minus g(t)^2 (shaped to multiply x) times the score
        return self.drift(x, t) - score * per_example(self.diffusion(t) ** 2, x)
        # END SOLUTION

    def probability_flow_drift(self, x: Any, t: Any, score: Any) -> Any:
        """[E31] f(x, t) - g(t)^2 score / 2, the velocity of the probability flow ODE, whose solutions
        have the marginals p_t of E29 (Song et al. 2021). score: grad_x log p_t at x, shape of x."""
        _v.same_shape(score, "score", x, "x")
        return self.drift(x, t) - score * per_example(0.5 * self.diffusion(t) ** 2, x)


class _LinearBeta:
    """beta(t) = beta_min + t (beta_max - beta_min), shared by the VP and sub-VP SDEs."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min, beta_max = _v.finite(beta_min, "beta_min"), _positive(beta_max, "beta_max")
        if not 0.0 <= beta_min <= beta_max:
            raise ValueError(f"beta_min: expected 0 <= beta_min <= beta_max = {beta_max}, got {beta_min}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min!r}, beta_max={self.beta_max!r})"

    def beta(self, t: Any) -> np.ndarray:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        t = check_times(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Any) -> np.ndarray:
        """int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2."""
        t = check_times(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def drift_coef(self, t: Any) -> np.ndarray:
        """[E29] a(t) = -beta(t) / 2: f(x, t) = -beta(t) x / 2 (VP and sub-VP)."""
        return -0.5 * self.beta(t)

    def marginal_mean_coef(self, t: Any) -> np.ndarray:
        """[E29] s(t) = exp(-1/2 int_0^t beta(u) du), the solution of ds/dt = a(t) s, s(0) = 1."""
        return np.exp(-0.5 * self.integrated_beta(t))

    def discrete_betas(self, T: int) -> np.ndarray:
        """beta_1..beta_T = linspace(beta(0) / T, beta(1) / T, T): DDPM's linear schedule [E5] (beta_min = 0.1,
        beta_max = 20 and T = 1000 give 1e-4..0.02), whose chain the SDE is the T -> infinity limit of:
        alpha_bar_t = prod (1 - beta_i) -> s(t / T)^2 (Song et al. 2021, appendix B)."""
        if isinstance(T, (bool, np.bool_)) or not isinstance(T, (int, np.integer)) or T < 2:
            raise ValueError(f"T: expected an integer number of steps >= 2, got {T!r}")
        return np.linspace(self.beta_min / T, self.beta_max / T, int(T))


class VPSDE(_LinearBeta, SDE):
    """[E29] The variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (Song et al. 2021):
    the limit of DDPM's chain. Prior N(0, I)."""

    def diffusion(self, t: Any) -> np.ndarray:
        """[E29] g(t) = sqrt(beta(t)) (VP)."""
        return np.sqrt(self.beta(t))

    def marginal_std(self, t: Any) -> np.ndarray:
        """[E29] n(t) = sqrt(1 - s(t)^2) = sqrt(1 - exp(-int_0^t beta)) (VP: the variance is preserved)."""
        return np.sqrt(-np.expm1(-self.integrated_beta(t)))


class SubVPSDE(_LinearBeta, SDE):
    """[E29] The sub-VP SDE dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw
    (Song et al. 2021): its variance stays below the VP SDE's. Prior N(0, I)."""

    def diffusion(self, t: Any) -> np.ndarray:
        """[E29] g(t) = sqrt(beta(t) (1 - exp(-2 int_0^t beta(u) du))) (sub-VP)."""
        return np.sqrt(self.beta(t) * -np.expm1(-2.0 * self.integrated_beta(t)))

    def marginal_std(self, t: Any) -> np.ndarray:
        """[E29] n(t) = 1 - s(t)^2 = 1 - exp(-int_0^t beta) (sub-VP: n^2 <= the VP SDE's 1 - s^2)."""
        return -np.expm1(-self.integrated_beta(t))


class VESDE(SDE):
    """[E29] The variance-exploding SDE dx = sqrt(d sigma(t)^2 / dt) dw, sigma(t) = sigma_min (sigma_max /
    sigma_min)^t (Song et al. 2021): the limit of NCSN's noise levels. Prior N(0, (sigma_max^2 - sigma_min^2) I)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        sigma_min, sigma_max = _positive(sigma_min, "sigma_min"), _positive(sigma_max, "sigma_max")
        if not sigma_min < sigma_max:
            raise ValueError(f"sigma_min: expected sigma_min < sigma_max = {sigma_max}, got {sigma_min}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = math.sqrt(sigma_max**2 - sigma_min**2)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r})"

    def sigma(self, t: Any) -> np.ndarray:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t, geometric from sigma_min to sigma_max."""
        t = check_times(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coef(self, t: Any) -> np.ndarray:
        """[E29] a(t) = 0: the VE SDE has no drift."""
        return np.zeros_like(check_times(t))

    def diffusion(self, t: Any) -> np.ndarray:
        """[E29] g(t) = sqrt(d sigma(t)^2 / dt) = sigma(t) sqrt(2 log(sigma_max / sigma_min)) (VE)."""
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def marginal_mean_coef(self, t: Any) -> np.ndarray:
        """[E29] s(t) = 1 (no drift)."""
        return np.ones_like(check_times(t))

    def marginal_std(self, t: Any) -> np.ndarray:
        """[E29] n(t) = sqrt(sigma(t)^2 - sigma_min^2) = sqrt(int_0^t g^2) (VE, started at x(0) = x0).

        Computed as sigma_min sqrt(expm1(2 t log(sigma_max / sigma_min))), without the cancellation at small t."""
        t = check_times(t)
        return self.sigma_min * np.sqrt(np.expm1(2.0 * t * math.log(self.sigma_max / self.sigma_min)))


def score_at(score_fn: Any, x: np.ndarray, t: float) -> np.ndarray:
    """score_fn(x, t_batch) with t_batch = t for every example (float64, shape (B,)), checked to have the
    shape of x and returned in x's dtype: how the samplers and the likelihood call a score model."""
    out = np.asarray(score_fn(x, np.full(x.shape[0], t, dtype=np.float64)))
    if out.shape != x.shape:
        raise ValueError(f"score_fn: expected a score of the shape of x {x.shape}, got {out.shape}")
    if out.dtype.kind != "f":
        raise TypeError(f"score_fn: expected a float array, got dtype {out.dtype}")
    return out.astype(x.dtype, copy=False)
