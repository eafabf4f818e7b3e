"""The Gaussian-mixture oracle (minidiff.diffusion.gmm): the density against scipy and against quadrature,
the score (E24) and its Jacobian against central differences, the noised mixture against Monte Carlo and
against a numerical convolution, the posterior mean against Tweedie's formula and against importance
sampling, and the model callables against the conversions E13, E14, E27 and the flow-matching velocity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from strategies import noise_schedule
from tolerances import FINITE_DIFFERENCES, assert_close

from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.parameterization import score_from_eps, to_eps_x0


def random_mixture(seed: int, K: int, D: int) -> GaussianMixture:
    """K components in R^D: Dirichlet weights, means in [-2, 2], covariances A A^T + 0.05 I (condition < ~1e3)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(K, 2.0)) + 0.02
    a = rng.normal(scale=0.5, size=(K, D, D))
    return GaussianMixture(weights / weights.sum(), rng.uniform(-2, 2, (K, D)),
                           a @ a.transpose(0, 2, 1) + 0.05 * np.eye(D))


@st.composite
def mixtures(draw, max_K: int = 4, max_D: int = 4):
    return random_mixture(draw(st.integers(0, 2**31)), draw(st.integers(1, max_K)), draw(st.integers(1, max_D)))


def points(gmm: GaussianMixture, seed: int, n: int = 16, spread: float = 1.5) -> np.ndarray:
    """Samples of the mixture, a few of them pushed far out (where the log-sum-exp must not underflow)."""
    x = gmm.sample(np.random.default_rng(seed), n)  # (n, D)
    x[: n // 4] *= 1.0 + spread * np.arange(1, n // 4 + 1)[:, None]
    return x


def scipy_log_prob(gmm: GaussianMixture, x: np.ndarray) -> np.ndarray:
    terms = [np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in
             zip(gmm.weights, gmm.means, gmm.covariances, strict=True)]
    return logsumexp(np.reshape(terms, (gmm.K, len(x))), axis=0)


def central_differences(f, x: np.ndarray, h: float) -> np.ndarray:
    """d f(x)_... / d x_j for every row of x and every j: shape f(x).shape + (D,)."""
    cols = []
    for j in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, j] = h
        cols.append((f(x + step) - f(x - step)) / (2 * h))
    return np.stack(cols, axis=-1)


# --- the density ----------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(mixtures(), st.integers(0, 1000))
def test_log_prob_matches_scipy_mixture(gmm, seed):
    """log p(x) = log sum_k w_k N(x; mu_k, Sigma_k): the same as scipy's multivariate normal densities
    combined by scipy's logsumexp, near the data and far out (log p ~ -1e3)."""
    x = points(gmm, seed)
    expected = scipy_log_prob(gmm, x)
    assert_close(gmm.log_prob(x), expected, scale=1.0 + np.abs(expected))


def test_log_prob_integrates_to_one_on_a_grid():
    """A density: the Riemann sum of p over [-5, 5]^2 with h = 0.02 is 1. For smooth Gaussians the sum is
    exact to exp(-2 pi^2 sigma_min^2 / h^2) ~ exp(-700) and the mass outside the box is below 1e-15."""
    gmm = GaussianMixture.example_2d()
    h = 0.02
    axis = np.arange(-5.0, 5.0 + h / 2, h)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)  # (N, 2)
    assert abs(np.exp(gmm.log_prob(grid)).sum() * h * h - 1.0) < 1e-12


def test_responsibilities_are_bayes_rule():
    """p(k | x) = w_k N(x; mu_k, Sigma_k) / p(x), computed with scipy; rows sum to 1."""
    gmm = random_mixture(3, K=3, D=2)
    x = points(gmm, 0)
    joint = np.stack([w * multivariate_normal(m, c).pdf(x) for w, m, c in
                      zip(gmm.weights, gmm.means, gmm.covariances, strict=True)], axis=1)  # (n, K)
    expected = joint / joint.sum(axis=1, keepdims=True)
    assert_close(gmm.responsibilities(x), expected, scale=1e-3 + expected)  # scipy's pdf: ~1e-15 relative
    assert_close(gmm.responsibilities(x).sum(axis=1), np.ones(len(x)))


def test_sample_frequencies_and_component_moments():
    """The labels follow the weights (5 standard errors sqrt(w (1 - w) / N)); within component k the draws have
    mean mu_k and covariance Sigma_k (5 s.e.: sqrt(Sigma_ii / N_k) and std((x_i - m_i)(x_j - m_j)) / sqrt(N_k))."""
    gmm = GaussianMixture.example_2d()
    N = 100_000
    x, labels = gmm.sample(np.random.default_rng(1), N, return_labels=True)
    assert x.shape == (N, 2) and labels.dtype == np.int64
    freq = np.bincount(labels, minlength=gmm.K) / N
    assert np.all(np.abs(freq - gmm.weights) < 5 * np.sqrt(gmm.weights * (1 - gmm.weights) / N))
    for k in range(gmm.K):
        assert_moments(x[labels == k], gmm.means[k], gmm.covariances[k])


def assert_moments(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> None:
    """Sample mean and covariance of x within 5 standard errors of (mean, cov)."""
    n = len(x)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * np.sqrt(np.diag(cov) / n))
    centered = x - x.mean(axis=0)  # (n, D)
    products = centered[:, :, None] * centered[:, None, :]  # (n, D, D)
    assert np.all(np.abs(products.mean(axis=0) - cov) < 5 * products.std(axis=0) / math.sqrt(n))


# --- E24: the score and its Jacobian ---------------------------------------------------------------------


@settings(max_examples=30)
@given(mixtures(), st.integers(0, 1000))
def test_e24_score_is_the_gradient_of_log_prob(gmm, seed):
    """[E24] s(x) = grad_x log p(x): central differences of log_prob (h = 1e-5: truncation h^2 |f'''| / 6 and
    rounding u |log p| / h are both below 1e-7 here; a wrong formula is off by O(1))."""
    x = points(gmm, seed, spread=0.3)
    numeric = central_differences(gmm.log_prob, x, h=1e-5)  # (n, D)
    assert_close(gmm.score(x), numeric, tol=FINITE_DIFFERENCES)


@settings(max_examples=30)
@given(mixtures(), st.integers(0, 1000))
def test_e24_score_jacobian_is_the_hessian_of_log_prob(gmm, seed):
    """[E24] score_jacobian(x) = d s(x) / dx by central differences of the score (same error budget), symmetric,
    and its trace is the divergence of the score."""
    x = points(gmm, seed, spread=0.3)
    jac = gmm.score_jacobian(x)  # (n, D, D)
    assert_close(jac, central_differences(gmm.score, x, h=1e-5), tol=FINITE_DIFFERENCES)
    assert_close(jac, jac.transpose(0, 2, 1), scale=1.0 + np.abs(jac))


def test_e24_score_of_one_gaussian_is_linear():
    """[E24] K = 1: s(x) = -Sigma^{-1} (x - mu), with the inverse from numpy's solver, Hessian -Sigma^{-1}."""
    cov = np.array([[1.0, 0.6, 0.1], [0.6, 2.0, -0.3], [0.1, -0.3, 0.5]])
    mu = np.array([0.5, -1.0, 2.0])
    gmm = GaussianMixture([1.0], mu[None], cov[None])
    x = np.random.default_rng(0).normal(size=(7, 3))
    expected = -np.linalg.solve(cov, (x - mu).T).T
    assert_close(gmm.score(x), expected, scale=1.0 + np.abs(expected))
    assert_close(gmm.score_jacobian(x), np.broadcast_to(-np.linalg.inv(cov), (7, 3, 3)), scale=10.0)


# --- noised mixtures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "std"), [(0.9, 0.3), (0.5, 1.2), (1.0, 0.05), (0.0, 1.0)])
def test_noised_matches_monte_carlo_moments(scale, std):
    """[E3] x = s x0 + n eps: the mean sum_k w_k s mu_k and covariance sum_k w_k (C_k + m_k m_k^T) - m m^T of
    noised(s, n)'s components agree with 200 000 draws within 5 standard errors."""
    gmm = GaussianMixture.example_2d()
    rng = np.random.default_rng(7)
    N = 200_000
    x = scale * gmm.sample(rng, N) + std * rng.standard_normal((N, 2))
    noised = gmm.noised(scale, std)
    np.testing.assert_array_equal(noised.weights, gmm.weights)
    mean = noised.weights @ noised.means  # (D,)
    second = np.einsum("k,kij->ij", noised.weights,
                       noised.covariances + noised.means[:, :, None] * noised.means[:, None, :])
    assert_moments(x, mean, second - np.outer(mean, mean))


def test_noised_density_is_the_convolution():
    """The density of s x0 + n eps is int p(x0) N(x; s x0, n^2) dx0: trapezoid quadrature over x0 on a fine grid
    (1-D mixture; the integrand is smooth, so the rule is exact to ~1e-12) gives noised(s, n).log_prob."""
    gmm = GaussianMixture([0.6, 0.4], [[-1.0], [1.5]], [[[0.2]], [[0.05]]])
    s, n = 0.8, 0.3
    x0 = np.linspace(-6.0, 6.0, 24001)  # (M,)
    prior = np.exp(gmm.log_prob(x0[:, None]))  # (M,)
    x = np.linspace(-3.0, 3.0, 13)
    kernel = np.exp(-0.5 * ((x[:, None] - s * x0) / n) ** 2) / (n * math.sqrt(2 * math.pi))  # (13, M)
    expected = np.trapezoid(prior * kernel, x0, axis=1)
    got = np.exp(gmm.noised(s, n).log_prob(x[:, None]))
    assert np.all(np.abs(got - expected) <= 1e-10 * (1e-3 + expected))


# --- the posterior mean --------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(mixtures(), st.integers(0, 1000), st.floats(0.1, 1.0), st.floats(0.05, 2.0))
def test_posterior_mean_is_tweedies_formula(gmm, seed, scale, std):
    """Tweedie: E[x0 | x] = (x + n^2 grad log p_noised(x)) / s, with the score of noised(s, n) (Cholesky factors),
    while posterior_mean conditions each component in the eigenbasis of Sigma_k: two independent routes.
    Tolerance: relative to the terms (|x| + n^2 |score|) / s, times the condition number of C_k (< 1e3)."""
    x = points(gmm, seed, spread=0.3)
    score = gmm.noised(scale, std).score(x)
    tweedie = (x + std**2 * score) / scale
    terms = (np.abs(x) + std**2 * np.abs(score)) / scale
    assert_close(gmm.posterior_mean(x, scale, std), tweedie, scale=1e3 * terms)


def test_posterior_mean_matches_importance_sampling():
    """E[x0 | x] = E_p[x0 N(x; s x0, n^2 I)] / E_p[N(x; s x0, n^2 I)] by self-normalized importance sampling over
    200 000 draws of p: within 5 standard errors (delta method: sqrt(sum w_i^2 (x0_i - R)^2) / sum w_i)."""
    gmm = GaussianMixture.example_2d()
    s, n = 0.8, 0.6
    x0 = gmm.sample(np.random.default_rng(11), 200_000)  # (N, 2)
    queries = np.array([[0.0, 0.0], [-0.8, -0.5], [0.9, 0.2], [0.0, 1.0], [1.5, -1.0]])
    expected = gmm.posterior_mean(queries, s, n)
    for x, want in zip(queries, expected, strict=True):
        w = np.exp(-0.5 * ((x - s * x0) ** 2).sum(axis=1) / n**2)  # (N,)
        estimate = w @ x0 / w.sum()
        se = np.sqrt((w[:, None] ** 2 * (x0 - estimate) ** 2).sum(axis=0)) / w.sum()
        assert np.all(np.abs(estimate - want) < 5 * se), (x, estimate, want, se)


def test_posterior_mean_per_example_coefficients():
    """One (s, n) per example gives, row by row, the posterior mean with that example's (s, n) alone."""
    gmm = random_mixture(5, K=3, D=3)
    x = points(gmm, 2, n=6)
    scale, std = np.linspace(0.2, 1.0, 6), np.linspace(1.5, 0.1, 6)
    rows = np.concatenate([gmm.posterior_mean(x[i:i + 1], scale[i], std[i]) for i in range(6)])
    assert_close(gmm.posterior_mean(x, scale, std), rows, scale=1.0 + np.abs(rows))


def test_denoiser_and_velocity_by_tweedie():
    """VE: D(x, sigma) = x + sigma^2 grad log p_sigma(x) (Tweedie with s = 1). Flow matching (E38):
    E[eps - x0 | x] = (x - E[x0 | x]) / t, since x = (1 - t) x0 + t eps gives eps = (x - (1 - t) x0) / t;
    at t = 0 (x = x0, eps independent) it is -x, at t = 1 (x = eps) it is x - E[x0]."""
    gmm = GaussianMixture.example_2d()
    x = points(gmm, 4)
    for sigma in (0.01, 0.5, 20.0):
        score = gmm.noised(1.0, sigma).score(x)
        assert_close(gmm.denoiser(x, sigma), x + sigma**2 * score, scale=1e3 * (np.abs(x) + sigma**2 * np.abs(score)))
    t = np.linspace(0.05, 1.0, len(x))  # one t per example
    x0 = gmm.posterior_mean(x, 1.0 - t, t)
    assert_close(gmm.velocity(x, t), (x - x0) / t[:, None], scale=1e3 * (np.abs(x) + np.abs(x0)) / t[:, None])
    assert_close(gmm.velocity(x, 0.0), -x)
    assert_close(gmm.velocity(x, 1.0), x - gmm.weights @ gmm.means, scale=1.0 + np.abs(x))


# --- the model callables for a discrete schedule ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine", "zero_terminal_snr"])
def test_e13_e14_e27_models_agree_with_the_conversions_and_tweedie(kind):
    """[E13][E14][E27] For t = 1..T (one per example), with a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t):
    to_eps_x0 turns the eps model's output and the v model's output into the same (eps, x0) as the eps and x0
    models; and the eps model is -b times the score of noised(a, b) (E27, the score by Tweedie/Cholesky)."""
    schedule = noise_schedule(kind, 50)
    gmm = GaussianMixture.example_2d()
    t = np.arange(1, 51)
    x = points(gmm, 3, n=50, spread=0.2)
    eps, x0, v = (gmm.model(schedule, p)(x, t) for p in ("epsilon", "sample", "v_prediction"))
    magnitude = np.abs(x) + np.abs(x0) + np.abs(eps) + np.abs(v)
    informative = t < 50 if kind == "zero_terminal_snr" else slice(None)  # eps says nothing of x0 at alpha_bar = 0
    for output, prediction_type in ((eps, "epsilon"), (v, "v_prediction")):
        got_eps, got_x0 = to_eps_x0(schedule, output[informative], x[informative], t[informative], prediction_type)
        scale = 1e3 * magnitude[informative] / schedule.sqrt_alpha_bars[t[informative], None]
        assert_close(got_eps, eps[informative], scale=scale)
        assert_close(got_x0, x0[informative], scale=scale)
    for i in np.flatnonzero(schedule.alpha_bars[t] > 0):
        a, b = schedule.sqrt_alpha_bars[t[i]], schedule.sqrt_one_minus_alpha_bars[t[i]]
        score = gmm.noised(a, b).score(x[i:i + 1])
        assert_close(score_from_eps(schedule, eps[i:i + 1], int(t[i])), score, scale=1e3 * (1 + np.abs(score)))


def test_models_at_zero_terminal_snr_know_nothing():
    """At t = T of a zero-terminal-SNR schedule x_T = eps: E[eps | x_T] = x_T and E[x0 | x_T] = E[x0]."""
    schedule = noise_schedule("zero_terminal_snr", 50)
    gmm = GaussianMixture.example_2d()
    x = points(gmm, 8)
    assert_close(gmm.eps_model(schedule)(x, 50), x)
    assert_close(gmm.x0_model(schedule)(x, 50), np.broadcast_to(gmm.weights @ gmm.means, x.shape))


def test_models_interpolate_sigma_at_fractional_t():
    """Fractional t = k + f uses sigma = (1 - f) sigma_k + f sigma_{k+1}, sigma_t = sqrt((1 - alpha_bar_t) /
    alpha_bar_t) (diffusers' sigma samplers), i.e. x_t = x0 / sqrt(1 + sigma^2) + sigma / sqrt(1 + sigma^2) eps;
    integral float t gives the integer t's output."""
    schedule = noise_schedule("linear", 100)
    gmm = GaussianMixture.example_2d()
    x = points(gmm, 5, n=4)
    sigmas = np.sqrt((1 - schedule.alpha_bars) / schedule.alpha_bars)
    t = np.array([0.25, 10.5, 57.9, 99.75])
    k = np.floor(t).astype(int)
    sigma = (1 - (t - k)) * sigmas[k] + (t - k) * sigmas[k + 1]
    expected = gmm.posterior_mean(x, 1 / np.sqrt(1 + sigma**2), sigma / np.sqrt(1 + sigma**2))
    assert_close(gmm.x0_model(schedule)(x, t), expected, scale=1.0 + np.abs(expected))
    on_grid = np.array([1, 10, 57, 100])
    assert_close(gmm.x0_model(schedule)(x, on_grid.astype(np.float64)), gmm.x0_model(schedule)(x, on_grid),
                 scale=10.0)


def test_models_keep_dtype_and_image_shape():
    """float32 in, float32 out; an input of shape (B, C, H, W) with C H W = D is flattened per example."""
    schedule = noise_schedule("cosine", 20)
    gmm = random_mixture(1, K=2, D=12)
    x = gmm.sample(np.random.default_rng(0), 3)
    flat = gmm.eps_model(schedule)(x, 7)
    image = gmm.eps_model(schedule)(x.reshape(3, 3, 2, 2).astype(np.float32), np.full(3, 7))
    assert image.dtype == np.float32 and image.shape == (3, 3, 2, 2)
    assert_close(image.reshape(3, 12), flat.astype(np.float32), scale=1.0 + np.abs(flat))


def test_example_2d_is_asymmetric_and_image_scaled():
    """3 components, unequal weights, anisotropic covariances; about 99% of the mass in [-2, 2]^2."""
    gmm = GaussianMixture.example_2d()
    assert (gmm.K, gmm.D) == (3, 2) and len(set(gmm.weights.tolist())) == 3
    eigvals = np.linalg.eigvalsh(gmm.covariances)  # (K, 2)
    assert np.all(eigvals[:, 1] / eigvals[:, 0] > 1.5)
    assert not np.any(np.isclose(gmm.covariances[:, 0, 1], 0.0))  # rotated
    x = gmm.sample(np.random.default_rng(0), 20_000)
    assert np.mean(np.all(np.abs(x) <= 2.0, axis=1)) > 0.99
    with pytest.raises(ValueError):
        gmm.weights[0] = 1.0  # read-only


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "match"), [
    (([0.5, 0.6], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), "weights"),
    (([1.5, -0.5], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), "weights"),
    (([[1.0]], [[0.0]], [[[1.0]]]), "weights"),
    (([1.0], [0.0], [[[1.0]]]), "means"),
    (([1.0], [[0.0, 1.0]], [[[1.0]]]), "covariances"),
    (([1.0], [[0.0, 1.0]], [[[1.0, 0.5], [0.4, 1.0]]]), "symmetric"),
    (([1.0], [[0.0, 1.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
    (([1.0], [[np.nan, 1.0]], [np.eye(2)]), "means"),
])
def test_constructor_rejects_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_bad_arguments_name_themselves():
    gmm = GaussianMixture.example_2d()
    schedule = noise_schedule("linear", 50)
    x = np.zeros((4, 2))
    with pytest.raises(TypeError, match="weights"):
        GaussianMixture(["a"], [[0.0]], [[[1.0]]])
    with pytest.raises(ValueError, match="x"):
        gmm.log_prob(np.zeros((4, 3)))
    with pytest.raises(TypeError, match="x"):
        gmm.score([[0.0, 0.0]])
    with pytest.raises(TypeError, match="rng"):
        gmm.sample(None, 3)
    with pytest.raises(ValueError, match="n"):
        gmm.sample(np.random.default_rng(0), -1)
    with pytest.raises(ValueError, match="std"):
        gmm.noised(1.0, -0.1)
    with pytest.raises(ValueError, match="scale, std"):
        gmm.noised(0.0, 0.0)
    with pytest.raises(ValueError, match="std"):
        gmm.posterior_mean(x, 1.0, np.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        gmm.denoiser(x, -1.0)
    with pytest.raises(ValueError, match="t"):
        gmm.velocity(x, 1.5)
    with pytest.raises(TypeError, match="schedule"):
        gmm.eps_model(None)
    with pytest.raises(ValueError, match="prediction_type"):
        gmm.model(schedule, "score")
    model = gmm.eps_model(schedule)
    with pytest.raises(ValueError, match="t"):
        model(x, 0)
    with pytest.raises(ValueError, match="t"):
        model(x, np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="t"):
        model(x, 50.5)
    with pytest.raises(ValueError, match="x"):
        model(np.zeros((4, 3)), 5)
