"""Chapter 05 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch05
"""

from __future__ import annotations

import math
import numpy as np
from minidiff.autodiff.tensor import Tensor
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.diffusion.score import ScoreModel
from minidiff.diffusion.score import _model_output
from minidiff.diffusion.score import _noise_levels
from minidiff.diffusion.score import _reduce
from minidiff.kernels.sampler_step import StepCoefs
from minidiff.kernels.sampler_step import sampler_step
from minidiff.samplers.langevin import _step_sizes
from typing import Any


# Exercise 5.1 (reference: minidiff.samplers.langevin.langevin_step)
def langevin_step(x: np.ndarray, score: np.ndarray, step_size: Any, z: np.ndarray) -> np.ndarray:
    """[E25] x_{i+1} = x_i + (delta / 2) grad_x log p(x_i) + sqrt(delta) z_i, z_i ~ N(0, I)
    (Roberts & Tweedie 1996; Welling & Teh 2011).

    x, score = grad log p(x_i) and z: arrays of one shape (B, ...) and dtype. step_size: delta, one positive
    number for the batch, or one per example (shape (B,)). Returns x_{i+1}, x's shape and dtype. With one
    number the update is the fused sampler kernel x' = c_x x + c_eps s + c_z z (c_x = 1, c_eps = delta / 2,
    c_z = sqrt(delta)).
    """
    x = _v.float_array(x, "x")
    _v.like(score, "score", x, "x")
    _v.like(z, "z", x, "x")
    delta = _step_sizes(step_size, x.shape[0])  # () or (B,), float64
    raise NotImplementedError("Exercise 5.1: E25 with delta / 2 and sqrt(delta), broadcast over each example's axes, in x's dtype")
    return x_next


# Exercise 5.2 (reference: minidiff.diffusion.score.denoising_score_matching_loss)
def denoising_score_matching_loss(score_model: ScoreModel, x0: Any, noise: Any = None, *, sigma: Any = None,
                                  schedule: NoiseSchedule | None = None, t: Any = None,
                                  rng: np.random.Generator | None = None, weighted: bool = False,
                                  reduction: str = "mean") -> Tensor:
    """[E27] J_DSM(theta) = 1/2 E || s_theta(x_t) - grad log q(x_t | x0) ||^2 = 1/2 E || s_theta(x_t) + eps / n ||^2,
    x_t = s x0 + n eps (Vincent 2011). It equals explicit score matching on the noised density plus a
    constant, so its minimizer is s_theta(x_t) = E[-eps / n | x_t] = grad log q(x_t), the noised score.

    The noise path: sigma (VE: s = 1, n = sigma; a number or one per example), the model is called as
    score_model(x_t, sigma) with sigma of shape (n,); or schedule and t (VP, E3: s = sqrt(alpha_bar_t),
    n = sqrt(1 - alpha_bar_t); t an int or (n,), drawn uniformly from rng when None), called as
    score_model(x_t, t), and the target is `score_from_eps`. noise: the eps (x0's shape and dtype), or
    drawn from rng. weighted: lambda = n^2 (Song & Ermon 2019), i.e. 1/2 || n s_theta + eps ||^2, the
    weighting under which the loss is E15's eps loss for s_theta = -eps_theta / n.
    x0: a batch (n, ...); the squared error is summed over the non-batch axes. Returns the batch mean
    ("mean") or the per-example terms ("none", shape (n,)).
    """
    x0 = _v.float_array(x0, "x0")
    if x0.ndim < 1:
        raise ValueError("x0: expected a batch, shape (n, ...), got a 0-d array")
    if not isinstance(weighted, (bool, np.bool_)):
        raise TypeError(f"weighted: expected True or False, got {weighted!r}")
    if sigma is None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: give sigma (x_t = x0 + sigma eps), or a NoiseSchedule and t; "
                            f"got schedule={type(schedule).__name__}")
        if t is None:
            if not isinstance(rng, np.random.Generator):
                raise ValueError("rng: pass a numpy.random.Generator to draw t (or pass t)")
            t = schedule.sample_timesteps(rng, x0.shape[0])  # t first, then eps (as l_simple draws them)
    eps = _v.noise_for(x0, "x0", noise, rng if noise is None else None)  # (n, ...)
    scale, std, conditioning = _noise_levels(x0, sigma, schedule, t)  # (n, 1, ...), (n, 1, ...), (n,)
    # The model is called as score_model(Tensor(x_t), conditioning); _model_output(out, x_t) checks its output
    # and makes it a Tensor (a model may return a numpy array).
    raise NotImplementedError("Exercise 5.2: x_t, the target grad log q(x_t | x0), the residual (times n if weighted), 1/2 |.|^2 per row")
    return _reduce(terms, reduction)
