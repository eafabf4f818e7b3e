"""Flow matching / rectified flow (E38): a straight path from data to noise, and the velocity along it.

Convention (SD3, Esser et al. 2024, and diffusers; EQUATIONS.md E38). Time t runs over [0, 1], t = 0 is the
data and t = 1 the noise:

    x_t = (1 - t) x_0 + t eps,    eps ~ N(0, I),    v = dx_t/dt = eps - x_0.

A network v_theta(x_t, t) is trained by least squares on v (flow matching, Lipman et al. 2023; rectified
flow, Liu et al. 2023), so its optimum is E[eps - x_0 | x_t], and it samples by integrating
dx/dt = v_theta(x, t) from t = 1 (pure noise) down to t = 0 (minidiff.samplers.flow).

The other convention. Rectified flow's paper and most flow-matching code count time the other way:
x_s = s x_data + (1 - s) noise, s = 0 at the noise, velocity u = x_data - noise, integrated from s = 0 up to
s = 1. The two describe the same path with s = 1 - t, so u(x, s) = -v(x, 1 - s): to use such a model here,
call it as `lambda x, t: -model(x, 1 - t)`.

Relation to the VP parameterization (E3, E13). Given x_t and v, the path's two ends are
x_0 = x_t - t v and eps = x_t + (1 - t) v. The signal-to-noise ratio of x_t is SNR(t) = (1 - t)^2 / t^2;
a VP sample x_vp = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps with the same SNR has
alpha_bar = (1 - t)^2 / ((1 - t)^2 + t^2), and then x_t = sqrt((1 - t)^2 + t^2) x_vp: the same x_0 and eps,
rescaled. So a flow model and an eps model can be compared at matched (t, alpha_bar) (`flow_to_vp`,
`vp_to_flow`, `flow_eps_from_velocity`).

Times t are a number (one for the batch) or an array of shape (B,), one per example. Like the rest of
minidiff.diffusion, the functions of model outputs use only arithmetic operators, so autodiff Tensors pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.losses import simple_loss

TIME_DISTRIBUTIONS = ("uniform", "logit_normal")


# ---------------------------------------------------------------------------------------------------
# Argument checks


def check_flow_time(t: Any, name: str = "t", high_open: bool = False) -> np.ndarray:
    """t as a float64 array (any shape) of values in [0, 1] (in [0, 1) with high_open): flow times, or
    alpha_bars for name="alpha_bar"."""
    what = "values" if name == "alpha_bar" else "flow times"
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating, np.ndarray)):
        raise TypeError(f"{name}: expected {what} in [0, 1] (a number or a float array), got {type(t).__name__}")
    arr = np.asarray(t)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected {what} in [0, 1] (a real dtype), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    inside = (arr >= 0.0) & ((arr < 1.0) if high_open else (arr <= 1.0))  # NaN is outside
    if not inside.all():
        interval = "[0, 1)" if high_open else "[0, 1]"
        hint = " (0 is the data, 1 the noise)" if name == "t" else ""
        raise ValueError(f"{name}: expected {what} in {interval}{hint}, got {arr[~inside].ravel()[0]}")
    return arr


def _times_for(t: Any, like: Any, name: str = "t", high_open: bool = False) -> np.ndarray:
    """t checked for a batch `like` (B, ...): float64, 0-d (one for the batch) or (B,) (one per example)."""
    t = check_flow_time(t, name, high_open)
    shape = _v.shape_of(like)
    if t.ndim > 1 or (t.ndim == 1 and (not shape or t.shape[0] != shape[0])):
        expected = f"({shape[0]},)" if shape else "()"
        raise ValueError(f"{name}: expected one value, or one per example (shape {expected}) for data of shape "
                         f"{shape}, got shape {t.shape}")
    return t


def _time_at(t: Any, like: Any, name: str = "t", high_open: bool = False) -> np.ndarray:
    """t shaped to broadcast against `like` (B, ...): 0-d, or (B,) -> (B, 1, ..., 1); in like's float dtype."""
    t = _times_for(t, like, name, high_open)
    if t.ndim == 1:
        t = t.reshape(t.shape + (1,) * (len(_v.shape_of(like)) - 1))
    return t.astype(_v.float_dtype(like))


def _batch(x0: Any) -> np.ndarray:
    x0 = _v.float_array(x0, "x0")
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0: expected a batch, shape (B, ...) with B >= 1, got shape {x0.shape}")
    return x0


# ---------------------------------------------------------------------------------------------------
# The path and its velocity


def flow_interpolant(x0: np.ndarray, eps: np.ndarray, t: Any) -> np.ndarray:
    """[E38] x_t = (1 - t) x_0 + t eps (Lipman et al. 2023; Liu et al. 2023; SD3's convention): the straight
    path from the data (t = 0) to the noise (t = 1).

    x0, eps: arrays of one shape and dtype (B, ...); t: a number or one per example, shape (B,), in [0, 1].
    """
    x0 = _v.float_array(x0, "x0")
    _v.like(eps, "eps", x0, "x0")
    t = _time_at(t, x0)  # () or (B, 1, ..., 1)
    return (1 - t) * x0 + t * eps  # (B, ...)


def flow_target(x0: Any, eps: Any) -> Any:
    """[E38] v = dx_t/dt = eps - x_0: the velocity of the straight path, the regression target of flow matching
    (Lipman et al. 2023; Liu et al. 2023). It does not depend on t."""
    _v.same_shape(eps, "eps", x0, "x0")
    return eps - x0


def sample_flow_times(rng: np.random.Generator, batch: int, distribution: str = "uniform", logit_mean: float = 0.0,
                      logit_std: float = 1.0) -> np.ndarray:
    """[E38] Training times t, shape (batch,), float64:
      "uniform"       t ~ U[0, 1) (flow matching, rectified flow);
      "logit_normal"  t = sigmoid(u), u ~ N(logit_mean, logit_std^2) (SD3, Esser et al. 2024, eq. 19: more
                      weight on the middle of the path, where the velocity is hardest to predict).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    _v.choice(distribution, "distribution", TIME_DISTRIBUTIONS)
    if distribution == "uniform":
        return rng.random(int(batch))
    mean, std = _v.finite(logit_mean, "logit_mean"), _v.finite(logit_std, "logit_std")
    if std <= 0:
        raise ValueError(f"logit_std: expected a positive standard deviation, got {std}")
    u = rng.normal(mean, std, int(batch))  # (batch,)
    return 0.5 * (1.0 + np.tanh(0.5 * u))  # sigmoid(u), without overflow for large |u|


def flow_matching_loss(model: Callable[[np.ndarray, np.ndarray], Any], x0: np.ndarray, t: Any = None,
                       eps: np.ndarray | None = None, *, rng: np.random.Generator | None = None,
                       distribution: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0) -> Any:
    """[E38] L = E_{t, x_0, eps} || v_theta(x_t, t) - (eps - x_0) ||^2, x_t = (1 - t) x_0 + t eps, as a batch
    mean (conditional flow matching, Lipman et al. 2023; rectified flow, Liu et al. 2023).

    x0: a batch (B, ...); model(x_t, t) is called once, with t float64 of shape (B,), and may return an
    array or an autodiff Tensor (then the loss is a Tensor with its gradient). t and eps are drawn from rng
    unless given (t by `sample_flow_times` with distribution, logit_mean, logit_std). The squared error is
    averaged over dimensions, as L_simple (E15) is. Its minimum over models is reached at
    v_theta(x, t) = E[eps - x_0 | x_t = x].
    """
    x0 = _batch(x0)
    batch = x0.shape[0]
    if t is None:
        if rng is None:
            raise ValueError("rng: pass a numpy.random.Generator to draw t (or pass t)")
        t = sample_flow_times(rng, batch, distribution, logit_mean, logit_std)
    t = np.broadcast_to(_times_for(t, x0), (batch,)).copy()  # (B,) float64
    eps = _v.noise_for(x0, "x0", eps, rng if eps is None else None, noise_name="eps")
    out = model(flow_interpolant(x0, eps, t), t)
    _v.same_shape(out, "model output", x0, "x0")
    return simple_loss(out, flow_target(x0, eps))


# ---------------------------------------------------------------------------------------------------
# The velocity and the VP parameterization


def flow_x0_from_velocity(xt: Any, t: Any, v: Any) -> Any:
    """[E38] x_0 = x_t - t v: the data end of the straight line through x_t with velocity v."""
    _v.same_shape(v, "v", xt, "xt")
    return xt - v * _time_at(t, xt)


def flow_eps_from_velocity(xt: Any, t: Any, v: Any) -> Any:
    """[E38] eps = x_t + (1 - t) v: the noise end of the straight line through x_t with velocity v."""
    _v.same_shape(v, "v", xt, "xt")
    return xt + v * (1 - _time_at(t, xt))


def flow_velocity_from_eps(xt: Any, t: Any, eps: Any) -> Any:
    """[E38] v = (eps - x_t) / (1 - t), from x_0 = (x_t - t eps) / (1 - t): an eps prediction as a velocity.
    Undefined at t = 1, where x_t is the noise itself and says nothing about x_0."""
    _v.same_shape(eps, "eps", xt, "xt")
    return (eps - xt) / (1 - _time_at(t, xt, high_open=True))


def flow_alpha_bar(t: Any) -> np.ndarray:
    """[E38] alpha_bar = (1 - t)^2 / ((1 - t)^2 + t^2): the VP alpha_bar whose SNR alpha_bar / (1 - alpha_bar)
    equals the flow's SNR(t) = (1 - t)^2 / t^2. float64, the shape of t."""
    t = check_flow_time(t)
    return (1.0 - t) ** 2 / ((1.0 - t) ** 2 + t**2)


def flow_time_from_alpha_bar(alpha_bar: Any) -> np.ndarray:
    """[E38] t = sqrt(1 - alpha_bar) / (sqrt(alpha_bar) + sqrt(1 - alpha_bar)): the flow time of the same SNR
    as a VP step with alpha_bar in [0, 1] (the inverse of `flow_alpha_bar`). float64, the shape of alpha_bar."""
    alpha_bar = check_flow_time(alpha_bar, "alpha_bar")
    a, b = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    return b / (a + b)


def flow_to_vp(xt: np.ndarray, t: Any) -> tuple[np.ndarray, np.ndarray]:
    """[E38] (x_vp, alpha_bar): x_t = (1 - t) x_0 + t eps as the VP sample of the same SNR,
    x_vp = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps = x_t / sqrt((1 - t)^2 + t^2),
    alpha_bar = flow_alpha_bar(t)."""
    xt = _v.float_array(xt, "xt")
    t_b = _time_at(t, xt)  # () or (B, 1, ..., 1)
    return xt / np.sqrt((1 - t_b) ** 2 + t_b**2), flow_alpha_bar(t)


def vp_to_flow(x_vp: np.ndarray, alpha_bar: Any) -> tuple[np.ndarray, np.ndarray]:
    """[E38] (x_t, t): the VP sample x_vp = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps as the flow sample of the
    same SNR, x_t = x_vp / (sqrt(alpha_bar) + sqrt(1 - alpha_bar)), t = flow_time_from_alpha_bar(alpha_bar)."""
    x_vp = _v.float_array(x_vp, "x_vp")
    ab = _time_at(alpha_bar, x_vp, "alpha_bar")  # () or (B, 1, ..., 1)
    return x_vp / (np.sqrt(ab) + np.sqrt(1 - ab)), flow_time_from_alpha_bar(alpha_bar)


def shift_flow_time(t: Any, shift: float) -> np.ndarray:
    """SD3's resolution-dependent time shift (Esser et al. 2024, eq. 23): t' = shift t / (1 + (shift - 1) t).
    It divides the SNR by shift^2: SNR(t') = SNR(t) / shift^2, so shift > 1 spends more of a grid at high noise.
    diffusers' FlowMatchEulerDiscreteScheduler applies it to its sigmas. Computed as shift t / (shift t + (1 - t)),
    which keeps t = 0 and t = 1 exactly. float64, the shape of t."""
    t = check_flow_time(t)
    shift = _v.finite(shift, "shift")
    if shift <= 0:
        raise ValueError(f"shift: expected a positive number, got {shift}")
    return shift * t / (shift * t + (1.0 - t))
