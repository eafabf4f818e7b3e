"""Score matching (minidiff.diffusion.score): the score by the autodiff against the closed-form mixture score
(E24); the implicit loss equal to the explicit one minus 1/2 E||grad log p||^2, by Monte Carlo and in closed
form, and a model fitted by it (E26); denoising score matching recovering the noised score, Vincent's identity,
and its weighted form as E15's loss (E27); gradients against central differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from strategies import noise_schedule
from tolerances import assert_close

from minidiff import functional as F
from minidiff import nn
from minidiff.autodiff import Tensor, gradcheck
from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.losses import l_simple
from minidiff.diffusion.score import (
    LinearScore,
    denoising_score_matching_loss,
    explicit_score_matching_loss,
    implicit_score_matching_loss,
    score_from_log_prob,
    score_jacobian_trace,
)
from minidiff.optim import Adam

MU = np.array([0.5, -1.0])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])


def gaussian_data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(MU, COV, n)


def mlp(seed: int = 0, D: int = 2, hidden: int = 16) -> nn.Module:
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(D, hidden, rng=rng, dtype=np.float64), nn.SiLU(),
                         nn.Linear(hidden, D, rng=rng, dtype=np.float64))


def fixed_linear_model() -> LinearScore:
    """A linear score model that is not the true score (so the losses are far from their minimum)."""
    return LinearScore(np.array([[-0.7, 0.3], [0.1, -1.2]]), np.array([0.2, -0.4]))


def assert_mean_within_5_se(terms: np.ndarray, expected: float, what: str = "mean") -> None:
    """The sample mean of i.i.d. terms is within 5 standard errors (std / sqrt(N)) of `expected`."""
    se = terms.std() / math.sqrt(len(terms))
    assert abs(terms.mean() - expected) < 5 * se, (
        f"{what}: Monte Carlo {terms.mean():.6g}, expected {expected:.6g} (5 s.e. = {5 * se:.2g})")


def fit(loss_fn, model: LinearScore, steps: int = 400, lr: float = 0.05) -> None:
    """Full-batch Adam on a quadratic objective: converges to ~1e-8 within 400 steps for these 2-D problems."""
    opt = Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()


# --- E24: the score by the autodiff ----------------------------------------------------------------------


def mixture_log_prob_tensor(gmm: GaussianMixture, x: Tensor) -> Tensor:
    """log p(x) of the mixture in Tensor ops:
    log sum_k exp(log w_k - |L_k^{-1}(x - mu_k)|^2 / 2 - log det(2 pi Sigma_k) / 2)."""
    terms = []
    for w, mu, cov in zip(gmm.weights, gmm.means, gmm.covariances, strict=True):
        chol_inv = np.linalg.inv(np.linalg.cholesky(cov))
        z = (x - mu) @ chol_inv.T  # (n, D)
        log_norm = math.log(w) - 0.5 * math.log(np.linalg.det(2 * math.pi * cov))
        terms.append((z * z).sum(axis=1) * -0.5 + log_norm)
    a = F.stack(terms, axis=1)  # (n, K)
    top = a.detach().max(axis=1, keepdims=True)  # a constant shift
    return ((a - top).exp().sum(axis=1)).log() + top.reshape(-1)


def test_e24_score_from_log_prob_is_the_closed_form_mixture_score():
    """[E24] grad_x log p(x) by one backward pass of sum_i log p(x_i), for the mixture's log density written in
    Tensor ops, equals the oracle's closed form sum_k r_k(x) (-Sigma_k^{-1} (x - mu_k))."""
    gmm = GaussianMixture.example_2d()
    x = gmm.sample(np.random.default_rng(0), 64)
    expected = gmm.score(x)
    assert_close(score_from_log_prob(lambda t: mixture_log_prob_tensor(gmm, t), x), expected,
                 scale=1.0 + np.abs(expected))


def test_e24_linear_score_of_a_gaussian_is_the_gradient_of_its_log_density():
    """[E24] LinearScore.of_gaussian(mu, Sigma) is -Sigma^{-1} (x - mu), the autodiff gradient of
    log N(x; mu, Sigma)."""
    x = gaussian_data(32, 1)
    precision = np.linalg.inv(COV)

    def log_density(t: Tensor) -> Tensor:
        r = t - MU
        return ((r @ precision) * r).sum(axis=1) * -0.5

    expected = score_from_log_prob(log_density, x)
    assert_close(LinearScore.of_gaussian(MU, COV)(x).detach().numpy(), expected, scale=1.0 + np.abs(expected))


def test_jacobian_trace_by_backward_passes_matches_central_differences():
    """tr(grad_x s(x)) by D backward passes equals sum_j (s_j(x + h e_j) - s_j(x - h e_j)) / 2h for an MLP
    (h = 1e-5: error ~ h^2 |s'''| + u |s| / h < 1e-8); for LinearScore it is tr A. The parameters' gradients
    stay untouched."""
    model = mlp(3, D=3)
    x = np.random.default_rng(2).normal(size=(10, 3))
    h = 1e-5
    numeric = np.zeros(10)
    for j in range(3):
        step = np.zeros(3)
        step[j] = h
        numeric += (model(Tensor(x + step)).data[:, j] - model(Tensor(x - step)).data[:, j]) / (2 * h)
    assert_close(score_jacobian_trace(model, x), numeric, scale=1e4 * (1.0 + np.abs(numeric)))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    linear = fixed_linear_model()
    assert_close(score_jacobian_trace(linear, x[:, :2]), np.full(10, -1.9))


# --- E26: explicit and implicit score matching ---------------------------------------------------------------


def test_e26_losses_of_a_linear_model_on_gaussian_data_match_their_closed_forms():
    """[E26] For s(x) = A x + b and x ~ N(mu, Sigma) (precision P):
    J_ESM = 1/2 [tr((A + P) Sigma (A + P)^T) + |(A + P) mu + b - P mu|^2],
    J_ISM = tr A + 1/2 [tr(A Sigma A^T) + |A mu + b|^2] = J_ESM - 1/2 tr P (E|grad log p|^2 = tr P).
    Monte Carlo over 50 000 samples within 5 standard errors."""
    model = fixed_linear_model()
    A, b = model.weight.data, model.bias.data
    P = np.linalg.inv(COV)
    x = gaussian_data(50_000, 3)
    true_score = -(x - MU) @ P
    esm = explicit_score_matching_loss(model, x, true_score, reduction="none").data
    ism = implicit_score_matching_loss(model, x, trace_fn=model.divergence, reduction="none").data
    M = A + P
    closed_esm = 0.5 * (np.trace(M @ COV @ M.T) + np.sum((M @ MU + b - P @ MU) ** 2))
    closed_ism = np.trace(A) + 0.5 * (np.trace(A @ COV @ A.T) + np.sum((A @ MU + b) ** 2))
    assert closed_ism == pytest.approx(closed_esm - 0.5 * np.trace(P), rel=1e-12)
    assert_mean_within_5_se(esm, closed_esm)
    assert_mean_within_5_se(ism, closed_ism)


def test_e26_implicit_equals_explicit_minus_a_constant_for_a_nonlinear_model():
    """[E26] Hyvarinen's identity term by term: J_ISM - J_ESM + 1/2 E|grad log p|^2 = E[tr(grad s) + s . grad log p],
    zero by integration by parts. For an MLP score model on the mixture (trace by D backward passes, true score
    from the oracle), the per-sample terms average to 0 within 5 standard errors over 20 000 samples; the same
    check fails for a model whose trace is off by a constant 0.5 (the test has the power to see a wrong trace)."""
    gmm = GaussianMixture.example_2d()
    x = gmm.sample(np.random.default_rng(4), 20_000)
    model = mlp(5)
    true_score = gmm.score(x)
    ism = implicit_score_matching_loss(model, x, reduction="none").data
    esm = explicit_score_matching_loss(model, x, true_score, reduction="none").data
    terms = ism - esm + 0.5 * (true_score**2).sum(axis=1)
    assert_mean_within_5_se(terms, 0.0)
    shifted = terms + 0.5
    assert abs(shifted.mean()) > 5 * shifted.std() / math.sqrt(len(shifted))


def test_e26_implicit_score_matching_fits_the_gaussian_score():
    """[E26] Adam on J_ISM (differentiable through LinearScore.divergence) reaches its minimizer on the sample:
    grad_A = I + E[(A x + b) x^T] = 0 and grad_b = E[A x + b] = 0 give A = -S^{-1}, b = S^{-1} xbar with S the
    (biased) sample covariance: the Gaussian score fitted from samples alone, without the true score."""
    x = gaussian_data(4000, 5)
    model = LinearScore.zeros(2)
    fit(lambda m: implicit_score_matching_loss(m, x, trace_fn=m.divergence), model)
    S = np.cov(x.T, bias=True)
    A = -np.linalg.inv(S)
    assert np.abs(model.weight.data - A).max() < 1e-6
    assert np.abs(model.bias.data + A @ x.mean(axis=0)).max() < 1e-6


def test_e26_implicit_loss_without_trace_fn_has_no_gradient():
    """[E26] Without trace_fn the value is exact (the same as with the closed-form trace) but there is no graph:
    minidiff has no double backward, so backward refuses instead of returning a gradient without the trace's part."""
    model = fixed_linear_model()
    x = gaussian_data(100, 6)
    exact = implicit_score_matching_loss(model, x)
    assert_close(exact.data, implicit_score_matching_loss(model, x, trace_fn=model.divergence).data)
    assert not exact.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        exact.backward()


# --- E27: denoising score matching ----------------------------------------------------------------------------


@pytest.mark.exercise("ex05.2")
def test_e27_dsm_fit_recovers_the_noised_gaussian_score():
    """[E27] For x0 ~ N(mu, Sigma) and x_t = x0 + sigma eps, the minimizer of DSM is the score of N(mu, Sigma +
    sigma^2 I): A = -(Sigma + sigma^2 I)^{-1}, b = -A mu. DSM with a linear model is least squares of -eps / sigma
    on (x_t, 1); Adam on the DSM loss reaches the coefficients within 5 standard errors of ordinary least squares
    (se from sigma_res^2 (X^T X)^{-1}; the residual E[eps | x_t] - eps is homoscedastic for Gaussian data)."""
    sigma, N = 0.5, 20_000
    rng = np.random.default_rng(7)
    x0 = gaussian_data(N, 8)
    noise = rng.standard_normal(x0.shape)
    model = LinearScore.zeros(2)
    fit(lambda m: denoising_score_matching_loss(m, x0, noise, sigma=sigma), model)
    noised_cov = COV + sigma**2 * np.eye(2)
    A = -np.linalg.inv(noised_cov)
    X = np.column_stack([x0 + sigma * noise, np.ones(N)])  # (N, 3)
    coef = np.column_stack([model.weight.data, model.bias.data])  # (2, 3): row j predicts score_j
    residual = -noise / sigma - X @ coef.T  # (N, 2)
    xtx_inv = np.linalg.inv(X.T @ X)
    for j in range(2):
        se = np.sqrt(residual[:, j].var() * np.diag(xtx_inv))  # (3,)
        best = np.append(A[j], -A[j] @ MU)  # (3,): the score of N(mu, Sigma + sigma^2 I), row j
        assert np.all(np.abs(coef[j] - best) < 5 * se), \
            f"score component {j}: minimizing your loss gave (weights, bias) {np.round(coef[j], 4)}\n" \
            f"the noised data's score: {np.round(best, 4)} (5 s.e. {np.round(5 * se, 4)}): is the target -eps / sigma?"


@pytest.mark.exercise("ex05.2")
@pytest.mark.parametrize("t", [5, 30])
def test_e27_dsm_is_explicit_sm_on_the_noised_density_plus_a_constant(t):
    """[E27] Vincent's identity, VP path: J_DSM(theta) - J_ESM_q(theta) = C = D / (2 n^2) - 1/2 E|grad log q(x_t)|^2,
    independent of theta. For Gaussian data q(x_t) = N(s mu, s^2 Sigma + n^2 I), so E|grad log q|^2 = tr(C_t^{-1}).
    The per-sample differences average to C within 5 standard errors, for two different models."""
    schedule = noise_schedule("linear", 50)
    s, n = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    x0 = gaussian_data(40_000, 9)
    noise = np.random.default_rng(10).standard_normal(x0.shape)
    xt = s * x0 + n * noise
    noised_cov = s**2 * COV + n**2 * np.eye(2)
    true_score = -(xt - s * MU) @ np.linalg.inv(noised_cov)
    constant = 2 / (2 * n**2) - 0.5 * np.trace(np.linalg.inv(noised_cov))
    for model in (fixed_linear_model(), mlp(11)):
        dsm = denoising_score_matching_loss(lambda x, tt, m=model: m(x), x0, noise, schedule=schedule, t=t,
                                            reduction="none").data
        esm = explicit_score_matching_loss(model, xt, true_score, reduction="none").data
        assert_mean_within_5_se(dsm - esm, constant)


@pytest.mark.exercise("ex05.2")
def test_e27_dsm_differences_of_models_agree_with_explicit_sm_on_the_mixture():
    """[E27] VE path on the mixture: J_DSM(theta_1) - J_DSM(theta_2) = J_ESM_q(theta_1) - J_ESM_q(theta_2) with the
    oracle's noised score (the constant cancels): paired per-sample differences within 5 standard errors of 0."""
    gmm = GaussianMixture.example_2d()
    sigma = 0.3
    x0 = gmm.sample(np.random.default_rng(12), 40_000)
    noise = np.random.default_rng(13).standard_normal(x0.shape)
    xt = x0 + sigma * noise
    true_score = gmm.noised(1.0, sigma).score(xt)
    per_model = []
    for model in (fixed_linear_model(), mlp(14)):
        dsm = denoising_score_matching_loss(lambda x, sg, m=model: m(x), x0, noise, sigma=sigma, reduction="none")
        per_model.append(dsm.data - explicit_score_matching_loss(model, xt, true_score, reduction="none").data)
    assert_mean_within_5_se(per_model[0] - per_model[1], 0.0)


@pytest.mark.exercise("ex05.2")
def test_e27_weighted_dsm_is_the_eps_loss_of_e15():
    """[E27] With lambda = n^2 and s_theta = -eps_theta / n (score_from_eps), 1/2 || n s_theta + eps ||^2 =
    1/2 || eps - eps_theta ||^2: the batch mean is D / 2 times L_simple (E15, a mean over dimensions), for the
    same t and noise. Checked with the mixture's optimal eps model and t drawn per example."""
    schedule = noise_schedule("cosine", 40)
    gmm = GaussianMixture.example_2d()
    eps_model = gmm.eps_model(schedule)
    rng = np.random.default_rng(15)
    x0 = gmm.sample(rng, 256)
    t = rng.integers(1, 41, size=256)
    noise = rng.standard_normal(x0.shape)

    def score_model(x: Tensor, tt: np.ndarray) -> np.ndarray:
        return -eps_model(x.data, tt) / schedule.sqrt_one_minus_alpha_bars[tt, None]

    dsm = denoising_score_matching_loss(score_model, x0, noise, schedule=schedule, t=t, weighted=True)
    expected = l_simple(schedule, eps_model, x0, t=t, noise=noise)
    D = x0.shape[1]
    assert_close(dsm.data, np.asarray(D / 2 * expected), scale=1.0 + abs(expected))


def test_e27_dsm_draws_t_then_noise_from_rng():
    """Without t and noise the VP loss draws t ~ U{1..T} and then eps from rng, as l_simple does: the same
    value as with both passed explicitly from a generator with the same seed."""
    schedule = noise_schedule("linear", 30)
    x0 = gaussian_data(16, 16)
    model = fixed_linear_model()
    got = denoising_score_matching_loss(model, x0, schedule=schedule, rng=np.random.default_rng(17))
    rng = np.random.default_rng(17)
    t = rng.integers(1, 31, size=16)
    noise = rng.standard_normal(x0.shape)
    assert_close(got.data, denoising_score_matching_loss(model, x0, noise, schedule=schedule, t=t).data)


def linear_dsm_expectation(A: np.ndarray, b: np.ndarray, s: np.ndarray, n: np.ndarray, weighted: bool) -> np.ndarray:
    """E[1/2 |lambda^(1/2) (A x_t + b + eps / n)|^2] for x0 ~ N(MU, COV), x_t = s x0 + n eps, per example (s, n of
    shape (N,)). The residual A s x0 + b + (n A + I / n) eps has mean A s MU + b and independent parts, so the
    expectation is 1/2 [|s A MU + b|^2 + s^2 tr(A COV A^T) + |n A + I / n|_F^2], times lambda = n^2 if weighted."""
    eye = np.eye(len(b))
    mean_part = ((s[:, None] * (A @ MU) + b) ** 2).sum(axis=1)  # (N,)
    data_part = s**2 * np.trace(A @ COV @ A.T)
    noise_part = np.array([np.sum((ni * A + eye / ni) ** 2) for ni in n])
    value = 0.5 * (mean_part + data_part + noise_part)
    return value * n**2 if weighted else value


@pytest.mark.exercise("ex05.2")
@pytest.mark.parametrize("path", ["ve", "vp"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_e27_dsm_of_a_linear_model_is_its_closed_form_expectation(path, weighted):
    """[E27] For s_theta(x) = A x + b on x0 ~ N(MU, COV) the per-example DSM terms have the closed-form expectation
    of `linear_dsm_expectation`, for a noise level per example (VE sigma in [0.1, 2], or VP t in 1..30), with and
    without the weight lambda = n^2. Their differences from it average to 0 within 5 standard errors
    (40 000 samples); a target of -eps instead of -eps / n, or a missing weight, is off by many."""
    N = 40_000
    rng = np.random.default_rng(21)
    x0 = gaussian_data(N, 22)
    noise = rng.standard_normal(x0.shape)
    model = fixed_linear_model()
    A, b = model.weight.data, model.bias.data
    if path == "ve":
        sigma = rng.uniform(0.1, 2.0, N)
        terms = denoising_score_matching_loss(model, x0, noise, sigma=sigma, weighted=weighted, reduction="none")
        s, n = np.ones(N), sigma
    else:
        schedule = noise_schedule("linear", 30)
        t = rng.integers(1, 31, N)
        terms = denoising_score_matching_loss(model, x0, noise, schedule=schedule, t=t, weighted=weighted,
                                              reduction="none")
        s, n = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    assert terms.shape == (N,), f"reduction='none' gave shape {terms.shape}, expected one term per example ({N},)"
    expected = linear_dsm_expectation(A, b, s, n, weighted)
    assert_mean_within_5_se(terms.data - expected, 0.0, what="DSM term minus its closed-form expectation")
    mean = denoising_score_matching_loss(model, x0, noise, weighted=weighted,
                                         **({"sigma": sigma} if path == "ve" else {"schedule": schedule, "t": t}))
    assert_close(mean.data, np.asarray(terms.data.mean()), what="reduction='mean' vs the mean of the terms:")


@pytest.mark.exercise("ex05.2")
def test_e27_dsm_minimizer_over_linear_models_is_the_noised_score():
    """[E27] For a linear model DSM is least squares of the target -eps / sigma on (x_t, 1). Fitted here by
    np.linalg.lstsq, independently of the loss: the loss's gradient in (A, b) must vanish there (its minimizer,
    a convex quadratic), and the fit must be the score of the noised data N(MU, COV + sigma^2 I),
    A = -(COV + sigma^2 I)^{-1}, b = -A MU, within 5 regression standard errors (sigma_res^2 (X^T X)^{-1})."""
    sigma, N = 0.6, 20_000
    x0 = gaussian_data(N, 23)
    noise = np.random.default_rng(24).standard_normal(x0.shape)
    X = np.column_stack([x0 + sigma * noise, np.ones(N)])  # (N, 3)
    Y = -noise / sigma  # (N, 2), the target grad log q(x_t | x0)
    coef = np.linalg.lstsq(X, Y, rcond=None)[0].T  # (2, 3): row j predicts score_j
    model = LinearScore(coef[:, :2], coef[:, 2])
    denoising_score_matching_loss(model, x0, noise, sigma=sigma).backward()
    for param, name in ((model.weight, "A"), (model.bias, "b")):
        assert param.grad is not None, f"the loss has no gradient in {name} (was it built from Tensor operations?)"
        assert np.abs(param.grad).max() < 1e-9, (
            f"gradient in {name} at the least-squares fit is {param.grad.ravel()}, not 0: the loss is not the "
            f"squared error of the target -eps / sigma")
    A = -np.linalg.inv(COV + sigma**2 * np.eye(2))
    exact = np.column_stack([A, -A @ MU])  # (2, 3)
    residual = Y - X @ coef.T
    xtx_inv = np.linalg.inv(X.T @ X)
    for j in range(2):
        se = np.sqrt(residual[:, j].var() * np.diag(xtx_inv))  # (3,)
        assert np.all(np.abs(coef[j] - exact[j]) < 5 * se), (coef[j], exact[j], se)


# --- gradients ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["explicit", "implicit",
                                   pytest.param("dsm_ve", marks=pytest.mark.exercise("ex05.2")),
                                   pytest.param("dsm_vp_weighted", marks=pytest.mark.exercise("ex05.2"))])
def test_loss_gradients_pass_gradcheck(which):
    """The gradients of each loss in the model's parameters (LinearScore and an MLP) match float64 central
    differences (minidiff.autodiff.gradcheck)."""
    rng = np.random.default_rng(18)
    x = rng.normal(size=(6, 2))
    noise = rng.normal(size=(6, 2))
    schedule = noise_schedule("linear", 30)
    losses = {
        "explicit": lambda m: explicit_score_matching_loss(m, x, -x),
        "implicit": lambda m: implicit_score_matching_loss(m, x, trace_fn=m.divergence),
        "dsm_ve": lambda m: denoising_score_matching_loss(lambda xt, sg: m(xt), x, noise, sigma=np.linspace(0.1, 2, 6)),
        "dsm_vp_weighted": lambda m: denoising_score_matching_loss(lambda xt, t: m(xt), x, noise, schedule=schedule,
                                                                   t=np.arange(1, 7), weighted=True),
    }
    linear = fixed_linear_model()
    gradcheck(lambda *_: losses[which](linear), linear.parameters())
    if which != "implicit":  # the MLP has no closed-form divergence
        network = mlp(19)
        gradcheck(lambda *_: losses[which](network), list(network.parameters()))


# --- bad input -------------------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves():
    model = fixed_linear_model()
    x = gaussian_data(8, 20)
    schedule = noise_schedule("linear", 30)
    with pytest.raises(ValueError, match="x"):
        explicit_score_matching_loss(model, x[None], x)
    with pytest.raises(ValueError, match="true_score"):
        explicit_score_matching_loss(model, x, x[:4])
    with pytest.raises(ValueError, match="reduction"):
        explicit_score_matching_loss(model, x, x, reduction="sum")
    with pytest.raises(ValueError, match="trace_fn"):
        implicit_score_matching_loss(model, x, trace_fn=lambda v: model.divergence(v)[:3])
    with pytest.raises(ValueError, match="score_model"):
        explicit_score_matching_loss(lambda v: v[:, :1], x, x)
    with pytest.raises(TypeError, match="score_model"):
        explicit_score_matching_loss(lambda v: None, x, x)
    with pytest.raises(ValueError, match="sigma"):
        denoising_score_matching_loss(model, x, rng=np.random.default_rng(0), sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        denoising_score_matching_loss(model, x, rng=np.random.default_rng(0), sigma=np.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        denoising_score_matching_loss(model, x, rng=np.random.default_rng(0), sigma=1.0, schedule=schedule, t=3)
    with pytest.raises(TypeError, match="schedule"):
        denoising_score_matching_loss(model, x, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        denoising_score_matching_loss(model, x, schedule=schedule)
    with pytest.raises(ValueError, match="t"):
        denoising_score_matching_loss(model, x, x, schedule=schedule, t=31)
    with pytest.raises(TypeError, match="weighted"):
        denoising_score_matching_loss(model, x, x, sigma=1.0, weighted="yes")
    with pytest.raises(ValueError, match="weight"):
        LinearScore(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="bias"):
        LinearScore(np.zeros((2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="log_prob_fn"):
        score_from_log_prob(lambda t: t.sum(), x)
