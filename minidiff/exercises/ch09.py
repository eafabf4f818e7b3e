"""Chapter 09 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch09
"""

from __future__ import annotations

import numpy as np
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.editing import _check_batch
from minidiff.editing import _check_t0
from minidiff.editing import check_mask
from minidiff.samplers.base import Sampler


# Exercise 9.1 (reference: minidiff.editing.replace_known)
def replace_known(schedule: NoiseSchedule, x_generated: np.ndarray, x_known: np.ndarray, mask: np.ndarray, t: int,
                  noise: np.ndarray) -> np.ndarray:
    """[E50] The inpainting step: the sample at level t is the input noised to t (E3) on the known region and
    the generated sample elsewhere,

        x_t = m * (sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) noise) + (1 - m) * x_generated.

    schedule: its arrays are indexed by t (alpha_bar_0 = 1: at t = 0 the known region is x_known itself,
    exactly). x_generated: the sampler's output at level t, (B, ...); x_known: the input, same shape and dtype;
    mask: 1 known, 0 to fill, broadcasting to x's shape (`check_mask`); t: an integer level in 0..T; noise:
    standard normal, x's shape and dtype. Returns x_t, x's shape and dtype.
    """
    x_generated = _v.float_array(x_generated, "x_generated")
    _v.like(x_known, "x_known", x_generated, "x_generated")
    _v.like(noise, "noise", x_generated, "x_generated")
    mask = check_mask(mask, x_generated.shape)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or not 0 <= t <= schedule.T:
        raise ValueError(f"t: expected an integer level in 0..{schedule.T} (0 is the data), got {t!r}")
    raise NotImplementedError("Exercise 9.1: x_known noised to level t (schedule arrays indexed by t, cast to x's dtype), chosen by mask")
    return x_t


# Exercise 9.2 (reference: minidiff.editing.sdedit_start)
def sdedit_start(sampler: Sampler, x0: np.ndarray, t0: float, noise: np.ndarray) -> tuple[np.ndarray, int]:
    """[E49] Where SDEdit's reverse run begins: (x_start, begin), begin the index in sampler.timesteps of the
    first timestep t <= t0 T, and x_start the input noised to that timestep by E3,
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (`sampler.add_noise`, which also knows the sigma
    form of sigma samplers). No timestep at or below t0 T (t0 = 0): begin = len(timesteps), x_start = x0 itself.
    t0 = 1: begin = 0 and x_start = init_noise_sigma * noise, the prior's draw, as `sampler.sample` makes it.

    sampler: with its timesteps set (descending). x0: (B, ...), float32 or float64. t0: in [0, 1].
    noise: a standard normal draw of x0's shape, float64 (cast to x0's dtype after scaling, as sample does).
    """
    x0 = _check_batch(x0, "x0")
    t0 = _check_t0(t0)
    if np.shape(noise) != x0.shape:
        raise ValueError(f"noise: expected shape {x0.shape} (the shape of x0), got {np.shape(noise)}")
    timesteps = sampler.timesteps
    raise NotImplementedError("Exercise 9.2: the first timestep <= t0 T (maybe none); x0 noised to it, or the prior's draw at t0 = 1")
    return x_start, begin
