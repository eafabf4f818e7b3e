"""Every sampler against exact answers on the Gaussian-mixture oracle, with no training: the exact eps of
the noised mixture at every level, so the only errors left are the sampler's own.

- Two-sample tests: samples of each sampler against fresh draws from the mixture (means, covariances and
  mixture weights, each within 5 standard errors of the difference of two independent samples).
- Convergence order: from one fixed x_T, each sampler's end point against the probability flow ODE solved by
  minidiff's RK45 at a tight tolerance; the log-log slope of the error against the number of steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minidiff.diffusion import GaussianMixture, NoiseSchedule, linear_betas
from minidiff.diffusion.ode import solve_ivp_rk45
from minidiff.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EDMHeunSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
)

GMM = GaussianMixture.example_2d()
SCHEDULE = NoiseSchedule(linear_betas(1000))  # DDPM's schedule, T = 1000
N_SAMPLES = 4000


def assert_same_distribution(samples: np.ndarray, rng: np.random.Generator, what: str) -> None:
    """Two-sample test against fresh mixture draws. Each statistic is an average of a per-sample term f;
    the difference of the two averages has standard error sqrt(Var f / n_a + Var f / n_b)."""
    fresh = GMM.sample(rng, len(samples))
    assert np.isfinite(samples).all(), f"{what}: non-finite samples"
    centre = np.concatenate([samples, fresh]).mean(axis=0)

    def terms(x):
        d = x - centre
        return {"mean": x, "covariance": np.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], axis=1),
                "weights": GMM.responsibilities(x)}

    a, b = terms(samples), terms(fresh)
    for name in a:
        diff = a[name].mean(axis=0) - b[name].mean(axis=0)
        se = np.sqrt(a[name].var(axis=0) / len(samples) + b[name].var(axis=0) / len(fresh))
        z = np.abs(diff) / se
        assert z.max() < 5, f"{what}: {name} differs from the mixture's by {diff.round(4)} ({z.max():.1f} s.e.)"


EPS_MODEL = GMM.eps_model(SCHEDULE)


@pytest.mark.parametrize(("sampler", "steps"), [
    (DDPMSampler(SCHEDULE, clip_sample=False), 1000),
    (DDIMSampler(SCHEDULE, clip_sample=False, timestep_spacing="trailing"), 50),
    (DPMSolverMultistepSampler(SCHEDULE), 20),
    (HeunSampler(SCHEDULE, use_karras_sigmas=True), 18),
    (EulerAncestralSampler(SCHEDULE, timestep_spacing="trailing"), 100),
], ids=["ddpm-1000", "ddim-50", "dpm-solver++-20", "heun-karras-18", "euler-ancestral-100"])
def test_e32_e35_e36_samplers_with_the_exact_score_draw_the_mixture(sampler, steps):
    """[E16][E32][E35][E36] With the exact eps of the noised mixture, DDPM (1000 steps), DDIM (50),
    DPM-Solver++ (20), Heun on Karras sigmas (18) and Euler ancestral (100) draw the mixture itself."""
    rng = np.random.default_rng(steps)
    samples = sampler.sample(EPS_MODEL, (N_SAMPLES, 2), rng, num_inference_steps=steps, dtype=np.float64,
                             progress=False)
    assert_same_distribution(samples, np.random.default_rng(steps + 1), type(sampler).__name__)


def test_e36_edm_heun_with_the_exact_denoiser_draws_the_mixture():
    """[E36] Karras et al.'s 18-step Heun sampler on the exact denoiser D(x; sigma) = E[x0 | x0 + sigma eps = x]."""
    samples = EDMHeunSampler(18).sample(GMM.denoiser, (N_SAMPLES, 2), np.random.default_rng(3))
    assert_same_distribution(samples, np.random.default_rng(4), "EDMHeunSampler")


# --- convergence order on the probability flow ODE ------------------------------------------------------


def exact_eps(x_vp: np.ndarray, sigma: float) -> np.ndarray:
    """E[eps | x_t = x_vp] where x_t = a x0 + b eps, a = 1 / sqrt(1 + sigma^2), b = sigma a."""
    a = 1.0 / math.sqrt(1.0 + sigma**2)
    return (x_vp - a * GMM.posterior_mean(x_vp, a, sigma * a)) / (sigma * a)


def reference_end_point(x_T_vp: np.ndarray, sigma_max: float, sigma_last: float) -> np.ndarray:
    """The PF ODE in DDIM's variables x_bar = x / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar),
    d x_bar / d sigma = eps(x, sigma) (Song et al. 2021, DDIM's eq. 14), solved in u = log sigma from sigma_max to
    sigma_last by RK45 at rtol = atol = 1e-11; then the denoiser's x0 at sigma_last (what every sampler's last
    step to sigma = 0 returns, from its own x at sigma_last)."""

    def f(u, x_bar):
        sigma = math.exp(u)
        return sigma * exact_eps(x_bar / math.sqrt(1.0 + sigma**2), sigma)

    x_bar_T = x_T_vp * math.sqrt(1.0 + sigma_max**2)
    x_bar = solve_ivp_rk45(f, math.log(sigma_max), math.log(sigma_last), x_bar_T, rtol=1e-11, atol=1e-11).y
    return GMM.denoiser(x_bar, sigma_last)


def on_the_grid(sampler) -> tuple:
    """The exact eps model at the noise level the sampler gives each of its timesteps, and the smallest
    nonzero level it visits."""
    if isinstance(sampler, DDIMSampler):
        sigmas = np.sqrt(SCHEDULE.one_minus_alpha_bars / SCHEDULE.alpha_bars)  # (T + 1,) indexed by t
        level = {float(t): sigmas[t] for t in sampler.timesteps}
    else:
        level = dict(zip(sampler.timesteps.astype(float), sampler.sigmas[:-1], strict=True))

    def model(x, t):
        return exact_eps(x, level[float(t[0])])

    return model, min(s for s in level.values() if s > 0)


SIGMA_MAX = float(np.sqrt(SCHEDULE.one_minus_alpha_bars[-1] / SCHEDULE.alpha_bars[-1]))
ORDER_CASES = {
    "ddim": (lambda: DDIMSampler(SCHEDULE, clip_sample=False, timestep_spacing="trailing"), (20, 40, 100, 200), 1),
    "euler": (lambda: EulerSampler(SCHEDULE, use_karras_sigmas=True), (20, 40, 80, 160), 1),
    "heun": (lambda: HeunSampler(SCHEDULE, use_karras_sigmas=True), (20, 40, 80, 160), 2),
    "dpm-solver++(2M)": (lambda: DPMSolverMultistepSampler(SCHEDULE, use_karras_sigmas=True, lower_order_final=False),
                         (10, 20, 40, 80), 2),
}


@pytest.mark.parametrize("name", list(ORDER_CASES))
def test_e31_e32_e35_e36_convergence_order_against_a_tight_rk45_reference(name):
    """[E31][E32][E35][E36] From one fixed x_T, the error of each deterministic sampler's result against the PF ODE
    solved by RK45 falls like N^-p: the fitted log-log slope is within 0.25 of p = 1 (DDIM, Euler) or 2 (Heun,
    DPM-Solver++(2M)). DDIM runs on divisors of T with trailing spacing (so its t - T // N steps are the listed
    ones); the others on Karras sigmas, whose last nonzero level sigma_min does not depend on N."""
    make, steps, order = ORDER_CASES[name]
    x_T = np.random.default_rng(7).standard_normal((64, 2))
    errors = []
    for n in steps:
        sampler = make()
        sampler.set_timesteps(n)
        model, sigma_last = on_the_grid(sampler)
        # the same x_T: VP samplers (DDIM, DPM-Solver) step x_t itself, VE ones x_t / sqrt(alpha_bar_t)
        vp = isinstance(sampler, (DDIMSampler, DPMSolverMultistepSampler))
        x = x_T if vp else x_T * math.sqrt(1.0 + sampler.sigmas[0] ** 2)
        for t in sampler.timesteps:
            x = sampler.step(model(sampler.scale_model_input(x, t), np.full(len(x), t)), t, x).prev_sample
        reference = reference_end_point(x_T, SIGMA_MAX, sigma_last)
        errors.append(np.sqrt(np.mean((x - reference) ** 2)))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.25, f"{name}: errors {np.array(errors)} give slope {slope:.2f}, expected {order}"
