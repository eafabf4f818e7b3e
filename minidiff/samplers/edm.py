"""Euler, Heun and Euler ancestral samplers on the sigma (VE) form of a discrete schedule, with the
configuration of diffusers' EulerDiscreteScheduler, HeunDiscreteScheduler and
EulerAncestralDiscreteScheduler, and EDM's own Heun sampler (E36, Karras et al. 2022).

The sample these samplers carry is x = x0 + sigma eps = x_t / sqrt(alpha_bar_t) (see
`minidiff.samplers.sigmas`); the model is given `scale_model_input(x, t)` = x / sqrt(sigma^2 + 1) = x_t, so
a model trained on x_t works unchanged. The x0 the model implies (E13, E14) is the denoiser D(x; sigma),
and x follows the probability-flow ODE (E31) in the form of Karras et al. 2022:

    dx/dsigma = (x - D(x; sigma)) / sigma.

Euler takes one step of it per model call, Heun averages the slopes at both ends (two calls per step, one
for the last step, which ends at sigma = 0), Euler ancestral steps to a lower sigma_down and adds fresh
noise back up to the next sigma (the posterior step E11/E16 read in sigma).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.exercise_tools import exercise
from minidiff.kernels.sampler_step import StepCoefs, sampler_step
from minidiff.samplers.base import (
    PREDICTION_OPTION,
    SCHEDULE_OPTIONS,
    SPACING_OPTIONS,
    TIMESTEP_SPACINGS,
    Option,
    SamplerOutput,
    a_bool,
    a_positive_float,
    a_probability,
    one_of,
)
from minidiff.samplers.sigmas import (
    EDM_RHO,
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    FINAL_SIGMAS_OPTION,
    KARRAS_OPTION,
    OTHER_SIGMAS_OPTIONS,
    Denoiser,
    SigmaSampler,
    edm_sigmas,
    none_or_positive_float,
    sigma_at,
    sigma_sampler_timesteps,
    ve_x0,
)

# ---------------------------------------------------------------------------------------------------
# The updates (each one fused kernel call)


def euler_step(x: np.ndarray, x0: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    """[E36] x_next = x + (sigma_next - sigma) (x - x0) / sigma, x0 = D(x; sigma): one Euler step of
    dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Algorithm 1, line 5).

    Written as (sigma_next / sigma) x + (1 - sigma_next / sigma) x0, a point on the line from x to x0;
    sigma_next = 0 lands on x0.
    """
    ratio = sigma_next / sigma
    return sampler_step(x, x0, None, StepCoefs(c_x=ratio, c_eps=1.0 - ratio))


def heun_anchor(x: np.ndarray, x0: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    """[E36] The first half of Heun's step, x + (h / 2) d with h = sigma_next - sigma, d = (x - x0) / sigma."""
    half = 0.5 * (sigma_next - sigma) / sigma
    return sampler_step(x, x0, None, StepCoefs(c_x=1.0 + half, c_eps=-half))


def heun_finish(anchor: np.ndarray, x_pred: np.ndarray, x0_pred: np.ndarray, sigma: float,
                sigma_next: float) -> np.ndarray:
    """[E36] x_next = x + h (d + d') / 2 (Karras et al. 2022, Algorithm 1, line 8): the anchor x + (h / 2) d
    plus (h / 2) d', d' = (x_pred - x0_pred) / sigma_next the slope at the Euler prediction x_pred."""
    half = 0.5 * (sigma_next - sigma) / sigma_next
    return sampler_step(x_pred, x0_pred, anchor, StepCoefs(c_x=half, c_eps=-half, c_z=1.0))


@exercise("ex10.2")
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
    # BEGIN SOLUTION ex10.2: slope d at x, Euler predictor (the answer if sigma_next = 0), slope there, average slope
    h = sigma_next - sigma
    d = (x - denoiser(x, sigma)) / sigma
    x_euler = x + h * d
    if sigma_next == 0.0:
        return x_euler
    d_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
    x_next = x + h * (0.5 * d + 0.5 * d_next)
    # END SOLUTION
    return x_next


def ancestral_sigmas(sigma: float, sigma_next: float) -> tuple[float, float]:
    """[E11] (sigma_down, sigma_up) of the step from sigma to sigma_next < sigma: the VE posterior
    q(x_next | x, x0) = N(x0 + (sigma_next^2 / sigma^2) (x - x0), sigma_up^2 I) with
    sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 is an Euler step to
    sigma_down = sqrt(sigma_next^2 - sigma_up^2) (= sigma_next^2 / sigma) plus sigma_up z."""
    sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


# ---------------------------------------------------------------------------------------------------
# Configuration


def _schedule_options(beta_start: float, beta_end: float, zero_snr: bool) -> dict[str, Option]:
    """The beta keys with this scheduler's defaults (Heun's differ, and Heun has no rescale_betas_zero_snr)."""
    options = dict(SCHEDULE_OPTIONS)
    options["beta_start"] = Option(beta_start, a_probability)
    options["beta_end"] = Option(beta_end, a_probability)
    if not zero_snr:
        del options["rescale_betas_zero_snr"]
    return options


SIGMA_SPACING_OPTIONS: dict[str, Option] = {
    **SPACING_OPTIONS,
    "timestep_spacing": Option("linspace", one_of(*TIMESTEP_SPACINGS)),
}


# ---------------------------------------------------------------------------------------------------
# The samplers


class _VESampler(SigmaSampler):
    """What Euler, Heun and Euler ancestral share: the VE sample, its model input, x0 and the schedule."""

    @property
    def init_noise_sigma(self) -> float:
        """The std of x_T, as diffusers: sigma_max for "linspace" and "trailing", sqrt(sigma_max^2 + 1) for
        "leading" (sigma_max of the run, or of the table before set_timesteps)."""
        sigma_max = float(np.max(self._sigmas if self._sigmas is not None else self.sigma_table))
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return sigma_max
        return math.sqrt(sigma_max**2 + 1.0)

    def scale_model_input(self, sample: np.ndarray, t: Any) -> np.ndarray:
        """x / sqrt(sigma^2 + 1) = x_t, what a model trained on x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps
        expects."""
        sample = _v.float_array(sample, "sample")
        return sample / sample.dtype.type(math.sqrt(self.sigma_of(t) ** 2 + 1.0))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """x = x0 + sigma noise, sigma the run's noise level at t (one t, or one per example); before
        set_timesteps, sigma(t) of the table (t in [0, T], interpolated between integers)."""
        x0 = _v.float_array(original_samples, "original_samples")
        _v.like(noise, "noise", x0, "original_samples")
        return x0 + self._noise_sigmas(t, x0) * noise

    def _ve_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas) as diffusers' Euler: the spaced timesteps and their interpolated sigmas, or
        Karras levels between those sigmas' ends (or sigma_min / sigma_max of the config) at the float
        timesteps of their sigma; then the final sigma."""
        cfg = self.config
        t = sigma_sampler_timesteps(cfg["timestep_spacing"], self.T, n, cfg["steps_offset"])
        sigmas = sigma_at(self.sigma_table, t)  # (n,)
        if cfg.get("use_karras_sigmas"):
            sigma_min = cfg.get("sigma_min") or float(sigmas[-1])
            sigma_max = cfg.get("sigma_max") or float(sigmas[0])
            t, sigmas = self._karras(sigma_min, sigma_max, n)
        return t, np.append(sigmas, self._final_sigma())

    def _sigma_pair(self, index: int) -> tuple[float, float]:
        """(sigmas[index], sigmas[index + 1]) as Python floats (a NumPy float64 would promote float32 samples)."""
        return float(self.sigmas[index]), float(self.sigmas[index + 1])

    def _x0(self, model_output: np.ndarray, sample: np.ndarray, sigma: float) -> np.ndarray:
        x0 = ve_x0(model_output, sample, sigma, self.config["prediction_type"])
        if self.config.get("clip_sample"):
            bound = self.config["clip_sample_range"]
            x0 = np.clip(x0, -bound, bound)
        return x0


class EulerSampler(_VESampler):
    """[E36] Euler steps of dx/dsigma = (x - D(x; sigma)) / sigma, configured as diffusers'
    EulerDiscreteScheduler (without churn). One model call per step."""

    diffusers_class = "EulerDiscreteScheduler"
    options: ClassVar[dict[str, Option]] = {
        **_schedule_options(0.0001, 0.02, zero_snr=True),
        "prediction_type": PREDICTION_OPTION,
        "interpolation_type": Option("linear", one_of("linear")),
        "use_karras_sigmas": KARRAS_OPTION,
        **OTHER_SIGMAS_OPTIONS,
        "sigma_min": Option(None, none_or_positive_float),
        "sigma_max": Option(None, none_or_positive_float),
        **SIGMA_SPACING_OPTIONS,
        "timestep_type": Option("discrete", one_of("discrete")),
        "final_sigmas_type": FINAL_SIGMAS_OPTION,
    }

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._ve_schedule(n)

    def _sigma_step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any,
                    rng: Any) -> SamplerOutput:
        sigma, sigma_next = self._sigma_pair(index)
        x0 = self._x0(model_output, sample, sigma)
        return SamplerOutput(euler_step(sample, x0, sigma, sigma_next), x0)


class HeunSampler(_VESampler):
    """[E36] Heun's second-order steps of dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022,
    Algorithm 1 without churn), configured as diffusers' HeunDiscreteScheduler.

    As in diffusers, one `step` is one model call: `timesteps` lists t_0, then every later timestep twice
    (t_0, t_1, t_1, t_2, t_2, ..., t_{N-1}, t_{N-1}). At an even position the step is Euler's prediction
    from sigma_i to sigma_{i+1}; at the odd position after it the model is called at that prediction and
    the step averages the two slopes. The last step (to sigma = 0) is plain Euler: N steps, 2N - 1 calls.
    """

    diffusers_class = "HeunDiscreteScheduler"
    stateful = True
    options: ClassVar[dict[str, Option]] = {
        **_schedule_options(0.00085, 0.012, zero_snr=False),
        "prediction_type": PREDICTION_OPTION,
        "use_karras_sigmas": KARRAS_OPTION,
        **OTHER_SIGMAS_OPTIONS,
        "clip_sample": Option(False, a_bool),
        "clip_sample_range": Option(1.0, a_positive_float),
        **SIGMA_SPACING_OPTIONS,
    }

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        t, sigmas = self._ve_schedule(n)
        return (np.concatenate((t[:1], np.repeat(t[1:], 2))),
                np.concatenate((sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:])))

    def _reset_state(self) -> None:
        self._anchor: np.ndarray | None = None  # x + (h / 2) d of the pending Heun step

    def _sigma_step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any,
                    rng: Any) -> SamplerOutput:
        if index % 2 == 1:  # the correction: the model saw the Euler prediction, at sigma_next
            sigma, sigma_next = self._sigma_pair(index - 1)
            x0 = self._x0(model_output, sample, sigma_next)
            prev = heun_finish(self._anchor, sample, x0, sigma, sigma_next)
            self._anchor = None
            return SamplerOutput(prev, x0)
        sigma, sigma_next = self._sigma_pair(index)
        x0 = self._x0(model_output, sample, sigma)
        if sigma_next > 0.0:
            self._anchor = heun_anchor(sample, x0, sigma, sigma_next)
        return SamplerOutput(euler_step(sample, x0, sigma, sigma_next), x0)


class EulerAncestralSampler(_VESampler):
    """[E16] Ancestral sampling in sigma, configured as diffusers' EulerAncestralDiscreteScheduler: from sigma
    to sigma_next, an Euler step to sigma_down, then fresh noise sigma_up z (`ancestral_sigmas`); the last
    step (sigma_next = 0) adds none. prediction_type "sample" works too (diffusers refuses it)."""

    diffusers_class = "EulerAncestralDiscreteScheduler"
    options: ClassVar[dict[str, Option]] = {
        **_schedule_options(0.0001, 0.02, zero_snr=True),
        "prediction_type": PREDICTION_OPTION,
        **SIGMA_SPACING_OPTIONS,
    }

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._ve_schedule(n)

    def _sigma_step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any,
                    rng: Any) -> SamplerOutput:
        sigma, sigma_next = self._sigma_pair(index)
        x0 = self._x0(model_output, sample, sigma)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
        z = self._noise(sample, noise, rng) if sigma_up > 0.0 else None
        ratio = sigma_down / sigma
        prev = sampler_step(sample, x0, z, StepCoefs(c_x=ratio, c_eps=1.0 - ratio, c_z=sigma_up))
        return SamplerOutput(prev, x0)


class EDMHeunSampler:
    """[E36] EDM's deterministic sampler (Karras et al. 2022, Algorithm 1, no churn) with a denoiser
    D(x, sigma) = E[x0 | x0 + sigma eps = x] directly: Heun steps of dx/dsigma = (x - D(x; sigma)) / sigma
    over the Karras levels t_0 = sigma_max > ... > t_{N-1} = sigma_min, t_N = 0, from x ~ N(0, sigma_max^2 I).

    The denoiser: any callable D(x, sigma) with x of shape (B, ...) and sigma a number, returning x's shape
    and dtype (`edm_denoiser` makes one from a raw network; GaussianMixture.denoiser is the exact one).
    N steps cost 2N - 1 calls.
    """

    def __init__(self, num_steps: int = 18, *, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX,
                 rho: float = EDM_RHO) -> None:
        if isinstance(num_steps, (bool, np.bool_)) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"num_steps: expected a positive integer, got {num_steps!r}")
        self.sigmas = edm_sigmas(int(num_steps), sigma_min, sigma_max, rho)  # (N + 1,), ends in 0
        self.sigmas.flags.writeable = False

    @property
    def num_steps(self) -> int:
        return self.sigmas.size - 1

    def __repr__(self) -> str:
        s = self.sigmas
        return f"EDMHeunSampler(num_steps={self.num_steps}, sigma_max={s[0]:g}, sigma_min={s[-2]:g})"

    def step(self, denoiser: Denoiser, x: np.ndarray, i: int) -> np.ndarray:
        """[E36] One Heun step from sigmas[i] to sigmas[i + 1] (Euler when sigmas[i + 1] = 0)."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_steps:
            raise ValueError(f"i: expected a step index in 0..{self.num_steps - 1}, got {i!r}")
        x = _v.float_array(x, "x")
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        return edm_heun_step(lambda v, s: _denoised(denoiser, v, s), x, sigma, sigma_next)  # exercise 10.2

    def sample(self, denoiser: Denoiser, shape: Sequence[int], rng: np.random.Generator, *,
               x_T: np.ndarray | None = None, dtype: Any = np.float64, return_trajectory: bool = False) -> np.ndarray:
        """x_T ~ N(0, sigma_max^2 I) drawn from rng (or the given x_T), then every step. Returns x_0, or with
        return_trajectory the samples at every sigma, shape (N + 1, *shape)."""
        if not callable(denoiser):
            raise TypeError(f"denoiser: expected a callable D(x, sigma), got {type(denoiser).__name__}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        shape = tuple(int(s) for s in shape)
        if x_T is None:
            x = (rng.standard_normal(shape) * self.sigmas[0]).astype(dtype)
        else:
            x = _v.float_array(x_T, "x_T").copy()
            if x.shape != shape:
                raise ValueError(f"x_T: expected shape {shape}, got {x.shape}")
        trajectory = [x]
        for i in range(self.num_steps):
            x = self.step(denoiser, x, i)
            trajectory.append(x)
        return np.stack(trajectory) if return_trajectory else x


def _denoised(denoiser: Denoiser, x: np.ndarray, sigma: float) -> np.ndarray:
    x0 = denoiser(x, sigma)
    if not isinstance(x0, np.ndarray) or x0.shape != x.shape or x0.dtype != x.dtype:
        raise ValueError(f"denoiser: expected an array of shape {x.shape} and dtype {x.dtype} (those of x), got "
                         f"{type(x0).__name__} {getattr(x0, 'shape', '')} {getattr(x0, 'dtype', '')}")
    return x0

