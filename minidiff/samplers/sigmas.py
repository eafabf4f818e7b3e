"""The sigma view of a discrete schedule, shared by the sigma-based samplers (Euler, Heun, Euler ancestral,
DPM-Solver++), and the EDM pieces of Karras et al. 2022 (E36).

Dividing x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (E3) by sqrt(alpha_bar_t) gives the
variance-exploding (VE) form x = x0 + sigma_t eps with

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) = SNR(t)^(-1/2)          (E4)

Euler and Heun integrate the probability-flow ODE of that form, dx/dsigma = (x - D(x; sigma)) / sigma with
D = E[x0 | x] (Karras et al. 2022); a model trained on x_t is given x / sqrt(sigma^2 + 1) = x_t.
DPM-Solver keeps the variance-preserving (VP) sample x_t = alpha_t x (alpha_t = 1 / sqrt(sigma^2 + 1),
sigma_t = sigma alpha_t) and steps in lambda = log(alpha_t / sigma_t) = -log(sigma).

Time. `sigma_table` holds sigma_t for t = 0..T (sigma_0 = 0, the data). Between integers sigma is
interpolated linearly in t (`sigma_at`), the way diffusers interpolates its table over its k = t - 1, so
float timesteps are allowed; the way back, sigma -> t, is linear in log sigma over t = 1..T and clamped
to [1, T] (`t_from_sigma`, diffusers' `_sigma_to_t`).

Zero terminal SNR. After the rescaling of Lin et al. 2023, alpha_bar_T = 0 and sigma_T would be
infinite. Like diffusers, the table uses alpha_bar_T = 2^-24 there (the smallest positive float16
subnormal): sigma_T = sqrt(2^24 - 1) ~ 4096, finite, and x_T is pure noise to 1 part in 4096.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.parameterization import PREDICTION_TYPES, output_reading
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.samplers.base import (
    Option,
    Sampler,
    SamplerOutput,
    a_bool,
    check_num_inference_steps,
    combine,
    disabled,
    grid_after_set_timesteps,
    one_of,
    spaced_timesteps,
)

ZERO_SNR_ALPHA_BAR = 2.0**-24  # alpha_bar_T used in place of 0 (as diffusers does)
# EDM's defaults (Karras et al. 2022, Table 1 and section 5).
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0
EDM_RHO = 7.0
EDM_SIGMA_DATA = 0.5

Denoiser = Callable[[np.ndarray, Any], np.ndarray]


# ---------------------------------------------------------------------------------------------------
# The sigma table and interpolation in time


def sigma_table(schedule: NoiseSchedule) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..T, shape (T + 1,), float64, sigma_0 = 0.

    A zero-terminal-SNR schedule (alpha_bar_T = 0) gets alpha_bar_T = 2^-24, as in diffusers, so that
    sigma_T ~ 4096 is finite. Read-only.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: expected a minidiff.diffusion.NoiseSchedule, got {type(schedule).__name__}")
    alpha_bars = np.array(schedule.alpha_bars)  # (T + 1,)
    one_minus = np.array(schedule.one_minus_alpha_bars)  # (T + 1,)
    if alpha_bars[-1] == 0.0:
        alpha_bars[-1], one_minus[-1] = ZERO_SNR_ALPHA_BAR, 1.0 - ZERO_SNR_ALPHA_BAR
    table = np.sqrt(one_minus / alpha_bars)
    table.flags.writeable = False
    return table


def sigma_at(table: np.ndarray, t: Any) -> np.ndarray:
    """sigma(t) for (float) t in [0, T]: the table interpolated linearly in t between integers."""
    t = _times(t, "t", 0.0, table.size - 1)
    return np.interp(t, np.arange(table.size, dtype=np.float64), table)


def t_from_sigma(table: np.ndarray, sigma: Any) -> np.ndarray:
    """The float t whose sigma is `sigma`: linear in log sigma between the table's t = 1..T and clamped to
    [1, T] (diffusers' `_sigma_to_t`, shifted to minidiff's t = k + 1)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if np.any(~(sigma >= 0.0)) or np.any(np.isinf(sigma)):
        raise ValueError(f"sigma: expected finite noise levels >= 0, got {sigma!r}")
    log_sigma = np.log(np.maximum(sigma, 1e-10))  # sigma = 0 maps to t = 1, as in diffusers
    return np.interp(log_sigma, np.log(table[1:]), np.arange(1, table.size, dtype=np.float64))


def _times(t: Any, name: str, low: float, high: float) -> np.ndarray:
    t = np.asarray(t)
    if t.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real timesteps, got dtype {t.dtype}")
    t = t.astype(np.float64)
    if np.any(~((t >= low) & (t <= high))):
        raise ValueError(f"{name}: expected timesteps in [{low:g}, {high:g}], got {t!r}")
    return t


# ---------------------------------------------------------------------------------------------------
# Spacing of the inference timesteps


def sigma_sampler_timesteps(spacing: str, T: int, n: int, steps_offset: int = 0) -> np.ndarray:
    """The timesteps of diffusers' Euler, Heun and Euler ancestral schedulers in minidiff's t, descending,
    float64. "linspace": t = linspace(1, T, n) reversed, not rounded (diffusers' linspace(0, T - 1, n),
    plus one); "leading" and "trailing" are the integer steps of `spaced_timesteps`."""
    n = check_num_inference_steps(n, T)
    if spacing == "linspace":
        return np.linspace(1.0, float(T), n)[::-1].copy()
    return spaced_timesteps(spacing, T, n, steps_offset).astype(np.float64)


def dpm_solver_timesteps(spacing: str, T: int, n: int, steps_offset: int = 0, last: int | None = None) -> np.ndarray:
    """The timesteps of diffusers' DPMSolverMultistepScheduler in minidiff's t, descending, int64.

    It spaces n + 1 points over the first `last` steps of the chain (those with lambda_t >=
    lambda_min_clipped; all T by default) and drops the last point. With k = t - 1:
      "linspace"  k = round(linspace(0, last - 1, n + 1)) reversed, without its final 0
      "leading"   k = r n, ..., r (r = last // (n + 1)), plus steps_offset
      "trailing"  k = round(last - i T / n) - 1 for last - i T / n > 0
    """
    n = check_num_inference_steps(n, T)
    _v.choice(spacing, "timestep_spacing", ("leading", "linspace", "trailing"))
    last = T if last is None else last
    if spacing == "linspace":
        k = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        k = (np.arange(n + 1) * (last // (n + 1))).round()[::-1][:-1] + steps_offset
    else:
        points = last - np.arange(n) * (T / n)  # diffusers' arange(last, 0, -T / n), without the extra
        k = points[points > 0].round() - 1  # point near 0 that rounding can add to arange when last = T
    t = k.astype(np.int64) + 1
    if np.any(np.diff(t) >= 0):
        raise ValueError(f"num_inference_steps: {n} steps spaced '{spacing}' over {last} training steps repeat a "
                         f"timestep ({_short(t)}); use fewer steps")
    if t.max() > T:
        raise ValueError(f"steps_offset: {steps_offset} moves the timesteps outside 1..T = 1..{T}")
    if t.min() < 1:
        raise ValueError(f"last: 'trailing' steps of T / n = {T / n:g} over the first {last} of {T} training steps "
                         f"(the rest clipped by lambda_min_clipped) reach t = {t.min()}; use fewer steps or another "
                         "timestep_spacing")
    return t


def _short(a: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in a[:6]) + (", ...]" if a.size > 6 else "]")


# ---------------------------------------------------------------------------------------------------
# EDM (Karras et al. 2022): the noise levels and the preconditioning


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = EDM_RHO) -> np.ndarray:
    """[E36] sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..n-1
    (Karras et al. 2022, eq. 5).

    n noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho): rho = 1 spaces them
    evenly in sigma, larger rho crowds them towards sigma_min, where the ODE's curvature is. Shape (n,).
    """
    sigma_min = _v.finite(sigma_min, "sigma_min")
    sigma_max = _v.finite(sigma_max, "sigma_max")
    rho = _v.finite(rho, "rho")
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min: expected 0 < sigma_min < sigma_max = {sigma_max}, got {sigma_min}")
    if rho <= 0.0:
        raise ValueError(f"rho: expected a positive exponent, got {rho}")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive number of noise levels, got {n!r}")
    ramp = np.linspace(0.0, 1.0, int(n))  # i / (n - 1)
    max_inv_rho, min_inv_rho = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def edm_sigmas(n: int, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX,
               rho: float = EDM_RHO) -> np.ndarray:
    """[E36] EDM's time steps t_0..t_N (Karras et al. 2022, Algorithm 1): the n Karras noise levels from
    sigma_max = 80 to sigma_min = 0.002 with rho = 7, then t_N = 0. Shape (n + 1,)."""
    return np.append(karras_sigmas(sigma_min, sigma_max, n, rho), 0.0)


def edm_preconditioning(sigma: Any, sigma_data: float = EDM_SIGMA_DATA) -> tuple[Any, Any, Any, Any]:
    """[E36] c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4, sd = sigma_data (Karras et al. 2022, Table 1).

    With D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) and data of standard deviation sd, the network's
    input c_in x has unit variance, and so has its training target (x0 - c_skip x) / c_out; c_skip is the
    skip weight that makes that target's scale c_out (which multiplies F's errors) smallest.
    sigma: a positive number or array. Returns (c_skip, c_out, c_in, c_noise), each shaped like sigma.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if not np.all(np.isfinite(sigma) & (sigma > 0.0)):
        raise ValueError(f"sigma: expected positive finite noise levels, got {sigma!r}")
    sd = _v.finite(sigma_data, "sigma_data")
    if sd <= 0.0:
        raise ValueError(f"sigma_data: expected a positive standard deviation, got {sd}")
    norm = np.sqrt(sigma**2 + sd**2)
    return sd**2 / norm**2, sigma * sd / norm, 1.0 / norm, np.log(sigma) / 4.0


def edm_denoiser(network: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 sigma_data: float = EDM_SIGMA_DATA) -> Denoiser:
    """[E36] D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)) (Karras et al. 2022, eq. 7).

    network: a raw network F(x_in, c_noise), x_in of shape (B, ...) and c_noise of shape (B,). Returns the
    denoiser D(x, sigma), x of shape (B, ...) and sigma a positive number or one per example (B,).
    """
    if not callable(network):
        raise TypeError(f"network: expected a callable F(x, c_noise), got {type(network).__name__}")

    def denoiser(x: np.ndarray, sigma: Any) -> np.ndarray:
        x = _v.float_array(x, "x")
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), x.shape[:1])  # (B,)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)  # (B,) each
        per_example = (-1,) + (1,) * (x.ndim - 1)
        f = np.asarray(network((c_in.reshape(per_example) * x).astype(x.dtype), c_noise))  # (B, ...)
        return (c_skip.reshape(per_example) * x + c_out.reshape(per_example) * f).astype(x.dtype)

    return denoiser


# ---------------------------------------------------------------------------------------------------
# The model's output read at a noise level sigma


def vp_coefficients(sigma: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) = (1 / sqrt(sigma^2 + 1), sigma / sqrt(sigma^2 + 1)): sqrt(alpha_bar) and
    sqrt(1 - alpha_bar) of the noise level whose VE sigma is `sigma` (so alpha_t^2 + sigma_t^2 = 1)."""
    alpha_t = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha_t, sigma * alpha_t


def ve_x0(model_output: np.ndarray, x: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """[E13][E14] x0 from a model output, in the VE scale x = x0 + sigma eps (the model saw x / sqrt(sigma^2 + 1)):
    eps: x0 = x - sigma eps;  sample: x0 = output;  v: x0 = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v."""
    if prediction_type == "epsilon":
        return combine(x, 1.0, model_output, -sigma)
    if prediction_type == "sample":
        return model_output
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    return combine(x, 1.0 / (sigma * sigma + 1.0), model_output, -sigma / math.sqrt(sigma * sigma + 1.0))


def vp_x0_eps(model_output: np.ndarray, x: np.ndarray, alpha_t: float, sigma_t: float,
              prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """[E13][E14] (x0, eps) from a model output, for x = alpha_t x0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1:
    eps: x0 = (x - sigma_t eps) / alpha_t;  sample: eps = (x - alpha_t x0) / sigma_t;
    v: x0 = alpha_t x - sigma_t v, eps = sigma_t x + alpha_t v."""
    r = output_reading(alpha_t, sigma_t, prediction_type)
    x0 = model_output if prediction_type == "sample" else combine(x, r.r_x, model_output, r.r_out)
    eps = model_output if prediction_type == "epsilon" else combine(x, r.e_x, model_output, r.e_out)
    return x0, eps


# ---------------------------------------------------------------------------------------------------
# Configuration pieces


def none_or_positive_float(key: str, value: Any) -> float | None:
    if value is None:
        return None
    value = _v.finite(value, key)
    if value <= 0.0:
        raise ValueError(f"{key}: expected a positive number or null, got {value!r}")
    return value


def a_lambda_bound(key: str, value: Any) -> float:
    """A lower bound on lambda = log(alpha_t / sigma_t): a real number or -inf (no bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{key}: expected a number (or -inf), got {type(value).__name__}")
    if math.isnan(value) or value == math.inf:
        raise ValueError(f"{key}: expected a real number or -inf, got {value!r}")
    return float(value)


# Sigma spacings diffusers offers beside Karras'; minidiff implements Karras' only.
OTHER_SIGMAS_OPTIONS: dict[str, Option] = {
    "use_exponential_sigmas": Option(False, disabled(False)),
    "use_beta_sigmas": Option(False, disabled(False)),
}
KARRAS_OPTION = Option(False, a_bool)
FINAL_SIGMAS_OPTION = Option("zero", one_of("zero", "sigma_min"))


# ---------------------------------------------------------------------------------------------------
# The base of the sigma samplers


class SigmaSampler(Sampler):
    """What the sigma-based samplers share: the sigma table, the run's `sigmas` and their lookup.

    `sigmas[i]` is the noise level of the sample given to the i-th step and `sigmas[i + 1]` the one it
    steps to, so `sigmas` has one more entry than `timesteps` (the final noise level: 0, or the smallest
    training sigma). A subclass implements `_timesteps_and_sigmas(n)` and `_sigma_step`.
    """

    def __init__(self, schedule: NoiseSchedule | None = None, **config: Any) -> None:
        super().__init__(schedule, **config)
        self.sigma_table = sigma_table(self.schedule)
        self._sigmas: np.ndarray | None = None

    @property
    def sigmas(self) -> np.ndarray:
        """The noise levels of the run: one per timestep, then the final one (float64)."""
        return grid_after_set_timesteps(self, self._sigmas)

    def _set_timesteps(self, n: int) -> None:
        timesteps, sigmas = self._timesteps_and_sigmas(n)
        self._timesteps, self._sigmas = timesteps, sigmas
        self._reset_state()

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def run_from(self, begin: int) -> SigmaSampler:
        """A copy whose run is the steps from `begin` on of this one's (timesteps[begin:], sigmas[begin:]), its state
        cleared and its steps counted from there (diffusers' set_begin_index): a multistep solver starts it at first
        order, as at a run's start. This sampler is left as it was."""
        run = copy.copy(self)
        run._timesteps, run._sigmas = self.timesteps[begin:], self.sigmas[begin:]
        run._step_index = None
        run._reset_state()
        return run

    def _reset_state(self) -> None:
        """Forget what a multistep or two-stage sampler kept from earlier steps."""

    def _final_sigma(self) -> float:
        """diffusers' final_sigmas_type: "zero" ends at sigma = 0 (the data), "sigma_min" at sigma_1."""
        return 0.0 if self.config.get("final_sigmas_type", "zero") == "zero" else float(self.sigma_table[1])

    def _karras(self, sigma_min: float, sigma_max: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """[E36] n Karras noise levels and their (float) timesteps."""
        sigmas = karras_sigmas(sigma_min, sigma_max, n)
        return t_from_sigma(self.sigma_table, sigmas), sigmas

    def _index_of(self, t: Any) -> int:
        """As the base class; a timestep that occurs more than once (Karras levels clamped at t = 1 or T)
        is read at its next occurrence from the current step on."""
        index = super()._index_of(t)
        if not self.stateful:
            same = np.flatnonzero(self.timesteps == self.timesteps[index])
            later = same[same >= (self._step_index or 0)]
            index = int(later[0]) if later.size else index
        return index

    def sigma_of(self, t: Any) -> float:
        """The noise level of the sample at timestep t of this run."""
        return float(self.sigmas[self._index_of(t)])

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any, rng: Any) -> SamplerOutput:
        output = self._sigma_step(model_output, index, sample, noise, rng)
        self._step_index = index + 1
        return output

    def _sigma_step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any,
                    rng: Any) -> SamplerOutput:
        raise NotImplementedError

    def _noise_sigmas(self, t: Any, x: np.ndarray) -> np.ndarray:
        """The sigma of each example for add_noise, shaped to broadcast against x: the run's sigma at t when
        set_timesteps was called (t must be one of its timesteps), else the table's sigma(t), t in [0, T]."""
        t_arr = np.asarray(t)
        if t_arr.ndim > 1 or (t_arr.ndim == 1 and t_arr.shape != x.shape[:1]):
            raise ValueError(f"t: expected a number or one timestep per example, shape ({x.shape[0]},), got "
                             f"shape {t_arr.shape}")
        if self._timesteps is None:
            sigma = sigma_at(self.sigma_table, t_arr)
        else:
            sigma = np.array([self.sigmas[self._position(float(s))] for s in t_arr.ravel()]).reshape(t_arr.shape)
        return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim)).astype(x.dtype)

    def _position(self, t: float) -> int:
        where = np.flatnonzero(self.timesteps == t)
        if where.size == 0:
            raise ValueError(f"t: {t!r} is not one of this run's timesteps {_short(self.timesteps)}")
        return int(where[0])
