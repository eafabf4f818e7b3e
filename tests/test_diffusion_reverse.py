"""The posterior (E11), the parameterizations (E13, E14, E27) and the reverse step (E10, E12, E16):
Bayes' rule computed independently, round trips, the velocity as a derivative, the score as a gradient,
one Gaussian whatever the parameterization, the fused step against the Gaussian step, ancestral sampling
with the exact reverse process of Gaussian data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffusion_oracle import GaussianData
from hypothesis import given
from hypothesis import strategies as st
from strategies import float_arrays, noise_schedule, schedule_and_t
from tolerances import ROUND_TRIP, assert_close

import minidiff as md
from minidiff.diffusion import (
    ancestral_step_coefs,
    eps_from_score,
    p_mean_from_eps,
    p_mean_variance,
    p_sample,
    p_sample_loop,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior_mean_variance,
    reverse_variance,
    score_from_eps,
    v_from_eps_x0,
)
from minidiff.kernels import sampler_step


@st.composite
def posterior_inputs(draw, min_t: int = 2, informative_eps: bool = False, max_T: int = 300):
    """(schedule, t, x0, eps, xt) in float64 with xt = a x0 + b eps built here (a, b from alpha_bar_t)."""
    schedule, t = draw(schedule_and_t(max_T=max_T, min_t=min_t, informative_eps=informative_eps))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    x0 = draw(float_arrays(np.float64, shape, bound=3.0))
    eps = draw(float_arrays(np.float64, shape, bound=4.0))
    a, b = math.sqrt(schedule.alpha_bars[t]), math.sqrt(schedule.one_minus_alpha_bars[t])
    return schedule, t, x0, eps, a * x0 + b * eps


# --- E11: the posterior is Bayes' rule -------------------------------------------------------------


@pytest.mark.exercise("ex03.1")
@given(posterior_inputs())
def test_e11_posterior_is_the_normalized_product_of_two_gaussians(inputs):
    """[E11] In x_{t-1}, q(x_t | x_{t-1}) is proportional to N(x_{t-1}; x_t / sqrt(alpha_t), beta_t / alpha_t), and
    q(x_{t-1} | x_0) = N(sqrt(alpha_bar_{t-1}) x_0, 1 - alpha_bar_{t-1}). Their normalized product has precision
    P = 1 / (1 - alpha_bar_{t-1}) + alpha_t / beta_t and mean (sqrt(alpha_bar_{t-1}) x_0 / (1 - alpha_bar_{t-1})
    + sqrt(alpha_t) x_t / beta_t) / P: the posterior must be that Gaussian."""
    schedule, t, x0, _, xt = inputs
    beta, alpha = schedule.betas[t], 1.0 - schedule.betas[t]
    ab_prev, one_minus_ab_prev = schedule.alpha_bars[t - 1], schedule.one_minus_alpha_bars[t - 1]
    precision = 1.0 / one_minus_ab_prev + alpha / beta
    from_x0 = math.sqrt(ab_prev) * x0 / one_minus_ab_prev / precision
    from_xt = math.sqrt(alpha) * xt / beta / precision
    mean, variance, log_variance = q_posterior_mean_variance(schedule, x0, xt, t)
    assert_close(mean, from_x0 + from_xt, scale=(np.abs(from_x0) + np.abs(from_xt)), what=f"mu_tilde_t at t = {t}")
    assert_close(variance, np.full(x0.shape, 1.0 / precision), scale=1.0 / precision, what=f"beta_tilde_t at t = {t}")
    assert_close(log_variance, np.full(x0.shape, -math.log(precision)), scale=abs(math.log(precision)),
                 what=f"log beta_tilde_t at t = {t}")


def log_gaussian(x, mean, variance):
    return -0.5 * (x - mean) ** 2 / variance - 0.5 * np.log(2 * np.pi * variance)


@pytest.mark.exercise("ex03.1")
@pytest.mark.parametrize(("kind", "t"), [("linear", 2), ("linear", 500), ("cosine", 999), ("sigmoid", 1000),
                                         ("zero_terminal_snr", 1000), ("scaled_linear", 3)])
def test_e11_posterior_moments_by_quadrature_of_bayes_rule(kind, t):
    """[E11] Bayes' rule numerically, no algebra: on a fine grid of x_{t-1}, q(x_t | x_{t-1}) q(x_{t-1} | x_0)
    normalized by the trapezoid rule; its mean and variance must be E11's (quadrature error ~1e-12)."""
    schedule = noise_schedule(kind, 1000)
    x0, xt = 0.7, -0.4
    beta, ab_prev = schedule.betas[t], schedule.alpha_bars[t - 1]
    mean, variance, _ = q_posterior_mean_variance(schedule, np.array([x0]), np.array([xt]), t)
    sd = math.sqrt(variance[0])
    grid = np.linspace(mean[0] - 12 * sd, mean[0] + 12 * sd, 40001)
    log_joint = log_gaussian(xt, math.sqrt(1 - beta) * grid, beta) + log_gaussian(grid, math.sqrt(ab_prev) * x0,
                                                                                    1 - ab_prev)
    weights = np.exp(log_joint - log_joint.max())
    z = np.trapezoid(weights, grid)
    q_mean = np.trapezoid(weights * grid, grid) / z
    q_var = np.trapezoid(weights * (grid - q_mean) ** 2, grid) / z
    assert mean[0] == pytest.approx(q_mean, rel=1e-9, abs=1e-9 * sd), \
        f"t = {t}: mu_tilde_t is {mean[0]:.10g}, Bayes' rule gives {q_mean:.10g}"
    assert variance[0] == pytest.approx(q_var, rel=1e-8), \
        f"t = {t}: beta_tilde_t is {variance[0]:.10g}, Bayes' rule gives {q_var:.10g}"


@pytest.mark.exercise("ex03.1")
def test_e11_posterior_at_t_1_is_the_data_itself():
    """[E11] Given x_1 and x_0, x_0 is known: mu_tilde_1 = x_0, beta_tilde_1 = 0 (log-variance clipped to t = 2)."""
    schedule = noise_schedule("cosine", 40)
    x0, xt = np.array([0.3, -0.9]), np.array([1.5, 0.2])
    mean, variance, log_variance = q_posterior_mean_variance(schedule, x0, xt, 1)
    assert_close(mean, x0, what="mu_tilde_1 (x0 itself)")
    np.testing.assert_array_equal(variance, 0.0, err_msg="beta_tilde_1 = 0: alpha_bar_0 = 1")
    assert_close(log_variance, np.full(2, math.log(schedule.posterior_variance[2])),
                 what="log beta_tilde_1 (clipped: the log of beta_tilde_2)")


# --- E12, E13, E14, E27: the parameterizations ------------------------------------------------------


@given(posterior_inputs(informative_eps=True))
def test_e12_mean_from_the_true_eps_is_the_posterior_mean(inputs):
    """[E12][E11] DDPM's key identity: with the noise that made x_t, (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) /
    sqrt(alpha_t) equals mu_tilde_t(x_t, x_0). So a perfect eps model gives the posterior mean."""
    schedule, t, x0, eps, xt = inputs
    posterior_mean = q_posterior_mean_variance(schedule, x0, xt, t)[0]
    got = p_mean_from_eps(schedule, xt, t, eps)
    c = 1.0 / math.sqrt(schedule.alphas[t])
    scale = c * (np.abs(xt) + schedule.betas[t] / schedule.sqrt_one_minus_alpha_bars[t] * np.abs(eps))
    assert_close(got, posterior_mean, scale=scale)


@pytest.mark.exercise("ex03.2")
@given(posterior_inputs(min_t=1, informative_eps=True))
def test_e13_x0_from_the_true_eps_is_x0(inputs):
    """[E13] Solving x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps for x_0 recovers it."""
    schedule, t, x0, eps, xt = inputs
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    got = predict_x0_from_eps(schedule, xt, t, eps)
    assert_close(got, x0, scale=(np.abs(xt) + b * np.abs(eps)) / a, tol=ROUND_TRIP,
                 what=f"x0 from the eps that made x_t (t = {t}): (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)")


@pytest.mark.exercise("ex03.2")
@given(posterior_inputs(min_t=1, informative_eps=True), st.sampled_from([np.float32, np.float64]))
def test_e13_round_trip_eps_to_x0_to_eps(inputs, dtype):
    """[E13] eps -> x0 -> eps and x0 -> eps -> x0 given x_t, for any eps (not only the true one), to 1e-12 in
    float64 relative to the magnitudes of the terms (divided by the b = sqrt(1 - alpha_bar) or a it divides by)."""
    schedule, t, x0, eps, xt = inputs
    xt, eps, x0 = xt.astype(dtype), np.cos(3 * eps).astype(dtype), x0.astype(dtype)  # eps unrelated to xt
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    tol = ROUND_TRIP if dtype == np.float64 else None
    x0_hat = predict_x0_from_eps(schedule, xt, t, eps)
    assert x0_hat.dtype == dtype
    scale = (np.abs(xt) + a * np.abs(x0_hat) + b * np.abs(eps)) / b
    assert_close(predict_eps_from_x0(schedule, xt, t, x0_hat), eps, scale=scale, tol=tol,
                 what=f"eps -> your x0 -> eps (E14 undoes E13) at t = {t}")
    eps_hat = predict_eps_from_x0(schedule, xt, t, x0)
    scale = (np.abs(xt) + a * np.abs(x0) + b * np.abs(eps_hat)) / a
    assert_close(predict_x0_from_eps(schedule, xt, t, eps_hat), x0, scale=scale, tol=tol,
                 what=f"x0 -> eps -> your x0 at t = {t}")


@given(posterior_inputs(min_t=1))
def test_e14_round_trips_through_v(inputs):
    """[E14] v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 determines (x0, eps) given x_t and back:
    with the true pair, v -> (x0, eps) recovers it; any v -> (x0, eps) -> v returns v; eps -> v -> eps too.
    Float64, 1e-12 relative to the magnitudes of the terms."""
    schedule, t, x0, eps, xt = inputs
    v = v_from_eps_x0(schedule, eps, x0, t)
    scale = np.abs(xt) + np.abs(v) + np.abs(x0) + np.abs(eps)
    assert_close(predict_x0_from_v(schedule, xt, t, v), x0, scale=scale, tol=ROUND_TRIP)
    assert_close(predict_eps_from_v(schedule, xt, t, v), eps, scale=scale, tol=ROUND_TRIP)
    w = np.sin(5 * v)  # any velocity
    x0_w, eps_w = predict_x0_from_v(schedule, xt, t, w), predict_eps_from_v(schedule, xt, t, w)
    scale = np.abs(xt) + np.abs(w) + np.abs(x0_w) + np.abs(eps_w)
    assert_close(v_from_eps_x0(schedule, eps_w, x0_w, t), w, scale=scale, tol=ROUND_TRIP)
    if schedule.alpha_bars[t] > 0:  # eps -> v -> eps
        x0_e = predict_x0_from_eps(schedule, xt, t, w)
        v_e = v_from_eps_x0(schedule, w, x0_e, t)
        scale = np.abs(xt) + np.abs(w) + np.abs(x0_e) + np.abs(v_e)
        assert_close(predict_eps_from_v(schedule, xt, t, v_e), w, scale=scale, tol=ROUND_TRIP)


@given(posterior_inputs(min_t=1))
def test_e14_v_is_the_velocity_along_the_quarter_circle(inputs):
    """[E14] With x(phi) = cos(phi) x_0 + sin(phi) eps and cos(phi_t) = sqrt(alpha_bar_t), x(phi_t) = x_t and
    v = dx/dphi at phi_t. Central differences (h = 1e-5, error h^2/6 |x'''| <= 2e-11 |x|) must agree."""
    schedule, t, x0, eps, xt = inputs
    phi = math.atan2(schedule.sqrt_one_minus_alpha_bars[t], schedule.sqrt_alpha_bars[t])
    h = 1e-5

    def x_at(p):
        return math.cos(p) * x0 + math.sin(p) * eps

    numeric = (x_at(phi + h) - x_at(phi - h)) / (2 * h)
    magnitude = np.abs(x0) + np.abs(eps)
    assert np.all(np.abs(v_from_eps_x0(schedule, eps, x0, t) - numeric) <= 1e-9 * (1 + magnitude))
    assert np.all(np.abs(x_at(phi) - xt) <= 1e-12 * (1 + magnitude))


@given(posterior_inputs(min_t=1))
def test_e27_score_from_eps_is_the_gradient_of_log_q(inputs):
    """[E27] grad_x log q(x_t | x_0) at x_t = a x_0 + b eps is -eps / b; central differences of the Gaussian log
    density (it factorizes, so the gradient is elementwise) agree; eps_from_score inverts it exactly."""
    schedule, t, x0, eps, xt = inputs
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    h = 1e-4 * b

    def log_q(x):
        return log_gaussian(x, a * x0, b**2)

    numeric = (log_q(xt + h) - log_q(xt - h)) / (2 * h)  # exact for a quadratic, up to rounding ~ u |log q| / h
    score = score_from_eps(schedule, eps, t)
    assert np.all(np.abs(score - numeric) <= 1e-7 * (np.abs(score) + 1.0 / b**2))
    assert_close(eps_from_score(schedule, score, t), eps, scale=np.abs(eps), tol=ROUND_TRIP)


# --- E10: one Gaussian, whatever the parameterization ------------------------------------------------


@given(posterior_inputs(min_t=1, informative_eps=True), st.booleans())
def test_e10_the_reverse_step_does_not_depend_on_the_parameterization(inputs, clip):
    """[E10][E12][E13][E14] One prediction written as eps, as x0 = (x_t - b eps) / a or as v = a eps - b x0
    (computed here) gives the same p_theta(x_{t-1} | x_t): the same mean (E12 for eps, E11 at the estimated x0
    otherwise), variance and implied (x0, eps); with clipping of x0 to [-1, 1] as well."""
    schedule, t, _, eps_theta, xt = inputs
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    x0_theta = (xt - b * eps_theta) / a
    v_theta = a * eps_theta - b * x0_theta
    steps = {kind: p_mean_variance(schedule, out, xt, t, prediction_type=kind, clip_denoised=clip)
             for kind, out in (("epsilon", eps_theta), ("sample", x0_theta), ("v_prediction", v_theta))}
    ref = steps["epsilon"]
    scale = (np.abs(xt) + np.abs(x0_theta) + np.abs(eps_theta)) / (a * math.sqrt(schedule.alphas[t]))
    for kind in ("sample", "v_prediction"):
        assert_close(steps[kind].mean, ref.mean, scale=scale, what=kind)
        assert_close(steps[kind].x0_pred, ref.x0_pred, scale=scale, what=kind)
        np.testing.assert_array_equal(steps[kind].variance, ref.variance)
    if clip:
        assert np.all(np.abs(ref.x0_pred) <= 1.0)


@pytest.mark.parametrize("t", [1, 2, 57, 100])
def test_e10_variance_choices_and_the_learned_range(t):
    """[E10] fixed_small = beta_tilde_t (at t = 1: beta_tilde_2), fixed_large = beta_t; the learned range
    interpolates log-linearly: v = -1 gives beta_tilde_t, v = 1 gives beta_t, v = 0 their geometric mean."""
    schedule = noise_schedule("linear", 100)
    like = np.zeros((1, 3))
    small, log_small = reverse_variance(schedule, t, like, "fixed_small")
    large, _ = reverse_variance(schedule, t, like, "fixed_large")
    beta, beta_tilde = schedule.betas[t], schedule.posterior_variance[max(t, 2)]
    assert_close(small, np.full((1, 3), beta_tilde))
    assert_close(log_small, np.full((1, 3), math.log(beta_tilde)))
    assert_close(large, np.full((1, 3), beta))
    v = np.array([[-1.0, 0.0, 1.0]])
    learned, log_learned = reverse_variance(schedule, t, like, "learned_range", var_output=v)
    assert_close(learned, np.array([[beta_tilde, math.sqrt(beta * beta_tilde), beta]]))
    assert_close(log_learned, np.log(learned))
    assert beta_tilde < beta


def test_e10_learned_range_with_an_autodiff_tensor():
    """[E10] The learned variance is built with arithmetic only: a Tensor output gives the same Gaussian and a
    gradient d log sigma^2 / dv = (log beta_t - log beta_tilde_t) / 2."""
    schedule = noise_schedule("cosine", 50)
    xt = np.linspace(-1, 1, 8).reshape(2, 1, 2, 2)
    raw = np.concatenate([np.cos(np.arange(8.0)).reshape(2, 1, 2, 2), np.full((2, 1, 2, 2), 0.25)], axis=1)
    out = md.tensor(raw, requires_grad=True)
    step = p_mean_variance(schedule, out, xt, 20, variance_type="learned_range")
    plain = p_mean_variance(schedule, raw, xt, 20, variance_type="learned_range")
    assert_close(step.mean.detach().numpy(), plain.mean)
    assert_close(step.log_variance.detach().numpy(), plain.log_variance)
    step.log_variance.sum().backward()
    slope = 0.5 * (schedule.log_betas[20] - schedule.posterior_log_variance_clipped[20])
    assert_close(out.grad[:, 1:], np.full((2, 1, 2, 2), slope))
    np.testing.assert_array_equal(out.grad[:, :1], 0.0)


# --- E16: ancestral steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [1, 2, 30, 60])
def test_e16_fused_step_equals_the_gaussian_step(prediction_type, variance_type, clip, t):
    """[E16] The fused kernel with `ancestral_step_coefs` computes mu_theta + sigma_t z of p_mean_variance
    (sigma_t = 0 at t = 1), on the current backend, float64 and float32."""
    schedule = noise_schedule("sigmoid", 60)
    rng = np.random.default_rng(t)
    for dtype in (np.float64, np.float32):
        xt, out, z = (rng.standard_normal((3, 5)).astype(dtype) for _ in range(3))
        coefs = ancestral_step_coefs(schedule, t, prediction_type=prediction_type, variance_type=variance_type,
                                     clip_denoised=clip)
        fused = sampler_step(xt, out, z if t > 1 else None, coefs)
        step = p_mean_variance(schedule, out.astype(np.float64), xt.astype(np.float64), t,
                               prediction_type=prediction_type, variance_type=variance_type, clip_denoised=clip)
        expected = step.mean + (np.sqrt(step.variance) * z if t > 1 else 0.0)
        scale = (np.abs(xt) + np.abs(out) + np.abs(z)) / schedule.sqrt_alpha_bars[t]
        assert_close(fused, expected, dtype=dtype, scale=scale)
        assert_close(p_sample(schedule, out, xt, t, noise=z, prediction_type=prediction_type,
                              variance_type=variance_type, clip_denoised=clip), expected, dtype=dtype, scale=scale)


def test_e9_e16_fused_and_general_sampling_loops_agree():
    """[E9][E16] A learned-range model that always outputs v = 1 is the fixed_large process: the general path
    (p_sample per step) and the fused path draw the same z from one seed and end at the same samples."""
    data = GaussianData(noise_schedule("linear", 40).betas[1:], 0.2, 0.6)
    schedule = noise_schedule("linear", 40)

    def learned(xt, t):
        return np.concatenate([data.eps_model(xt, t), np.ones_like(xt)], axis=1)

    shape = (64, 2)
    fused = p_sample_loop(schedule, data.eps_model, shape, np.random.default_rng(5), variance_type="fixed_large",
                          return_trajectory=True)
    general = p_sample_loop(schedule, learned, shape, np.random.default_rng(5), variance_type="learned_range",
                            return_trajectory=True)
    assert fused.shape == (41, *shape)
    assert_close(general, fused, scale=(1 + np.abs(fused)))


@pytest.mark.parametrize(("kind", "prediction_type"), [("linear", "epsilon"), ("cosine", "sample"),
                                                       ("zero_terminal_snr", "v_prediction")])
def test_e9_e16_ancestral_sampling_with_the_exact_reverse_process_gives_the_data(kind, prediction_type):
    """[E9][E16] Gaussian data N(0.5, 0.3^2): starting from q(x_T) and stepping with the exact reverse variances
    and the optimal model, x_0 must be distributed as the data, except that the last step returns the
    decoder's mean E[x_0 | x_1] (z = 0 at t = 1), whose variance is s^2 - Var(x_0 | x_1). N = 20000, fixed seed:
    the sample mean within 5 standard errors (sd / sqrt(N)), the sample variance within 5 (var sqrt(2 / N))."""
    schedule = noise_schedule(kind, 100)
    data = GaussianData(schedule.betas[1:], 0.5, 0.3)
    n = 20000
    rng = np.random.default_rng(8)
    prior_mean, prior_variance = data.prior()
    x_T = prior_mean + math.sqrt(prior_variance) * rng.standard_normal((n, 1))
    table = data.reverse_variance_table()
    x0 = p_sample_loop(schedule, data.model(prediction_type), (n, 1), rng, x_T=x_T, prediction_type=prediction_type,
                       variance_type=table)
    variance = 0.09 - table[1]
    assert abs(x0.mean() - 0.5) < 5 * math.sqrt(variance / n)
    assert abs(x0.var() - variance) < 5 * variance * math.sqrt(2 / n)


# --- ex03.3: the ancestral sampling loop ---------------------------------------------------------------------


def check(ok: bool, message: str) -> None:
    """A failure that says only what to fix (no introspection of the arrays involved)."""
    if not ok:
        raise AssertionError(message)


def any_model(learned_range: bool = False):
    """A model(x_t, t) that is some smooth function of both (sin(x_t + t / 10)); with learned_range, C more
    channels u = tanh(x_t) in [-1, 1] for the variance (improved DDPM's interpolation)."""

    def model(xt, t):
        tt = np.asarray(t).reshape(-1, *(1,) * (xt.ndim - 1)) / 10.0
        out = np.sin(xt + tt).astype(xt.dtype)
        return np.concatenate([out, np.tanh(xt)], axis=1) if learned_range else out

    return model


def hand_composition(schedule, model, x_T, noises, **options):
    """E16 written out: x_{t-1} = p_sample(model(x_t, t), x_t, t, z_t) for t = T, ..., 1, with z_t = noises[t]
    for t > 1 and z_1 = 0. Returns the chain [x_0, ..., x_T]."""
    chain = {schedule.T: x_T}
    for t in range(schedule.T, 0, -1):
        xt = chain[t]
        z = noises[t] if t > 1 else np.zeros_like(xt)
        chain[t - 1] = p_sample(schedule, model(xt, np.full(len(xt), t)), xt, t, noise=z, **options)
    return np.stack([chain[t] for t in range(schedule.T + 1)])


@pytest.mark.exercise("ex03.3")
@pytest.mark.parametrize(("kind", "prediction_type", "variance_type", "dtype", "shape"), [
    ("linear", "epsilon", "fixed_small", np.float64, (5, 3)),
    ("cosine", "sample", "fixed_large", np.float64, (2, 1, 3, 3)),
    ("zero_terminal_snr", "v_prediction", "learned_range", np.float64, (4, 2)),
    ("linear", "epsilon", "fixed_large", np.float32, (6, 2)),
], ids=["eps-small", "x0-large-images", "v-learned", "eps-float32"])
def test_e16_the_loop_is_the_composition_of_p_sample_steps(kind, prediction_type, variance_type, dtype, shape):
    """[E9][E16] With the noise of one seed, drawn in the documented order (x_T, then z_T, ..., z_2), the loop must
    give the chain composed here by hand from single p_sample steps, every x_t of it."""
    schedule = noise_schedule(kind, 24)
    model = any_model(variance_type == "learned_range")
    rng = np.random.default_rng(3)
    x_T = rng.standard_normal(shape, dtype=dtype)
    noises = {t: rng.standard_normal(shape, dtype=dtype) for t in range(schedule.T, 1, -1)}
    options = {"prediction_type": prediction_type, "variance_type": variance_type}
    expected = hand_composition(schedule, model, x_T, noises, **options)
    chain = p_sample_loop(schedule, model, shape, np.random.default_rng(3), dtype=dtype, return_trajectory=True,
                          **options)
    check(isinstance(chain, np.ndarray) and chain.shape == expected.shape,
          f"return_trajectory=True: expected an array of shape (T + 1, *shape) = {expected.shape}, got "
          f"{getattr(chain, 'shape', type(chain).__name__)}")
    assert_close(chain[schedule.T], x_T, what="trajectory[T] should be x_T, the first draw of rng:")
    for t in range(schedule.T - 1, -1, -1):
        assert_close(chain[t], expected[t], scale=1.0 + np.abs(expected[t]),
                     what=f"x_{t} (trajectory[{t}]) is not p_sample applied to x_{t + 1} with the next noise draw:")
    x0 = p_sample_loop(schedule, model, shape, np.random.default_rng(3), dtype=dtype, **options)
    assert_close(x0, expected[0], scale=1.0 + np.abs(expected[0]), what="without return_trajectory, x_0:")


@pytest.mark.exercise("ex03.3")
def test_e9_e16_the_loop_with_the_exact_mixture_eps_draws_the_mixture():
    """[E9][E16] With the exact eps of a noised Gaussian mixture (3 components, 2-D), ancestral sampling from
    N(0, I) must draw the mixture: means, covariances and mixture weights within 5 standard errors of fresh
    draws (T = 100, sigma_t^2 = beta_t, 2000 samples; the sampler's own bias there is below 0.5 s.e.)."""
    from test_samplers_gmm import GMM, assert_same_distribution

    schedule = noise_schedule("linear", 100)
    samples = p_sample_loop(schedule, GMM.eps_model(schedule), (2000, 2), np.random.default_rng(11),
                            variance_type="fixed_large")
    check(isinstance(samples, np.ndarray) and samples.shape == (2000, 2),
          f"expected x_0 of shape (2000, 2), got {getattr(samples, 'shape', type(samples).__name__)}")
    assert_same_distribution(samples, np.random.default_rng(12), "the samples of p_sample_loop")


@pytest.mark.exercise("ex03.3")
@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_e16_the_last_step_adds_no_noise(variance_type):
    """[E16] z = 0 at t = 1: x_0 is the mean mu_theta(x_1, 1) of the last reverse step, not a draw around it."""
    schedule = noise_schedule("linear", 25)
    model = any_model(variance_type == "learned_range")
    chain = p_sample_loop(schedule, model, (64, 2), np.random.default_rng(4), variance_type=variance_type,
                          return_trajectory=True)
    x1 = chain[1]
    mean = p_mean_variance(schedule, model(x1, np.full(64, 1)), x1, 1, variance_type=variance_type).mean
    assert_close(chain[0], mean, scale=1.0 + np.abs(mean), what="x_0 should be mu_theta(x_1, 1), with no noise:")


@pytest.mark.exercise("ex03.3")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("given_x_T", [False, True])
def test_e16_the_loop_keeps_the_dtype(dtype, given_x_T):
    """float32 in, float32 out: x_T drawn in `dtype` (or the given x_T's dtype), and every step kept in it."""
    schedule = noise_schedule("cosine", 6)
    x_T = np.random.default_rng(0).standard_normal((3, 2)).astype(dtype) if given_x_T else None
    other = np.float64 if dtype == np.float32 else np.float32
    kwargs = {"x_T": x_T, "dtype": other} if given_x_T else {"dtype": dtype}  # a given x_T decides the dtype
    for return_trajectory in (False, True):
        out = p_sample_loop(schedule, any_model(), (3, 2), np.random.default_rng(1),
                            return_trajectory=return_trajectory, **kwargs)
        what = "the trajectory" if return_trajectory else "x_0"
        check(out.dtype == dtype, f"keep the dtype of x_T in {what}: expected {np.dtype(dtype)}, got {out.dtype}")


@pytest.mark.exercise("ex03.3")
def test_e16_the_loop_calls_the_model_T_times_on_the_current_x_t():
    """[E16] One model call per step, t = T, T - 1, ..., 1 in turn, t an integer array with one timestep per
    example (shape (B,)), x the current x_t of the chain; the given x_T is left unchanged."""
    schedule = noise_schedule("cosine", 7)
    calls = []
    base = any_model()

    def model(xt, t):
        calls.append((xt.copy(), np.array(t, copy=True)))
        return base(xt, t)

    x_T = np.random.default_rng(2).standard_normal((4, 3))
    x_T_before = x_T.copy()
    chain = p_sample_loop(schedule, model, (4, 3), np.random.default_rng(5), x_T=x_T, return_trajectory=True)
    got_ts = [c[1].tolist() for c in calls]
    check(len(calls) == schedule.T, f"expected T = {schedule.T} model calls (t = T, ..., 1), got {len(calls)}")
    for k, (xt, t) in enumerate(calls):
        step_t = schedule.T - k
        check(t.shape == (4,) and t.dtype.kind in "iu",
              f"call {k + 1}: pass t as an integer array of shape (B,) = (4,), one per example; got {t!r}")
        check(bool(np.all(t == step_t)), f"call {k + 1} should be at t = {step_t}; the calls had t = {got_ts}")
        assert_close(xt, chain[step_t], what=f"call {k + 1} (t = {step_t}) should see the current x_{step_t}:")
    np.testing.assert_array_equal(x_T, x_T_before, err_msg="x_T was changed in place: start from a copy")


# --- bad input ------------------------------------------------------------------------------------------


def bad_reverse_cases():
    s = noise_schedule("linear", 30)
    zero = noise_schedule("zero_terminal_snr", 30)
    x = np.zeros((2, 3))
    yield "prediction_type", lambda: p_mean_variance(s, x, x, 3, prediction_type="eps"), ValueError, \
        "prediction_type: expected one of"
    yield "variance_type", lambda: p_mean_variance(s, x, x, 3, variance_type="small"), ValueError, \
        "variance_type: expected one of"
    yield "output shape", lambda: p_mean_variance(s, np.zeros((2, 4)), x, 3), ValueError, \
        r"model_output: expected shape \(2, 3\)"
    yield "learned channels", lambda: p_mean_variance(s, x, x, 3, variance_type="learned_range"), ValueError, \
        r"model_output: with variance_type='learned_range' expected shape \(2, 6\)"
    yield "table shape", lambda: p_mean_variance(s, x, x, 3, variance_type=np.ones(30)), ValueError, \
        r"variance_type: expected sigma_t\^2 for t = 0..T, shape \(31,\)"
    yield "table sign", lambda: p_mean_variance(s, x, x, 3, variance_type=-np.ones(31)), ValueError, \
        "variance_type: expected finite positive"
    yield "var_output unused", lambda: reverse_variance(s, 3, x, "fixed_small", var_output=x), ValueError, \
        "var_output: only used with"
    yield "eps at zero SNR", lambda: p_mean_variance(zero, x, x, 30), ValueError, \
        "t: x0 from eps is undefined where alpha_bar_t = 0"
    yield "fused eps at zero SNR", lambda: ancestral_step_coefs(zero, 30), ValueError, "undefined where alpha_bar_t = 0"
    yield "fused learned", lambda: ancestral_step_coefs(s, 3, variance_type="learned_range"), ValueError, \
        "variance_type: 'learned_range' depends on the model output"
    yield "eps shape", lambda: predict_x0_from_eps(s, x, 3, np.zeros(3)), ValueError, r"eps: expected shape \(2, 3\)"
    yield "x0 shape", lambda: q_posterior_mean_variance(s, np.zeros((3, 2)), x, 3), ValueError, \
        r"x0: expected shape \(2, 3\)"
    yield "xt a list", lambda: q_posterior_mean_variance(s, x, x.tolist(), 3), TypeError, \
        "xt: expected a numpy.ndarray"
    yield "xt integers", lambda: q_posterior_mean_variance(s, x, x.astype(int), 3), TypeError, \
        "xt: expected dtype float32 or float64"
    yield "t range", lambda: q_posterior_mean_variance(s, x, x, 31), ValueError, r"t: expected timesteps in 1\.\.30"
    yield "x_T shape", lambda: p_sample_loop(s, lambda a, b: a, (2, 3), np.random.default_rng(0), x_T=x[:1]), \
        ValueError, r"x_T: expected shape \(2, 3\)"


@pytest.mark.parametrize(("call", "error", "message"), [pytest.param(*c[1:], id=c[0]) for c in bad_reverse_cases()])
def test_bad_reverse_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_e16_v_prediction_steps_through_zero_terminal_snr():
    """[E16][E14] At t = T of a zero-terminal-SNR schedule x_T is pure noise; a v model still gives a finite
    step (x0_hat = -v there, eps_hat = x_T)."""
    schedule = noise_schedule("zero_terminal_snr", 30)
    xt = np.random.default_rng(1).standard_normal((2, 3))
    v = np.full((2, 3), 0.5)
    step = p_mean_variance(schedule, v, xt, 30, prediction_type="v_prediction")
    assert_close(step.x0_pred, -v)
    assert_close(step.eps_pred, xt)
    assert np.isfinite(step.mean).all()
