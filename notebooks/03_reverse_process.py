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
# # 03 · The reverse process: posterior, parameterizations, ancestral sampling
#
# Chapter 02 destroyed data with a fixed chain $q(x_t \mid x_{t-1})$. Generating means running that chain
# backwards, from noise to data, one step $p_\theta(x_{t-1} \mid x_t)$ at a time. This chapter derives the
# one backward step we *can* write down (the posterior, which knows $x_0$), shows the three ways a network
# can express its guess of $x_0$, and samples with the exact reverse process of a dataset simple enough
# to know it in closed form.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff.diffusion import (
    NoiseSchedule,
    ancestral_step_coefs,
    linear_betas,
    p_mean_variance,
    p_sample_loop,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior_mean_variance,
    q_sample,
    reverse_variance,
    score_from_eps,
    v_from_eps_x0,
)
from minidiff.kernels import sampler_step

FAST = md.fast_mode()
T = 100 if FAST else 1000
N = 4000 if FAST else 40000
rng = np.random.default_rng(0)
schedule = NoiseSchedule(linear_betas(T))

# %% [markdown]
# ## 1. The posterior: one backward step we can compute
#
# $q(x_{t-1} \mid x_t)$ is intractable (it depends on the whole data distribution), but once $x_0$ is
# known Bayes' rule gives $q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\,q(x_{t-1} \mid x_0)$, a product
# of two Gaussians in $x_{t-1}$ (chapter 02's one step and marginal). Collect the exponent:
#
# $$-\frac12\left[\frac{(x_t - \sqrt{\alpha_t}\,x_{t-1})^2}{\beta_t}
#   + \frac{(x_{t-1} - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{1-\bar\alpha_{t-1}}\right].$$
#
# The coefficient of $x_{t-1}^2$ is the precision
# $\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}} = \frac{1-\bar\alpha_t}{\beta_t(1-\bar\alpha_{t-1})}$
# (use $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = 1-\bar\alpha_t$); completing the square gives [E11]
#
# $$q(x_{t-1}\mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I),\quad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
#   + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,\quad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# The schedule computes these coefficients once. A check without algebra: Bayes' rule on a grid.

# %%
t, x0_value, xt_value = T // 2, 0.8, -0.3
mean, variance, _ = q_posterior_mean_variance(schedule, np.array([x0_value]), np.array([xt_value]), t)
grid = np.linspace(mean[0] - 10 * math.sqrt(variance[0]), mean[0] + 10 * math.sqrt(variance[0]), 20001)
beta, ab_prev = schedule.betas[t], schedule.alpha_bars[t - 1]
log_joint = (-(xt_value - math.sqrt(1 - beta) * grid) ** 2 / (2 * beta)
             - (grid - math.sqrt(ab_prev) * x0_value) ** 2 / (2 * (1 - ab_prev)))
weights = np.exp(log_joint - log_joint.max())
weights /= np.trapezoid(weights, grid)
grid_mean = np.trapezoid(weights * grid, grid)
grid_var = np.trapezoid(weights * (grid - grid_mean) ** 2, grid)
print(f"E11: mean {mean[0]:.8f}, variance {variance[0]:.8e};  grid: mean {grid_mean:.8f}, variance {grid_var:.8e}")
assert math.isclose(grid_mean, mean[0], rel_tol=1e-8) and math.isclose(grid_var, variance[0], rel_tol=1e-7)

# %% [markdown]
# ## 2. The reverse process
#
# The model is a Markov chain that runs backwards from noise [E9]:
#
# $$p_\theta(x_{0:T}) = p(x_T)\prod_{t=1}^T p_\theta(x_{t-1}\mid x_t),\qquad p(x_T) = \mathcal N(0, I),$$
#
# with Gaussian steps [E10] $p_\theta(x_{t-1}\mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)$. The mean
# imitates the posterior with $x_0$ replaced by the network's estimate of it. For the variance DDPM
# tried the two extremes $\sigma_t^2 = \beta_t$ and $\sigma_t^2 = \tilde\beta_t$ (optimal when the data is a
# single point; $\beta_t$ is optimal for data $\mathcal N(0, I)$); improved DDPM learns an interpolation
# $\log\sigma_t^2 = f\log\beta_t + (1-f)\log\tilde\beta_t$, $f = (v+1)/2$, from an extra network output $v$.
# The two bounds differ only at small $t$:

# %%
steps = np.arange(2, T + 1)
ratio = schedule.posterior_variance[steps] / schedule.betas[steps]
plt.figure(figsize=(5, 3))
plt.semilogx(steps, ratio)
plt.xlabel("t")
plt.ylabel(r"$\tilde\beta_t / \beta_t$")
plt.tight_layout()
plt.show()
assert np.all(ratio < 1) and ratio[-1] > 0.99
like = np.zeros((1, 3))
learned, _ = reverse_variance(schedule, 10, like, "learned_range", var_output=np.array([[-1.0, 0.0, 1.0]]))
print("learned range at t = 10 for v = -1, 0, 1:", learned.ravel(), " (beta_tilde, geometric mean, beta)")

# %% [markdown]
# ## 3. What the network predicts
#
# Given $x_t$ and $t$, the relation $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ links the clean
# data and the noise, so a network may predict either. DDPM predicts the noise $\epsilon_\theta$, which
# gives the estimate [E13] $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$; putting it
# into $\tilde\mu_t$ simplifies to [E12]
#
# $$\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}
#   \left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta(x_t, t)\right),$$
#
# and training then regresses the noise,
# $L_\text{simple} = \mathbb E\,\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2$ [E15]
# (chapter 04 derives it from the likelihood). A third choice is the *velocity* [E14]
# $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$: writing $\sqrt{\bar\alpha_t} = \cos\phi$, $x_t$ is
# $x_0$ rotated towards $\epsilon$ by the angle $\phi$, and $v = dx_t/d\phi$. It stays informative at both
# ends, including $t = T$ of a zero-terminal-SNR schedule where $\epsilon$ says nothing about $x_0$.
# The noise is also the score, up to scale: $\nabla_{x_t}\log q(x_t\mid x_0) = -\epsilon/\sqrt{1-\bar\alpha_t}$
# (chapter 05). All are interconvertible given $x_t$:

# %%
x0 = rng.uniform(-1, 1, (5, 3))
eps = rng.standard_normal((5, 3))
t = 37 if FAST else 370
xt = q_sample(schedule, x0, t, noise=eps)
v = v_from_eps_x0(schedule, eps, x0, t)
errors = {
    "eps -> x0": np.abs(predict_x0_from_eps(schedule, xt, t, eps) - x0).max(),
    "x0 -> eps": np.abs(predict_eps_from_x0(schedule, xt, t, x0) - eps).max(),
    "v -> x0": np.abs(predict_x0_from_v(schedule, xt, t, v) - x0).max(),
    "v -> eps": np.abs(predict_eps_from_v(schedule, xt, t, v) - eps).max(),
}
for name, err in errors.items():
    print(f"{name:>9}: max error {err:.1e}")
    assert err < 1e-12
score = score_from_eps(schedule, eps, t)
assert np.allclose(score, -(xt - schedule.sqrt_alpha_bars[t] * x0) / schedule.one_minus_alpha_bars[t])

# %% [markdown]
# Whichever quantity a network outputs, `p_mean_variance` turns it into the same Gaussian step:

# %%
steps_by_kind = {kind: p_mean_variance(schedule, out, xt, t, prediction_type=kind)
                 for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v))}
for kind, step in steps_by_kind.items():
    assert np.allclose(step.mean, steps_by_kind["epsilon"].mean, atol=1e-12), kind

# %% [markdown]
# ## 4. Ancestral sampling with the exact reverse process
#
# For data $x_0 \sim \mathcal N(\mu, s^2 I)$ everything is Gaussian, so the best possible network is known.
# $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ has variance
# $V_t = \bar\alpha_t s^2 + 1 - \bar\alpha_t$
# and covariance $\sqrt{1-\bar\alpha_t}$ with $\epsilon$, hence the optimal noise predictor
#
# $$\epsilon^*(x_t, t) = \mathbb E[\epsilon\mid x_t]
#   = \frac{\sqrt{1-\bar\alpha_t}}{V_t}\left(x_t - \sqrt{\bar\alpha_t}\,\mu\right),$$
#
# and with it E12's mean *is* the true $\mathbb E[x_{t-1}\mid x_t]$. The true reverse step also has a known
# variance, $\mathrm{Var}(x_{t-1}\mid x_t) = V_{t-1} - \alpha_t V_{t-1}^2/V_t$ (Gaussian conditioning: $x_{t-1}$
# and $x_t$ have covariance $\sqrt{\alpha_t}V_{t-1}$), and the true $x_T$ is
# $\mathcal N(\sqrt{\bar\alpha_T}\mu, V_T)$. Ancestral sampling [E16] draws $x_T$, then
# $x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z$ for $t = T, \dots, 1$ (no noise at the last step): with these
# ingredients it must reproduce the data in distribution, up to the last step, which returns the mean
# $\mathbb E[x_0 \mid x_1]$ instead of a draw (a variance $\sigma_1^2$ of about $\beta_1$ less, invisible in an
# image). With the fixed variances the means are
# still right but the spread is not: the chain is linear, so the variance of $x_0$ it produces can be
# propagated step by step and compared with the samples.

# %%
mu, s = np.array([0.5, -1.0]), 0.3
ab = schedule.alpha_bars
V = ab * s**2 + 1 - ab  # V_t for t = 0..T


def eps_star(xt, t):
    a = ab[t][:, None]
    return np.sqrt(1 - a) / (a * s**2 + 1 - a) * (xt - np.sqrt(a) * mu)


exact_variance = np.ones(T + 1)
exact_variance[1:] = V[:-1] - schedule.alphas[1:] * V[:-1] ** 2 / V[1:]
x_T = np.sqrt(ab[T]) * mu + np.sqrt(V[T]) * rng.standard_normal((N, 2))
gain = np.sqrt(schedule.alphas[1:]) * V[:-1] / V[1:]  # x_{t-1} = gain_t x_t + ... + sigma_t z, for t = 1..T
results = {}
for name, variance_type in (("exact", exact_variance), ("beta_tilde", "fixed_small"), ("beta", "fixed_large")):
    samples = p_sample_loop(schedule, eps_star, (N, 2), rng, x_T=x_T, variance_type=variance_type)
    # the variance x_0 must have: propagate Var(x_{t-1}) = gain_t^2 Var(x_t) + sigma_t^2 from Var(x_T) = V_T
    predicted = V[T]
    for step_t in range(T, 0, -1):
        sigma2 = 0.0 if step_t == 1 else reverse_variance(schedule, step_t, like, variance_type)[0][0, 0]
        predicted = gain[step_t - 1] ** 2 * predicted + sigma2
    results[name] = (samples, predicted)
    print(f"{name:>10}: mean {samples.mean(axis=0).round(3)}, sd {samples.std(axis=0).round(3)}, "
          f"predicted sd {math.sqrt(predicted):.3f}  (data: mean {mu}, sd {s})")
    # 5 standard errors: of a mean, sd / sqrt(N); of a Gaussian sample variance, var sqrt(2 / N)
    assert np.all(np.abs(samples.mean(axis=0) - mu) < 5 * math.sqrt(predicted / N))
    assert np.all(np.abs(samples.var(axis=0) - predicted) < 5 * predicted * math.sqrt(2 / N))
# The exact process gives back the data, except that the last step returns the decoder's mean
# E[x_0 | x_1] (z = 0 at t = 1), which removes Var(x_0 | x_1) = sigma_1^2 from the spread.
assert math.isclose(results["exact"][1], s**2 - exact_variance[1], rel_tol=1e-9)
assert results["beta_tilde"][1] < s**2 < results["beta"][1]  # the two fixed choices bracket it

fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharex=True, sharey=True)
for ax, (name, (samples, _)) in zip(axes, results.items(), strict=True):
    ax.hist(samples[:, 0], bins=60, density=True, alpha=0.7)
    grid = np.linspace(mu[0] - 4 * s, mu[0] + 4 * s, 200)
    ax.plot(grid, np.exp(-((grid - mu[0]) ** 2) / (2 * s**2)) / (s * math.sqrt(2 * math.pi)))
    ax.set_title(name)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. One step, one fused kernel
#
# For a fixed variance each ancestral step is an affine combination of $x_t$, the network output and $z$,
# with scalars that depend only on $t$: exactly the fused `sampler_step` kernel of chapter 00.
# `ancestral_step_coefs` computes those scalars (with the clipped-$\hat x_0$ variant for image models), and
# `p_sample_loop` uses it for every fixed-variance step:

# %%
coefs = ancestral_step_coefs(schedule, t, prediction_type="epsilon", variance_type="fixed_large")
print(coefs)
z = rng.standard_normal(xt.shape)
fused = sampler_step(xt, eps, z, coefs)
step = p_mean_variance(schedule, eps, xt, t, variance_type="fixed_large")
assert np.allclose(fused, step.mean + np.sqrt(step.variance) * z, atol=1e-12)

# %% [markdown]
# ## Exercises
#
# Open `minidiff/exercises/ch03.py` and fill in:
#
# * **3.1** `posterior_coefficients`: the three arrays of [E11] over $t = 1..T$, written with array slices
#   (which index is $t$, which is $t-1$?);
# * **3.2** `predict_x0_from_eps`: [E13].
#
# Grade them with `pytest --student -m ch03`: the posterior is compared with the normalized product of two
# Gaussians and with Bayes' rule on a grid; $\hat x_0$ must recover $x_0$ from the true noise and survive
# round trips to $10^{-12}$.
