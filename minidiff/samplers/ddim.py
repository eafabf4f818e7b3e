"""DDIM (E32): one family of samplers from one trained model, from deterministic (eta = 0, a first-order solver
of the probability flow ODE) to DDPM (eta = 1), step for step as diffusers' DDIMScheduler runs it; DDIM
inversion and the interpolation of latents (E33).

The step from t lands on t' with alpha_bar_{t'}:
  * N spaced steps (set_timesteps(n)): t' = t - T // N, as diffusers computes it whatever the spacing. For
    "leading" that is the next timestep; for "linspace" and "trailing" it need not be: with T = 1000, N = 10,
    "linspace" runs t = 1000, 889, 778, ... and the step from 1000 lands on 900, after which the step from 889
    treats the sample as if it were at 889. minidiff keeps this quirk, for parity.
  * custom timesteps (set_timesteps(timesteps=[...]), which diffusers' DDIM does not take): t' is the next
    listed timestep, so any strided sub-sequence runs exactly.
  * after the last step (t' < 1): alpha_bar_{t'} = 1 (set_alpha_to_one: t' = 0 is the data) or alpha_bar_1.
eta and use_clipped_model_output are arguments of diffusers' `step`; here they belong to the sampler (one
run uses one eta, and `sample` then needs nothing more): DDIMSampler(..., eta=0.5), or `sampler.eta = 0.5`.
use_clipped_model_output re-derives eps from the clipped (or thresholded) x0 estimate, as diffusers does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise
from minidiff.kernels import StepCoefs, sampler_step
from minidiff.progress import progress as progress_bar
from minidiff.samplers.base import (
    CLIP_OPTIONS,
    PREDICTION_OPTION,
    SCHEDULE_OPTIONS,
    SPACING_OPTIONS,
    THRESHOLD_OPTIONS,
    Option,
    Sampler,
    SamplerOutput,
    a_bool,
    spaced_timesteps,
)
from minidiff.samplers.ddpm import StepForm, read_model_output, take_step

LERP_THRESHOLD = 0.9995  # |cos theta| above which slerp falls back to lerp (sin theta ~ 0)


@exercise("ex06.1")
def ddim_step_coefficients(schedule: NoiseSchedule, t: int, t_prev: int, eta: float) -> tuple[float, float, float]:
    """[E32] The weights (c_x0, c_eps, sigma) of the DDIM step from t to t' = t_prev < t,

        x_{t'} = c_x0 x0_hat + c_eps eps_hat + sigma z,   c_x0 = sqrt(alpha_bar_{t'}),
        c_eps = sqrt(1 - alpha_bar_{t'} - sigma_t^2),      sigma = sigma_t(eta),
        sigma_t(eta) = eta sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t'})

    (Song, Meng & Ermon 2021, eq. 12 and 16). x0_hat and eps_hat are the model's estimates at (x_t, t): the
    step puts x0_hat back at the noise level of t', pointing along eps_hat for the part of the variance
    1 - alpha_bar_{t'} that is not fresh noise. eta = 0 is deterministic; eta = 1 makes sigma_t^2 the
    posterior variance beta_tilde of the strided step (E11), DDPM's "fixed_small".

    schedule: its arrays are indexed by t (alpha_bars[0] = 1: t_prev = 0 is the data); read 1 - alpha_bar from
    schedule.one_minus_alpha_bars, which keeps its digits where alpha_bar is close to 1. t, t_prev: integers,
    0 <= t_prev < t <= T, or t_prev = t = 1 (the last step of a run with set_alpha_to_one=False, which ends at
    alpha_bar_1: then sigma = 0). eta: in [0, 1]. Returns three Python floats.
    """
    if not (0 <= t_prev < t <= schedule.T or t_prev == t == 1):
        raise ValueError(f"t_prev, t: expected 0 <= t_prev < t <= T = {schedule.T} (or both 1), got t_prev = "
                         f"{t_prev}, t = {t}")
    eta = _check_eta(eta)
    # BEGIN SOLUTION ex06.1: sigma_t(eta) from the schedule at t and t_prev, then the weights of x0_hat and eps_hat
    one_minus, one_minus_prev = float(schedule.one_minus_alpha_bars[t]), float(schedule.one_minus_alpha_bars[t_prev])
    beta = 1.0 - float(schedule.alpha_bars[t]) / float(schedule.alpha_bars[t_prev])  # beta_{t|t'}: the skipped steps
    sigma = eta * math.sqrt(one_minus_prev / one_minus * beta)
    c_x0 = float(schedule.sqrt_alpha_bars[t_prev])
    # 1 - alpha_bar_{t'} - sigma^2 >= 0 for eta <= 1; the max only guards a rounding below 0.
    c_eps = math.sqrt(max(one_minus_prev - sigma**2, 0.0))
    # END SOLUTION
    return c_x0, c_eps, sigma


def ddim_step_form(schedule: NoiseSchedule, t: int, t_prev: int, eta: float,
                   use_clipped_model_output: bool = False) -> StepForm:
    """[E32] The DDIM step from t to t' = t_prev as a StepForm, with the weights of `ddim_step_coefficients`:
    x_{t'} = sqrt(alpha_bar_{t'}) x0_hat + sqrt(1 - alpha_bar_{t'} - sigma_t^2) eps_hat + sigma_t z (any t' < t
    of a strided sub-sequence).

    With use_clipped_model_output, eps_hat is re-derived from the clipped x0' (E13: eps' = (x_t -
    sqrt(alpha_bar_t) x0') / sqrt(1 - alpha_bar_t)), so the step is written in x_t and x0'.
    """
    sqrt_alpha_bar_prev, direction, sigma = ddim_step_coefficients(schedule, t, t_prev, eta)
    if not use_clipped_model_output:
        return StepForm(u_x=0.0, u_x0=sqrt_alpha_bar_prev, u_eps=direction, sigma=sigma)
    a, b = float(schedule.sqrt_alpha_bars[t]), float(schedule.sqrt_one_minus_alpha_bars[t])
    return StepForm(u_x=direction / b, u_x0=sqrt_alpha_bar_prev - direction * a / b, u_eps=0.0, sigma=sigma)


def _check_eta(eta: Any) -> float:
    eta = _v.finite(eta, "eta")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: expected a value in [0, 1] (0 deterministic DDIM, 1 DDPM), got {eta!r}")
    return eta


class DDIMSampler(Sampler):
    """DDIM (E32) as diffusers' DDIMScheduler runs it, with inversion (E33).

    DDIMSampler(schedule, eta=0.0, use_clipped_model_output=False, **config), or DDIMSampler.from_config(...);
    then set_timesteps(n) (or timesteps=[...]) and `step`, `sample` (decode a given x_T with
    `sample(model, shape, rng, x_T=...)`) or `invert` (encode x_0 into x_T). See the module docstring for
    the previous timestep.
    """

    diffusers_class = "DDIMScheduler"
    options: ClassVar[dict[str, Option]] = {
        **SCHEDULE_OPTIONS,
        **CLIP_OPTIONS,
        "set_alpha_to_one": Option(True, a_bool),
        "prediction_type": PREDICTION_OPTION,
        **THRESHOLD_OPTIONS,
        **SPACING_OPTIONS,
    }

    def __init__(self, schedule: NoiseSchedule | None = None, *, eta: float = 0.0,
                 use_clipped_model_output: bool = False, **config: Any) -> None:
        super().__init__(schedule, **config)
        self.eta = eta
        self.use_clipped_model_output = use_clipped_model_output

    @property
    def eta(self) -> float:
        """The noise weight of E32 in [0, 1]: 0 deterministic, 1 DDPM's posterior variance."""
        return self._eta

    @eta.setter
    def eta(self, value: Any) -> None:
        self._eta = _check_eta(value)

    @property
    def use_clipped_model_output(self) -> bool:
        """Re-derive eps from the clipped x0 estimate (diffusers' step argument of that name)."""
        return self._use_clipped_model_output

    @use_clipped_model_output.setter
    def use_clipped_model_output(self, value: Any) -> None:
        self._use_clipped_model_output = a_bool("use_clipped_model_output", value)

    def __repr__(self) -> str:
        extra = "".join(f", {name}={value!r}" for name, value, default in (
            ("eta", self.eta, 0.0), ("use_clipped_model_output", self.use_clipped_model_output, False))
            if value != default)
        return super().__repr__()[:-1] + extra + ")"

    # --- timesteps ----------------------------------------------------------------------------------

    def _set_timesteps(self, n: int) -> None:
        config = self.config
        timesteps = spaced_timesteps(config["timestep_spacing"], self.T, n, config["steps_offset"])
        self._set_run(timesteps, timesteps - self.T // n)

    def _set_custom_timesteps(self, timesteps: np.ndarray) -> None:
        self._set_run(timesteps, np.append(timesteps[1:], 0))

    def _set_run(self, timesteps: np.ndarray, prev: np.ndarray) -> None:
        """prev: the t' each step lands on; below 1 it becomes the final alpha_bar's index (0 holds alpha_bar = 1)."""
        final = 0 if self.config["set_alpha_to_one"] else 1
        self._timesteps = timesteps
        self._prev = np.where(prev >= 1, prev, final)

    # --- one step -----------------------------------------------------------------------------------

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any, rng: Any) -> SamplerOutput:
        t, t_prev = int(self._timesteps[index]), int(self._prev[index])
        reading = read_model_output(self.schedule, t, self.config["prediction_type"])
        form = ddim_step_form(self.schedule, t, t_prev, self.eta, self.use_clipped_model_output)
        z = self._noise(sample, noise, rng) if self.eta > 0 else None  # drawn at every step, as diffusers does
        return take_step(sample, model_output, z, form, reading, self.config)

    # --- inversion ----------------------------------------------------------------------------------

    def inverse_step(self, model_output: np.ndarray, t: Any, sample: np.ndarray) -> np.ndarray:
        """[E33] The eta = 0 step from t run backwards: from `sample` at alpha_bar_{t'} (where the step from t
        lands) to t. With a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar), the step is, in x / a, a translation:
        x_t / a_t = x_{t'} / a_{t'} + (b_t / a_t - b_{t'} / a_{t'}) eps_hat, hence
        x_t = (a_t / a_{t'}) x_{t'} + (b_t - a_t b_{t'} / a_{t'}) eps_hat (Song et al. 2021, sec. 4.3, 5.4).

        model_output: the model at (sample, t), read as at t (E13, E14). With the eps_hat the decoding step
        from t used, this inverts it exactly. No clip or threshold (they are not invertible).
        """
        sample = _v.float_array(sample, "sample")
        index = self._index_of(t)
        self._check_model_output(model_output, sample)
        t, t_prev = int(self._timesteps[index]), int(self._prev[index])
        reading = read_model_output(self.schedule, t, self.config["prediction_type"])
        sqrt_alpha_bars, sqrt_one_minus = self.schedule.sqrt_alpha_bars, self.schedule.sqrt_one_minus_alpha_bars
        a, b = float(sqrt_alpha_bars[t]), float(sqrt_one_minus[t])
        a_prev, b_prev = float(sqrt_alpha_bars[t_prev]), float(sqrt_one_minus[t_prev])
        g = b - a * b_prev / a_prev  # the weight of eps_hat
        return sampler_step(sample, model_output, None, StepCoefs(a / a_prev + g * reading.e_x, g * reading.e_out))

    def invert(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray], x0: np.ndarray,
               num_inference_steps: int | None = None, *, timesteps: Sequence[int] | None = None,
               progress: bool = True, return_trajectory: bool = False) -> np.ndarray:
        """[E33] DDIM inversion: encode x_0 into x_T along the eta = 0 map, over this run's timesteps in reverse.

        At each timestep t (t_N first) the model is called with the current sample, which is at the level t'
        the decoding step from t lands on: eps_hat(x_{t'}, t) stands in for eps_hat(x_t, t), the usual
        explicit inversion. It is exact when the model does not depend on x and otherwise a first-order
        solver of the probability flow ODE (E31) forwards, within O(1/N) of it. Decoding the result with
        `sample(model, x0.shape, rng, x_T=latent)` on the same timesteps, with eta = 0 and clip_sample and
        thresholding off, gives x_0 back up to that error.

        num_inference_steps or timesteps: set_timesteps first (else the timesteps already set are used).
        Returns x_T, or with return_trajectory the samples from x_0 on, shape (1 + steps, *x0.shape).
        """
        if not callable(model):
            raise TypeError(f"model: expected a callable model(x, t), got {type(model).__name__}")
        if num_inference_steps is not None or timesteps is not None:
            self.set_timesteps(num_inference_steps, timesteps=timesteps)
        x = _v.float_array(x0, "x0").copy()
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"x0: expected a batch of shape (B, ...) with B >= 1, got shape {x.shape}")
        order = self.timesteps[::-1]
        trajectory = [x] if return_trajectory else None
        for t in progress_bar(order, len(order), f"{type(self).__name__}.invert", progress):
            x = self.inverse_step(self.model_output(model, x, t), t, x)
            if trajectory is not None:
                trajectory.append(x)
        return np.stack(trajectory) if trajectory is not None else x


def slerp(z0: np.ndarray, z1: np.ndarray, alpha: Any, dot_threshold: float = LERP_THRESHOLD) -> np.ndarray:
    """[E33] Spherical interpolation of latents, per example: with theta_i the angle between z0[i] and z1[i],
    slerp = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1 (Shoemake 1985; used on
    DDIM latents by Song et al. 2021, sec. 5.3), and lerp (1 - alpha) z0 + alpha z1 where |cos theta| >
    dot_threshold (nearly parallel or opposite vectors, sin theta ~ 0) or a vector is 0.

    The result is at angle alpha theta from z0 and (1 - alpha) theta from z1, and keeps the norm when
    |z0[i]| = |z1[i]|: Gaussian latents, whose norms concentrate, stay typical, where lerp shrinks them.
    z0, z1: the same shape (B, ...) and dtype; alpha: in [0, 1], one number or one per example, shape (B,).
    """
    z0 = _v.float_array(z0, "z0")
    _v.like(z1, "z1", z0, "z0")
    dot_threshold = _v.finite(dot_threshold, "dot_threshold")
    if not 0.0 < dot_threshold < 1.0:
        raise ValueError(f"dot_threshold: expected a value in (0, 1), got {dot_threshold!r}")
    if z0.ndim < 2:
        raise ValueError(f"z0: expected a batch of latents of shape (B, ...) with at least 2 axes, got {z0.shape}")
    batch = z0.shape[0]
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape not in ((), (batch,)) or not np.all(np.isfinite(alpha) & (alpha >= 0.0) & (alpha <= 1.0)):
        raise ValueError(f"alpha: expected values in [0, 1], one number or shape ({batch},), got {alpha!r}")
    alpha = np.broadcast_to(alpha, (batch,))
    flat0 = z0.reshape(batch, -1).astype(np.float64)  # (B, D)
    flat1 = z1.reshape(batch, -1).astype(np.float64)  # (B, D)
    norms = np.linalg.norm(flat0, axis=1) * np.linalg.norm(flat1, axis=1)  # (B,)
    cos = np.einsum("bd,bd->b", flat0, flat1) / np.where(norms > 0, norms, 1.0)  # (B,)
    linear = (np.abs(cos) > dot_threshold) | (norms == 0)  # (B,)
    theta = np.arccos(np.clip(cos, -1.0, 1.0))  # (B,)
    sin_theta = np.where(linear, 1.0, np.sin(theta))  # (B,)
    w0 = np.where(linear, 1.0 - alpha, np.sin((1.0 - alpha) * theta) / sin_theta)  # (B,)
    w1 = np.where(linear, alpha, np.sin(alpha * theta) / sin_theta)  # (B,)
    out = w0[:, None] * flat0 + w1[:, None] * flat1  # (B, D)
    return out.reshape(z0.shape).astype(z0.dtype)
