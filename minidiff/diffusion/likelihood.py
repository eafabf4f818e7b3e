"""Exact log-likelihoods by the change of variables along the probability flow ODE [E34] (Song et al. 2021,
appendix D; the instantaneous change of variables of neural ODEs, Chen et al. 2018, and FFJORD, Grathwohl
et al. 2019).

Along a solution x(t) of dx/dt = f_tilde(x, t) (the probability flow velocity of E31,
f_tilde = f - g^2 score / 2), the continuity equation gives d log p_t(x(t)) / dt = -div f_tilde(x(t), t), so

    log p_0(x(0)) = log p_1(x(1)) + int_0^1 div f_tilde(x(t), t) dt.

`ode_log_likelihood` integrates x and the integral together, from t = eps (not 0, where a score diverges
as 1 / n(t)) to 1, with the RK45 solver of minidiff.diffusion.ode, and returns log p_eps(x) as log p_0(x).
With f = a(t) x (minidiff.diffusion.sde), div f_tilde = D a(t) - g(t)^2 / 2 div score, so only the
score's divergence (the trace of its Jacobian) needs work:
  * "exact" with `divergence_fn`: a NumPy score plus its divergence in closed form (the GMM's
    score_jacobian trace);
  * "exact" without it: score_fn computes on minidiff autodiff Tensors, and the trace is assembled from D
    vector-Jacobian products (reverse mode: row i of the Jacobian is e_i^T J); fine in low dimension D;
  * "hutchinson": tr J = E_z[z^T J z] for any probe z with E[z z^T] = I (Rademacher or Gaussian), one
    vector-Jacobian product per evaluation; the same probe is kept along the whole solve (FFJORD), so the
    integral is an unbiased estimate of the exact one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from minidiff.autodiff import Tensor
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.losses import bits_per_dim
from minidiff.diffusion.ode import solve_ivp_rk45
from minidiff.diffusion.sde import SDE, score_at

__all__ = ["DIVERGENCES", "PROBES", "likelihood_bits_per_dim", "ode_log_likelihood", "probability_flow_divergence",
           "probe_vectors", "score_divergence_exact", "score_divergence_hutchinson"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")

ScoreAndDivergence = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def probe_vectors(rng: np.random.Generator, shape: Any, probe: str = "rademacher") -> np.ndarray:
    """Probes z with E[z] = 0 and E[z z^T] = I, float64: "rademacher" (+-1 with probability 1/2 each, the
    smaller variance of z^T J z) or "gaussian" (N(0, I))."""
    _v.choice(probe, "probe", PROBES)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator for the Hutchinson probes, got {type(rng).__name__}")
    if probe == "gaussian":
        return rng.standard_normal(tuple(shape))
    return rng.integers(0, 2, size=tuple(shape)).astype(np.float64) * 2.0 - 1.0


def _score_vjp(score_fn: Any, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The score at x (an autodiff graph from x) and v -> v^T J, J = d score / dx, by the autodiff."""
    leaf = Tensor(x, requires_grad=True)
    out = score_fn(leaf, t)
    if not isinstance(out, Tensor):
        raise TypeError("score_fn: without divergence_fn, the divergence comes from the autodiff, so score_fn must "
                        f"compute on minidiff Tensors and return one; got {type(out).__name__} (or pass "
                        "divergence_fn with a NumPy score_fn)")
    if out.shape != x.shape:
        raise ValueError(f"score_fn: expected a score of the shape of x {x.shape}, got {out.shape}")

    def vjp(v: np.ndarray) -> np.ndarray:
        if not out.requires_grad:  # the score does not depend on x
            return np.zeros_like(x)
        leaf.grad = None
        out.backward(v, retain_graph=True)
        return leaf.grad

    return out.data.astype(np.float64), vjp


def score_divergence_exact(score_fn: Any, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E34] (score, div score) with div score = tr(d score / dx) = sum_i d score_i / d x_i per example, exactly,
    from D vector-Jacobian products of the autodiff: e_i^T J is row i of J, whose element i is on the diagonal
    (for every example of the batch at once, examples being independent). x (B, ...), returns (B, ...), (B,)."""
    score, vjp = _score_vjp(score_fn, x, t)
    batch, dims = x.shape[0], x[0].size
    divergence = np.zeros(batch)  # (B,)
    for i in range(dims):
        e_i = np.zeros((batch, dims))  # (B, D)
        e_i[:, i] = 1.0
        divergence += vjp(e_i.reshape(x.shape)).reshape(batch, dims)[:, i]
    return score, divergence


def score_divergence_hutchinson(score_fn: Any, x: np.ndarray, t: np.ndarray,
                                z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E34] (score, z^T J z) per example, J = d score / dx: Hutchinson's unbiased estimate of tr J
    (E_z[z^T J z] = tr(J E[z z^T]) = tr J), from one vector-Jacobian product z^T J. z: probes of x's shape."""
    _v.like(z, "z", x, "x")
    score, vjp = _score_vjp(score_fn, x, t)
    return score, np.sum((vjp(z) * z).reshape(x.shape[0], -1), axis=1)


def probability_flow_divergence(sde: SDE, t: float, num_dims: int, score_divergence: np.ndarray) -> np.ndarray:
    """[E34] div_x f_tilde(x, t) = D a(t) - g(t)^2 / 2 div_x score, for the probability flow velocity
    f_tilde = a(t) x - g(t)^2 score / 2 of E31 in D dimensions."""
    return num_dims * sde.drift_coef(t) - 0.5 * sde.diffusion(t) ** 2 * score_divergence


def _score_and_divergence(score_fn: Any, divergence: str, divergence_fn: Any,
                          z: np.ndarray | None) -> ScoreAndDivergence:
    """The (score, div score) evaluator the options ask for: x (B, ...), t (B,) -> (B, ...), (B,)."""
    if divergence_fn is None:
        if divergence == "exact":
            return lambda x, t: score_divergence_exact(score_fn, x, t)
        return lambda x, t: score_divergence_hutchinson(score_fn, x, t, z)
    if divergence == "hutchinson":
        raise ValueError("divergence_fn: gives the exact divergence; use divergence='exact' with it, or drop it for "
                         "Hutchinson's estimate from the autodiff")
    if not callable(divergence_fn):
        raise TypeError(f"divergence_fn: expected a callable divergence_fn(x, t) -> (B,), got "
                        f"{type(divergence_fn).__name__}")

    def evaluate(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        div = np.asarray(divergence_fn(x, t), dtype=np.float64)
        if div.shape != (x.shape[0],):
            raise ValueError(f"divergence_fn: expected one divergence per example, shape ({x.shape[0]},), got "
                             f"{div.shape}")
        return score_at(score_fn, x, float(t[0])), div

    return evaluate


def _check_eps(eps: Any) -> float:
    eps = _v.finite(eps, "eps")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps: expected the start time in (0, 1), got {eps}")
    return eps


def ode_log_likelihood(sde: SDE, score_fn: Any, x: np.ndarray, rng: np.random.Generator | None = None, *,
                       divergence: str = "exact", probe: str = "rademacher", divergence_fn: Any = None,
                       rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                       prior_log_prob: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """[E34] log p_0(x) = log p_1(x(1)) + int_eps^1 div f_tilde(x(t), t) dt along the probability flow ODE (E31)
    from x(eps) = x, per example: shape (B,), in nats (Song et al. 2021).

    score_fn(x, t): the score of p_t at x, t float64 of shape (B,); on minidiff Tensors unless divergence_fn
    is given (see the module). divergence: "exact" or "hutchinson" (then rng draws the probes, of kind
    `probe`, once per example for the whole solve). rtol, atol: of the RK45 solve of the augmented state
    (x, integral). prior_log_prob(x1) -> (B,): log p_1 (default sde.prior_log_prob; pass the exact p_1 when
    it is known, to measure only the ODE). The result is log p_eps(x), which tends to log p_0(x) as eps -> 0.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde: expected a minidiff SDE (VPSDE, VESDE, SubVPSDE), got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn: expected a callable score_fn(x, t), got {type(score_fn).__name__}")
    x = _v.float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected a batch of shape (B, ...) with B >= 1 and at least one dimension, got {x.shape}")
    _v.choice(divergence, "divergence", DIVERGENCES)
    prior_log_prob = sde.prior_log_prob if prior_log_prob is None else prior_log_prob
    if not callable(prior_log_prob):
        raise TypeError(f"prior_log_prob: expected a callable log p_1(x) -> (B,), got {type(prior_log_prob).__name__}")
    eps = _check_eps(eps)
    shape, batch, dims = x.shape, x.shape[0], x[0].size
    z = probe_vectors(rng, shape, probe) if divergence == "hutchinson" and divergence_fn is None else None
    score_and_divergence = _score_and_divergence(score_fn, divergence, divergence_fn, z)

    def augmented(t: float, y: np.ndarray) -> np.ndarray:  # y (B, D + 1): x and the integral so far
        xt = y[:, :dims].reshape(shape)  # (B, ...)
        score, score_div = score_and_divergence(xt, np.full(batch, t))
        velocity = sde.probability_flow_drift(xt, t, score).reshape(batch, dims)  # (B, D)
        div = probability_flow_divergence(sde, t, dims, score_div)  # (B,)
        return np.concatenate([velocity, div[:, None]], axis=1)  # (B, D + 1)

    y0 = np.concatenate([x.reshape(batch, dims).astype(np.float64), np.zeros((batch, 1))], axis=1)  # (B, D + 1)
    y1 = solve_ivp_rk45(augmented, eps, 1.0, y0, rtol=rtol, atol=atol).y
    log_p1 = np.asarray(prior_log_prob(y1[:, :dims].reshape(shape)), dtype=np.float64)
    if log_p1.shape != (batch,):
        raise ValueError(f"prior_log_prob: expected one log density per example, shape ({batch},), got {log_p1.shape}")
    return log_p1 + y1[:, dims]


def likelihood_bits_per_dim(log_likelihood: Any, num_dims: int, data_range: float | None = None,
                            levels: int = 256) -> Any:
    """-log p(x) / (D ln 2) bits per dimension for a log density log p(x) in nats (E34's output), plus the
    dequantization offset log2(levels / data_range) when the data are discrete.

    Discrete data (8-bit images: levels = 256 values per dimension spread over an interval of length
    data_range) have a probability, not a density. Uniform dequantization spreads each value over its bin
    of width w = data_range / levels; a density p of the dequantized data then gives the value the
    probability P(x) ~ p(x) w^D, so -log2 P(x) / D = -log2 p(x) / D + log2(1 / w) (Theis et al. 2016):
    images in [-1, 1] (data_range = 2) add log2(128) = 7 bits per dimension, images in [0, 1] add 8, the
    offsets of Song et al.'s code. data_range None: continuous data, no offset.
    """
    bits = bits_per_dim(-np.asarray(log_likelihood, dtype=np.float64), num_dims)
    if data_range is None:
        return bits
    data_range = _v.finite(data_range, "data_range")
    if data_range <= 0:
        raise ValueError(f"data_range: expected the positive length of the data's interval, got {data_range}")
    if isinstance(levels, (bool, np.bool_)) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels: expected an integer number of values per dimension >= 2, got {levels!r}")
    return bits + math.log2(levels / data_range)
