"""Gaussian KL (E23), the discretized decoder (E21), the training loss and its weightings (E15), and the
per-step weight of the bound (E22): Monte Carlo and quadrature, bins that sum to one, independent
evaluations, autodiff Tensors, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import float_arrays, noise_schedule, schedule_and_t
from tolerances import assert_close

import minidiff as md
from minidiff.diffusion import (
    bits_per_dim,
    denoising_term,
    discretized_gaussian_log_likelihood,
    l_simple,
    log_normal_cdf,
    loss_weights,
    normal_kl,
    simple_loss,
    training_target,
    vlb_weight,
)

GRID = -1.0 + 2.0 * np.arange(256) / 255.0  # the 256 values of 8-bit pixels scaled to [-1, 1]


def log_gaussian(x, mean, sd):
    return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


# --- E23: the Gaussian KL --------------------------------------------------------------------------

KL_CASES = [(0.5, 0.7, -0.3, 1.3), (2.0, 0.2, 0.0, 1.0), (0.0, 2.0, 0.5, 1.0), (-1.0, 0.01, -1.01, 0.02),
            (0.3, 1.0, 0.3, 1.0)]


@pytest.mark.exercise("ex04.1")
@pytest.mark.parametrize(("m1", "s1", "m2", "s2"), KL_CASES)
def test_e23_normal_kl_matches_monte_carlo_and_quadrature(m1, s1, m2, s2):
    """[E23] KL(p1 || p2) = E_{x~p1}[log p1(x) - log p2(x)]:
    * Monte Carlo, N = 200000 draws at a fixed seed: within 5 standard errors (sample sd / sqrt(N)) of the
      closed form (a 5-sigma miss has probability 6e-7 per case);
    * the trapezoid rule over m1 +- 14 s1 with 200001 points: within 1e-9 (relative).
    The log densities are written here, not taken from minidiff."""
    kl = float(normal_kl(np.float64(m1), np.float64(2 * math.log(s1)), np.float64(m2), np.float64(2 * math.log(s2))))
    x = m1 + s1 * np.random.default_rng(7).standard_normal(200_000)
    log_ratio = log_gaussian(x, m1, s1) - log_gaussian(x, m2, s2)
    se = log_ratio.std() / math.sqrt(x.size)
    assert abs(log_ratio.mean() - kl) <= 5 * se + 1e-15, \
        f"KL(N({m1}, {s1}^2) || N({m2}, {s2}^2)) is {kl:.6g}; Monte Carlo says {log_ratio.mean():.6g} +- {se:.2g}"
    grid = np.linspace(m1 - 14 * s1, m1 + 14 * s1, 200_001)
    density = np.exp(log_gaussian(grid, m1, s1))
    integral = np.trapezoid(density * (log_gaussian(grid, m1, s1) - log_gaussian(grid, m2, s2)), grid)
    assert kl == pytest.approx(integral, rel=1e-9, abs=1e-12)


@pytest.mark.exercise("ex04.1")
@given(float_arrays(np.float64, (3, 4), bound=5.0), float_arrays(np.float64, (3, 4), bound=4.0),
       st.floats(-3, 3), st.floats(-4, 4))
def test_e23_normal_kl_is_zero_only_at_equality_and_broadcasts(mean1, log_variance1, mean2, log_variance2):
    """[E23] KL(p || p) = 0; KL >= 0 elementwise; a scalar second Gaussian broadcasts like arithmetic; and the
    per-dimension KLs equal the closed form written with standard deviations instead of log-variances."""
    np.testing.assert_allclose(normal_kl(mean1, log_variance1, mean1, log_variance1), 0.0, atol=1e-12)
    kl = normal_kl(mean1, log_variance1, mean2, log_variance2)
    assert kl.shape == (3, 4) and np.all(kl >= -1e-12)
    s1, s2 = np.exp(0.5 * log_variance1), math.exp(0.5 * log_variance2)
    expected = np.log(s2 / s1) + (s1**2 + (mean1 - mean2) ** 2) / (2 * s2**2) - 0.5
    scale = np.abs(np.log(s2 / s1)) + (s1**2 + (mean1 - mean2) ** 2) / (2 * s2**2) + 0.5
    assert_close(kl, expected, scale=scale)


# --- E21: the discretized decoder ------------------------------------------------------------------


@pytest.mark.exercise("ex04.2")
@given(st.floats(-3.0, 3.0), st.floats(-14.0, 4.0), st.sampled_from([np.float32, np.float64]))
def test_e21_the_256_bins_sum_to_one(mean, log_variance, dtype):
    """[E21] The bins partition the real line (edge bins open), so their probabilities sum to 1, for standard
    deviations from 1e-3 (a tenth of a bin) to 7 (the whole range in one bell); float32 images too."""
    log_p = discretized_gaussian_log_likelihood(GRID.astype(dtype), np.float64(mean), np.float64(log_variance))
    assert log_p.dtype == dtype, f"keep x's dtype: expected {np.dtype(dtype)}, got {log_p.dtype}"
    assert np.all(np.isfinite(log_p)) and np.all(log_p <= 0), \
        f"log-probabilities must be finite and <= 0; bins {np.flatnonzero(~(log_p <= 0))[:5]} are not"
    total = math.fsum(np.exp(log_p.astype(np.float64)))
    assert total == pytest.approx(1.0, abs=1e-12 if dtype == np.float64 else 1e-5), \
        f"the 256 bins' probabilities sum to {total:.6g}, not 1: the edge bins take the open tails"


LEGENDRE_40 = np.polynomial.legendre.leggauss(40)


def gauss_legendre_mass(lo: float, hi: float, mean: float, sd: float):
    """P(lo < X < hi) for X ~ N(mean, sd^2) by 40-point Gauss-Legendre quadrature of the density."""
    x, w = LEGENDRE_40
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    return half * float(np.sum(w * np.exp(log_gaussian(mid + half * x, mean, sd))))


@pytest.mark.exercise("ex04.2")
@pytest.mark.parametrize(("mean", "sd"), [(0.0, 0.5), (0.37, 0.01), (-0.9, 0.003), (0.999, 0.05), (-2.0, 1.5)])
def test_e21_bins_are_the_gaussian_mass_of_each_bin(mean, sd):
    """[E21] Each interior bin's probability is the integral of the density over [x - 1/255, x + 1/255]
    (Gauss-Legendre, 40 points: exact to ~1e-15 for these widths); the edge bins hold the open tails,
    P(-1) = Phi((-1 + 1/255 - m) / s) and P(1) = 1 - Phi((1 - 1/255 - m) / s), with Phi from math.erfc."""
    log_p = discretized_gaussian_log_likelihood(GRID, np.float64(mean), np.float64(2 * math.log(sd)))
    expected = np.array([gauss_legendre_mass(x - 1 / 255, x + 1 / 255, mean, sd) for x in GRID])
    expected[0] = 0.5 * math.erfc(-((-1 + 1 / 255 - mean) / sd) / math.sqrt(2))
    expected[-1] = 0.5 * math.erfc(((1 - 1 / 255 - mean) / sd) / math.sqrt(2))
    seen = expected > 1e-250
    assert seen.sum() >= 3
    np.testing.assert_allclose(np.exp(log_p[seen]), expected[seen], rtol=1e-9,
                               err_msg="bin probabilities (index 0 is the bin of x = -1, the last that of x = 1)")


@pytest.mark.exercise("ex04.2")
def test_e21_far_tails_are_finite_and_accurate():
    """[E21] A bin 996 standard deviations from the mean has probability ~exp(-496087): in log space it is
    still exact (Mills' ratio, computed here: log Phi(z) = -z^2/2 - log(-z) - log(2 pi)/2 + log(1 - 1/z^2 + 3/z^4));
    with the mean far outside [-1, 1] no bin is -inf or NaN."""
    sd = 1e-3
    log_p = discretized_gaussian_log_likelihood(np.array([1.0, -1.0]), np.float64(0.0), np.float64(2 * math.log(sd)))
    z = -(1 - 1 / 255) / sd
    expected = -0.5 * z * z - math.log(-z) - 0.5 * math.log(2 * math.pi) + math.log1p(-1 / z**2 + 3 / z**4)
    assert log_p == pytest.approx([expected, expected], rel=1e-13)
    far = discretized_gaussian_log_likelihood(GRID, np.float64(5.0), np.float64(2 * math.log(0.01)))
    assert np.all(np.isfinite(far)) and far[-1] == pytest.approx(0.0, abs=1e-300)
    assert np.all(np.diff(far) > 0)


def test_e21_log_normal_cdf_is_accurate_everywhere():
    """[E21] log Phi(z) against log(erfc(-z / sqrt 2) / 2) from math (relative 1e-14) on [-37.5, 5], where that
    is exact (erfc(26.5) = 1e-307 is still a normal float; the series takes over below -37); for large z,
    log Phi(z) = log(1 - Q(z)) ~ -Q(z), which a naive log would round to 0; increasing on [-1000, 40]."""
    z = np.linspace(-37.5, 5.0, 2001)
    expected = np.array([math.log(0.5 * math.erfc(-v / math.sqrt(2))) for v in z])
    assert_close(log_normal_cdf(z), expected, scale=np.abs(expected))
    for v in (10.0, 20.0, 30.0):
        assert float(log_normal_cdf(v)) == pytest.approx(-0.5 * math.erfc(v / math.sqrt(2)), rel=1e-12)
    assert np.all(np.diff(log_normal_cdf(np.linspace(-1000, 40, 100_001))) >= 0)
    assert np.isnan(log_normal_cdf(np.nan))


def test_e21_bits_per_dim_is_nats_over_d_ln_2():
    """[E21] A uniform byte carries 8 bits: D ln 256 nats over D values is 8 bits per dimension."""
    assert bits_per_dim(3072 * math.log(256.0), 3072) == pytest.approx(8.0, rel=1e-15)
    with pytest.raises(ValueError, match="num_dims: expected a positive integer"):
        bits_per_dim(1.0, 0)


@pytest.mark.parametrize(("x0", "mean", "error", "message"), [
    (np.array([1.5, 0.0]), 0.0, ValueError, r"x0: expected pixel values in \[-1, 1\]"),
    (np.array([0, 128, 255], np.uint8), 0.0, ValueError, "x0: expected pixel values scaled to"),
    (np.array([0.5]), 0.0, ValueError, "x0: expected values on the 8-bit grid"),
    (np.array([np.nan]), 0.0, ValueError, r"x0: expected pixel values in \[-1, 1\]"),
    (GRID[:4], np.zeros(3), ValueError, r"mean: expected a shape that broadcasts to x0's \(4,\)"),
    ([0.0], 0.0, TypeError, "x0: expected a numpy.ndarray"),
])
def test_e21_bad_pixels_get_a_clear_error(x0, mean, error, message):
    """[E21] Data not scaled to the 8-bit grid in [-1, 1] is refused, naming the argument."""
    with pytest.raises(error, match=message):
        discretized_gaussian_log_likelihood(x0, mean, np.float64(0.0))


# --- E15: the training loss and its weightings ------------------------------------------------------


@st.composite
def loss_inputs(draw):
    schedule, _ = draw(schedule_and_t(max_T=200, informative_eps=True))
    batch = draw(st.integers(1, 4))
    top = schedule.T - 1 if schedule.zero_terminal_snr else schedule.T
    t = np.array(draw(st.lists(st.integers(1, top), min_size=batch, max_size=batch)))
    x0, eps, eps_theta = (draw(float_arrays(np.float64, (batch, 3), bound=3.0)) for _ in range(3))
    return schedule, t, x0, eps, eps_theta


@given(loss_inputs(), st.floats(0.5, 20.0))
def test_e15_every_target_and_weighting_is_one_weighted_x0_loss(inputs, gamma):
    """[E15][E14] A prediction eps_theta, written as x0_theta = (x_t - b eps_theta) / a and v_theta = a eps_theta -
    b x0_theta (here), is scored against its target (eps, x0, v = a eps - b x0). Weighted by `loss_weights`, all
    three give mean_b w_b mean_d (x0 - x0_theta)^2 with w = min(SNR, gamma) ("min_snr") or SNR ("snr"), SNR =
    a^2 / b^2 computed here; unweighted, the eps target is L_simple itself."""
    schedule, t, x0, eps, eps_theta = inputs
    a = schedule.sqrt_alpha_bars[t][:, None]
    b = schedule.sqrt_one_minus_alpha_bars[t][:, None]
    xt = a * x0 + b * eps
    x0_theta = (xt - b * eps_theta) / a
    predictions = {"epsilon": eps_theta, "sample": x0_theta, "v_prediction": a * eps_theta - b * x0_theta}
    targets = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}
    snr = (a[:, 0] / b[:, 0]) ** 2
    x0_error = ((x0 - x0_theta) ** 2).mean(axis=1)
    for weighting, w in (("min_snr", np.minimum(snr, gamma)), ("snr", snr)):
        expected = float(np.mean(w * x0_error))
        for kind in predictions:
            weights = loss_weights(schedule, t, kind, weighting, gamma)
            assert_close(training_target(schedule, x0, eps, t, kind), targets[kind],
                         scale=np.abs(a * eps) + np.abs(b * x0))
            got = simple_loss(predictions[kind], targets[kind], weights)
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (weighting, kind)
    assert simple_loss(eps_theta, eps) == pytest.approx(np.mean((eps - eps_theta) ** 2), rel=1e-13)
    np.testing.assert_array_equal(loss_weights(schedule, t, "sample"), 1.0)


def test_e15_min_snr_weights_at_zero_terminal_snr():
    """[E15] At SNR_T = 0 the eps weight min(SNR, gamma) / SNR takes its limit 1; the x0 and v weights are 0."""
    schedule = noise_schedule("zero_terminal_snr", 50)
    t = np.array([1, 50])
    for kind, last in (("epsilon", 1.0), ("sample", 0.0), ("v_prediction", 0.0)):
        w = loss_weights(schedule, t, kind, "min_snr", 5.0)
        assert np.isfinite(w).all() and w[1] == last


@pytest.mark.exercise("ex04.3")
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_e15_l_simple_of_the_perfect_and_of_the_zero_model(prediction_type):
    """[E15] A model that knows x0 (and so recovers eps from x_t) scores 0; the zero model scores the mean
    squared target, eps^2, x0^2 or (a eps - b x0)^2, computed here for the given t and noise."""
    schedule = noise_schedule("cosine", 100)
    rng = np.random.default_rng(3)
    x0, eps = rng.uniform(-1, 1, (6, 2, 3)), rng.standard_normal((6, 2, 3))
    t = np.array([1, 5, 20, 50, 99, 100])
    a, b = (schedule.sqrt_alpha_bars[t][:, None, None], schedule.sqrt_one_minus_alpha_bars[t][:, None, None])
    targets = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}

    def perfect(xt, t_model):
        np.testing.assert_array_equal(t_model, t)
        eps_recovered = (xt - a * x0) / b
        return {"epsilon": eps_recovered, "sample": x0, "v_prediction": a * eps_recovered - b * x0}[prediction_type]

    assert l_simple(schedule, perfect, x0, t=t, noise=eps, prediction_type=prediction_type) < 1e-24
    zero = l_simple(schedule, lambda xt, _: np.zeros_like(xt), x0, t=t, noise=eps, prediction_type=prediction_type)
    assert zero == pytest.approx(np.mean(targets[prediction_type] ** 2), rel=1e-12)


@pytest.mark.exercise("ex04.3")
def test_e15_l_simple_differentiates_through_an_autodiff_tensor():
    """[E15] With a Tensor model w * x_t, L = mean_b weight_b mean_d (w x_t - eps)^2 has dL/dw =
    mean_b weight_b mean_d 2 (w x_t - eps) x_t; the value and the gradient match numpy's."""
    schedule = noise_schedule("linear", 100)
    rng = np.random.default_rng(4)
    x0, eps, t = rng.uniform(-1, 1, (5, 4)), rng.standard_normal((5, 4)), np.array([3, 30, 60, 90, 100])
    w = md.tensor(np.array(0.8), requires_grad=True)
    loss = l_simple(schedule, lambda xt, _: w * xt, x0, t=t, noise=eps, weighting="min_snr", gamma=5.0)
    xt = schedule.sqrt_alpha_bars[t][:, None] * x0 + schedule.sqrt_one_minus_alpha_bars[t][:, None] * eps
    snr = schedule.snr[t]
    weight = (np.minimum(snr, 5.0) / snr)[:, None]
    assert float(loss.item()) == pytest.approx(np.mean(weight * (0.8 * xt - eps) ** 2), rel=1e-12)
    loss.backward()
    assert float(w.grad) == pytest.approx(np.mean(weight * 2 * (0.8 * xt - eps) * xt), rel=1e-12)


@pytest.mark.exercise("ex04.3")
def test_e15_l_simple_draws_t_uniformly_from_the_generator():
    """[E15] Without t the timesteps are uniform on 1..T from rng: over 64000 draws every t in 1..4 appears
    16000 +- 5 sd (sd = sqrt(64000 * 1/4 * 3/4) = 110)."""
    schedule = noise_schedule("cosine", 4)
    seen = []
    l_simple(schedule, lambda xt, t: seen.append(t) or np.zeros_like(xt), np.zeros((64000, 1)),
             rng=np.random.default_rng(0))
    counts = np.bincount(seen[0], minlength=5)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 16000) < 5 * 110)


def hand_q_sample(schedule, x0, t, eps):
    """(x_t, alpha_bar_t) with x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (E3) in float64, one t per
    example, alpha_bar_t = prod_{s <= t} (1 - beta_s) re-derived here from the betas."""
    ab = np.cumprod(1.0 - schedule.betas[1:])[t - 1].reshape(-1, *[1] * (x0.ndim - 1))  # (B, 1, ...)
    return np.sqrt(ab) * x0.astype(np.float64) + np.sqrt(1.0 - ab) * eps.astype(np.float64), ab


@pytest.mark.exercise("ex04.3")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_e15_l_simple_from_a_generator_is_the_hand_formula(dtype, prediction_type):
    """[E15][E3] Ho et al.'s Algorithm 1 with a seeded generator, rebuilt here from a generator with the same seed:
    t ~ U{1..T} drawn first (rng.integers(1, T + 1, B)), then eps ~ N(0, I) of x0's shape and dtype; the model is
    called once, on x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps and t of shape (B,); the loss is the mean
    over every element of (output - target)^2, target eps, x0 or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0,
    in x0's dtype."""
    T, batch = 50, 7
    schedule = noise_schedule("cosine", T)
    x0 = np.random.default_rng(8).uniform(-1, 1, (batch, 2, 3)).astype(dtype)
    calls = []

    def model(xt, t):  # any function of (x_t, t)
        calls.append((np.array(xt), np.array(t)))
        return np.tanh(xt) * (np.asarray(t) / T).reshape(-1, 1, 1).astype(dtype)

    loss = l_simple(schedule, model, x0, rng=np.random.default_rng(9), prediction_type=prediction_type)
    rng = np.random.default_rng(9)
    t = rng.integers(1, T + 1, size=batch)
    eps = rng.standard_normal(x0.shape, dtype=dtype)
    xt, ab = hand_q_sample(schedule, x0, t, eps)
    assert len(calls) == 1, f"call the model once, on the whole batch (it was called {len(calls)} times)"
    seen_xt, seen_t = calls[0]
    assert seen_t.shape == (batch,) and np.array_equal(seen_t, t), \
        "draw t first, uniform on 1..T: t = schedule.sample_timesteps(rng, B)"
    assert seen_xt.dtype == dtype, f"keep x0's dtype: the model got x_t of dtype {seen_xt.dtype}, expected {dtype}"
    assert np.allclose(seen_xt, xt, rtol=1e-5, atol=1e-6), \
        "x_t = q_sample(schedule, x0, t, noise=eps), eps = rng.standard_normal(x0.shape, dtype=x0.dtype) drawn after t"
    target = {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[prediction_type]
    expected = np.mean((model(xt.astype(dtype), t).astype(np.float64) - target) ** 2)
    got = np.asarray(loss).dtype
    assert got == dtype, f"keep x0's dtype: expected a {np.dtype(dtype)} loss, got {got}"
    assert float(loss) == pytest.approx(expected, rel=1e-5 if dtype == np.float32 else 1e-12), \
        f"the loss is the mean of (model output - {prediction_type} target)^2 over every element"


@pytest.mark.exercise("ex04.3")
def test_e15_l_simple_gradient_reaches_the_parameters_of_a_linear_eps_model():
    """[E15] For eps_theta(x_t) = x_t W^T + b (an md.nn.Linear, float64), L = mean over the B x D elements of R^2,
    R = x_t W^T + b - eps, so dL/dW = 2 R^T x_t / (B D) and dL/db = 2 sum_b R / (B D): the gradients backward() leaves
    on the parameters equal these, with x_t and eps rebuilt here from the seed."""
    schedule = noise_schedule("linear", 100)
    layer = md.nn.Linear(3, 3, rng=np.random.default_rng(10), dtype=np.float64)
    x0 = np.random.default_rng(11).uniform(-1, 1, (16, 3))
    loss = l_simple(schedule, lambda xt, t: layer(md.Tensor(xt)), x0, rng=np.random.default_rng(12))
    assert isinstance(loss, md.Tensor), \
        f"return the loss as a Tensor built from the model's output (got {type(loss).__name__}): no np.asarray on it"
    loss.backward()
    rng = np.random.default_rng(12)
    t = rng.integers(1, 101, size=16)
    eps = rng.standard_normal(x0.shape)
    xt, _ = hand_q_sample(schedule, x0, t, eps)
    residual = xt @ layer.weight.data.T + layer.bias.data - eps  # (B, D)
    assert float(loss.item()) == pytest.approx(np.mean(residual**2), rel=1e-12), \
        "the loss is the mean over every element of (model output - eps)^2, with t then eps drawn from rng"
    assert layer.weight.grad is not None, "the gradient must reach the model's parameters: keep the graph"
    assert_close(layer.weight.grad, 2 * residual.T @ xt / residual.size, scale=2 * np.abs(residual).T @ np.abs(xt))
    assert_close(layer.bias.grad, 2 * residual.sum(axis=0) / residual.size, scale=2 * np.abs(residual).sum(axis=0))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({}, ValueError, "rng: pass a numpy.random.Generator to draw t"),
    ({"t": 3}, ValueError, "rng: pass a numpy.random.Generator to draw the noise"),
    ({"rng": 0}, ValueError, "rng: pass a numpy.random.Generator to draw t"),
    ({"t": np.array([1, 2])}, ValueError, "t: expected one timestep per example"),
    ({"t": 3, "noise": np.zeros((4, 3))}, ValueError, "noise"),
])
def test_e15_l_simple_bad_input_names_the_argument(kwargs, error, message):
    """[E15] Without rng there is nothing to draw t or eps from; a t or a noise that does not fit x0 is refused."""
    schedule = noise_schedule("linear", 100)
    with pytest.raises(error, match=message):
        l_simple(schedule, lambda xt, t: xt, np.zeros((3, 3)), **kwargs)
    with pytest.raises(ValueError, match="model output"):
        l_simple(schedule, lambda xt, t: xt[:, :2], np.zeros((3, 3)), t=3, noise=np.zeros((3, 3)))


# --- E22: the per-step weight of the bound --------------------------------------------------------------


@st.composite
def kl_inputs(draw):
    schedule, t = draw(schedule_and_t(max_T=200, min_t=2, informative_eps=True))
    batch = draw(st.integers(1, 3))
    x0, eps, eps_theta = (draw(float_arrays(np.float64, (batch, 4), bound=3.0)) for _ in range(3))
    return schedule, t, x0, eps, eps_theta


@pytest.mark.exercise("ex04.4")
@settings(max_examples=60)
@given(kl_inputs(), st.sampled_from(["fixed_small", "fixed_large"]))
def test_e22_the_kl_term_is_lambda_times_the_squared_eps_error(inputs, variance_type):
    """[E22][E20] With the eps-parameterized mean (E12), L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t))
    = lambda_t ||eps - eps_theta||^2 + C_t for ANY eps_theta, with lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t
    (1 - alpha_bar_t)) and C_t = the KL of the variances alone (both evaluated here; C_t = 0 for beta_tilde_t)."""
    schedule, t, x0, eps, eps_theta = inputs
    xt = schedule.sqrt_alpha_bars[t] * x0 + schedule.sqrt_one_minus_alpha_bars[t] * eps
    kl = denoising_term(schedule, eps_theta, x0, xt, t, variance_type=variance_type)
    constant = denoising_term(schedule, eps, x0, xt, t, variance_type=variance_type)
    beta, alpha, ab, ab_prev = (schedule.betas[t], 1 - schedule.betas[t], schedule.alpha_bars[t],
                                schedule.alpha_bars[t - 1])
    sigma2 = (1 - ab_prev) / (1 - ab) * beta if variance_type == "fixed_small" else beta
    lam = beta**2 / (2 * sigma2 * alpha * (1 - ab))
    assert float(vlb_weight(schedule, t, variance_type)) == pytest.approx(lam, rel=1e-10)
    squared = ((eps - eps_theta) ** 2).sum(axis=1)
    scale = lam * (squared + ((np.abs(eps) + np.abs(eps_theta)) ** 2).sum(axis=1)) + np.abs(constant) + 1e-12
    assert_close(kl - constant, lam * squared, scale=scale)
    # C_t = the KL between two Gaussians with equal means, variances beta_tilde_t and sigma_t^2, per dimension:
    # (r - 1 - log r) / 2 with r = beta_tilde_t / sigma_t^2 (0 for fixed_small, > 0 for fixed_large)
    r = (1 - ab_prev) / (1 - ab) * beta / sigma2
    dims = x0.shape[1]
    assert_close(constant, np.full(len(x0), dims * 0.5 * (r - 1 - math.log(r))), scale=dims * (1 + abs(math.log(r))))


def log_normal_density(x, mean, variance):
    return -0.5 * (x - mean) ** 2 / variance - 0.5 * np.log(2 * math.pi * variance)


@pytest.mark.exercise("ex04.4")
@pytest.mark.parametrize(("kind", "T", "t"), [("cosine", 50, 2), ("linear", 100, 30), ("cosine", 50, 50)])
@pytest.mark.parametrize(("prediction_type", "variance_type"),
                         [("epsilon", "fixed_small"), ("epsilon", "fixed_large"), ("sample", "fixed_large")])
def test_e20_denoising_term_is_the_monte_carlo_mean_of_the_log_ratio(kind, T, t, prediction_type, variance_type):
    """[E20][E11][E12][E23] L_{t-1} = E_{x_{t-1} ~ q(. | x_t, x_0)} log [q(x_{t-1} | x_t, x_0) / p(x_{t-1} | x_t)],
    summed over an example's dimensions (shape (B, 2, 3) here: the result is one number per example). Everything is
    written here from the betas: the posterior N(c0 x0 + ct x_t, beta_tilde_t) (E11), the model's mean from an
    imperfect eps (E12: (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t)) or x0 guess (E11 at x0_theta),
    sigma_t^2 = beta_tilde_t or beta_t. M = 20000 draws of x_{t-1} per example: within 5 standard errors."""
    schedule = noise_schedule(kind, T)
    rng = np.random.default_rng(t)
    x0, eps = rng.uniform(-1, 1, (3, 2, 3)), rng.standard_normal((3, 2, 3))
    betas = schedule.betas[1:]  # beta_1..beta_T
    ab = np.cumprod(1.0 - betas)
    beta, alpha, ab_t, ab_prev = betas[t - 1], 1.0 - betas[t - 1], ab[t - 1], ab[t - 2]
    xt = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
    c0, ct = math.sqrt(ab_prev) * beta / (1 - ab_t), math.sqrt(alpha) * (1 - ab_prev) / (1 - ab_t)
    q_mean, q_var = c0 * x0 + ct * xt, (1 - ab_prev) / (1 - ab_t) * beta
    if prediction_type == "epsilon":
        output = eps + 0.3 * np.sin(3 * xt)  # an imperfect noise prediction
        p_mean = (xt - beta / math.sqrt(1 - ab_t) * output) / math.sqrt(alpha)
    else:
        output = 0.8 * x0 - 0.1  # an imperfect x0 prediction
        p_mean = c0 * output + ct * xt
    p_var = q_var if variance_type == "fixed_small" else beta
    kl = denoising_term(schedule, output, x0, xt, t, prediction_type=prediction_type, variance_type=variance_type)
    assert np.shape(kl) == (3,), f"one KL per example, summed over its dimensions: expected (3,), got {np.shape(kl)}"
    m = 20_000
    draws = q_mean + math.sqrt(q_var) * np.random.default_rng(100 + t).standard_normal((m, *x0.shape))  # (M, B, 2, 3)
    log_ratio = (log_normal_density(draws, q_mean, q_var) - log_normal_density(draws, p_mean, p_var)).sum(axis=(2, 3))
    estimate, se = log_ratio.mean(axis=0), log_ratio.std(axis=0) / math.sqrt(m)  # (B,) each
    assert np.all(se > 0)
    assert np.all(np.abs(kl - estimate) < 5 * se), \
        f"KL(q posterior || p_theta step), summed per example: {np.round(kl, 4)}, Monte Carlo {np.round(estimate, 4)}"
