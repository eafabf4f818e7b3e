"""Chapter 04 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch04
"""

from __future__ import annotations

import numpy as np
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.losses import BIN_HALF_WIDTH
from minidiff.diffusion.losses import _exp
from minidiff.diffusion.losses import check_pixels
from minidiff.diffusion.losses import log_normal_cdf
from minidiff.diffusion.losses import log_normal_cdf_diff
from typing import Any


# Exercise 4.1 (reference: minidiff.diffusion.losses.normal_kl)
def normal_kl(mean1: Any, log_variance1: Any, mean2: Any, log_variance2: Any) -> Any:
    """[E23] KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2,
    elementwise (per dimension), from log-variances log s1^2 and log s2^2. In nats.

    Broadcasts like arithmetic; sum over dimensions for the KL of diagonal Gaussians.
    """
    raise NotImplementedError("Exercise 4.1: log(s2/s1) = (log s2^2 - log s1^2) / 2, and 1 / s2^2 = exp(-log s2^2)")
    return kl


# Exercise 4.2 (reference: minidiff.diffusion.losses.discretized_gaussian_log_likelihood)
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
    raise NotImplementedError("Exercise 4.2: standardized bin edges; x = -1: log Phi(upper), x = 1: log Phi(-lower), else the difference")
    return np.asarray(log_probs, dtype=x0.dtype)
