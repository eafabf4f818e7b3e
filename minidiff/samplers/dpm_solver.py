"""DPM-Solver++ (E35, Lu et al. 2022), multistep, with the configuration of diffusers'
DPMSolverMultistepScheduler.

The probability-flow ODE (E31) of a VP schedule is semi-linear. In lambda = log(alpha_t / sigma_t) (half
the log-SNR; alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar)) its solution from s to t is exactly

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_hat(x_lambda) dlambda,

so only the data prediction x0_hat (the model's output read as x0, E13/E14) is approximated: by a
constant (first order, which is DDIM with eta = 0, E32), or by a polynomial through the x0 estimates of
the last one or two steps (second and third order, "multistep": no extra model calls). With
h = lambda_t - lambda_s and the newest estimates m0, m1, m2 (r = h_prev / h):

    order 1   x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m0
    order 2   ... - 0.5 alpha_t (e^{-h} - 1) D1 (midpoint) or + alpha_t ((e^{-h} - 1) / h + 1) D1 (heun),
              D1 = (m0 - m1) / r0
    order 3   ... + alpha_t ((e^{-h} - 1) / h + 1) D1 - alpha_t ((e^{-h} - 1 + h) / h^2 - 0.5) D2, the
              divided differences of three estimates

algorithm_type "dpmsolver" (DPM-Solver, the noise-prediction form) is the same with eps in place of x0,
alpha and sigma swapped and h negated. The sample is the VP x_t itself (no input scaling); the noise
levels are the VE sigmas of `minidiff.samplers.sigmas` (alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t =
sigma alpha_t, lambda = -log sigma), so that the last one may be 0 (lambda = +inf), handled in closed form.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.exercise_tools import exercise
from minidiff.kernels.sampler_step import StepCoefs, sampler_step
from minidiff.samplers.base import (
    PREDICTION_OPTION,
    SCHEDULE_OPTIONS,
    SPACING_OPTIONS,
    THRESHOLD_OPTIONS,
    TIMESTEP_SPACINGS,
    Option,
    SamplerOutput,
    a_bool,
    disabled,
    dynamic_threshold,
    one_of,
)
from minidiff.samplers.sigmas import (
    FINAL_SIGMAS_OPTION,
    KARRAS_OPTION,
    OTHER_SIGMAS_OPTIONS,
    SigmaSampler,
    a_lambda_bound,
    dpm_solver_timesteps,
    vp_coefficients,
    vp_x0_eps,
)

ALGORITHMS = ("dpmsolver++", "dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
FEW_STEPS = 15  # lower_order_final applies to runs of fewer steps than this (as diffusers)


def _lambda(sigma: float) -> float:
    """lambda = log(alpha_t / sigma_t) = -log(sigma); +inf at sigma = 0 (the data)."""
    return math.inf if sigma == 0.0 else -math.log(sigma)


def _phi(u: float) -> tuple[float, float, float]:
    """(e^u - 1, (e^u - 1) / u - 1, (e^u - 1 - u) / u^2 - 1/2), with their limits -1, -1, -1/2 at u = -inf."""
    if u == -math.inf:
        return -1.0, -1.0, -0.5
    e = math.expm1(u)
    return e, e / u - 1.0, (e - u) / (u * u) - 0.5


def dpm_solver_coefficients(sigmas: tuple[float, ...], sigma_next: float, algorithm: str = "dpmsolver++",
                            solver_type: str = "midpoint") -> tuple[float, np.ndarray]:
    """[E35] (c_x, w) of the multistep DPM-Solver(++) update x_next = c_x x + sum_j w_j m_j (Lu et al. 2022).

    sigmas: the VE noise levels of the current and the previous steps, newest first (sigma_s0, sigma_s1,
    ...); their number is the order (1, 2 or 3). m_j is the model's x0 estimate (eps for "dpmsolver") at
    sigma_sj. With lambda = -log(sigma), h = lambda_next - lambda_s0, r_j = (lambda_sj - lambda_s(j+1)) / h:
      "dpmsolver++"  c_x = sigma_t_next / sigma_t_s0 (VP sigmas), scale = alpha_next, u = -h
      "dpmsolver"    c_x = alpha_next / alpha_s0,                 scale = sigma_t_next, u = h
    order 1: w = -scale (e^u - 1) [1]; order 2: D1 = (m0 - m1) / r0 weighted -scale (e^u - 1) / 2 (midpoint)
    or -scale ((e^u - 1) / u - 1) (heun); order 3: D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1) / (r0 + r1) weighted -scale ((e^u - 1) / u - 1) and -scale ((e^u - 1 - u) / u^2 - 1/2).
    sigma_next = 0 (first order only) gives c_x = 0, w = [1]: the x0 estimate itself.

    Orders 2 ("heun") and 3 integrate an estimate that is linear in lambda exactly. The D2 weight is half
    the one that would integrate a quadratic exactly (-scale (2 (e^u - 1 - u) / u^2 - 1)); minidiff keeps
    it, as diffusers and the authors' code have it, so that runs match theirs.
    """
    order = len(sigmas)
    if order not in (1, 2, 3):
        raise ValueError(f"sigmas: expected the noise levels of 1, 2 or 3 steps, got {order}")
    if sigma_next == 0.0 and order > 1:
        raise ValueError("sigma_next: a step to sigma = 0 (lambda = inf) must be first order")
    alpha_next, sigma_t_next = vp_coefficients(sigma_next)
    alpha_s, sigma_t_s = vp_coefficients(sigmas[0])
    lambdas = [_lambda(s) for s in sigmas]
    h = _lambda(sigma_next) - lambdas[0]
    if algorithm == "dpmsolver++":
        c_x, scale, u = sigma_t_next / sigma_t_s, alpha_next, -h
    else:
        c_x, scale, u = alpha_next / alpha_s, sigma_t_next, h
    phi1, phi2, phi3 = _phi(u)
    a0 = -scale * phi1
    if order == 1:
        return c_x, np.array([a0])
    # The estimates' differences as coefficient vectors over (m0, m1, ...).
    r = [(lambdas[j] - lambdas[j + 1]) / h for j in range(order - 1)]
    d0 = np.eye(order)[0]
    d1_0 = (np.eye(order)[0] - np.eye(order)[1]) / r[0]
    if order == 2:
        a1 = -scale * (0.5 * phi1 if solver_type == "midpoint" else phi2)
        return c_x, a0 * d0 + a1 * d1_0
    d1_1 = (np.eye(order)[1] - np.eye(order)[2]) / r[1]
    d1 = d1_0 + r[0] / (r[0] + r[1]) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r[0] + r[1])
    return c_x, a0 * d0 - scale * phi2 * d1 - scale * phi3 * d2


@exercise("ex10.1")
def dpm_solver_2m_update(x: np.ndarray, m0: np.ndarray, m1: np.ndarray, lambdas: tuple[float, float, float],
                         alphas: tuple[float, float, float], sigmas: tuple[float, float, float]) -> np.ndarray:
    """[E35] One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2, the "midpoint" form), from t_i to t_{i+1}:

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) (m0 + D1 / 2),
        h = lambda_{i+1} - lambda_i,  r = (lambda_i - lambda_{i-1}) / h,  D1 = (m0 - m1) / r.

    x: the VP sample x_i at t_i, shape (B, ...); m0, m1: the data predictions x0_hat at t_i and t_{i-1}
    (same shape and dtype). lambdas, alphas, sigmas: lambda = log(alpha / sigma), alpha_t = sqrt(alpha_bar) and
    sigma_t = sqrt(1 - alpha_bar) at the three times (t_{i-1}, t_i, t_{i+1}), as Python floats; t_{i+1} must
    be a noise level above 0 (lambda finite). m0 + D1 / 2 is the straight line through (lambda_{i-1}, m1)
    and (lambda_i, m0) at the middle of the step, lambda_i + h / 2; the step integrates the linear part of the
    ODE exactly with x0_hat held at that value. With m1 = m0 it is the first-order step, DDIM (E32).
    The update is affine in (x, m0, m1), so it runs as one call of the fused kernel. Returns x_{i+1}, in the
    dtype of x.
    """
    lambdas, alphas, sigmas = (tuple(float(v) for v in seq) for seq in (lambdas, alphas, sigmas))
    if not all(math.isfinite(v) for v in lambdas) or not lambdas[0] < lambdas[1] < lambdas[2]:
        raise ValueError(f"lambdas: expected finite lambda_(i-1) < lambda_i < lambda_(i+1), got {lambdas}")
    # BEGIN SOLUTION ex10.1: the step h, the ratio r of the previous step to it, then the weights of x, m0 and m1
    lam_prev, lam, lam_next = lambdas
    h = lam_next - lam
    r = (lam - lam_prev) / h
    c = -alphas[2] * math.expm1(-h)  # the weight of the x0 prediction held at the midpoint, m0 + (m0 - m1) / (2 r)
    c_x, c_m0, c_m1 = sigmas[2] / sigmas[1], c * (1.0 + 0.5 / r), -c * 0.5 / r
    # END SOLUTION
    return sampler_step(x, m0, m1, StepCoefs(c_x=c_x, c_eps=c_m0, c_z=c_m1))  # one fused pass over the arrays


def _combine(x: np.ndarray, c_x: float, outputs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """c_x x + sum_j w_j m_j with the fused kernel (three arrays per call)."""
    second = outputs[1] if len(outputs) > 1 else None
    out = sampler_step(x, outputs[0], second, StepCoefs(c_x=c_x, c_eps=weights[0],
                                                        c_z=weights[1] if second is not None else 0.0))
    if len(outputs) == 3:
        sampler_step(out, outputs[2], None, StepCoefs(c_x=1.0, c_eps=weights[2]), out=out)
    return out


class DPMSolverMultistepSampler(SigmaSampler):
    """[E35] Multistep DPM-Solver++ (orders 1-3) or DPM-Solver, configured as diffusers'
    DPMSolverMultistepScheduler. One model call per step; stateful (it keeps the last estimates).

    Its own spacing (`dpm_solver_timesteps`), integer timesteps; with use_karras_sigmas the Karras
    levels between the table's sigma_1 and sigma_T at the rounded timesteps of their sigma. The last
    step is first order when final_sigmas_type is "zero" (it ends at sigma = 0), when euler_at_final,
    or, with lower_order_final, when the run has fewer than 15 steps (then the one before it is at
    most second order).
    """

    diffusers_class = "DPMSolverMultistepScheduler"
    stateful = True
    options: ClassVar[dict[str, Option]] = {
        **{k: v for k, v in SCHEDULE_OPTIONS.items() if k != "rescale_betas_zero_snr"},
        "solver_order": Option(2, one_of(1, 2, 3)),
        "prediction_type": PREDICTION_OPTION,
        **THRESHOLD_OPTIONS,
        "algorithm_type": Option("dpmsolver++", one_of(*ALGORITHMS)),
        "solver_type": Option("midpoint", one_of(*SOLVER_TYPES)),
        "lower_order_final": Option(True, a_bool),
        "euler_at_final": Option(False, a_bool),
        "use_karras_sigmas": KARRAS_OPTION,
        **OTHER_SIGMAS_OPTIONS,
        "use_lu_lambdas": Option(False, disabled(False)),
        "use_flow_sigmas": Option(False, disabled(False)),
        "flow_shift": Option(1.0, disabled(1.0)),
        "final_sigmas_type": FINAL_SIGMAS_OPTION,
        "lambda_min_clipped": Option(-math.inf, a_lambda_bound),
        "variance_type": Option(None, disabled(None)),
        **SPACING_OPTIONS,
        "timestep_spacing": Option("linspace", one_of(*TIMESTEP_SPACINGS)),
        "rescale_betas_zero_snr": SCHEDULE_OPTIONS["rescale_betas_zero_snr"],
        "use_dynamic_shifting": Option(False, disabled(False)),
        "time_shift_type": Option("exponential", one_of("exponential")),
    }

    def _validate_config(self) -> None:
        if self.config["algorithm_type"] == "dpmsolver" and self.config["final_sigmas_type"] == "zero":
            raise ValueError("final_sigmas_type: 'zero' needs algorithm_type 'dpmsolver++' (the noise-prediction "
                             "form cannot reach sigma = 0); use final_sigmas_type='sigma_min'")

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """[E3] x_t = alpha_t x0 + sigma_t noise with the run's noise level at t (the table's before set_timesteps)."""
        x0 = _v.float_array(original_samples, "original_samples")
        _v.like(noise, "noise", x0, "original_samples")
        sigma = self._noise_sigmas(t, x0)
        alpha_t = 1.0 / np.sqrt(sigma * sigma + 1.0)
        return alpha_t * x0 + (sigma * alpha_t) * noise

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        cfg, table = self.config, self.sigma_table
        if cfg["use_karras_sigmas"]:
            k, sigmas = self._karras(float(table[1]), float(table[-1]), n)
            k = k - 1.0  # diffusers' count, where it rounds (or, for the cosine schedule, truncates)
            k = np.floor(k) if cfg["beta_schedule"] == "squaredcos_cap_v2" else np.round(k)
            t = k.astype(np.int64) + 1
        else:
            clipped = int(np.sum(-np.log(table[1:]) < cfg["lambda_min_clipped"]))  # steps with lambda_t < bound
            t = dpm_solver_timesteps(cfg["timestep_spacing"], self.T, n, cfg["steps_offset"], last=self.T - clipped)
            sigmas = table[t]
        self.num_inference_steps = int(t.size)
        return t, np.append(sigmas, self._final_sigma())

    def _reset_state(self) -> None:
        self._estimates: list[np.ndarray] = []  # the model's x0 (or eps) estimates of the last steps, newest first

    def _order(self, index: int) -> int:
        """The order of step `index`: solver_order once enough estimates exist, lowered at the end."""
        cfg, n = self.config, len(self.timesteps)
        few = cfg["lower_order_final"] and n < FEW_STEPS
        cap = cfg["solver_order"]
        if index == n - 1 and (cfg["euler_at_final"] or few or cfg["final_sigmas_type"] == "zero"):
            cap = 1
        elif index == n - 2 and few:
            cap = min(cap, 2)
        return min(cap, index + 1)

    def _estimate(self, model_output: np.ndarray, sample: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(x0, m): the x0 estimate (thresholded if configured) and what the solver integrates (x0, or eps)."""
        cfg = self.config
        alpha_t, sigma_t = vp_coefficients(sigma)
        x0, eps = vp_x0_eps(model_output, sample, alpha_t, sigma_t, cfg["prediction_type"])
        if cfg["thresholding"]:
            x0 = dynamic_threshold(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
            eps = (sample - alpha_t * x0) / sigma_t
        return x0, (x0 if cfg["algorithm_type"] == "dpmsolver++" else eps)

    def _sigma_step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any,
                    rng: Any) -> SamplerOutput:
        x0, m = self._estimate(model_output, sample, float(self.sigmas[index]))
        order = self._order(index)
        self._estimates = [m, *self._estimates][: self.config["solver_order"]]
        levels = tuple(float(s) for s in self.sigmas[index - order + 1: index + 1][::-1])  # newest first
        if math.isclose(float(self.sigmas[index + 1]), levels[0], rel_tol=1e-12):
            # Karras levels end at sigma_min, and final_sigmas_type="sigma_min" appends it again: a step over no
            # noise at all, the identity (diffusers reaches it up to rounding, through r = h_prev / h = inf).
            return SamplerOutput(sample.copy(), x0)
        if order == 2 and self.config["algorithm_type"] == "dpmsolver++" and self.config["solver_type"] == "midpoint":
            # DPM-Solver++(2M), the default: exercise 10.1, over the VE levels (sigma_{i-1}, sigma_i, sigma_{i+1})
            ve = (levels[1], levels[0], float(self.sigmas[index + 1]))
            vp = [vp_coefficients(s) for s in ve]  # (alpha_t, sigma_t) at each
            lambdas = tuple(-math.log(s) for s in ve)
            x_next = dpm_solver_2m_update(sample, self._estimates[0], self._estimates[1], lambdas,
                                          tuple(a for a, _ in vp), tuple(s for _, s in vp))
            return SamplerOutput(x_next, x0)
        c_x, weights = dpm_solver_coefficients(levels, float(self.sigmas[index + 1]), self.config["algorithm_type"],
                                               self.config["solver_type"])
        return SamplerOutput(_combine(sample, c_x, self._estimates[:order], weights), x0)
