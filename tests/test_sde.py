"""The SDEs of Song et al. 2021 (E29), the reverse-time SDE (E30) and the probability flow ODE (E31), and their
samplers: the closed-form marginals solve the moment equations and are reached by Euler-Maruyama; the
marginals of the Gaussian-mixture oracle satisfy the Fokker-Planck equation of E29, its time reversal
with E30's drift, and the continuity equation of E31's velocity (all by finite differences); one step
against diffusers' score-SDE schedulers; samplers driven by the exact mixture score reproduce the mixture
(two-sample tests); the probability flow of Gaussian data is the known affine map."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from tolerances import FINITE_DIFFERENCES, ODE_SOLVE, assert_close

from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.schedules import NoiseSchedule, linear_betas
from minidiff.diffusion.sde import VESDE, VPSDE, SubVPSDE
from minidiff.samplers.sde import (
    EulerMaruyamaSampler,
    PredictorCorrectorSampler,
    ProbabilityFlowODE,
    langevin_corrector_step,
    reverse_diffusion_step,
    reverse_euler_maruyama_step,
    simulate_forward_sde,
)

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
GMM = GaussianMixture.example_2d()
H = 1e-5  # central-difference step (FINITE_DIFFERENCES' error analysis)


def central_difference(f, t, h=H):
    return (f(t + h) - f(t - h)) / (2.0 * h)


def noised_gmm(sde, t: float) -> GaussianMixture:
    """p_t of E29 started from the mixture: x(t) = s(t) x0 + n(t) eps."""
    return GMM.noised(float(sde.marginal_mean_coef(t)), float(sde.marginal_std(t)))


def gmm_score(sde):
    """The exact score of p_t, as a model: score_fn(x, t) with t of shape (B,), one time for the batch."""

    def score(x, t):
        assert np.all(t == t[0])
        return noised_gmm(sde, float(t[0])).score(x)

    return score


# --- E29: the closed-form marginal -----------------------------------------------------------------


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t", [0.02, 0.2, 0.5, 0.8, 0.98])
def test_e29_marginal_solves_the_moment_equations(name, t):
    """[E29] For dx = a(t) x dt + g(t) dw from x(0) = x0, E x(t) = s(t) x0 and Var x(t) = n(t)^2 obey
    ds/dt = a s and d n^2/dt = 2 a n^2 + g^2 (Ito: d(x^2) = 2 x dx + g^2 dt). The closed forms, differentiated
    numerically, must satisfy both; so must the transition (r, G) from u = t / 2 (r = 1, G = 0 at t = u)."""
    sde = SDES[name]
    a, g2 = float(sde.drift_coef(t)), float(sde.diffusion(t)) ** 2
    s, n2 = float(sde.marginal_mean_coef(t)), float(sde.marginal_std(t)) ** 2
    ds = central_difference(sde.marginal_mean_coef, t)
    dn2 = central_difference(lambda u: sde.marginal_std(u) ** 2, t)
    assert_close(ds, a * s, scale=abs(a * s), tol=FINITE_DIFFERENCES, what="ds/dt")
    assert_close(dn2, 2 * a * n2 + g2, scale=abs(2 * a * n2) + g2, tol=FINITE_DIFFERENCES, what="dn^2/dt")
    u = t / 2
    r, G = (float(v) for v in sde.transition(u, t))
    dr = central_difference(lambda v: sde.transition(u, v)[0], t)
    dG2 = central_difference(lambda v: sde.transition(u, v)[1] ** 2, t)
    assert_close(dr, a * r, scale=abs(a * r), tol=FINITE_DIFFERENCES, what="dr/dt")
    assert_close(dG2, 2 * a * G**2 + g2, scale=abs(2 * a * G**2) + g2, tol=FINITE_DIFFERENCES, what="dG^2/dt")
    assert float(sde.transition(u, u)[0]) == 1.0 and float(sde.transition(u, u)[1]) == 0.0


@pytest.mark.parametrize("name", SDES)
def test_e29_marginal_starts_at_the_data(name):
    """[E29] At t = 0 the marginal is the point mass at x0: s(0) = 1, n(0) = 0."""
    sde = SDES[name]
    assert float(sde.marginal_mean_coef(0.0)) == 1.0
    assert float(sde.marginal_std(0.0)) == 0.0


def test_e29_sub_vp_variance_stays_below_vp():
    """[E29] sub-VP: n^2 = (1 - s^2)^2 <= 1 - s^2, the VP variance for the same beta(t), with equality only at
    t = 0; both share the drift, so s(t) is the same."""
    t = np.linspace(0.01, 1.0, 50)
    vp, subvp = VPSDE(), SubVPSDE()
    assert_close(subvp.marginal_mean_coef(t), vp.marginal_mean_coef(t))
    assert np.all(subvp.marginal_std(t) ** 2 < vp.marginal_std(t) ** 2)


def test_e29_vp_sde_is_the_limit_of_the_ddpm_linear_chain():
    """[E29, E5] The VP SDE with beta(t) = 0.1 + 19.9 t is the T -> infinity limit of DDPM's linear schedule
    beta_i = beta(.) / T: discrete_betas(1000) is DDPM's 1e-4..0.02, and alpha_bar_i = prod (1 - beta_i) tends
    to s(i / T)^2. log alpha_bar_i = sum log(1 - beta_i) = -sum beta_i - sum beta_i^2 / 2 - ..., and sum beta_i
    is a Riemann sum of int beta: both errors are O(1 / T), so doubling T halves the gap."""
    sde = VPSDE()
    assert_close(sde.discrete_betas(1000), linear_betas(1000))
    gaps = []
    for T in (250, 500, 1000, 2000):
        i = np.arange(1, T + 1)
        alpha_bars = NoiseSchedule(sde.discrete_betas(T)).alpha_bars[i]
        gaps.append(np.max(np.abs(alpha_bars - sde.marginal_mean_coef(i / T) ** 2)))
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert gaps[-1] < 5e-3 and np.all(np.abs(ratios - 2.0) < 0.1), (gaps, ratios)


@pytest.mark.parametrize("name", SDES)
def test_e29_euler_maruyama_reaches_the_closed_form_marginal(name):
    """[E29] The forward SDE simulated by Euler-Maruyama from a point x0 reaches N(s(t) x0, n(t)^2 I): the sample
    mean within 5 standard errors sqrt(n^2 / N) and the sample variance within 5 sqrt(2 / (N - 1)) n^2 (the
    law is exactly Gaussian), plus the scheme's own O(dt) bias. That bias comes from the moment recursion of
    Euler-Maruyama, m <- (1 + a dt) m, V <- (1 + a dt)^2 V + g^2 dt (from a(t) and g(t) alone, not from the
    closed form), and must itself be below one standard error: the variance is a left Riemann sum of g^2, low
    by ~ dt g^2 / (2 V) d(log g^2)/dt, largest for sub-VP at t = 0.1 (g^2 ~ t there): 0.9% against the 1.4%
    standard error of N = 10^4 samples."""
    sde, N, dt = SDES[name], 10_000, 5e-4
    x0 = np.tile([1.5, -0.5], (N, 1))  # (N, 2)
    for seed, t_end in enumerate((0.1, 0.4, 1.0)):
        steps = round(t_end / dt)
        x = simulate_forward_sde(sde, x0, steps, np.random.default_rng(seed), t_end=t_end)  # (N, 2)
        m_em, v_em = x0[0].copy(), 0.0
        for i in range(steps):
            a, g2 = float(sde.drift_coef(i * dt)), float(sde.diffusion(i * dt)) ** 2
            m_em, v_em = (1 + a * dt) * m_em, (1 + a * dt) ** 2 * v_em + g2 * dt
        mean, std = sde.marginal(x0[:1], t_end)  # (1, 2) each
        m, v = mean[0], std[0, 0] ** 2
        se_m, se_v = math.sqrt(v / N), v * math.sqrt(2 / (N - 1))
        assert np.all(np.abs(m_em - m) <= se_m) and abs(v_em - v) <= se_v, (t_end, m_em, m, v_em, v)
        assert np.all(np.abs(x.mean(axis=0) - m) <= 5 * se_m + np.abs(m_em - m)), (t_end, x.mean(0), m)
        assert np.all(np.abs(x.var(axis=0, ddof=1) - v) <= 5 * se_v + abs(v_em - v)), (t_end, x.var(0), v)


def test_e29_forward_simulation_steps_and_replay():
    """[E29] return_trajectory gives x_0 = x0, then every step; the first is x0 + f(x0, 0) dt + g(0) sqrt(dt) z
    with z the first draw of the seed (Euler-Maruyama evaluates f and g at the left end); the same seed replays
    the run bit for bit."""
    x0 = GMM.sample(np.random.default_rng(0), 5)
    for sde in SDES.values():
        path = simulate_forward_sde(sde, x0, 20, np.random.default_rng(1), t_end=0.5, return_trajectory=True)
        end = simulate_forward_sde(sde, x0, 20, np.random.default_rng(1), t_end=0.5)
        assert path.shape == (21, 5, 2)
        np.testing.assert_array_equal(path[0], x0)
        np.testing.assert_array_equal(path[-1], end)
        z, dt = np.random.default_rng(1).standard_normal(x0.shape), 0.5 / 20
        first = x0 + float(sde.drift_coef(0.0)) * x0 * dt + float(sde.diffusion(0.0)) * math.sqrt(dt) * z
        assert_close(path[1], first, scale=np.abs(x0) + np.abs(first))


@pytest.mark.parametrize("name", SDES)
def test_e29_prior(name):
    """[E29] The prior: N(0, I) for VP and sub-VP, N(0, n(1)^2 I) = N(0, (sigma_max^2 - sigma_min^2) I) for VE
    (the law at t = 1 of x0 = 0); its log density summed per example against scipy's; its samples are
    prior_std times the seed's standard normal draws."""
    sde = SDES[name]
    std = float(sde.marginal_std(1.0)) if name == "ve" else 1.0
    assert_close(sde.prior_std, std)
    x = np.random.default_rng(2).standard_normal((4, 2, 3)) * 3.0 * std
    expected = norm.logpdf(x, scale=std).reshape(4, -1).sum(axis=1)
    assert_close(sde.prior_log_prob(x), expected, scale=np.abs(norm.logpdf(x, scale=std)).reshape(4, -1).sum(axis=1))
    draws = sde.prior_sample(np.random.default_rng(3), (4, 2, 3))
    assert_close(draws, np.random.default_rng(3).standard_normal((4, 2, 3)) * std)


# --- E29, E30, E31: the Fokker-Planck equations of the GMM's marginals -----------------------------------


def fokker_planck_points(sde, t: float) -> np.ndarray:
    """Points where p_t has mass and beyond: x(t) of mixture samples spread by 1.3."""
    rng = np.random.default_rng(round(1000 * t))
    x0 = GMM.sample(rng, 8) * 1.3
    return float(sde.marginal_mean_coef(t)) * x0 + float(sde.marginal_std(t)) * rng.standard_normal(x0.shape)


def divergence_by_differences(field, x: np.ndarray) -> np.ndarray:
    """sum_i d field_i / d x_i by central differences, per example: (n,)."""
    eye = np.eye(x.shape[1])
    return sum((field(x + H * eye[i]) - field(x - H * eye[i]))[:, i] / (2 * H) for i in range(x.shape[1]))


def log_p_terms(sde, t: float, x: np.ndarray):
    """d/dt log p_t(x) (central difference in t), grad log p_t and laplacian of log p_t (the oracle's)."""
    dlogp = central_difference(lambda u: noised_gmm(sde, u).log_prob(x), t)
    p = noised_gmm(sde, t)
    return dlogp, p.score(x), np.trace(p.score_jacobian(x), axis1=1, axis2=2)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_e29_mixture_marginals_solve_the_fokker_planck_equation(name, t):
    """[E29] The marginals of dx = f dt + g dw obey dp/dt = -div(p f) + g^2/2 lap p, i.e. for log p:
    d log p / dt = -div f - f . grad log p + g^2/2 (lap log p + |grad log p|^2). With the mixture's p_t (its
    noised version by s(t), n(t)), f = a(t) x and g(t), both sides must agree at every point."""
    sde = SDES[name]
    x = fokker_planck_points(sde, t)
    dlogp, score, lap = log_p_terms(sde, t, x)
    g2 = float(sde.diffusion(t)) ** 2
    terms = [-divergence_by_differences(lambda y: sde.drift(y, t), x), -np.sum(sde.drift(x, t) * score, axis=1),
             0.5 * g2 * lap, 0.5 * g2 * np.sum(score**2, axis=1)]
    assert_close(dlogp, sum(terms), scale=sum(np.abs(term) for term in terms), tol=FINITE_DIFFERENCES)


@pytest.mark.exercise("ex06.2")
@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_e30_reverse_drift_runs_the_fokker_planck_equation_backwards(name, t):
    """[E30] Run backwards (tau = 1 - t), dx = f_rev dt + g dw_bar has the Fokker-Planck equation
    -dp/dt = div(p f_rev) + g^2/2 lap p, i.e. -d log p / dt = div f_rev + f_rev . grad log p + g^2/2 (lap log p
    + |grad log p|^2). With f_rev = reverse_drift(x, t, exact score) and its divergence by central differences,
    the mixture's p_t must satisfy it: the reverse SDE has the forward marginals (Anderson 1982)."""
    sde = SDES[name]
    x = fokker_planck_points(sde, t)
    dlogp, score, lap = log_p_terms(sde, t, x)
    g2 = float(sde.diffusion(t)) ** 2
    def f_rev(y):
        return sde.reverse_drift(y, t, noised_gmm(sde, t).score(y))
    terms = [divergence_by_differences(f_rev, x), np.sum(f_rev(x) * score, axis=1), 0.5 * g2 * lap,
             0.5 * g2 * np.sum(score**2, axis=1)]
    assert_close(-dlogp, sum(terms), scale=sum(np.abs(term) for term in terms), tol=FINITE_DIFFERENCES)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_e31_probability_flow_velocity_solves_the_continuity_equation(name, t):
    """[E31] A deterministic flow with velocity v moves densities by dp/dt = -div(p v), i.e.
    d log p / dt = -div v - v . grad log p. With v = probability_flow_drift(x, t, exact score), the mixture's p_t
    must satisfy it: the probability flow ODE has the marginals of E29."""
    sde = SDES[name]
    x = fokker_planck_points(sde, t)
    dlogp, score, _ = log_p_terms(sde, t, x)
    def velocity(y):
        return sde.probability_flow_drift(y, t, noised_gmm(sde, t).score(y))
    terms = [-divergence_by_differences(velocity, x), -np.sum(velocity(x) * score, axis=1)]
    assert_close(dlogp, sum(terms), scale=sum(np.abs(term) for term in terms), tol=FINITE_DIFFERENCES)


@pytest.mark.exercise("ex06.2")
@pytest.mark.parametrize("name", SDES)
def test_e30_e31_reverse_and_probability_flow_drifts_differ_by_half_the_score_term(name):
    """[E30, E31] f_rev = f - g^2 score and f_pf = f - g^2 score / 2, so f_rev - f = 2 (f_pf - f) = -g^2 score,
    for any score, per example times t of shape (B,)."""
    sde = SDES[name]
    rng = np.random.default_rng(3)
    x, score, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), np.array([0.1, 0.4, 0.7, 1.0])
    f, g2 = sde.drift(x, t), sde.diffusion(t)[:, None] ** 2
    rev, pf = sde.reverse_drift(x, t, score), sde.probability_flow_drift(x, t, score)
    assert_close(rev - f, -g2 * score, scale=np.abs(rev) + np.abs(f))
    assert_close(pf - f, -0.5 * g2 * score, scale=np.abs(pf) + np.abs(f))


@pytest.mark.exercise("ex06.2")
def test_e30_reverse_drift_at_points_by_hand():
    """[E30] f - g^2 score written out for each SDE, on x of shape (B, 2, 3), with one time per example (shape
    (B,)) and with one time for the whole batch: VP f = -beta x / 2, g^2 = beta = 0.1 + 19.9 t; sub-VP the same f
    and g^2 = beta (1 - exp(-2 (0.1 t + 19.9 t^2 / 2))); VE f = 0, g^2 = d sigma^2 / dt = 2 log(50 / 0.01) sigma^2
    with sigma = 0.01 (50 / 0.01)^t. The result keeps x's dtype (float32 in, float32 out)."""
    rng = np.random.default_rng(11)
    x, score = rng.standard_normal((2, 4, 2, 3))  # (B, 2, 3) each
    t = np.array([0.0, 0.25, 0.6, 1.0])
    beta, sigma = 0.1 + 19.9 * t, 0.01 * (50 / 0.01) ** t
    by_hand = {  # (a(t), g(t)^2), shape (B,) each
        "vp": (-0.5 * beta, beta),
        "subvp": (-0.5 * beta, beta * (1 - np.exp(-2 * (0.1 * t + 0.5 * 19.9 * t**2)))),
        "ve": (np.zeros(4), 2 * math.log(50 / 0.01) * sigma**2),
    }
    for name, (a, g2) in by_hand.items():
        sde = SDES[name]
        drift, pull = a[:, None, None] * x, g2[:, None, None] * score  # f and g^2 score, (B, 2, 3)
        scale = np.abs(drift) + np.abs(pull)
        assert_close(sde.reverse_drift(x, t, score), drift - pull, scale=scale,
                     what=f"{name} reverse drift f - g^2 score with one time per example:")
        for i in range(len(t)):  # the whole batch at the time t[i]
            assert_close(sde.reverse_drift(x, float(t[i]), score), a[i] * x - g2[i] * score,
                         scale=np.abs(a[i] * x) + np.abs(g2[i] * score),
                         what=f"{name} reverse drift f - g^2 score at t = {t[i]} for the batch:")
        out = sde.reverse_drift(x.astype(np.float32), t, score.astype(np.float32))
        assert out.dtype == np.float32, f"{name}: float32 x and score gave a {out.dtype} drift (keep x's dtype)"


# --- one step against diffusers' score-SDE schedulers -------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("t", [1.0, 0.5, 0.02])
def test_e30_euler_maruyama_step_matches_diffusers_score_sde_vp(t):
    """[E29, E30] diffusers' ScoreSdeVpScheduler.step_pred (Song et al.'s VP code): score = -eps / n(t),
    drift -beta x / 2, g = sqrt(beta), one Euler-Maruyama step of dt = -1/N of the reverse SDE. minidiff's VP
    coefficients and reverse step from t to t - 1/N must give its (x, x_mean) with the same noise."""
    N, rng = 100, np.random.default_rng(4)
    x, eps_out, noise = (rng.standard_normal((3, 2, 4)) for _ in range(3))  # (B, 2, 4) each
    import torch
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler
    from reference.diffusers_runs import fixed_noise

    scheduler = ScoreSdeVpScheduler(beta_min=0.1, beta_max=20.0)
    scheduler.set_timesteps(N)
    with fixed_noise(scheduler, torch.from_numpy(noise)):
        ref, ref_mean = scheduler.step_pred(torch.from_numpy(eps_out), torch.from_numpy(x),
                                            torch.full((3,), t, dtype=torch.float64))
    sde = VPSDE(0.1, 20.0)
    score = -eps_out / sde.marginal_std(t)
    out, out_mean = reverse_euler_maruyama_step(sde, x, t, t - 1.0 / N, score, noise)
    scale = np.abs(x) + np.abs(score) * 20 + np.abs(noise)
    assert_close(out_mean, ref_mean.numpy(), scale=scale)
    assert_close(out, ref.numpy(), scale=scale)


@pytest.mark.torch
@pytest.mark.parametrize("index", [1, 50, 99])
def test_e30_e25_reverse_diffusion_and_langevin_steps_match_diffusers_score_sde_ve(index):
    """[E30, E25] diffusers' ScoreSdeVeScheduler (Song et al.'s VE predictor-corrector): step_pred is the
    reverse-diffusion step between its noise levels sigma_i and sigma_{i-1} (G^2 = sigma_i^2 - sigma_{i-1}^2),
    step_correct the Langevin step with delta = 2 (snr ||z|| / ||score||)^2 (norms averaged over the batch).
    minidiff's steps between the times of those sigmas, and its corrector with alpha = 1, must match. diffusers
    keeps the sigmas and the Langevin step size in float32, so the comparison is at float32 tolerance."""
    N, snr, rng = 100, 0.16, np.random.default_rng(5)
    x, score, noise = (rng.standard_normal((3, 2, 4)) for _ in range(3))  # (B, 2, 4) each
    import torch
    from diffusers.schedulers.scheduling_sde_ve import ScoreSdeVeScheduler
    from reference.diffusers_runs import fixed_noise

    scheduler = ScoreSdeVeScheduler(num_train_timesteps=N, snr=snr, sigma_min=0.01, sigma_max=50.0)
    scheduler.set_timesteps(N)
    scheduler.set_sigmas(N)
    with fixed_noise(scheduler, torch.from_numpy(noise)):
        ref, ref_mean = scheduler.step_pred(torch.from_numpy(score), (index + 0.5) / (N - 1), torch.from_numpy(x),
                                            return_dict=False)
        (ref_corrected,) = scheduler.step_correct(torch.from_numpy(score), torch.from_numpy(x), return_dict=False)
    sde = VESDE(0.01, 50.0)
    sigmas = scheduler.discrete_sigmas.double().numpy()
    # sigma(t) = 0.01 (50 / 0.01)^t solved for t (clipped to [0, 1]: the end sigmas are rounded to float32)
    t, t_next = np.clip(np.log(sigmas[[index, index - 1]] / 0.01) / math.log(50.0 / 0.01), 0.0, 1.0)
    out, out_mean = reverse_diffusion_step(sde, x, t, t_next, score, noise)
    scale = np.abs(x) + np.abs(score) * sigmas[index] ** 2 + np.abs(noise) * sigmas[index]
    assert_close(out_mean, ref_mean.numpy(), dtype=np.float32, scale=scale)
    assert_close(out, ref.numpy(), dtype=np.float32, scale=scale)
    corrected, _ = langevin_corrector_step(x, score, snr, 1.0, noise)
    assert_close(corrected, ref_corrected.numpy(), dtype=np.float32, scale=np.abs(x) + np.abs(score) + np.abs(noise))


# --- the samplers reproduce the mixture -------------------------------------------------------------------


def assert_same_law(samples: np.ndarray, reference: np.ndarray, gmm: GaussianMixture) -> None:
    """Two independent samples of one law in R^2: their means, covariances and mixture weights (the mean
    responsibilities p(k | x) under the mixture) agree within 5 standard errors of the difference. Each
    statistic is a mean of i.i.d. terms u (x_i, (x_i - m_i)(x_j - m_j), r_k(x)), whose standard error is
    sqrt(var(u) / N); the two samples' add in quadrature."""

    def terms(x):
        centred = x - x.mean(axis=0)  # (N, 2)
        products = (centred[:, :, None] * centred[:, None, :]).reshape(len(x), -1)  # (N, 4)
        return {"mean": x, "covariance": products, "weights": gmm.responsibilities(x)}

    a, b = terms(samples), terms(reference)
    for what in a:
        diff = a[what].mean(axis=0) - b[what].mean(axis=0)
        se = np.sqrt(a[what].var(axis=0) / len(samples) + b[what].var(axis=0) / len(reference))
        assert np.all(np.abs(diff) <= 5 * se), f"{what}: difference {diff} vs 5 s.e. {5 * se}"


def target(sde, eps: float, n: int) -> np.ndarray:
    """Fresh samples of p_eps, the law the samplers stop at (the mixture noised by n(eps) ~ 1e-2)."""
    return noised_gmm(sde, eps).sample(np.random.default_rng(99), n)


SAMPLE_SIZE, STEPS = 3000, 400


@pytest.mark.exercise("ex06.2")
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_e30_euler_maruyama_with_the_exact_score_samples_the_mixture(name):
    """[E30] The reverse SDE by Euler-Maruyama from the prior, driven by the exact score of p_t, ends at the
    mixture (two-sample test; 400 steps leave a bias well below the 5 s.e. of 3000 samples)."""
    sde = SDES[name]
    sampler = EulerMaruyamaSampler(sde, STEPS)
    x = sampler.sample(gmm_score(sde), (SAMPLE_SIZE, 2), np.random.default_rng(6), progress=False)
    assert_same_law(x, target(sde, sampler.eps, SAMPLE_SIZE), GMM)


@pytest.mark.parametrize(("name", "predictor"), [("vp", "reverse_diffusion"), ("ve", "euler_maruyama")])
def test_e30_e25_predictor_corrector_with_the_exact_score_samples_the_mixture(name, predictor):
    """[E30, E25] Predictor-corrector (a reverse-SDE predictor, one Langevin corrector step at snr 0.16 at every
    time), driven by the exact score, ends at the mixture (two-sample test)."""
    sde = SDES[name]
    sampler = PredictorCorrectorSampler(sde, STEPS, predictor=predictor)
    x = sampler.sample(gmm_score(sde), (SAMPLE_SIZE, 2), np.random.default_rng(7), progress=False)
    assert_same_law(x, target(sde, sampler.eps, SAMPLE_SIZE), GMM)


@pytest.mark.parametrize("name", SDES)
def test_e31_probability_flow_ode_transports_the_prior_to_the_mixture(name):
    """[E31] The probability flow ODE with the exact score, from prior samples at t = 1 to eps, ends at the
    mixture (two-sample test)."""
    sde = SDES[name]
    sampler = ProbabilityFlowODE(sde)
    x = sampler.sample(gmm_score(sde), (SAMPLE_SIZE, 2), np.random.default_rng(8), progress=False)
    assert_same_law(x, target(sde, sampler.eps, SAMPLE_SIZE), GMM)


def test_samplers_replay_and_trajectories():
    """A seed replays a stochastic run exactly (with or without a progress bar); return_trajectory starts at x(1)
    and ends at the sample; with denoise the last step adds no noise (the trajectory's last step is
    deterministic given the one before); dtype float32 stays float32."""
    sde = VPSDE()
    score = gmm_score(sde)
    sampler = EulerMaruyamaSampler(sde, 10)
    path = sampler.sample(score, (4, 2), np.random.default_rng(1), progress=False, return_trajectory=True)
    end = sampler.sample(score, (4, 2), np.random.default_rng(1), progress=True)
    assert path.shape == (11, 4, 2)
    np.testing.assert_array_equal(path[-1], end)
    np.testing.assert_array_equal(path[0], sde.prior_sample(np.random.default_rng(1), (4, 2)))
    t, t_next = sampler.times[-2:]
    _, x_mean = reverse_euler_maruyama_step(sde, path[-2], t, t_next, score(path[-2], np.full(4, t)), np.zeros((4, 2)))
    np.testing.assert_array_equal(path[-1], x_mean)
    for other in (PredictorCorrectorSampler(sde, 5), ProbabilityFlowODE(sde)):
        x32 = other.sample(score, (4, 2), np.random.default_rng(2), progress=True, dtype=np.float32)
        assert x32.dtype == np.float32
        np.testing.assert_array_equal(x32, other.sample(score, (4, 2), np.random.default_rng(2), progress=False,
                                                        dtype=np.float32))


# --- E31: Gaussian data, where the flow is known -------------------------------------------------------------

MU, S = np.array([0.7, -1.2, 0.0]), np.array([0.3, 1.0, 2.5])


def gaussian_moments(sde, t: float):
    """Data N(MU, S^2) per dimension: p_t = N(s MU, s^2 S^2 + n^2)."""
    s, n = float(sde.marginal_mean_coef(t)), float(sde.marginal_std(t))
    return s * MU, s**2 * S**2 + n**2


def gaussian_score(sde):
    def score(x, t):
        m, v = gaussian_moments(sde, float(t[0]))
        return -(x - m) / v

    return score


@pytest.mark.parametrize("name", SDES)
def test_e31_probability_flow_of_gaussian_data_is_the_affine_map(name):
    """[E31] For Gaussian data the flow is affine: with u = x - m_t, du/dt = a u + g^2 u / (2 V) = u V' / (2 V)
    (since V' = 2 a V + g^2), so x(t) = m_t + sqrt(V_t / V_u) (x(u) - m_u). Decoding (1 -> eps) and encoding
    (eps -> 1) must follow that map, RK45 at rtol = atol = 1e-10."""
    sde = SDES[name]
    ode = ProbabilityFlowODE(sde, rtol=1e-10, atol=1e-10)
    (m1, v1), (m_eps, v_eps) = gaussian_moments(sde, 1.0), gaussian_moments(sde, ode.eps)
    latent = np.random.default_rng(9).standard_normal((5, 3)) * np.sqrt(v1) + m1  # (5, 3)
    decoded = ode.decode(gaussian_score(sde), latent)
    assert_close(decoded, m_eps + np.sqrt(v_eps / v1) * (latent - m1), tol=ODE_SOLVE)
    data = np.random.default_rng(10).standard_normal((5, 3)) * np.sqrt(v_eps) + m_eps
    encoded = ode.encode(gaussian_score(sde), data)
    assert_close(encoded, m1 + np.sqrt(v1 / v_eps) * (data - m_eps), tol=ODE_SOLVE)
    path = ode.sample(gaussian_score(sde), (5, 3), np.random.default_rng(0), x_T=latent, progress=False,
                      return_trajectory=True)
    ts = ode.last_result.ts
    assert ts[0] == 1.0 and ts[-1] == ode.eps and path.shape == (len(ts), 5, 3)
    m_t, v_t = (np.stack(a) for a in zip(*(gaussian_moments(sde, float(t)) for t in ts), strict=True))
    assert_close(path, m_t[:, None] + np.sqrt(v_t / v1)[:, None] * (latent - m1), tol=ODE_SOLVE)


@pytest.mark.exercise("ex06.2")
@pytest.mark.parametrize("name", SDES)
def test_e30_reverse_sde_with_the_exact_gaussian_score_passes_through_every_marginal(name):
    """[E30] Data N(MU, S^2) per dimension has p_t = N(m_t, V_t) in closed form and the score -(x - m_t) / V_t.
    The reverse SDE started from p_1 and driven by that score must pass through p_t at every t (Anderson 1982).
    Its Euler-Maruyama step x - [a x + g^2 (x - m_t) / V_t] dt + g sqrt(dt) z is linear, so the iterates stay
    Gaussian with moments mu <- c mu + g^2 dt m_t / V_t, v <- c^2 v + g^2 dt, c = 1 - a dt - g^2 dt / V_t (from
    a(t), g(t) and the data alone). With 1000 steps that recursion stays within one standard error of the closed
    form (the scheme's bias is small), and the sample mean and variance of 20000 chains at five times along the
    run are within 5 standard errors of the closed form plus that bias."""
    sde, N, steps = SDES[name], 20_000, 1000
    times = EulerMaruyamaSampler(sde, steps).times  # 1 = t_0 > t_1 > ... > t_N = eps
    m1, v1 = gaussian_moments(sde, 1.0)
    rng = np.random.default_rng(12)
    x = m1 + np.sqrt(v1) * rng.standard_normal((N, 3))  # (N, 3), exact draws of p_1
    mu, v = m1.copy(), v1.copy()
    for i in range(steps):
        t, t_next = float(times[i]), float(times[i + 1])
        m, V = gaussian_moments(sde, t)
        x, _ = reverse_euler_maruyama_step(sde, x, t, t_next, -(x - m) / V, rng.standard_normal(x.shape))
        dt, a, g2 = t - t_next, float(sde.drift_coef(t)), float(sde.diffusion(t)) ** 2
        c = 1.0 - a * dt - g2 * dt / V
        mu, v = c * mu + g2 * dt * m / V, c**2 * v + g2 * dt
        if (i + 1) % (steps // 5) == 0:
            m_t, V_t = gaussian_moments(sde, t_next)
            se_m, se_v = np.sqrt(V_t / N), V_t * math.sqrt(2 / (N - 1))
            assert np.all(np.abs(mu - m_t) <= se_m) and np.all(np.abs(v - V_t) <= se_v), (t_next, mu, m_t, v, V_t)
            sample_m, sample_v = x.mean(axis=0), x.var(axis=0, ddof=1)
            assert np.all(np.abs(sample_m - m_t) <= 5 * se_m + np.abs(mu - m_t)), \
                f"t = {t_next:.3f}: sample mean {sample_m} vs the marginal's {m_t} (5 s.e. {5 * se_m})"
            assert np.all(np.abs(sample_v - V_t) <= 5 * se_v + np.abs(v - V_t)), \
                f"t = {t_next:.3f}: sample variance {sample_v} vs the marginal's {V_t} (5 s.e. {5 * se_v})"


# --- bad input --------------------------------------------------------------------------------------------


def test_sde_arguments_are_checked():
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-0.1)
    with pytest.raises(ValueError, match="beta_min"):
        SubVPSDE(beta_min=30.0, beta_max=20.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(TypeError, match="sigma_max"):
        VESDE(sigma_max="50")
    sde = VPSDE()
    with pytest.raises(ValueError, match="t"):
        sde.marginal_std(1.5)
    with pytest.raises(TypeError, match="t"):
        sde.diffusion("0.5")
    with pytest.raises(ValueError, match="t"):
        sde.drift(np.ones((3, 2)), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="score"):
        sde.reverse_drift(np.ones((3, 2)), 0.5, np.ones((3, 3)))
    with pytest.raises(ValueError, match="t_from"):
        sde.transition(0.5, 0.2)
    with pytest.raises(TypeError, match="rng"):
        sde.prior_sample(None, (2, 2))
    with pytest.raises(TypeError, match="x0"):
        sde.marginal([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="T"):
        sde.discrete_betas(1)


def test_sampler_arguments_are_checked():
    sde = VPSDE()
    score = gmm_score(sde)
    with pytest.raises(ValueError, match="n_steps"):
        EulerMaruyamaSampler(sde, 0)
    with pytest.raises(ValueError, match="eps"):
        EulerMaruyamaSampler(sde, 10, eps=0.0)
    with pytest.raises(TypeError, match="sde"):
        EulerMaruyamaSampler("vp", 10)
    with pytest.raises(ValueError, match="predictor"):
        PredictorCorrectorSampler(sde, 10, predictor="ancestral")
    with pytest.raises(ValueError, match="snr"):
        PredictorCorrectorSampler(sde, 10, snr=-1.0)
    with pytest.raises(ValueError, match="n_corrector"):
        PredictorCorrectorSampler(sde, 10, n_corrector=-1)
    with pytest.raises(ValueError, match="rtol"):
        ProbabilityFlowODE(sde, rtol=0.0)
    sampler = EulerMaruyamaSampler(sde, 3)
    with pytest.raises(TypeError, match="rng"):
        sampler.sample(score, (2, 2), 0, progress=False)
    with pytest.raises(ValueError, match="x_T"):
        sampler.sample(score, (2, 2), np.random.default_rng(0), x_T=np.zeros((3, 2)), progress=False)
    with pytest.raises(ValueError, match="score_fn"):
        sampler.sample(lambda x, t: x[:, :1], (2, 2), np.random.default_rng(0), progress=False)
    with pytest.raises(TypeError, match="score_fn"):
        sampler.sample(None, (2, 2), np.random.default_rng(0), progress=False)
    with pytest.raises(ValueError, match="t_next"):
        reverse_euler_maruyama_step(sde, np.ones((2, 2)), 0.5, 0.6, np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="noise"):
        reverse_diffusion_step(sde, np.ones((2, 2)), 0.5, 0.4, np.ones((2, 2)), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="n_steps"):
        simulate_forward_sde(sde, np.ones((2, 2)), 0, np.random.default_rng(0))
