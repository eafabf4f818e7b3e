"""The sigma-based samplers against exact answers (E35, E36, with E11/E13/E14/E16 in sigma form): the sigma
table and its interpolation in time, Karras' noise levels, EDM's preconditioning by Monte Carlo and by the
exact denoiser, convergence orders of Euler, Heun, EDM's Heun and DPM-Solver++ on Gaussian data (whose
probability-flow ODE has a closed-form solution), DPM-Solver-1 = DDIM, DPM-Solver's exact integration of
a data prediction linear in lambda, Euler ancestral = the VE posterior step and its sample moments, and
the refusals of bad input."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from diffusion_oracle import GaussianData
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from strategies import float_arrays, schedule_and_t, schedules
from tolerances import ROUND_TRIP, assert_close

from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.schedules import NoiseSchedule, linear_betas
from minidiff.samplers.ddim import DDIMSampler
from minidiff.samplers.dpm_solver import DPMSolverMultistepSampler, dpm_solver_2m_update, dpm_solver_coefficients
from minidiff.samplers.edm import (
    EDMHeunSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    ancestral_sigmas,
    edm_heun_step,
)
from minidiff.samplers.sigmas import (
    dpm_solver_timesteps,
    edm_denoiser,
    edm_preconditioning,
    edm_sigmas,
    karras_sigmas,
    sigma_at,
    sigma_sampler_timesteps,
    sigma_table,
    t_from_sigma,
    ve_x0,
    vp_coefficients,
    vp_x0_eps,
)

PREDICTIONS = ("epsilon", "sample", "v_prediction")
SCHEDULE = NoiseSchedule(linear_betas(1000, 1e-4, 0.02))
# Gaussian data N(MU, diag(S^2)) in 2-D, as a one-component mixture (the exact models) and as the oracle.
MU, S = np.array([0.3, -0.5]), np.array([0.5, 1.2])
GAUSSIAN = GaussianMixture(np.ones(1), MU[None], np.diag(S**2)[None])
ORACLE = GaussianData(linear_betas(1000, 1e-4, 0.02), MU, S)


def log_log_slope(ns, errors) -> float:
    """The least-squares slope of log(error) against log(N): -p for a method of order p."""
    return float(np.polyfit(np.log(ns), np.log(errors), 1)[0])


def ve_ode_solution(x_start: np.ndarray, sigma_start: float, sigma_end: float) -> np.ndarray:
    """dx/dsigma = (x - D(x; sigma)) / sigma with D = MU + S^2 / (S^2 + sigma^2) (x - MU), the exact denoiser of
    N(MU, S^2): (x - MU) / sqrt(S^2 + sigma^2) is constant along the solution."""
    return MU + (x_start - MU) * np.sqrt(S**2 + sigma_end**2) / np.sqrt(S**2 + sigma_start**2)


# --- the sigma table and time ----------------------------------------------------------------------


@given(schedules())
def test_sigma_table_is_the_noise_to_signal_ratio(schedule):
    """1 / (1 + sigma_t^2) = alpha_bar_t (a running product of 1 - beta here); alpha_bar_T = 2^-24 stands in
    for 0 after zero-terminal-SNR rescaling, so sigma_T is finite."""
    table = sigma_table(schedule)
    alpha_bars = np.cumprod(1.0 - np.array(schedule.betas))  # betas[0] = 0: alpha_bar_0 = 1
    if schedule.zero_terminal_snr:
        alpha_bars[-1] = 2.0**-24
    assert table.shape == (schedule.T + 1,) and table[0] == 0.0 and np.all(np.isfinite(table))
    assert_close(1.0 / (1.0 + table**2), alpha_bars, dtype=np.float64)


def test_sigma_at_interpolates_the_table_linearly_in_t():
    table = sigma_table(SCHEDULE)
    t = np.arange(1001)
    np.testing.assert_array_equal(sigma_at(table, t), table)
    assert_close(sigma_at(table, t[:-1] + 0.5), (table[:-1] + table[1:]) / 2, dtype=np.float64)


def test_t_from_sigma_inverts_sigma_at_and_is_linear_in_log_sigma():
    """sigma -> t -> sigma at the table's points; the geometric mean of two neighbours maps to their
    midpoint (linear in log sigma); below sigma_1 or above sigma_T it clamps to t = 1 or T."""
    table = sigma_table(SCHEDULE)
    t = np.arange(1, 1001, dtype=np.float64)
    assert_close(t_from_sigma(table, table[1:]), t, dtype=np.float64)
    assert_close(sigma_at(table, t_from_sigma(table, table[1:])), table[1:], dtype=np.float64)
    assert_close(t_from_sigma(table, np.sqrt(table[1:-1] * table[2:])), t[:-1] + 0.5, dtype=np.float64)
    np.testing.assert_array_equal(t_from_sigma(table, [0.0, table[1] / 2, table[-1] * 2]), [1.0, 1.0, 1000.0])


def test_sigma_sampler_spacings():
    """Euler's "linspace" is not rounded (float t, from T down to 1); "leading"/"trailing" are integers."""
    t = sigma_sampler_timesteps("linspace", 1000, 7)
    assert_close(t, 1000.0 - np.arange(7) * 999.0 / 6.0, dtype=np.float64)
    for spacing in ("leading", "trailing"):
        t = sigma_sampler_timesteps(spacing, 1000, 7, 1)
        assert np.all(t == np.round(t)) and np.all(np.diff(t) < 0) and t.min() >= 1 and t.max() <= 1000


@given(T=st.integers(20, 1500), data=st.data())
def test_dpm_solver_spacings_are_steps_of_the_clipped_chain(T, data):
    """n + 1 points over the first `last` steps, the last point dropped: n (or, for "trailing" on a clipped
    chain, fewer) strictly decreasing integer steps in 1..last, the noisiest at `last` for "linspace"."""
    n = data.draw(st.integers(1, T // 2))
    spacing = data.draw(st.sampled_from(("linspace", "leading", "trailing")))
    last = T if spacing == "trailing" else data.draw(st.integers(max(n + 1, T // 2), T))
    t = dpm_solver_timesteps(spacing, T, n, last=last)
    assert t.shape == (n,) and t.dtype == np.int64 and np.all(np.diff(t) < 0) and t.min() >= 1 and t.max() <= last
    if spacing != "leading":
        assert t[0] == last


def test_dpm_solver_trailing_spacing_of_a_clipped_chain_that_leaves_it_is_refused():
    """Steps of T / n counted down from last < T can pass below t = 1 (diffusers would give k = -1)."""
    with pytest.raises(ValueError, match="last"):
        dpm_solver_timesteps("trailing", 25, 2, last=13)


# --- [E36] Karras' noise levels ------------------------------------------------------------------


@given(sigma_min=st.floats(1e-4, 1.0), ratio=st.floats(1.5, 1e5), n=st.integers(2, 60), rho=st.floats(0.5, 12.0))
def test_e36_karras_sigmas_run_from_sigma_max_to_sigma_min_evenly_in_sigma_to_the_1_over_rho(sigma_min, ratio, n,
                                                                                             rho):
    """[E36] The formula reproduces its ends at i = 0 and n - 1 whatever rho, decreases strictly, and its
    levels are evenly spaced in sigma^(1/rho). At i = n - 1 the roots cancel: sigma_min^(1/rho) is the
    difference of terms of size sigma_max^(1/rho), so its relative error is rho (sigma_max / sigma_min)^(1/rho)
    rounding units (the scale passed)."""
    sigma_max = sigma_min * ratio
    sigmas = karras_sigmas(sigma_min, sigma_max, n, rho)
    assert sigmas.shape == (n,) and np.all(np.diff(sigmas) < 0)
    assert_close(sigmas[[0, -1]], [sigma_max, sigma_min], dtype=np.float64,
                 scale=np.array([sigma_max, sigma_min * rho * ratio ** (1.0 / rho)]))
    root = sigmas ** (1.0 / rho)
    assert_close(np.diff(root), np.full(n - 1, (root[-1] - root[0]) / (n - 1)), dtype=np.float64,
                 scale=np.abs(root[0]))


def test_e36_karras_sigmas_with_rho_1_are_evenly_spaced_and_edm_sigmas_end_in_zero():
    """[E36] rho = 1: linspace(sigma_max, sigma_min, n). EDM's levels: 80 down to 0.002, then 0."""
    assert_close(karras_sigmas(0.5, 7.0, 14, rho=1.0), np.linspace(7.0, 0.5, 14), dtype=np.float64)
    sigmas = edm_sigmas(18)
    assert sigmas.shape == (19,) and sigmas[-1] == 0.0
    assert_close(sigmas[[0, -2]], [80.0, 0.002], dtype=np.float64)


# --- [E13][E14] the model's output read at a noise level ------------------------------------------


@settings(max_examples=40)
@given(inputs=schedule_and_t(informative_eps=True), prediction_type=st.sampled_from(PREDICTIONS), data=st.data())
def test_e13_e14_sigma_forms_agree_with_the_parameterizations(inputs, prediction_type, data):
    """[E13][E14] x0 and eps from an eps, x0 or v output, in the VP form (x_t = alpha_t x0 + sigma_t eps) and the
    VE form (x = x_t / alpha_t = x0 + sigma eps), against x0 and eps themselves (v = alpha_t eps - sigma_t x0)."""
    schedule, t = inputs
    x0 = data.draw(float_arrays(np.float64, (2, 3), bound=3.0))
    eps = data.draw(float_arrays(np.float64, (2, 3), bound=3.0))
    sigma = float(sigma_table(schedule)[t])
    alpha_t, sigma_t = vp_coefficients(sigma)
    assert_close([alpha_t, sigma_t], [schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]],
                 dtype=np.float64)
    xt = alpha_t * x0 + sigma_t * eps
    output = {"epsilon": eps, "sample": x0, "v_prediction": alpha_t * eps - sigma_t * x0}[prediction_type]
    scale = (np.abs(x0) + np.abs(eps)) / alpha_t / sigma_t
    got_x0, got_eps = vp_x0_eps(output, xt, alpha_t, sigma_t, prediction_type)
    assert_close(got_x0, x0, scale=scale, tol=ROUND_TRIP, what="VP x0")
    assert_close(got_eps, eps, scale=scale, tol=ROUND_TRIP, what="VP eps")
    assert_close(ve_x0(output, xt / alpha_t, sigma, prediction_type), x0, scale=scale, tol=ROUND_TRIP, what="VE x0")


# --- [E36] EDM's preconditioning -------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.002, 0.2, 1.0, 80.0])
def test_e36_preconditioning_gives_the_network_unit_variance_input_and_target(sigma):
    """[E36] For data y ~ N(0, sigma_data^2) and x = y + sigma n: Var(c_in x) = 1 and the training target
    (y - c_skip x) / c_out has variance 1 (Karras et al. 2022, appendix B.6), by Monte Carlo. Both are
    Gaussian, so the sample variance of M draws has standard error sqrt(2 / M) = 0.0032 for M = 2e5;
    5 standard errors: 0.016."""
    rng = np.random.default_rng(7)
    M, sigma_data = 200_000, 0.5
    y = sigma_data * rng.standard_normal(M)
    x = y + sigma * rng.standard_normal(M)
    c_skip, c_out, c_in, _ = edm_preconditioning(sigma, sigma_data)
    bound = 5 * math.sqrt(2 / M)
    assert abs(np.var(c_in * x) - 1.0) < bound
    assert abs(np.var((y - c_skip * x) / c_out) - 1.0) < bound


@pytest.mark.parametrize("sigma", [0.002, 0.2, 1.0, 80.0])
def test_e36_c_skip_makes_the_target_scale_c_out_smallest(sigma):
    """[E36] Var(y - c x) = (1 - c)^2 sigma_data^2 + c^2 sigma^2 over the skip weight c: c_skip minimizes it
    and the minimum is c_out^2."""
    sigma_data = 0.5
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    def variance(c):
        return (1.0 - c) ** 2 * sigma_data**2 + c**2 * sigma**2
    assert_close(variance(c_skip), c_out**2, dtype=np.float64)
    for c in (c_skip - 1e-3, c_skip + 1e-3):
        assert variance(c) > variance(c_skip)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_e36_edm_denoiser_assembles_the_exact_denoiser_from_the_ideal_network(sigma):
    """[E36] The ideal network F*(u, c_noise) = (D*(x) - c_skip x) / c_out at x = u sqrt(sigma^2 + sd^2),
    sigma = exp(4 c_noise), written out here from Table 1: wrapped, it gives back the exact denoiser D* of a
    Gaussian mixture. For zero-mean Gaussian data of std sd the ideal F is 0: c_skip x alone is exact."""
    gmm, sd = GaussianMixture.example_2d(), 0.5
    x = gmm.sample(np.random.default_rng(3), 64) + sigma * np.random.default_rng(4).standard_normal((64, 2))

    def ideal_network(u, c_noise):
        s = np.exp(4.0 * c_noise)[:, None]  # (B, 1)
        x_in = u * np.sqrt(s**2 + sd**2)
        return (gmm.denoiser(x_in, s[:, 0]) - sd**2 / (s**2 + sd**2) * x_in) * np.sqrt(s**2 + sd**2) / (s * sd)

    expected = gmm.denoiser(x, sigma)
    assert_close(edm_denoiser(ideal_network, sd)(x, sigma), expected, dtype=np.float64,
                 scale=np.abs(expected) + np.abs(x))
    gaussian = GaussianMixture(np.ones(1), np.zeros((1, 2)), sd**2 * np.eye(2)[None])
    assert_close(edm_denoiser(lambda u, c: np.zeros_like(u), sd)(x, sigma), gaussian.denoiser(x, sigma),
                 dtype=np.float64)


# --- [E36] convergence of Euler and Heun on the VE probability-flow ODE --------------------------


def ode_errors(sampler_class, prediction_type, ns):
    """Max error at the last positive sigma (trajectory[-2]; the last step to 0 is plain Euler) against the
    exact solution of dx/dsigma = (x - D) / sigma from x_T = sigma_max z, for N = ns steps."""
    z = np.random.default_rng(0).standard_normal((32, 2))
    model = GAUSSIAN.model(SCHEDULE, prediction_type)
    errors = []
    for n in ns:
        sampler = sampler_class(SCHEDULE, prediction_type=prediction_type)
        sampler.set_timesteps(n)
        x_T = z * sampler.sigmas[0]
        trajectory = sampler.sample(model, z.shape, np.random.default_rng(0), x_T=x_T, dtype=np.float64,
                                    progress=False, return_trajectory=True)
        errors.append(np.abs(trajectory[-2] - ve_ode_solution(x_T, sampler.sigmas[0], sampler.sigmas[-2])).max())
    return errors


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_e36_euler_converges_at_first_order(prediction_type):
    """[E36] Euler's error on the VE ODE of Gaussian data halves as the steps double: log-log slope -1 +- 0.25."""
    ns = [8, 16, 32, 64]
    assert abs(log_log_slope(ns, ode_errors(EulerSampler, prediction_type, ns)) + 1.0) < 0.25


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_e36_heun_converges_at_second_order(prediction_type):
    """[E36] Heun's error falls as 1/N^2: log-log slope -2 +- 0.25."""
    ns = [8, 16, 32, 64]
    assert abs(log_log_slope(ns, ode_errors(HeunSampler, prediction_type, ns)) + 2.0) < 0.25


def test_e36_edm_heun_sampler_converges_at_second_order():
    """[E36] Algorithm 1 of Karras et al. with the exact denoiser D(x, sigma), from sigma_max = 80 to sigma_min =
    0.002 on Karras levels: error at sigma_min against the closed form falls as 1/N^2 (slope -2 +- 0.25); the
    final step to 0 lands on D(x; sigma_min)."""
    z = np.random.default_rng(1).standard_normal((32, 2))
    ns, errors = [8, 16, 32, 64], []
    for n in ns:
        sampler = EDMHeunSampler(n)
        trajectory = sampler.sample(GAUSSIAN.denoiser, z.shape, np.random.default_rng(0), x_T=80.0 * z,
                                    return_trajectory=True)
        errors.append(np.abs(trajectory[-2] - ve_ode_solution(80.0 * z, 80.0, 0.002)).max())
        assert_close(trajectory[-1], GAUSSIAN.denoiser(trajectory[-2], 0.002), dtype=np.float64)
    assert abs(log_log_slope(ns, errors) + 2.0) < 0.25


# --- [E35] DPM-Solver ----------------------------------------------------------------------------


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_e35_dpm_solver_2_converges_at_second_order(solver_type, spacing):
    """[E35] DPM-Solver++(2M) on Gaussian data, whose probability-flow ODE is linear: from x_T to t = 1 the
    exact map is x_1 = m_1 + sqrt(V_1) (x_T - m_T) / sqrt(V_T) per dimension (the oracle's m_t, V_t). Ending
    at sigma_1 (final_sigmas_type "sigma_min") without lowering the last order, the error falls as 1/N^2."""
    z = np.random.default_rng(2).standard_normal((32, 2))
    x_T = ORACLE.m(1000) + np.sqrt(ORACLE.V(1000)) * z
    exact = ORACLE.m(1) + np.sqrt(ORACLE.V(1)) * z
    ns, errors = [40, 80, 160, 320], []
    for n in ns:
        sampler = DPMSolverMultistepSampler(SCHEDULE, solver_order=2, solver_type=solver_type, timestep_spacing=spacing,
                                            final_sigmas_type="sigma_min", lower_order_final=False)
        x = sampler.sample(ORACLE.eps_model, z.shape, np.random.default_rng(0), num_inference_steps=n, x_T=x_T,
                           dtype=np.float64, progress=False)
        errors.append(np.abs(x - exact).max())
    assert abs(log_log_slope(ns, errors) + 2.0) < 0.25


@pytest.mark.parametrize(("algorithm", "prediction_type", "final"), [
    ("dpmsolver++", "epsilon", "zero"), ("dpmsolver++", "v_prediction", "sigma_min"),
    ("dpmsolver++", "sample", "zero"), ("dpmsolver", "epsilon", "sigma_min"),
    ("dpmsolver", "v_prediction", "sigma_min"),
])
def test_e35_e32_dpm_solver_1_is_ddim(algorithm, prediction_type, final):
    """[E35][E32] First-order DPM-Solver (either form) is DDIM with eta = 0 on the same timesteps, step for step:
    both are the exact solution of the ODE with the model's output held constant over the step. Ending at
    sigma = 0 is DDIM's alpha_bar = 1 (set_alpha_to_one); ending at sigma_1 is its alpha_bar_1."""
    model = GaussianMixture.example_2d().model(SCHEDULE, prediction_type)
    dpm = DPMSolverMultistepSampler(SCHEDULE, solver_order=1, algorithm_type=algorithm, prediction_type=prediction_type,
                                    final_sigmas_type=final)
    dpm.set_timesteps(12)
    ddim = DDIMSampler(SCHEDULE, clip_sample=False, prediction_type=prediction_type,
                       set_alpha_to_one=final == "zero")
    ddim.set_timesteps(timesteps=dpm.timesteps)
    x_T = np.random.default_rng(5).standard_normal((16, 2))
    ours = dpm.sample(model, x_T.shape, np.random.default_rng(0), x_T=x_T, dtype=np.float64, progress=False,
                      return_trajectory=True)
    theirs = ddim.sample(model, x_T.shape, np.random.default_rng(0), x_T=x_T, dtype=np.float64, progress=False,
                         return_trajectory=True)
    for i in range(1, len(ours)):
        assert_close(ours[i], theirs[i], dtype=np.float64, scale=np.abs(theirs[i - 1]) + np.abs(theirs[i]),
                     what=f"step {i}")


def polynomial_in_lambda_model(sampler, coefficients):
    """A model whose output at t is c0 + c1 lambda_t (lambda = -log sigma_t): the "data" (or noise) prediction
    along any path is then a known function of lambda alone."""
    table = sampler.sigma_table

    def model(x, t):
        lam = -np.log(table[t])[:, None]  # (B, 1)
        return np.broadcast_to(coefficients[0] + coefficients[1] * lam, x.shape).astype(x.dtype)

    return model


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(("algorithm", "prediction_type"), [("dpmsolver++", "sample"), ("dpmsolver", "epsilon")])
def test_e35_multistep_dpm_solver_integrates_a_prediction_linear_in_lambda_exactly(order, algorithm, prediction_type):
    """[E35] Variation of constants: x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda x0(lambda) dlambda
    (DPM-Solver++), x_t = (alpha_t / alpha_s) x_s - alpha_t int e^-lambda eps(lambda) dlambda (DPM-Solver).
    With x0 (eps) = c0 + c1 lambda the integral is e^(+-lambda) (c0 + c1 lambda -+ c1) (+-1); once a step has
    the estimates its order needs (from step order - 1 on), orders 2 ("heun") and 3 are exact."""
    c = np.array([0.4, -0.3])
    sampler = DPMSolverMultistepSampler(SCHEDULE, solver_order=order, solver_type="heun", algorithm_type=algorithm,
                                        prediction_type=prediction_type, final_sigmas_type="sigma_min",
                                        lower_order_final=False)
    sampler.set_timesteps(12)
    x_T = np.random.default_rng(0).standard_normal((3, 2))
    trajectory = sampler.sample(polynomial_in_lambda_model(sampler, c), x_T.shape, np.random.default_rng(0), x_T=x_T,
                                dtype=np.float64, progress=False, return_trajectory=True)
    k = order - 1
    (alpha_k, sigma_k), (alpha_n, sigma_n) = vp_coefficients(sampler.sigmas[k]), vp_coefficients(sampler.sigmas[-1])
    lam_k, lam_n = -math.log(sampler.sigmas[k]), -math.log(sampler.sigmas[-1])
    if algorithm == "dpmsolver++":
        def antiderivative(lam):
            return math.exp(lam) * (c[0] + c[1] * lam - c[1])
        exact = sigma_n / sigma_k * trajectory[k] + sigma_n * (antiderivative(lam_n) - antiderivative(lam_k))
    else:
        def antiderivative(lam):
            return -math.exp(-lam) * (c[0] + c[1] * lam + c[1])
        exact = alpha_n / alpha_k * trajectory[k] - alpha_n * (antiderivative(lam_n) - antiderivative(lam_k))
    assert_close(trajectory[-1], exact, dtype=np.float64, scale=np.abs(exact) + np.abs(trajectory[k]))


def test_e35_dpm_solver_reaches_sigma_zero_in_closed_form_without_warnings():
    """[E35] The step to sigma = 0 (lambda = +inf) has the limits c_x = 0, w = [1]: the sample becomes the x0
    estimate, with no division by zero or log of zero on the way."""
    assert dpm_solver_coefficients((0.3,), 0.0) == (0.0, pytest.approx(np.array([1.0]), rel=0, abs=0))
    model = GaussianMixture.example_2d().model(SCHEDULE, "epsilon")
    sampler = DPMSolverMultistepSampler(SCHEDULE, solver_order=3)
    sampler.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal((8, 2))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for t in sampler.timesteps:
            x, x0 = sampler.step(model(x, np.full(8, t)), t, x)
    np.testing.assert_array_equal(x, x0)


# --- [E11][E16] Euler ancestral ------------------------------------------------------------------


@given(sigma=st.floats(0.02, 200.0), fraction=st.floats(0.01, 0.99))
def test_e11_euler_ancestral_step_is_the_ve_posterior(sigma, fraction):
    """[E11] In sigma form the forward posterior of x_next = x0 + sigma_next eps given x = x0 + sigma eps' and x0
    is, by Gaussian conditioning, N(x0 + (sigma_next^2 / sigma^2)(x - x0), sigma_next^2 (sigma^2 - sigma_next^2)
    / sigma^2): the Euler step to sigma_down plus sigma_up z is exactly that draw."""
    sigma_next = fraction * sigma
    rng = np.random.default_rng(0)
    x, x0, z = rng.standard_normal((3, 4, 5)) * np.array([sigma, 1.0, 1.0])[:, None, None]
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
    got = x + (sigma_down - sigma) * (x - x0) / sigma + sigma_up * z
    posterior_std = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2)) / sigma
    expected = x0 + sigma_next**2 / sigma**2 * (x - x0) + posterior_std * z
    assert_close(got, expected, dtype=np.float64, scale=np.abs(x) + np.abs(x0) + sigma * np.abs(z))
    sampler = EulerAncestralSampler(SCHEDULE, prediction_type="sample")
    sampler.set_timesteps(10)
    t, s, s_next = sampler.timesteps[3], sampler.sigmas[3], sampler.sigmas[4]
    prev, _ = sampler.step(x0, t, x, noise=z)
    posterior = x0 + s_next**2 / s**2 * (x - x0) + math.sqrt(s_next**2 * (s**2 - s_next**2)) / s * z
    assert_close(prev, posterior, dtype=np.float64, scale=np.abs(x) + np.abs(x0) + np.abs(z))


def ancestral_moments(sampler):
    """The exact mean and variance per dimension after the run, from x_T ~ N(0, init_noise_sigma^2): with the
    exact denoiser D = MU + k (x - MU), k = S^2 / (S^2 + sigma^2), each posterior step (E11) maps
    x - MU -> a (x - MU) + noise, a = k + (sigma_next^2 / sigma^2)(1 - k), noise variance
    sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2: a Gaussian at every step."""
    mean, var = np.zeros(2), np.full(2, sampler.init_noise_sigma**2)
    sigmas = sampler.sigmas
    for sigma, sigma_next in itertools.pairwise(sigmas):
        k = S**2 / (S**2 + sigma**2)
        a = k + sigma_next**2 / sigma**2 * (1.0 - k)
        mean = MU + a * (mean - MU)
        var = a**2 * var + sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    return mean, var


def test_e16_euler_ancestral_samples_have_the_exact_moments_of_the_run():
    """[E16] 20000 samples of a 40-step run with the exact eps model have the run's exact mean and variance
    (`ancestral_moments`) within 5 standard errors: sqrt(var / n) for the mean, var sqrt(2 / n) for the
    variance of a Gaussian."""
    n = 20_000
    sampler = EulerAncestralSampler(SCHEDULE, timestep_spacing="trailing")
    x = sampler.sample(GAUSSIAN.model(SCHEDULE, "epsilon"), (n, 2), np.random.default_rng(11), num_inference_steps=40,
                       dtype=np.float64, progress=False)
    mean, var = ancestral_moments(sampler)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(axis=0) - var) < 5 * var * math.sqrt(2 / n))


def test_e16_euler_ancestral_run_converges_to_the_data_moments_at_first_order():
    """[E16] Each step draws from the posterior at x0 = E[x0 | x], which forgets Var(x0 | x): the variance is
    short by O(1/N), and the exact moments of the run tend to the data's with log-log slope -1 +- 0.25 in the
    variance's error (12% at N = 100, 1.5% at 1000). The mean is off only by the prior's: x_T ~ N(0, sigma_max^2)
    forgets MU, and the factors a = (S^2 + sigma_next^2) / (S^2 + sigma^2) telescope to S^2 / (S^2 + sigma_max^2)."""
    ns, errors = [100, 200, 400, 800], []
    for n in ns:
        sampler = EulerAncestralSampler(SCHEDULE)
        sampler.set_timesteps(n)
        mean, var = ancestral_moments(sampler)
        assert_close(mean - MU, -MU * S**2 / (S**2 + sampler.sigmas[0] ** 2), dtype=np.float64, scale=np.abs(MU))
        errors.append(np.abs(var - S**2).max() / S.max() ** 2)
    assert abs(log_log_slope(ns, errors) + 1.0) < 0.25


# --- Heun's bookkeeping ---------------------------------------------------------------------------


def test_e36_heun_timesteps_repeat_each_interior_step_and_cost_2n_minus_1_calls():
    """[E36] diffusers' layout: t_0, t_1, t_1, ..., t_{N-1}, t_{N-1}; sigmas s_0, s_1, s_1, ..., s_{N-1}, s_{N-1}, 0."""
    euler, heun = EulerSampler(SCHEDULE), HeunSampler(SCHEDULE)
    euler.set_timesteps(5)
    heun.set_timesteps(5)
    np.testing.assert_array_equal(heun.timesteps, np.repeat(euler.timesteps, 2)[1:])
    np.testing.assert_array_equal(heun.sigmas, np.concatenate((np.repeat(euler.sigmas[:-1], 2)[1:], [0.0])))
    calls = []
    heun.sample(lambda x, t: calls.append(t[0]) or x * 0.0, (2, 2), np.random.default_rng(0), progress=False)
    assert len(calls) == 9


# --- float32 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_class", [EulerSampler, HeunSampler, EulerAncestralSampler, DPMSolverMultistepSampler])
def test_float32_runs_stay_float32_and_each_step_matches_float64(sampler_class):
    """A float32 run stays float32 (model input, sample, x0), and every step from a float32 sample equals the
    float64 step from the same values to float32 precision, relative to the magnitudes the step sums."""
    model = GaussianMixture.example_2d().model(SCHEDULE, "epsilon")
    karras = {} if sampler_class is EulerAncestralSampler else {"use_karras_sigmas": True}
    run32, run64 = sampler_class(SCHEDULE, **karras), sampler_class(SCHEDULE, **karras)
    run32.set_timesteps(8)
    run64.set_timesteps(8)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 2)) * run32.init_noise_sigma).astype(np.float32)
    for t in run32.timesteps:
        z = rng.standard_normal(x.shape).astype(np.float32)
        model_input, sigma = run32.scale_model_input(x, t), run32.sigma_of(t)
        out = model(model_input, np.full(16, t))
        prev, x0 = run32.step(out, t, x, noise=z)
        prev64, x0_64 = run64.step(out.astype(np.float64), t, x.astype(np.float64), noise=z.astype(np.float64))
        assert model_input.dtype == prev.dtype == x0.dtype == np.float32
        terms = np.abs(x) * math.sqrt(sigma**2 + 1.0) + np.abs(x0_64) + np.abs(prev64)
        assert_close(x0, x0_64, dtype=np.float32, scale=terms, what="x0")
        assert_close(prev, prev64, dtype=np.float32, scale=terms + np.abs(z), what="sample")
        x = prev


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_class", [EulerSampler, HeunSampler, EulerAncestralSampler, DPMSolverMultistepSampler])
def test_bad_step_calls_are_refused(sampler_class):
    sampler = sampler_class(SCHEDULE)
    x = np.zeros((2, 3))
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.step(x, 1000, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sampler.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sampler.set_timesteps(1001)
    sampler.set_timesteps(10)
    t = sampler.timesteps
    with pytest.raises(ValueError, match="t: "):
        sampler.step(x, 500.5, x, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="model_output"):
        sampler.step(np.zeros((2, 4)), t[0], x, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="model_output"):
        sampler.step(np.zeros((2, 3), np.float32), t[0], x, rng=np.random.default_rng(0))
    if sampler.stateful:
        with pytest.raises(ValueError, match=r"t: .* in order"):
            sampler.step(x, t[1], x)


def test_a_finished_stateful_run_refuses_another_step():
    sampler = DPMSolverMultistepSampler(SCHEDULE)
    sampler.set_timesteps(2)
    x = np.zeros((1, 2))
    for t in sampler.timesteps:
        sampler.step(x, t, x)
    with pytest.raises(ValueError, match="t: the run is over"):
        sampler.step(x, sampler.timesteps[-1], x)


def test_euler_ancestral_needs_noise_or_rng():
    sampler = EulerAncestralSampler(SCHEDULE)
    sampler.set_timesteps(4)
    x = np.zeros((1, 2))
    with pytest.raises(ValueError, match="rng"):
        sampler.step(x, sampler.timesteps[0], x)


@pytest.mark.parametrize(("sampler_class", "key", "value"), [
    (EulerSampler, "use_exponential_sigmas", True),
    (EulerSampler, "use_beta_sigmas", True),
    (EulerSampler, "interpolation_type", "log_linear"),
    (EulerSampler, "timestep_type", "continuous"),
    (EulerSampler, "final_sigmas_type", "last"),
    (EulerSampler, "sigma_min", -1.0),
    (HeunSampler, "beta_schedule", "exp"),
    (HeunSampler, "rescale_betas_zero_snr", True),  # not a key of diffusers' Heun
    (HeunSampler, "clip_sample_range", 0.0),
    (EulerAncestralSampler, "use_karras_sigmas", True),
    (EulerAncestralSampler, "timestep_spacing", "uniform"),
    (DPMSolverMultistepSampler, "algorithm_type", "sde-dpmsolver++"),
    (DPMSolverMultistepSampler, "solver_order", 4),
    (DPMSolverMultistepSampler, "solver_type", "bh2"),
    (DPMSolverMultistepSampler, "use_lu_lambdas", True),
    (DPMSolverMultistepSampler, "use_flow_sigmas", True),
    (DPMSolverMultistepSampler, "variance_type", "learned_range"),
    (DPMSolverMultistepSampler, "use_dynamic_shifting", True),
    (DPMSolverMultistepSampler, "lambda_min_clipped", math.inf),
    (DPMSolverMultistepSampler, "prediction_type", "flow_prediction"),
    (DPMSolverMultistepSampler, "unknown_key", 1),
])
def test_unimplemented_or_unknown_config_values_are_refused_by_key(sampler_class, key, value):
    with pytest.raises(ValueError, match=key):
        sampler_class.from_config({key: value})


def test_dpm_solver_noise_prediction_form_cannot_end_at_sigma_zero():
    with pytest.raises(ValueError, match="final_sigmas_type"):
        DPMSolverMultistepSampler(SCHEDULE, algorithm_type="dpmsolver", final_sigmas_type="zero")


def test_dpm_solver_spacing_that_repeats_a_timestep_is_refused():
    with pytest.raises(ValueError, match="num_inference_steps"):
        DPMSolverMultistepSampler(SCHEDULE, timestep_spacing="leading").set_timesteps(1000)


def test_bad_edm_arguments_are_refused():
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(2.0, 1.0, 10)
    with pytest.raises(ValueError, match="rho"):
        karras_sigmas(0.1, 1.0, 10, rho=0.0)
    with pytest.raises(ValueError, match="n"):
        karras_sigmas(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="sigma"):
        edm_preconditioning(0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        edm_preconditioning(1.0, sigma_data=-0.5)
    with pytest.raises(ValueError, match="num_steps"):
        EDMHeunSampler(0)
    with pytest.raises(ValueError, match="denoiser"):
        EDMHeunSampler(4).step(lambda x, s: x[:, :1], np.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match="i: "):
        EDMHeunSampler(4).step(GAUSSIAN.denoiser, np.zeros((2, 2)), 4)


def test_add_noise_uses_the_run_sigma_and_refuses_other_timesteps():
    """VE: x0 + sigma noise at the run's sigma of t; DPM-Solver (VP): alpha_t x0 + sigma_t noise."""
    x0, noise = np.ones((2, 3)), np.full((2, 3), 2.0)
    euler = EulerSampler(SCHEDULE, use_karras_sigmas=True)
    euler.set_timesteps(6)
    t, sigma = euler.timesteps[2], euler.sigmas[2]
    assert_close(euler.add_noise(x0, noise, t), x0 + sigma * noise, dtype=np.float64)
    with pytest.raises(ValueError, match="t: "):
        euler.add_noise(x0, noise, 999.5)
    dpm = DPMSolverMultistepSampler(SCHEDULE)
    dpm.set_timesteps(6)
    alpha_t, sigma_t = vp_coefficients(dpm.sigmas[1])
    assert_close(dpm.add_noise(x0, noise, np.full(2, dpm.timesteps[1])), alpha_t * x0 + sigma_t * noise,
                 dtype=np.float64)


# --- Exercise 10.1: the DPM-Solver++(2M) update [E35] ----------------------------------------------


def vp_levels(*ve_sigmas):
    """(lambdas, alphas, sigmas) of VE noise levels: lambda = -log sigma, alpha_t = 1 / sqrt(1 + sigma^2),
    sigma_t = sigma alpha_t, written out here."""
    lambdas = tuple(-math.log(s) for s in ve_sigmas)
    alphas = tuple(1.0 / math.sqrt(1.0 + s * s) for s in ve_sigmas)
    return lambdas, alphas, tuple(s * a for s, a in zip(ve_sigmas, alphas, strict=True))


def vp_ode_in_lambda(x_start, lam_start, lam_end, x0_of_lambda):
    """Integrate the VP probability-flow ODE written in lambda with a given data prediction,
    dx/dlambda = -alpha^2 x + alpha x0(lambda), alpha^2 = 1 / (1 + e^(-2 lambda)), by scipy (rtol 1e-12)."""
    def f(lam, y):
        alpha = 1.0 / math.sqrt(1.0 + math.exp(-2.0 * lam))
        return -alpha * alpha * y + alpha * x0_of_lambda(lam).ravel()

    sol = solve_ivp(f, (lam_start, lam_end), x_start.ravel(), method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return sol.y[:, -1].reshape(x_start.shape)


@pytest.mark.exercise("ex10.1")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_e35_e32_dpm_solver_2m_update_with_equal_estimates_is_the_ddim_step(dtype):
    """[E35][E32] With m1 = m0 the difference D1 vanishes and the step is first order: DDIM with eta = 0, written
    as x_next = alpha_next x0 + sigma_next eps_hat with eps_hat = (x - alpha x0) / sigma_t. The result keeps x's
    dtype."""
    rng = np.random.default_rng(20)
    x, m0 = rng.standard_normal((2, 6, 3)).astype(dtype)
    for ve in [(3.0, 1.2, 0.5), (40.0, 20.0, 7.0), (0.3, 0.05, 0.01)]:
        lambdas, alphas, sigmas = vp_levels(*ve)
        got = dpm_solver_2m_update(x, m0, m0.copy(), lambdas, alphas, sigmas)
        assert got.dtype == dtype, f"dpm_solver_2m_update returned {got.dtype} for {np.dtype(dtype)} input"
        eps_hat = (x.astype(np.float64) - alphas[1] * m0) / sigmas[1]
        ddim = alphas[2] * m0 + sigmas[2] * eps_hat
        assert_close(got, ddim, dtype=dtype, scale=np.abs(x) + np.abs(m0) / alphas[1],
                     what=f"levels {ve}, m1 = m0 (first order, DDIM):")


@pytest.mark.exercise("ex10.1")
@pytest.mark.parametrize("ve", [(2.0, 1.0, 0.4), (10.0, 1.5, 1.0), (0.8, 0.3, 0.02)])
def test_e35_dpm_solver_2m_update_is_the_exact_flow_with_x0_at_the_midpoint_of_the_line(ve):
    """[E35] The "midpoint" update integrates the ODE exactly with the data prediction frozen at the straight line
    through (lambda_prev, m1) and (lambda, m0), read at the middle of the step lambda + h / 2. Here that ODE is
    integrated numerically (scipy) in lambda, for steps shorter and longer than the previous one (r != 1)."""
    rng = np.random.default_rng(21)
    x, m0, m1 = rng.standard_normal((3, 4, 2))
    lambdas, alphas, sigmas = vp_levels(*ve)
    middle = 0.5 * (lambdas[1] + lambdas[2])
    frozen = m1 + (m0 - m1) * (middle - lambdas[0]) / (lambdas[1] - lambdas[0])  # the line, at the middle
    expected = vp_ode_in_lambda(x, lambdas[1], lambdas[2], lambda lam: frozen)
    got = dpm_solver_2m_update(x, m0, m1, lambdas, alphas, sigmas)
    err = float(np.abs(got - expected).max())
    assert err < 1e-9, (f"levels {ve}: the step is {err:.2e} away from the exact flow with x0 frozen at "
                        "the line's value at the step's middle (check h, r and D1)")


@pytest.mark.exercise("ex10.1")
def test_e35_dpm_solver_2m_update_has_local_error_of_third_order():
    """[E35] One step with the true data prediction x0(lambda) = c0 + c1 sin(lambda) known at lambda_prev and lambda,
    the previous step 1.5 times the step h (r = 1.5), against the exact flow (scipy): a second-order multistep
    method has local error O(h^3), so the log-log slope of the error against h is 3 (+- 0.3). A wrong weight of
    D1, or r left out, leaves O(h^2) (slopes near 2 here)."""
    c0, c1 = np.array([[0.3, -0.2]]), np.array([[1.0, 0.5]])
    def x0_of(lam):
        return c0 + c1 * math.sin(lam)
    x = np.array([[0.7, -1.1]])
    lam = -0.5
    hs, errors = [0.4, 0.2, 0.1, 0.05], []
    for h in hs:
        ve = tuple(math.exp(-v) for v in (lam - 1.5 * h, lam, lam + h))
        lambdas, alphas, sigmas = vp_levels(*ve)
        got = dpm_solver_2m_update(x, x0_of(lambdas[1]), x0_of(lambdas[0]), lambdas, alphas, sigmas)
        errors.append(float(np.abs(got - vp_ode_in_lambda(x, lambdas[1], lambdas[2], x0_of)).max()))
    slope = log_log_slope(hs, errors)
    assert abs(slope - 3.0) < 0.3, f"local error against h: slope {slope:.2f} (expected 3), errors {errors}"


@pytest.mark.exercise("ex10.1")
def test_e35_dpm_solver_2m_run_converges_at_second_order():
    """[E35] DPM-Solver++(2M) ("midpoint", the default; it calls dpm_solver_2m_update from its second step on) on
    Gaussian data, whose probability-flow ODE has the closed-form solution x_1 = m_1 + sqrt(V_1 / V_T) (x_T - m_T):
    the error at t = 1 falls as 1/N^2 (log-log slope -2 +- 0.25)."""
    z = np.random.default_rng(22).standard_normal((32, 2))
    x_T = ORACLE.m(1000) + np.sqrt(ORACLE.V(1000)) * z
    exact = ORACLE.m(1) + np.sqrt(ORACLE.V(1)) * z
    ns, errors = [40, 80, 160, 320], []
    for n in ns:
        sampler = DPMSolverMultistepSampler(SCHEDULE, final_sigmas_type="sigma_min", lower_order_final=False)
        x = sampler.sample(ORACLE.eps_model, z.shape, np.random.default_rng(0), num_inference_steps=n, x_T=x_T,
                           dtype=np.float64, progress=False)
        errors.append(float(np.abs(x - exact).max()))
    slope = log_log_slope(ns, errors)
    assert abs(slope + 2.0) < 0.25, f"error against steps N = {ns}: slope {slope:.2f} (expected -2), errors {errors}"


# --- Exercise 10.2: EDM's Heun step [E36] ---------------------------------------------------------


class RecordingDenoiser:
    """The exact denoiser of GAUSSIAN (or of a point mass at `point`), recording (x, sigma) of every call."""

    def __init__(self, point=None) -> None:
        self.point = point
        self.calls: list[tuple[np.ndarray, float]] = []

    def __call__(self, x, sigma):
        self.calls.append((x.copy(), float(sigma)))
        if self.point is not None:
            return np.broadcast_to(self.point, x.shape).astype(x.dtype)
        return GAUSSIAN.denoiser(x, sigma).astype(x.dtype)


@pytest.mark.exercise("ex10.2")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_e36_heun_step_to_sigma_zero_is_one_euler_step_onto_the_denoised_sample(dtype):
    """[E36] The last step (sigma_next = 0) cannot evaluate the slope at sigma = 0 (a division by 0): it is the Euler
    step x + (0 - sigma) (x - D(x; sigma)) / sigma = D(x; sigma), with one call of the denoiser, at (x, sigma)."""
    x = (np.random.default_rng(23).standard_normal((5, 2)) * 0.3).astype(dtype)
    denoiser = RecordingDenoiser()
    got = edm_heun_step(denoiser, x, 0.3, 0.0)
    assert got.dtype == dtype, f"edm_heun_step returned {got.dtype} for {np.dtype(dtype)} input"
    assert len(denoiser.calls) == 1, f"the step to sigma = 0 called the denoiser {len(denoiser.calls)} times, not once"
    assert denoiser.calls[0][1] == 0.3, f"the denoiser was called at sigma = {denoiser.calls[0][1]}, not 0.3"
    assert np.isfinite(got).all(), "the step to sigma = 0 returned NaN or inf (a slope evaluated at sigma = 0?)"
    assert_close(got, GAUSSIAN.denoiser(x.astype(np.float64), 0.3), dtype=dtype, scale=np.abs(x) + 1.0,
                 what="the step to sigma = 0 (it should land on D(x; sigma)):")


@pytest.mark.exercise("ex10.2")
def test_e36_heun_step_corrects_with_the_slope_at_the_euler_prediction():
    """[E36] An interior step calls the denoiser twice: at (x, sigma), then at the Euler prediction
    x + (sigma_next - sigma) (x - D(x; sigma)) / sigma and sigma_next (computed here from the first call)."""
    x = np.random.default_rng(24).standard_normal((4, 2)) * 2.0
    denoiser = RecordingDenoiser()
    edm_heun_step(denoiser, x, 2.0, 1.2)
    assert len(denoiser.calls) == 2, f"an interior step called the denoiser {len(denoiser.calls)} times, not twice"
    (x_a, sigma_a), (x_b, sigma_b) = denoiser.calls
    assert sigma_a == 2.0 and sigma_b == 1.2, f"denoiser called at sigmas {sigma_a}, {sigma_b}; expected 2.0, 1.2"
    assert_close(x_a, x, dtype=np.float64, what="first call (the sample itself):")
    prediction = x + (1.2 - 2.0) * (x - GAUSSIAN.denoiser(x, 2.0)) / 2.0
    assert_close(x_b, prediction, dtype=np.float64, scale=np.abs(x) + 1.0, what="second call (the Euler prediction):")


@pytest.mark.exercise("ex10.2")
def test_e36_heun_step_is_exact_when_the_data_is_one_point():
    """[E36] For data at a single point c, D = c and dx/dsigma = (x - c) / sigma has the solution
    x(sigma') = c + (x - c) sigma' / sigma, linear in sigma: both slopes are equal along it, so Heun's step is
    exact. (Averaging with a slope taken at the wrong point or the wrong sigma is not.)"""
    c = np.array([0.4, -1.3])
    x = np.random.default_rng(25).standard_normal((6, 2)) * 5.0
    for sigma, sigma_next in [(5.0, 2.0), (80.0, 0.5), (0.7, 0.69)]:
        got = edm_heun_step(RecordingDenoiser(point=c), x, sigma, sigma_next)
        assert_close(got, c + (x - c) * sigma_next / sigma, dtype=np.float64, scale=np.abs(x) + np.abs(c),
                     what=f"one-point data, sigma {sigma} -> {sigma_next}:")


@pytest.mark.exercise("ex10.2")
def test_e36_heun_steps_converge_at_second_order_on_the_karras_levels():
    """[E36] N Heun steps over Karras' levels (rho = 7) from sigma_max = 80 to sigma_min = 0.002 on Gaussian data,
    against the closed-form solution of the VE ODE ((x - MU) / sqrt(S^2 + sigma^2) is constant): the error at
    sigma_min falls as 1/N^2 (log-log slope -2 +- 0.25), where Euler's would fall as 1/N."""
    z = np.random.default_rng(26).standard_normal((32, 2))
    ns, errors = [8, 16, 32, 64], []
    for n in ns:
        sigmas = karras_sigmas(0.002, 80.0, n)
        x = 80.0 * z
        for sigma, sigma_next in itertools.pairwise(sigmas):
            x = edm_heun_step(GAUSSIAN.denoiser, x, float(sigma), float(sigma_next))
        errors.append(float(np.abs(x - ve_ode_solution(80.0 * z, 80.0, 0.002)).max()))
    slope = log_log_slope(ns, errors)
    assert abs(slope + 2.0) < 0.25, f"error against steps N = {ns}: slope {slope:.2f} (expected -2), errors {errors}"


@pytest.mark.exercise("ex10.2")
def test_e36_heun_step_has_local_error_of_third_order():
    """[E36] One step from sigma = 1 to 1 - h on Gaussian data against the closed form: local error O(h^3), log-log
    slope 3 +- 0.3 (an Euler step, or a wrongly weighted average, leaves O(h^2))."""
    x = np.random.default_rng(27).standard_normal((16, 2)) * 1.5
    hs, errors = [0.4, 0.2, 0.1, 0.05], []
    for h in hs:
        got = edm_heun_step(GAUSSIAN.denoiser, x, 1.0, 1.0 - h)
        errors.append(float(np.abs(got - ve_ode_solution(x, 1.0, 1.0 - h)).max()))
    slope = log_log_slope(hs, errors)
    assert abs(slope - 3.0) < 0.3, f"local error against h: slope {slope:.2f} (expected 3), errors {errors}"


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_step_over_no_noise_is_the_identity(steps):
    """Karras levels end at sigma_min and final_sigmas_type="sigma_min" appends it once more: the last step
    integrates the ODE over an empty interval, so it must return its sample unchanged (at 20 steps it is a
    second-order step, whose ratio of steps r = h_prev / h would be infinite)."""
    gmm = GaussianMixture.example_2d()
    schedule = NoiseSchedule.named("linear", 1000)
    sampler = DPMSolverMultistepSampler(schedule, use_karras_sigmas=True, final_sigmas_type="sigma_min")
    trajectory = sampler.sample(gmm.eps_model(schedule), (8, 2), np.random.default_rng(0), num_inference_steps=steps,
                                dtype=np.float64, progress=False, return_trajectory=True)
    assert sampler.sigmas[-1] == pytest.approx(sampler.sigmas[-2], rel=1e-12)  # equal up to rounding
    np.testing.assert_array_equal(trajectory[-1], trajectory[-2])
    assert np.isfinite(trajectory).all()
