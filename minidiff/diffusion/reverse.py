"""The learned reverse process p_theta (E9, E10, E12, E16): from a model's output to the Gaussian
p_theta(x_{t-1} | x_t), one ancestral step, the whole chain, and its log-density.

A model is any callable `model(xt, t) -> array` with t an int64 array of shape (B,) (one timestep per
example); nothing here knows what network it is. Its output is read according to `prediction_type`
("epsilon", "sample" = x0, "v_prediction"; see parameterization.py) and the reverse variance
sigma_t^2 according to `variance_type`:
  "fixed_small"    beta_tilde_t, the posterior variance (the lower of DDPM's two choices; at t = 1,
                   where beta_tilde_1 = 0, beta_tilde_2 as in improved DDPM, so the decoder has a width);
  "fixed_large"    beta_t (the upper choice);
  "learned_range"  the model outputs 2C channels along axis 1: C for the prediction, then C values u in
                   [-1, 1], and log sigma_t^2 = f log beta_t + (1 - f) log beta_tilde_t, f = (u + 1) / 2
                   (improved DDPM, whose paper calls u "v"; here v is the velocity of E14);
  an array         sigma_t^2 for t = 0..T (index t; e.g. the exact reverse variances of a known data set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.losses import discretized_gaussian_log_likelihood, normal_log_prob
from minidiff.diffusion.parameterization import PREDICTION_TYPES, _eps_is_informative, to_eps_x0
from minidiff.diffusion.posterior import q_posterior_mean_variance
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise
from minidiff.kernels import StepCoefs, sampler_step
from minidiff.kernels._checks import FLOAT_DTYPES

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
DECODERS = ("discretized", "gaussian")


class ReverseStep(NamedTuple):
    """p_theta(x_{t-1} | x_t) = N(mean, variance) and the model's implied x0 and eps."""

    mean: Any
    variance: Any
    log_variance: Any
    x0_pred: Any
    eps_pred: Any


def _variance_table(schedule: NoiseSchedule, variance_type: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(sigma_t^2, log sigma_t^2) for t = 0..T of a fixed variance type; None for "learned_range"."""
    if isinstance(variance_type, np.ndarray):
        table = variance_type.astype(np.float64)
        if table.shape != (schedule.T + 1,):
            raise ValueError(f"variance_type: expected sigma_t^2 for t = 0..T, shape ({schedule.T + 1},), "
                             f"got {table.shape}")
        if not (np.isfinite(table[1:]).all() and (table[1:] > 0).all()):
            raise ValueError("variance_type: expected finite positive sigma_t^2 for t = 1..T")
        return table, np.log(np.where(np.arange(table.size) == 0, 1.0, table))
    _v.choice(variance_type, "variance_type", VARIANCE_TYPES)
    if variance_type == "fixed_small":
        return schedule.posterior_variance_clipped, schedule.posterior_log_variance_clipped
    if variance_type == "fixed_large":
        return schedule.betas, schedule.log_betas
    return None


def reverse_variance(schedule: NoiseSchedule, t: Any, like: Any, variance_type: Any = "fixed_small",
                     var_output: Any = None) -> tuple[Any, Any]:
    """[E10] sigma_t^2 of p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I): beta_tilde_t ("fixed_small"),
    beta_t ("fixed_large"), exp(f log beta_t + (1 - f) log beta_tilde_t) with f = (u + 1) / 2
    ("learned_range", u = var_output in [-1, 1]), or a given table. Returns (variance, log_variance), shaped
    like `like`.
    """
    table = _variance_table(schedule, variance_type)
    shape = _v.shape_of(like)
    if table is not None:
        if var_output is not None:
            raise ValueError(f"var_output: only used with variance_type='learned_range', not {variance_type!r}")
        return (np.broadcast_to(schedule.at(table[0], t, like), shape),
                np.broadcast_to(schedule.at(table[1], t, like), shape))
    if var_output is None:
        raise ValueError("var_output: variance_type='learned_range' needs the model's variance output v")
    _v.same_shape(var_output, "var_output", like, "xt")
    log_max = schedule.at(schedule.log_betas, t, like)  # log beta_t
    log_min = schedule.at(schedule.posterior_log_variance_clipped, t, like)  # log beta_tilde_t
    log_variance = (var_output + 1.0) * (0.5 * (log_max - log_min)) + log_min
    return np.exp(log_variance) if isinstance(log_variance, np.ndarray) else log_variance.exp(), log_variance


def p_mean_from_eps(schedule: NoiseSchedule, xt: Any, t: Any, eps: Any) -> Any:
    """[E12] mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t).

    This is E11's posterior mean with x_0 replaced by E13's estimate from eps_theta."""
    _v.same_shape(eps, "eps", xt, "xt")
    _eps_is_informative(schedule, t, "the mean from eps")
    coef_eps = schedule.at(schedule.betas, t, xt) / schedule.at(schedule.sqrt_one_minus_alpha_bars, t, xt)
    return (xt - eps * coef_eps) / schedule.at(schedule.sqrt_alphas, t, xt)


def p_mean_variance(schedule: NoiseSchedule, model_output: Any, xt: Any, t: Any, *,
                    prediction_type: str = "epsilon", variance_type: Any = "fixed_small",
                    clip_denoised: bool = False) -> ReverseStep:
    """[E10] p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) from a model output.

    The mean is E12 for an eps model, else E11's posterior mean at the model's x0 estimate (the same
    Gaussian whichever parameterization expresses a prediction). clip_denoised: clip the x0 estimate
    to [-1, 1] first (then the posterior-mean form is used for every parameterization).
    """
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    prediction, var_output = model_output, None
    if isinstance(variance_type, str) and variance_type == "learned_range":
        shape = _v.shape_of(xt)
        out_shape = _v.shape_of(model_output)
        if len(shape) < 2 or out_shape != (shape[0], 2 * shape[1], *shape[2:]):
            raise ValueError(f"model_output: with variance_type='learned_range' expected shape "
                             f"{(shape[0], 2 * shape[1], *shape[2:]) if len(shape) >= 2 else '(B, 2C, ...)'} "
                             f"(prediction, then variance channels), got {out_shape}")
        prediction, var_output = model_output[:, : shape[1]], model_output[:, shape[1]:]
    variance, log_variance = reverse_variance(schedule, t, xt, variance_type, var_output)
    eps, x0 = to_eps_x0(schedule, prediction, xt, t, prediction_type)
    if clip_denoised:
        x0 = x0.clip(-1.0, 1.0)
    if prediction_type == "epsilon" and not clip_denoised:
        mean = p_mean_from_eps(schedule, xt, t, eps)
    else:
        mean = q_posterior_mean_variance(schedule, x0, xt, t)[0]
    return ReverseStep(mean, variance, log_variance, x0, eps)


def ancestral_step_coefs(schedule: NoiseSchedule, t: int, *, prediction_type: str = "epsilon",
                         variance_type: Any = "fixed_small", clip_denoised: bool = False) -> StepCoefs:
    """[E16] The scalars of x_{t-1} = mu_theta(x_t, t) + sigma_t z for the fused kernel
    `minidiff.kernels.sampler_step`: x_{t-1} = c_x x_t + c_eps out + c_z z [+ c_x0 clip(r_x x_t + r_eps out)].

    `out` is the model output. Without clipping, mu_theta is affine in (x_t, out); with it, mu_theta =
    c0 clip(x0_hat) + ct x_t (E11) where x0_hat = r_x x_t + r_eps out (E13, E14). sigma_t = 0 at t = 1.
    """
    t = int(schedule.check_t(t))
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    table = _variance_table(schedule, variance_type)
    if table is None:
        raise ValueError("variance_type: 'learned_range' depends on the model output elementwise; use p_sample")
    sigma = 0.0 if t == 1 else float(np.sqrt(table[0][t]))
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    if prediction_type == "epsilon":
        _eps_is_informative(schedule, t, "an eps step")
        if not clip_denoised:  # E12 as it stands
            c_x = 1.0 / schedule.sqrt_alphas[t]
            return StepCoefs(c_x=c_x, c_eps=-c_x * schedule.betas[t] / b, c_z=sigma)
        r_x, r_out = 1.0 / a, -b / a
    elif prediction_type == "sample":
        r_x, r_out = 0.0, 1.0
    else:
        r_x, r_out = a, -b
    c0, ct = schedule.posterior_mean_coef_x0[t], schedule.posterior_mean_coef_xt[t]
    if clip_denoised:
        return StepCoefs(c_x=ct, c_eps=0.0, c_z=sigma, c_x0=c0, r_x=r_x, r_eps=r_out, clip=1.0)
    return StepCoefs(c_x=ct + c0 * r_x, c_eps=c0 * r_out, c_z=sigma)


def p_sample(schedule: NoiseSchedule, model_output: Any, xt: np.ndarray, t: Any, noise: np.ndarray | None = None,
             rng: np.random.Generator | None = None, *, prediction_type: str = "epsilon",
             variance_type: Any = "fixed_small", clip_denoised: bool = False) -> np.ndarray:
    """[E16] x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), with z = 0 at t = 1 (the last step
    returns the decoder's mean). noise: z (like xt), or rng to draw it."""
    xt = _v.float_array(xt, "xt")
    z = _v.noise_for(xt, "xt", noise, rng)
    step = p_mean_variance(schedule, model_output, xt, t, prediction_type=prediction_type,
                           variance_type=variance_type, clip_denoised=clip_denoised)
    t = schedule.check_t(t, xt)
    keep = (t > 1).astype(xt.dtype)
    if t.ndim == 1:
        keep = keep.reshape(t.shape + (1,) * (xt.ndim - 1))
    return step.mean + np.exp(0.5 * np.asarray(step.log_variance)).astype(xt.dtype) * z * keep


def _ancestral_stepper(schedule: NoiseSchedule, *, prediction_type: str, variance_type: Any,
                       clip_denoised: bool) -> Callable[[Any, np.ndarray, int, np.ndarray | None], np.ndarray]:
    """step(model_output, x_t, t, z) -> x_{t-1} [E16]: `p_sample` with these options and the noise z (None at
    t = 1). Fixed variances run it as one fused kernel call (`ancestral_step_coefs`), the same numbers."""
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    fused = _variance_table(schedule, variance_type) is not None

    def step(model_output: Any, xt: np.ndarray, t: int, z: np.ndarray | None) -> np.ndarray:
        if z is None and t > 1:
            raise ValueError(f"z: the step from t = {t} > 1 needs noise z ~ N(0, I) of x_t's shape; only the last "
                             "step (t = 1) takes z = None")
        if fused:
            coefs = ancestral_step_coefs(schedule, t, prediction_type=prediction_type, variance_type=variance_type,
                                         clip_denoised=clip_denoised)
            return sampler_step(xt, np.ascontiguousarray(model_output, dtype=xt.dtype), z, coefs)
        return p_sample(schedule, model_output, xt, t, noise=np.zeros_like(xt) if z is None else z,
                        prediction_type=prediction_type, variance_type=variance_type, clip_denoised=clip_denoised)

    return step


@exercise("ex03.3")
def p_sample_loop(schedule: NoiseSchedule, model: Any, shape: tuple[int, ...], rng: np.random.Generator, *,
                  x_T: np.ndarray | None = None, dtype: Any = np.float64, prediction_type: str = "epsilon",
                  variance_type: Any = "fixed_small", clip_denoised: bool = False,
                  return_trajectory: bool = False) -> np.ndarray:
    """[E9][E16] Ancestral sampling of p_theta(x_{0:T}) = p(x_T) prod_t p_theta(x_{t-1} | x_t):
    x_T ~ p(x_T) = N(0, I) (or the given x_T), then x_{t-1} = mu_theta(x_t, t) + sigma_t z for t = T, ..., 1,
    with z ~ N(0, I) for t > 1 and no noise at t = 1 (the last step returns the decoder's mean).

    model(x_t, t) gets t as an int64 array of shape (B,), one timestep per example. shape: (B, ...) of a
    batch; dtype: of x_T when drawn (float32 or float64), kept by every step. Randomness, in this order:
    x_T = rng.standard_normal(shape, dtype) unless x_T is given, then z = rng.standard_normal(x.shape, x.dtype)
    for t = T, ..., 2; so a seed fixes the samples. Returns x_0, or with return_trajectory the whole chain,
    shape (T + 1, *shape), indexed by t (x_0 first).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"shape: expected a batch shape (B, ...), got {shape}")
    if x_T is not None:
        x_T = _v.float_array(x_T, "x_T")
        if x_T.shape != shape:
            raise ValueError(f"x_T: expected shape {shape}, got {x_T.shape}")
    elif np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
    step = _ancestral_stepper(schedule, prediction_type=prediction_type, variance_type=variance_type,
                              clip_denoised=clip_denoised)  # step(model_output, x_t, t, z) -> x_{t-1}
    # BEGIN SOLUTION ex03.3: x_T ~ N(0, I); for t = T..1: out = model(x, t array), z if t > 1, x = step(out, x, t, z)
    x = rng.standard_normal(shape, dtype=dtype) if x_T is None else x_T.copy()  # x_T, (B, ...)
    trajectory = [x]
    for t in range(schedule.T, 0, -1):
        out = model(x, np.full(shape[0], t, dtype=np.int64))  # (B, ...)
        z = rng.standard_normal(shape, dtype=x.dtype) if t > 1 else None  # no noise at the last step
        x = step(out, x, t, z)  # x_{t-1}
        if return_trajectory:
            trajectory.append(x)
    return np.stack(trajectory[::-1]) if return_trajectory else x
    # END SOLUTION


def _per_example_sum(a: np.ndarray) -> np.ndarray:
    """(B, ...) -> (B,): the sum over every dimension but the batch."""
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1).sum(axis=1)


def prior_mean_log_variance(prior: Any, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, log variance) of p(x_T), shaped like `like`: N(0, I) for prior=None, else prior = (mean, variance)."""
    if prior is None:
        return np.zeros(like.shape), np.zeros(like.shape)
    if not (isinstance(prior, tuple) and len(prior) == 2):
        raise TypeError(f"prior: expected None (N(0, I)) or a (mean, variance) pair, got {type(prior).__name__}")
    mean, variance = (np.asarray(p, dtype=np.float64) for p in prior)
    _v.broadcasts_to(mean, "prior", like.shape, "x_T's (the prior mean)")
    _v.broadcasts_to(variance, "prior", like.shape, "x_T's (the prior variance)")
    if not (np.isfinite(variance).all() and (variance > 0).all()):
        raise ValueError("prior: expected a finite positive variance")
    return np.broadcast_to(mean, like.shape), np.broadcast_to(np.log(variance), like.shape)


def p_decoder_log_prob(x0: np.ndarray, mean: Any, log_variance: Any, decoder: str = "discretized") -> np.ndarray:
    """[E21] log p_theta(x_0 | x_1) per example (summed over dimensions), in nats: the discretized
    Gaussian over 8-bit bins ("discretized", for images in [-1, 1]) or the Gaussian density
    N(x_0; mean, sigma_1^2) itself ("gaussian", for continuous data)."""
    _v.choice(decoder, "decoder", DECODERS)
    if decoder == "discretized":
        return _per_example_sum(discretized_gaussian_log_likelihood(x0, mean, log_variance).astype(np.float64))
    return _per_example_sum(normal_log_prob(np.asarray(x0, np.float64), np.asarray(mean, np.float64),
                                            np.asarray(log_variance, np.float64)))


def p_log_joint(schedule: NoiseSchedule, model: Any, trajectory: np.ndarray, *, prediction_type: str = "epsilon",
                variance_type: Any = "fixed_small", prior: Any = None, decoder: str = "gaussian") -> np.ndarray:
    """[E9] log p_theta(x_{0:T}) = log p(x_T) + sum_{t=2..T} log p_theta(x_{t-1} | x_t) + log p_theta(x_0 | x_1),
    per example, in nats (float64).

    trajectory: shape (T + 1, B, ...), indexed by t (as from `q_sample_trajectory`). prior: None for
    p(x_T) = N(0, I), or (mean, variance). decoder: the t = 1 factor, "gaussian" or "discretized".
    """
    trajectory = _v.float_array(trajectory, "trajectory")
    if trajectory.ndim < 2 or trajectory.shape[0] != schedule.T + 1:
        raise ValueError(f"trajectory: expected shape (T + 1, B, ...) = ({schedule.T + 1}, B, ...), "
                         f"got {trajectory.shape}")
    _v.choice(decoder, "decoder", DECODERS)
    x_T = trajectory[schedule.T]
    mean, log_variance = prior_mean_log_variance(prior, x_T)
    total = _per_example_sum(normal_log_prob(x_T.astype(np.float64), mean, log_variance))
    batch = trajectory.shape[1]
    for t in range(schedule.T, 0, -1):
        xt = trajectory[t]
        step = p_mean_variance(schedule, model(xt, np.full(batch, t, dtype=np.int64)), xt, t,
                               prediction_type=prediction_type, variance_type=variance_type)
        if t > 1:
            total = total + _per_example_sum(normal_log_prob(trajectory[t - 1].astype(np.float64),
                                                             np.asarray(step.mean, np.float64),
                                                             np.asarray(step.log_variance, np.float64)))
        else:
            total = total + p_decoder_log_prob(trajectory[0], step.mean, step.log_variance, decoder)
    return total
