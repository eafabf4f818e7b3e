"""The forward posterior q(x_{t-1} | x_t, x_0) (E11): the target every reverse step is trained to match.

By Bayes' rule, q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of
two Gaussians in x_{t-1} (E1 and E3), hence Gaussian; completing the square gives E11. Its
coefficients are computed once per schedule (`schedules.posterior_coefficients`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule


def q_posterior_mean_variance(schedule: NoiseSchedule, x0: Any, xt: Any, t: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """[E11] q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), with
    mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) /
    (1 - alpha_bar_t) x_t and beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

    Returns (mean, variance, log_variance): variance and log_variance are read-only arrays of the shape
    of xt; log_variance is the clipped one (at t = 1, where beta_tilde_1 = 0 and x_0 is known exactly,
    it holds log beta_tilde_2, improved DDPM's convention for a usable decoder variance).
    x0 may be a model's estimate (an array or an autodiff Tensor).
    """
    xt = _v.float_array(xt, "xt")
    _v.same_shape(x0, "x0", xt, "xt")
    shape = _v.shape_of(xt)
    mean = x0 * schedule.at(schedule.posterior_mean_coef_x0, t, xt) + xt * schedule.at(
        schedule.posterior_mean_coef_xt, t, xt)
    variance = np.broadcast_to(schedule.at(schedule.posterior_variance, t, xt), shape)
    log_variance = np.broadcast_to(schedule.at(schedule.posterior_log_variance_clipped, t, xt), shape)
    return mean, variance, log_variance
