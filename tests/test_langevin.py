"""Langevin dynamics (E25) and annealed Langevin dynamics (E28): the chain on a Gaussian is an AR(1) process with
a closed-form mean and variance at every step (and an O(delta) bias at stationarity); with the exact mixture score
the chain reaches the mixture; annealing recovers the weights of separated modes where plain Langevin cannot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tolerances import assert_close

from minidiff.diffusion.gmm import GaussianMixture
from minidiff.samplers.langevin import (
    AnnealedLangevinSampler,
    LangevinSampler,
    check_sigmas,
    geometric_sigmas,
    langevin_dynamics,
    langevin_step,
)


def rotated(phi: float, a: float, b: float) -> np.ndarray:
    """The covariance with standard deviations a and b along axes rotated by phi."""
    rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    return rot @ np.diag([a * a, b * b]) @ rot.T


# Overlapping components: Langevin mixes between them within a few hundred steps of delta = 0.01.
OVERLAPPING = GaussianMixture([0.5, 0.3, 0.2], [[-0.5, 0.0], [0.6, 0.3], [0.0, -0.8]],
                              np.array([rotated(0.5, 0.7, 0.4), rotated(-0.8, 0.6, 0.4), rotated(0.2, 0.5, 0.45)]))
# Song & Ermon's (2019) example: modes 14 standard deviations apart, weights 0.2 and 0.8.
SEPARATED = GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], np.array([np.eye(2), np.eye(2)]))


def mixture_moments(gmm: GaussianMixture) -> tuple[np.ndarray, np.ndarray]:
    """Mean sum_k w_k mu_k and covariance sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T."""
    mean = gmm.weights @ gmm.means
    second = np.einsum("k,kij->ij", gmm.weights, gmm.covariances + gmm.means[:, :, None] * gmm.means[:, None, :])
    return mean, second - np.outer(mean, mean)


def assert_reaches(x: np.ndarray, gmm: GaussianMixture) -> None:
    """Two-sample check of chains x (N, D) against the mixture, each within 5 standard errors: the mean (se
    sqrt(Sigma_ii / N)), the covariance (se std((x_i - m_i)(x_j - m_j)) / sqrt(N)), and the weights through the
    responsibilities (E_p[p(k | x)] = w_k exactly; se std(r_k) / sqrt(N))."""
    n = len(x)
    mean, cov = mixture_moments(gmm)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * np.sqrt(np.diag(cov) / n)), (x.mean(axis=0), mean)
    centered = x - x.mean(axis=0)
    products = centered[:, :, None] * centered[:, None, :]  # (N, D, D)
    assert np.all(np.abs(products.mean(axis=0) - cov) < 5 * products.std(axis=0) / math.sqrt(n)), (
        products.mean(axis=0), cov)
    r = gmm.responsibilities(x)  # (N, K)
    assert np.all(np.abs(r.mean(axis=0) - gmm.weights) < 5 * r.std(axis=0) / math.sqrt(n)), (r.mean(axis=0),
                                                                                               gmm.weights)


def weight_error(x: np.ndarray, gmm: GaussianMixture) -> float:
    return float(np.abs(gmm.responsibilities(x).mean(axis=0) - gmm.weights).max())


def noised_score(gmm: GaussianMixture):
    """score_fn(x, sigma) of the annealed sampler: grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie)."""
    return lambda x, sigma: (gmm.denoiser(x, sigma) - x) / sigma[:, None] ** 2


# --- E25: one step, and the chain on a Gaussian ------------------------------------------------------------


@pytest.mark.exercise("ex05.1")
def test_e25_one_step_is_drift_plus_scaled_noise():
    """[E25] x + (delta / 2) s + sqrt(delta) z, written out here, for float32 and float64."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x, s, z = (rng.normal(size=(5, 3)).astype(dtype) for _ in range(3))
        expected = x + 0.5 * 0.3 * s + math.sqrt(0.3) * z
        got = langevin_step(x, s, 0.3, z)
        assert got.dtype == dtype, f"langevin_step returned {got.dtype} for {np.dtype(dtype)} input"
        assert_close(got, expected, scale=np.abs(x) + np.abs(s) + np.abs(z), what="x + (delta/2) s + sqrt(delta) z:")


@pytest.mark.exercise("ex05.1")
def test_e25_one_step_with_one_step_size_per_example():
    """[E25] step_size of shape (B,): example b moves by (delta_b / 2) s_b + sqrt(delta_b) z_b, for data of shape
    (B, C, W) (the step sizes broadcast over each example's axes), in float32 and float64; the result keeps x's
    dtype. Computed here example by example in float64."""
    rng = np.random.default_rng(10)
    delta = np.array([0.01, 0.3, 1.0, 2.5])  # (B,)
    for dtype in (np.float32, np.float64):
        x, s, z = (rng.normal(size=(4, 2, 3)).astype(dtype) for _ in range(3))  # (B, C, W)
        got = langevin_step(x, s, delta, z)
        assert got.shape == x.shape, f"langevin_step returned shape {got.shape} for x of shape {x.shape}"
        assert got.dtype == dtype, f"langevin_step returned {got.dtype} for {np.dtype(dtype)} input"
        expected = np.empty(x.shape)
        for b in range(4):
            xb, sb, zb = (a[b].astype(np.float64) for a in (x, s, z))
            expected[b] = xb + delta[b] / 2 * sb + math.sqrt(delta[b]) * zb
        assert_close(got, expected, dtype=dtype, scale=np.abs(x) + np.abs(s) + np.abs(z) * 2,
                     what="per-example delta:")


@pytest.mark.exercise("ex05.1")
def test_e25_per_example_step_sizes_give_each_chain_its_stationary_variance():
    """[E25] On p = N(0, s^2) (score -x / s^2) each chain is AR(1), x' = rho x + sqrt(delta) z with rho = 1 - delta /
    (2 s^2), and its stationary variance is delta / (1 - rho^2). 3 x 8000 chains, one step size per chain (three
    values, mixed in one batch), 60 steps from the stationary law of their own step size: each group's variance
    within 5 standard errors (var sqrt(2 / (N - 1))) of its own formula. A step size applied to the wrong chains
    or a missing factor moves a group's variance by far more."""
    s2, per_group, n_steps = 0.5, 8000, 60
    deltas = np.array([0.05, 0.4, 1.2])
    rho = 1 - deltas / (2 * s2)
    stationary = deltas / (1 - rho**2)  # (3,)
    group = np.tile(np.arange(3), per_group)  # (N,), the groups interleaved
    rng = np.random.default_rng(11)
    x = rng.standard_normal((group.size, 1)) * np.sqrt(stationary[group])[:, None]  # (N, 1)
    for _ in range(n_steps):
        x = langevin_step(x, -x / s2, deltas[group], rng.standard_normal(x.shape))
    for k in range(3):
        var = x[group == k, 0].var()
        se = stationary[k] * math.sqrt(2 / (per_group - 1))
        assert abs(var - stationary[k]) < 5 * se, (
            f"delta = {deltas[k]}: chain variance {var:.4f}, AR(1) stationary variance {stationary[k]:.4f} "
            f"(5 s.e. = {5 * se:.4f})")


@pytest.mark.exercise("ex05.1")
@pytest.mark.parametrize("delta", [0.01, 0.5, 1.0, 1.6])
def test_e25_chain_on_a_gaussian_is_ar1_with_closed_form_moments(delta):
    """[E25] For p = N(0, s^2) the score is -x / s^2 and the chain is x' = rho x + sqrt(delta) z, rho = 1 - delta /
    (2 s^2): from x_0, E[x_n] = rho^n x_0 and Var[x_n] = delta (1 - rho^(2n)) / (1 - rho^2), whose limit
    delta / (1 - rho^2) = s^2 / (1 - delta / (4 s^2)) tends to s^2 as delta -> 0 (ULA's O(delta) bias).
    20 000 chains from x_0 = 3, checked at several n within 5 standard errors (mean se sqrt(Var / N),
    variance se Var sqrt(2 / (N - 1)))."""
    s2, N, x_init = 1.0, 20_000, 3.0
    n_steps = 400 if delta < 0.1 else 40
    rho = 1 - delta / (2 * s2)
    traj = langevin_dynamics(lambda x: -x / s2, np.full((N, 1), x_init), delta, n_steps, np.random.default_rng(1),
                             return_trajectory=True)[:, :, 0]  # (n_steps + 1, N)
    assert traj.shape == (n_steps + 1, N) and np.all(traj[0] == x_init)
    for n in (1, n_steps // 4, n_steps):
        var = delta * (1 - rho ** (2 * n)) / (1 - rho**2)
        mean = traj[n].mean()
        assert abs(mean - rho**n * x_init) < 5 * math.sqrt(var / N), (
            f"step {n}: chain mean {mean:.4f}, expected rho^n x_0 = {rho**n * x_init:.4f}")
        assert abs(traj[n].var() - var) < 5 * var * math.sqrt(2 / (N - 1)), (
            f"step {n}: chain variance {traj[n].var():.4f}, expected delta (1 - rho^2n) / (1 - rho^2) = {var:.4f}")
    stationary = s2 / (1 - delta / (4 * s2))
    assert stationary == pytest.approx(delta / (1 - rho**2), rel=1e-12)
    se = stationary * math.sqrt(2 / (N - 1))
    if delta <= 0.01:  # the bias s^2 delta / (4 s^2 - delta) ~ 0.0025 is below the resolution: s^2 itself fits
        assert abs(traj[-1].var() - s2) < 5 * se, f"final variance {traj[-1].var():.4f}, expected ~ {s2}"
    else:  # the bias is resolved: the chain's variance is not s^2
        assert abs(traj[-1].var() - s2) > 5 * se, f"final variance {traj[-1].var():.4f}: no O(delta) bias seen"


def test_e25_langevin_with_the_exact_score_reaches_the_mixture():
    """[E25] 3000 chains from N(0, 2^2 I), 1200 steps of delta = 0.01 with the oracle's exact score: mean,
    covariance and weights of the mixture (the O(delta) bias, ~delta / (4 sigma_min^2) = 1.6% of the smallest
    variance, is below the 5 s.e. resolution)."""
    x = LangevinSampler(0.01, 1200).sample(OVERLAPPING.score, (3000, 2), np.random.default_rng(2), init_std=2.0,
                                           progress=False)
    assert_reaches(x, OVERLAPPING)


def test_e25_explicit_noise_replays_the_rng_chain():
    """The z_i drawn from rng can be passed as noise (n_steps, *shape): the chain is the same."""
    x = np.random.default_rng(3).normal(size=(4, 2))
    with_rng = langevin_dynamics(OVERLAPPING.score, x, 0.05, 6, np.random.default_rng(4), return_trajectory=True)
    rng = np.random.default_rng(4)
    noise = np.stack([rng.standard_normal(x.shape) for _ in range(6)])
    with_noise = langevin_dynamics(OVERLAPPING.score, x, 0.05, 6, noise=noise, return_trajectory=True)
    np.testing.assert_array_equal(with_rng, with_noise)
    np.testing.assert_array_equal(with_rng[-1], langevin_dynamics(OVERLAPPING.score, x, 0.05, 6, noise=noise))


# --- E28: annealed Langevin ------------------------------------------------------------------------------


def test_e28_geometric_sigmas():
    """[E28] sigma_1 = sigma_max, sigma_L = sigma_min, a constant ratio (sigma_min / sigma_max)^(1 / (L - 1))."""
    sigmas = geometric_sigmas(20.0, 0.5, 10)
    assert sigmas.shape == (10,)
    np.testing.assert_array_equal(sigmas[[0, -1]], [20.0, 0.5])
    assert_close(sigmas[1:] / sigmas[:-1], np.full(9, (0.5 / 20.0) ** (1 / 9)))
    np.testing.assert_array_equal(geometric_sigmas(3.0, 1.0, 1), [3.0])


def test_e28_step_sizes_scale_with_the_noise_variance():
    """[E28] delta_i = eps sigma_i^2 / sigma_L^2: eps at the last level, eps (sigma_1 / sigma_L)^2 at the first."""
    sampler = AnnealedLangevinSampler.geometric(20.0, 0.5, 10, step_size=0.025, n_steps_each=3)
    assert_close(sampler.step_sizes, 0.025 * (sampler.sigmas / 0.5) ** 2)
    assert_close(sampler.step_sizes[[0, -1]], np.array([0.025 * 1600, 0.025]))


def test_e28_annealing_recovers_mode_weights_where_plain_langevin_cannot():
    """[E28] All 2000 chains start far away at (10, 10). Plain Langevin (delta = 0.1, 2000 steps) only finds the
    nearer mode: its weight error is ~0.2. Annealed Langevin (sigma 20 -> 0.5, L = 10, 100 steps each: half the
    budget) spreads the chains while the modes are merged: the weights are right within 5 s.e.
    (sqrt(0.2 * 0.8 / 2000) = 0.009), and the samples have the mean and covariance of p_{sigma_L} (the mixture
    noised by sigma_L = 0.5), each within 5 standard errors."""
    start = np.full((2000, 2), 10.0)
    plain = LangevinSampler(0.1, 2000).sample(SEPARATED.score, start, np.random.default_rng(5), progress=False)
    sampler = AnnealedLangevinSampler.geometric(20.0, 0.5, 10, step_size=0.1 * 0.5**2, n_steps_each=100)
    annealed = sampler.sample(noised_score(SEPARATED), start, np.random.default_rng(6), progress=False)
    assert weight_error(plain, SEPARATED) > 0.15
    assert_reaches(annealed, SEPARATED.noised(1.0, 0.5))
    assert weight_error(annealed, SEPARATED) < 5 * math.sqrt(0.2 * 0.8 / 2000)


def test_e28_annealed_sampler_trajectory_and_replay():
    """The trajectory holds the start and every step (L n + 1 states); the default start is N(0, sigma_1^2 I);
    the same seed gives the same samples."""
    sampler = AnnealedLangevinSampler([4.0, 2.0, 1.0], step_size=0.05, n_steps_each=5)
    traj = sampler.sample(noised_score(OVERLAPPING), (3000, 2), np.random.default_rng(7), progress=False,
                          return_trajectory=True)
    assert traj.shape == (16, 3000, 2)
    assert abs(traj[0].std() - 4.0) < 5 * 4.0 / math.sqrt(2 * 6000)  # se of a sample std: s / sqrt(2 N)
    again = sampler.sample(noised_score(OVERLAPPING), (3000, 2), np.random.default_rng(7), progress=False)
    np.testing.assert_array_equal(traj[-1], again)


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves():
    x = np.zeros((4, 2))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="step_size"):
        LangevinSampler(0.0, 10)
    with pytest.raises(ValueError, match="step_size"):
        langevin_dynamics(OVERLAPPING.score, x, -0.1, 3, rng)
    with pytest.raises(ValueError, match="step_size"):
        langevin_step(x, x, np.ones(3), x)  # one step size per example: shape (4,)
    with pytest.raises(ValueError, match="step_size"):
        langevin_step(x, x, np.array([0.1, 0.2, np.inf, 0.1]), x)
    with pytest.raises(ValueError, match="n_steps"):
        LangevinSampler(0.1, 0)
    with pytest.raises(TypeError, match="n_steps"):
        langevin_dynamics(OVERLAPPING.score, x, 0.1, 2.5, rng)
    with pytest.raises(TypeError, match="rng"):
        langevin_dynamics(OVERLAPPING.score, x, 0.1, 3)
    with pytest.raises(TypeError, match="rng"):
        LangevinSampler(0.1, 3).sample(OVERLAPPING.score, (4, 2), None)
    with pytest.raises(ValueError, match="noise"):
        langevin_dynamics(OVERLAPPING.score, x, 0.1, 3, noise=np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="noise"):
        langevin_dynamics(OVERLAPPING.score, x, 0.1, 3, rng, noise=np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="score_fn"):
        langevin_dynamics(lambda v: v[:, :1], x, 0.1, 3, rng)
    with pytest.raises(TypeError, match="x"):
        langevin_dynamics(OVERLAPPING.score, [[0.0, 0.0]], 0.1, 3, rng)
    with pytest.raises(ValueError, match="shape_or_x"):
        LangevinSampler(0.1, 3).sample(OVERLAPPING.score, (0, 2), rng)
    with pytest.raises(ValueError, match="decreasing"):
        AnnealedLangevinSampler([1.0, 2.0], 0.1, 3)
    with pytest.raises(ValueError, match="sigmas"):
        check_sigmas([1.0, 0.0])
    with pytest.raises(TypeError, match="sigmas"):
        check_sigmas(3.0)
    with pytest.raises(ValueError, match="sigma_min"):
        geometric_sigmas(1.0, 2.0, 5)
    with pytest.raises(ValueError, match="sigma_max"):
        geometric_sigmas(-1.0, 0.5, 5)
    with pytest.raises(ValueError, match="n_steps_each"):
        AnnealedLangevinSampler([2.0, 1.0], 0.1, 0)
