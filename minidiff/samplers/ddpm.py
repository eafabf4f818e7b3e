"""DDPM: ancestral sampling (E16) over any decreasing sub-sequence of the training steps, step for step as
diffusers' DDPMScheduler runs it; and what DDIM shares with it: reading a model output as (x0, eps), the
clip or dynamic threshold of the x0 estimate, and the update as one call of the fused kernel.

A strided step. Running only the timesteps t_1 > t_2 > ... > t_N, the step from t to the next one t'
(t' = 0, the data, after the last) treats the pair as one step of a chain: the forward process from t' to
t is q(x_t | x_{t'}) = N(sqrt(alpha_bar_t / alpha_bar_{t'}) x_{t'}, beta_{t|t'} I) with the effective beta
beta_{t|t'} = 1 - alpha_bar_t / alpha_bar_{t'}, so E11's posterior holds with alpha_bar_{t'} for
alpha_bar_{t-1} (`strided_posterior`), and the step is E16 with it:

    x_{t'} = c0 x0_hat + ct x_t + sigma z,   sigma^2 = beta_tilde_{t|t'} ("fixed_small") or beta_{t|t'} ("fixed_large").

With every step of the chain (t' = t - 1) this is E16 as `minidiff.diffusion.p_sample` takes it.

diffusers' conventions, kept for parity:
  * noise is added at t > 1 (diffusers' k > 0), so a run whose last timestep is above 1 ("trailing"
    spacing, or steps_offset) adds noise at its step to the data too: with "fixed_large" a full-size draw,
    sigma^2 = beta_{t|0} = 1 - alpha_bar_t; with "fixed_small" beta_tilde_{t|0} = 0, which diffusers clamps
    to 1e-20 (sigma = 1e-10; "learned_range" takes the log of that clamp).
  * with thresholding on, clip_sample is not applied (the threshold already bounds x0).
variance_type: "fixed_small" (beta_tilde), "fixed_small_log" (the same sigma, through its log),
"fixed_large" (beta), "learned_range" (the model outputs 2C channels along axis 1: the prediction, then v
in [-1, 1] with log sigma^2 = f log beta + (1 - f) log beta_tilde, f = (v + 1) / 2; improved DDPM).
diffusers' "learned" (sigma^2 read raw from the model) and "fixed_large_log" (its step takes the square
root of log beta, which is NaN) are refused.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.parameterization import OutputReading, _eps_is_informative, output_reading
from minidiff.diffusion.schedules import NoiseSchedule, posterior_coefficients
from minidiff.kernels import StepCoefs, sampler_step
from minidiff.samplers.base import (
    CLIP_OPTIONS,
    PREDICTION_OPTION,
    SCHEDULE_OPTIONS,
    SPACING_OPTIONS,
    THRESHOLD_OPTIONS,
    Option,
    Sampler,
    SamplerOutput,
    combine,
    dynamic_threshold,
    one_of,
    spaced_timesteps,
)

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned_range")
REFUSED_VARIANCE_TYPES = {
    "learned": "minidiff does not implement 'learned' (sigma^2 read raw from the model); use 'learned_range'",
    "fixed_large_log": "diffusers' step takes the square root of log beta (NaN) for 'fixed_large_log'; "
                       "use 'fixed_large'",
}
MIN_VARIANCE = 1e-20  # diffusers clamps beta_tilde here (it is 0 on a step to t' = 0)


def _variance_type(key: str, value: Any) -> str:
    if isinstance(value, str) and value in REFUSED_VARIANCE_TYPES:
        raise ValueError(f"{key}: {REFUSED_VARIANCE_TYPES[value]}")
    return one_of(*VARIANCE_TYPES)(key, value)


# ---------------------------------------------------------------------------------------------------
# What DDPM and DDIM share


def read_model_output(schedule: NoiseSchedule, t: int, prediction_type: str) -> OutputReading:
    """[E13][E14] x0_hat and eps_hat from a model output, with a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t):
    "epsilon"       x0_hat = (x_t - b out) / a,  eps_hat = out
    "sample"        x0_hat = out,                eps_hat = (x_t - a out) / b
    "v_prediction"  x0_hat = a x_t - b out,      eps_hat = b x_t + a out
    An eps says nothing about x0 where alpha_bar_t = 0 (t = T of a zero-terminal-SNR schedule): refused."""
    if prediction_type == "epsilon":
        _eps_is_informative(schedule, t, "x0 from eps")
    a, b = float(schedule.sqrt_alpha_bars[t]), float(schedule.sqrt_one_minus_alpha_bars[t])
    return output_reading(a, b, prediction_type)


class StepForm(NamedTuple):
    """One step as x_prev = u_x x_t + u_x0 x0' + u_eps eps_hat + sigma z, where x0' is the x0 estimate after
    the config's clip or threshold and eps_hat the model's unclipped noise estimate."""

    u_x: float
    u_x0: float
    u_eps: float
    sigma: float


def take_step(sample: np.ndarray, out: np.ndarray, z: np.ndarray | None, form: StepForm, reading: OutputReading,
              config: dict[str, Any]) -> SamplerOutput:
    """x_prev = u_x x + u_x0 x0' + u_eps eps_hat + sigma z, with x0' = x0_hat, its clip to
    [-clip_sample_range, clip_sample_range] or its dynamic threshold, as the config says.

    Without a threshold the whole update is one fused kernel call (the kernel has a clipped-x0 term);
    dynamic thresholding needs a per-example quantile, so it runs in NumPy. Returns (x_prev, x0').
    """
    c_x = form.u_x + form.u_eps * reading.e_x
    c_out = form.u_eps * reading.e_out
    if config["thresholding"]:
        x0_hat = combine(sample, reading.r_x, out, reading.r_out)  # (B, ...)
        x0 = dynamic_threshold(x0_hat, config["dynamic_thresholding_ratio"], config["sample_max_value"])
        prev = c_x * sample + c_out * out + form.u_x0 * x0  # (B, ...)
        return SamplerOutput(prev if z is None else prev + form.sigma * z, x0)
    if config["clip_sample"]:
        bound = config["clip_sample_range"]
        coefs = StepCoefs(c_x, c_out, form.sigma, c_x0=form.u_x0, r_x=reading.r_x, r_eps=reading.r_out, clip=bound)
        x0 = sampler_step(sample, out, None, StepCoefs(0.0, 0.0, c_x0=1.0, r_x=reading.r_x, r_eps=reading.r_out,
                                                       clip=bound))  # the clipped x0_hat alone
        return SamplerOutput(sampler_step(sample, out, z, coefs), x0)
    coefs = StepCoefs(c_x + form.u_x0 * reading.r_x, c_out + form.u_x0 * reading.r_out, form.sigma)
    return SamplerOutput(sampler_step(sample, out, z, coefs), combine(sample, reading.r_x, out, reading.r_out))


class StridedPosterior(NamedTuple):
    """q(x_{t'} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde I) for t' < t, and beta = beta_{t|t'}."""

    coef_x0: float
    coef_xt: float
    beta_tilde: float
    beta: float


def strided_posterior(schedule: NoiseSchedule, t: int, t_prev: int) -> StridedPosterior:
    """[E11] for a strided step t -> t' < t: with beta_{t|t'} = 1 - alpha_bar_t / alpha_bar_{t'},
    q(x_{t'} | x_t, x_0) = N(c0 x_0 + ct x_t, beta_tilde I), c0 = sqrt(alpha_bar_{t'}) beta_{t|t'} / (1 - alpha_bar_t),
    ct = sqrt(1 - beta_{t|t'}) (1 - alpha_bar_{t'}) / (1 - alpha_bar_t),
    beta_tilde = (1 - alpha_bar_{t'}) / (1 - alpha_bar_t) beta_{t|t'} (Ho et al. 2020, E11 with t - 1 -> t').

    Computed by E11's own function on the two-level chain (t', t). t' = 0 is the data (alpha_bar_0 = 1):
    then c0 = 1, ct = 0, beta_tilde = 0.
    """
    levels = [t_prev, t]
    alpha_bars = schedule.alpha_bars[levels]  # (2,)
    beta = 1.0 - alpha_bars[1] / alpha_bars[0]
    coef_x0, coef_xt, beta_tilde = posterior_coefficients(np.array([0.0, beta]), alpha_bars,
                                                          schedule.one_minus_alpha_bars[levels])
    return StridedPosterior(float(coef_x0[1]), float(coef_xt[1]), float(beta_tilde[1]), float(beta))


# ---------------------------------------------------------------------------------------------------
# The sampler


class DDPMSampler(Sampler):
    """Ancestral sampling (E16) as diffusers' DDPMScheduler runs it, on spaced or custom timesteps.

    DDPMSampler(schedule, variance_type=..., ...) or DDPMSampler(num_train_timesteps=..., beta_schedule=..., ...),
    or DDPMSampler.from_config(scheduler_config); then set_timesteps(n) (or timesteps=[...], strictly
    decreasing t in 1..T) and `step` or `sample`. See the module docstring for the strided step.
    """

    diffusers_class = "DDPMScheduler"
    options: ClassVar[dict[str, Option]] = {
        **SCHEDULE_OPTIONS,
        "variance_type": Option("fixed_small", _variance_type),
        **CLIP_OPTIONS,
        "prediction_type": PREDICTION_OPTION,
        **THRESHOLD_OPTIONS,
        **SPACING_OPTIONS,
    }

    def _set_timesteps(self, n: int) -> None:
        config = self.config
        self._set_custom_timesteps(spaced_timesteps(config["timestep_spacing"], self.T, n, config["steps_offset"]))

    def _set_custom_timesteps(self, timesteps: np.ndarray) -> None:
        self._timesteps = timesteps
        self._prev = np.append(timesteps[1:], 0)  # t' of each step: the next timestep, 0 (the data) after the last

    def _check_model_output(self, model_output: Any, sample: np.ndarray) -> None:
        """With "learned_range" the output has 2C channels along axis 1 (the prediction, then v)."""
        if self.config["variance_type"] == "learned_range":
            model_output = _v.float_array(model_output, "model_output")
            expected = (sample.shape[0], 2 * sample.shape[1], *sample.shape[2:]) if sample.ndim >= 2 else "(B, 2C, ...)"
            if model_output.shape != expected:
                raise ValueError(f"model_output: with variance_type='learned_range' expected shape {expected} (the "
                                 f"prediction's channels, then as many variance channels), got {model_output.shape}")
            model_output = model_output[:, : sample.shape[1]]
        super()._check_model_output(model_output, sample)

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any, rng: Any) -> SamplerOutput:
        t, t_prev = int(self._timesteps[index]), int(self._prev[index])
        prediction, v = model_output, None
        if self.config["variance_type"] == "learned_range":
            channels = sample.shape[1]
            prediction, v = model_output[:, :channels], model_output[:, channels:]  # (B, C, ...) each
        posterior = strided_posterior(self.schedule, t, t_prev)
        reading = read_model_output(self.schedule, t, self.config["prediction_type"])
        sigma, z = 0.0, None
        if t > 1:  # diffusers' k > 0: every step draws noise but the one from t = 1
            z = self._noise(sample, noise, rng)
            sigma = self._sigma(posterior, v)
            if v is not None:  # a sigma per element: folded into the noise
                z, sigma = sigma * z, 1.0
        form = StepForm(u_x=posterior.coef_xt, u_x0=posterior.coef_x0, u_eps=0.0, sigma=sigma)
        return take_step(sample, prediction, z, form, reading, self.config)

    def _sigma(self, posterior: StridedPosterior, v: np.ndarray | None = None) -> Any:
        """[E16] sigma of a step from its posterior: sqrt(beta_tilde) ("fixed_small", "fixed_small_log";
        beta_tilde clamped at 1e-20 as diffusers does), sqrt(beta) ("fixed_large"), or for "learned_range"
        exp(log sigma^2 / 2) per element with log sigma^2 = f log beta + (1 - f) log beta_tilde, f = (v + 1) / 2
        (Nichol & Dhariwal 2021)."""
        small = max(posterior.beta_tilde, MIN_VARIANCE)
        kind = self.config["variance_type"]
        if kind == "fixed_small":
            return math.sqrt(small)
        if kind == "fixed_small_log":
            return math.exp(0.5 * math.log(small))
        if kind == "fixed_large":
            return math.sqrt(posterior.beta)
        frac = (v + 1.0) / 2.0  # (B, C, ...)
        return np.exp(0.5 * (frac * math.log(posterior.beta) + (1.0 - frac) * math.log(small)))
