"""Noise schedules (E2, E4-E8), the short-chain rule, zero-terminal-SNR rescaling and NoiseSchedule's
indexing: known values derived by hand, independent evaluations of each formula, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import SCHEDULE_KINDS, noise_schedule, schedules
from tolerances import assert_close

from minidiff.diffusion import (
    NoiseSchedule,
    alpha_bars_from_betas,
    cosine_betas,
    linear_betas,
    q_posterior_mean_variance,
    q_sample,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    short_chain_beta_range,
    sigmoid_betas,
)

# --- E5: the linear schedule ---------------------------------------------------------------------


def test_e5_linear_alpha_bar_T_by_hand():
    """[E5][E2] DDPM's linear schedule, T = 1000, beta_t = a + d (t - 1), a = 1e-4, d = (0.02 - 1e-4) / 999.

    log alpha_bar_T = sum_t log(1 - beta_t) = -sum_{k>=1} S_k / k with S_k = sum_t beta_t^k, and the
    power sums of an arithmetic sequence are closed forms in J1 = sum_j j = T(T-1)/2, J2 = sum_j j^2 =
    (T-1)T(2T-1)/6, J3 = J1^2 (j = 0..T-1):
        S_1 = T a + d J1                                    = 10.05 (= T (beta_1 + beta_T) / 2)
        S_2 = T a^2 + 2 a d J1 + d^2 J2                     = 0.134069...
        S_3 = T a^3 + 3 a^2 d J1 + 3 a d^2 J2 + d^3 J3      = 0.002012...
    so log alpha_bar_T = -(10.05 + 0.0670347 + 0.0006707 + R) = -10.1177054 - R, where the rest
    R = sum_{k>=4} S_k / k <= beta_T^3 S_1 / (4 (1 - beta_T)) = 2.05e-5 (S_k <= beta_T^{k-1} S_1). Hence
        alpha_bar_T in [exp(-10.1177054 - 2.05e-5), exp(-10.1177054)] = [4.03578e-5, 4.03586e-5],
    i.e. alpha_bar_T = 4.0358e-5: x_T keeps sqrt(4e-5) = 0.6% of the signal.
    """
    T, a = 1000, 1e-4
    d = (0.02 - a) / (T - 1)
    j1, j2 = T * (T - 1) / 2, (T - 1) * T * (2 * T - 1) / 6
    j3 = j1**2
    s1 = T * a + d * j1
    s2 = T * a**2 + 2 * a * d * j1 + d**2 * j2
    s3 = T * a**3 + 3 * a**2 * d * j1 + 3 * a * d**2 * j2 + d**3 * j3
    rest = 0.02**3 * s1 / (4 * (1 - 0.02))
    assert s1 == pytest.approx(10.05, rel=1e-15)
    alpha_bar_T = NoiseSchedule(linear_betas(T)).alpha_bars[T]
    head = s1 + s2 / 2 + s3 / 3
    assert math.exp(-head - rest) <= alpha_bar_T <= math.exp(-head)
    assert alpha_bar_T == pytest.approx(4.0358e-5, rel=2e-5)


def test_e5_linear_betas_are_evenly_spaced_between_the_endpoints():
    """[E5] beta_1 = 1e-4, beta_T = 0.02, constant differences (0.02 - 1e-4) / (T - 1)."""
    betas = linear_betas(1000)
    assert betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, rel=1e-14) and betas[-1] == pytest.approx(0.02, rel=1e-14)
    assert_close(np.diff(betas), np.full(999, (0.02 - 1e-4) / 999))
    assert_close(linear_betas(5, 0.1, 0.5), np.array([0.1, 0.2, 0.3, 0.4, 0.5]))


@pytest.mark.parametrize("T", [25, 50, 100, 250, 1000])
def test_e5_short_chain_rule_keeps_x_T_near_noise(T):
    """[E5] The rule beta * 1000 / T keeps S_1 = sum_t beta_t = T (beta_1 + beta_T) / 2 = 10.05 for every T, and
    log alpha_bar_T <= -S_1 (log(1 - b) <= -b), so alpha_bar_T <= exp(-10.05) = 4.3e-5 however short the
    chain. Cutting T without the rule leaves 50 steps of DDPM's betas with alpha_bar_T = exp(-~0.5)."""
    betas = linear_betas(T)
    assert betas.sum() == pytest.approx(10.05, rel=1e-12)
    assert (betas[0], betas[-1]) == pytest.approx(short_chain_beta_range(1e-4, 0.02, T), rel=1e-14)
    schedule = NoiseSchedule(betas)
    assert schedule.alpha_bars[T] <= math.exp(-10.05)
    # x_T = q_sample(x0 = 1): mean sqrt(alpha_bar_T) <= 0.0066, variance >= 0.99996: N(0, 1) to 1%.
    assert schedule.sqrt_alpha_bars[T] < 0.0066
    cut = NoiseSchedule(linear_betas(50, 1e-4, 0.02))
    assert cut.alpha_bars[50] > 0.5


def test_e5_short_chain_rule_needs_beta_T_below_one():
    """[E5] 0.02 * 1000 / T >= 1 for T <= 20: the rule cannot apply; explicit betas still work."""
    with pytest.raises(ValueError, match=r"T: rescaling the beta range .* beta_end = 1 >= 1"):
        linear_betas(20)
    assert linear_betas(10, 1e-3, 0.2).shape == (10,)


# --- E6: the cosine schedule ----------------------------------------------------------------------


def cosine_f(t: int, T: int, s: float) -> float:
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.exercise("ex02.1")
@pytest.mark.parametrize(("T", "s", "max_beta"), [(1000, 0.008, 0.999), (50, 0.008, 0.999), (40, 0.0, 0.3),
                                                   (7, 0.1, 0.5), (1, 0.008, 0.999)])
def test_e6_cosine_betas_are_clipped_only_where_they_exceed_max_beta(T, s, max_beta):
    """[E6] Evaluated in Python floats: beta_t = 1 - f(t) / f(t - 1), clipped to max_beta exactly where it is
    larger, untouched elsewhere. At t = T, f(T) = cos^2(pi/2) ~ 0, so the last beta is always clipped."""
    raw = np.array([1 - cosine_f(t, T, s) / cosine_f(t - 1, T, s) for t in range(1, T + 1)])
    betas = cosine_betas(T, s=s, max_beta=max_beta)
    clipped = raw > max_beta
    assert clipped[-1]
    np.testing.assert_array_equal(betas[clipped], max_beta,
                                  err_msg=f"where 1 - f(t) / f(t - 1) > max_beta = {max_beta}, beta_t is max_beta")
    assert_close(betas[~clipped], raw[~clipped], scale=1.0, what="the unclipped beta_t = 1 - f(t) / f(t - 1)")
    if (T, max_beta) == (1000, 0.999):
        assert clipped.sum() == 1  # with the paper's settings only beta_T is clipped


@pytest.mark.exercise("ex02.1")
@settings(max_examples=30)
@given(T=st.integers(1, 2000), s=st.floats(0.0, 0.2))
def test_e6_cosine_alpha_bar_is_the_ratio_of_f(T, s):
    """[E6][E2] Where no beta is clipped the product of alphas telescopes: alpha_bar_t = f(t) / f(0)."""
    betas = cosine_betas(T, s=s)
    alpha_bars = NoiseSchedule(betas).alpha_bars
    unclipped = np.flatnonzero(betas >= 0.999)[0]  # t = unclipped + 1 is the first clipped step
    for t in np.unique(np.linspace(0, unclipped, 12).astype(int)):
        assert alpha_bars[t] == pytest.approx(cosine_f(t, T, s) / cosine_f(0, T, s), rel=1e-12, abs=1e-300), \
            f"T = {T}, s = {s}: alpha_bar_{t} from your betas is not f({t}) / f(0)"
    assert np.all(np.diff(alpha_bars) < 0), "every beta_t must be > 0: alpha_bar_t must fall at every step"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e6_cosine_schedule_near_T_has_no_nan_or_inf(dtype):
    """[E6][E4][E11] Near t = T alpha_bar_t ~ 1e-9: every derived quantity, the marginal and the posterior
    stay finite in float32 and float64 (the clip keeps beta_T = 0.999 < 1)."""
    schedule = NoiseSchedule(cosine_betas(1000))
    arrays = (schedule.betas, schedule.alphas, schedule.alpha_bars, schedule.sqrt_alpha_bars,
              schedule.sqrt_one_minus_alpha_bars, schedule.snr, schedule.log_snr, schedule.posterior_mean_coef_x0,
              schedule.posterior_mean_coef_xt, schedule.posterior_variance, schedule.posterior_log_variance_clipped)
    for values in arrays:
        assert np.isfinite(values[1:]).all()
    assert 0 < schedule.alpha_bars[-1] < 1e-8
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (4, 3)).astype(dtype)
    for t in (998, 999, 1000, np.array([1, 500, 999, 1000])):
        xt = q_sample(schedule, x0, t, rng=rng)
        mean, variance, log_variance = q_posterior_mean_variance(schedule, x0, xt, t)
        for a in (xt, mean, variance, log_variance):
            assert a.dtype == dtype and np.isfinite(a).all()


# --- E7, E8 ---------------------------------------------------------------------------------------


def test_e7_scaled_linear_is_linear_in_sqrt_beta():
    """[E7] sqrt(beta_t) has constant differences from sqrt(0.00085) to sqrt(0.012) (T = 1000)."""
    betas = scaled_linear_betas(1000)
    root = np.sqrt(betas)
    assert root[0] == pytest.approx(math.sqrt(0.00085), rel=1e-14)
    assert root[-1] == pytest.approx(math.sqrt(0.012), rel=1e-14)
    assert_close(np.diff(root), np.full(999, (math.sqrt(0.012) - math.sqrt(0.00085)) / 999), scale=root[1:])
    # the short-chain rule scales every beta by 1000 / T
    assert_close(scaled_linear_betas(100) / 10.0, scaled_linear_betas(100, 0.00085, 0.012))


def test_e8_sigmoid_betas_follow_the_logistic_curve():
    """[E8] Inverting the sigmoid, logit((beta_t - beta_start) / (beta_end - beta_start)) runs linearly from
    -6 to 6; every beta lies strictly between beta_start and beta_end."""
    start, end = 1e-4, 0.02
    betas = sigmoid_betas(1000, start, end)
    u = (betas - start) / (end - start)
    logit = np.log(u / (1 - u))
    assert_close(logit, np.linspace(-6, 6, 1000), scale=1e3)  # 1/(u(1-u)) ~ 400 amplifies rounding of u
    assert np.all((betas > start) & (betas < end)) and np.all(np.diff(betas) > 0)


# --- E2, E4 ---------------------------------------------------------------------------------------


@given(st.lists(st.floats(1e-6, 0.999), min_size=1, max_size=60))
def test_e2_alpha_bars_are_running_products_with_alpha_bar_0_one(beta_list):
    """[E2] alpha_bar_t = prod_{s<=t} (1 - beta_s), in Python floats, and alpha_bar_0 = 1 (empty product)."""
    betas = np.array(beta_list)
    schedule = NoiseSchedule(betas)
    expected = np.array([math.prod(1 - b for b in beta_list[:t]) for t in range(len(beta_list) + 1)])
    assert schedule.alpha_bars[0] == 1.0 and schedule.alphas[0] == 1.0 and schedule.betas[0] == 0.0
    # Rounding: a product (or a sum of logs) of n factors is exact to ~n ulp of log alpha_bar, so to
    # n * |log alpha_bar| ulp relative in alpha_bar.
    scale = expected * len(beta_list) * np.maximum(1.0, -np.log(expected))
    assert_close(schedule.alpha_bars, expected, scale=scale)
    assert_close(alpha_bars_from_betas(betas), expected, scale=scale)
    assert_close(schedule.alphas[1:], 1 - betas)
    # 1 - alpha_bar_t without cancellation: at t = 1 it is beta_1 to the last digits
    assert schedule.one_minus_alpha_bars[1] == pytest.approx(beta_list[0], rel=1e-14)


@given(schedules())
def test_e4_snr_is_alpha_bar_over_one_minus_alpha_bar(schedule):
    """[E4] SNR(t) = alpha_bar_t / (1 - alpha_bar_t), log SNR = log of it, strictly decreasing in t; SNR_0 = inf.
    At t = 1 it is (1 - beta_1) / beta_1 to 1e-13 (no cancellation in 1 - alpha_bar_1)."""
    # Python floats: log alpha_bar_t by math.fsum (exact sum of rounded logs), 1 - alpha_bar_t by expm1.
    logs = [math.log1p(-b) if b < 1 else -math.inf for b in schedule.betas[1:]]  # beta_T = 1: zero terminal SNR
    log_ab = np.array([math.fsum(logs[:t]) for t in range(1, schedule.T + 1)])
    with np.errstate(divide="ignore"):
        expected = np.exp(log_ab) / -np.expm1(log_ab)
        expected_log = log_ab - np.log(-np.expm1(log_ab))
    # A running sum of T logs is exact to ~T ulp of |log alpha_bar|: scale by T * max(1, |log alpha_bar|).
    finite = np.isfinite(log_ab)  # all but t = T of a zero-terminal-SNR schedule, where SNR_T = 0 exactly
    grow = schedule.T * np.maximum(1.0, np.abs(np.where(finite, log_ab, 0.0)))
    t = np.arange(1, schedule.T + 1)
    assert_close(schedule.snr[t], expected, scale=expected * grow)
    assert_close(schedule.log_snr[t][finite], expected_log[finite], scale=grow[finite])
    assert schedule.snr[1] == pytest.approx((1 - schedule.betas[1]) / schedule.betas[1], rel=1e-13)
    assert schedule.snr[0] == np.inf and np.all(np.diff(schedule.log_snr) < 0)


# --- zero terminal SNR --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine", "scaled_linear", "sigmoid"])
def test_e2_zero_terminal_snr_gives_alpha_bar_T_zero_and_keeps_alpha_bar_1(kind):
    """[E2][E4] Lin et al.'s rescaling: alpha_bar_T = 0 exactly (SNR_T = 0, beta_T = 1), alpha_bar_1 unchanged,
    and sqrt(alpha_bar_t) an affine function of the original one (r -> (r - r_T) r_1 / (r_1 - r_T))."""
    base = noise_schedule(kind, 200)
    rescaled = NoiseSchedule(base.betas[1:], zero_terminal_snr=True)
    assert rescaled.alpha_bars[-1] == 0.0 and rescaled.snr[-1] == 0.0 and rescaled.log_snr[-1] == -np.inf
    assert rescaled.betas[-1] == 1.0
    assert rescaled.alpha_bars[1] == pytest.approx(base.alpha_bars[1], rel=1e-13)
    r, r_new = base.sqrt_alpha_bars[1:], rescaled.sqrt_alpha_bars[1:]
    slope = r[0] / (r[0] - r[-1])
    assert_close(r_new, (r - r[-1]) * slope, scale=r * slope)
    assert np.all(np.diff(rescaled.alpha_bars) < 0) and np.all(rescaled.betas[1:-1] < 1)
    # the function itself: its betas multiply back to the rescaled alpha_bars (a running product here)
    ab = np.cumprod(1 - rescale_zero_terminal_snr(base.betas[1:]))
    assert ab[-1] == 0.0
    assert_close(np.sqrt(ab), (r - r[-1]) * slope, scale=r * slope * 200)  # 200 rounded products


# --- the NoiseSchedule object -----------------------------------------------------------------------


def test_noise_schedule_is_indexed_by_t_and_read_only():
    """Arrays have length T + 1 with index t; `at` picks values[t] for an int or one t per example."""
    betas = linear_betas(100)
    schedule = NoiseSchedule(betas)
    np.testing.assert_array_equal(schedule.betas[1:], betas)
    assert len(schedule.alpha_bars) == 101 and np.isnan(schedule.posterior_variance[0])
    x = np.zeros((3, 2, 5), np.float32)
    picked = schedule.at(schedule.alpha_bars, np.array([1, 50, 100]), x)
    assert picked.shape == (3, 1, 1) and picked.dtype == np.float32
    np.testing.assert_array_equal(picked.ravel(), schedule.alpha_bars[[1, 50, 100]].astype(np.float32))
    assert schedule.at(schedule.alpha_bars, 7, x).shape == ()
    with pytest.raises(ValueError, match="read-only"):
        schedule.alpha_bars[3] = 0.5
    assert "T=100" in repr(schedule)


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_every_schedule_kind_builds(kind):
    schedule = noise_schedule(kind, 64)
    assert schedule.T == 64 and np.all(np.diff(schedule.alpha_bars) < 0)


def bad_schedule_cases():
    yield "beta 0", lambda: NoiseSchedule(np.array([0.0, 0.1])), ValueError, r"betas: expected every beta_t in \(0, 1\)"
    yield "beta 1", lambda: NoiseSchedule(np.array([0.1, 1.0])), ValueError, r"got beta_2 = 1\.0"
    yield "beta < 0", lambda: NoiseSchedule([-0.1]), ValueError, "betas: expected every beta_t"
    yield "beta nan", lambda: NoiseSchedule(np.array([np.nan])), ValueError, "betas: expected every beta_t"
    yield "betas 2-d", lambda: NoiseSchedule(np.full((2, 2), 0.1)), ValueError, "betas: expected a 1-d array"
    yield "no betas", lambda: NoiseSchedule(np.array([])), ValueError, "T >= 1"
    yield "betas str", lambda: NoiseSchedule("0.1"), TypeError, "betas: expected a 1-d array"
    yield "T 0", lambda: linear_betas(0), ValueError, "T: expected at least 1 step"
    yield "T negative", lambda: cosine_betas(-3), ValueError, "T: expected at least 1 step"
    yield "T float", lambda: cosine_betas(10.0), TypeError, "T: expected an integer"
    yield "s negative", lambda: cosine_betas(10, s=-0.1), ValueError, "s: expected an offset >= 0"
    yield "max_beta 1", lambda: cosine_betas(10, max_beta=1.0), ValueError, r"max_beta: expected a value in \(0, 1\)"
    yield "one bound", lambda: linear_betas(10, beta_start=0.1), ValueError, "beta_start, beta_end: give both"
    yield "bound 1", lambda: sigmoid_betas(10, 0.1, 1.5), ValueError, r"beta_end: expected a value in \(0, 1\)"
    yield "name", lambda: NoiseSchedule.named("quadratic", 10), ValueError, "name: expected one of"
    yield "zero SNR T 1", lambda: NoiseSchedule([0.5], zero_terminal_snr=True), ValueError, "needs T >= 2"
    schedule = NoiseSchedule(np.full(10, 0.1))  # no exercise code at collection time (student mode)
    x = np.zeros((3, 2))
    yield "t 0", lambda: schedule.at(schedule.betas, 0, x), ValueError, r"t: expected timesteps in 1\.\.10"
    yield "t T+1", lambda: schedule.at(schedule.betas, np.array([1, 11, 2]), x), ValueError, "got 11"
    yield "t float", lambda: schedule.at(schedule.betas, 2.0, x), TypeError, "t: expected an int"
    yield "t float array", lambda: schedule.at(schedule.betas, np.ones(3), x), TypeError, "t: expected integer"
    yield "t bool", lambda: schedule.at(schedule.betas, True, x), TypeError, "got a bool"
    yield "t 2-d", lambda: schedule.at(schedule.betas, np.ones((3, 1), int), x), ValueError, "1-d array"
    yield "t batch", lambda: schedule.at(schedule.betas, np.ones(2, int), x), ValueError, \
        r"t: expected one timestep per example, shape \(3,\)"


@pytest.mark.parametrize(("make", "error", "message"), [pytest.param(*c[1:], id=c[0]) for c in bad_schedule_cases()])
def test_bad_schedule_input_gets_a_clear_error(make, error, message):
    with pytest.raises(error, match=message):
        make()
