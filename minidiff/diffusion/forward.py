"""The forward (noising) process: one step (E1) and the closed-form marginal (E3).

Every function takes the schedule first, then the data, then the timestep t in 1..T: an int (the
same step for the whole batch) or an int array of shape (B,) (one step per example, B = x.shape[0]).
Random draws take an explicit `noise` array (standard normal, like the data; one per step, shape
(T, *x0.shape), for the whole chain) or a numpy.random.Generator `rng`; exactly one of the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise


def _scaled_gaussian(schedule: NoiseSchedule, x: np.ndarray, t: Any, scales: np.ndarray,
                     variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scales[t] x, variances[t]): a Gaussian whose mean is x scaled; the variance as a read-only view
    of x's shape."""
    return x * schedule.at(scales, t, x), np.broadcast_to(schedule.at(variances, t, x), x.shape)


def q_step_mean_variance(schedule: NoiseSchedule, x_prev: np.ndarray, t: Any) -> tuple[np.ndarray, np.ndarray]:
    """[E1] q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I): returns (mean, variance).

    The variance is a read-only array of the shape of x_prev (a broadcast view)."""
    x_prev = _v.float_array(x_prev, "x_prev")
    return _scaled_gaussian(schedule, x_prev, t, schedule.sqrt_alphas, schedule.betas)


def q_step(schedule: NoiseSchedule, x_prev: np.ndarray, t: Any, noise: np.ndarray | None = None,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """[E1] x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise, noise ~ N(0, I): one step of the chain."""
    x_prev = _v.float_array(x_prev, "x_prev")
    noise = _v.noise_for(x_prev, "x_prev", noise, rng)
    return x_prev * schedule.at(schedule.sqrt_alphas, t, x_prev) + noise * schedule.at(schedule.sqrt_betas, t, x_prev)


def q_mean_variance(schedule: NoiseSchedule, x0: np.ndarray, t: Any) -> tuple[np.ndarray, np.ndarray]:
    """[E3] q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I): returns (mean, variance).

    The variance is a read-only array of the shape of x0 (a broadcast view)."""
    x0 = _v.float_array(x0, "x0")
    return _scaled_gaussian(schedule, x0, t, schedule.sqrt_alpha_bars, schedule.one_minus_alpha_bars)


@exercise("ex02.2")
def q_sample(schedule: NoiseSchedule, x0: np.ndarray, t: Any, noise: np.ndarray | None = None,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """[E3] x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I): x_t in one draw.

    noise: the eps to use (shape and dtype of x0), or rng to draw it. t: an int or an int array of
    shape (B,). Returns x_t with the shape and dtype of x0.
    """
    x0 = _v.float_array(x0, "x0")
    eps = _v.noise_for(x0, "x0", noise, rng)
    schedule.check_t(t, x0)
    # BEGIN SOLUTION ex02.2: schedule.at(values, t, x0) is values[t] shaped and typed to broadcast on x0 (any t)
    sqrt_alpha_bar = schedule.at(schedule.sqrt_alpha_bars, t, x0)  # () or (B, 1, ..., 1)
    sqrt_one_minus_alpha_bar = schedule.at(schedule.sqrt_one_minus_alpha_bars, t, x0)
    xt = x0 * sqrt_alpha_bar + eps * sqrt_one_minus_alpha_bar
    # END SOLUTION
    return xt


@exercise("ex02.3")
def q_sample_trajectory(schedule: NoiseSchedule, x0: np.ndarray, rng: np.random.Generator | None = None, *,
                        noise: np.ndarray | None = None) -> np.ndarray:
    """[E1] The forward chain: x_1, ..., x_T drawn step by step from q(x_t | x_{t-1}), starting at x_0.

    noise: eps_1..eps_T, shape (T, *x0.shape) and x0's dtype (noise[t - 1] is the eps_t of step t), or rng
    to draw them. Returns the whole trajectory, shape (T + 1, *x0.shape) and x0's dtype, indexed by t:
    out[0] is x0, out[T] is x_T. Its marginal at each t is E3's q(x_t | x_0), which the tests check.
    """
    x0 = _v.float_array(x0, "x0")
    one_per_step = np.broadcast_to(x0, (schedule.T, *x0.shape))  # what the noise must look like
    noise = _v.noise_for(one_per_step, "x0 repeated for t = 1..T", noise, rng)  # (T, ...)
    # BEGIN SOLUTION ex02.3: out: (T + 1, *x0.shape), x0's dtype; out[t] = one step [E1] from out[t - 1], noise[t - 1]
    out = np.empty((schedule.T + 1, *x0.shape), x0.dtype)  # (T + 1, ...)
    out[0] = x0
    for t in range(1, schedule.T + 1):
        out[t] = q_step(schedule, out[t - 1], t, noise=noise[t - 1])
    # END SOLUTION
    return out
