"""Chapter 06 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch06
"""

from __future__ import annotations

import math
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.diffusion.sde import per_example
from minidiff.samplers.ddim import _check_eta
from typing import Any


# Exercise 6.1 (reference: minidiff.samplers.ddim.ddim_step_coefficients)
def ddim_step_coefficients(schedule: NoiseSchedule, t: int, t_prev: int, eta: float) -> tuple[float, float, float]:
    """[E32] The weights (c_x0, c_eps, sigma) of the DDIM step from t to t' = t_prev < t,

        x_{t'} = c_x0 x0_hat + c_eps eps_hat + sigma z,   c_x0 = sqrt(alpha_bar_{t'}),
        c_eps = sqrt(1 - alpha_bar_{t'} - sigma_t^2),      sigma = sigma_t(eta),
        sigma_t(eta) = eta sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t'})

    (Song, Meng & Ermon 2021, eq. 12 and 16). x0_hat and eps_hat are the model's estimates at (x_t, t): the
    step puts x0_hat back at the noise level of t', pointing along eps_hat for the part of the variance
    1 - alpha_bar_{t'} that is not fresh noise. eta = 0 is deterministic; eta = 1 makes sigma_t^2 the
    posterior variance beta_tilde of the strided step (E11), DDPM's "fixed_small".

    schedule: its arrays are indexed by t (alpha_bars[0] = 1: t_prev = 0 is the data); read 1 - alpha_bar from
    schedule.one_minus_alpha_bars, which keeps its digits where alpha_bar is close to 1. t, t_prev: integers,
    0 <= t_prev < t <= T, or t_prev = t = 1 (the last step of a run with set_alpha_to_one=False, which ends at
    alpha_bar_1: then sigma = 0). eta: in [0, 1]. Returns three Python floats.
    """
    if not (0 <= t_prev < t <= schedule.T or t_prev == t == 1):
        raise ValueError(f"t_prev, t: expected 0 <= t_prev < t <= T = {schedule.T} (or both 1), got t_prev = "
                         f"{t_prev}, t = {t}")
    eta = _check_eta(eta)
    raise NotImplementedError("Exercise 6.1: sigma_t(eta) from the schedule at t and t_prev, then the weights of x0_hat and eps_hat")
    return c_x0, c_eps, sigma


class SDE:
    # Exercise 6.2 (reference: minidiff.diffusion.sde.SDE.reverse_drift)
    def reverse_drift(self, x: Any, t: Any, score: Any) -> Any:
        """[E30] f(x, t) - g(t)^2 score, the drift of the reverse-time SDE
        dx = [f - g^2 grad_x log p_t(x)] dt + g dw_bar (Anderson 1982; Song et al. 2021), run from t = 1 to 0.

        x: shape (B, ...); t: one time for the batch or one per example, shape (B,); score: grad_x log p_t at x
        (an exact score or a model's), shape of x. The forward drift is self.drift(x, t) and g(t) is
        self.diffusion(t), of t's shape: per_example(coef, x) shapes such a coefficient to multiply x.
        Returns an array of x's shape and dtype."""
        _v.same_shape(score, "score", x, "x")
        raise NotImplementedError("Exercise 6.2: the forward drift at (x, t), minus g(t)^2 (shaped to multiply x) times the score")
