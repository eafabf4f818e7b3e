"""The hand-written Dormand-Prince RK45 (minidiff.diffusion.ode) and the likelihood by the probability flow ODE
(E34): the tableau's order conditions, step for step against scipy's solve_ivp(method="RK45"), error against
tolerance, fifth-order convergence of fixed steps; log-likelihoods of Gaussian data and of the Gaussian
mixture against their closed forms, the autodiff divergence against the mixture's Hessian, Hutchinson's
estimator unbiased, bits per dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from tolerances import LOG_LIKELIHOOD_PER_DIM, RK45_TWIN, assert_close

import minidiff.functional as F
from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.likelihood import (
    likelihood_bits_per_dim,
    ode_log_likelihood,
    probe_vectors,
    score_divergence_exact,
    score_divergence_hutchinson,
)
from minidiff.diffusion.ode import DOPRI_A, DOPRI_B, DOPRI_B_HAT, DOPRI_C, rk45_fixed_steps, solve_ivp_rk45
from minidiff.diffusion.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
GMM = GaussianMixture.example_2d()

# --- the Dormand-Prince tableau ------------------------------------------------------------------------------


def order_conditions(b: np.ndarray) -> dict[str, tuple[float, float]]:
    """The 17 Butcher order conditions of orders 1-5 as (sum, required value), for weights b and the tableau's
    A and c (Hairer, Norsett & Wanner, Solving ODEs I, II.2, Table 2.2): one per rooted tree with <= 5 nodes."""
    A = np.zeros((7, 7))
    for i, row in enumerate(DOPRI_A):
        A[i, : len(row)] = row
    c = DOPRI_C
    Ac, Ac2, Ac3, AAc = A @ c, A @ c**2, A @ c**3, A @ (A @ c)
    return {
        "1": (b.sum(), 1.0), "2": (b @ c, 1 / 2),
        "3a": (b @ c**2, 1 / 3), "3b": (b @ Ac, 1 / 6),
        "4a": (b @ c**3, 1 / 4), "4b": (b @ (c * Ac), 1 / 8), "4c": (b @ Ac2, 1 / 12), "4d": (b @ AAc, 1 / 24),
        "5a": (b @ c**4, 1 / 5), "5b": (b @ (c**2 * Ac), 1 / 10), "5c": (b @ (c * Ac2), 1 / 15),
        "5d": (b @ (c * AAc), 1 / 30), "5e": (b @ Ac**2, 1 / 20), "5f": (b @ Ac3, 1 / 20),
        "5g": (b @ (A @ (c * Ac)), 1 / 40), "5h": (b @ (A @ Ac2), 1 / 60), "5i": (b @ (A @ AAc), 1 / 120),
    }


def test_dormand_prince_tableau_has_orders_5_and_4():
    """The rows of A sum to c; b satisfies all 17 order conditions up to order 5; b_hat those up to order 4
    and not all of order 5 (so y5 - y4 measures the error); b is the last row of A (FSAL)."""
    for i, row in enumerate(DOPRI_A):
        assert_close(row.sum(), DOPRI_C[i], scale=np.abs(row).sum())
    for name, (value, required) in order_conditions(DOPRI_B).items():
        assert_close(value, required, scale=1.0, what=f"b, tree {name}")
    hat = order_conditions(DOPRI_B_HAT)
    for name, (value, required) in hat.items():
        if name[0] != "5":
            assert_close(value, required, scale=1.0, what=f"b_hat, tree {name}")
    assert max(abs(value - required) for name, (value, required) in hat.items() if name[0] == "5") > 1e-4
    np.testing.assert_array_equal(DOPRI_A[-1], DOPRI_B[:6])


# --- RK45 against scipy ------------------------------------------------------------------------------------


def decay(t, y):
    return -0.8 * y


def rotation(t, y):
    return np.stack([-y[1], y[0]]) * (1.0 + 0.3 * np.cos(t))


def van_der_pol(t, y):
    return np.stack([y[1], 1.5 * (1 - y[0] ** 2) * y[1] - y[0]])


PROBLEMS = {"decay": (decay, np.array([1.0, -2.0, 0.5])), "rotation": (rotation, np.array([1.0, 0.0])),
            "van_der_pol": (van_der_pol, np.array([2.0, 0.0]))}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize(("t0", "t1"), [(0.0, 4.0), (3.0, -1.0)])
@pytest.mark.parametrize(("rtol", "atol"), [(1e-3, 1e-6), (1e-6, 1e-9), (1e-9, 1e-11)])
def test_rk45_takes_scipys_steps(problem, t0, t1, rtol, atol):
    """The same method and controller as scipy's solve_ivp(method="RK45"): the same number of evaluations and
    accepted steps, and the same end point (to rounding), forwards and backwards in time."""
    f, y0 = PROBLEMS[problem]
    ref = solve_ivp(f, (t0, t1), y0, method="RK45", rtol=rtol, atol=atol)
    out = solve_ivp_rk45(f, t0, t1, y0, rtol=rtol, atol=atol)
    assert ref.status == 0
    assert (out.nfev, out.n_accepted) == (ref.nfev, len(ref.t) - 1)
    assert_close(out.y, ref.y[:, -1], tol=RK45_TWIN)


def test_rk45_integrates_arrays_of_any_shape():
    """y of shape (2, 3, 2): the same steps as the flattened problem in scipy (the rms norm is over all elements)."""
    y0 = np.random.default_rng(0).standard_normal((2, 3, 2))
    def f(t, y):
        return -y * np.sin(t) + 0.1 * y[::-1]
    out = solve_ivp_rk45(f, 0.0, 2.0, y0, rtol=1e-7, atol=1e-9)
    ref = solve_ivp(lambda t, y: f(t, y.reshape(y0.shape)).ravel(), (0.0, 2.0), y0.ravel(), rtol=1e-7, atol=1e-9)
    assert out.y.shape == y0.shape and out.nfev == ref.nfev
    assert_close(out.y, ref.y[:, -1].reshape(y0.shape), tol=RK45_TWIN)


def test_rk45_error_follows_the_tolerance():
    """Per step the controller holds the error of y4 at tol, so h ~ tol^(1/5) and the propagated fifth-order
    solution has global error ~ h^5 ~ tol: on the rotation (exact solution known) the error must fall like tol
    (log-log slope in [0.8, 1.2]) and stay within 100 tol."""
    y0 = np.array([1.0, 0.0])
    phase = 3.0 + 0.3 * math.sin(3.0)  # int_0^3 (1 + 0.3 cos t) dt
    exact = np.array([math.cos(phase), math.sin(phase)])
    tols = 10.0 ** -np.arange(4, 11)
    errors = np.array([np.max(np.abs(solve_ivp_rk45(rotation, 0.0, 3.0, y0, rtol=tol, atol=tol).y - exact))
                       for tol in tols])
    slope = np.polyfit(np.log(tols), np.log(errors), 1)[0]
    assert 0.8 < slope < 1.2, (slope, errors)
    assert np.all(errors < 100 * tols), errors


def test_rk45_fixed_steps_converge_with_order_5():
    """Fixed Dormand-Prince steps: global error C h^5, so halving h divides it by 32 (log2 ratio ~ 5)."""
    y0 = np.array([1.0, 0.0])
    phase = 3.0 + 0.3 * math.sin(3.0)
    exact = np.array([math.cos(phase), math.sin(phase)])
    steps = np.array([8, 16, 32, 64])
    errors = np.array([np.max(np.abs(rk45_fixed_steps(rotation, 0.0, 3.0, y0, n) - exact)) for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 4.7 < slope < 5.3, (slope, errors)


def test_rk45_trajectory_holds_the_accepted_steps():
    """trajectory: ts from t0 to t1 (backwards here), monotone, ys on the exact solution within the tolerance,
    the last one the result; the callback sees every accepted step."""
    seen = []
    out = solve_ivp_rk45(decay, 2.0, -1.0, np.array([1.0]), rtol=1e-8, atol=1e-10, trajectory=True,
                         callback=lambda t, y: seen.append(t))
    assert out.ts[0] == 2.0 and out.ts[-1] == -1.0 and np.all(np.diff(out.ts) < 0)
    assert len(out.ts) == out.n_accepted + 1 and seen == list(out.ts[1:])
    exact = np.exp(-0.8 * (out.ts - 2.0))[:, None]  # (steps + 1, 1)
    assert np.all(np.abs(out.ys - exact) <= 100 * 1e-8 * exact)
    np.testing.assert_array_equal(out.ys[-1], out.y)


def test_rk45_arguments_are_checked():
    y0 = np.array([1.0])
    with pytest.raises(TypeError, match="f"):
        solve_ivp_rk45("f", 0.0, 1.0, y0)
    with pytest.raises(TypeError, match="y0"):
        solve_ivp_rk45(decay, 0.0, 1.0, [1.0])
    with pytest.raises(ValueError, match="rtol"):
        solve_ivp_rk45(decay, 0.0, 1.0, y0, rtol=0.0)
    with pytest.raises(ValueError, match="first_step"):
        solve_ivp_rk45(decay, 0.0, 1.0, y0, first_step=2.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_ivp_rk45(van_der_pol, 0.0, 10.0, np.array([2.0, 0.0]), max_steps=5)
    with pytest.raises(ValueError, match="f"):
        solve_ivp_rk45(lambda t, y: np.ones(3), 0.0, 1.0, y0)
    with pytest.raises(ValueError, match="n_steps"):
        rk45_fixed_steps(decay, 0.0, 1.0, y0, 0)


# --- E34: likelihoods -----------------------------------------------------------------------------------------

MU, S = np.array([0.7, -1.2, 0.0]), np.array([0.3, 1.0, 2.5])  # Gaussian data N(MU, S^2) per dimension


def gaussian_law(sde, t):
    """p_t of Gaussian data: N(s MU, s^2 S^2 + n^2) per dimension."""
    s, n = float(sde.marginal_mean_coef(t)), float(sde.marginal_std(t))
    return s * MU, s**2 * S**2 + n**2


def gaussian_log_prob(x, mean, variance):
    return np.sum(-0.5 * (x - mean) ** 2 / variance - 0.5 * np.log(2 * np.pi * variance), axis=1)


def gaussian_tensor_score(sde):
    """score_fn on autodiff Tensors: -(x - m_t) / V_t (its Jacobian is diagonal, -1 / V_t)."""

    def score(x, t):
        mean, variance = gaussian_law(sde, float(t[0]))
        return (x - mean) * (-1.0 / variance)

    return score


def gmm_at(sde, t: float) -> GaussianMixture:
    return GMM.noised(float(sde.marginal_mean_coef(t)), float(sde.marginal_std(t)))


def gmm_numpy_score_and_divergence(sde):
    """The mixture's exact score of p_t and its divergence, the trace of its closed-form Hessian."""
    return (lambda x, t: gmm_at(sde, float(t[0])).score(x),
            lambda x, t: np.trace(gmm_at(sde, float(t[0])).score_jacobian(x), axis1=1, axis2=2))


def gmm_tensor_score(sde):
    """The mixture's score of p_t written again on autodiff Tensors (inverse covariances by numpy.linalg.inv, not
    the oracle's Cholesky factors): sum_k softmax_k(log w_k + log N(x; m_k, C_k)) (-C_k^{-1} (x - m_k))."""

    def score(x, t):
        p = gmm_at(sde, float(t[0]))
        precisions = np.linalg.inv(p.covariances)  # (K, D, D)
        logits, grads = [], []
        for k in range(p.K):
            diff = x - p.means[k]  # (B, D)
            grad = diff @ -precisions[k]  # (B, D)
            quad = (diff * -grad).sum(axis=1)  # (B,)
            log_det = np.linalg.slogdet(2 * np.pi * p.covariances[k])[1]
            logits.append(quad * -0.5 + (math.log(p.weights[k]) - 0.5 * log_det))
            grads.append(grad)
        r = F.softmax(F.stack(logits, axis=1), axis=1)  # (B, K)
        return sum(r[:, k : k + 1] * grads[k] for k in range(p.K))  # (B, D)

    return score


@pytest.mark.parametrize("name", SDES)
def test_e34_gaussian_data_log_likelihood_equals_the_closed_form(name):
    """[E34] Gaussian data: the probability flow likelihood with the exact score (on Tensors, divergence from the
    autodiff), started from the exact p_1, equals log N(x; MU, S^2) within 1e-3 nats per dimension, at points
    in the bulk and in the tails."""
    sde = SDES[name]
    x = MU + S * np.random.default_rng(0).standard_normal((6, 3)) * np.array([[1.0], [1.0], [1.0], [2.0], [3.0], [0.1]])
    log_p1 = lambda x1: gaussian_log_prob(x1, *gaussian_law(sde, 1.0))  # noqa: E731
    ll = ode_log_likelihood(sde, gaussian_tensor_score(sde), x, rtol=1e-6, atol=1e-6, prior_log_prob=log_p1)
    assert_close(ll / 3, gaussian_log_prob(x, MU, S**2) / 3, tol=LOG_LIKELIHOOD_PER_DIM)


def test_e34_standard_normal_data_under_the_vp_prior():
    """[E34] For data N(0, I), the VP SDE keeps p_t = N(0, I) at every t (s^2 + n^2 = 1), so the default prior
    N(0, I) is exact, the score is -x, and the likelihood is log N(x; 0, I)."""
    x = np.random.default_rng(1).standard_normal((5, 4)) * 1.5
    ll = ode_log_likelihood(VPSDE(), lambda x, t: x * -1.0, x, rtol=1e-6, atol=1e-6)
    assert_close(ll / 4, gaussian_log_prob(x, 0.0, 1.0) / 4, tol=LOG_LIKELIHOOD_PER_DIM)


@pytest.mark.parametrize("name", SDES)
def test_e34_mixture_log_likelihood_equals_its_exact_log_density(name):
    """[E34] The Gaussian mixture: with its exact score and divergence (the trace of its Hessian) and the exact
    p_1, the probability flow likelihood equals its log density within 1e-3 nats per dimension."""
    sde = SDES[name]
    x = GMM.sample(np.random.default_rng(2), 12)
    score, divergence = gmm_numpy_score_and_divergence(sde)
    ll = ode_log_likelihood(sde, score, x, divergence_fn=divergence, rtol=1e-6, atol=1e-6,
                            prior_log_prob=gmm_at(sde, 1.0).log_prob)
    assert_close(ll / 2, GMM.log_prob(x) / 2, tol=LOG_LIKELIHOOD_PER_DIM)


def test_e34_mixture_log_likelihood_with_the_autodiff_divergence():
    """[E34] The same with the score on Tensors and the exact divergence from D vector-Jacobian products."""
    sde = VPSDE()
    x = GMM.sample(np.random.default_rng(3), 6)
    ll = ode_log_likelihood(sde, gmm_tensor_score(sde), x, rtol=1e-6, atol=1e-6,
                            prior_log_prob=gmm_at(sde, 1.0).log_prob)
    assert_close(ll / 2, GMM.log_prob(x) / 2, tol=LOG_LIKELIHOOD_PER_DIM)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.9])
def test_e34_autodiff_divergence_equals_the_trace_of_the_mixture_hessian(t):
    """[E34] score_divergence_exact (D reverse-mode products through the Tensor score) equals the trace of the
    oracle's closed-form Hessian, and its score equals the oracle's score, to float64 rounding."""
    sde = SubVPSDE()
    x = gmm_at(sde, t).sample(np.random.default_rng(4), 10)
    score, divergence = score_divergence_exact(gmm_tensor_score(sde), x, np.full(10, t))
    hessian = gmm_at(sde, t).score_jacobian(x)  # (10, 2, 2)
    assert_close(score, gmm_at(sde, t).score(x), scale=np.abs(score) + 1.0)
    assert_close(divergence, np.trace(hessian, axis1=1, axis2=2), scale=np.abs(hessian).sum(axis=(1, 2)))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_e34_hutchinson_estimate_is_unbiased(probe):
    """[E34] E_z[z^T J z] = tr J when E[z z^T] = I: at fixed points, the mean over 4000 probes is within 5
    standard errors (the probes' sample std / sqrt(4000)) of the exact trace of the Hessian."""
    sde, t, n = VPSDE(), 0.3, 4000
    points = gmm_at(sde, t).sample(np.random.default_rng(5), 3)  # (3, 2)
    x = np.repeat(points, n, axis=0)  # (3 n, 2): n copies of each point, one probe each
    z = probe_vectors(np.random.default_rng(6), x.shape, probe)
    _, estimates = score_divergence_hutchinson(gmm_tensor_score(sde), x, np.full(len(x), t), z)
    estimates = estimates.reshape(3, n)
    exact = np.trace(gmm_at(sde, t).score_jacobian(points), axis1=1, axis2=2)  # (3,)
    se = estimates.std(axis=1, ddof=1) / math.sqrt(n)
    assert np.all(se > 0) and np.all(np.abs(estimates.mean(axis=1) - exact) <= 5 * se), (estimates.mean(1), exact)


def test_e34_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    """[E34] With z_i = +-1, z^T J z = sum_i J_ii + sum_{i != j} J_ij z_i z_j = tr J when J is diagonal (the
    Gaussian score -(x - m) / V): every single probe gives the exact divergence -sum 1 / V."""
    sde = VESDE()
    x = np.random.default_rng(7).standard_normal((4, 3))
    z = probe_vectors(np.random.default_rng(8), x.shape, "rademacher")
    _, estimate = score_divergence_hutchinson(gaussian_tensor_score(sde), x, np.full(4, 0.4), z)
    expected = np.full(4, -np.sum(1.0 / gaussian_law(sde, 0.4)[1]))
    assert_close(estimate, expected)


def test_e34_hutchinson_likelihood_averages_to_the_exact_one():
    """[E34] With one probe per example, held along the whole solve, the integral of z^T J z along the (probe-
    independent) trajectory is an unbiased estimate of the exact integral: over 400 copies of each point, the
    mean Hutchinson likelihood is within 5 standard errors of the exact-divergence likelihood."""
    sde, n = VPSDE(), 400
    points = GMM.sample(np.random.default_rng(9), 2)
    x = np.repeat(points, n, axis=0)  # (2 n, 2)
    kwargs = {"rtol": 1e-5, "atol": 1e-5, "prior_log_prob": gmm_at(sde, 1.0).log_prob}
    estimates = ode_log_likelihood(sde, gmm_tensor_score(sde), x, np.random.default_rng(10), divergence="hutchinson",
                                   **kwargs).reshape(2, n)
    exact = ode_log_likelihood(sde, gmm_tensor_score(sde), points, **kwargs)
    se = estimates.std(axis=1, ddof=1) / math.sqrt(n)
    assert np.all(se > 0) and np.all(np.abs(estimates.mean(axis=1) - exact) <= 5 * se), (estimates.mean(1), exact)


def test_likelihood_bits_per_dim_with_the_dequantization_offset():
    """Uniform 8-bit data need 8 bits per dimension: dequantized onto [-1, 1], the density is 2^-D, so
    -log2 p / D = 1 and the offset log2(256 / 2) = 7 adds up to 8; onto [0, 1], 0 + 8. Without data_range
    (continuous data) bits = -log p / (D ln 2)."""
    D = 3072
    assert_close(likelihood_bits_per_dim(np.array([-D * math.log(2.0)]), D, data_range=2.0), np.array([8.0]))
    assert_close(likelihood_bits_per_dim(np.array([0.0]), D, data_range=1.0), np.array([8.0]))
    assert_close(likelihood_bits_per_dim(np.array([-3.0, 1.0]), 2), np.array([3.0, -1.0]) / (2 * math.log(2.0)))


def test_likelihood_arguments_are_checked():
    sde, x = VPSDE(), np.zeros((2, 3))
    tensor_score = gaussian_tensor_score(sde)
    with pytest.raises(ValueError, match="divergence"):
        ode_log_likelihood(sde, tensor_score, x, divergence="trace")
    with pytest.raises(ValueError, match="probe"):
        ode_log_likelihood(sde, tensor_score, x, np.random.default_rng(0), divergence="hutchinson", probe="sphere")
    with pytest.raises(TypeError, match="rng"):
        ode_log_likelihood(sde, tensor_score, x, divergence="hutchinson")
    with pytest.raises(ValueError, match="divergence_fn"):
        ode_log_likelihood(sde, lambda x, t: -x, x, divergence="hutchinson", divergence_fn=lambda x, t: np.zeros(2))
    with pytest.raises(TypeError, match="score_fn"):
        ode_log_likelihood(sde, lambda x, t: -x.data, x)
    with pytest.raises(ValueError, match="eps"):
        ode_log_likelihood(sde, tensor_score, x, eps=0.0)
    with pytest.raises(TypeError, match="sde"):
        ode_log_likelihood("vp", tensor_score, x)
    with pytest.raises(ValueError, match="x"):
        ode_log_likelihood(sde, tensor_score, np.zeros(2))
    with pytest.raises(ValueError, match="prior_log_prob"):
        ode_log_likelihood(sde, tensor_score, x, prior_log_prob=lambda x1: np.zeros(3))
    with pytest.raises(ValueError, match="divergence_fn"):
        ode_log_likelihood(sde, lambda x, t: -x, x, divergence_fn=lambda x, t: np.zeros(3))
    with pytest.raises(ValueError, match="data_range"):
        likelihood_bits_per_dim(np.zeros(2), 4, data_range=0.0)
    with pytest.raises(ValueError, match="num_dims"):
        likelihood_bits_per_dim(np.zeros(2), 0)
