"""What a network predicts: the noise eps, the clean data x0, the velocity v, or the score (E13, E14, E27).

Given x_t and t, each determines the others, because x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
(E3) is one linear equation between x_0 and eps. Write a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t)
(so a^2 + b^2 = 1):

    x0  = (x_t - b eps) / a          eps = (x_t - a x0) / b          (E13)
    v   = a eps - b x0               x0 = a x_t - b v,   eps = b x_t + a v   (E14)
    score = grad log q(x_t | x_0) = -eps / b                          (E27)

The inputs may be numpy arrays or autodiff Tensors (only arithmetic operators are used); the
coefficients are picked with `schedule.at` and cast to the dtype of x_t.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _eps_is_informative(schedule: NoiseSchedule, t: Any, what: str) -> None:
    """eps determines x0 only where alpha_bar_t > 0 (not at t = T of a zero-terminal-SNR schedule)."""
    t = schedule.check_t(t)
    if np.any(schedule.alpha_bars[t] == 0.0):
        raise ValueError(f"t: {what} is undefined where alpha_bar_t = 0 (t = T of a zero-terminal-SNR schedule): "
                         "x_t is pure noise there; use prediction_type='v_prediction'")


@exercise("ex03.2")
def predict_x0_from_eps(schedule: NoiseSchedule, xt: Any, t: Any, eps: Any) -> Any:
    """[E13] x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    _v.same_shape(eps, "eps", xt, "xt")
    _eps_is_informative(schedule, t, "x0 from eps")
    # BEGIN SOLUTION ex03.2: pick sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) with schedule.at(..., t, xt), then E13
    sqrt_alpha_bar = schedule.at(schedule.sqrt_alpha_bars, t, xt)
    sqrt_one_minus_alpha_bar = schedule.at(schedule.sqrt_one_minus_alpha_bars, t, xt)
    x0 = (xt - eps * sqrt_one_minus_alpha_bar) / sqrt_alpha_bar
    # END SOLUTION
    return x0


def predict_eps_from_x0(schedule: NoiseSchedule, xt: Any, t: Any, x0: Any) -> Any:
    """[E13] eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t), E3 solved for eps."""
    _v.same_shape(x0, "x0", xt, "xt")
    sqrt_alpha_bar = schedule.at(schedule.sqrt_alpha_bars, t, xt)
    return (xt - x0 * sqrt_alpha_bar) / schedule.at(schedule.sqrt_one_minus_alpha_bars, t, xt)


def v_from_eps_x0(schedule: NoiseSchedule, eps: Any, x0: Any, t: Any) -> Any:
    """[E14] v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0.

    With x_t = cos(phi) x_0 + sin(phi) eps (cos(phi) = sqrt(alpha_bar_t)), v = dx_t / dphi: the
    velocity of x_t along the quarter circle from data (phi = 0) to noise (phi = pi / 2).
    """
    _v.same_shape(x0, "x0", eps, "eps")
    return eps * schedule.at(schedule.sqrt_alpha_bars, t, eps) - x0 * schedule.at(
        schedule.sqrt_one_minus_alpha_bars, t, eps)


def predict_x0_from_v(schedule: NoiseSchedule, xt: Any, t: Any, v: Any) -> Any:
    """[E14] x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (a rotation back by phi)."""
    _v.same_shape(v, "v", xt, "xt")
    return xt * schedule.at(schedule.sqrt_alpha_bars, t, xt) - v * schedule.at(
        schedule.sqrt_one_minus_alpha_bars, t, xt)


def predict_eps_from_v(schedule: NoiseSchedule, xt: Any, t: Any, v: Any) -> Any:
    """[E14] eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    _v.same_shape(v, "v", xt, "xt")
    return xt * schedule.at(schedule.sqrt_one_minus_alpha_bars, t, xt) + v * schedule.at(
        schedule.sqrt_alpha_bars, t, xt)


def score_from_eps(schedule: NoiseSchedule, eps: Any, t: Any) -> Any:
    """[E27] s(x_t, t) = -eps / sqrt(1 - alpha_bar_t): the score of q(x_t | x_0) at the noise eps, and
    the optimal score model from the optimal noise model (denoising score matching)."""
    return -eps / schedule.at(schedule.sqrt_one_minus_alpha_bars, t, eps)


def eps_from_score(schedule: NoiseSchedule, score: Any, t: Any) -> Any:
    """[E27] eps = -sqrt(1 - alpha_bar_t) s(x_t, t), the inverse of `score_from_eps`."""
    return -score * schedule.at(schedule.sqrt_one_minus_alpha_bars, t, score)


class OutputReading(NamedTuple):
    """What a model output `out` says at x_t, as two affine maps (E13, E14):
    x0_hat = r_x x_t + r_out out and eps_hat = e_x x_t + e_out out."""

    r_x: Any
    r_out: Any
    e_x: Any
    e_out: Any


def output_reading(a: Any, b: Any, prediction_type: str) -> OutputReading:
    """[E13][E14] The reading of a model output of `prediction_type`, with a = sqrt(alpha_bar_t) and
    b = sqrt(1 - alpha_bar_t) (numbers, or arrays that broadcast against x_t: one pair per example):
    "epsilon"       x0_hat = (x_t - b out) / a,  eps_hat = out
    "sample"        x0_hat = out,                eps_hat = (x_t - a out) / b
    "v_prediction"  x0_hat = a x_t - b out,      eps_hat = b x_t + a out
    Inverting eps_hat's map gives the output of that type an eps means: out = (eps - e_x x_t) / e_out."""
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return OutputReading(1.0 / a, -b / a, 0.0, 1.0)
    if prediction_type == "sample":
        return OutputReading(0.0, 1.0, 1.0 / b, -a / b)
    return OutputReading(a, -b, b, a)


def to_eps_x0(schedule: NoiseSchedule, model_output: Any, xt: Any, t: Any,
              prediction_type: str = "epsilon") -> tuple[Any, Any]:
    """[E13][E14] (eps, x0) implied by a model output of any parameterization, given x_t and t.

    prediction_type: "epsilon" (the output is eps), "sample" (it is x0) or "v_prediction" (it is v).
    """
    _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    _v.same_shape(model_output, "model_output", xt, "xt")
    if prediction_type == "epsilon":
        return model_output, predict_x0_from_eps(schedule, xt, t, model_output)
    if prediction_type == "sample":
        return predict_eps_from_x0(schedule, xt, t, model_output), model_output
    return predict_eps_from_v(schedule, xt, t, model_output), predict_x0_from_v(schedule, xt, t, model_output)
