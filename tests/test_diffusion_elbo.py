"""The ELBO (E9, E17-E21) on the exact-data oracle: for Gaussian data every quantity is known in closed form
(tests/diffusion_oracle.py), so the bound can be checked against the true log-likelihood, exactly (each term
of E18 by Gauss-Hermite quadrature, which is exact for the quadratic integrands here) and pointwise along
sampled trajectories (E17). Also: other reverse variances give a lower bound, the optimal eps predictor
attains E15's analytic minimum and least squares recovers it, and the dataset estimate in bits per dim."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
from diffusion_oracle import GaussianData
from strategies import noise_schedule
from tolerances import ORACLE, assert_close

from minidiff.diffusion import (
    VLBTerms,
    denoising_term,
    elbo_sample,
    l_simple,
    neg_elbo_bits_per_dim,
    prior_term,
    q_sample,
    q_sample_trajectory,
    reverse_variance,
    vlb_terms,
)

MU = np.array([0.3, -0.5, 1.0])  # the data mean per dimension
S = 0.5  # the data standard deviation
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(3)  # exact for E[f(eps)] with f of degree <= 5
WEIGHTS = WEIGHTS / WEIGHTS.sum()

# (schedule kind, T, prediction type): eps is undefined at t = T of a zero-terminal-SNR schedule
ORACLE_CASES = [("linear", 1000, "epsilon"), ("cosine", 200, "sample"), ("sigmoid", 100, "epsilon"),
                ("zero_terminal_snr", 200, "v_prediction"), ("scaled_linear", 60, "v_prediction")]


def oracle(kind: str, T: int):
    schedule = noise_schedule(kind, T)
    return schedule, GaussianData(schedule.betas[1:], MU, S)


def exact_vlb(schedule, data, x0, prediction_type, variance_type, decoder="gaussian") -> np.ndarray:
    """E_q of every term of E18 per example, in nats, shape (B, T + 1): each term is E over one eps ~ N(0, I)
    of a quadratic in eps (Gaussian KLs and log densities of means linear in x_t), and 3-point Gauss-Hermite
    quadrature is exact for those. The same node serves every dimension: E sum_d f_d(eps_d) = sum_d E f_d."""
    total = 0.0
    for node, weight in zip(NODES, WEIGHTS, strict=True):
        result = vlb_terms(schedule, data.model(prediction_type), x0, noise=np.full(x0.shape, node),
                           prediction_type=prediction_type, variance_type=variance_type, decoder=decoder,
                           prior=data.prior())
        total = total + weight * result.terms
    return total


@pytest.mark.parametrize(("kind", "T", "prediction_type"), ORACLE_CASES)
def test_e17_e9_elbo_equals_the_log_likelihood_along_every_trajectory(kind, T, prediction_type):
    """[E17][E9][E1] The reverse process built from the true q(x_T), q(x_{t-1} | x_t) (optimal model + exact
    variances) and decoder q(x_0 | x_1) is the forward joint read backwards, so for every trajectory
    x_{1:T} ~ q(. | x_0): log p(x_{0:T}) - log q(x_{1:T} | x_0) = log q(x_0), not only in expectation."""
    schedule, data = oracle(kind, T)
    rng = np.random.default_rng(T)
    x0 = data.sample(rng, 6)
    trajectory = q_sample_trajectory(schedule, x0, rng)
    got = elbo_sample(schedule, data.model(prediction_type), trajectory, prediction_type=prediction_type,
                      variance_type=data.reverse_variance_table(), prior=data.prior(), decoder="gaussian")
    expected = data.log_prob(x0)
    assert_close(got, expected, tol=ORACLE)


@pytest.mark.parametrize(("kind", "T", "prediction_type"), ORACLE_CASES)
def test_e18_e19_e20_e21_exact_elbo_equals_the_log_likelihood(kind, T, prediction_type):
    """[E18][E19][E20][E21] L_T + sum_t E[L_{t-1}] + E[L_0], every expectation exact, equals -log q(x_0) for
    every x_0. With the exact reverse process L_T = KL(q(x_T | x_0) || q(x_T)) is the only term that does
    not vanish as the posteriors sharpen: all terms are >= 0 except L_0, a density of continuous data."""
    schedule, data = oracle(kind, T)
    x0 = data.sample(np.random.default_rng(1), 5)
    terms = exact_vlb(schedule, data, x0, prediction_type, data.reverse_variance_table())
    assert terms.shape == (5, T + 1)
    assert_close(terms.sum(axis=1), -data.log_prob(x0), tol=ORACLE)
    assert np.all(terms[:, 1:] >= -1e-12)


def reverse_chain_log_prob(schedule, data, x0, variance_type, var_output=None):
    """log p_theta(x_0) of a reverse process with the oracle's (linear) means E[x_{t-1} | x_t] = A_t x_t + c_t,
    prior q(x_T) and the variances sigma_t^2 of `variance_type`: x_0 is then Gaussian, with mean and variance
    propagated from x_T through x_{t-1} = A_t x_t + c_t + sigma_t z."""
    mean, variance = data.prior()
    like = np.zeros((1, 1))
    for t in range(schedule.T, 0, -1):
        a, c = data.reverse_mean_coefs(t)
        sigma2 = float(reverse_variance(schedule, t, like, variance_type, var_output)[0].ravel()[0])
        mean, variance = a * mean + c, a * a * variance + sigma2
    return (-0.5 * (x0 - mean) ** 2 / variance - 0.5 * np.log(2 * np.pi * variance)).sum(axis=1)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range", "table x0.5", "table x2"])
def test_e17_any_other_reverse_variance_gives_a_lower_bound(variance_type):
    """[E17][E10] With any other variances (optimal means kept) the exact ELBO is still <= log p_theta(x_0), the
    model's own likelihood (a Gaussian here, propagated through the linear chain), for every x_0; averaged over
    the data (Gauss-Hermite in x_0 too, exact for these quadratics) it is < E log q(x_0) = -H, which the exact
    variances attain."""
    schedule, data = oracle("linear", 100)
    model = data.eps_model
    var_output = None
    table = data.reverse_variance_table()
    if variance_type.startswith("table"):
        variance_type = table * (0.5 if variance_type.endswith("0.5") else 2.0)
    elif variance_type == "learned_range":
        var_output = np.full((1, 1), 0.4)

        def model(xt, t):
            return np.concatenate([data.eps_model(xt, t), np.full_like(xt, 0.4)], axis=1)

    x0 = np.concatenate([data.sample(np.random.default_rng(2), 4), MU + S * NODES[:, None]])  # (7, 3)
    elbo = 0.0
    for node, weight in zip(NODES, WEIGHTS, strict=True):
        elbo = elbo - weight * vlb_terms(schedule, model, x0, noise=np.full(x0.shape, node),
                                         variance_type=variance_type, decoder="gaussian", prior=data.prior()).total
    log_p = reverse_chain_log_prob(schedule, data, x0, variance_type, var_output)
    assert np.all(elbo <= log_p + 1e-9 * np.abs(log_p)), (elbo, log_p)
    data_average = float(WEIGHTS @ elbo[4:])  # x0 = mu + s * node: the expectation over the data
    oracle_average = float(WEIGHTS @ exact_vlb(schedule, data, x0[4:], "epsilon", table).sum(axis=1) * -1)
    assert oracle_average == pytest.approx(-data.entropy(), rel=1e-9)
    assert data_average < oracle_average - 1e-3


def test_e18_the_decomposition_is_the_expectation_of_the_e17_integrand():
    """[E18][E17] For a reverse process that is not the true one (fixed_large variances), the sum of the closed-form
    terms (exact) equals the mean of log p(x_{0:T}) - log q(x_{1:T} | x_0) over trajectories: M = 4000 trajectories
    per x_0 at a fixed seed, within 5 standard errors (sample sd / sqrt(M))."""
    schedule, data = oracle("cosine", 50)
    x0 = data.sample(np.random.default_rng(3), 2)
    exact = -exact_vlb(schedule, data, x0, "epsilon", "fixed_large").sum(axis=1)
    m = 4000
    rng = np.random.default_rng(4)
    for b in range(2):
        trajectory = q_sample_trajectory(schedule, np.repeat(x0[b : b + 1], m, axis=0), rng)
        samples = elbo_sample(schedule, data.eps_model, trajectory, variance_type="fixed_large", prior=data.prior())
        assert abs(samples.mean() - exact[b]) < 5 * samples.std() / math.sqrt(m)
        assert samples.std() > 0.1  # a real Monte Carlo check, not a zero-variance identity


def test_e19_prior_term_is_the_closed_form_and_about_1e_5_bits_per_dim():
    """[E19][E21] L_T = sum_d KL(N(a x_0, 1 - a^2) || N(0, 1)) = sum_d (a^2 x_0^2 + (1 - a^2) - 1 - log(1 - a^2)) / 2
    (evaluated here); for DDPM's linear schedule (alpha_bar_T = 4.04e-5) it is ~ alpha_bar_T x_0^2 / 2 nats, so
    below 0.5 * 4.04e-5 / ln 2 = 2.9e-5 bits/dim on [-1, 1] and ~1e-5 for pixels spread over [-1, 1]."""
    schedule = noise_schedule("linear", 1000)
    x0 = np.random.default_rng(5).integers(0, 256, (64, 3, 4, 4)) / 127.5 - 1.0
    ab = schedule.alpha_bars[1000]
    per_dim = 0.5 * (ab * x0**2 + (1 - ab) - 1 - math.log(1 - ab))
    expected = per_dim.reshape(64, -1).sum(axis=1)
    got = prior_term(schedule, x0)
    assert_close(got, expected, scale=np.abs(expected) + 48 * ab)  # the terms cancel to ~ab, 48 per example
    assert_close(prior_term(schedule, x0, prior=(np.zeros(1), np.ones(1))), got)
    bits = got / (48 * math.log(2))
    assert np.all(bits < 0.5 * ab / math.log(2)) and 0.5e-5 < bits.mean() < 1.5e-5


@pytest.mark.exercise("ex04.3")
def test_e15_the_optimal_predictor_attains_the_analytic_minimum():
    """[E15] E || eps - E[eps | x_t] ||^2 = E Var(eps | x_t) = alpha_bar_t s^2 / V_t per dimension, averaged over
    t uniform on 1..T. L_simple of the oracle's eps model over 40 batches of 5000 (fixed seed) is within 5
    standard errors of the batch means of that value; scaling the predictor by 1.1 costs exactly
    0.01 E[E[eps | x_t]^2] more."""
    schedule, data = oracle("cosine", 100)
    rng = np.random.default_rng(6)
    expected = float(np.mean([data.loss_minimum(t) for t in range(1, 101)]))
    losses, worse = [], []
    for _ in range(40):
        x0 = data.sample(rng, 5000)
        t = schedule.sample_timesteps(rng, 5000)
        eps = rng.standard_normal(x0.shape)
        losses.append(l_simple(schedule, data.eps_model, x0, t=t, noise=eps))
        worse.append(l_simple(schedule, lambda xt, tt: 1.1 * data.eps_model(xt, tt), x0, t=t, noise=eps))
    losses = np.array(losses)
    se = losses.std(ddof=1) / math.sqrt(losses.size)
    assert abs(losses.mean() - expected) < 5 * se
    # 1.1 E[eps | x_t] adds 0.01 E[E[eps | x_t]^2] = 0.01 (1 - alpha_bar_t) / V_t; paired batches, 5 standard errors
    extra = np.array(worse) - losses
    expected_extra = 0.01 * float(np.mean([(1 - data.alpha_bars[t]) / data.V(t) for t in range(1, 101)]))
    assert abs(extra.mean() - expected_extra) < 5 * extra.std(ddof=1) / math.sqrt(extra.size)
    assert expected_extra > 10 * extra.std(ddof=1) / math.sqrt(extra.size)


@pytest.mark.exercise("ex04.3")
def test_e15_l_simple_with_its_own_draws_is_unbiased_for_the_oracle():
    """[E15] With t and eps drawn by l_simple itself (rng only), the loss of the oracle's E[eps | x_t] is an unbiased
    estimate of the mean over t = 1..T of E Var(eps | x_t) = alpha_bar_t s^2 / V_t. On a 4-step cosine schedule these
    minima are 0.58, 0.20, 0.04 and 4e-5 per dimension, so a t drawn from 1..T-1 (mean 0.27 instead of 0.20) or only
    at some t is far off. 40 batches of 2000 at a fixed seed: within 5 standard errors of the batch means."""
    schedule, data = oracle("cosine", 4)
    rng = np.random.default_rng(13)
    expected = float(np.mean([data.loss_minimum(t) for t in range(1, 5)]))
    losses = np.array([float(l_simple(schedule, data.eps_model, data.sample(rng, 2000), rng=rng)) for _ in range(40)])
    se = losses.std(ddof=1) / math.sqrt(losses.size)
    assert abs(losses.mean() - expected) < 5 * se, \
        f"mean loss {losses.mean():.4f} +- {se:.4f}, expected {expected:.4f}: draw t uniformly on 1..T per example"


@pytest.mark.parametrize("t", [5, 50, 100])
def test_e15_least_squares_recovers_the_optimal_linear_predictor(t):
    """[E15][E3] Regressing eps on (x_t, 1) over N = 50000 draws of q_sample recovers E[eps | x_t] =
    sqrt(1 - alpha_bar_t) / V_t (x_t - sqrt(alpha_bar_t) mu): slope and intercept within 5 standard errors
    (residual sd / (sqrt(N) sd(x_t)) and residual sd sqrt(1/N + mean(x_t)^2 / (N var(x_t)))), and the residual
    mean square within 5 standard errors (sigma_r^2 sqrt(2 / N)) of the minimum alpha_bar_t s^2 / V_t."""
    schedule = noise_schedule("linear", 100)
    data = GaussianData(schedule.betas[1:], np.array([0.3]), S)
    n = 50_000
    rng = np.random.default_rng(t)
    x0 = data.sample(rng, n)
    eps = rng.standard_normal(x0.shape)
    xt = q_sample(schedule, x0, t, noise=eps)[:, 0]
    design = np.stack([xt, np.ones(n)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, eps[:, 0], rcond=None)
    ab = data.alpha_bars[t]
    true_slope = math.sqrt(1 - ab) / float(data.V(t))
    residual = eps[:, 0] - design @ np.array([slope, intercept])
    sigma_r = math.sqrt(float(data.loss_minimum(t)))
    assert abs(slope - true_slope) < 5 * sigma_r / (math.sqrt(n) * xt.std())
    se_intercept = sigma_r * math.sqrt(1 / n + xt.mean() ** 2 / (n * xt.var()))
    assert abs(intercept + true_slope * math.sqrt(ab) * 0.3) < 5 * se_intercept
    assert abs(np.mean(residual**2) - sigma_r**2) < 5 * sigma_r**2 * math.sqrt(2 / n)


def quantized_gaussian(rng, n, shape, s):
    """8-bit images whose pixels are N(0, s^2) rounded to the grid -1 + 2k/255 and clipped to [-1, 1]."""
    k = np.clip(np.round((s * rng.standard_normal((n, *shape)) + 1.0) * 127.5), 0, 255)
    return k / 127.5 - 1.0


def discrete_entropy_bits(s: float) -> float:
    """H of one such pixel in bits: -sum_k P_k log2 P_k over the 256 bins (edge bins open), Phi from math.erfc."""
    edges = [-math.inf] + [-1 + (2 * k + 1) / 255 for k in range(255)] + [math.inf]
    cdf = [0.5 * math.erfc(-e / (s * math.sqrt(2))) for e in edges]
    masses = [hi - lo for lo, hi in itertools.pairwise(cdf)]
    return -math.fsum(p * math.log2(p) for p in masses if p > 0)


def test_e18_e21_neg_elbo_in_bits_per_dim_over_a_dataset(monkeypatch, capsys):
    """[E18][E21] 8-bit images of quantized N(0, 0.4^2) pixels, the oracle's exact reverse process with the
    discretized decoder: the dataset estimate is the mean of `vlb_terms` per example in bits/dim (batches of 16
    over 40 images, replayed here with the same seed), its terms add up to it, and it bounds the true
    discrete entropy: H <= -ELBO (up to 5 standard errors) and, since the decoder's bins are the data's,
    -ELBO stays within 0.05 bits of H. Without tqdm the progress report is plain lines on stderr."""
    schedule = noise_schedule("linear", 50)
    data = GaussianData(schedule.betas[1:], 0.0, 0.4)
    images = quantized_gaussian(np.random.default_rng(9), 40, (1, 2, 2), 0.4)
    kwargs = {"variance_type": data.reverse_variance_table(), "prior": data.prior()}
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` now raises ImportError
    estimate = neg_elbo_bits_per_dim(schedule, data.eps_model, images, rng=np.random.default_rng(10), batch_size=16,
                                     **kwargs)
    assert "-ELBO: 3/3" in capsys.readouterr().err
    rng = np.random.default_rng(10)
    per_image = np.concatenate([vlb_terms(schedule, data.eps_model, images[i : i + 16], rng=rng, **kwargs)
                                .bits_per_dim() for i in range(0, 40, 16)])
    assert estimate.num_examples == 40
    assert estimate.bits_per_dim == pytest.approx(per_image.mean(), rel=1e-12)
    assert estimate.standard_error == pytest.approx(per_image.std(ddof=1) / math.sqrt(40), rel=1e-12)
    assert estimate.terms_bits_per_dim.shape == (51,)
    assert estimate.terms_bits_per_dim.sum() == pytest.approx(estimate.bits_per_dim, rel=1e-12)
    entropy = discrete_entropy_bits(0.4)
    assert estimate.bits_per_dim + 5 * estimate.standard_error >= entropy
    assert estimate.bits_per_dim - 5 * estimate.standard_error <= entropy + 0.05


def test_vlb_terms_layout_and_bad_input():
    """[E18] terms[:, k] = L_k: the decoder at k = 0, the denoising terms, the prior at k = T; bad input named."""
    schedule = noise_schedule("linear", 30)
    data = GaussianData(schedule.betas[1:], 0.0, 0.5)
    images = quantized_gaussian(np.random.default_rng(0), 3, (2,), 0.5)
    result = vlb_terms(schedule, data.eps_model, images, rng=np.random.default_rng(1))
    assert isinstance(result, VLBTerms) and result.terms.shape == (3, 31) and result.num_dims == 2
    np.testing.assert_array_equal(result.prior, result.terms[:, 30])
    np.testing.assert_array_equal(result.reconstruction, result.terms[:, 0])
    assert result.denoising.shape == (3, 29) and np.all(result.denoising >= 0)
    assert_close(result.total, result.prior + result.reconstruction + result.denoising.sum(axis=1))
    cases = [
        (lambda: vlb_terms(schedule, data.eps_model, np.full((2, 2), 0.5), rng=np.random.default_rng(0)),
         "x0: expected values on the 8-bit grid"),
        (lambda: vlb_terms(schedule, data.eps_model, images), "rng: pass a numpy.random.Generator"),
        (lambda: vlb_terms(schedule, data.eps_model, images, noise=np.zeros((29, 3, 2))), "noise: expected shape"),
        (lambda: vlb_terms(schedule, data.eps_model, images, decoder="logistic", rng=np.random.default_rng(0)),
         "decoder: expected one of"),
        (lambda: vlb_terms(schedule, data.eps_model, images, prior=(np.zeros(3), np.ones(2)),
                           rng=np.random.default_rng(0)), "prior: expected a shape that broadcasts"),
        (lambda: denoising_term(schedule, images, images, images, 1), "t: the denoising terms are t = 2..T"),
        (lambda: elbo_sample(schedule, data.eps_model, np.zeros((30, 3, 2))), r"trajectory: expected shape \(T \+ 1"),
        (lambda: neg_elbo_bits_per_dim(schedule, data.eps_model, images, rng=np.random.default_rng(0),
                                       batch_size=0), "batch_size: expected a positive integer"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
