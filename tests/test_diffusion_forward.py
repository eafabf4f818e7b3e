"""The forward process: one step (E1) and the closed-form marginal (E3). The marginal against a
longhand evaluation, against t composed one-step transitions (exactly, on means and variances, and by
a two-sample test on draws), the SNR of its coefficients (E4), explicit randomness, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import SCHEDULE_KINDS, float_arrays, float_dtypes, noise_schedule, schedule_and_t
from tolerances import assert_close

from minidiff.diffusion import q_mean_variance, q_sample, q_sample_trajectory, q_step, q_step_mean_variance


def longhand_alpha_bar(schedule, t: int) -> tuple[float, float]:
    """(alpha_bar_t, 1 - alpha_bar_t) in Python floats from the betas: an exact sum of logs (math.fsum),
    then exp and expm1 (so 1 - alpha_bar_t keeps its digits when alpha_bar_t is near 1)."""
    log_ab = math.fsum(math.log1p(-b) if b < 1 else -math.inf for b in schedule.betas[1 : t + 1])
    return math.exp(log_ab), -math.expm1(log_ab)


@st.composite
def marginal_inputs(draw):
    schedule, _ = draw(schedule_and_t(max_T=200))
    dtype = draw(float_dtypes)
    batch = draw(st.integers(1, 4))
    shape = (batch, *draw(st.lists(st.integers(1, 3), max_size=2)))
    per_example = draw(st.booleans())
    steps = st.integers(1, schedule.T)
    t = np.array(draw(st.lists(steps, min_size=batch, max_size=batch))) if per_example else draw(steps)
    return schedule, t, draw(float_arrays(dtype, shape)), draw(float_arrays(dtype, shape, bound=5.0))


@pytest.mark.exercise("ex02.2")
@given(marginal_inputs())
def test_e3_q_sample_is_the_closed_form_element_by_element(inputs):
    """[E3] x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, alpha_bar_t from the betas in Python floats,
    for one t per batch or one per example, float32 and float64."""
    schedule, t, x0, eps = inputs
    got = q_sample(schedule, x0, t, noise=eps)
    assert got.dtype == x0.dtype and got.shape == x0.shape
    steps = np.broadcast_to(t, x0.shape[:1])
    expected, scale = np.empty(x0.shape), np.empty(x0.shape)
    for b, step in enumerate(steps):
        ab, one_minus_ab = longhand_alpha_bar(schedule, int(step))
        signal, noise = math.sqrt(ab) * x0[b].astype(np.float64), math.sqrt(one_minus_ab) * eps[b].astype(np.float64)
        expected[b], scale[b] = signal + noise, np.abs(signal) + np.abs(noise)
    assert_close(got, expected, scale=scale)


@pytest.mark.exercise("ex02.2")
@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_e4_q_sample_coefficients_have_ratio_snr(kind):
    """[E4][E3] The squared ratio of x_t's signal coefficient to its noise coefficient is SNR(t), for every t
    (one t per example)."""
    schedule = noise_schedule(kind, 100)
    t = np.arange(1, 101)
    ones, zeros = np.ones((100, 1)), np.zeros((100, 1))
    signal = q_sample(schedule, ones, t, noise=zeros).ravel()  # sqrt(alpha_bar_t)
    noise = q_sample(schedule, zeros, t, noise=ones).ravel()  # sqrt(1 - alpha_bar_t)
    assert_close((signal / noise) ** 2, schedule.snr[1:], scale=schedule.snr[1:])
    assert_close(signal**2 + noise**2, np.ones(100), scale=1.0)


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_e3_e1_composed_steps_give_the_marginal_exactly(kind):
    """[E1][E3] Composing the Gaussian steps x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z: the mean is multiplied
    by the step's mean coefficient and the variance becomes coef^2 var + beta_t. After t steps from x_0 they
    must be E3's sqrt(alpha_bar_t) x_0 and 1 - alpha_bar_t, for every t."""
    schedule = noise_schedule(kind, 250)
    x0 = np.array([1.0, -0.5, 0.0, 2.5])
    mean, variance = x0.copy(), np.zeros_like(x0)
    for t in range(1, schedule.T + 1):
        coef = q_step_mean_variance(schedule, np.ones(1), t)[0]  # the step's mean is linear: coef * x_prev
        mean, step_variance = q_step_mean_variance(schedule, mean, t)
        variance = coef**2 * variance + step_variance
        expected_mean, expected_variance = q_mean_variance(schedule, x0, t)
        # t rounded multiplications and additions: scale by t
        assert_close(mean, expected_mean, scale=t * np.abs(x0), what=f"mean at t={t}:")
        assert_close(variance, expected_variance, scale=np.full(4, float(t)), what=f"variance at t={t}:")
    assert mean.shape == x0.shape and expected_variance.shape == x0.shape


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: sup_x |F_a(x) - F_b(x)| of the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, points, "right") / a.size
                               - np.searchsorted(b, points, "right") / b.size)))


@pytest.mark.exercise("ex02.2")
@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_e3_e1_two_sample_test_of_composed_steps_against_the_marginal(kind):
    """[E1][E3] Draws of x_t by t one-step transitions (q_sample_trajectory) and by one closed-form draw
    (q_sample) are two samples of one distribution, for t = 1, T/5, T and two data values.

    Statistics, N = 4000 per sample, fixed seed:
    * KS: under H0, P(D > c sqrt(2/N)) ~ 2 exp(-2 c^2) (asymptotic two-sample Kolmogorov distribution); at
      c = sqrt(ln(2/alpha)/2) with alpha = 1e-4 per comparison, 30 comparisons keep the family-wise level
      below 3e-3. A draw with the wrong noise scale (e.g. beta_t for sqrt(beta_t)) moves the CDF by far more.
    * Means: |difference| < 4.5 standard errors sqrt(v1/N + v2/N), and each mean within 4.5 standard errors
      of E3's sqrt(alpha_bar_t) x_0; variances: |v1 - v2| < 4.5 sqrt(2 v1^2/N + 2 v2^2/N) (Var of a Gaussian
      sample variance is 2 sigma^4 / (N - 1)).
    """
    n, alpha = 4000, 1e-4
    schedule = noise_schedule(kind, 250)
    rng = np.random.default_rng(2024)
    x0 = np.broadcast_to(np.array([1.0, -0.5]), (n, 2)).copy()
    chain = q_sample_trajectory(schedule, x0, rng)  # (T + 1, n, 2)
    critical = math.sqrt(math.log(2 / alpha) / 2) * math.sqrt(2 / n)
    for t in (1, schedule.T // 5, schedule.T):
        direct = q_sample(schedule, x0, t, rng=rng)
        for j in range(2):
            a, b = chain[t, :, j], direct[:, j]
            assert ks_statistic(a, b) < critical, f"t={t}, column {j}"
            se = math.sqrt(a.var() / n + b.var() / n)
            assert abs(a.mean() - b.mean()) < 4.5 * se
            assert abs(a.mean() - schedule.sqrt_alpha_bars[t] * x0[0, j]) < 4.5 * math.sqrt(a.var() / n)
            assert abs(a.var() - b.var()) < 4.5 * math.sqrt(2 * a.var() ** 2 / n + 2 * b.var() ** 2 / n)


def test_e1_q_step_is_the_one_step_gaussian():
    """[E1] Without noise the step scales by sqrt(1 - beta_t); the noise enters times sqrt(beta_t); the
    trajectory starts at x_0 and each of its steps is q_step."""
    schedule = noise_schedule("linear", 100)
    x = np.array([[2.0, -1.0]])
    for t in (1, 37, 100):
        beta = schedule.betas[t]
        assert_close(q_step(schedule, x, t, noise=np.zeros_like(x)), math.sqrt(1 - beta) * x)
        assert_close(q_step(schedule, np.zeros_like(x), t, noise=np.ones_like(x)), np.full_like(x, math.sqrt(beta)))
    trajectory = q_sample_trajectory(schedule, x, np.random.default_rng(3))
    assert trajectory.shape == (101, 1, 2)
    np.testing.assert_array_equal(trajectory[0], x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e3_the_same_seed_gives_the_same_draw_bit_for_bit(dtype):
    """[E3] rng=Generator(seed) draws exactly the noise standard_normal(shape, dtype) of that seed would."""
    schedule = noise_schedule("cosine", 50)
    x0 = np.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4)
    t = np.array([1, 25, 50])
    a = q_sample(schedule, x0, t, rng=np.random.default_rng(11))
    b = q_sample(schedule, x0, t, noise=np.random.default_rng(11).standard_normal(x0.shape, dtype=dtype))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == dtype


def bad_forward_cases():
    s = noise_schedule("linear", 30)
    x = np.zeros((3, 2))
    rng = np.random.default_rng(0)
    yield "x0 list", lambda: q_sample(s, [[0.0]], 1, rng=rng), TypeError, "x0: expected a numpy.ndarray"
    yield "x0 int", lambda: q_sample(s, np.zeros((3, 2), int), 1, rng=rng), TypeError, "x0: expected dtype float32"
    yield "noise shape", lambda: q_sample(s, x, 1, noise=np.zeros((2, 3))), ValueError, \
        r"noise: expected shape \(3, 2\)"
    yield "noise dtype", lambda: q_sample(s, x, 1, noise=np.zeros((3, 2), np.float32)), TypeError, \
        "noise: expected dtype float64"
    yield "noise and rng", lambda: q_sample(s, x, 1, noise=x, rng=rng), ValueError, "either noise or rng, not both"
    yield "no randomness", lambda: q_sample(s, x, 1), ValueError, "rng: pass a numpy.random.Generator"
    yield "legacy rng", lambda: q_sample(s, x, 1, rng=np.random.RandomState(0)), TypeError, "rng: expected a numpy"
    yield "t 0", lambda: q_sample(s, x, 0, rng=rng), ValueError, r"t: expected timesteps in 1\.\.30"
    yield "t 31", lambda: q_step(s, x, 31, rng=rng), ValueError, r"t: expected timesteps in 1\.\.30"
    yield "t per example", lambda: q_sample(s, x, np.array([1, 2]), rng=rng), ValueError, "one timestep per example"
    yield "x_prev", lambda: q_step(s, np.zeros(3, np.int8), 1, rng=rng), TypeError, "x_prev: expected dtype"


@pytest.mark.parametrize(("call", "error", "message"), [pytest.param(*c[1:], id=c[0]) for c in bad_forward_cases()])
def test_bad_forward_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
