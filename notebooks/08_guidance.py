# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Guidance: classifier guidance, classifier-free guidance, negative conditioning
#
# Every sampler so far drew from the whole data distribution $p(x)$. Usually we want a chosen kind of sample:
# a "7", a picture matching a prompt. This chapter conditions a diffusion model on a label $y$ and then goes
# further: it *tilts* the conditional toward the label, trading diversity for fidelity. One identity carries
# everything, Bayes' rule written for scores [E39]; from it follow classifier guidance [E40] (Dhariwal &
# Nichol 2021), classifier-free guidance [E41] (Ho & Salimans 2021), negative conditioning [E42] and guidance
# rescaling (Lin et al. 2023). We check each on the Gaussian-mixture oracle of chapter 05, where every density
# is known, then train guided models on the 8x8 digits, including conditioning by cross-attention [E45].

# %%
import dataclasses
import itertools
import math
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import minidiff as md
from minidiff import functional as F
from minidiff import guidance, metrics, viz
from minidiff.data import digits
from minidiff.demo import DemoConfig
from minidiff.diffusion import GaussianMixture, NoiseSchedule, linear_betas, q_sample
from minidiff.nn import Embedding, Module, UNet
from minidiff.nn.classifier import NoisyClassifier
from minidiff.samplers import DDIMSampler, DPMSolverMultistepSampler, HeunSampler, langevin_dynamics
from minidiff.train import Trainer

threadpool_limits(1, user_api="blas")  # this chapter's small matrices run several times faster on one BLAS thread

FAST = md.fast_mode()
T = 1000
N = 1000 if FAST else 4000  # samples per 2-D experiment
DDIM_STEPS = 20 if FAST else 100
rng = np.random.default_rng(0)
schedule = NoiseSchedule(linear_betas(T))
gmm = GaussianMixture.example_2d()
K = gmm.K  # three components: three classes
NULL = K  # the label that means "no label"
components = [GaussianMixture([1.0], gmm.means[k:k + 1], gmm.covariances[k:k + 1]) for k in range(K)]
sigma_of_t = np.sqrt(schedule.one_minus_alpha_bars / schedule.alpha_bars)  # t = 0..T


def coefficients(t):
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at a (possibly fractional) t, through sigma(t) as the samplers
    interpolate it."""
    sigma = np.interp(t, np.arange(T + 1), sigma_of_t)
    return 1.0 / np.sqrt(1.0 + sigma**2), sigma / np.sqrt(1.0 + sigma**2)


def central_gradient(f, x, h=1e-5):
    """grad of f: (n, D) -> (n,) by central differences, per example."""
    grad = np.empty_like(x)
    for d in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, d] = h
        grad[:, d] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def z_scores(samples, reference):
    """|difference of means| / its standard error, per coordinate, for two independent samples."""
    se = np.sqrt(samples.var(axis=0) / len(samples) + reference.var(axis=0) / len(reference))
    return np.abs(samples.mean(axis=0) - reference.mean(axis=0)) / se


def log_odds(x, y):
    """log p(y | x) - log p(not y | x) under the clean mixture: how firmly x belongs to class y (finite even where
    the responsibility rounds to 1)."""
    joint = np.stack([np.log(gmm.weights[k]) + components[k].log_prob(x) for k in range(K)], axis=1)  # (n, K)
    rows = np.arange(len(x))
    others = joint.copy()
    others[rows, y] = -np.inf
    return joint[rows, y] - np.logaddexp.reduce(others, axis=1)


def distance_to_others(x, y):
    """Distance from each point to the nearest mean of a class other than y."""
    others = np.delete(gmm.means, y, axis=0)  # (K - 1, 2)
    return np.linalg.norm(x[:, None, :] - others[None], axis=2).min(axis=1)


def legend(ax, **kwargs):
    """ax.legend with the scatter markers drawn at a visible, common size."""
    for handle in ax.legend(**kwargs).legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([20])


def paired_gain(after, before):
    """Mean of after - before and its standard error (the same x_T for both runs: a paired difference)."""
    d = after - before
    return d.mean(), d.std() / math.sqrt(len(d))


# %% [markdown]
# ## 1. Bayes' rule for scores [E39]
#
# A class-conditional density and the unconditional one are tied by Bayes' rule at every noise level:
#
# $$p_t(x \mid y) = \frac{p_t(y \mid x)\,p_t(x)}{p(y)} .$$
#
# Take the log and the gradient in $x$. The evidence $p(y)$ does not depend on $x$, so it drops out [E39]:
#
# $$\nabla_x \log p_t(x \mid y) = \nabla_x \log p_t(x) + \nabla_x \log p_t(y \mid x).$$
#
# A score needs no normalizing constant: that is why a classifier's gradient can be *added* to an unconditional
# score model. For the mixture $p = \sum_k w_k \mathcal N(\mu_k, \Sigma_k)$ with the component as the class,
# every term is known. $p_t(x \mid y)$ is component $y$ noised (mean $\sqrt{\bar\alpha_t}\mu_y$, covariance
# $\bar\alpha_t\Sigma_y + (1-\bar\alpha_t)I$, chapter 05), and $p_t(y \mid x)$ is the noised mixture's
# responsibility $r_y(x)$. Check E39 with central differences of $\log r_y$:

# %%
t_check = 200
x0_check, y_check = gmm.sample(rng, 256, return_labels=True)
x_check = q_sample(schedule, x0_check, t_check, rng=rng)
noised = gmm.noised(*coefficients(t_check))
lhs = np.stack([components[k].noised(*coefficients(t_check)).score(x_check) for k in range(K)])[
    y_check, np.arange(256)]  # grad log p_t(x | y)
rhs = noised.score(x_check) + central_gradient(
    lambda v: np.log(noised.responsibilities(v)[np.arange(256), y_check]), x_check)
err = np.abs(lhs - rhs).max() / np.abs(lhs).max()
print(f"E39 at t = {t_check}: max |score(x | y) - score(x) - grad log p(y | x)| = {err:.1e} (relative)")
assert err < 1e-6

# %% [markdown]
# How sharp is $p_t(y \mid x)$? At small $t$ the classes barely overlap and the posterior is 0 or 1 almost
# everywhere (its gradient vanishes except at the borders); as noise grows the classes blur into each other and
# the posterior flattens toward the prior weights $w_k$:

# %%
u = np.linspace(-2.5, 2.5, 201)
grid_points = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for ax, t in zip(axes, (20, 300, 700), strict=True):
    posterior = gmm.noised(*coefficients(t)).responsibilities(grid_points)[:, 2].reshape(201, 201)
    im = ax.imshow(posterior, origin="lower", extent=(-2.5, 2.5, -2.5, 2.5), vmin=0, vmax=1, cmap="viridis")
    ax.set_title(rf"$p_t(y = 2 \mid x_t)$, t = {t}")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    fig.colorbar(im, ax=ax, label="class posterior", fraction=0.046)
plt.tight_layout()
plt.show()
far = gmm.noised(*coefficients(T)).responsibilities(grid_points)
print("at t = T the posterior is the prior everywhere:", far.min(axis=0).round(3), "to", far.max(axis=0).round(3))
assert np.allclose(far, gmm.weights, atol=0.02)

# %% [markdown]
# ## 2. Classifier guidance [E40]
#
# A network predicting noise is a scaled score: $\epsilon_\theta(x_t, t) = -\sqrt{1-\bar\alpha_t}\,
# \nabla\log p_t(x_t)$ (E27: $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, and the
# score of $q(x_t \mid x_0)$ is $-\epsilon/\sqrt{1-\bar\alpha_t}$). Replace the score by the conditional one of
# E39, with the classifier term scaled by $s$, and multiply back by $-\sqrt{1-\bar\alpha_t}$ [E40]:
#
# $$\epsilon_\text{guided} = \epsilon_\theta(x_t, t) - s\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_\phi(y \mid x_t, t).$$
#
# The factor $\sqrt{1-\bar\alpha_t}$ is simply the conversion from score units to noise units; without it the
# classifier's push would be far too weak at large $t$ and far too strong near $t = 0$. With $s = 1$ and the
# exact posterior this *is* the conditional model; $s > 1$ follows the score of $p_t(x)\,p_t(y\mid x)^s$, a
# density sharper around the class. The classifier $p_\phi(y \mid x_t, t)$ must know the noise level and be
# trained on noisy $x_t$ (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"): a classifier
# of clean images says nothing reliable about $x_t$ at large $t$.
#
# `guidance.classifier_guided(model, classifier, labels, schedule, scale=s)` wraps an unconditional model and a
# classifier into a plain model $(x, t) \mapsto \epsilon$ that any sampler calls. The classifier is either a
# network (its gradient comes from minidiff's autodiff) or any function $\nabla\log p(y \mid x, t)$. First the
# exact one, from E39 read backwards: score of the noised component minus score of the noised mixture.

# %%
def exact_grad_log_posterior(x, t, labels):
    """grad log p_t(y | x) = score of the noised component y - score of the noised mixture (one t per call)."""
    a, b = coefficients(float(t[0]))
    per_class = np.stack([c.noised(a, b).score(x) for c in components])  # (K, n, 2)
    return per_class[labels, np.arange(len(x))] - gmm.noised(a, b).score(x)


eps_model = gmm.eps_model(schedule)
t_batch = np.full(256, t_check)
guided = guidance.classifier_guided(eps_model, exact_grad_log_posterior, y_check, schedule, scale=1.0)
conditional_eps = np.stack([c.eps_model(schedule)(x_check, t_batch) for c in components])[y_check, np.arange(256)]
err = np.abs(guided(x_check, t_batch) - conditional_eps).max()
print(f"s = 1, exact posterior: max |eps_guided - eps(x | y)| = {err:.1e}")
assert err < 1e-8

# %% [markdown]
# **Sigma-based samplers.** Euler and Heun (chapter 10) carry $x = x_t/\sqrt{\bar\alpha_t}$ at the noise level
# $\sigma = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$, hand the model $x/\sqrt{\sigma^2+1} = x_t$, and read its output
# as the $\epsilon$ of $x = x_0 + \sigma\epsilon$. In their variables the score is $\nabla_x\log p(x) =
# -\epsilon/\sigma$, and since $x_t = \sqrt{\bar\alpha_t}\,x$ the chain rule gives $\nabla_x \log p(y \mid x) =
# \sqrt{\bar\alpha_t}\,\nabla_{x_t}\log p(y \mid x_t)$. Guiding there,
#
# $$\epsilon_\text{guided} = -\sigma\big(\nabla_x\log p(x) + s\,\nabla_x\log p(y\mid x)\big)
#   = \epsilon - s\,\sigma\sqrt{\bar\alpha_t}\,\nabla_{x_t}\log p(y\mid x_t),$$
#
# and $\sigma\sqrt{\bar\alpha_t} = \sqrt{1-\bar\alpha_t}$: the same formula, at the $x_t$ and $t$ the model is
# given. Only the coefficient at a fractional $t$ needs care: it comes from $\sigma(t)$ interpolated as the
# sampler does. So the one wrapper serves DDIM and Heun alike; both draw class $y$ exactly:

# %%
labels_2d = np.repeat(np.arange(K), N // K)
n_2d = len(labels_2d)
exact_cg = guidance.classifier_guided(eps_model, exact_grad_log_posterior, labels_2d, schedule, scale=1.0)
ddim = DDIMSampler(schedule, clip_sample=False, timestep_spacing="trailing")
x_ddim = ddim.sample(exact_cg, (n_2d, 2), np.random.default_rng(1), num_inference_steps=DDIM_STEPS,
                     dtype=np.float64, progress=False)
x_heun = HeunSampler(schedule, use_karras_sigmas=True).sample(exact_cg, (n_2d, 2), np.random.default_rng(2),
                                                              num_inference_steps=30, dtype=np.float64,
                                                              progress=False)
for name, samples in (("DDIM", x_ddim), ("Heun", x_heun)):
    z = max(z_scores(samples[labels_2d == k], components[k].sample(rng, 20000)).max() for k in range(K))
    print(f"{name}: class means within {z:.1f} standard errors of the components'")
    assert z < 5

# %% [markdown]
# **A classifier of noisy data.** In practice the posterior is learned. minidiff's `NoisyClassifier` is told $t$
# the way the U-Net is (a sinusoidal embedding [E43] added into every block); `train_noisy_classifier` draws
# $t$ uniformly, noises the data with E3 and minimizes the cross-entropy. On the mixture it comes within two points
# of the Bayes accuracy of the exact posterior at each noise level tried, and its input gradient, taken by
# backpropagation (`guidance.log_prob_gradient`), guides like the exact one at $s = 1$ (the mean log-odds of the
# requested class under the true mixture, printed, agree within 10%); at $s = 4$ the samples are pushed away from
# the other classes, to the far edge of their own (the figure):

# %%
x0_train, y_train = gmm.sample(rng, 20000, return_labels=True)
noisy_2d = NoisyClassifier((2,), K, channels=(64,), rng=np.random.default_rng(3))
noisy_2d, losses_2d = guidance.train_noisy_classifier(x0_train, y_train, schedule, 200, rng, classifier=noisy_2d,
                                                      batch_size=256, lr=5e-3)
for t in (100, 300, 600):
    x0_eval, y_eval = gmm.sample(rng, N, return_labels=True)
    x_eval = q_sample(schedule, x0_eval, t, rng=rng)
    bayes = gmm.noised(*coefficients(t)).responsibilities(x_eval).argmax(axis=1) == y_eval
    ours = guidance.class_probabilities(noisy_2d, x_eval, t).argmax(axis=1) == y_eval
    gap, se = paired_gain(bayes.astype(float), ours.astype(float))
    print(f"t = {t}: NoisyClassifier accuracy {ours.mean():.3f}, Bayes accuracy {bayes.mean():.3f}")
    assert gap < 0.02 + 5 * se

learned = {s: ddim.sample(guidance.classifier_guided(eps_model, noisy_2d, labels_2d, schedule, scale=s),
                          (n_2d, 2), np.random.default_rng(1), num_inference_steps=DDIM_STEPS, dtype=np.float64,
                          progress=False) for s in (1.0, 4.0)}
hit = {s: log_odds(x, labels_2d) for s, x in learned.items()}
exact_hit = log_odds(x_ddim, labels_2d).mean()
print("mean log-odds of the requested class:", {s: round(float(h.mean()), 1) for s, h in hit.items()},
      f"(exact posterior, s = 1: {exact_hit:.1f})")
assert abs(hit[1.0].mean() - exact_hit) < 0.1 * exact_hit
gain, se = paired_gain(hit[4.0], hit[1.0])
assert gain > 5 * se  # a larger scale: samples more firmly in their class

# %%
background = gmm.sample(rng, 3000)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5), sharex=True, sharey=True)
panels = ((x_ddim, "exact posterior, s = 1 (DDIM)"), (learned[1.0], "NoisyClassifier, s = 1"),
          (learned[4.0], "NoisyClassifier, s = 4"))
for ax, (samples, title) in zip(axes, panels, strict=True):
    ax.scatter(*background.T, s=2, c="lightgray", label="data (all classes)")
    for k in range(K):
        ax.scatter(*samples[labels_2d == k].T, s=2, color=f"C{k}", label=f"guided to class {k}")
    ax.set_title(title)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    legend(ax, fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Classifier-free guidance [E41]
#
# Training a second network on noisy data is a burden, and its gradients can be adversarial rather than
# meaningful. Ho & Salimans (2021, "Classifier-Free Diffusion Guidance") noticed that Bayes' rule gives the
# classifier for free from a *conditional* model: $p_t(y\mid x) \propto p_t(x\mid y)/p_t(x)$, so
#
# $$\nabla\log p_t(y\mid x_t) = \nabla\log p_t(x_t\mid y) - \nabla\log p_t(x_t)
#   = -\frac{\epsilon(x_t, t, y) - \epsilon(x_t, t, \varnothing)}{\sqrt{1-\bar\alpha_t}} .$$
#
# Put it into the tilted score $\nabla\log p_t(x) + w\,\nabla\log p_t(y\mid x)$ and multiply by
# $-\sqrt{1-\bar\alpha_t}$ [E41]:
#
# $$\epsilon_\text{guided} = \epsilon_\text{uncond} + w\,(\epsilon_\text{cond} - \epsilon_\text{uncond}).$$
#
# $w = 0$ is the unconditional model, $w = 1$ the conditional one, $w > 1$ extrapolates past it. (Ho & Salimans
# write $(1+w')\,\epsilon_\text{cond} - w'\,\epsilon_\text{uncond}$: the same with $w = 1 + w'$; diffusers and
# this book count from the unconditional model.) One network
# provides both predictions: during training the label is replaced by a *null label* $\varnothing$ for a fraction
# of the examples (10-20%), so it learns $p(x)$ and $p(x \mid y)$ at once. At sampling, both are computed in **one**
# batched call on $[x;\,x]$ with labels $[\varnothing;\,y]$ (the unconditional half first, as diffusers does).
# The combination is affine with weights $1-w$ and $w$, and $x_0$ and $v$ are affine in $\epsilon$ at fixed $x_t$
# (E13, E14), so it applies unchanged to $x_0$- and $v$-prediction models.
#
# On the oracle the conditional model is component $y$'s exact $\epsilon$ and the unconditional one the
# mixture's. The guided $\epsilon$, read as a score, must be the score of $p_t(x)\,p_t(y\mid x)^w$:

# %%
eps_models = [c.eps_model(schedule) for c in components] + [eps_model]


def oracle(x, t, labels):
    """The exact conditional eps model: component y for label y, the whole mixture for the null label K."""
    out = np.empty_like(x)
    for k in np.unique(labels):
        rows = labels == k
        out[rows] = eps_models[k](x[rows], t[rows])
    return out


y_cfg, w_check = 2, 3.0
cfg = guidance.classifier_free(oracle, y_cfg, w_check, null_label=NULL)
score_guided = -cfg(x_check, t_batch) / coefficients(t_check)[1]
tilted = central_gradient(lambda v: noised.log_prob(v) + w_check * np.log(noised.responsibilities(v)[:, y_cfg]),
                          x_check)
err = np.abs(score_guided - tilted).max() / np.abs(tilted).max()
print(f"E39 + E41, w = {w_check}: max |score of the guided eps - grad log p(x) p(y | x)^w| = {err:.1e} (relative)")
assert err < 1e-6

# %% [markdown]
# Sampling with growing $w$. The contours show the tilted *clean* density $p_0(x)\,p_0(y \mid x)^w$. With $w = 1$
# the samples are class 2 itself; with $w > 1$ they are pushed away from the other classes, and much further
# than the tilted clean density: guidance tilts *every* noised density $p_t$, and at large $t$, where the
# classes overlap, $p_t(y\mid x)^w$ pushes hard. The family $p_t(x)\,p_t(y\mid x)^w$ is not the noised version
# of $p_0(x)\,p_0(y\mid x)^w$, so a reverse-time sampler does not end at the latter. What holds exactly is E39 at
# each level: Langevin dynamics at one fixed small $t$ with the guided score (E25) does draw
# $p_t(x)\,p_t(y \mid x)^w$ (the test suite checks its moments against a grid).

# %%
W_2D = (0.0, 1.0, 2.0, 4.0)
x_T = np.random.default_rng(4).standard_normal((N, 2))
cfg_samples = {w: ddim.sample(guidance.classifier_free(oracle, y_cfg, w, null_label=NULL), (N, 2), rng,
                              num_inference_steps=DDIM_STEPS, x_T=x_T, dtype=np.float64, progress=False)
               for w in W_2D}


def tilted_clean_density(w):
    log_p = gmm.log_prob(grid_points) + w * np.log(gmm.responsibilities(grid_points)[:, y_cfg])
    p = np.exp(log_p - log_p.max())
    return p / p.sum()


fig, axes = plt.subplots(1, len(W_2D), figsize=(15, 4))
for ax, w in zip(axes, W_2D, strict=True):
    ax.contour(u, u, tilted_clean_density(w).reshape(201, 201), levels=6, colors="k", linewidths=0.7)
    ax.scatter(*cfg_samples[w].T, s=2, color="C2", alpha=0.5, label="CFG samples (DDIM)")
    ax.plot([], [], color="k", linewidth=0.7, label=r"$p_0(x)\,p_0(y|x)^w$")
    ax.set_title(f"class {y_cfg}, w = {w:g}")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-2.5, 2.5)
    ax.set_aspect("equal")
    legend(ax, fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()

reference_2 = components[y_cfg].sample(rng, 20000)
tilted_mean = {w: tilted_clean_density(w) @ grid_points for w in W_2D}
for w in W_2D:
    print(f"w = {w:g}: sample mean {cfg_samples[w].mean(axis=0).round(3)}, mean of p0 p0(y|x)^w "
          f"{tilted_mean[w].round(3)}, mean distance to the nearest other class: "
          f"{distance_to_others(cfg_samples[w], y_cfg).mean():.3f}")
assert z_scores(cfg_samples[1.0], reference_2).max() < 5  # w = 1: the class itself
assert z_scores(cfg_samples[4.0], tilted_mean[4.0][None]).max() > 5  # w = 4: not the tilted clean density
gains = [paired_gain(distance_to_others(cfg_samples[b], y_cfg), distance_to_others(cfg_samples[a], y_cfg))
         for a, b in itertools.pairwise(W_2D)]
assert all(g > 5 * se for g, se in gains)  # every increase of w pushes the samples further from the other classes

# %% [markdown]
# Langevin at $t = 1$ with the same guided score (a step of 0.003, 300 steps) moves the $w = 4$ samples to the
# tilted density of that level, $p_1(x)\,p_1(y\mid x)^4$ (its mean from a grid; at $t = 1$, $\bar\alpha_1 = 1 -
# 10^{-4}$, it is nearly the tilted clean density):

# %%
w_lv, t_lv = 4.0, 1
score_lv = guidance.classifier_free(oracle, y_cfg, w_lv, null_label=NULL)
a_lv, b_lv = coefficients(t_lv)
x_lv = langevin_dynamics(lambda v: -score_lv(v, np.full(N, t_lv)) / b_lv, cfg_samples[w_lv] * a_lv, 0.003, 300, rng)
noised_lv = gmm.noised(a_lv, b_lv)
log_p_lv = noised_lv.log_prob(grid_points) + w_lv * np.log(noised_lv.responsibilities(grid_points)[:, y_cfg])
p_lv = np.exp(log_p_lv - log_p_lv.max())
mean_lv = (p_lv / p_lv.sum()) @ grid_points
print(f"after Langevin: mean {x_lv.mean(axis=0).round(3)}; tilted density at t = 1: {mean_lv.round(3)}, "
      f"at t = 0: {tilted_mean[w_lv].round(3)}")
assert z_scores(x_lv, mean_lv[None]).max() < 5

# %% [markdown]
# ## 4. Negative conditioning [E42]
#
# Replace the unconditional prediction by the prediction for a label to avoid [E42]:
#
# $$\epsilon_\text{guided} = \epsilon_\text{neg} + w\,(\epsilon_\text{pos} - \epsilon_\text{neg}),$$
#
# the score of $p_t(x\mid \text{neg})\,\big(p_t(\text{pos}\mid x)/p_t(\text{neg}\mid x)\big)^w$ (apply E39 to
# both labels): guidance toward "pos" *and away from* "neg". This is the negative prompt of text-to-image
# pipelines. Class 2 guided with class 1 as the negative label, from the same $x_T$:

# %%
negative_samples = ddim.sample(guidance.classifier_free(oracle, y_cfg, 3.0, negative=1, null_label=NULL), (N, 2),
                               rng, num_inference_steps=DDIM_STEPS, x_T=x_T, dtype=np.float64, progress=False)
plain_samples = ddim.sample(guidance.classifier_free(oracle, y_cfg, 3.0, null_label=NULL), (N, 2), rng,
                            num_inference_steps=DDIM_STEPS, x_T=x_T, dtype=np.float64, progress=False)
distance = {name: np.linalg.norm(x - gmm.means[1], axis=1) for name, x in
            (("plain", plain_samples), ("negative", negative_samples))}
gain, se = paired_gain(distance["negative"], distance["plain"])
print(f"mean distance from class 1's mean: {distance['plain'].mean():.3f} (null label) -> "
      f"{distance['negative'].mean():.3f} (class 1 negative)")
assert gain > 5 * se

fig, ax = plt.subplots(figsize=(8, 5))
ax.scatter(*background.T, s=2, c="lightgray", label="data")
ax.scatter(*plain_samples.T, s=2, color="C2", label="class 2, w = 3")
ax.scatter(*negative_samples.T, s=2, color="C3", label="class 2, w = 3, negative: class 1")
ax.scatter(*gmm.means[1], marker="x", s=60, color="k", label="mean of class 1")
ax.set_xlabel("$x_1$")
ax.set_ylabel("$x_2$")
ax.set_aspect("equal")
ax.set_title("negative conditioning")
legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Guidance rescale
#
# A large $w$ inflates the guided prediction: $\epsilon_\text{cond} - \epsilon_\text{uncond}$ is added $w$ times,
# so the spread of $\epsilon_\text{guided}$ over an image grows with $w$ and samples come out over-saturated. Lin et
# al. (2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4) rescale each example's
# guided prediction to the standard deviation of its conditional prediction, then mix by $\phi$:
#
# $$\hat\epsilon = \phi\,\epsilon_\text{guided}\,\frac{\operatorname{std}(\epsilon_\text{cond})}
#   {\operatorname{std}(\epsilon_\text{guided})} + (1-\phi)\,\epsilon_\text{guided} .$$
#
# `classifier_free(..., rescale=phi)` applies it after the combination; $\phi = 0$ is plain guidance. We measure it
# on the digits model below.
#
# ## 6. Digits: a class-conditional U-Net and the $w$ sweep
#
# The U-Net of chapter 07 takes class labels through an embedding table added to the timestep embedding
# (`num_class_embeds`); for classifier-free guidance the table has one row more, the null label 10. The `Trainer`
# replaces each label by 10 with probability `label_dropout = 0.1`. Training settings are the demo's (v-prediction,
# cosine schedule, min-SNR 5, EMA), sampling is DPM-Solver++ with 20 steps; the judge is the demo's feature
# classifier (`metrics.train_classifier`), trained on clean digits. Everything trains once here and is reused.

# %%
demo = DemoConfig()
train_x, train_y = digits("train")  # (1500, 1, 8, 8) in [-1, 1], labels 0..9
test_x, test_y = digits("test")
digit_schedule = NoiseSchedule.named(demo.schedule, demo.num_train_timesteps)
CFG_STEPS, TOKEN_STEPS = (20, 20) if FAST else (500, 400)  # training steps of the two U-Nets
SAMPLER_STEPS = 5 if FAST else demo.sampler_steps
PER_DIGIT = 3 if FAST else 12
workdir = tempfile.mkdtemp(prefix="minidiff-ch08-")


def digits_unet(seed, **conditioning):
    """The demo's U-Net ((16, 32) channels, one block per level; tiny in fast mode) with a conditioning input."""
    return UNet(sample_size=8, in_channels=1, out_channels=1,
                block_out_channels=(8, 16) if FAST else demo.block_out_channels, layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                attention_head_dim=None, norm_num_groups=4 if FAST else demo.norm_num_groups,
                rng=np.random.default_rng(seed), **conditioning)


def train(model, labels, run, steps, null_label, label_dropout):
    """Train on the digits with these labels, the demo's settings plus label dropout; the model ends with its EMA
    weights. Returns the trainer's result."""
    config = dataclasses.replace(demo.train_config(seed=0, minutes=None, steps=steps),
                                 label_dropout=label_dropout, null_label=null_label)
    trainer = Trainer(model, config, (train_x, labels), os.path.join(workdir, run), show_progress=False)
    result = trainer.train()
    trainer.ema.copy_to(model)
    return result


judge, judge_accuracy = metrics.train_classifier(train_x, train_y, np.random.default_rng(5),
                                                 steps=60 if FAST else demo.classifier_steps, test=(test_x, test_y))
unet = digits_unet(6, num_class_embeds=11)
cfg_run = train(unet, train_y, "cfg", CFG_STEPS, null_label=10, label_dropout=0.1)
print(f"judge: test accuracy {judge_accuracy:.3f}; U-Net: {cfg_run.last_step} steps, last losses "
      f"{np.mean(cfg_run.losses[-20:]):.3f} (first {np.mean(cfg_run.losses[:20]):.3f})")
assert np.mean(cfg_run.losses[-10:]) < np.mean(cfg_run.losses[:10])

# %%
digit_sampler = DPMSolverMultistepSampler(digit_schedule, prediction_type=demo.objective)
digit_labels = np.repeat(np.arange(10), PER_DIGIT)  # (10 * PER_DIGIT,)
digit_shape = (len(digit_labels), 1, 8, 8)
cond_unet = guidance.conditional(unet)  # null label 10 = num_class_embeds - 1


def sample_digits(model, seed=7):
    """DPM-Solver++ samples from one seed (the same x_T for every call), clipped to [-1, 1]."""
    x = digit_sampler.sample(model, digit_shape, np.random.default_rng(seed), num_inference_steps=SAMPLER_STEPS,
                             progress=False)
    return np.clip(x, -1, 1).astype(np.float32)


def judge_probabilities(images):
    """The judge's softmax (N, 10)."""
    with md.no_grad():
        return F.softmax(judge(md.tensor(images.astype(np.float32))), axis=1).data.astype(np.float64)


def accuracy(images, labels):
    hits = judge_probabilities(images).argmax(axis=1) == labels
    return hits.mean(), hits.std() / math.sqrt(len(hits))


def diversity(images, labels):
    """Mean over classes of the trace of the covariance of the judge's features (the spread within a class)."""
    features = metrics.classifier_features(judge, images)
    return float(np.mean([np.trace(np.cov(features[labels == k].T)) for k in range(10)]))


W_SWEEP = (0, 1, 2, 3, 5, 8)
sweep = {w: sample_digits(guidance.classifier_free(cond_unet, digit_labels, w)) for w in W_SWEEP}
sweep_accuracy = {w: accuracy(x, digit_labels) for w, x in sweep.items()}
sweep_diversity = {w: diversity(x, digit_labels) for w, x in sweep.items()}
real_rows = np.concatenate([np.flatnonzero(test_y == k)[:PER_DIGIT] for k in range(10)])
real_diversity = diversity(test_x[real_rows], test_y[real_rows])
for w in W_SWEEP:
    acc, se = sweep_accuracy[w]
    print(f"w = {w}: judged as the requested digit {acc:.1%} (s.e. {se:.1%}), feature spread {sweep_diversity[w]:.1f}")
print(f"test digits: feature spread {real_diversity:.1f}")

# %%
fig, axes = plt.subplots(2, 3, figsize=(12, 8.5))
for ax, w in zip(axes.ravel(), W_SWEEP, strict=True):
    columns = np.arange(len(digit_labels)).reshape(10, PER_DIGIT)[:, :8].ravel()  # rows = digits 0..9
    ax.imshow(viz.image_grid(sweep[w][columns], nrow=min(8, PER_DIGIT))[..., 0], cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(f"w = {w}: {sweep_accuracy[w][0]:.0%} judged correct")
    ax.set_xlabel("samples (the same x_T in every panel)")
    ax.set_ylabel("requested digit 0 (top) .. 9 (bottom)")
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
ax1.errorbar(W_SWEEP, [sweep_accuracy[w][0] for w in W_SWEEP], yerr=[sweep_accuracy[w][1] for w in W_SWEEP],
             marker="o", capsize=3, label="samples")
ax1.axhline(0.1, color="gray", linestyle=":", label="chance")
ax1.set_xlabel("guidance scale w")
ax1.set_ylabel("fraction judged as the requested digit")
ax1.set_ylim(0, 1.05)
ax1.set_title("fidelity")
ax1.legend()
ax2.plot(W_SWEEP, [sweep_diversity[w] for w in W_SWEEP], marker="o", label="samples")
ax2.axhline(real_diversity, color="gray", linestyle="--", label="test digits")
ax2.set_xlabel("guidance scale w")
ax2.set_ylabel("mean within-class trace of feature covariance")
ax2.set_title("diversity")
ax2.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# At $w = 0$ the label is ignored and about one sample in ten is judged the requested digit; at $w = 1$ the
# conditional model alone already gets most right; larger $w$ pushes the rest over, while the spread of the
# samples within a class shrinks steadily (at $w = 0$ the "class" is any digit, hence the large spread; compare
# the printed spread of real test digits): fidelity bought with diversity, the trade-off Ho & Salimans describe.
# (In fast mode the networks are barely trained and only the code path runs.) The full run checks:

# %%
if not FAST:
    acc0, acc1, acc3 = (sweep_accuracy[w][0] for w in (0, 1, 3))
    assert acc0 < 0.25 and acc1 > acc0 + 0.5 and acc3 >= 0.9
    assert all(sweep_diversity[a] > sweep_diversity[b] for a, b in itertools.pairwise(W_SWEEP[1:]))

# %% [markdown]
# **Negative conditioning on digits.** Ask for 9s with 4 as the negative label at $w = 2$, from the same $x_T$ as
# plain guidance: the judge's log-probability of "4" drops.

# %%
nines = np.full(len(digit_labels), 9)
plain_9 = sample_digits(guidance.classifier_free(cond_unet, nines, 2.0))
avoid_4 = sample_digits(guidance.classifier_free(cond_unet, nines, 2.0, negative=4))
log_p4 = {name: np.log(judge_probabilities(x)[:, 4] + 1e-12) for name, x in (("plain", plain_9), ("neg", avoid_4))}
drop, se = paired_gain(log_p4["plain"], log_p4["neg"])
print(f"mean log p(4 | sample): {log_p4['plain'].mean():.2f} (null label) -> {log_p4['neg'].mean():.2f} "
      f"(negative label 4); 9s judged: {accuracy(plain_9, nines)[0]:.0%} -> {accuracy(avoid_4, nines)[0]:.0%}")
if not FAST:
    assert drop > 5 * se

fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for ax, (images, title) in zip(axes, ((plain_9, "9, w = 2"), (avoid_4, "9, w = 2, negative: 4")), strict=True):
    ax.imshow(viz.image_grid(images[:16], nrow=8)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("samples (same x_T)")
    ax.set_ylabel("")
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# **Rescale, measured.** The per-example standard deviation of the model's guided prediction relative to its
# conditional prediction, at one step ($t = 500$) on noised test digits: it grows with $w$, and $\phi = 1$ brings
# it back to 1 exactly (then $\phi$ mixes between the two).

# %%
x500 = q_sample(digit_schedule, test_x[:64], 500, rng=rng)
t500 = np.full(64, 500)
cond_pred = cond_unet(x500, t500, test_y[:64])
for w in (3.0, 8.0):
    for phi in (0.0, 0.7, 1.0):
        pred = guidance.classifier_free(cond_unet, test_y[:64], w, rescale=phi)(x500, t500)
        ratio = pred.reshape(64, -1).std(axis=1) / cond_pred.reshape(64, -1).std(axis=1)
        print(f"w = {w:g}, phi = {phi}: std(guided) / std(cond) = {ratio.mean():.3f} (mean over 64 digits)")
        if phi == 1.0:
            assert np.allclose(ratio, 1.0, atol=1e-5)

# %% [markdown]
# ## 7. Classifier guidance on digits
#
# Now the original recipe on images: an unconditional model (here the same U-Net with the null label) plus a
# `NoisyClassifier` (the U-Net's encoder half with the timestep embedding in every residual block, then a linear
# head) trained on noisy digits with the same cosine schedule. Its accuracy falls as $t$ grows, as it must:
# noise destroys the label. Guiding with its gradient at scale $s$, judged by the clean-data classifier:

# %%
noisy_digits, _ = guidance.train_noisy_classifier(
    train_x, train_y, digit_schedule, 30 if FAST else 600, np.random.default_rng(8),
    classifier=NoisyClassifier((1, 8, 8), 10, channels=(8, 16) if FAST else (16, 32),
                               norm_num_groups=4 if FAST else 8, rng=np.random.default_rng(9)))
for t in (50, 300, 600, 900):
    x_t = q_sample(digit_schedule, test_x, t, rng=rng)
    acc = np.mean(guidance.class_probabilities(noisy_digits, x_t, t).argmax(axis=1) == test_y)
    print(f"NoisyClassifier on noisy test digits, t = {t}: accuracy {acc:.3f}")


def unconditional(x, t):
    return cond_unet(x, t, np.full(len(x), cond_unet.null_label))


S_SWEEP = (0.0, 1.0, 3.0)
cg_accuracy = {}
for s in S_SWEEP:
    model = guidance.classifier_guided(unconditional, noisy_digits, digit_labels, digit_schedule, scale=s,
                                       prediction_type=demo.objective)
    cg_accuracy[s] = accuracy(sample_digits(model), digit_labels)
    print(f"classifier guidance s = {s:g}: judged as the requested digit {cg_accuracy[s][0]:.1%} "
          f"(s.e. {cg_accuracy[s][1]:.1%})")
if not FAST:
    assert cg_accuracy[3.0][0] > cg_accuracy[0.0][0] + 5 * cg_accuracy[3.0][1]

# %% [markdown]
# ## 8. Conditioning by cross-attention [E45]
#
# A class embedding added to the timestep embedding works for a handful of labels. Text-to-image models condition
# on a *sequence* instead (the encoded prompt), read by cross-attention: queries from the image features, keys
# and values from the context tokens, $\mathrm{softmax}(QK^\top/\sqrt d)\,V$ [E45] (chapter 07). Here a digit is
# described by three tokens of a 15-word vocabulary: its identity (0..9), its parity ("even" 10, "odd" 11) and its
# size ("< 5" 12, "≥ 5" 13); 14 is the null token. A learned table turns tokens into the context vectors, trained
# jointly with the U-Net, whose only conditioning input is now the cross-attention in its middle block. The
# `Trainer` drops each token to the null token independently (probability 0.3), so the model also learns partial
# descriptions: "even and ≥ 5" without the digit must give a 6 or an 8.

# %%
class TokenConditionedUNet(Module):
    """tokens (B, L) -> context (B, L, dim) by a learned table -> the U-Net's cross-attention."""

    def __init__(self, unet, vocabulary, dim, rng):
        super().__init__()
        self.unet = unet
        self.tokens = Embedding(vocabulary, dim, rng=rng)

    @property
    def null_class_label(self):
        return self.tokens.num_embeddings - 1  # the null token, as the UNet's null label

    def forward(self, x, t, tokens):
        return self.unet(x, t, context=self.tokens(tokens))


def describe(digit_array):
    """(N,) digits -> (N, 3) tokens: identity, parity (10 even, 11 odd), size (12 below 5, 13 at least 5)."""
    return np.stack([digit_array, 10 + digit_array % 2, 12 + (digit_array >= 5)], axis=1)


CONTEXT_DIM = 16 if FAST else 32
token_model = TokenConditionedUNet(digits_unet(10, cross_attention_dim=CONTEXT_DIM), 15, CONTEXT_DIM,
                                   np.random.default_rng(11))
token_run = train(token_model, describe(train_y), "tokens", TOKEN_STEPS, null_label=14, label_dropout=0.3)
cond_tokens = guidance.conditional(token_model)
full_context = sample_digits(guidance.classifier_free(cond_tokens, describe(digit_labels), 3.0))
token_accuracy = accuracy(full_context, digit_labels)
print(f"cross-attention, full description, w = 3: judged as the described digit {token_accuracy[0]:.1%} "
      f"(s.e. {token_accuracy[1]:.1%})")

ATTRIBUTES = {"even, ≥ 5": (10, 13), "odd, ≥ 5": (11, 13), "even, < 5": (10, 12), "odd, < 5": (11, 12)}
attribute_samples, attribute_match = {}, {}
for name, (parity, size) in ATTRIBUTES.items():
    tokens = np.tile([14, parity, size], (len(digit_labels), 1))  # no digit token: only the attributes
    attribute_samples[name] = sample_digits(guidance.classifier_free(cond_tokens, tokens, 3.0))
    judged = judge_probabilities(attribute_samples[name]).argmax(axis=1)
    matches = (10 + judged % 2 == parity) & (12 + (judged >= 5) == size)
    members = [d for d in range(10) if 10 + d % 2 == parity and 12 + (d >= 5) == size]
    attribute_match[name] = (matches.mean(), matches.std() / math.sqrt(len(matches)), len(members) / 10)
    print(f"'{name}' (digits {members}): {matches.mean():.0%} of samples judged as such a digit "
          f"(chance {len(members) / 10:.0%})")
if not FAST:
    assert token_accuracy[0] > 0.8
    assert all(m > chance + 5 * se for m, se, chance in attribute_match.values())

# %%
fig, axes = plt.subplots(1, 1 + len(ATTRIBUTES), figsize=(14, 4.8))
rows = np.arange(len(digit_labels)).reshape(10, PER_DIGIT)[:, :4].ravel()
axes[0].imshow(viz.image_grid(full_context[rows], nrow=min(4, PER_DIGIT))[..., 0], cmap="gray", vmin=0, vmax=1,
               interpolation="nearest")
axes[0].set_title(f"full description, {token_accuracy[0]:.0%} correct")
axes[0].set_ylabel("described digit 0 (top) .. 9 (bottom)")
for ax, name in zip(axes[1:], ATTRIBUTES, strict=True):
    ax.imshow(viz.image_grid(attribute_samples[name][:20], nrow=4)[..., 0], cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(f"'{name}': {attribute_match[name][0]:.0%} such digits")
    ax.set_ylabel("")
for ax in axes:
    ax.set_xlabel("samples")
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 9. Side by side with diffusers
#
# The guidance arithmetic is diffusers' `ClassifierFreeGuidance` guider (its `guidance_scale` and
# `guidance_rescale`, the latter through `rescale_noise_cfg`), compared on the digit U-Net's batched output; and
# since a guided model is just a model function, diffusers' `DPMSolverMultistepScheduler` stepping the guided
# oracle follows the same trajectory as minidiff's sampler from the same $x_T$.

# %%
diffusers = md.optional_reference("diffusers", "the comparison with diffusers' guider and scheduler")

if diffusers is not None:
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its guiders announce themselves as experimental on import
    from diffusers.guiders import ClassifierFreeGuidance

    batched = cond_unet(np.concatenate([x500, x500]), np.concatenate([t500, t500]),
                        np.concatenate([np.full(64, 10), test_y[:64]])).astype(np.float64)
    uncond_pred, cond_pred64 = batched[:64], batched[64:]
    guider_gap = 0.0
    for w, phi in ((3.0, 0.0), (7.5, 0.7)):
        ours = guidance.rescale_guidance(guidance.guided_combination(batched, w), cond_pred64, phi)
        guider = ClassifierFreeGuidance(guidance_scale=w, guidance_rescale=phi)
        theirs = guider.forward(torch.from_numpy(cond_pred64), torch.from_numpy(uncond_pred)).pred.numpy()
        guider_gap = max(guider_gap, float(np.abs(ours - theirs).max()))
    print(f"max |minidiff - diffusers guider| = {guider_gap:.1e} (predictions of size {np.abs(batched).max():.1f})")
    assert guider_gap < 1e-12

    guided_oracle = guidance.classifier_free(oracle, y_cfg, 3.0, null_label=NULL)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                            beta_end=0.02)
    scheduler.set_timesteps(20)
    z = x_T[:200].copy()
    x = torch.from_numpy(z.copy())
    for k in scheduler.timesteps:
        out = guided_oracle(x.numpy(), np.full(len(z), int(k) + 1))  # diffusers' k is minidiff's t = k + 1
        x = scheduler.step(torch.from_numpy(out), k, x).prev_sample
    ours = DPMSolverMultistepSampler.from_config(dict(scheduler.config)).sample(
        guided_oracle, z.shape, rng, num_inference_steps=20, x_T=z, dtype=np.float64, progress=False)
    scheduler_gap = float(np.abs(ours - x.numpy()).max())
    print(f"guided oracle, 20 DPM-Solver++ steps: max |minidiff - diffusers| = {scheduler_gap:.1e}")
    assert scheduler_gap < 1e-5  # diffusers keeps its schedule in float32

# %% [markdown]
# ## Summary
#
# * Bayes' rule for scores [E39]: $\nabla\log p_t(x\mid y) = \nabla\log p_t(x) + \nabla\log p_t(y\mid x)$; the
#   evidence drops out, so conditioning adds a term to the score, and scaling that term by $w$ follows the score
#   of the tilted density $p_t(x)\,p_t(y\mid x)^w$ at each noise level.
# * Classifier guidance [E40] (Dhariwal & Nichol 2021) adds $-s\sqrt{1-\bar\alpha_t}\,\nabla\log p_\phi(y\mid x_t,
#   t)$ to $\epsilon$, with a classifier trained on noisy $x_t$; the factor converts a score to noise units, and
#   the same formula holds for sigma-based samplers in their own variables.
# * Classifier-free guidance [E41] (Ho & Salimans 2021) gets the classifier from one network trained with label
#   dropout: $\epsilon_\text{uncond} + w(\epsilon_\text{cond} - \epsilon_\text{uncond})$, computed in one batched
#   call, for $\epsilon$, $x_0$ and $v$ predictions alike. Negative conditioning [E42] puts a negative label's
#   prediction in place of the unconditional one. Guidance rescale (Lin et al. 2023) undoes the growth of the
#   prediction's spread.
# * On the oracle, guidance is exact at each level: $w = 1$ and $s = 1$ draw the class, Langevin at a fixed level
#   draws the tilted density; but a full reverse run with $w > 1$ overshoots the tilted *clean* density.
# * On the digits, fidelity rises and diversity falls with $w$; cross-attention on a few context tokens [E45]
#   conditions the same U-Net on a description, including partial ones.
#
# ## Exercises
#
# Open `minidiff/exercises/ch08.py` and fill in:
#
# * **8.1** `guided_combination(output, scale)`: split a batched model output into its unconditional and
#   conditional halves (which comes first?) and combine them by E41. `classifier_free` calls your function at
#   every sampling step.
# * **8.2** `classifier_guided_eps(eps, grad_log_prob, sqrt_one_minus_alpha_bar, scale)`: E40 for a batch whose
#   examples may sit at different $t$ (one $\sqrt{1-\bar\alpha_t}$ each, to broadcast over the pixels).
#   `classifier_guided` calls it.
#
# Grade them with `pytest --student -m ch08`. For 8.1, on the mixture oracle, $-\epsilon_\text{guided}/
# \sqrt{1-\bar\alpha_t}$ must be the score of $p_t(x)\,p_t(y\mid x)^w$ (central differences) and $w = 0, 1$ must give
# the two halves; for 8.2, $s = 1$ with the exact posterior must give the conditional $\epsilon$ and $s = 2$ the
# $\epsilon$ of $p_t(x)\,p_t(y\mid x)^2$, for examples at different $t$.
