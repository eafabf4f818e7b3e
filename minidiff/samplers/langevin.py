"""Langevin dynamics (E25) and annealed Langevin dynamics (E28, NCSN): sampling from p with its score alone.

    x_{i+1} = x_i + (delta / 2) grad_x log p(x_i) + sqrt(delta) z_i,   z_i ~ N(0, I)          (E25)

is the Euler-Maruyama discretization of the Langevin diffusion dx = 1/2 grad log p(x) dt + dw, whose
stationary law is p. With a finite step delta the chain's stationary law is p only up to O(delta) (the
unadjusted Langevin algorithm; no Metropolis correction here). Where p has separated modes, a chain
stays in the basin it starts in, so the mode weights come out wrong. Annealing (Song & Ermon 2019) fixes
that: run E25 on the noised densities p_sigma = p * N(0, sigma^2 I) for sigma_1 > ... > sigma_L, with
step delta_i = eps sigma_i^2 / sigma_L^2, each level warm-started from the last (E28). At large sigma the
modes merge and the chains spread over them in proportion to their weights.

These samplers have no noise schedule and no x_t model, so they do not follow the diffusers-style
`Sampler` base; their API is in the same spirit: `sample(score_fn, shape or x_init, rng, progress=True,
return_trajectory=False)`, every random draw from an explicit Generator (or explicit noise arrays for
`langevin_dynamics`), arguments checked. An update with one step size for the batch is the fused sampler
kernel x' = c_x x + c_eps s + c_z z with c_x = 1, c_eps = delta / 2, c_z = sqrt(delta); `langevin_step` also
takes one step size per example (as diffusers' Langevin corrector computes it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.exercise_tools import exercise
from minidiff.kernels.sampler_step import StepCoefs, sampler_step
from minidiff.progress import progress as progress_bar

ScoreFn = Callable[[np.ndarray], np.ndarray]
NoisedScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Checks


def _positive(value: Any, name: str) -> float:
    value = _v.finite(value, name)
    if value <= 0.0:
        raise ValueError(f"{name}: expected a positive number, got {value}")
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return int(value)


def _generator(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)); minidiff never "
                        f"draws from a hidden global generator, got {type(rng).__name__}")
    return rng


def _evaluate(score_fn: Callable[..., Any], x: np.ndarray, *args: Any) -> np.ndarray:
    """score_fn(x, *args) as an array of x's shape and dtype."""
    out = np.asarray(score_fn(x, *args))
    if out.shape != x.shape:
        raise ValueError(f"score_fn: expected an output of shape {x.shape} (the shape of x), got {out.shape}")
    return out.astype(x.dtype, copy=False)


def _start(shape_or_x: Any, rng: np.random.Generator, init_std: float, dtype: Any) -> np.ndarray:
    """The initial batch: a copy of the given array, or N(0, init_std^2 I) of the given shape."""
    if isinstance(shape_or_x, np.ndarray):
        return _v.float_array(shape_or_x, "x_init").copy()
    try:
        shape = tuple(int(s) for s in shape_or_x)
    except (TypeError, ValueError):
        raise TypeError(f"shape_or_x: expected a shape (B, ...) or an initial array, got "
                        f"{type(shape_or_x).__name__}") from None
    if len(shape) < 1 or min(shape) < 1:
        raise ValueError(f"shape_or_x: expected a batch shape (B, ...) with positive sides, got {shape}")
    return (init_std * rng.standard_normal(shape)).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# [E25] Langevin dynamics


def _step_sizes(step_size: Any, batch: int) -> np.ndarray:
    """delta as float64: 0-d (one positive number for the batch) or (batch,) (one positive number per example)."""
    if isinstance(step_size, np.ndarray) and step_size.ndim > 0:
        if step_size.shape != (batch,):
            raise ValueError(f"step_size: expected a number or one step size per example, shape ({batch},), "
                             f"got {step_size.shape}")
        if step_size.dtype.kind not in "fiu":
            raise TypeError(f"step_size: expected real numbers, got dtype {step_size.dtype}")
        delta = step_size.astype(np.float64)
        bad = ~(np.isfinite(delta) & (delta > 0.0))  # (batch,)
        if bad.any():
            raise ValueError(f"step_size: expected finite positive step sizes, got {delta[bad][0]}")
        return delta
    return np.asarray(_positive(step_size, "step_size"))


@exercise("ex05.1")
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
    # BEGIN SOLUTION ex05.1: E25 with delta / 2 and sqrt(delta), broadcast over each example's axes, in x's dtype
    if delta.ndim == 0:  # one step for the whole batch: the fused kernel of chapter 11
        d = float(delta)
        return sampler_step(x, score, z, StepCoefs(c_x=1.0, c_eps=0.5 * d, c_z=math.sqrt(d)))
    delta = delta.reshape((-1,) + (1,) * (x.ndim - 1))  # (B, 1, ..., 1): one step size per example
    x_next = x + (0.5 * delta).astype(x.dtype) * score + np.sqrt(delta).astype(x.dtype) * z  # (B, ...)
    # END SOLUTION
    return x_next


def langevin_dynamics(score_fn: ScoreFn, x: np.ndarray, step_size: float, n_steps: int,
                      rng: np.random.Generator | None = None, *, noise: np.ndarray | None = None,
                      return_trajectory: bool = False, progress: bool = False) -> np.ndarray:
    """[E25] n_steps of x_{i+1} = x_i + (delta / 2) score_fn(x_i) + sqrt(delta) z_i from x (not modified).

    score_fn(x) -> grad log p(x), x's shape. The z_i come from rng, or from noise of shape
    (n_steps, *x.shape) (to replay a chain exactly). Returns the last x, or with return_trajectory
    every state, shape (n_steps + 1, *x.shape), starting with x.
    """
    x = _v.float_array(x, "x")
    delta = _positive(step_size, "step_size")
    n_steps = _positive_int(n_steps, "n_steps")
    if noise is not None:
        if rng is not None:
            raise ValueError("noise: pass either noise or rng, not both")
        _v.float_array(noise, "noise")
        if noise.shape != (n_steps, *x.shape) or noise.dtype != x.dtype:
            raise ValueError(f"noise: expected shape {(n_steps, *x.shape)} and dtype {x.dtype} (one z per step), "
                             f"got {noise.shape} {noise.dtype}")
    else:
        rng = _generator(rng)
    trajectory = [x] if return_trajectory else None
    for i in progress_bar(range(n_steps), n_steps, "Langevin", progress):
        z = noise[i] if noise is not None else rng.standard_normal(x.shape).astype(x.dtype)
        x = langevin_step(x, _evaluate(score_fn, x), delta, z)
        if trajectory is not None:
            trajectory.append(x)
    return np.stack(trajectory) if trajectory is not None else x


class LangevinSampler:
    """[E25] Plain Langevin dynamics with a fixed step: n_steps of E25 from N(0, init_std^2 I) or a given start.

    LangevinSampler(step_size, n_steps).sample(score_fn, (B, D), rng) with score_fn(x) = grad log p(x).
    """

    def __init__(self, step_size: float, n_steps: int) -> None:
        self.step_size = _positive(step_size, "step_size")
        self.n_steps = _positive_int(n_steps, "n_steps")

    def __repr__(self) -> str:
        return f"LangevinSampler(step_size={self.step_size:g}, n_steps={self.n_steps})"

    def sample(self, score_fn: ScoreFn, shape_or_x: Sequence[int] | np.ndarray, rng: np.random.Generator, *,
               init_std: float = 1.0, dtype: Any = np.float64, progress: bool = True,
               return_trajectory: bool = False) -> np.ndarray:
        """The batch after n_steps (or, with return_trajectory, all n_steps + 1 states)."""
        rng = _generator(rng)
        x = _start(shape_or_x, rng, _positive(init_std, "init_std"), dtype)
        return langevin_dynamics(score_fn, x, self.step_size, self.n_steps, rng,
                                 return_trajectory=return_trajectory, progress=progress)


# ---------------------------------------------------------------------------------------------------
# [E28] annealed Langevin dynamics (NCSN)


def geometric_sigmas(sigma_max: float, sigma_min: float, L: int) -> np.ndarray:
    """[E28] sigma_i = sigma_max (sigma_min / sigma_max)^((i - 1) / (L - 1)), i = 1..L: a geometric sequence
    from sigma_max down to sigma_min (Song & Ermon 2019). Shape (L,), float64; L = 1 gives [sigma_max]."""
    sigma_max, sigma_min = _positive(sigma_max, "sigma_max"), _positive(sigma_min, "sigma_min")
    L = _positive_int(L, "L")
    if sigma_min >= sigma_max and L > 1:
        raise ValueError(f"sigma_min: expected sigma_min < sigma_max, got {sigma_min} >= {sigma_max}")
    return np.geomspace(sigma_max, sigma_min, L)  # equal ratios; the end points exactly as given


def check_sigmas(sigmas: Any) -> np.ndarray:
    """Noise levels sigma_1 > ... > sigma_L > 0 as float64 of shape (L,)."""
    if not isinstance(sigmas, (np.ndarray, list, tuple)):
        raise TypeError(f"sigmas: expected a 1-d array of noise levels, got {type(sigmas).__name__}")
    arr = np.asarray(sigmas, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"sigmas: expected a 1-d array of at least one noise level, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() <= 0.0:
        raise ValueError(f"sigmas: expected finite positive noise levels, got {arr.tolist()}")
    if np.any(np.diff(arr) >= 0.0):
        raise ValueError(f"sigmas: expected strictly decreasing noise levels sigma_1 > ... > sigma_L, "
                         f"got {arr.tolist()}")
    return arr


class AnnealedLangevinSampler:
    """[E28] Annealed Langevin dynamics (Song & Ermon 2019, NCSN, Algorithm 1): for each level i = 1..L,
    n_steps_each steps of E25 on p_{sigma_i} with step delta_i = eps sigma_i^2 / sigma_L^2, each level
    starting where the previous one ended.

    sigmas: decreasing noise levels (`geometric_sigmas`); step_size: eps, the step at the last level.
    score_fn(x, sigma) -> grad log p_sigma(x), called with sigma of shape (B,) (one level per example, all
    equal), like the t given to diffusion models. The default start is N(0, sigma_1^2 I): for sigma_1 much
    larger than the data's spread, p_{sigma_1} is close to it.
    """

    def __init__(self, sigmas: Any, step_size: float, n_steps_each: int) -> None:
        self.sigmas = check_sigmas(sigmas)
        self.sigmas.flags.writeable = False
        self.step_size = _positive(step_size, "step_size")
        self.n_steps_each = _positive_int(n_steps_each, "n_steps_each")

    @classmethod
    def geometric(cls, sigma_max: float, sigma_min: float, L: int, step_size: float,
                  n_steps_each: int) -> AnnealedLangevinSampler:
        return cls(geometric_sigmas(sigma_max, sigma_min, L), step_size, n_steps_each)

    def __repr__(self) -> str:
        return (f"AnnealedLangevinSampler(L={len(self.sigmas)}, sigma {self.sigmas[0]:g} -> {self.sigmas[-1]:g}, "
                f"step_size={self.step_size:g}, n_steps_each={self.n_steps_each})")

    @property
    def step_sizes(self) -> np.ndarray:
        """[E28] delta_i = eps sigma_i^2 / sigma_L^2, shape (L,): the same signal-to-noise ratio of the
        update at every level (the step scales with the variance of p_{sigma_i})."""
        return self.step_size * self.sigmas**2 / self.sigmas[-1] ** 2

    def sample(self, score_fn: NoisedScoreFn, shape_or_x: Sequence[int] | np.ndarray, rng: np.random.Generator, *,
               dtype: Any = np.float64, progress: bool = True, return_trajectory: bool = False) -> np.ndarray:
        """The batch after L * n_steps_each steps (or, with return_trajectory, all L * n_steps_each + 1 states)."""
        rng = _generator(rng)
        x = _start(shape_or_x, rng, float(self.sigmas[0]), dtype)
        trajectory = [x] if return_trajectory else None
        levels = list(zip(self.sigmas, self.step_sizes, strict=True))
        for sigma, delta in progress_bar(levels, len(levels), "Annealed Langevin", progress):
            sigma_batch = np.full(x.shape[0], sigma)  # (B,)
            states = langevin_dynamics(lambda v, s=sigma_batch: score_fn(v, s), x, delta, self.n_steps_each, rng,
                                       return_trajectory=return_trajectory)
            x = states[-1] if return_trajectory else states
            if trajectory is not None:
                trajectory.extend(states[1:])
        return np.stack(trajectory) if trajectory is not None else x
