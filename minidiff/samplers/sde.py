"""Samplers of the continuous-time SDEs (Song et al. 2021): the reverse SDE by Euler-Maruyama [E30],
predictor-corrector with Langevin corrections [E30, E25], the probability flow ODE by adaptive RK45 [E31],
and the forward SDE simulated by Euler-Maruyama [E29].

A score model is any callable score_fn(x, t) -> grad_x log p_t(x), x of shape (B, ...) and t a float64
array of shape (B,) (every example at the same time here), in continuous time t in [0, 1]. The SDE is a
minidiff.diffusion.sde SDE (VPSDE, VESDE, SubVPSDE). Sampling starts from the SDE's prior at t = 1 and stops
at t = eps > 0 (the score of data diverges at t = 0).

The stepped samplers use the grid t_i = 1 - i (1 - eps) / N, i = 0..N, so that N steps end at eps exactly
(Song et al.'s code steps by dt = 1 / N on linspace(1, eps, N), which ends one step short of its own dt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.ode import RK45Result, solve_ivp_rk45
from minidiff.diffusion.sde import SDE, check_times, per_example, score_at
from minidiff.progress import progress as progress_bar
from minidiff.samplers.base import initial_sample

__all__ = ["PREDICTORS", "EulerMaruyamaSampler", "PredictorCorrectorSampler", "ProbabilityFlowODE",
           "langevin_corrector_step", "reverse_diffusion_step", "reverse_euler_maruyama_step", "simulate_forward_sde"]

PREDICTORS = ("reverse_diffusion", "euler_maruyama")
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Single steps on explicit arrays (the noise is given, so that a step can be replayed)


def _euler_maruyama(x: np.ndarray, velocity: np.ndarray, g: np.ndarray, dt: float,
                    noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x_mean = x + velocity dt, x_new = x_mean + g sqrt(|dt|) noise (dt < 0 runs backwards in time)."""
    x_mean = x + velocity * dt
    return x_mean + noise * per_example(g * np.sqrt(abs(dt)), x), x_mean


def _check_interval(t: Any, t_next: Any) -> tuple[float, float]:
    """0 <= t_next < t <= 1: one step backwards in time."""
    t, t_next = _time(t, "t"), _time(t_next, "t_next")
    if not t_next < t:
        raise ValueError(f"t_next: expected a time before t = {t} (the reverse process runs from 1 to 0), got {t_next}")
    return t, t_next


def _check_step(x: Any, score: Any, noise: Any) -> np.ndarray:
    x = _v.float_array(x, "x")
    _v.like(score, "score", x, "x")
    _v.like(noise, "noise", x, "x")
    return x


def reverse_euler_maruyama_step(sde: SDE, x: np.ndarray, t: float, t_next: float, score: np.ndarray,
                                noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E30] One Euler-Maruyama step of the reverse-time SDE dx = [f - g^2 score] dt + g dw_bar from t down to
    t_next = t - dt: x_mean = x - [f(x, t) - g(t)^2 score] dt, x_next = x_mean + g(t) sqrt(dt) noise
    (Song et al. 2021). score: grad log p_t at x; noise ~ N(0, I). Returns (x_next, x_mean)."""
    t, t_next = _check_interval(t, t_next)
    x = _check_step(x, score, noise)
    return _euler_maruyama(x, sde.reverse_drift(x, t, score), sde.diffusion(t), t_next - t, noise)


def reverse_diffusion_step(sde: SDE, x: np.ndarray, t: float, t_next: float, score: np.ndarray,
                           noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E30] The reverse-diffusion predictor (Song et al. 2021, eq. 46): with the forward SDE discretized as its
    exact transition x_t = r x_{t_next} + G z (SDE.transition), i.e. x_t = x_{t_next} + f_i + G z with
    f_i = (r - 1) x, reverse it as x_mean = x - f_i + G^2 score, x_next = x_mean + G noise.

    For VP this is DDPM's ancestral step to first order; for VE, r = 1 and G^2 = sigma_t^2 - sigma_{t_next}^2
    is NCSN's step. Returns (x_next, x_mean)."""
    t, t_next = _check_interval(t, t_next)
    x = _check_step(x, score, noise)
    r, G = sde.transition(t_next, t)
    x_mean = x - x * per_example(r - 1.0, x) + score * per_example(G**2, x)
    return x_mean + noise * per_example(G, x), x_mean


def langevin_corrector_step(x: np.ndarray, score: np.ndarray, snr: float, alpha: float,
                            noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E25] One Langevin step x_mean = x + delta score, x_next = x_mean + sqrt(2 delta) noise, with the step
    delta = 2 alpha (snr ||noise|| / ||score||)^2 that holds the signal-to-noise ratio ||delta score|| /
    ||sqrt(2 delta) noise|| at snr (Song et al. 2021, Algorithm 5; the norms are per example, averaged over
    the batch as in their code; alpha = r^2 of the step's transition, 1 for VE). Returns (x_next, x_mean)."""
    x = _check_step(x, score, noise)
    batch = x.shape[0]
    grad_norm = np.mean(np.linalg.norm(score.reshape(batch, -1), axis=1))
    noise_norm = np.mean(np.linalg.norm(noise.reshape(batch, -1), axis=1))
    delta = 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2
    x_mean = x + delta * score
    return x_mean + np.sqrt(2.0 * delta) * noise, x_mean


def simulate_forward_sde(sde: SDE, x0: np.ndarray, n_steps: int, rng: np.random.Generator, *, t_end: float = 1.0,
                         return_trajectory: bool = False) -> np.ndarray:
    """[E29] The forward SDE dx = f dt + g dw by Euler-Maruyama from x(0) = x0 on t_i = i t_end / n_steps:
    x_{i+1} = x_i + f(x_i, t_i) dt + g(t_i) sqrt(dt) z_i, z_i ~ N(0, I) from rng.

    Returns x(t_end), or with return_trajectory every x_i, shape (n_steps + 1, *x0.shape)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde: expected a minidiff SDE (VPSDE, VESDE, SubVPSDE), got {type(sde).__name__}")
    x = _v.float_array(x0, "x0")
    n_steps = _int_at_least(n_steps, "n_steps", 1)
    t_end = _time(t_end, "t_end")
    dt = t_end / n_steps
    trajectory = [x]
    for i in range(n_steps):
        t = i * dt
        x, _ = _euler_maruyama(x, sde.drift(x, t), sde.diffusion(t), dt, _v.noise_for(x, "x0", None, rng))
        trajectory.append(x)
    return np.stack(trajectory) if return_trajectory else x


def _time(value: Any, name: str) -> float:
    return float(check_times(_v.finite(value, name), name))


def _int_at_least(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(value: Any, name: str) -> float:
    value = _v.finite(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------
# Samplers


class _SDESampler:
    """What every sampler of an SDE shares: the SDE, the end time eps, the prior draw and the checks."""

    def __init__(self, sde: SDE, eps: float) -> None:
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected a minidiff SDE (VPSDE, VESDE, SubVPSDE), got {type(sde).__name__}")
        eps = _v.finite(eps, "eps")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps: expected the end time in (0, 1), got {eps}")
        self.sde, self.eps = sde, eps

    def _initial(self, score_fn: Any, shape: Sequence[int], rng: Any, x_T: Any, dtype: Any) -> np.ndarray:
        """x(1): the given x_T (copied) or a draw from the prior."""
        return initial_sample(score_fn, "score_fn", shape, rng, x_T,
                              lambda shape: self.sde.prior_sample(rng, shape, dtype))


class _SteppedSampler(_SDESampler):
    """N steps on the grid t_i = 1 - i (1 - eps) / N; the last one without noise when denoise."""

    def __init__(self, sde: SDE, n_steps: int, eps: float, denoise: bool) -> None:
        super().__init__(sde, eps)
        self.n_steps = _int_at_least(n_steps, "n_steps", 1)
        if not isinstance(denoise, (bool, np.bool_)):
            raise TypeError(f"denoise: expected True or False, got {denoise!r}")
        self.denoise = bool(denoise)

    @property
    def times(self) -> np.ndarray:
        """t_0 = 1 > t_1 > ... > t_N = eps, shape (N + 1,)."""
        return np.linspace(1.0, self.eps, self.n_steps + 1)

    def _advance(self, score_fn: ScoreFn, x: np.ndarray, t: float, t_next: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, score_fn: ScoreFn, shape: Sequence[int], rng: np.random.Generator, *, progress: bool = True,
               return_trajectory: bool = False, x_T: np.ndarray | None = None, dtype: Any = np.float64) -> np.ndarray:
        """Draw a batch: x(1) from the prior (or x_T), then N steps to t = eps; with denoise the last step's
        noise is left out (its mean is returned, as in Song et al.'s code). rng draws x(1) and then the
        noise of every step in order, so a seed replays a run. Returns x(eps), or with return_trajectory
        x at every t_i, shape (N + 1, *shape)."""
        x = self._initial(score_fn, shape, rng, x_T, dtype)
        times = self.times
        trajectory = [x] if return_trajectory else None
        for i in progress_bar(range(self.n_steps), self.n_steps, type(self).__name__, progress):
            x, x_mean = self._advance(score_fn, x, float(times[i]), float(times[i + 1]), rng)
            if self.denoise and i == self.n_steps - 1:
                x = x_mean
            if trajectory is not None:
                trajectory.append(x)
        return np.stack(trajectory) if trajectory is not None else x


class EulerMaruyamaSampler(_SteppedSampler):
    """[E30] The reverse-time SDE dx = [f - g^2 score] dt + g dw_bar by Euler-Maruyama from t = 1 to eps
    (Song et al. 2021): x <- x - [f(x, t) - g(t)^2 score(x, t)] dt + g(t) sqrt(dt) z."""

    def __init__(self, sde: SDE, n_steps: int, eps: float = 1e-3, denoise: bool = True) -> None:
        super().__init__(sde, n_steps, eps, denoise)

    def __repr__(self) -> str:
        return f"EulerMaruyamaSampler({self.sde!r}, n_steps={self.n_steps}, eps={self.eps})"

    def _advance(self, score_fn: ScoreFn, x: np.ndarray, t: float, t_next: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return reverse_euler_maruyama_step(self.sde, x, t, t_next, score_at(score_fn, x, t),
                                           _v.noise_for(x, "x", None, rng))


class PredictorCorrectorSampler(_SteppedSampler):
    """[E30] Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3): at every t_i, n_corrector Langevin
    steps [E25] at t_i with the step from the signal-to-noise ratio snr, then one predictor step of the
    reverse SDE to t_{i+1}: "reverse_diffusion" (Song et al.'s choice for VE) or "euler_maruyama"."""

    def __init__(self, sde: SDE, n_steps: int, snr: float = 0.16, n_corrector: int = 1,
                 predictor: str = "reverse_diffusion", eps: float = 1e-3, denoise: bool = True) -> None:
        super().__init__(sde, n_steps, eps, denoise)
        self.snr = _positive(snr, "snr")
        self.n_corrector = _int_at_least(n_corrector, "n_corrector", 0)
        self.predictor = _v.choice(predictor, "predictor", PREDICTORS)

    def __repr__(self) -> str:
        return (f"PredictorCorrectorSampler({self.sde!r}, n_steps={self.n_steps}, snr={self.snr}, "
                f"n_corrector={self.n_corrector}, predictor={self.predictor!r}, eps={self.eps})")

    def corrector_alpha(self, t: float, t_next: float) -> float:
        """alpha of the Langevin step at t: r^2 of the forward transition from t_next to t (Song et al. use
        alpha_i = 1 - beta_i of the discretized VP SDE, which it tends to; 1 for VE)."""
        r, _ = self.sde.transition(t_next, t)
        return float(r) ** 2

    def _advance(self, score_fn: ScoreFn, x: np.ndarray, t: float, t_next: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        alpha = self.corrector_alpha(t, t_next)
        for _ in range(self.n_corrector):
            noise = _v.noise_for(x, "x", None, rng)
            x, _ = langevin_corrector_step(x, score_at(score_fn, x, t), self.snr, alpha, noise)
        step = reverse_diffusion_step if self.predictor == "reverse_diffusion" else reverse_euler_maruyama_step
        return step(self.sde, x, t, t_next, score_at(score_fn, x, t), _v.noise_for(x, "x", None, rng))


class ProbabilityFlowODE(_SDESampler):
    """[E31] Sampling by the probability flow ODE dx/dt = f(x, t) - g(t)^2 score(x, t) / 2, integrated with the
    adaptive RK45 of minidiff.diffusion.ode from t = 1 to eps (Song et al. 2021). Deterministic given x(1),
    so it also encodes: data at eps -> latent at 1 (`encode`), and back (`decode`).

    rtol, atol: the RK45 tolerances. After a solve, `last_result` holds its RK45Result (nfev, steps,
    and the accepted times `ts` of a run with return_trajectory).
    """

    def __init__(self, sde: SDE, rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3) -> None:
        super().__init__(sde, eps)
        self.rtol, self.atol = _positive(rtol, "rtol"), _positive(atol, "atol")
        self.last_result: RK45Result | None = None

    def __repr__(self) -> str:
        return f"ProbabilityFlowODE({self.sde!r}, rtol={self.rtol}, atol={self.atol}, eps={self.eps})"

    def velocity(self, score_fn: ScoreFn, x: np.ndarray, t: float) -> np.ndarray:
        """[E31] dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 at one time t for the whole batch."""
        return self.sde.probability_flow_drift(x, t, score_at(score_fn, x, t))

    def solve(self, score_fn: ScoreFn, x: np.ndarray, t_from: float, t_to: float, *, progress: bool = False,
              return_trajectory: bool = False) -> np.ndarray:
        """x(t_to) from x(t_from) = x along the ODE (either direction), in x's dtype; with return_trajectory
        x at every accepted step, shape (steps + 1, *x.shape) (their times: last_result.ts)."""
        x = _v.float_array(x, "x")
        t_from, t_to = _time(t_from, "t_from"), _time(t_to, "t_to")
        bar = _time_bar(progress, abs(t_to - t_from), type(self).__name__)
        last = [t_from]

        def advance(t: float, _: np.ndarray) -> None:
            bar.update(abs(t - last[0]))
            last[0] = t

        try:
            result = solve_ivp_rk45(lambda t, y: self.velocity(score_fn, y, t), t_from, t_to, x, rtol=self.rtol,
                                     atol=self.atol, trajectory=return_trajectory,
                                     callback=advance if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        self.last_result = result
        return (result.ys if return_trajectory else result.y).astype(x.dtype)

    def sample(self, score_fn: ScoreFn, shape: Sequence[int], rng: np.random.Generator, *, progress: bool = True,
               return_trajectory: bool = False, x_T: np.ndarray | None = None, dtype: Any = np.float64) -> np.ndarray:
        """Draw a batch: x(1) from the prior (or x_T), then the ODE to t = eps. Returns x(eps), or with
        return_trajectory x at every accepted RK45 step (times in last_result.ts)."""
        x = self._initial(score_fn, shape, rng, x_T, dtype)
        return self.solve(score_fn, x, 1.0, self.eps, progress=progress, return_trajectory=return_trajectory)

    def encode(self, score_fn: ScoreFn, x0: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """The latent x(1) of data x(eps) = x0: the ODE run forwards (the inverse of `decode`)."""
        return self.solve(score_fn, x0, self.eps, 1.0, progress=progress)

    def decode(self, score_fn: ScoreFn, latent: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """The data x(eps) of a latent x(1): the ODE run backwards (`sample` from a given x_T)."""
        return self.solve(score_fn, latent, 1.0, self.eps, progress=progress)


def _time_bar(enabled: bool, total: float, name: str) -> Any:
    """A tqdm bar over a span of time (the steps of an adaptive solve are not known in advance); None when
    disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=name, unit="t", leave=False)
