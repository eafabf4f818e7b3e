"""The exact denoiser of Gaussian data, gaussian_posterior_mean (exercise 0.1): against the Gaussian-mixture
oracle with one diagonal component (computed another way: in the eigenbasis of the covariance, with
responsibilities), against Monte Carlo (the average of x0 among the draws whose x_t falls in a bin, and the
posterior variance), at its limits, and with one noise level per example on image-shaped arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import assert_close

from minidiff.diffusion import GaussianMixture, gaussian_posterior_mean


def one_component(mean: np.ndarray, var: np.ndarray) -> GaussianMixture:
    return GaussianMixture([1.0], mean[None], np.diag(var)[None])


@st.composite
def gaussian_problems(draw):
    """A diagonal Gaussian in R^D, n points x_t, and one (scale, std) per point."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    D, n = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    mean = rng.uniform(-2.0, 2.0, D)
    var = rng.uniform(0.01, 2.0, D)
    scale = rng.uniform(0.0, 1.2, n)
    std = rng.uniform(0.05, 1.5, n)
    xt = rng.normal(0.0, 2.0, (n, D))
    return xt, scale, std, mean, var


@pytest.mark.exercise("ex00.1")
@settings(max_examples=60, deadline=None)
@given(gaussian_problems())
def test_agrees_with_a_one_component_mixture(problem):
    xt, scale, std, mean, var = problem
    expected = one_component(mean, var).posterior_mean(xt, scale, std)  # (n, D)
    actual = gaussian_posterior_mean(xt, scale[:, None], std[:, None], mean, var)
    assert np.shape(actual) == xt.shape, f"expected the shape of xt, {xt.shape}, got {np.shape(actual)}"
    assert_close(actual, expected, scale=np.abs(expected) + np.abs(xt) + np.abs(mean),
                 what="E[x0 | xt] against GaussianMixture.posterior_mean with one component")


@pytest.mark.exercise("ex00.1")
@pytest.mark.parametrize(("scale", "std"), [(0.98, 0.2), (0.6, 0.8), (0.1, 0.995)])
def test_is_the_average_of_x0_given_xt_by_monte_carlo(scale, std):
    """Draw (x0, x_t) pairs; among the pairs whose x_t falls in one bin, x0 averages to the denoiser's average
    there (within 5 standard errors, in each of 20 bins per coordinate), and x0 - E[x0 | x_t] has the posterior
    variance var std^2 / (scale^2 var + std^2) (Bayes for two Gaussians: the precisions add up)."""
    rng = np.random.default_rng(11)
    n, mean, var = 200_000, np.array([-0.5, 0.0, 1.5]), np.array([0.3, 1.0, 2.0])
    x0 = mean + np.sqrt(var) * rng.standard_normal((n, 3))
    xt = scale * x0 + std * rng.standard_normal((n, 3))
    residual = x0 - gaussian_posterior_mean(xt, scale, std, mean, var)  # (n, 3)
    for d in range(3):
        bins = np.digitize(xt[:, d], np.quantile(xt[:, d], np.linspace(0, 1, 21)[1:-1]))  # 20 bins of n / 20
        for b in range(20):
            r = residual[bins == b, d]
            se = r.std() / np.sqrt(r.size)
            assert abs(r.mean()) < 5 * se, (f"coordinate {d}, bin {b} of x_t: x0 averages {r.mean():+.4f} away from "
                                            f"your E[x0 | xt] (standard error {se:.4f})")
    posterior_var = var * std**2 / (scale**2 * var + std**2)
    se_var = posterior_var * np.sqrt(2.0 / n)  # a Gaussian's sample variance
    assert np.all(np.abs(residual.var(axis=0) - posterior_var) < 5 * se_var), \
        f"Var[x0 - E[x0 | xt]] = {residual.var(axis=0)}, expected the posterior variance {posterior_var}"


@pytest.mark.exercise("ex00.1")
def test_limits_no_noise_no_signal_no_spread():
    """std = 0: x_t = scale x0 gives x0 back exactly; scale = 0 (x_t is pure noise) or var = 0 (x0 is known):
    the guess is the mean; std much larger than scale sqrt(var): the guess moves little from the mean."""
    rng = np.random.default_rng(3)
    xt, mean, var = rng.normal(size=(5, 4)), rng.normal(size=4), rng.uniform(0.1, 2.0, 4)
    assert_close(gaussian_posterior_mean(xt, 0.7, 0.0, mean, var), xt / 0.7, scale=np.abs(xt / 0.7) + np.abs(mean),
                 what="without noise (std = 0), x0 = xt / scale:")
    assert_close(gaussian_posterior_mean(xt, 0.0, 0.8, mean, var), np.broadcast_to(mean, xt.shape),
                 what="with no signal (scale = 0), E[x0 | xt] = mean:")
    assert_close(gaussian_posterior_mean(xt, 0.7, 0.8, mean, np.zeros(4)), np.broadcast_to(mean, xt.shape),
                 what="with var = 0 (x0 is the mean), E[x0 | xt] = mean:")
    far = gaussian_posterior_mean(xt, 1e-3, 1.0, mean, var)
    assert np.all(np.abs(far - mean) < 1e-2 * (np.abs(xt) + 1)), "with std >> scale, E[x0 | xt] should be near mean"


@pytest.mark.exercise("ex00.1")
def test_one_noise_level_per_image_keeps_the_dtype():
    """Images (B, 1, 8, 8) in float32, scale and std of shape (B, 1, 1, 1) (one timestep per image), mean and var
    per pixel (1, 8, 8): the result is float32 of the images' shape and agrees with the float64 oracle."""
    rng = np.random.default_rng(5)
    B, D = 6, 64
    mean, var = rng.uniform(-1, 1, D), rng.uniform(0.01, 0.6, D)
    alpha_bar = rng.uniform(0.0, 1.0, B)
    scale, std = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    xt = rng.normal(size=(B, 1, 8, 8)).astype(np.float32)
    actual = gaussian_posterior_mean(xt, scale.reshape(B, 1, 1, 1), std.reshape(B, 1, 1, 1), mean.reshape(1, 8, 8),
                                     var.reshape(1, 8, 8))
    assert actual.dtype == np.float32, f"keep xt's dtype: expected float32, got {actual.dtype}"
    assert actual.shape == xt.shape, f"expected the shape of xt, {xt.shape}, got {actual.shape}"
    expected = one_component(mean, var).posterior_mean(xt.reshape(B, D).astype(np.float64), scale, std)
    assert_close(actual.reshape(B, D), expected, dtype=np.float32, scale=np.abs(expected) + np.abs(xt.reshape(B, D)),
                 what="E[x0 | xt] per image against the oracle:")


def test_bad_input_is_refused_by_name():
    xt = np.zeros((2, 4))
    with pytest.raises(TypeError, match="xt: expected dtype float32 or float64"):
        gaussian_posterior_mean(np.zeros((2, 4), dtype=np.int64), 1.0, 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="var: expected values >= 0"):
        gaussian_posterior_mean(xt, 1.0, 0.5, 0.0, -1.0)
    with pytest.raises(ValueError, match="std: expected values >= 0"):
        gaussian_posterior_mean(xt, 1.0, -0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"mean: expected a shape that broadcasts to the shape of xt \(2, 4\)"):
        gaussian_posterior_mean(xt, 1.0, 0.5, np.zeros(3), 1.0)
    with pytest.raises(TypeError, match="scale: expected a number or an array"):
        gaussian_posterior_mean(xt, "1", 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="mean: expected finite values"):
        gaussian_posterior_mean(xt, 1.0, 0.5, np.nan, 1.0)
    with pytest.raises(ValueError, match=r"scale\^2 var \+ std\^2 is 0"):
        gaussian_posterior_mean(xt, 1.0, 0.0, 0.0, np.array([1.0, 0.0, 1.0, 1.0]))
