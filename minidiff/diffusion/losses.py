"""Gaussian log densities and divergences (E21, E23), the training loss L_simple (E15) with its
weightings, and bits per dimension.

Loss functions use only arithmetic operators and `.mean()` on what a model returns, so they work on
numpy arrays and on autodiff Tensors alike; `normal_kl` and `normal_log_prob` take log-variances
(improved DDPM's convention: a learned variance is naturally a log-variance).
`discretized_gaussian_log_likelihood` is for evaluation: it computes in float64 NumPy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.forward import q_sample
from minidiff.diffusion.parameterization import PREDICTION_TYPES, v_from_eps_x0
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise

LOG_2PI = math.log(2.0 * math.pi)
BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit pixels scaled to [-1, 1]: 256 bins of width 2 / 255
WEIGHTINGS = (None, "snr", "min_snr")


def _exp(a: Any) -> Any:
    """exp of an array, or of an autodiff Tensor (through its own .exp())."""
    return np.exp(a) if isinstance(a, (np.ndarray, np.generic, float, int)) else a.exp()


# ---------------------------------------------------------------------------------------------------
# Gaussians


def normal_log_prob(x: Any, mean: Any, log_variance: Any) -> Any:
    """log N(x; mean, exp(log_variance)), elementwise: -(log 2 pi + log_variance + (x - mean)^2 / variance) / 2."""
    return ((x - mean) ** 2 * _exp(-log_variance) + log_variance + LOG_2PI) * -0.5


@exercise("ex04.1")
def normal_kl(mean1: Any, log_variance1: Any, mean2: Any, log_variance2: Any) -> Any:
    """[E23] KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2,
    elementwise (per dimension), from log-variances log s1^2 and log s2^2. In nats.

    Broadcasts like arithmetic; sum over dimensions for the KL of diagonal Gaussians.
    """
    # BEGIN SOLUTION ex04.1: log(s2/s1) = (log s2^2 - log s1^2) / 2, and 1 / s2^2 = exp(-log s2^2)
    kl = ((log_variance2 - log_variance1) + _exp(log_variance1 - log_variance2)
          + (mean1 - mean2) ** 2 * _exp(-log_variance2) - 1.0) * 0.5
    # END SOLUTION
    return kl


_erfc = np.frompyfunc(math.erfc, 1, 1)  # math.erfc is exact to the last bit, also for tiny results
_LEFT_TAIL = -37.0  # below this erfc(-z / sqrt 2) / 2 underflows to 0 and the asymptotic series takes over


def log_normal_cdf(z: Any) -> np.ndarray:
    """log Phi(z), Phi the standard normal CDF, accurate from the far left tail to the far right. float64.

    z <= 0:   Phi(z) = erfc(-z / sqrt 2) / 2 (erfc keeps full relative accuracy when Phi is tiny);
    z > 0:    log Phi(z) = log1p(-erfc(z / sqrt 2) / 2) (keeps the tiny -Q(z) instead of rounding to 0);
    z < -37:  log Phi(z) = -z^2/2 - log(-z) - log(2 pi)/2 + log(1 - 1/z^2 + 3/z^4 - 15/z^6), Mills' ratio
              series (the next term, 105/z^8 < 1e-10, is dropped), where erfc underflows.
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.empty(z.shape)
    left, right = z < _LEFT_TAIL, z > 0
    middle = ~(left | right)  # also NaN, which stays NaN
    out[middle] = np.log(0.5 * _erfc(-z[middle] / math.sqrt(2.0)).astype(np.float64))
    out[right] = np.log1p(-0.5 * _erfc(z[right] / math.sqrt(2.0)).astype(np.float64))
    zl = z[left]
    r = 1.0 / zl**2
    out[left] = -0.5 * zl**2 - np.log(-zl) - 0.5 * LOG_2PI + np.log1p(r * (-1.0 + r * (3.0 - 15.0 * r)))
    return out


def _log1mexp(d: np.ndarray) -> np.ndarray:
    """log(1 - exp(d)) for d <= 0, accurate near 0 (expm1) and far below it (log1p)."""
    with np.errstate(divide="ignore"):
        return np.where(d > -math.log(2.0), np.log(-np.expm1(np.minimum(d, 0.0))), np.log1p(-np.exp(d)))


def log_normal_cdf_diff(lower: Any, upper: Any) -> np.ndarray:
    """log(Phi(upper) - Phi(lower)) for lower <= upper, without cancellation. float64.

    Both edges right of 0: the same mass from the other tail, Phi(-lower) - Phi(-upper), so the two
    CDF values are small and distinct instead of both near 1. Narrow intervals (width < 1e-5, i.e. a
    Gaussian far wider than a bin): the midpoint rule, phi(center) * width, which is then accurate to
    width^2 / 24 relative, where the difference of two logs would lose digits.
    """
    lower, upper = np.broadcast_arrays(np.asarray(lower, np.float64), np.asarray(upper, np.float64))
    flip = lower > 0
    lo, hi = np.where(flip, -upper, lower), np.where(flip, -lower, upper)
    log_hi = log_normal_cdf(hi)
    exact = log_hi + _log1mexp(log_normal_cdf(lo) - log_hi)
    width = upper - lower
    with np.errstate(divide="ignore"):
        midpoint = -0.5 * (0.5 * (lower + upper)) ** 2 - 0.5 * LOG_2PI + np.log(width)
    return np.where(width < 1e-5, midpoint, exact)


def check_pixels(x0: Any, name: str = "x0") -> np.ndarray:
    """8-bit data scaled to [-1, 1]: a float array whose values are -1 + 2k/255, k = 0..255."""
    if isinstance(x0, np.ndarray) and x0.dtype.kind in "iub":
        raise ValueError(f"{name}: expected pixel values scaled to [-1, 1] as floats (x / 127.5 - 1 for 8-bit x), "
                         f"got an integer array of dtype {x0.dtype}")
    x0 = _v.float_array(x0, name)
    if x0.size and not (np.isfinite(x0).all() and x0.min() >= -1.0 - 1e-6 and x0.max() <= 1.0 + 1e-6):
        seen = f"values in [{x0.min()}, {x0.max()}]" if np.isfinite(x0).all() else "NaN or inf"
        raise ValueError(f"{name}: expected pixel values in [-1, 1] (x / 127.5 - 1 for 8-bit x), got {seen}")
    k = (x0.astype(np.float64) + 1.0) * 127.5
    if x0.size and np.abs(k - np.round(k)).max() > 1e-3:
        raise ValueError(f"{name}: expected values on the 8-bit grid -1 + 2k/255, k = 0..255 "
                         "(quantize continuous data before asking for a discretized likelihood)")
    return x0


@exercise("ex04.2")
def discretized_gaussian_log_likelihood(x0: np.ndarray, mean: Any, log_variance: Any) -> np.ndarray:
    """[E21] log P(x_0) under N(mean, s^2) discretized into the 256 bins of 8-bit pixels scaled to [-1, 1]:
    P(x) = Phi((x + 1/255 - m) / s) - Phi((x - 1/255 - m) / s) inside, edge bins open:
    P(-1) = Phi((-1 + 1/255 - m) / s), P(1) = 1 - Phi((1 - 1/255 - m) / s). Elementwise, in nats.

    x0: values -1 + 2k/255 (float32 or float64); mean and log_variance (log s^2) broadcast to x0's
    shape. Computed in log space (`log_normal_cdf`, `log_normal_cdf_diff`), so no bin has log 0 even
    when the mean is many standard deviations away. Returns an array of x0's shape and dtype.
    """
    x0 = check_pixels(x0)
    for name, value in (("mean", mean), ("log_variance", log_variance)):
        _v.broadcasts_to(value, name, x0.shape, "x0's")
    x = x0.astype(np.float64)
    m = np.asarray(mean, dtype=np.float64)
    inv_s = np.exp(-0.5 * np.asarray(log_variance, dtype=np.float64))  # 1 / s
    # BEGIN SOLUTION ex04.2: standardized bin edges; x = -1: log Phi(upper), x = 1: log Phi(-lower), else the difference
    upper = (x + BIN_HALF_WIDTH - m) * inv_s
    lower = (x - BIN_HALF_WIDTH - m) * inv_s
    log_probs = np.where(
        x < -1.0 + BIN_HALF_WIDTH, log_normal_cdf(upper),
        np.where(x > 1.0 - BIN_HALF_WIDTH, log_normal_cdf(-lower), log_normal_cdf_diff(lower, upper)))
    # END SOLUTION
    return np.asarray(log_probs, dtype=x0.dtype)


# ---------------------------------------------------------------------------------------------------
# Training loss


def training_target(schedule: NoiseSchedule, x0: Any, eps: Any, t: Any, prediction_type: str = "epsilon") -> Any:
    """What a model of `prediction_type` should output at x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps:
    eps ("epsilon"), x0 ("sample") or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 ("v_prediction")."""
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return v_from_eps_x0(schedule, eps, x0, t)


def loss_weights(schedule: NoiseSchedule, t: Any, prediction_type: str = "epsilon", weighting: str | None = None,
                 gamma: float = 5.0) -> np.ndarray:
    """Per-example weights of the squared error of a `prediction_type` target, float64, shape of t.

    Every target's error is a multiple of the x0 error at the same x_t:
    ||eps - eps_hat||^2 = SNR_t ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR_t + 1) ||x0 - x0_hat||^2.
    A weighting is chosen as a weight w_t on the x0 error and divided by that factor:
      None        1 for every t (each target as it is; with eps this is DDPM's L_simple);
      "min_snr"   w_t = min(SNR_t, gamma) (Hang et al. 2023): min(SNR_t, gamma) / SNR_t for eps,
                  min(SNR_t, gamma) for x0, min(SNR_t, gamma) / (SNR_t + 1) for v;
      "snr"       w_t = SNR_t (min-SNR with gamma = inf): every target then gives L_simple's value.
    At SNR_t = 0 (t = T of a zero-terminal-SNR schedule) the eps weight is its limit, 1.
    """
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    t = schedule.check_t(t)
    if weighting is None:
        return np.ones(t.shape)
    gamma = math.inf if weighting == "snr" else _v.finite(gamma, "gamma")
    if gamma <= 0:
        raise ValueError(f"gamma: expected a positive clip of the SNR, got {gamma}")
    snr = schedule.snr[t]
    if prediction_type == "epsilon":
        with np.errstate(divide="ignore"):
            return np.minimum(1.0, gamma / snr)  # = min(SNR, gamma) / SNR, and 1 at SNR = 0
    w_x0 = np.minimum(snr, gamma)
    return w_x0 if prediction_type == "sample" else w_x0 / (snr + 1.0)


def simple_loss(model_output: Any, target: Any, weights: Any = None) -> Any:
    """mean over the batch of weights_b * (mean over dimensions of (model_output - target)^2): a scalar.

    weights: None, or one per example (shape (B,)). Only `-`, `**`, `*` and `.mean()` touch model_output,
    so an autodiff Tensor gets its gradient.
    """
    _v.same_shape(target, "target", model_output, "model_output")
    squared = (model_output - target) ** 2
    if weights is None:
        return squared.mean()
    shape = _v.shape_of(model_output)
    weights = np.asarray(weights, dtype=_v.float_dtype(model_output))
    if weights.shape != shape[:1]:
        raise ValueError(f"weights: expected one weight per example, shape {shape[:1]}, got {weights.shape}")
    # Every example has the same number of dimensions, so the mean of weight * squared error over all
    # elements is the mean over examples of weight * (per-example mean).
    return (squared * weights.reshape(shape[:1] + (1,) * (len(shape) - 1))).mean()


@exercise("ex04.3")
def l_simple(schedule: NoiseSchedule, model: Any, x0: np.ndarray, *, rng: np.random.Generator | None = None,
             t: Any = None, noise: np.ndarray | None = None, prediction_type: str = "epsilon",
             weighting: str | None = None, gamma: float = 5.0) -> Any:
    """[E15] L_simple = E_{t, x0, eps} || eps - eps_theta(x_t, t) ||^2, t uniform on 1..T, as a batch mean.

    x0: a batch (B, ...); model(xt, t) is called once with t of shape (B,). t and noise (eps) are
    drawn from rng unless given, in that order: t = schedule.sample_timesteps(rng, B), then
    eps = rng.standard_normal(x0.shape, dtype=x0.dtype). prediction_type picks the target (eps, x0
    or v; `training_target`), weighting the per-example weight (`loss_weights`). The squared error is
    averaged over dimensions (DDPM's implementation; the sum over dimensions is D times larger).
    Returns a scalar (a Tensor when the model returns one).
    """
    x0 = _v.float_array(x0, "x0")
    if x0.ndim < 1:
        raise ValueError("x0: expected a batch, shape (B, ...), got a 0-d array")
    batch = x0.shape[0]
    if t is not None:
        t = schedule.check_t(t, x0)
        t = np.full(batch, t) if t.ndim == 0 else t  # (B,)
    if noise is not None:
        noise = _v.noise_for(x0, "x0", noise, None)  # (B, ...), checked like x0
    if (t is None or noise is None) and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: pass a numpy.random.Generator to draw {'t' if t is None else 'the noise'} "
                         f"(or pass {'t' if t is None else 'noise'}), got {type(rng).__name__}")
    # DDPM's training step (Ho et al. 2020, Algorithm 1): t uniform on 1..T, then eps ~ N(0, I) of x0's shape and
    # dtype (each drawn from rng only when not given, in that order); x_t from x0 and eps (E3); the model's output
    # at (x_t, t); its target (eps for an eps model); the mean squared error (simple_loss, with loss_weights(...)
    # as the per-example weights when weighting is not None).
    # BEGIN SOLUTION ex04.3: draw t then eps (unless given), q_sample, the model, simple_loss against training_target
    if t is None:
        t = schedule.sample_timesteps(rng, batch)  # (B,) uniform on 1..T
    eps = rng.standard_normal(x0.shape, dtype=x0.dtype) if noise is None else noise  # (B, ...)
    xt = q_sample(schedule, x0, t, noise=eps)  # (B, ...)
    out = model(xt, t)
    _v.same_shape(out, "model output", x0, "x0")
    target = training_target(schedule, x0, eps, t, prediction_type)
    weights = None if weighting is None else loss_weights(schedule, t, prediction_type, weighting, gamma)
    loss = simple_loss(out, target, weights)
    # END SOLUTION
    return loss


def bits_per_dim(nats: Any, num_dims: int) -> Any:
    """[E21] bits per dimension = nats / (D ln 2): a negative log-likelihood (or -ELBO) of one example in
    nats, over its D = num_dims values (pixels x channels), in bits."""
    if isinstance(num_dims, (bool, np.bool_)) or not isinstance(num_dims, (int, np.integer)) or num_dims < 1:
        raise ValueError(f"num_dims: expected a positive integer (values per example), got {num_dims!r}")
    return nats / (num_dims * math.log(2.0))
