"""The evidence lower bound (E17-E22): the bound, its decomposition term by term, the per-step weight
that turns it into a weighted noise-prediction loss, and an estimate in bits per dimension over a dataset.

Terms are in nats per example (summed over the example's D dimensions); `bits_per_dim` divides by
D ln 2. Indexing: L_0 is the decoder term (t = 1), L_{t-1} for t = 2..T the denoising KL at step t,
L_T the prior term; `VLBTerms.terms[:, k]` holds L_k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion import losses
from minidiff.diffusion.forward import q_sample, q_step_mean_variance
from minidiff.diffusion.losses import bits_per_dim, check_pixels, normal_log_prob
from minidiff.diffusion.posterior import q_posterior_mean_variance
from minidiff.diffusion.reverse import (
    DECODERS,
    _per_example_sum,
    _variance_table,
    p_decoder_log_prob,
    p_log_joint,
    p_mean_variance,
    prior_mean_log_variance,
)
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise
from minidiff.progress import progress


def prior_term(schedule: NoiseSchedule, x0: np.ndarray, prior: Any = None) -> np.ndarray:
    """[E19] L_T = KL(q(x_T | x_0) || p(x_T)), p(x_T) = N(0, I) unless `prior` = (mean, variance) is given.

    Per example, in nats. No parameter of the model enters it: for the linear schedule it is about
    1e-5 bits per dimension, the price of alpha_bar_T not being exactly 0."""
    x0 = _v.float_array(x0, "x0")
    mean_q, variance_q = (np.asarray(a, np.float64) for a in _q_marginal_at_T(schedule, x0))
    mean_p, log_variance_p = prior_mean_log_variance(prior, x0)
    return _per_example_sum(losses.normal_kl(mean_q, np.log(variance_q), mean_p, log_variance_p))


def _q_marginal_at_T(schedule: NoiseSchedule, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x0.astype(np.float64) * schedule.sqrt_alpha_bars[schedule.T]
    return mean, np.full(x0.shape, schedule.one_minus_alpha_bars[schedule.T])


@exercise("ex04.4")
def denoising_term(schedule: NoiseSchedule, model_output: Any, x0: np.ndarray, xt: np.ndarray, t: Any, *,
                   prediction_type: str = "epsilon", variance_type: Any = "fixed_small") -> np.ndarray:
    """[E20] L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t >= 2, a closed-form KL
    between diagonal Gaussians (E11, E10, E23). Per example, in nats, at the given x_t."""
    t_checked = schedule.check_t(t, xt)
    if np.any(t_checked < 2):
        raise ValueError("t: the denoising terms are t = 2..T; t = 1 is the decoder term L_0 (decoder_nll)")
    # The posterior q(x_{t-1} | x_t, x_0) (E11) and the model's step p_theta(x_{t-1} | x_t) (E10) are diagonal
    # Gaussians: their KL is E23 per dimension (in float64), summed over every dimension of an example.
    # (losses.normal_kl is exercise 4.1's function; called so, it is graded here at its reference solution.)
    # BEGIN SOLUTION ex04.4: q_posterior_mean_variance, p_mean_variance, losses.normal_kl (float64), sum per example
    mean_q, _, log_variance_q = q_posterior_mean_variance(schedule, x0, xt, t)  # (B, ...) each
    step = p_mean_variance(schedule, model_output, xt, t, prediction_type=prediction_type,
                           variance_type=variance_type)
    kl = losses.normal_kl(np.asarray(mean_q, np.float64), np.asarray(log_variance_q, np.float64),
                          np.asarray(step.mean, np.float64), np.asarray(step.log_variance, np.float64))  # (B, ...)
    terms = _per_example_sum(kl)  # (B,) nats
    # END SOLUTION
    return terms


def decoder_nll(schedule: NoiseSchedule, model_output: Any, x0: np.ndarray, x1: np.ndarray, *,
                prediction_type: str = "epsilon", variance_type: Any = "fixed_small",
                decoder: str = "discretized") -> np.ndarray:
    """[E21] L_0 = -log p_theta(x_0 | x_1), per example, in nats: the discretized Gaussian of the reverse
    step at t = 1 over 8-bit bins (or its density, decoder="gaussian", for continuous data)."""
    step = p_mean_variance(schedule, model_output, x1, 1, prediction_type=prediction_type,
                           variance_type=variance_type)
    return -p_decoder_log_prob(x0, step.mean, step.log_variance, decoder)


@dataclass(frozen=True)
class VLBTerms:
    """The terms of E18 per example, in nats: terms[:, k] = L_k, shape (B, T + 1).

    k = 0: the decoder term L_0 (E21); k = 1..T-1: the denoising terms L_k (E20, at step t = k + 1);
    k = T: the prior term L_T (E19). num_dims: D, the values per example (for bits per dimension).
    """

    terms: np.ndarray
    num_dims: int

    @property
    def total(self) -> np.ndarray:
        """-ELBO per example, in nats: L_T + sum_{t=2..T} L_{t-1} + L_0 (E18)."""
        return self.terms.sum(axis=1)

    @property
    def prior(self) -> np.ndarray:
        return self.terms[:, -1]

    @property
    def reconstruction(self) -> np.ndarray:
        return self.terms[:, 0]

    @property
    def denoising(self) -> np.ndarray:
        return self.terms[:, 1:-1]

    def bits_per_dim(self) -> np.ndarray:
        """-ELBO per example in bits per dimension."""
        return bits_per_dim(self.total, self.num_dims)


def vlb_terms(schedule: NoiseSchedule, model: Any, x0: np.ndarray, *, rng: np.random.Generator | None = None,
              noise: np.ndarray | None = None, prediction_type: str = "epsilon", variance_type: Any = "fixed_small",
              decoder: str = "discretized", prior: Any = None) -> VLBTerms:
    """[E18] -ELBO = L_T + sum_{t=2..T} L_{t-1} + L_0, every term for every example of the batch x0.

    Each L_{t-1} is an expectation over x_t ~ q(x_t | x_0); it is estimated with one x_t per t and
    example (improved DDPM's estimator), drawn from rng, or built from the given noise: shape x0.shape
    (the same eps for every t) or (T, *x0.shape) (noise[t - 1] for step t). The model is called T times,
    with t of shape (B,). decoder: "discretized" (x0 8-bit images in [-1, 1]) or "gaussian".
    """
    x0 = _v.float_array(x0, "x0")
    if x0.ndim < 1:
        raise ValueError("x0: expected a batch, shape (B, ...), got a 0-d array")
    _v.choice(decoder, "decoder", DECODERS)
    if decoder == "discretized":
        check_pixels(x0)
    if noise is not None:
        noise = _v.float_array(noise, "noise")
        if noise.shape not in (x0.shape, (schedule.T, *x0.shape)):
            raise ValueError(f"noise: expected shape {x0.shape} or {(schedule.T, *x0.shape)}, got {noise.shape}")
    elif not isinstance(rng, np.random.Generator):
        raise ValueError("rng: pass a numpy.random.Generator to draw x_t for each term (or pass noise)")
    batch, kwargs = x0.shape[0], {"prediction_type": prediction_type, "variance_type": variance_type}
    terms = np.empty((batch, schedule.T + 1))
    terms[:, schedule.T] = prior_term(schedule, x0, prior)
    for t in range(1, schedule.T + 1):
        if noise is None:
            eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
        else:
            eps = np.asarray(noise if noise.shape == x0.shape else noise[t - 1], dtype=x0.dtype)
        xt = q_sample(schedule, x0, t, noise=eps)
        out = model(xt, np.full(batch, t, dtype=np.int64))
        if t == 1:
            terms[:, 0] = decoder_nll(schedule, out, x0, xt, decoder=decoder, **kwargs)
        else:
            terms[:, t - 1] = denoising_term(schedule, out, x0, xt, t, **kwargs)
    return VLBTerms(terms, int(np.prod(x0.shape[1:], dtype=np.int64)))


def vlb_weight(schedule: NoiseSchedule, t: Any, variance_type: Any = "fixed_small") -> np.ndarray:
    """[E22] lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)): with the mean of E12,
    L_{t-1} = lambda_t E || eps - eps_theta ||^2 + C_t (C_t = 0 when sigma_t^2 = beta_tilde_t).

    variance_type: "fixed_small" or "fixed_large" (or a table of sigma_t^2). Returns float64, shape of t.
    L_simple (E15) sets every lambda_t to 1: it up-weights large t relative to the bound.
    """
    t = schedule.check_t(t)
    table = _variance_table(schedule, variance_type)
    if table is None:
        raise ValueError("variance_type: a learned variance has no fixed weight; use 'fixed_small' or 'fixed_large'")
    sigma2 = table[0][t]
    with np.errstate(divide="ignore"):
        return schedule.betas[t] ** 2 / (2.0 * sigma2 * schedule.alphas[t] * schedule.one_minus_alpha_bars[t])


def q_log_prob_trajectory(schedule: NoiseSchedule, trajectory: np.ndarray) -> np.ndarray:
    """[E1] log q(x_{1:T} | x_0) = sum_{t=1..T} log N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I), per example.

    trajectory: shape (T + 1, B, ...), indexed by t. In nats, float64."""
    trajectory = _v.float_array(trajectory, "trajectory")
    if trajectory.ndim < 2 or trajectory.shape[0] != schedule.T + 1:
        raise ValueError(f"trajectory: expected shape (T + 1, B, ...) = ({schedule.T + 1}, B, ...), "
                         f"got {trajectory.shape}")
    traj = trajectory.astype(np.float64)
    total = np.zeros(traj.shape[1])
    for t in range(1, schedule.T + 1):
        mean, variance = q_step_mean_variance(schedule, traj[t - 1], t)
        total += _per_example_sum(normal_log_prob(traj[t], mean, np.log(variance)))
    return total


def elbo_sample(schedule: NoiseSchedule, model: Any, trajectory: np.ndarray, *, prediction_type: str = "epsilon",
                variance_type: Any = "fixed_small", prior: Any = None, decoder: str = "gaussian") -> np.ndarray:
    """[E17] log p_theta(x_{0:T}) - log q(x_{1:T} | x_0) at one trajectory x_{1:T} ~ q(. | x_0):
    its expectation is the ELBO, and log p_theta(x_0) >= ELBO. Per example, in nats.

    Equality holds, trajectory by trajectory, exactly when p_theta(x_{0:T}) = p_theta(x_0) q(x_{1:T} | x_0),
    i.e. when the reverse process is the true one: the test of the exact-data oracle."""
    return (p_log_joint(schedule, model, trajectory, prediction_type=prediction_type, variance_type=variance_type,
                        prior=prior, decoder=decoder)
            - q_log_prob_trajectory(schedule, trajectory))


@dataclass(frozen=True)
class ELBOEstimate:
    """-ELBO over a dataset: the mean over examples in bits per dimension and its standard error, the
    mean of each term L_k in bits per dimension (shape (T + 1,), as VLBTerms), and the number of examples."""

    bits_per_dim: float
    standard_error: float
    terms_bits_per_dim: np.ndarray
    num_examples: int


def neg_elbo_bits_per_dim(schedule: NoiseSchedule, model: Any, data: np.ndarray, *, rng: np.random.Generator,
                          batch_size: int = 64, prediction_type: str = "epsilon", variance_type: Any = "fixed_small",
                          decoder: str = "discretized", prior: Any = None, show_progress: bool = True) -> ELBOEstimate:
    """[E18][E21] -ELBO of a model over a dataset, in bits per dimension: the mean over examples of
    (L_T + sum_t L_{t-1} + L_0) / (D ln 2), each example's terms from `vlb_terms` (one x_t per term).

    data: (N, ...), 8-bit images scaled to [-1, 1] for the discretized decoder. The standard error is
    over examples (it includes the noise of the one-sample estimate of each term). A progress bar
    counts the batches (tqdm if installed).
    """
    data = _v.float_array(data, "data")
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data: expected examples along axis 0, shape (N, ...), got {data.shape}")
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    starts = range(0, data.shape[0], batch_size)
    per_example, term_sums = [], np.zeros(schedule.T + 1)
    for start in progress(starts, len(starts), "-ELBO", show_progress):
        result = vlb_terms(schedule, model, data[start:start + batch_size], rng=rng, prediction_type=prediction_type,
                           variance_type=variance_type, decoder=decoder, prior=prior)
        per_example.append(result.bits_per_dim())
        term_sums += bits_per_dim(result.terms, result.num_dims).sum(axis=0)
    values = np.concatenate(per_example)
    n = values.size
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return ELBOEstimate(float(values.mean()), stderr, term_sums / n, n)
