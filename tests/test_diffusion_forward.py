"""The forward process: one step (E1) and the closed-form marginal (E3). The marginal against a
longhand evaluation, against t composed one-step transitions (exactly, on means and variances, and by
a two-sample test on draws), the SNR of its coefficients (E4), explicit randomness, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import SCHEDULE_KINDS, float_arrays, float_dtypes, noise_schedule, schedule_and_t, schedules
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
    assert_close(got, expected, scale=scale, what="x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps")


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
    assert_close((signal / noise) ** 2, schedule.snr[1:], scale=schedule.snr[1:],
                 what="(x0's coefficient / eps's coefficient)^2 = SNR(t) = alpha_bar_t / (1 - alpha_bar_t)")
    assert_close(signal**2 + noise**2, np.ones(100), scale=1.0, what="the squared coefficients of x0 and eps sum to 1")


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


# --- the forward chain, step by step (exercise 2.3) -------------------------------------------------


@st.composite
def chain_inputs(draw):
    schedule = draw(schedules(max_T=60))
    dtype = draw(float_dtypes)
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    return schedule, draw(float_arrays(dtype, shape, bound=5.0)), draw(float_arrays(dtype, (schedule.T, *shape),
                                                                                    bound=4.0))


@pytest.mark.exercise("ex02.3")
@given(chain_inputs())
def test_e1_e3_the_chain_is_the_unrolled_sum_of_its_steps(inputs):
    """[E1][E3] Unrolling x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps_t from x_0 (the induction of chapter 02):
    x_t = sqrt(alpha_bar_t) x_0 + sum_{s <= t} sqrt(alpha_bar_t / alpha_bar_s) sqrt(beta_s) eps_s, with eps_s =
    noise[s - 1]; here in float64 from the betas, for every schedule kind, float32 and float64."""
    schedule, x0, noise = inputs
    got = q_sample_trajectory(schedule, x0, noise=noise)
    assert got.dtype == x0.dtype, f"keep x0's dtype: expected {x0.dtype}, got {got.dtype}"
    assert got.shape == (schedule.T + 1, *x0.shape), f"expected shape (T + 1, *x0.shape), got {got.shape}"
    np.testing.assert_array_equal(got[0], x0, err_msg="out[0] must be x0 itself")
    betas = [float(b) for b in schedule.betas]  # betas[t] is beta_t

    def sqrt_alpha_product(s: int, t: int) -> float:
        """sqrt(alpha_bar_t / alpha_bar_s) = prod_{r = s+1..t} sqrt(1 - beta_r) (1 for s = t)."""
        return math.sqrt(math.prod(1.0 - b for b in betas[s + 1 : t + 1]))

    x0_64, noise_64 = x0.astype(np.float64), noise.astype(np.float64)
    for t in range(1, schedule.T + 1):
        signal = sqrt_alpha_product(0, t) * x0_64
        terms = [sqrt_alpha_product(s, t) * math.sqrt(betas[s]) * noise_64[s - 1]
                 for s in range(1, t + 1)]  # eps_s's share of x_t
        expected = signal + np.sum(terms, axis=0)
        magnitude = np.abs(signal) + np.sum(np.abs(terms), axis=0)
        # t steps, each rounding once more: the error grows with t
        assert_close(got[t], expected, scale=t * magnitude, what=f"x_t at t={t}:")


@pytest.mark.exercise("ex02.3")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e1_each_step_of_the_chain_is_q_of_x_t_given_x_t_minus_1(dtype):
    """[E1] Given x_{t-1}, x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t): over 4000 chains from spread-out x_0, the
    least-squares slope of x_t on x_{t-1} is sqrt(1 - beta_t) and the residual r_t = x_t - sqrt(1 - beta_t) x_{t-1}
    has mean 0 and variance beta_t; r_t is uncorrelated with r_{t-1} (each step draws fresh noise).

    Standard errors (n = 4000, each bound 4.5 of them): slope sqrt(beta_t / (n var x_{t-1})), mean sqrt(beta_t / n),
    variance beta_t sqrt(2 / n) (Gaussian residuals), correlation 1 / sqrt(n)."""
    n = 4000
    schedule = noise_schedule("linear", 50)  # betas 0.002 .. 0.4: each step's coefficients are distinct
    rng = np.random.default_rng(7)
    x0 = rng.uniform(-2.0, 2.0, n).astype(dtype)
    chain = q_sample_trajectory(schedule, x0, rng)  # (T + 1, n)
    assert chain.dtype == dtype, f"keep x0's dtype: expected {np.dtype(dtype)}, got {chain.dtype}"
    chain = chain.astype(np.float64)
    residual = {}  # t -> r_t
    for t in (1, 2, 10, 25, 49, 50):
        beta, prev, xt = schedule.betas[t], chain[t - 1], chain[t]
        r = residual[t] = xt - math.sqrt(1 - beta) * prev
        if t - 1 in residual:
            corr = np.corrcoef(r, residual[t - 1])[0, 1]
            assert abs(corr) < 4.5 / math.sqrt(n), f"steps {t - 1} and {t} share their noise (correlation " \
                f"{corr:.3f}): step t must use its own eps_t = noise[t - 1]"
        slope = np.cov(prev, xt)[0, 1] / prev.var(ddof=1)
        assert abs(slope - math.sqrt(1 - beta)) < 4.5 * math.sqrt(beta / (n * prev.var())), \
            f"t={t}: x_t grows like {slope:.4f} x_(t-1), E1 says sqrt(1 - beta_t) = {math.sqrt(1 - beta):.4f}"
        assert abs(r.mean()) < 4.5 * math.sqrt(beta / n), f"t={t}: the noise of step t has mean {r.mean():.4f}, not 0"
        assert abs(r.var() - beta) < 4.5 * beta * math.sqrt(2 / n), \
            f"t={t}: the noise of step t has variance {r.var():.4f}, E1 says beta_t = {beta:.4f}"


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


@pytest.mark.exercise("ex02.3")
@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_e3_the_chain_reaches_the_closed_form_marginal_in_distribution(kind):
    """[E1][E3] T composed steps from x_0 = 1.5 give x_t ~ N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t) at t = 1, T/4,
    T/2, T: a one-sample Kolmogorov-Smirnov test against that normal CDF, n = 4000 chains. Under H0
    P(D > c / sqrt(n)) ~ 2 exp(-2 c^2); c = sqrt(ln(2 / 1e-4) / 2) per comparison keeps 20 comparisons below
    2e-3 family-wise. Reusing one eps for every step, or beta_t for sqrt(beta_t), moves the CDF by far more."""
    n, x0_value = 4000, 1.5
    schedule = noise_schedule(kind, 100)
    chain = q_sample_trajectory(schedule, np.full(n, x0_value), np.random.default_rng(11))  # (T + 1, n)
    critical = math.sqrt(math.log(2 / 1e-4) / 2) / math.sqrt(n)
    for t in (1, schedule.T // 4, schedule.T // 2, schedule.T):
        mean, std = schedule.sqrt_alpha_bars[t] * x0_value, schedule.sqrt_one_minus_alpha_bars[t]
        xt = np.sort(chain[t])
        cdf = normal_cdf((xt - mean) / std)
        distance = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
        assert distance < critical, (f"t={t}: x_t has mean {xt.mean():.3f} and variance {xt.var():.3f}; E3 says "
                                     f"{mean:.3f} and 1 - alpha_bar_t = {std**2:.3f} (KS distance {distance:.3f})")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e1_the_chain_with_rng_draws_all_its_noise_at_once(dtype):
    """[E1] rng=Generator(seed) gives the chain of noise=standard_normal((T, *x0.shape), dtype) of that seed."""
    schedule = noise_schedule("cosine", 30)
    x0 = np.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3)
    a = q_sample_trajectory(schedule, x0, np.random.default_rng(5))
    b = q_sample_trajectory(schedule, x0, noise=np.random.default_rng(5).standard_normal((30, 2, 3), dtype=dtype))
    np.testing.assert_array_equal(a, b)


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
    yield "chain noise", lambda: q_sample_trajectory(s, x, noise=np.zeros((3, 2))), ValueError, \
        r"noise: expected shape \(30, 3, 2\) \(the shape of x0 repeated for t = 1\.\.T\)"
    yield "chain x0", lambda: q_sample_trajectory(s, [0.0], rng), TypeError, "x0: expected a numpy.ndarray"


@pytest.mark.parametrize(("call", "error", "message"), [pytest.param(*c[1:], id=c[0]) for c in bad_forward_cases()])
def test_bad_forward_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
