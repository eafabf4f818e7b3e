"""Flow matching (E38): the straight path and its velocity, the optimal velocity of Gaussian data derived here
by Gaussian conditioning, the loss and its minimum by Monte Carlo, the relation to the VP parameterization
against the Gaussian oracle's eps model, and the Euler and Heun samplers: the data distribution of a GMM from
its exact velocity, their orders of convergence against a tight ODE solution, and diffusers' trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffusion_oracle import GaussianData
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from strategies import float_arrays, noise_schedule
from tolerances import ROUND_TRIP, assert_close

import minidiff as md
from minidiff.autodiff import gradcheck
from minidiff.diffusion.flow import (
    flow_alpha_bar,
    flow_eps_from_velocity,
    flow_interpolant,
    flow_matching_loss,
    flow_target,
    flow_time_from_alpha_bar,
    flow_to_vp,
    flow_velocity_from_eps,
    flow_x0_from_velocity,
    sample_flow_times,
    shift_flow_time,
    vp_to_flow,
)
from minidiff.diffusion.gmm import GaussianMixture
from minidiff.samplers.flow import FlowMatchEulerSampler, FlowMatchHeunSampler

SAMPLERS = (FlowMatchEulerSampler, FlowMatchHeunSampler)


def gaussian_velocity(x, t, mu, cov):
    """E[eps - x0 | x_t = x] for x0 ~ N(mu, cov), by Gaussian conditioning (not from minidiff): x_t = (1 - t) x0
    + t eps has mean m = (1 - t) mu and covariance C = (1 - t)^2 cov + t^2 I, Cov(eps - x0, x_t) = t I - (1 - t)
    cov =: K and E[eps - x0] = -mu, so E[eps - x0 | x] = -mu + K C^{-1} (x - m). t: a number or one per example."""
    t = np.broadcast_to(np.asarray(t, np.float64), (len(x),))[:, None, None]  # (B, 1, 1)
    eye = np.eye(len(mu))
    C = (1 - t) ** 2 * cov + t**2 * eye  # (B, D, D)
    K = t * eye - (1 - t) * cov  # (B, D, D)
    r = x - (1 - t[:, :, 0]) * mu  # (B, D)
    return -mu + np.einsum("bij,bj->bi", K, np.linalg.solve(C, r[..., None])[..., 0])  # (B, D)


def velocity_model(gmm):
    return lambda x, t: gmm.velocity(x, t)


# --- the path and its velocity -----------------------------------------------------------------------------


@st.composite
def path_inputs(draw, dtype=np.float64):
    """(x0, eps, t) with t one per example in [0, 1] (endpoints included) or one number."""
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    x0 = draw(float_arrays(dtype, shape, bound=4.0))
    eps = draw(float_arrays(dtype, shape, bound=4.0))
    times = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
    t = draw(st.one_of(times, st.lists(times, min_size=shape[0], max_size=shape[0]).map(np.array)))
    return x0, eps, t


@given(path_inputs(), st.sampled_from([np.float32, np.float64]))
def test_e38_interpolant_runs_from_the_data_to_the_noise(inputs, dtype):
    """[E38] x_t = (1 - t) x0 + t eps: exactly x0 at t = 0 and eps at t = 1, and the weighted sum in between,
    per example, in the dtype of the data."""
    x0, eps, t = inputs
    x0, eps = x0.astype(dtype), eps.astype(dtype)
    np.testing.assert_array_equal(flow_interpolant(x0, eps, 0.0), x0)
    np.testing.assert_array_equal(flow_interpolant(x0, eps, 1), eps)
    xt = flow_interpolant(x0, eps, t)
    assert xt.dtype == dtype
    tb = np.reshape(t, (-1, 1))
    expected = (1 - tb) * x0.astype(np.float64) + tb * eps.astype(np.float64)
    assert_close(xt, expected, scale=np.abs(x0) + np.abs(eps))


@given(path_inputs(), st.floats(0.01, 0.5))
def test_e38_velocity_is_the_time_derivative_of_the_path(inputs, h):
    """[E38] The path is a straight line, so its central difference (x_{t+h} - x_{t-h}) / 2h is exact for every h:
    it must be the target v = eps - x0, which does not depend on t."""
    x0, eps, _ = inputs
    t = 0.5
    derivative = (flow_interpolant(x0, eps, t + h) - flow_interpolant(x0, eps, t - h)) / (2 * h)
    assert_close(derivative, flow_target(x0, eps), scale=(np.abs(x0) + np.abs(eps)) / h)


def test_e38_marginal_of_gaussian_data_is_gaussian_with_the_closed_form_moments():
    """[E38] For x0 ~ N(mu, s^2) per dimension, x_t ~ N((1 - t) mu, (1 - t)^2 s^2 + t^2). 50000 draws: mean
    within 5 sd (sd = sqrt(V / n)), variance within 5 sd (sd = V sqrt(2 / (n - 1)) for Gaussian data), and
    Kolmogorov-Smirnov against that normal with p > 1e-6 (about a 5-sigma event)."""
    rng = np.random.default_rng(0)
    n, mu, s = 50000, np.array([0.5, -1.0, 2.0]), np.array([0.3, 1.0, 2.0])
    for t in (0.0, 0.3, 0.7, 1.0):
        x0 = mu + s * rng.standard_normal((n, 3))
        xt = flow_interpolant(x0, rng.standard_normal((n, 3)), t)
        m, V = (1 - t) * mu, (1 - t) ** 2 * s**2 + t**2
        assert np.all(np.abs(xt.mean(axis=0) - m) < 5 * np.sqrt(V / n)), t
        assert np.all(np.abs(xt.var(axis=0, ddof=1) - V) < 5 * V * np.sqrt(2 / (n - 1))), t
        for d in range(3):
            assert stats.kstest((xt[:, d] - m[d]) / np.sqrt(V[d]), "norm").pvalue > 1e-6, (t, d)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_e38_least_squares_on_path_samples_recovers_the_optimal_velocity(t):
    """[E38] The loss's minimizer is E[eps - x0 | x_t], affine in x_t for Gaussian data (`gaussian_velocity`).
    Least squares of v = flow_target on [x_t, 1] over 20000 draws (x_t = flow_interpolant) must find its slope
    and intercept within 5 standard errors of ordinary least squares. The same closed form is the GMM oracle's
    velocity for one component (two derivations agree)."""
    rng = np.random.default_rng(1)
    n, mu, cov = 20000, np.array([0.4, -0.8]), np.array([[0.5, 0.3], [0.3, 0.9]])
    x0 = rng.multivariate_normal(mu, cov, n)  # (n, 2)
    eps = rng.standard_normal((n, 2))
    design = np.column_stack([flow_interpolant(x0, eps, t), np.ones(n)])  # (n, 3)
    v = flow_target(x0, eps)  # (n, 2)
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)  # (3, 2): v ~ x A^T + b
    residual_var = ((v - design @ coef) ** 2).sum(axis=0) / (n - 3)  # (2,)
    se = np.sqrt(np.outer(np.diag(np.linalg.inv(design.T @ design)), residual_var))  # (3, 2)
    points = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    at_points = gaussian_velocity(points, t, mu, cov)  # (3, 2)
    expected = np.vstack([at_points[:2] - at_points[2], at_points[2]])  # rows of A^T, then b
    assert np.all(np.abs(coef - expected) < 5 * se)
    one_gaussian = GaussianMixture([1.0], mu[None], cov[None])
    assert_close(one_gaussian.velocity(points, t), at_points, scale=1.0)


# --- the loss ------------------------------------------------------------------------------------------


def logit_normal_pdf(t, m=0.0, s=1.0):
    return stats.norm.pdf((np.log(t) - np.log1p(-t) - m) / s) / (s * t * (1 - t))


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal"])
def test_e38_loss_of_the_optimal_model_is_the_closed_form_minimum(distribution):
    """[E38] At the optimum the loss is E_t Var(eps - x0 | x_t) per dimension = s^2 / ((1 - t)^2 s^2 + t^2) (the
    conditional variance of a Gaussian: (1 + s^2) - (t - (1 - t) s^2)^2 / V(t), simplified). Over uniform t its
    integral is s (arctan(1/s) + arctan(s)) = pi s / 2; over logit-normal t, by quadrature. Monte Carlo with
    B = 100000 examples of D = 2 dimensions within 5 sd, where the per-example loss M = mean_d r_d^2 (r_d | t ~
    N(0, a_d(t)), a_d = s_d^2 / V_d(t)) has Var M = E_t[2 mean_d a_d^2 / D] + Var_t(mean_d a_d)."""
    rng = np.random.default_rng(2)
    batch, mu, s = 100000, np.array([1.0, -0.5]), np.array([0.5, 1.5])
    x0 = mu + s * rng.standard_normal((batch, 2))
    loss = flow_matching_loss(lambda x, t: gaussian_velocity(x, t, mu, np.diag(s**2)), x0, rng=rng,
                              distribution=distribution)

    def a(t):
        return s**2 / ((1 - t) ** 2 * s**2 + t**2)  # (2,)

    density = (lambda t: 1.0) if distribution == "uniform" else logit_normal_pdf

    def expect(f):
        return integrate.quad(lambda t: f(t) * density(t), 0.0, 1.0, epsabs=1e-13, epsrel=1e-12)[0]

    mean = expect(lambda t: a(t).mean())
    if distribution == "uniform":
        assert mean == pytest.approx(np.mean(np.pi * s / 2), rel=1e-10)
    D = len(s)
    variance = expect(lambda t: 2 * np.mean(a(t) ** 2) / D + a(t).mean() ** 2) - mean**2
    assert abs(loss - mean) < 5 * math.sqrt(variance / batch)


@pytest.mark.parametrize(("distribution", "cdf"), [
    ("uniform", lambda a: a),
    ("logit_normal", lambda a: stats.norm.cdf((np.log(a / (1 - a)) - 0.5) / 0.8)),
])
def test_e38_training_times_follow_their_distribution(distribution, cdf):
    """[E38] Training times: U[0, 1), or SD3's t = sigmoid(u), u ~ N(0.5, 0.8^2), whose CDF is
    Phi((logit a - 0.5) / 0.8). Over 100000 draws the fraction below each a is within 5 binomial sd of the CDF."""
    n = 100000
    t = sample_flow_times(np.random.default_rng(3), n, distribution, logit_mean=0.5, logit_std=0.8)
    assert t.shape == (n,) and t.dtype == np.float64 and t.min() >= 0.0 and t.max() < 1.0
    for a in (0.05, 0.2, 0.5, 0.7, 0.95):
        p = cdf(a)
        assert abs(np.mean(t <= a) - p) < 5 * math.sqrt(p * (1 - p) / n), a


def test_e38_loss_of_a_tensor_model_has_the_value_and_gradients_of_its_definition():
    """[E38] With a Tensor model tanh(x_t W) + t c, the loss is mean((model(x_t, t) - (eps - x0))^2) with x_t
    built here; its gradients in W and c pass gradcheck (float64 central differences)."""
    rng = np.random.default_rng(4)
    x0, eps, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.uniform(0, 1, 5)
    W = md.tensor(0.5 * rng.standard_normal((3, 3)), requires_grad=True)
    c = md.tensor(0.5 * rng.standard_normal(3), requires_grad=True)

    def loss(W, c):
        return flow_matching_loss(lambda x, tt: (x @ W).tanh() + tt[:, None] * c, x0, t, eps)

    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    expected = np.mean((np.tanh(xt @ W.data) + t[:, None] * c.data - (eps - x0)) ** 2)
    assert float(loss(W, c).item()) == pytest.approx(expected, rel=1e-12)
    gradcheck(loss, [W, c])


# --- the VP parameterization ----------------------------------------------------------------------------


@given(path_inputs())
def test_e38_x0_and_eps_from_the_velocity_are_the_ends_of_the_path(inputs):
    """[E38] Through x_t with velocity v = eps - x0: x_t - t v = x0, x_t + (1 - t) v = eps, and (below t = 1)
    (eps - x_t) / (1 - t) = v. Exact to a few ulp of the magnitudes involved."""
    x0, eps, t = inputs
    xt, v = flow_interpolant(x0, eps, t), flow_target(x0, eps)
    tb = np.reshape(t, (-1, 1))
    size = np.abs(x0) + np.abs(eps)
    assert_close(flow_x0_from_velocity(xt, t, v), x0, scale=4 * size, tol=ROUND_TRIP)
    assert_close(flow_eps_from_velocity(xt, t, v), eps, scale=4 * size, tol=ROUND_TRIP)
    if np.all(tb < 1):
        assert_close(flow_velocity_from_eps(xt, t, eps), v, scale=4 * size / (1 - tb), tol=ROUND_TRIP)


@given(st.floats(1e-3, 1 - 1e-6))
def test_e38_flow_alpha_bar_has_the_snr_of_the_flow_time(t):
    """[E38] SNR of x_t = (1 - t) x0 + t eps is (1 - t)^2 / t^2; alpha_bar = flow_alpha_bar(t) must have the same
    SNR alpha_bar / (1 - alpha_bar), and flow_time_from_alpha_bar must invert it. (Near t = 0, 1 - alpha_bar ~ t^2
    keeps only ~1e-16 / t^2 of relative precision, hence t >= 1e-3 for a 1e-9 check.)"""
    alpha_bar = flow_alpha_bar(t)
    assert alpha_bar / (1 - alpha_bar) == pytest.approx((1 - t) ** 2 / t**2, rel=1e-9)
    assert flow_time_from_alpha_bar(alpha_bar) == pytest.approx(t, rel=1e-9)


def test_e38_flow_alpha_bar_at_the_ends():
    """[E38] t = 0 is the data (alpha_bar = 1), t = 1 the noise (alpha_bar = 0), t = 1/2 has SNR 1."""
    np.testing.assert_array_equal(flow_alpha_bar(np.array([0.0, 0.5, 1.0])), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(flow_time_from_alpha_bar(np.array([1.0, 0.5, 0.0])), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("t", [1, 10, 300, 700, 1000])
def test_e38_a_flow_model_is_an_eps_model_at_matched_snr(t):
    """[E38] For Gaussian data, the optimal velocity at the flow point matching the VP sample x_vp at step t
    (vp_to_flow) gives, through eps = x + (1 - tau) v and x0 = x - tau v, the oracle's E[eps | x_t] and
    E[x0 | x_t] of the VP chain (diffusion_oracle, derived from the betas); flow_to_vp maps back."""
    schedule = noise_schedule("cosine", 1000)
    mu, s = np.array([0.3, -1.2, 0.8]), np.array([0.5, 1.0, 0.2])
    oracle = GaussianData(schedule.betas[1:], mu, s)
    x_vp = np.random.default_rng(5).standard_normal((4, 3)) * 1.5
    alpha_bar = oracle.alpha_bars[t]
    x_flow, tau = vp_to_flow(x_vp, alpha_bar)
    v = gaussian_velocity(x_flow, tau, mu, np.diag(s**2))
    assert_close(flow_eps_from_velocity(x_flow, tau, v), oracle.eps_model(x_vp, t), scale=1.0, tol=ROUND_TRIP)
    assert_close(flow_x0_from_velocity(x_flow, tau, v), oracle.x0_model(x_vp, t), scale=4.0, tol=ROUND_TRIP)
    back, alpha_bar_back = flow_to_vp(x_flow, tau)
    assert_close(back, x_vp, tol=ROUND_TRIP, scale=np.abs(x_vp))
    assert alpha_bar_back == pytest.approx(alpha_bar, rel=1e-12)


@given(st.floats(0.0, 1.0), st.floats(0.1, 10.0))
def test_shift_divides_the_snr_by_shift_squared(t, shift):
    """SD3's shift t' = shift t / (1 + (shift - 1) t) keeps 0 and 1 and has SNR(t') = SNR(t) / shift^2, i.e.
    (1 - t') / t' = (1 - t) / (shift t)."""
    shifted = float(shift_flow_time(t, shift))
    if t in (0.0, 1.0):
        assert shifted == t
    elif 1e-6 < t < 1 - 1e-6:
        assert (1 - shifted) / shifted == pytest.approx((1 - t) / (shift * t), rel=1e-9)


# --- sampling ----------------------------------------------------------------------------------------------


def test_e38_euler_sampling_of_the_exact_velocity_reaches_the_gmm():
    """[E38] Euler (100 steps) on the GMM's exact velocity carries N(0, I) to the mixture: 10000 samples against
    10000 data draws agree on the first and second moments and on the share of each component (the argmax of
    the responsibilities), each within 5 two-sample sd, sqrt(var_a / n + var_b / n). Euler's error at 100 steps
    (about 0.007 per sample, see the convergence test) moves these by at most ~1 sd."""
    gmm = GaussianMixture.example_2d()
    n = 10000
    sampler = FlowMatchEulerSampler()
    x = sampler.sample(velocity_model(gmm), (n, 2), np.random.default_rng(6), num_inference_steps=100,
                       dtype=np.float64, progress=False)
    y = gmm.sample(np.random.default_rng(7), n)

    def statistics(z):
        labels = np.eye(gmm.K)[gmm.responsibilities(z).argmax(axis=1)]  # (n, K)
        return np.column_stack([z, z**2, z[:, 0] * z[:, 1], labels])  # (n, 5 + K)

    a, b = statistics(x), statistics(y)
    z_scores = (a.mean(axis=0) - b.mean(axis=0)) / np.sqrt(a.var(axis=0) / n + b.var(axis=0) / n)
    assert np.all(np.abs(z_scores) < 5), z_scores


@pytest.mark.parametrize("grid", ["uniform", "diffusers"])
@pytest.mark.parametrize(("sampler_class", "order"), [(FlowMatchEulerSampler, 1), (FlowMatchHeunSampler, 2)])
def test_e38_error_decreases_like_the_order_of_the_solver(sampler_class, order, grid):
    """[E38] Against a tight solution of dx/dt = v(x, t) (scipy's DOP853, tolerances 1e-12, far below the errors
    measured, >= 1e-5) from t = 1 to 0 on the GMM's exact velocity, the RMS error after N = 8..128 steps falls
    like N^-1 for Euler and N^-2 for Heun: the least-squares log-log slope within 0.25 of -order."""
    gmm = GaussianMixture.example_2d()
    x_T = np.random.default_rng(8).standard_normal((32, 2))
    ode = integrate.solve_ivp(lambda t, y: gmm.velocity(y.reshape(-1, 2), t).ravel(), (1.0, 0.0), x_T.ravel(),
                              method="DOP853", rtol=1e-12, atol=1e-12)
    reference = ode.y[:, -1].reshape(-1, 2)
    steps = np.array([8, 16, 32, 64, 128])
    errors = []
    for n in steps:
        sampler = sampler_class()
        if grid == "uniform":
            sampler.set_timesteps(timesteps=np.linspace(1.0, 0.0, n + 1)[:-1])
        else:
            sampler.set_timesteps(int(n))
        x = sampler.sample(velocity_model(gmm), x_T.shape, np.random.default_rng(0), x_T=x_T, progress=False)
        errors.append(np.sqrt(np.mean((x - reference) ** 2)))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope + order) < 0.25, (slope, errors)


@pytest.mark.parametrize("sampler_class", SAMPLERS)
def test_e38_x0_estimate_of_a_step_is_the_posterior_mean(sampler_class):
    """[E38] With the exact velocity, the x0 estimate x - t v of every step is E[x0 | x_t = x] (x - t E[eps - x0 |
    x] = E[(1 - t) x0 + t eps - t eps + t x0 | x]): the GMM oracle's posterior mean at scale 1 - t, std t.
    The update itself is x + (t_next - t) v for Euler, and the trapezoid rule for Heun's second call."""
    gmm = GaussianMixture.example_2d()
    sampler = sampler_class(shift=2.0)
    sampler.set_timesteps(4)
    x = np.random.default_rng(9).standard_normal((6, 2))
    grid = sampler.sigmas
    heun = sampler_class is FlowMatchHeunSampler
    first = None  # (x_i, v_i, h) of the current interval
    for index, t in enumerate(sampler.timesteps):
        v = gmm.velocity(x, t)
        out = sampler.step(v, t, x)
        assert_close(out.pred_original_sample, gmm.posterior_mean(x, 1 - t, t), scale=np.abs(x) + np.abs(v))
        if heun and index % 2 == 1:  # Heun's second call: the trapezoid rule from the step's start
            x_i, v_i, h = first
            expected, scale = x_i + h * (v_i + v) / 2, np.abs(x_i) + np.abs(h * v_i) + np.abs(h * v)
        else:  # Euler's step, or Heun's first call (the Euler predictor) on the interval [t_i, t_{i+1}]
            i = index // 2 if heun else index
            h = grid[i + 1] - grid[i]
            first = (x, v, h)
            expected, scale = x + h * v, np.abs(x) + np.abs(h * v)
        assert_close(out.prev_sample, expected, scale=scale)
        x = out.prev_sample
    assert sampler.sigmas[-1] == 0.0


@pytest.mark.parametrize("sampler_class", SAMPLERS)
def test_e38_float32_sampling_stays_float32_and_close_to_float64(sampler_class):
    """[E38] A float32 run (the model's float64 output cast to float32) keeps float32 and follows the float64 run
    to float32 tolerance over 20 steps: each step rounds at ~6e-8 relative and the flow does not amplify it."""
    gmm = GaussianMixture.example_2d()
    x_T = np.random.default_rng(10).standard_normal((8, 2))
    runs = {}
    for dtype in (np.float32, np.float64):
        runs[dtype] = sampler_class().sample(velocity_model(gmm), x_T.shape, np.random.default_rng(0),
                                             num_inference_steps=20, x_T=x_T.astype(dtype), progress=False)
    assert runs[np.float32].dtype == np.float32
    assert_close(runs[np.float32], runs[np.float64], dtype=np.float32)


@pytest.mark.torch
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 10, 25])
@pytest.mark.parametrize("sampler_class", SAMPLERS)
def test_e38_trajectory_is_diffusers(sampler_class, steps, shift):
    """[E38] diffusers' FlowMatch{Euler,Heun}DiscreteScheduler, built from its own config, has sigmas = minidiff's
    flow times and timesteps = flow times * 1000; its model is called with those timesteps, minidiff's with the
    flow time t (the model below is the same function of both). Every sample of the run agrees to float32
    tolerance (diffusers computes the update in float32). add_noise is the Euler scheduler's scale_noise."""
    import diffusers
    import torch
    from reference.diffusers_runs import model_k

    scheduler = getattr(diffusers, sampler_class.diffusers_class)(shift=shift)
    config = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    sampler = sampler_class.from_config({"_class_name": sampler_class.diffusers_class, **config})
    scheduler.set_timesteps(steps)
    sampler.set_timesteps(steps)
    T = scheduler.config.num_train_timesteps
    assert_close(sampler.timesteps * T, scheduler.timesteps.numpy(), dtype=np.float32, scale=T)
    if sampler_class is FlowMatchEulerSampler:
        assert_close(sampler.sigmas, scheduler.sigmas.numpy(), dtype=np.float32)

    x_T = np.random.default_rng(11).standard_normal((2, 3, 4))
    x, theirs = torch.from_numpy(x_T.copy()), []
    for k in scheduler.timesteps:
        x = scheduler.step(torch.from_numpy(model_k(x.numpy(), float(k))), k, x).prev_sample
        theirs.append(x.numpy().copy())
    ours = sampler.sample(lambda x, t: model_k(x, t * T), x_T.shape, np.random.default_rng(0), x_T=x_T,
                          progress=False, return_trajectory=True)
    assert_close(ours[1:], np.stack(theirs), dtype=np.float32)

    if sampler_class is FlowMatchEulerSampler:  # (the Heun scheduler's scale_noise reads its run's state)
        noise, k = np.random.default_rng(12).standard_normal(x_T.shape), scheduler.timesteps[-1:]
        expected = scheduler.scale_noise(torch.from_numpy(x_T), k, torch.from_numpy(noise)).numpy()
        assert_close(sampler.add_noise(x_T, noise, float(k[0]) / T), expected, dtype=np.float32)


def test_a_diffusers_sd3_config_is_read_and_unimplemented_options_are_refused():
    """SD3.5's scheduler config (its keys at diffusers' defaults but shift = 3) is read; options minidiff does not
    implement are refused with their name, and so are keys of no flow scheduler."""
    sd35 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.31.0", "base_image_seq_len": 256,
            "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 4096, "max_shift": 1.15,
            "num_train_timesteps": 1000, "shift": 3.0, "shift_terminal": None, "use_beta_sigmas": False,
            "use_dynamic_shifting": False, "use_exponential_sigmas": False, "use_karras_sigmas": False}
    sampler = FlowMatchEulerSampler.from_config(sd35)
    assert sampler.shift == 3.0 and sampler.T == 1000
    assert repr(sampler) == "FlowMatchEulerSampler(shift=3.0)"
    for key, value in [("use_karras_sigmas", True), ("stochastic_sampling", True), ("use_dynamic_shifting", True),
                       ("shift_terminal", 0.1), ("shift", 0.0), ("num_train_timesteps", 0)]:
        with pytest.raises(ValueError, match=key):
            FlowMatchEulerSampler(**{key: value})
    with pytest.raises(ValueError, match="beta_schedule"):
        FlowMatchEulerSampler.from_config({"beta_schedule": "linear"})
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        FlowMatchHeunSampler(use_karras_sigmas=False)


# --- bad input -----------------------------------------------------------------------------------------------

X = np.zeros((3, 2))


def _heun_out_of_order():
    sampler = FlowMatchHeunSampler()
    sampler.set_timesteps(3)
    sampler.step(X, sampler.timesteps[1], X)


def _step_off_the_grid():
    sampler = FlowMatchEulerSampler()
    sampler.set_timesteps(3)
    sampler.step(X, 0.1234, X)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: flow_interpolant(X, X, 1.5), ValueError, "t"),
    (lambda: flow_interpolant(X, X, -0.1), ValueError, "t"),
    (lambda: flow_interpolant(X, X, np.nan), ValueError, "t"),
    (lambda: flow_interpolant(X, X, np.full(2, 0.5)), ValueError, "t"),
    (lambda: flow_interpolant(X, X, "0.5"), TypeError, "t"),
    (lambda: flow_interpolant(X, np.zeros((3, 3)), 0.5), ValueError, "eps"),
    (lambda: flow_interpolant(X, X.astype(np.float32), 0.5), TypeError, "eps"),
    (lambda: flow_interpolant([[0.0]], [[0.0]], 0.5), TypeError, "x0"),
    (lambda: flow_target(X, np.zeros(2)), ValueError, "eps"),
    (lambda: flow_matching_loss(lambda x, t: x, X, 2.0, X), ValueError, "t"),
    (lambda: flow_matching_loss(lambda x, t: x[:, :1], X, 0.5, X), ValueError, "model output"),
    (lambda: flow_matching_loss(lambda x, t: x, X), ValueError, "rng"),
    (lambda: flow_matching_loss(lambda x, t: x, np.zeros(0), rng=np.random.default_rng()), ValueError, "x0"),
    (lambda: flow_velocity_from_eps(X, 1.0, X), ValueError, "t"),
    (lambda: flow_x0_from_velocity(X, 0.5, np.zeros((2, 2))), ValueError, "v"),
    (lambda: flow_time_from_alpha_bar(1.2), ValueError, "alpha_bar"),
    (lambda: vp_to_flow(X, -0.5), ValueError, "alpha_bar"),
    (lambda: shift_flow_time(0.5, 0.0), ValueError, "shift"),
    (lambda: sample_flow_times(np.random.default_rng(), 4, "normal"), ValueError, "distribution"),
    (lambda: sample_flow_times(np.random.default_rng(), 4, "logit_normal", logit_std=0.0), ValueError, "logit_std"),
    (lambda: sample_flow_times(np.random.default_rng(), 0), ValueError, "batch"),
    (lambda: sample_flow_times(0, 4), TypeError, "rng"),
    (lambda: FlowMatchEulerSampler().set_timesteps(0), ValueError, "num_inference_steps"),
    (lambda: FlowMatchEulerSampler().set_timesteps(2.5), TypeError, "num_inference_steps"),
    (lambda: FlowMatchEulerSampler().set_timesteps(), ValueError, "num_inference_steps"),
    (lambda: FlowMatchEulerSampler().set_timesteps(timesteps=[0.5, 0.8]), ValueError, "timesteps"),
    (lambda: FlowMatchEulerSampler().set_timesteps(timesteps=[1.0, 0.0]), ValueError, "timesteps"),
    (lambda: FlowMatchEulerSampler().set_timesteps(timesteps=[1.5, 0.5]), ValueError, "timesteps"),
    (lambda: FlowMatchEulerSampler().set_timesteps(timesteps=[]), ValueError, "timesteps"),
    (lambda: FlowMatchEulerSampler().timesteps, RuntimeError, "set_timesteps"),
    (lambda: FlowMatchEulerSampler(beta_start=0.1), ValueError, "beta_start"),
    (_heun_out_of_order, ValueError, "t"),
    (_step_off_the_grid, ValueError, "t"),
    (lambda: FlowMatchEulerSampler().sample(lambda x, t: x, (2, 2), 0, num_inference_steps=2), TypeError, "rng"),
])
def test_e38_bad_input_gets_a_clear_error(call, error, match):
    """[E38] Flow times outside [0, 1], mismatched shapes, zero steps, bad grids and misuse are refused by name."""
    with pytest.raises(error, match=match):
        call()


@settings(max_examples=20)
@given(st.sampled_from(SAMPLERS), st.integers(1, 6))
def test_e38_a_run_visits_the_grid_once_and_calls_the_model_at_flow_times(sampler_class, steps):
    """[E38] The model is called with t of shape (B,) in (0, 1]: N times for Euler, 2N - 1 for Heun (the last
    step is Euler, so t = 0 is never asked for), the first at t = 1; the trajectory has one entry more."""
    seen = []

    def model(x, t):
        seen.append(t)
        return -x

    out = sampler_class().sample(model, (3, 2), np.random.default_rng(0), num_inference_steps=steps,
                                 progress=False, return_trajectory=True)
    calls = steps if sampler_class is FlowMatchEulerSampler else 2 * steps - 1
    assert len(seen) == calls and out.shape == (calls + 1, 3, 2)
    assert all(t.shape == (3,) and t.dtype == np.float64 and np.all((t > 0) & (t <= 1)) for t in seen)
    assert seen[0][0] == 1.0
