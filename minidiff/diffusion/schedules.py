"""Noise schedules (E2, E4-E8, E11's coefficients) and `NoiseSchedule`, which computes them once.

Indexing, used everywhere in minidiff.diffusion:
  * Timesteps are t = 1..T. t = 0 is the data itself (x_0), never a step of the chain.
  * The beta-generating functions (`linear_betas`, ...) return a plain array of length T holding
    beta_1..beta_T, so `betas[t - 1]` is beta_t (the usual input form, as in other libraries).
  * Every per-step array of a `NoiseSchedule` has length T + 1 and is indexed by t itself:
    `schedule.alpha_bars[t]` is alpha_bar_t. Index 0 holds the value at t = 0 where one exists
    (beta_0 = 0, alpha_0 = 1, alpha_bar_0 = 1 as in E2, SNR_0 = inf) and NaN where none does
    (the posterior of E11 needs a step t >= 1).

Everything is computed in float64; `NoiseSchedule.at` casts the values to the dtype of the array they
are applied to, so float32 data stays float32.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.exercise_tools import exercise

DDPM_T = 1000  # the chain length for which the papers chose their beta ranges

# (beta_start, beta_end) of each beta-range schedule at T = 1000.
DDPM_BETA_RANGE = (1e-4, 0.02)  # DDPM (Ho et al. 2020), linear
LATENT_BETA_RANGE = (0.00085, 0.012)  # latent diffusion (Rombach et al. 2022), scaled linear

SCHEDULE_NAMES = ("linear", "cosine", "scaled_linear", "sigmoid")


# ---------------------------------------------------------------------------------------------------
# Beta schedules: arrays of length T, betas[t - 1] = beta_t


def short_chain_beta_range(beta_start: float, beta_end: float, T: int) -> tuple[float, float]:
    """The beta range chosen for T = 1000 steps, rescaled for a chain of T steps (improved DDPM).

    beta_start * 1000 / T and beta_end * 1000 / T. The total noise a chain adds is governed by
    sum_t beta_t (log alpha_bar_T ~ -sum_t beta_t while the betas are small); scaling every beta by
    1000 / T keeps that sum, so a short chain still ends near N(0, I). Merely cutting T would not:
    50 steps of DDPM's betas leave alpha_bar_T ~ 0.6, mostly signal. Fast mode relies on this rule.
    """
    T = _check_T(T)
    scale = DDPM_T / T
    start, end = beta_start * scale, beta_end * scale
    if end >= 1.0:
        raise ValueError(f"T: rescaling the beta range ({beta_start}, {beta_end}) for T = {T} gives beta_end = "
                         f"{end:.3g} >= 1; use T > {math.floor(beta_end * DDPM_T)} or pass beta_start and beta_end")
    return start, end


def _beta_range(beta_start: float | None, beta_end: float | None, default: tuple[float, float],
                T: int) -> tuple[float, float]:
    """Both given: checked as they are. Neither: the paper's range for T = 1000, rescaled to T."""
    if beta_start is None and beta_end is None:
        return short_chain_beta_range(*default, T)
    if beta_start is None or beta_end is None:
        raise ValueError("beta_start, beta_end: give both or neither (neither: the paper's range, rescaled to T)")
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        value = _v.finite(value, name)
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}: expected a value in (0, 1), got {value}")
    return float(beta_start), float(beta_end)


def linear_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
    """[E5] beta_t = beta_start + (t - 1) / (T - 1) * (beta_end - beta_start), t = 1..T (DDPM).

    Without beta_start and beta_end: DDPM's 1e-4 and 0.02, which are for T = 1000, rescaled by
    1000 / T for other T (`short_chain_beta_range`). Returns beta_1..beta_T, shape (T,), float64.
    """
    T = _check_T(T)
    start, end = _beta_range(beta_start, beta_end, DDPM_BETA_RANGE, T)
    return np.linspace(start, end, T, dtype=np.float64)


@exercise("ex02.1")
def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """[E6] alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2);
    beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta) (Nichol & Dhariwal 2021).

    The offset s keeps beta_1 from being tiny; the clip keeps beta_T (where f(T) ~ 0 would give
    beta_T ~ 1) away from 1. Returns beta_1..beta_T, shape (T,), float64.
    """
    T = _check_T(T)
    s = _v.finite(s, "s")
    if s < 0:
        raise ValueError(f"s: expected an offset >= 0, got {s}")
    max_beta = _v.finite(max_beta, "max_beta")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta: expected a value in (0, 1), got {max_beta}")
    # BEGIN SOLUTION ex02.1: f at every t = 0..T in one go (np.arange); ratios of neighbours; np.minimum clips
    t = np.arange(T + 1, dtype=np.float64)  # 0..T
    f = np.cos((t / T + s) / (1 + s) * (np.pi / 2)) ** 2
    alpha_bar = f / f[0]  # (T + 1,), alpha_bar[0] = 1
    betas = np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)
    # END SOLUTION
    return betas


def scaled_linear_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
    """[E7] beta_t = (sqrt(beta_start) + (t - 1) / (T - 1) * (sqrt(beta_end) - sqrt(beta_start)))^2
    (latent diffusion): linear in sqrt(beta).

    Without beta_start and beta_end: latent diffusion's 0.00085 and 0.012 for T = 1000, rescaled by
    1000 / T (squaring commutes with the rescaling: every beta is multiplied by 1000 / T).
    """
    T = _check_T(T)
    start, end = _beta_range(beta_start, beta_end, LATENT_BETA_RANGE, T)
    return np.linspace(math.sqrt(start), math.sqrt(end), T, dtype=np.float64) ** 2


def sigmoid_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
    """[E8] beta_t = sigmoid(-6 + 12 (t - 1) / (T - 1)) * (beta_end - beta_start) + beta_start.

    A sigmoid curve from just above beta_start to just below beta_end (sigmoid(+-6) = 0.0025 and
    0.9975 of the way), the form of the most used diffusion library. Without beta_start and
    beta_end: DDPM's range for T = 1000, rescaled by 1000 / T.
    """
    T = _check_T(T)
    start, end = _beta_range(beta_start, beta_end, DDPM_BETA_RANGE, T)
    u = np.linspace(-6.0, 6.0, T, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-u)) * (end - start) + start


def rescale_zero_terminal_snr(betas: Any) -> np.ndarray:
    """Rescale betas so that alpha_bar_T = 0 (SNR_T = 0) and alpha_bar_1 is unchanged (Lin et al. 2023).

    With r_t = sqrt(alpha_bar_t): r_t <- (r_t - r_T) * r_1 / (r_1 - r_T), an affine map of r that
    sends r_T to 0 and keeps r_1; then alpha_bar_t = r_t^2 and beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}.
    The result has beta_T = 1 exactly: x_T is pure noise, so an eps prediction carries no
    information about x_0 at t = T (use v-prediction there).
    """
    betas = check_betas(betas)
    if betas.size < 2:
        raise ValueError("betas: zero-terminal-SNR rescaling needs T >= 2 (with T = 1, r_1 = r_T)")
    r = np.sqrt(alpha_bars_from_betas(betas)[1:])  # r_1..r_T
    r = (r - r[-1]) * r[0] / (r[0] - r[-1])
    alpha_bars = r**2
    alpha_bars_prev = np.concatenate(([1.0], alpha_bars[:-1]))
    return 1.0 - alpha_bars / alpha_bars_prev


def named_betas(name: str, T: int) -> np.ndarray:
    """Betas of a schedule by name ("linear", "cosine", "scaled_linear", "sigmoid") with its defaults."""
    makers = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas,
              "sigmoid": sigmoid_betas}
    return makers[_v.choice(name, "name", SCHEDULE_NAMES)](T)


# ---------------------------------------------------------------------------------------------------
# Quantities derived from the betas, over t = 0..T


def alpha_bars_from_betas(betas: Any) -> np.ndarray:
    """[E2] alpha_t = 1 - beta_t; alpha_bar_t = prod_{s=1..t} alpha_s; alpha_bar_0 = 1 (the empty product).

    betas: beta_1..beta_T, shape (T,). Returns alpha_bar_0..alpha_bar_T, shape (T + 1,). The product
    is taken as exp(sum_s log(1 - beta_s)), which is as accurate and is what 1 - alpha_bar_t needs.
    """
    return np.exp(_log_alpha_bars(check_betas(betas, allow_one_last=True)))


def _log_alpha_bars(betas: np.ndarray) -> np.ndarray:
    """log alpha_bar_t for t = 0..T (0 at t = 0; -inf at t = T after zero-terminal-SNR rescaling)."""
    with np.errstate(divide="ignore"):  # log(1 - 1) = -inf when beta_T = 1
        return np.concatenate(([0.0], np.cumsum(np.log1p(-betas))))


def _one_minus_exp(log_a: np.ndarray) -> np.ndarray:
    """1 - exp(log_a) without cancellation when exp(log_a) is near 1; +0.0 (not -0.0) at log_a = 0."""
    return -np.expm1(log_a) + 0.0


def snr_from_log_alpha_bars(log_alpha_bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E4] SNR(t) = alpha_bar_t / (1 - alpha_bar_t); returns (SNR, log SNR) for t = 0..T.

    Taken from log alpha_bar_t, with 1 - alpha_bar_t = -expm1(log alpha_bar_t), so that SNR stays
    accurate at small t where alpha_bar_t is within 1e-4 of 1. SNR_0 = inf; SNR_T = 0 (log SNR_T =
    -inf) after zero-terminal-SNR rescaling.
    """
    one_minus = _one_minus_exp(log_alpha_bars)
    with np.errstate(divide="ignore"):
        log_snr = log_alpha_bars - np.log(one_minus)
        snr = np.exp(log_alpha_bars) / one_minus
    return snr, log_snr


@exercise("ex03.1")
def posterior_coefficients(betas: np.ndarray, alpha_bars: np.ndarray,
                           one_minus_alpha_bars: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[E11] mu_tilde_t = c0_t x_0 + ct_t x_t and beta_tilde_t of q(x_{t-1} | x_t, x_0), for t = 1..T:
    c0_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t), ct_t = sqrt(alpha_t) (1 - alpha_bar_{t-1}) /
    (1 - alpha_bar_t), beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

    All arguments and results are indexed by t (length T + 1; betas[0] = 0, alpha_bars[0] = 1,
    one_minus_alpha_bars[0] = 0). Returns (c0, ct, beta_tilde), with NaN at index 0 (no step 0).
    """
    # BEGIN SOLUTION ex03.1: slice t = 1..T and t - 1 = 0..T-1, then the three formulas of E11
    beta = betas[1:]
    alpha = 1.0 - beta
    ab_prev, one_minus_ab_prev = alpha_bars[:-1], one_minus_alpha_bars[:-1]  # alpha_bar_{t-1}
    one_minus_ab = one_minus_alpha_bars[1:]  # 1 - alpha_bar_t
    coef_x0 = np.sqrt(ab_prev) * beta / one_minus_ab
    coef_xt = np.sqrt(alpha) * one_minus_ab_prev / one_minus_ab
    variance = one_minus_ab_prev / one_minus_ab * beta
    # END SOLUTION
    nan = np.array([np.nan])
    return (np.concatenate((nan, coef_x0)), np.concatenate((nan, coef_xt)), np.concatenate((nan, variance)))


# ---------------------------------------------------------------------------------------------------
# Checks


def _check_T(T: Any) -> int:
    if isinstance(T, (bool, np.bool_)) or not isinstance(T, (int, np.integer)):
        raise TypeError(f"T: expected an integer number of steps, got {type(T).__name__}")
    if T < 1:
        raise ValueError(f"T: expected at least 1 step, got {T}")
    return int(T)


def check_betas(betas: Any, allow_one_last: bool = False) -> np.ndarray:
    """betas as a float64 array of shape (T,), T >= 1, every value in (0, 1).

    allow_one_last: accept beta_T = 1 (what zero-terminal-SNR rescaling produces)."""
    if not isinstance(betas, (np.ndarray, list, tuple)):
        raise TypeError(f"betas: expected a 1-d array of beta_1..beta_T, got {type(betas).__name__}")
    arr = np.asarray(betas, dtype=np.float64) if not isinstance(betas, np.ndarray) else betas
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"betas: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"betas: expected a 1-d array of beta_1..beta_T with T >= 1, got shape {arr.shape}")
    inside = (arr > 0.0) & (arr < 1.0)
    if allow_one_last:
        inside[-1] |= arr[-1] == 1.0
    if not inside.all():
        i = int(np.argmin(inside))
        raise ValueError(f"betas: expected every beta_t in (0, 1), got beta_{i + 1} = {float(arr[i])!r}")
    return arr


def _posterior_array(index: int, doc: str) -> property:
    """A read-only attribute of NoiseSchedule: one of the arrays `_posterior` computes on first use."""
    return property(lambda self: self._posterior[index], doc=f"{doc}; length T + 1, indexed by t.")


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.flags.writeable = False
    return a


# ---------------------------------------------------------------------------------------------------
# The schedule object


class NoiseSchedule:
    """A noise schedule and every quantity derived from it, computed once, indexed by t = 0..T.

    NoiseSchedule(betas) with betas = beta_1..beta_T (shape (T,), each in (0, 1)), or
    NoiseSchedule.named("cosine", T). zero_terminal_snr=True rescales them first so that
    alpha_bar_T = 0 (`rescale_zero_terminal_snr`).

    Arrays (float64, read-only, length T + 1, index t; see the module docstring for index 0):
      betas, log_betas, alphas, alpha_bars, sqrt_betas, sqrt_alphas, sqrt_alpha_bars, sqrt_one_minus_alpha_bars,
      one_minus_alpha_bars, snr, log_snr (E2, E4), and the posterior of E11: posterior_mean_coef_x0,
      posterior_mean_coef_xt, posterior_variance (beta_tilde_t), posterior_log_variance_clipped and
      posterior_variance_clipped (t = 1 set to t = 2, since beta_tilde_1 = 0; improved DDPM). The
      posterior arrays are computed on first use, then kept.

    `at(values, t, like)` picks values[t] shaped to broadcast against `like`.
    """

    def __init__(self, betas: Any, *, zero_terminal_snr: bool = False) -> None:
        betas = check_betas(betas)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.T = int(betas.size)
        self.zero_terminal_snr = bool(zero_terminal_snr)
        log_alpha_bars = _log_alpha_bars(betas)
        self.betas = _frozen(np.concatenate(([0.0], betas)))
        self.alphas = _frozen(1.0 - self.betas)
        self.alpha_bars = _frozen(np.exp(log_alpha_bars))
        self.one_minus_alpha_bars = _frozen(_one_minus_exp(log_alpha_bars))
        self.sqrt_betas = _frozen(np.sqrt(self.betas))
        with np.errstate(divide="ignore"):
            self.log_betas = _frozen(np.log(self.betas))  # log beta_0 = -inf, never used
        self.sqrt_alphas = _frozen(np.sqrt(self.alphas))
        self.sqrt_alpha_bars = _frozen(np.sqrt(self.alpha_bars))
        self.sqrt_one_minus_alpha_bars = _frozen(np.sqrt(self.one_minus_alpha_bars))
        snr, log_snr = snr_from_log_alpha_bars(log_alpha_bars)
        self.snr, self.log_snr = _frozen(snr), _frozen(log_snr)

    @classmethod
    def named(cls, name: str, T: int, *, zero_terminal_snr: bool = False) -> NoiseSchedule:
        """The schedule `name` ("linear", "cosine", "scaled_linear", "sigmoid") with its defaults for T steps."""
        return cls(named_betas(name, T), zero_terminal_snr=zero_terminal_snr)

    def __repr__(self) -> str:
        zt = ", zero_terminal_snr=True" if self.zero_terminal_snr else ""
        return f"NoiseSchedule(T={self.T}, beta_1={self.betas[1]:.3g}, beta_T={self.betas[-1]:.3g}{zt})"

    # --- the posterior of E11, on first use ---------------------------------------------------------

    @cached_property
    def _posterior(self) -> tuple[np.ndarray, ...]:
        coef_x0, coef_xt, variance = posterior_coefficients(
            np.array(self.betas), np.array(self.alpha_bars), np.array(self.one_minus_alpha_bars))
        log_variance = np.full(self.T + 1, np.nan)
        with np.errstate(divide="ignore"):
            log_variance[1:] = np.log(variance[1:])
        # beta_tilde_1 = 0 (given x_1 and x_0, x_0 is known): its log is replaced by that of t = 2,
        # or of beta_1 when the chain has a single step.
        log_variance[1] = log_variance[2] if self.T >= 2 else math.log(self.betas[1])
        return (_frozen(coef_x0), _frozen(coef_xt), _frozen(variance), _frozen(log_variance),
                _frozen(np.exp(log_variance)))

    posterior_mean_coef_x0 = _posterior_array(0, "c0_t of E11: the weight of x_0 in mu_tilde_t")
    posterior_mean_coef_xt = _posterior_array(1, "ct_t of E11: the weight of x_t in mu_tilde_t")
    posterior_variance = _posterior_array(2, "beta_tilde_t of E11 (0 at t = 1)")
    posterior_log_variance_clipped = _posterior_array(3, "log beta_tilde_t, with t = 1 set to t = 2")
    posterior_variance_clipped = _posterior_array(4, "beta_tilde_t, with t = 1 set to t = 2")

    # --- picking values at t ------------------------------------------------------------------------

    def check_t(self, t: Any, like: Any = None, name: str = "t") -> np.ndarray:
        """t as an int64 array (0-d, or 1-d with one timestep per example of `like`), values in 1..T."""
        t = _v.timesteps(t, self.T, name)
        if t.ndim == 1 and like is not None:
            shape = _v.shape_of(like)
            if not shape or shape[0] != t.shape[0]:
                raise ValueError(f"{name}: expected one timestep per example, shape ({shape[0] if shape else 0},) "
                                 f"for data of shape {shape}, got shape {t.shape}")
        return t

    def at(self, values: np.ndarray, t: Any, like: Any) -> np.ndarray:
        """values[t], shaped to broadcast against `like` and cast to its float dtype.

        t: an int (the same step for every example: a 0-d result) or an int array of shape (B,) with
        B = like.shape[0] (a result of shape (B, 1, ..., 1)).
        """
        t = self.check_t(t, like)
        picked = np.asarray(values)[t]
        if t.ndim == 1:
            picked = picked.reshape(t.shape + (1,) * (len(_v.shape_of(like)) - 1))
        return picked.astype(_v.float_dtype(like))

    def sample_timesteps(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """t ~ uniform on 1..T, shape (batch,), int64 (as in E15)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        return rng.integers(1, self.T + 1, size=batch, dtype=np.int64)
