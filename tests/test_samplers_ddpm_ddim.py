"""DDPM (E16 on strided sub-sequences) and DDIM (E32), DDIM inversion and slerp (E33), from exact answers:
Bayes' rule for the strided posterior, DDIM at eta = 1 against DDPM, the probability flow map of Gaussian
data in closed form, the exact inverse for a model that ignores x, angles and norms of slerp, Monte Carlo
moments of ancestral sampling against the variance propagated through the linear chain; bad input; and
configurations written by diffusers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from diffusion_oracle import GaussianData
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import float_arrays, noise_schedule, schedule_and_t
from tolerances import assert_close

from minidiff.diffusion import NoiseSchedule, p_sample_loop
from minidiff.samplers.ddim import DDIMSampler, ddim_step_coefficients, slerp
from minidiff.samplers.ddpm import DDPMSampler, read_model_output, strided_posterior

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def run_steps(sampler, model, x_T, noises, learned_range=False):
    """The samples after every step of a sampler whose timesteps are set, with noises[i] at step i."""
    x, samples = x_T, [x_T]
    for i, t in enumerate(sampler.timesteps):
        out = model(x, np.full(x.shape[0], t))
        if learned_range is not False:
            out = np.concatenate([out, np.full_like(x, learned_range)], axis=1)
        x = sampler.step(out, t, x, noise=noises[i]).prev_sample
        samples.append(x)
    return np.stack(samples)


def gaussian_data(schedule, mu=(0.5, -1.0, 0.0), s=(0.3, 1.2, 1.0)):
    return GaussianData(schedule.betas[1:], np.array(mu), np.array(s))


def probability_flow_map(data, x, t_from, t_to=0):
    """[E31] The probability flow ODE of Gaussian data moves each dimension by the affine map that sends
    N(m_{t_from}, V_{t_from}) to N(m_{t_to}, V_{t_to}) (the flow is linear and transports quantiles)."""
    return data.m(t_to) + np.sqrt(data.V(t_to) / data.V(t_from)) * (x - data.m(t_from))


def strided(T, n):
    """n strictly decreasing timesteps from T down to 1 (a custom, unevenly strided sub-sequence)."""
    return np.unique(np.round(np.geomspace(1, T, n)).astype(np.int64))[::-1]


# --- E11 on a strided step, and reading a model output (E13, E14) ------------------------------------


@given(schedule_and_t(min_t=2), st.data())
def test_e11_strided_posterior_is_bayes_rule_over_the_skipped_steps(schedule_t, data):
    """[E11] For t' < t, with r = alpha_bar_t / alpha_bar_{t'} and beta_{t|t'} = 1 - r: q(x_t | x_{t'}) =
    N(sqrt(r) x_{t'}, beta_{t|t'}) (E3 between the two) and q(x_{t'} | x_0) = N(sqrt(alpha_bar_{t'}) x_0,
    1 - alpha_bar_{t'}). Their normalized product in x_{t'} has precision P = 1 / (1 - alpha_bar_{t'}) + r / beta_{t|t'}
    and mean (sqrt(alpha_bar_{t'}) x_0 / (1 - alpha_bar_{t'}) + sqrt(r) x_t / beta_{t|t'}) / P."""
    schedule, t = schedule_t
    t_prev = data.draw(st.integers(1, t - 1))
    ab, ab_prev = schedule.alpha_bars[t], schedule.alpha_bars[t_prev]
    # E11's function takes beta and forms alpha = 1 - beta (as diffusers does): when r = alpha_bar_t / alpha_bar_{t'}
    # is below ~1e-8 that difference has lost half its digits to rounding, whatever the code.
    assume(ab / ab_prev > 1e-8)
    beta = 1.0 - ab / ab_prev
    precision = 1.0 / (1.0 - ab_prev) + (ab / ab_prev) / beta
    post = strided_posterior(schedule, t, t_prev)
    assert_close(post.coef_x0, math.sqrt(ab_prev) / (1.0 - ab_prev) / precision)
    assert_close(post.coef_xt, math.sqrt(ab / ab_prev) / beta / precision)
    assert_close(post.beta_tilde, 1.0 / precision)
    assert_close(post.beta, beta)
    if t_prev == t - 1:  # one step of the chain: E11 as the schedule stores it
        assert_close(post.coef_x0, schedule.posterior_mean_coef_x0[t])
        assert_close(post.beta_tilde, schedule.posterior_variance[t])


@given(schedule_and_t(informative_eps=True), st.sampled_from(PREDICTION_TYPES), st.data())
def test_e13_e14_a_model_output_is_read_back_as_the_x0_and_eps_it_came_from(schedule_t, prediction_type, data):
    """[E13][E14] Build x_t = a x0 + b eps here; the output an exact model of each kind would give (eps, x0, or
    v = a eps - b x0) must be read back as (x0, eps)."""
    schedule, t = schedule_t
    x0 = data.draw(float_arrays(np.float64, (2, 3), bound=3.0))
    eps = data.draw(float_arrays(np.float64, (2, 3), bound=3.0))
    a, b = math.sqrt(schedule.alpha_bars[t]), math.sqrt(schedule.one_minus_alpha_bars[t])
    xt = a * x0 + b * eps
    out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[prediction_type]
    reading = read_model_output(schedule, t, prediction_type)
    # Rounding: each term is a few ulp of its size, and the reading divides by a or b.
    scale = (np.abs(x0) + np.abs(eps)) / min(a, b) if min(a, b) > 0 else 1.0
    assert_close(reading.r_x * xt + reading.r_out * out, x0, scale=scale)
    assert_close(reading.e_x * xt + reading.e_out * out, eps, scale=scale)


# --- E32: DDIM -------------------------------------------------------------------------------------


@pytest.mark.exercise("ex06.1")
@given(schedule_and_t(min_t=2), st.floats(0.0, 1.0), st.data())
def test_e32_ddim_weights_keep_the_marginal_and_are_bayes_rule_at_eta_1(schedule_t, eta, data):
    """[E32] x_{t'} = c_x0 x0 + c_eps eps_t + sigma z with x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps_t
    (the non-Markovian forward process of Song, Meng & Ermon 2021): q(x_{t'} | x0) must be E3's
    N(sqrt(alpha_bar_{t'}) x0, 1 - alpha_bar_{t'}), so c_x0^2 = alpha_bar_{t'} and c_eps^2 + sigma^2 =
    1 - alpha_bar_{t'}, for every eta. sigma grows linearly in eta from 0. At eta = 1 the step is the Bayes
    posterior q(x_{t'} | x_t, x0) (precision P = 1 / (1 - alpha_bar_{t'}) + r / beta_{t|t'}, r = alpha_bar_t /
    alpha_bar_{t'}): variance 1 / P, weight of x_t sqrt(r) / (beta_{t|t'} P). A step to t' = 0 lands on x0."""
    schedule, t = schedule_t
    t_prev = data.draw(st.integers(1, t - 1))
    ab, ab_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t_prev])
    c_x0, c_eps, sigma = ddim_step_coefficients(schedule, t, t_prev, eta)
    assert_close(c_x0**2, ab_prev, what="c_x0^2 (the mean of q(x_t' | x0) is sqrt(alpha_bar_t') x0)")
    assert_close(c_eps**2 + sigma**2, 1.0 - ab_prev, scale=1.0,
                 what="c_eps^2 + sigma^2 (the variance of q(x_t' | x0) is 1 - alpha_bar_t')")
    _, c_eps_1, sigma_1 = ddim_step_coefficients(schedule, t, t_prev, 1.0)
    assert_close(sigma, eta * sigma_1, what="sigma(eta) (should be eta sigma(1))")
    assert ddim_step_coefficients(schedule, t, t_prev, 0.0)[2] == 0.0, "sigma at eta = 0 (should be 0: deterministic)"
    beta = 1.0 - ab / ab_prev
    precision = 1.0 / (1.0 - ab_prev) + (ab / ab_prev) / beta
    assert_close(sigma_1**2, 1.0 / precision, what="sigma(1)^2 (should be the posterior variance beta_tilde)")
    # compared squared: c_eps^2 = (1 - alpha_bar_t') - sigma^2 cancels when alpha_bar_t is near 0, to a few ulp of
    # 1 - alpha_bar_t'
    assert_close(c_eps_1**2 / (1.0 - ab), (ab / ab_prev) / (beta * precision) ** 2, scale=(1.0 - ab_prev) / (1.0 - ab),
                 what="squared weight of x_t at eta = 1 (should be the posterior mean's)")
    assert_close(np.array(ddim_step_coefficients(schedule, t, 0, eta)), np.array([1.0, 0.0, 0.0]), scale=1.0,
                 what="(c_x0, c_eps, sigma) of a step to t' = 0 (should land on x0_hat)")


@pytest.mark.exercise("ex06.1")
@pytest.mark.parametrize(("spacing", "custom"), [("leading", False), ("linspace", False), ("trailing", False),
                                                 ("leading", True)])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_e32_one_step_is_the_ddim_formula_with_diffusers_previous_timestep(spacing, custom, set_alpha_to_one):
    """[E32] Every step of a run against the formula written out: x_{t'} = sqrt(alpha_bar_{t'}) x0_hat +
    sqrt(1 - alpha_bar_{t'} - sigma^2) eps + sigma z, sigma = eta sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t))
    sqrt(1 - alpha_bar_t / alpha_bar_{t'}), where t' = t - T // N for spaced runs (not the next timestep for
    linspace: 1000 -> 900, then 889), the next listed timestep for custom ones, and after the last step
    alpha_bar = 1 or alpha_bar_1 (set_alpha_to_one)."""
    schedule = noise_schedule("linear", 1000)
    sampler = DDIMSampler(schedule, timestep_spacing=spacing, clip_sample=False, set_alpha_to_one=set_alpha_to_one,
                          eta=0.6)
    if custom:
        sampler.set_timesteps(timesteps=strided(1000, 12))
    else:
        sampler.set_timesteps(10)
    rng = np.random.default_rng(0)
    timesteps = sampler.timesteps
    for i, t in enumerate(timesteps):
        t_prev = (timesteps[i + 1] if i + 1 < len(timesteps) else 0) if custom else t - 1000 // 10
        ab = schedule.alpha_bars[t]
        ab_prev = schedule.alpha_bars[t_prev] if t_prev >= 1 else (1.0 if set_alpha_to_one else schedule.alpha_bars[1])
        x, eps, z = rng.standard_normal((3, 2, 5))
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        sigma = 0.6 * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        terms = (math.sqrt(ab_prev) * x0, math.sqrt(1 - ab_prev - sigma**2) * eps, sigma * z)
        out = sampler.step(eps, t, x, noise=z)
        assert_close(out.prev_sample, sum(terms), scale=sum(np.abs(term) for term in terms) + np.abs(x0),
                     what=f"x_t' = sqrt(ab_t') x0_hat + sqrt(1 - ab_t' - sigma^2) eps + sigma z, t={t}, t'={t_prev}")
        assert_close(out.pred_original_sample, x0, scale=np.abs(x) / math.sqrt(ab) + np.abs(x0),
                     what=f"x0_hat at t = {t}")
    if spacing == "linspace" and not custom:
        assert list(timesteps[:2]) == [1000, 889]  # and the step from 1000 lands on 900 (checked above)


@pytest.mark.exercise("ex06.1")
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("timesteps", "clip"), [(None, False), ("strided", False), ("strided", True)])
def test_e32_ddim_with_eta_1_is_ddpm_with_the_posterior_variance(prediction_type, timesteps, clip):
    """[E32] sigma_t(1)^2 is beta_tilde, and sqrt(alpha_bar_{t'}) x0 + sqrt(1 - alpha_bar_{t'} - beta_tilde) eps
    is then E11's posterior mean: DDIM at eta = 1 and DDPM "fixed_small" from the same noise are one trajectory,
    over all T steps or a strided sub-sequence; with clip_sample too, when DDIM re-derives eps from the clipped
    x0 (use_clipped_model_output), as the posterior mean of the clipped x0 does."""
    schedule = noise_schedule("linear", 1000)
    data = gaussian_data(schedule, mu=(0.5, -0.2, 0.0), s=(0.9, 0.6, 1.0))
    config = dict(prediction_type=prediction_type, clip_sample=clip)
    ddim = DDIMSampler(schedule, eta=1.0, use_clipped_model_output=clip, **config)
    ddpm = DDPMSampler(schedule, variance_type="fixed_small", **config)
    for sampler in (ddim, ddpm):
        if timesteps is None:
            sampler.set_timesteps(1000)
        else:
            sampler.set_timesteps(timesteps=strided(1000, 40))
    rng = np.random.default_rng(1)
    x_T = rng.standard_normal((4, 3))
    noises = rng.standard_normal((len(ddim.timesteps), 4, 3))
    model = data.model(prediction_type)
    expected = run_steps(ddpm, model, x_T, noises)
    # Rounding differs by a few ulp per step between the two forms, carried along the run: O(1) samples.
    assert_close(run_steps(ddim, model, x_T, noises), expected, scale=1.0 + np.abs(expected))


@pytest.mark.exercise("ex06.1")
def test_e32_eta_0_is_deterministic():
    """[E32] eta = 0 draws nothing: two generators give the same samples, and a step needs no noise."""
    sampler = DDIMSampler(num_train_timesteps=100, beta_end=0.2, clip_sample=False)
    data = gaussian_data(sampler.schedule)
    x_T = np.random.default_rng(0).standard_normal((5, 3))
    a = sampler.sample(data.eps_model, x_T.shape, np.random.default_rng(1), num_inference_steps=10, x_T=x_T,
                       progress=False)
    b = sampler.sample(data.eps_model, x_T.shape, np.random.default_rng(2), x_T=x_T, progress=False)
    np.testing.assert_array_equal(a, b)
    t = sampler.timesteps[0]
    sampler.step(data.eps_model(x_T, np.full(5, t)), t, x_T)  # neither noise nor rng


@pytest.mark.exercise("ex06.1")
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_e32_eta_0_converges_to_the_probability_flow_map_of_gaussian_data(prediction_type):
    """[E32][E31] With the exact model of Gaussian data, DDIM at eta = 0 from x_T must approach the closed-form
    probability flow map x_0 = mu + s (x_T - m_T) / sqrt(V_T) at first order: the error halves when the
    number of steps doubles (observed ratios 1.98-2.03 for 10..160 steps), and is small at 160 steps."""
    schedule = noise_schedule("linear", 1000)
    data = gaussian_data(schedule)
    x_T = np.random.default_rng(3).standard_normal((6, 3))
    exact = probability_flow_map(data, x_T, 1000)
    errors = []
    for n in (10, 20, 40, 80, 160):
        sampler = DDIMSampler(schedule, clip_sample=False, prediction_type=prediction_type)
        sampler.set_timesteps(timesteps=np.linspace(1000, 1, n).round().astype(np.int64))
        x0 = sampler.sample(data.model(prediction_type), x_T.shape, np.random.default_rng(0), x_T=x_T, progress=False)
        errors.append(np.abs(x0 - exact).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.8) & (ratios < 2.2)), ratios
    assert errors[-1] < 0.05  # observed 0.033


# --- E33: inversion and slerp ---------------------------------------------------------------------


def x_independent_eps(x, t):
    """An eps model that ignores x: then eps_hat(x_{t'}, t) = eps_hat(x_t, t) and inversion is exact."""
    pattern = np.sin(np.arange(x[0].size) + 1.0).reshape(x.shape[1:])
    return np.cos(0.01 * t).reshape((-1,) + (1,) * (x.ndim - 1)) * pattern * np.ones_like(x)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("steps", [("spaced", 10), ("custom", 17)])
def test_e33_inversion_is_the_exact_inverse_of_decoding_for_a_model_that_ignores_x(set_alpha_to_one, steps):
    """[E33] In x / sqrt(alpha_bar) an eta = 0 step is a translation by (sqrt(1/alpha_bar_t - 1) -
    sqrt(1/alpha_bar_{t'} - 1)) eps: given the same eps it is undone exactly. encode then decode, and decode
    then encode, return the start to rounding."""
    sampler = DDIMSampler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=set_alpha_to_one)
    kind, n = steps
    if kind == "spaced":
        sampler.set_timesteps(n)
    else:
        sampler.set_timesteps(timesteps=strided(1000, n))
    x0 = np.random.default_rng(4).standard_normal((3, 2, 4))
    latent = sampler.invert(x_independent_eps, x0, progress=False)
    decoded = sampler.sample(x_independent_eps, x0.shape, np.random.default_rng(0), x_T=latent, dtype=np.float64,
                             progress=False)
    # Each step divides by sqrt(alpha_bar) >= 0.006 and multiplies back: rounding ~ 1e-16 / 0.006 per step.
    assert_close(decoded, x0, scale=1.0 + np.abs(x0))
    again = sampler.invert(x_independent_eps, decoded, progress=False)
    assert_close(again, latent, scale=1.0 + np.abs(latent))
    assert np.abs(latent - x0).max() > 0.5  # the latent is not the data


@settings(max_examples=30)
@given(schedule_and_t(informative_eps=True, min_t=2), st.data())
def test_e33_inverse_step_undoes_a_step_given_the_same_eps(schedule_t, data):
    """[E33] One step from t to t' < t, then inverse_step with the same eps output, gives x_t back."""
    schedule, t = schedule_t
    t_prev = data.draw(st.integers(1, t - 1))
    sampler = DDIMSampler(schedule, clip_sample=False)
    sampler.set_timesteps(timesteps=[t, t_prev])
    xt = data.draw(float_arrays(np.float64, (2, 3), bound=3.0))
    eps = data.draw(float_arrays(np.float64, (2, 3), bound=3.0))
    x_prev = sampler.step(eps, t, xt).prev_sample
    back = sampler.inverse_step(eps, t, x_prev)
    # x_t = (a_t / a_t') x_t' + ...: the rounding of x_t' is scaled up by a_t' / a_t... at most 1 / a_t.
    assert_close(back, xt, scale=(np.abs(xt) + np.abs(eps)) / math.sqrt(schedule.alpha_bars[t]))


def test_e33_inversion_of_gaussian_data_approaches_the_probability_flow_map_and_decodes_back():
    """[E33][E31] With the exact model of Gaussian data, inversion must approach the closed-form encoder
    x_T = m_T + sqrt(V_T) (x_0 - mu) / s and decoding its latent must give x_0 back, both at first order
    (errors halve as the steps double; observed ratios 1.9-2.0)."""
    schedule = noise_schedule("linear", 1000)
    data = gaussian_data(schedule)
    x0 = data.sample(np.random.default_rng(5), 6)
    exact = probability_flow_map(data, x0, 0, 1000)
    latent_errors, reconstruction_errors = [], []
    for n in (20, 40, 80, 160):
        sampler = DDIMSampler(schedule, clip_sample=False)
        sampler.set_timesteps(timesteps=np.linspace(1000, 1, n).round().astype(np.int64))
        latent = sampler.invert(data.eps_model, x0, progress=False)
        decoded = sampler.sample(data.eps_model, x0.shape, np.random.default_rng(0), x_T=latent, progress=False)
        latent_errors.append(np.abs(latent - exact).max())
        reconstruction_errors.append(np.abs(decoded - x0).max())
    for errors in (latent_errors, reconstruction_errors):
        ratios = np.array(errors[:-1]) / np.array(errors[1:])
        assert np.all((ratios > 1.7) & (ratios < 2.3)), ratios
    assert reconstruction_errors[-1] < 0.05


def test_e33_inversion_trajectory_runs_from_x0_through_every_timestep():
    """[E33] return_trajectory: x_0 first, then one sample per timestep (the last is the latent)."""
    sampler = DDIMSampler(num_train_timesteps=50, beta_end=0.3, clip_sample=False)
    x0 = np.random.default_rng(6).standard_normal((2, 3))
    path = sampler.invert(x_independent_eps, x0, 7, return_trajectory=True, progress=False)
    assert path.shape == (8, 2, 3)
    np.testing.assert_array_equal(path[0], x0)
    np.testing.assert_array_equal(path[-1], sampler.invert(x_independent_eps, x0, progress=False))


def cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.sampled_from([np.float32, np.float64]))
def test_e33_slerp_moves_along_the_great_circle(seed, alpha, dtype):
    """[E33] With theta the angle between z0 and z1, slerp(z0, z1, alpha) is at angle alpha theta from z0 and
    (1 - alpha) theta from z1 (so in their plane, on the arc between them), per example; its endpoints are
    z0 and z1 exactly; for equal norms it keeps the norm."""
    rng = np.random.default_rng(seed)
    z0 = rng.standard_normal((3, 2, 8)).astype(dtype)
    z1 = rng.standard_normal((3, 2, 8)).astype(dtype)
    z1 = (z1 * (np.linalg.norm(z0.reshape(3, -1), axis=1) / np.linalg.norm(z1.reshape(3, -1), axis=1))[:, None, None]
          ).astype(dtype)
    out = slerp(z0, z1, alpha)
    assert out.dtype == dtype and out.shape == z0.shape
    theta = np.arccos(cosine(z0.astype(np.float64), z1.astype(np.float64)))
    tol = 1e-5 if dtype == np.float32 else 1e-12  # the result is rounded to dtype once
    np.testing.assert_allclose(cosine(out.astype(np.float64), z0), np.cos(alpha * theta), atol=tol)
    np.testing.assert_allclose(cosine(out.astype(np.float64), z1), np.cos((1 - alpha) * theta), atol=tol)
    np.testing.assert_allclose(np.linalg.norm(out.reshape(3, -1), axis=1),
                               np.linalg.norm(z0.reshape(3, -1), axis=1), rtol=tol)
    np.testing.assert_array_equal(slerp(z0, z1, 0.0), z0)
    np.testing.assert_array_equal(slerp(z0, z1, 1.0), z1)


def test_e33_slerp_takes_one_alpha_per_example_and_falls_back_to_lerp_for_parallel_vectors():
    """[E33] Nearly parallel (or opposite) vectors have sin theta ~ 0: the interpolation is then the straight
    line (1 - alpha) z0 + alpha z1; a per-example alpha interpolates each example by its own amount."""
    rng = np.random.default_rng(7)
    z0 = rng.standard_normal((3, 5))
    z1 = np.stack([2.0 * z0[0], -z0[1], rng.standard_normal(5)])
    alpha = np.array([0.25, 0.5, 0.75])
    out = slerp(z0, z1, alpha)
    assert_close(out[:2], (1 - alpha[:2, None]) * z0[:2] + alpha[:2, None] * z1[:2])
    assert_close(out[2], slerp(z0[2:], z1[2:], 0.75)[0])


# --- E16: DDPM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("variance_type", "clip"), [("fixed_small", False), ("fixed_large", True)])
def test_e16_ddpm_over_every_step_is_ancestral_sampling(prediction_type, variance_type, clip):
    """[E16] With all T steps each strided step is a step of the chain: DDPMSampler must reproduce
    minidiff.diffusion.p_sample_loop (E12 / E11 means, sigma^2 = beta_tilde or beta, no noise at t = 1) from one
    seed, which draws x_T and then the noise of t = T..2 in the same order."""
    schedule = noise_schedule("cosine", 200)
    data = gaussian_data(schedule, mu=(0.5, -0.2, 0.0), s=(0.9, 0.6, 1.0))
    model = data.model(prediction_type)
    sampler = DDPMSampler(schedule, variance_type=variance_type, clip_sample=clip, prediction_type=prediction_type)
    got = sampler.sample(model, (4, 3), np.random.default_rng(8), num_inference_steps=200, dtype=np.float64,
                         progress=False)
    expected = p_sample_loop(schedule, model, (4, 3), np.random.default_rng(8), prediction_type=prediction_type,
                             variance_type=variance_type, clip_denoised=clip)
    assert_close(got, expected, scale=1.0 + np.abs(expected))


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_e16_ddpm_with_the_exact_model_gives_the_data_moments_the_linear_chain_predicts(variance_type):
    """[E16] Gaussian data, exact eps model, x_T ~ q(x_T), all T steps. The chain is linear: x_{t-1} = K_t x_t + c
    + sigma_t z with the gain K_t = sqrt(alpha_t) V_{t-1} / V_t of the true reverse mean (Gaussian conditioning,
    from the oracle), so E x_0 = mu and Var x_0 = the propagation Var_{t-1} = K_t^2 Var_t + sigma_t^2 from V_T,
    sigma_t^2 = beta_tilde_t or beta_t (0 at t = 1). N = 20000 per dimension: the sample mean within 5 standard
    errors (sd / sqrt(N)) and the sample variance within 5 (var sqrt(2 / N)) of those."""
    schedule = noise_schedule("linear", 200)
    data = gaussian_data(schedule)
    n = 20000
    rng = np.random.default_rng(9)
    x_T = data.m(200) + np.sqrt(data.V(200)) * rng.standard_normal((n, 3))
    sampler = DDPMSampler(schedule, variance_type=variance_type, clip_sample=False)
    x0 = sampler.sample(data.eps_model, x_T.shape, rng, num_inference_steps=200, x_T=x_T, progress=False)
    ab, beta = data.alpha_bars, data.betas
    variance = data.V(200)
    for t in range(200, 0, -1):
        beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * beta[t]
        sigma2 = 0.0 if t == 1 else (beta_tilde if variance_type == "fixed_small" else beta[t])
        variance = data.gain(t) ** 2 * variance + sigma2
    assert np.all(np.abs(x0.mean(axis=0) - data.mu) < 5 * np.sqrt(variance / n))
    assert np.all(np.abs(x0.var(axis=0) - variance) < 5 * variance * math.sqrt(2 / n))


@pytest.mark.parametrize(("spacing", "offset"), [("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_e16_learned_range_at_its_ends_is_the_two_fixed_variances(spacing, offset):
    """[E16] log sigma^2 = f log beta + (1 - f) log beta_tilde with f = (v + 1) / 2: a model whose variance
    channels are all -1 samples as "fixed_small", all +1 as "fixed_large", from the same noise (on runs whose
    last step is above t = 1 too, where diffusers' beta_tilde is the clamp 1e-20)."""
    schedule = noise_schedule("linear", 1000)
    data = gaussian_data(schedule)
    rng = np.random.default_rng(10)
    x_T = rng.standard_normal((4, 3))
    noises = rng.standard_normal((12, 4, 3))
    for v, fixed in ((-1.0, "fixed_small"), (1.0, "fixed_large")):
        runs = {}
        for variance_type, channel in ((fixed, False), ("learned_range", v)):
            sampler = DDPMSampler(schedule, variance_type=variance_type, timestep_spacing=spacing, steps_offset=offset,
                                  clip_sample=False)
            sampler.set_timesteps(12)
            runs[variance_type] = run_steps(sampler, data.eps_model, x_T, noises, learned_range=channel)
        assert_close(runs["learned_range"], runs[fixed], scale=1.0 + np.abs(runs[fixed]))


def test_e16_a_run_ending_above_t_1_adds_noise_at_its_last_step_as_diffusers_does():
    """[E16] diffusers adds noise at every k > 0: a "trailing" run ends at t = 100, whose step to the data has
    sigma^2 = beta_{100|0} = 1 - alpha_bar_100 with "fixed_large": the last step's noise shows in x_0 with that
    weight, and with "fixed_small" (beta_tilde = 0, clamped to 1e-20) with weight 1e-10."""
    schedule = noise_schedule("linear", 1000)
    for variance_type, sigma in (("fixed_large", math.sqrt(schedule.one_minus_alpha_bars[100])),
                                 ("fixed_small", 1e-10)):
        sampler = DDPMSampler(schedule, variance_type=variance_type, timestep_spacing="trailing", clip_sample=False)
        sampler.set_timesteps(10)
        assert sampler.timesteps[-1] == 100
        x, eps, z = np.random.default_rng(11).standard_normal((3, 2, 4))
        with_noise = sampler.step(eps, 100, x, noise=z).prev_sample
        without = sampler.step(eps, 100, x, noise=np.zeros_like(z)).prev_sample
        assert_close(with_noise - without, sigma * z, scale=1.0)


# --- the loop, repr, zero terminal SNR ------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: DDPMSampler(variance_type="learned_range"), lambda: DDIMSampler(eta=0.5)],
                         ids=["ddpm-learned-range", "ddim-eta-0.5"])
def test_sample_end_to_end_shapes_dtype_and_replay(make):
    """sample() gives a batch of the requested shape in float32, the same one for the same seed, and with
    return_trajectory every step from x_T, ending at that batch."""
    sampler = make()
    learned = sampler.config.get("variance_type") == "learned_range"

    def model(x, t):
        out = 0.5 * x + 0.001 * t.reshape(-1, 1, 1)
        return np.concatenate([out, np.tanh(x)], axis=1) if learned else out

    first = sampler.sample(model, (3, 2, 4), np.random.default_rng(12), num_inference_steps=15, progress=False)
    again = sampler.sample(model, (3, 2, 4), np.random.default_rng(12), progress=False)
    path = sampler.sample(model, (3, 2, 4), np.random.default_rng(12), return_trajectory=True, progress=False)
    assert first.shape == (3, 2, 4) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert path.shape == (16, 3, 2, 4)
    np.testing.assert_array_equal(path[-1], first)
    other = sampler.sample(model, (3, 2, 4), np.random.default_rng(13), progress=False)
    assert not np.array_equal(first, other)


def test_repr_names_the_sampler_its_schedule_and_what_differs_from_the_defaults():
    text = repr(DDIMSampler(clip_sample=False, eta=0.5, timestep_spacing="trailing"))
    assert text.startswith("DDIMSampler(NoiseSchedule(T=1000")
    assert "clip_sample=False" in text and "timestep_spacing='trailing'" in text and "eta=0.5" in text
    assert "prediction_type" not in text
    assert repr(DDPMSampler()).startswith("DDPMSampler(NoiseSchedule(T=1000")


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler])
def test_e13_zero_terminal_snr_refuses_eps_at_t_T_and_steps_with_v(cls):
    """[E13] alpha_bar_T = 0 after zero-terminal-SNR rescaling: eps says nothing about x0 at t = T (diffusers
    divides by zero there), so an eps step at T is refused naming t; a v-prediction step is finite."""
    x = np.random.default_rng(14).standard_normal((2, 3))
    eps_sampler = cls(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    eps_sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="t: x0 from eps is undefined where alpha_bar_t = 0"):
        eps_sampler.step(x, 1000, x, noise=x)
    v_sampler = cls(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    v_sampler.set_timesteps(10)
    out = v_sampler.step(x, 1000, x, noise=x)
    assert np.isfinite(out.prev_sample).all()
    assert_close(out.pred_original_sample, np.clip(-x, -1, 1))  # x0 = sqrt(0) x_T - sqrt(1) v, clipped


# --- bad input ------------------------------------------------------------------------------------------


def _stepped(sampler, n=10):
    sampler.set_timesteps(n)
    return sampler


def bad_input_cases():
    x = np.zeros((2, 3))
    yield "steps 0", lambda: DDPMSampler().set_timesteps(0), ValueError, "num_inference_steps: expected 1..1000"
    yield "steps > T", lambda: DDIMSampler().set_timesteps(1001), ValueError, "num_inference_steps"
    yield "t not a timestep", lambda: _stepped(DDPMSampler()).step(x, 7, x, noise=x), ValueError, "t: 7 is not one"
    yield "before set_timesteps", lambda: DDIMSampler().step(x, 1, x), RuntimeError, "set_timesteps"
    yield "output shape", lambda: _stepped(DDIMSampler()).step(x[:1], 901, x), ValueError, "model_output"
    yield "output dtype", lambda: _stepped(DDIMSampler()).step(x.astype(np.float32), 901, x), TypeError, \
        "model_output: expected dtype float64"
    yield "learned_range channels", lambda: _stepped(DDPMSampler(variance_type="learned_range")).step(
        x, 901, x, noise=x), ValueError, r"model_output: with variance_type='learned_range' expected shape \(2, 6\)"
    yield "unknown key", lambda: DDIMSampler(variance_type="fixed_small"), ValueError, \
        "variance_type: not an option of DDIMSampler"
    yield "learned", lambda: DDPMSampler(variance_type="learned"), ValueError, "variance_type: minidiff does not"
    yield "fixed_large_log", lambda: DDPMSampler(variance_type="fixed_large_log"), ValueError, "variance_type: diff"
    yield "spacing", lambda: DDIMSampler(timestep_spacing="foo"), ValueError, "timestep_spacing: minidiff implements"
    yield "DDPM without noise", lambda: _stepped(DDPMSampler()).step(x, 901, x), ValueError, "rng: pass a numpy"
    yield "DDIM eta > 0 without noise", lambda: _stepped(DDIMSampler(eta=0.3)).step(x, 901, x), ValueError, "rng"
    yield "noise shape", lambda: _stepped(DDPMSampler()).step(x, 901, x, noise=x[:1]), ValueError, "noise: expected"
    yield "eta range", lambda: DDIMSampler(eta=1.5), ValueError, r"eta: expected a value in \[0, 1\]"
    yield "eta type", lambda: DDIMSampler(eta="0"), TypeError, "eta: expected a real number"
    yield "use_clipped_model_output", lambda: DDIMSampler(use_clipped_model_output=1), TypeError, \
        "use_clipped_model_output"
    yield "set_alpha_to_one", lambda: DDIMSampler(set_alpha_to_one="yes"), TypeError, "set_alpha_to_one"
    yield "custom timesteps order", lambda: DDPMSampler().set_timesteps(timesteps=[5, 9]), ValueError, \
        "timesteps: expected a strictly decreasing"
    yield "invert model", lambda: DDIMSampler().invert("unet", x, 10), TypeError, "model: expected a callable"
    yield "invert x0", lambda: DDIMSampler().invert(x_independent_eps, [[0.0]], 10), TypeError, "x0: expected"
    yield "slerp shapes", lambda: slerp(x, x[:1], 0.5), ValueError, "z1: expected shape"
    yield "slerp alpha", lambda: slerp(x, x, 1.5), ValueError, r"alpha: expected values in \[0, 1\]"
    yield "slerp alpha shape", lambda: slerp(x, x, np.ones(3)), ValueError, "alpha: expected"
    yield "slerp batch", lambda: slerp(x[0], x[0], 0.5), ValueError, r"z0: expected a batch"
    yield "slerp threshold", lambda: slerp(x, x, 0.5, dot_threshold=1.0), ValueError, "dot_threshold"


@pytest.mark.parametrize(("name", "call", "error", "match"), list(bad_input_cases()),
                         ids=[case[0] for case in bad_input_cases()])
def test_bad_input_is_refused_naming_the_argument(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- configurations written by diffusers -------------------------------------------------------------


def full_config(scheduler) -> dict:
    """A scheduler's config as diffusers holds it, plus the two keys it writes to scheduler_config.json."""
    import diffusers

    return {**dict(scheduler.config), "_class_name": type(scheduler).__name__,
            "_diffusers_version": diffusers.__version__}


@pytest.mark.torch
@pytest.mark.parametrize("source", ["config dict", "scheduler_config.json"])
def test_from_a_diffusers_ddim_config_the_schedule_and_timesteps_are_diffusers(source, tmp_path):
    """A full DDIMScheduler config (with its _class_name, _diffusers_version, _use_default_values) builds the
    same alpha_bars (diffusers keeps them in float32: float32 tolerance) and the same timesteps + 1."""
    import diffusers

    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        prediction_type="v_prediction", rescale_betas_zero_snr=True)
    if source == "config dict":
        config = full_config(scheduler)
        assert "_use_default_values" in config
    else:
        scheduler.save_pretrained(tmp_path)
        config = json.loads((tmp_path / "scheduler_config.json").read_text())
        assert config["_class_name"] == "DDIMScheduler" and "_diffusers_version" in config
    sampler = DDIMSampler.from_config(config)
    assert sampler.config["set_alpha_to_one"] is False and sampler.config["prediction_type"] == "v_prediction"
    assert_close(sampler.schedule.alpha_bars[1:], scheduler.alphas_cumprod.double().numpy(), dtype=np.float32)
    for n in (25, 7):
        scheduler.set_timesteps(n)
        sampler.set_timesteps(n)
        np.testing.assert_array_equal(sampler.timesteps, scheduler.timesteps.numpy() + 1)


@pytest.mark.torch
def test_a_config_of_the_other_scheduler_is_read_when_its_own_keys_are_at_their_defaults():
    """DDIMSampler reads a DDPMScheduler config whose variance_type is the default (it changes nothing for
    DDIM) and refuses one with another variance_type, naming the key; DDPMSampler likewise with a DDIM
    config's set_alpha_to_one."""
    import diffusers

    ddpm = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    sampler = DDIMSampler.from_config(full_config(ddpm))
    assert_close(sampler.schedule.alpha_bars[1:], ddpm.alphas_cumprod.double().numpy(), dtype=np.float32)
    with pytest.raises(ValueError, match="variance_type: DDPMScheduler's variance_type='fixed_large'"):
        DDIMSampler.from_config(full_config(diffusers.DDPMScheduler(variance_type="fixed_large")))
    assert DDPMSampler.from_config(full_config(diffusers.DDIMScheduler())).config["variance_type"] == "fixed_small"
    with pytest.raises(ValueError, match="set_alpha_to_one: DDIMScheduler's set_alpha_to_one=False"):
        DDPMSampler.from_config(full_config(diffusers.DDIMScheduler(set_alpha_to_one=False)))


def test_a_schedule_can_be_given_instead_of_its_keys():
    schedule = NoiseSchedule.named("cosine", 50)
    sampler = DDPMSampler(schedule, variance_type="fixed_large")
    assert sampler.T == 50 and sampler.schedule is schedule
    with pytest.raises(ValueError, match="beta_end: pass either a schedule"):
        DDIMSampler(schedule, beta_end=0.01)
