"""Guidance (E39-E42) against exact answers on the Gaussian-mixture oracle, with no training.

The oracle: GaussianMixture.example_2d(), three components = three classes. The conditional eps model of
class y is the exact eps model of component y alone, the unconditional one that of the mixture (the null label
is 3); the class posterior p_t(y | x_t) is the noised mixture's responsibility, and its gradient is the score
of the noised component minus the score of the noised mixture (E39 read backwards), both from the Cholesky
path of GaussianMixture (the eps models use its eigendecomposition path: two independent computations).
References that share no code with minidiff.guidance: central differences of log densities, grid moments of
the tilted density, draws from the components, and diffusers' ClassifierFreeGuidance guider.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from tolerances import FINITE_DIFFERENCES, assert_close

from minidiff import guidance
from minidiff.autodiff import Tensor
from minidiff.diffusion import (
    GaussianMixture,
    NoiseSchedule,
    linear_betas,
    predict_eps_from_v,
    predict_eps_from_x0,
    q_sample,
)
from minidiff.nn.classifier import NoisyClassifier
from minidiff.nn.mlp import MLPDenoiser
from minidiff.nn.unet import UNet
from minidiff.samplers import DDIMSampler, HeunSampler, langevin_dynamics

GMM = GaussianMixture.example_2d()
K = GMM.K  # 3 classes
NULL = K  # the null label, as the UNet's num_class_embeds - 1
COMPONENTS = [GaussianMixture([1.0], GMM.means[k:k + 1], GMM.covariances[k:k + 1]) for k in range(K)]
SCHEDULE = NoiseSchedule(linear_betas(1000))
N_SAMPLES = 4000


# --- the oracle -------------------------------------------------------------------------------------------


class OracleConditional:
    """model(x, t, labels): the exact prediction of component y for label y, of the mixture for the null label.
    Counts its calls and remembers the last batch size."""

    null_label = NULL

    def __init__(self, prediction_type: str = "epsilon") -> None:
        self.models = [c.model(SCHEDULE, prediction_type) for c in [*COMPONENTS, GMM]]
        self.calls, self.last_batch = 0, 0

    def __call__(self, x, t, labels):
        self.calls, self.last_batch = self.calls + 1, len(x)
        out = np.empty_like(x)
        for k in np.unique(labels):
            rows = labels == k
            out[rows] = self.models[k](x[rows], t[rows])
        return out


def vp_coefficients(t) -> tuple[float, float]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) of one timestep: the schedule's at integer t, and at a float t
    (a sigma sampler's) from sigma = sqrt((1 - alpha_bar) / alpha_bar) interpolated linearly over t = 0..T."""
    if float(t).is_integer() and not isinstance(t, float | np.floating):
        return float(SCHEDULE.sqrt_alpha_bars[int(t)]), float(SCHEDULE.sqrt_one_minus_alpha_bars[int(t)])
    sigma = np.interp(float(t), np.arange(SCHEDULE.T + 1),
                      np.sqrt(SCHEDULE.one_minus_alpha_bars / SCHEDULE.alpha_bars))
    return 1.0 / math.sqrt(1.0 + sigma**2), sigma / math.sqrt(1.0 + sigma**2)


def exact_grad_log_posterior(x, t, labels):
    """grad_x log p_t(y | x) = score of the noised component y - score of the noised mixture, per example (for
    the groups of equal (t, y))."""
    grad = np.empty(x.shape, dtype=np.float64)
    labels = np.broadcast_to(labels, (len(x),))
    for key in {(tt, y) for tt, y in zip(t.tolist(), labels.tolist(), strict=True)}:
        rows = (t == key[0]) & (labels == key[1])
        a, b = vp_coefficients(t[rows][0])
        grad[rows] = COMPONENTS[key[1]].noised(a, b).score(x[rows]) - GMM.noised(a, b).score(x[rows])
    return grad.astype(x.dtype)


def central_gradient(f, x, h: float = 1e-5) -> np.ndarray:
    """grad of a function (n, D) -> (n,) by float64 central differences, per example."""
    grad = np.empty_like(x)
    for d in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, d] = h
        grad[:, d] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def tilted_score(x, t: int, y: int, w: float) -> np.ndarray:
    """[E39] grad log (p_t(x) p_t(y | x)^w) by central differences of the noised mixture's log density and of the
    log of its responsibility of y."""
    noised = GMM.noised(*vp_coefficients(t))
    return central_gradient(lambda v: noised.log_prob(v) + w * np.log(noised.responsibilities(v)[:, y]), x)


def noised_points(rng, n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """n draws of x_t from the noised mixture, with their classes."""
    x0, labels = GMM.sample(rng, n, return_labels=True)
    return q_sample(SCHEDULE, x0, t, rng=rng), labels


def assert_same_distribution(samples, reference, what: str) -> None:
    """Two-sample test of mean, covariance and mixture responsibilities: each a mean of a per-sample term whose
    difference between the two sets has standard error sqrt(Var / n_a + Var / n_b); within 5 s.e."""
    assert np.isfinite(samples).all(), f"{what}: non-finite samples"
    centre = np.concatenate([samples, reference]).mean(axis=0)

    def terms(x):
        d = x - centre
        return {"mean": x, "covariance": np.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], axis=1),
                "responsibilities": GMM.responsibilities(x)}

    a, b = terms(samples), terms(reference)
    for name in a:
        diff = a[name].mean(axis=0) - b[name].mean(axis=0)
        se = np.sqrt(a[name].var(axis=0) / len(samples) + b[name].var(axis=0) / len(reference))
        z = np.abs(diff) / se
        assert z.max() < 5, f"{what}: {name} differs from the reference's by {diff.round(4)} ({z.max():.1f} s.e.)"


def ddim_samples(model, seed: int, steps: int = 50) -> np.ndarray:
    """DDIM with trailing spacing from x_T drawn with the seed. Its discretization bias in the covariance of one
    narrow component is ~1/steps: 4 s.e. of a 4000-sample test at 50 steps, under 1 s.e. at 200."""
    sampler = DDIMSampler(SCHEDULE, clip_sample=False, timestep_spacing="trailing")
    return sampler.sample(model, (N_SAMPLES, 2), np.random.default_rng(seed), num_inference_steps=steps,
                          dtype=np.float64, progress=False)


def mean_with_se(values) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


# --- the oracle's own posterior gradient ------------------------------------------------------------------


def test_e39_the_oracle_posterior_gradient_is_the_gradient_of_log_responsibilities():
    """[E39] score(component y) - score(mixture) is grad log p_t(y | x), against central differences of the log
    responsibilities, at integer and fractional t: the reference every classifier-guidance test uses."""
    rng = np.random.default_rng(0)
    for t in (3, 50, 400, 999.5):
        x, labels = noised_points(rng, 64, int(t))

        noised = GMM.noised(*vp_coefficients(t))

        def log_posterior(v, noised=noised, labels=labels):
            return np.log(noised.responsibilities(v)[np.arange(64), labels])

        expected = central_gradient(log_posterior, x)
        got = exact_grad_log_posterior(x, np.full(64, t), labels)
        assert_close(got, expected, tol=FINITE_DIFFERENCES, what=f"grad log p(y | x) at t = {t}")


# --- classifier-free guidance [E41] -----------------------------------------------------------------------


def test_e41_scale_0_and_1_are_the_unconditional_and_conditional_models_exactly_in_one_call():
    """[E41] w = 0 returns the unconditional prediction and w = 1 the conditional one, bit for bit, per example
    with mixed labels and timesteps; each guided call is ONE model call on the doubled batch."""
    rng = np.random.default_rng(1)
    x, t, labels = rng.standard_normal((12, 2)), rng.integers(1, 1001, 12), rng.integers(0, K, 12)
    model = OracleConditional()
    for w, expected in ((0, model(x, t, np.full(12, NULL))), (1, model(x, t, labels))):
        calls = model.calls
        got = guidance.classifier_free(model, labels, w)(x, t)
        assert np.array_equal(got, expected), f"w = {w}: not the {'un' if w == 0 else ''}conditional model"
        assert model.calls == calls + 1 and model.last_batch == 2 * len(x), "expected one call on the doubled batch"


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_e41_guidance_of_x0_and_v_predictions_is_guidance_of_eps(prediction_type):
    """[E13][E14][E41] The combination is affine with weights summing to 1, so guiding an x0 or v model and
    converting to eps is guiding the eps model."""
    rng = np.random.default_rng(2)
    t = 300
    x, _ = noised_points(rng, 50, t)
    guided = guidance.classifier_free(OracleConditional(prediction_type), 2, 3.5)(x, np.full(50, t))
    to_eps = predict_eps_from_x0 if prediction_type == "sample" else predict_eps_from_v
    expected = guidance.classifier_free(OracleConditional(), 2, 3.5)(x, np.full(50, t))
    assert_close(to_eps(SCHEDULE, x, t, guided), expected, scale=np.abs(x) + np.abs(expected),
                 what=f"eps of guided {prediction_type}")


@pytest.mark.parametrize("t", [2, 60, 250, 600, 1000])
def test_e39_e41_the_guided_eps_is_the_score_of_the_tilted_density(t):
    """[E39][E41] -eps_guided / sqrt(1 - alpha_bar_t) = grad log p_t(x) + w grad log p_t(y | x), the score of
    p_t(x) p_t(y | x)^w, at every t (central differences of the noised mixture's log density and responsibility)."""
    rng = np.random.default_rng(t)
    x, _ = noised_points(rng, 40, t)
    b = vp_coefficients(t)[1]
    for y, w in ((0, 0.5), (1, 2.0), (2, 4.0)):
        score = -guidance.classifier_free(OracleConditional(), y, w)(x, np.full(40, t)) / b
        assert_close(score, tilted_score(x, t, y, w), tol=FINITE_DIFFERENCES, scale=1 + np.abs(score),
                     what=f"guided score, y = {y}, w = {w}, t = {t}")


def test_e41_sampling_with_w_1_draws_from_the_class_conditional():
    """[E41] DDIM (200 steps) with the guided oracle at w = 1 draws p(x | y): two-sample test against draws of
    component y."""
    y = 1
    samples = ddim_samples(guidance.classifier_free(OracleConditional(), y, 1.0), seed=3, steps=200)
    assert_same_distribution(samples, COMPONENTS[y].sample(np.random.default_rng(4), N_SAMPLES), "w = 1")


def test_e41_larger_w_pulls_the_samples_toward_the_class():
    """[E41] From the same x_T, the mean clean-mixture responsibility of class y among DDIM samples rises with w
    (1 -> 2 -> 4), each step by more than 5 standard errors of the paired difference."""
    y = 2
    r = [GMM.responsibilities(ddim_samples(guidance.classifier_free(OracleConditional(), y, w), seed=5))[:, y]
         for w in (1.0, 2.0, 4.0)]
    for (w0, r0), (w1, r1) in zip([(1, r[0]), (2, r[1])], [(2, r[1]), (4, r[2])], strict=True):
        gain, se = mean_with_se(r1 - r0)
        assert gain > 5 * se, f"responsibility of y from w = {w0} to {w1}: {gain:+.4f} (s.e. {se:.4f})"


def tilted_moments(t: int, y: int, w: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of p_t(x) p_t(y | x)^w / Z by a Riemann sum on a 0.01 grid over [-3, 3]^2 (the density
    is smooth and negligible at the border: exact to many digits)."""
    noised = GMM.noised(*vp_coefficients(t))
    u = np.linspace(-3, 3, 601)
    grid = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)  # (601^2, 2)
    log_density = noised.log_prob(grid) + w * np.log(noised.responsibilities(grid)[:, y])
    p = np.exp(log_density - log_density.max())
    p /= p.sum()
    mean = p @ grid
    centred = grid - mean
    return mean, centred.T @ (centred * p[:, None])


def test_e39_e41_langevin_with_the_guided_score_draws_the_tilted_mixture():
    """[E39][E41] What 'sampling with guidance draws p(x) p(y | x)^w' means exactly: at one noise level t, the
    guided score is the score of the tilted density p_t(x) p_t(y | x)^w (E39), so Langevin dynamics with it
    (E25) has that density as its stationary law; its mean and covariance match the grid moments of the tilted
    density within 5 s.e. (the step 0.003 is 7% of the smallest variance there: an O(step) bias of ~2% of
    the variance, under the 5 s.e. of 11%).

    The reverse-time samplers do NOT end at the tilted clean density p_0(x) p_0(y | x)^w for w != 1: they apply
    the tilt at every noise level, and p_t(x) p_t(y | x)^w is not the noised version of p_0(x) p_0(y | x)^w
    (here DDIM at w = 3 lands about 0.4 beyond the tilted mean, hundreds of standard errors away). So this
    test starts from DDIM's guided samples and lets Langevin at t = 1 (alpha_bar ~ 1 - 1e-4) correct them."""
    y, w, t = 2, 3.0, 1
    guided = guidance.classifier_free(OracleConditional(), y, w)
    x = ddim_samples(guided, seed=6) * vp_coefficients(t)[0]
    b = vp_coefficients(t)[1]
    t_batch = np.full(N_SAMPLES, t)
    x = langevin_dynamics(lambda v: -guided(v, t_batch) / b, x, 0.003, 300, np.random.default_rng(7))
    mean, cov = tilted_moments(t, y, w)
    se_mean = np.sqrt(np.diag(cov) / N_SAMPLES)
    z_mean = np.abs(x.mean(axis=0) - mean) / se_mean
    assert z_mean.max() < 5, f"mean {x.mean(axis=0).round(4)} vs tilted {mean.round(4)} ({z_mean.max():.1f} s.e.)"
    d = x - mean
    products = np.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], axis=1)  # (N, 3)
    expected = np.array([cov[0, 0], cov[0, 1], cov[1, 1]])
    z_cov = np.abs(products.mean(axis=0) - expected) / (products.std(axis=0) / math.sqrt(N_SAMPLES))
    assert z_cov.max() < 5, f"covariance {products.mean(axis=0).round(5)} vs {expected.round(5)} ({z_cov.max():.1f} se)"


# --- negative conditioning [E42] ---------------------------------------------------------------------------


def test_e42_negative_conditioning_replaces_the_unconditional_prediction():
    """[E42] eps_negative + w (eps_positive - eps_negative), per example, against the two predictions called
    directly."""
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((20, 2)), rng.integers(1, 1001, 20)
    positive = rng.integers(0, K, 20)
    negative, w = (positive + rng.integers(1, K, 20)) % K, 2.5  # never the positive label
    model = OracleConditional()
    eps_pos, eps_neg = model(x, t, positive), model(x, t, negative)
    got = guidance.classifier_free(model, positive, w, negative=negative)(x, t)
    assert_close(got, eps_neg + w * (eps_pos - eps_neg), scale=np.abs(eps_neg) + w * np.abs(eps_pos - eps_neg),
                 what="negative-conditioned eps")


def test_e42_samples_avoid_the_negative_class():
    """[E42] From the same x_T, class 2 guided at w = 3 with class 1 as the negative label (in place of the null
    label) gives samples farther from class 1's mean, by more than 5 s.e. of the paired difference. (The
    clean responsibilities of class 1 are ~1e-5 either way: the components barely overlap at t = 0.)"""
    plain = ddim_samples(guidance.classifier_free(OracleConditional(), 2, 3.0), seed=9)
    avoiding = ddim_samples(guidance.classifier_free(OracleConditional(), 2, 3.0, negative=1), seed=9)
    gain, se = mean_with_se(np.linalg.norm(avoiding - GMM.means[1], axis=1)
                            - np.linalg.norm(plain - GMM.means[1], axis=1))
    assert gain > 5 * se, f"distance from the negative class's mean grew by {gain:.4f} (s.e. {se:.4f})"


# --- guidance rescale ----------------------------------------------------------------------------------------


def test_rescale_phi_0_is_plain_guidance_and_phi_1_matches_the_conditional_std():
    """phi = 0 leaves the guided prediction unchanged; phi = 1 gives every example the standard deviation of its
    conditional prediction (Lin et al. 2023), computed here from the oracle's conditional model."""
    rng = np.random.default_rng(10)
    x, t = rng.standard_normal((16, 2)), rng.integers(1, 1001, 16)
    plain = guidance.classifier_free(OracleConditional(), 1, 4.0)(x, t)
    assert np.array_equal(guidance.classifier_free(OracleConditional(), 1, 4.0, rescale=0.0)(x, t), plain)
    rescaled = guidance.classifier_free(OracleConditional(), 1, 4.0, rescale=1.0)(x, t)
    cond = OracleConditional()(x, t, np.ones(16, dtype=np.int64))
    assert_close(rescaled.std(axis=1), cond.std(axis=1), what="per-example std at phi = 1")
    ratio = rescaled / plain  # phi = 1 only rescales each example
    assert_close(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), what="one factor per example")


@pytest.mark.torch
@pytest.mark.parametrize(("w", "phi"), [(0.0, 0.0), (3.0, 0.0), (7.5, 0.7), (2.0, 1.0)])
def test_e41_guidance_and_rescale_match_diffusers_classifier_free_guidance(w, phi):
    """[E41] guided_combination + rescale_guidance against diffusers' ClassifierFreeGuidance guider (its
    `rescale_noise_cfg`), on random (B, C, H, W) predictions, float64."""
    import torch
    from diffusers.guiders import ClassifierFreeGuidance

    rng = np.random.default_rng(11)
    uncond, cond = rng.standard_normal((2, 3, 4, 5, 5))
    guided = guidance.guided_combination(np.concatenate([uncond, cond]), w)
    if phi > 0:
        guided = guidance.rescale_guidance(guided, cond, phi)
    guider = ClassifierFreeGuidance(guidance_scale=w, guidance_rescale=phi)
    theirs = guider.forward(torch.from_numpy(cond), torch.from_numpy(uncond)).pred.numpy()
    assert_close(guided, theirs, scale=np.abs(uncond) + w * np.abs(cond - uncond), what="guided prediction")


# --- classifier guidance [E40] ------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_e40_classifier_guidance_with_the_exact_posterior_is_the_conditional_model(prediction_type):
    """[E40] s = 1 with the exact class posterior turns the unconditional model into the conditional one, for eps,
    x0 and v predictions, at integer t (eps samplers) and fractional t (sigma samplers)."""
    rng = np.random.default_rng(12)
    for t in (5, 200, 750, 37.25, 800.6):
        x, _ = noised_points(rng, 30, int(t))
        labels = rng.integers(0, K, 30)
        t_batch = np.full(30, t)
        guided = guidance.classifier_guided(GMM.model(SCHEDULE, prediction_type), exact_grad_log_posterior, labels,
                                            SCHEDULE, scale=1.0, prediction_type=prediction_type)(x, t_batch)
        expected = OracleConditional(prediction_type)(x, t_batch, labels)
        assert_close(guided, expected, scale=np.abs(x) + np.abs(expected), what=f"{prediction_type} at t = {t}")


@pytest.mark.parametrize("sampler", ["ddim-200", "heun-karras-50"])
def test_e40_classifier_guided_sampling_draws_from_the_class_conditional(sampler):
    """[E40] Classifier guidance with the exact posterior (s = 1) draws p(x | y), with an eps sampler (DDIM 200,
    integer t) and a sigma sampler (Heun 50 on Karras sigmas: fractional t, the model given x / sqrt(sigma^2 + 1)):
    two-sample test against draws of component y."""
    y = 0
    model = guidance.classifier_guided(GMM.eps_model(SCHEDULE), exact_grad_log_posterior, y, SCHEDULE)
    if sampler == "ddim-200":
        samples = ddim_samples(model, seed=13, steps=200)
    else:  # 50 Heun steps: 18 leave a discretization bias of ~4 s.e. in one narrow component's covariance
        samples = HeunSampler(SCHEDULE, use_karras_sigmas=True).sample(
            model, (N_SAMPLES, 2), np.random.default_rng(13), num_inference_steps=50, dtype=np.float64,
            progress=False)
    assert_same_distribution(samples, COMPONENTS[y].sample(np.random.default_rng(14), N_SAMPLES), sampler)


# --- the noisy classifier ------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_shape", [(2,), (2, 4, 4)])
def test_e40_log_prob_gradient_against_central_differences(input_shape):
    """[E40] grad_x log p_phi(y | x, t) by backpropagation against float64 central differences of the
    classifier's log-softmax, vectors and images, per example."""
    rng = np.random.default_rng(15)
    classifier = NoisyClassifier(input_shape, 3, channels=(8, 16), norm_num_groups=4, rng=rng, dtype=np.float64)
    x = rng.standard_normal((3, *input_shape))
    t, labels = np.array([5, 400, 950]), np.array([0, 2, 1])

    def log_prob(flat):  # (3, prod(input_shape)) -> (3,); the examples do not interact
        probs = guidance.class_probabilities(classifier, flat.reshape(x.shape), t)
        return np.log(probs[np.arange(3), labels])

    expected = central_gradient(log_prob, x.reshape(3, -1))
    got = guidance.log_prob_gradient(classifier, x, t, labels).reshape(3, -1)
    assert_close(got, expected, tol=FINITE_DIFFERENCES, what="log-prob gradient")


def test_e40_noisy_classifier_trained_on_the_mixture_reaches_the_bayes_accuracy():
    """[E40] A NoisyClassifier trained briefly on x_t of the 2-D mixture (random t, cross-entropy) classifies fresh
    x_t about as well as the exact posterior p_t(y | x_t) (Bayes accuracy) at several t: within 1.5 points plus
    5 s.e. of the paired difference. Its input gradient points like the exact grad log p_t(y | x) (median cosine
    > 0.9) with about its length (median ratio in [0.67, 1.5]) where the posterior is uncertain (t = 300)."""
    rng = np.random.default_rng(16)
    x0, labels = GMM.sample(rng, 20000, return_labels=True)
    classifier = NoisyClassifier((2,), K, channels=(64,), rng=rng)
    classifier, losses = guidance.train_noisy_classifier(x0, labels, SCHEDULE, 200, rng, classifier=classifier,
                                                         batch_size=256, lr=5e-3)
    assert losses[-50:].mean() < losses[:10].mean(), "the loss did not fall"
    for t in (100, 300, 600):
        x, y = noised_points(np.random.default_rng(t), N_SAMPLES, t)
        bayes = GMM.noised(*vp_coefficients(t)).responsibilities(x).argmax(axis=1) == y
        ours = guidance.class_probabilities(classifier, x, t).argmax(axis=1) == y
        gap, se = mean_with_se(bayes.astype(float) - ours)
        assert gap < 0.015 + 5 * se, f"t = {t}: accuracy {ours.mean():.3f} vs Bayes {bayes.mean():.3f}"
    x, y = noised_points(np.random.default_rng(17), 1000, 300)
    ours = guidance.log_prob_gradient(classifier, x, 300, y)
    exact = exact_grad_log_posterior(x, np.full(1000, 300), y)
    norms = np.linalg.norm(ours, axis=1), np.linalg.norm(exact, axis=1)
    cosine = np.median((ours * exact).sum(axis=1) / (norms[0] * norms[1]))
    ratio = np.median(norms[0] / norms[1])
    assert cosine > 0.9 and 0.67 < ratio < 1.5, f"gradient: median cosine {cosine:.3f}, length ratio {ratio:.2f}"


# --- the adapter of a minidiff network ------------------------------------------------------------------------


def test_conditional_runs_the_network_without_a_graph_in_eval_mode():
    """conditional(network) gives network(Tensor(x), t, labels).data on arrays, in x's dtype, with the network's
    null label, and leaves the network in the mode it was in."""
    net = MLPDenoiser(dim=2, hidden=16, layers=1, num_classes=K + 1, rng=np.random.default_rng(18))
    model = guidance.conditional(net, null_label=K)
    x, t, labels = np.random.default_rng(19).standard_normal((4, 2)), np.array([1, 5, 9, 20]), np.array([0, 1, 2, 3])
    out = model(x, t, labels)
    assert out.dtype == x.dtype and model.null_label == K
    assert net.training, "the network's training mode must be restored after the call"
    assert_close(out, net(Tensor(x.astype(np.float32)), t, labels).data, dtype=np.float32, what="adapter output")
    unet = UNet(in_channels=1, out_channels=1, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=11,
                rng=np.random.default_rng(20))
    assert guidance.conditional(unet).null_label == 10


# --- bad input -------------------------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error_naming_the_argument():
    model = OracleConditional()
    x, t = np.zeros((4, 2)), np.full(4, 10)
    with pytest.raises(ValueError, match=r"labels: expected labels in \[0, 3\)"):
        guidance.classifier_free(model, 3, 2.0)  # the null label is not a class
    with pytest.raises(ValueError, match="labels"):
        guidance.classifier_free(model, np.array([0, -1]), 2.0)
    with pytest.raises(TypeError, match="labels"):
        guidance.classifier_free(model, np.array([0.5, 1.0]), 2.0)
    with pytest.raises(ValueError, match="negative"):
        guidance.classifier_free(model, 0, 2.0, negative=5)
    with pytest.raises(ValueError, match="labels: expected one label per example"):
        guidance.classifier_free(model, np.array([0, 1, 2]), 2.0)(x, t)  # 3 labels for 4 examples
    with pytest.raises(ValueError, match="negative: expected one label per example"):
        guidance.classifier_free(model, np.array([0, 1, 2, 0]), 2.0, negative=np.array([1, 2]))(x, t)
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_free(model, 0, -1.0)
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_free(model, 0, math.nan)
    with pytest.raises(TypeError, match="scale"):
        guidance.classifier_free(model, 0, "3")
    with pytest.raises(ValueError, match="rescale"):
        guidance.classifier_free(model, 0, 2.0, rescale=1.5)
    with pytest.raises(ValueError, match="null_label"):
        guidance.classifier_free(lambda x, t, y: x, 0, 2.0)  # a plain callable must say its null label
    with pytest.raises(ValueError, match="model: expected an output for the doubled batch"):
        guidance.classifier_free(lambda x, t, y: x[:1], 0, 2.0, null_label=3)(x, t)
    unconditional = UNet(in_channels=1, out_channels=1, block_out_channels=(8,), layers_per_block=1,
                         norm_num_groups=4, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                         rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_class_embeds"):
        guidance.conditional(unconditional)
    with pytest.raises(TypeError, match="network"):
        guidance.conditional(MLPDenoiser(num_classes=4, rng=np.random.default_rng(0)))  # no null_class_label
    with pytest.raises(TypeError, match="network"):
        guidance.conditional(model)  # not a Module

    classifier = NoisyClassifier((2,), K, channels=(8,), rng=np.random.default_rng(0))
    eps_model = GMM.eps_model(SCHEDULE)
    with pytest.raises(ValueError, match=r"labels: expected labels in \[0, 3\)"):
        guidance.classifier_guided(eps_model, classifier, 3, SCHEDULE)
    with pytest.raises(TypeError, match="schedule"):
        guidance.classifier_guided(eps_model, classifier, 0, "linear")
    with pytest.raises(ValueError, match="prediction_type"):
        guidance.classifier_guided(eps_model, classifier, 0, SCHEDULE, prediction_type="eps")
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_guided(eps_model, classifier, 0, SCHEDULE, scale=-2.0)
    with pytest.raises(TypeError, match="classifier"):
        guidance.classifier_guided(eps_model, "classifier", 0, SCHEDULE)
    with pytest.raises(ValueError, match="labels"):
        guidance.train_noisy_classifier(np.zeros((5, 2)), np.zeros(4, dtype=int), SCHEDULE, 1,
                                        np.random.default_rng(0))
    with pytest.raises(ValueError, match="steps"):
        guidance.train_noisy_classifier(np.zeros((5, 2)), np.zeros(5, dtype=int), SCHEDULE, 0,
                                        np.random.default_rng(0))
    with pytest.raises(ValueError, match="input_shape"):
        NoisyClassifier((1, 6, 6), 3, channels=(8, 16, 16), norm_num_groups=4)  # 6 is not divisible by 4


# --- exercises -------------------------------------------------------------------------------------------------


@pytest.mark.exercise("ex08.1")
def test_ex08_1_the_guided_combination_is_the_eps_of_the_tilted_score():
    """Exercise 8.1 [E41]: from the batched output [eps_uncond; eps_cond] of the oracle, -guided / sqrt(1 -
    alpha_bar_t) must be the score of p_t(x) p_t(y | x)^w; w = 0 and w = 1 must give the two halves."""
    rng = np.random.default_rng(21)
    t, y = 150, 1
    x, _ = noised_points(rng, 30, t)
    t_batch = np.full(30, t)
    uncond, cond = GMM.eps_model(SCHEDULE)(x, t_batch), COMPONENTS[y].eps_model(SCHEDULE)(x, t_batch)
    output = np.concatenate([uncond, cond])  # the unconditional half first, as in diffusers
    assert guidance.guided_combination(output, 0.0).shape == x.shape, "expected one prediction per example (B, D)"
    assert_close(guidance.guided_combination(output, 0.0), uncond, what="w = 0 must give the unconditional half")
    assert_close(guidance.guided_combination(output, 1.0), cond, what="w = 1 must give the conditional half")
    b = vp_coefficients(t)[1]
    for w in (0.5, 3.0):
        score = -guidance.guided_combination(output, w) / b
        assert_close(score, tilted_score(x, t, y, w), tol=FINITE_DIFFERENCES, scale=1 + np.abs(score),
                     what=f"w = {w}: -guided / sqrt(1 - alpha_bar) vs the score of p(x) p(y | x)^w")


@pytest.mark.exercise("ex08.2")
def test_ex08_2_the_classifier_guided_eps_is_the_eps_of_the_tilted_score():
    """Exercise 8.2 [E40]: with the exact class posterior, s = 1 must give the conditional eps and s = 2 the eps
    of p_t(x) p_t(y | x)^2, for a batch whose examples have different t (one sqrt(1 - alpha_bar_t) each)."""
    rng = np.random.default_rng(22)
    t = np.repeat([20, 300, 900], 10)
    x = np.concatenate([noised_points(rng, 10, tt)[0] for tt in (20, 300, 900)])
    y = np.repeat([0, 1, 2], 10)
    eps = GMM.eps_model(SCHEDULE)(x, t)
    grad = exact_grad_log_posterior(x, t, y)
    b = SCHEDULE.sqrt_one_minus_alpha_bars[t]
    expected = OracleConditional()(x, t, y)
    got = guidance.classifier_guided_eps(eps, grad, b, 1.0)
    assert got.shape == eps.shape, f"expected shape {eps.shape}, got {got.shape}"
    assert_close(got, expected, scale=np.abs(eps) + b[:, None] * np.abs(grad),
                 what="s = 1 must give the conditional eps")
    for i, tt in enumerate((20, 300, 900)):
        rows = slice(10 * i, 10 * i + 10)
        tilted = -b[rows][:, None] * tilted_score(x[rows], tt, i, 2.0)
        assert_close(guidance.classifier_guided_eps(eps, grad, b, 2.0)[rows], tilted, tol=FINITE_DIFFERENCES,
                     scale=1 + np.abs(tilted), what=f"s = 2, t = {tt}: the eps of p(x) p(y | x)^2")
