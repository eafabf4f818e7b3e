"""A hand-written adaptive Runge-Kutta solver: Dormand-Prince 5(4), the method of scipy's solve_ivp(method="RK45").

It integrates dy/dt = f(t, y) for y an ndarray of any shape, forwards (t1 > t0) or backwards (t1 < t0). The
probability flow ODE [E31] is solved with it, for sampling, for encoding data into latents, and for the
likelihood [E34].

The method (Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving ODEs I", II.4-II.5):
  * seven stages k_1..k_7 of the standard Butcher tableau below; the fifth-order solution y5 is propagated
    (local extrapolation), the embedded fourth-order y4 only measures the error;
  * FSAL (first same as last): stage 7 is evaluated at (t + h, y5), so it is stage 1 of the next step and
    an accepted step costs six evaluations of f;
  * the error of a step is err = || (y5 - y4) / (atol + rtol max(|y|, |y5|)) ||_rms (the rms over every
    element of y); the step is accepted when err < 1;
  * the next step is h * min(10, 0.9 err^(-1/5)) after an accepted step (at most h after a rejection, at
    most 10 h in any case); a rejected step is retried with h * max(0.2, 0.9 err^(-1/5));
  * without first_step, the first step is chosen by Hairer's rule (from f(t0, y0) and one extra evaluation).
These are scipy's choices, so both take the same steps on the same problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

from minidiff.diffusion import _validate as _v

__all__ = ["DOPRI_A", "DOPRI_B", "DOPRI_B_HAT", "DOPRI_C", "RK45Result", "dopri_step", "rk45_fixed_steps",
           "solve_ivp_rk45"]

ODEFunction = Callable[[float, np.ndarray], np.ndarray]


def _fractions(*rows: tuple[str, ...]) -> list[list[Fraction]]:
    return [[Fraction(a) for a in row] for row in rows]


# The Dormand-Prince tableau: stage i is evaluated at t + C[i] h, y + h sum_j A[i][j] k_j.
_C = _fractions(("0", "1/5", "3/10", "4/5", "8/9", "1", "1"))[0]
_A = _fractions(
    (),
    ("1/5",),
    ("3/40", "9/40"),
    ("44/45", "-56/15", "32/9"),
    ("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
    ("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
    ("35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84"),  # = B: stage 7 is at (t + h, y5) (FSAL)
)
_B = _fractions(("35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84", "0"))[0]  # order 5
_B_HAT = _fractions(("5179/57600", "0", "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40"))[0]  # order 4

DOPRI_C = np.array([float(c) for c in _C])  # (7,)
DOPRI_A = [np.array([float(a) for a in row]) for row in _A]  # row i: (i,)
DOPRI_B = np.array([float(b) for b in _B])  # (7,)
DOPRI_B_HAT = np.array([float(b) for b in _B_HAT])  # (7,)
_E = np.array([float(b - b_hat) for b, b_hat in zip(_B, _B_HAT, strict=True)])  # (7,) y5 - y4 = h sum_i E_i k_i

ERROR_ORDER = 4  # the embedded solution's order: err ~ h^5, so the step scales with err^(-1/5)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


class RK45Result(NamedTuple):
    """The end of an RK45 run: y at t1, the work done, and (when asked) the accepted steps."""

    y: np.ndarray
    nfev: int  # evaluations of f
    n_accepted: int
    n_rejected: int
    ts: np.ndarray | None  # (n_accepted + 1,) t0 and the end of every accepted step, or None
    ys: np.ndarray | None  # (n_accepted + 1, *y0.shape) the solution there, or None


def _combine(coefs: np.ndarray, ks: list[np.ndarray]) -> np.ndarray:
    """sum_i coefs[i] k_i, skipping zero coefficients."""
    out = np.zeros_like(ks[0])
    for c, k in zip(coefs, ks, strict=False):
        if c != 0.0:
            out += c * k
    return out


def dopri_step(f: ODEFunction, t: float, y: np.ndarray, f0: np.ndarray,
               h: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """One Dormand-Prince step of size h (negative to go backwards) from (t, y) with f0 = f(t, y).

    Returns the fifth-order y5 at t + h and the seven stages k_1..k_7 (k_7 = f(t + h, y5), the next f0).
    Six evaluations of f.
    """
    ks = [f0]
    for c, a in zip(DOPRI_C[1:], DOPRI_A[1:], strict=True):
        ks.append(_call(f, t + c * h, y + h * _combine(a, ks)))
    return y + h * _combine(DOPRI_B, ks), ks


def _call(f: ODEFunction, t: float, y: np.ndarray) -> np.ndarray:
    out = np.asarray(f(t, y), dtype=np.float64)
    if out.shape != y.shape:
        raise ValueError(f"f: expected f(t, y) of the shape of y {y.shape}, got {out.shape}")
    return out


def _rms(a: np.ndarray) -> float:
    return float(np.linalg.norm(a.ravel()) / math.sqrt(a.size))


def _initial_step(f: ODEFunction, t0: float, y0: np.ndarray, f0: np.ndarray, span: float, direction: float,
                  rtol: float, atol: float) -> float:
    """Hairer's first step (Solving ODEs I, II.4): h0 from |y0| / |f0|, then from the change of f over h0."""
    scale = atol + np.abs(y0) * rtol  # (*y.shape)
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = _call(f, t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    flat = d1 <= 1e-15 and d2 <= 1e-15
    h1 = max(1e-6, h0 * 1e-3) if flat else (0.01 / max(d1, d2)) ** (1.0 / (ERROR_ORDER + 1))
    return min(100 * h0, h1, span)


def _check_problem(f: Any, t0: Any, t1: Any, y0: Any) -> tuple[float, float, np.ndarray]:
    if not callable(f):
        raise TypeError(f"f: expected a callable f(t, y), got {type(f).__name__}")
    t0, t1 = _v.finite(t0, "t0"), _v.finite(t1, "t1")
    if not isinstance(y0, np.ndarray) or y0.dtype.kind not in "fiu":
        raise TypeError(f"y0: expected a real numpy.ndarray, got {type(y0).__name__}")
    if y0.size == 0:
        raise ValueError("y0: expected a non-empty array")
    if not np.all(np.isfinite(y0)):
        raise ValueError("y0: expected finite values")
    return t0, t1, y0.astype(np.float64)


def _positive(value: Any, name: str) -> float:
    value = _v.finite(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value}")
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def solve_ivp_rk45(f: ODEFunction, t0: float, t1: float, y0: np.ndarray, rtol: float = 1e-6, atol: float = 1e-9,
                   first_step: float | None = None, max_steps: int = 100_000, *, trajectory: bool = False,
                   callback: Callable[[float, np.ndarray], None] | None = None) -> RK45Result:
    """Solve dy/dt = f(t, y), y(t0) = y0, up to t1 with adaptive Dormand-Prince 5(4) steps (see the module).

    f(t, y) takes a float t and an array of the shape of y0 and returns an array of that shape. y is
    integrated in float64. rtol, atol: the error of every step is held below atol + rtol |y| (rms over
    the elements), as scipy's solve_ivp defines them. first_step: the size of the first step (default:
    Hairer's rule). max_steps: accepted plus rejected steps before RuntimeError. trajectory: also return
    the accepted steps (ts, ys). callback(t, y): called after every accepted step (a progress bar).
    """
    t0, t1, y = _check_problem(f, t0, t1, y0)
    rtol, atol = _positive(rtol, "rtol"), _positive(atol, "atol")
    max_steps = _positive_int(max_steps, "max_steps")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable callback(t, y) or None, got {type(callback).__name__}")
    span, direction = abs(t1 - t0), math.copysign(1.0, t1 - t0)
    ts, ys = [t0], [y]
    if span == 0.0:
        return RK45Result(y, 0, 0, 0, *((np.array(ts), np.stack(ys)) if trajectory else (None, None)))
    f0 = _call(f, t0, y)
    nfev = 1
    if first_step is None:
        h_abs = _initial_step(f, t0, y, f0, span, direction, rtol, atol)
        nfev += 1
    else:
        h_abs = _positive(first_step, "first_step")
        if h_abs > span:
            raise ValueError(f"first_step: expected at most |t1 - t0| = {span}, got {h_abs}")
    t, accepted, rejected = t0, 0, 0
    while direction * (t1 - t) > 0:
        min_step = 10 * abs(np.nextafter(t, direction * np.inf) - t)
        h_abs = max(h_abs, min_step)
        step_rejected = False
        while True:
            if accepted + rejected >= max_steps:
                raise RuntimeError(f"max_steps: {max_steps} steps did not reach t1 = {t1} (at t = {t}); raise "
                                   "max_steps or loosen rtol/atol")
            if h_abs < min_step:
                raise RuntimeError(f"rtol: the step size fell below {min_step:.3g} at t = {t} (a stiff or singular f?)")
            t_new = t + direction * h_abs
            if direction * (t_new - t1) > 0:
                t_new = t1
            h = t_new - t
            h_abs = abs(h)
            y_new, ks = dopri_step(f, t, y, f0, h)
            nfev += 6
            scale = atol + rtol * np.maximum(np.abs(y), np.abs(y_new))  # (*y.shape)
            err = _rms(h * _combine(_E, ks) / scale)
            if err < 1.0:
                factor = MAX_FACTOR if err == 0.0 else min(MAX_FACTOR, SAFETY * err ** (-1.0 / (ERROR_ORDER + 1)))
                h_abs *= min(1.0, factor) if step_rejected else factor
                break
            h_abs *= max(MIN_FACTOR, SAFETY * err ** (-1.0 / (ERROR_ORDER + 1)))
            step_rejected = True
            rejected += 1
        accepted += 1
        t, y, f0 = t_new, y_new, ks[-1]
        if trajectory:
            ts.append(t)
            ys.append(y)
        if callback is not None:
            callback(t, y)
    return RK45Result(y, nfev, accepted, rejected, *((np.array(ts), np.stack(ys)) if trajectory else (None, None)))


def rk45_fixed_steps(f: ODEFunction, t0: float, t1: float, y0: np.ndarray, n_steps: int) -> np.ndarray:
    """n_steps equal Dormand-Prince steps (the fifth-order solution, no error control) from t0 to t1.

    Its global error is O(h^5): halving h divides it by 32 (the order the tableau is built for).
    """
    t0, t1, y = _check_problem(f, t0, t1, y0)
    n_steps = _positive_int(n_steps, "n_steps")
    h = (t1 - t0) / n_steps
    f0 = _call(f, t0, y)
    for i in range(n_steps):
        y, ks = dopri_step(f, t0 + i * h, y, f0, h)
        f0 = ks[-1]
    return y
