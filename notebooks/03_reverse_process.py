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
# backwards, from noise to data, one step $p_\theta(x_{t-1} \mid x_t)$ at a time. This chapter
#
# 1. derives the one backward step we *can* write down, the posterior $q(x_{t-1} \mid x_t, x_0)$ that knows the
#    clean data [E11], by completing the square;
# 2. turns a network's guess of $x_0$ into a backward step, in the three ways a network can express it
#    (noise $\epsilon$, data $x_0$, velocity $v$) [E12]-[E14];
# 3. shows why a *Gaussian* backward step is the right family when the steps are small, and only then;
# 4. samples: the ancestral sampler [E9], [E10], [E16], driven by an exact oracle on 2-D data, drawn from noise to
#    data.
#
# Notation as in chapter 02: $\alpha_t = 1 - \beta_t$, $\bar\alpha_t = \prod_{s \le t} \alpha_s$ (so
# $\bar\alpha_0 = 1$), $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ with
# $\epsilon \sim \mathcal N(0, I)$ [E3]. Every covariance in this chapter is a multiple of $I$, so each derivation
# is done for one coordinate and holds for all of them.

# %%
import math

import matplotlib.collections
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff.diffusion import (
    GaussianMixture,
    NoiseSchedule,
    ancestral_step_coefs,
    linear_betas,
    p_mean_from_eps,
    p_mean_variance,
    p_sample,
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
from minidiff.metrics import random_directions, sliced_wasserstein

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI): shorter chains, fewer points
T = 100 if FAST else 1000  # linear_betas rescales DDPM's betas for a short chain (chapter 02)
N = 2000 if FAST else 4000
rng = np.random.default_rng(0)
schedule = NoiseSchedule(linear_betas(T))
ab = schedule.alpha_bars  # alpha_bar_t for t = 0..T
print(f"T = {T} steps, beta_1 = {schedule.betas[1]:.2e}, beta_T = {schedule.betas[T]:.3f}, "
      f"alpha_bar_T = {ab[T]:.1e}")

# %% [markdown]
# ## 1. The backward step we cannot compute, and the one we can
#
# Running the chain backwards needs $q(x_{t-1} \mid x_t)$. Conditioning on the unknown clean data and
# averaging it out,
#
# $$q(x_{t-1} \mid x_t) = \int q(x_{t-1} \mid x_t, x_0)\, q(x_0 \mid x_t)\, dx_0 ,$$
#
# a mixture over every data point that could have produced $x_t$, weighted by how likely each is. The weights
# $q(x_0 \mid x_t)$ need the data distribution itself, which is what we are trying to learn. The other factor
# does not: once $x_0$ is fixed, everything is Gaussian and Bayes' rule can be done by hand.
#
# ### Completing the square for $q(x_{t-1} \mid x_t, x_0)$ [E11]
#
# Write $y = x_{t-1}$ for the unknown. One line per step:
#
# 1. Bayes' rule: $q(y \mid x_t, x_0) = \dfrac{q(x_t \mid y, x_0)\, q(y \mid x_0)}{q(x_t \mid x_0)}$.
# 2. The chain is Markov, so $q(x_t \mid y, x_0) = q(x_t \mid y) = \mathcal N(x_t;\ \sqrt{\alpha_t}\,y,\ \beta_t)$
#    (one forward step, [E1]).
# 3. The marginal at $t-1$: $q(y \mid x_0) = \mathcal N(y;\ \sqrt{\bar\alpha_{t-1}}\,x_0,\ 1-\bar\alpha_{t-1})$ [E3].
# 4. Take logs. The denominator does not depend on $y$; put it and every other $y$-free term into a constant $C$:
#    $\log q(y \mid x_t, x_0) = -\dfrac{(x_t - \sqrt{\alpha_t}\,y)^2}{2\beta_t}
#    - \dfrac{(y - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{2(1-\bar\alpha_{t-1})} + C$.
# 5. Expand both squares: $(x_t - \sqrt{\alpha_t}\,y)^2 = \alpha_t y^2 - 2\sqrt{\alpha_t}\,x_t\,y + x_t^2$ and
#    $(y - \sqrt{\bar\alpha_{t-1}}\,x_0)^2 = y^2 - 2\sqrt{\bar\alpha_{t-1}}\,x_0\,y + \bar\alpha_{t-1}x_0^2$.
# 6. Collect the powers of $y$ (the $x_t^2$ and $x_0^2$ terms join $C$):
#    $\log q(y \mid x_t, x_0) = -\tfrac12 A\,y^2 + B\,y + C'$ with
#    $A = \dfrac{\alpha_t}{\beta_t} + \dfrac{1}{1-\bar\alpha_{t-1}}$ and
#    $B = \dfrac{\sqrt{\alpha_t}}{\beta_t}\,x_t + \dfrac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}}\,x_0$.
# 7. A log-density that is quadratic in $y$ with a negative leading coefficient is a Gaussian. Match it with
#    $\log \mathcal N(y; m, \tau^2) = -\dfrac{y^2}{2\tau^2} + \dfrac{m}{\tau^2}\,y + \text{const}$: the variance is
#    $\tau^2 = 1/A$ and the mean is $m = B/A = B\,\tau^2$.
# 8. The variance. Over a common denominator,
#    $A = \dfrac{\alpha_t(1-\bar\alpha_{t-1}) + \beta_t}{\beta_t(1-\bar\alpha_{t-1})}$, and the numerator
#    is $\alpha_t - \alpha_t\bar\alpha_{t-1} + 1 - \alpha_t = 1 - \bar\alpha_t$
#    (using $\beta_t = 1 - \alpha_t$ and $\alpha_t\bar\alpha_{t-1} = \bar\alpha_t$). So
#    $\tilde\beta_t := \tau^2 = \dfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t$.
# 9. The mean. Multiply each term of $B$ by $\tilde\beta_t$; the $\beta_t$ cancels in the first, the
#    $1-\bar\alpha_{t-1}$ in the second:
#    $\tilde\mu_t = \dfrac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t
#    + \dfrac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0$.
#
# Together, [E11]:
#
# $$q(x_{t-1}\mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I),\quad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
#   + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,\quad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# Step 6 also says what the mean *is*: the precisions add ($A$ is the sum of the precision $\alpha_t/\beta_t$ of
# the forward step read as a function of $y$, and the precision $1/(1-\bar\alpha_{t-1})$ of the marginal), and
# $\tilde\mu_t$ is the precision-weighted average of the two guesses each factor makes on its own: "undo one
# step", $x_t/\sqrt{\alpha_t}$, and "noise $x_0$ to level $t-1$", $\sqrt{\bar\alpha_{t-1}}\,x_0$ (pen-and-paper
# problem 2 writes out the weights). The schedule computes the three coefficients once for every $t$
# (`schedule.posterior_mean_coef_x0`, `posterior_mean_coef_xt`, `posterior_variance`; exercise 3.1).
#
# A check that uses none of this algebra: Bayes' rule numerically, the product of the two factors on a fine
# grid of $y$, normalized by the trapezoid rule.

# %%
def bayes_on_a_grid(t, x0_value, xt_value, grid):
    """q(x_t | y) q(y | x_0) on a grid of y = x_{t-1}, normalized: the posterior by steps 1-3 alone."""
    beta, ab_prev = schedule.betas[t], ab[t - 1]
    log_joint = (-(xt_value - math.sqrt(1 - beta) * grid) ** 2 / (2 * beta)
                 - (grid - math.sqrt(ab_prev) * x0_value) ** 2 / (2 * (1 - ab_prev)))
    weights = np.exp(log_joint - log_joint.max())
    return weights / np.trapezoid(weights, grid)


x0_value, xt_value = 0.8, -0.3
for t in (2, T // 10, T // 2, T):
    mean, variance, _ = q_posterior_mean_variance(schedule, np.array([x0_value]), np.array([xt_value]), t)
    sd = math.sqrt(variance[0])
    grid = np.linspace(mean[0] - 12 * sd, mean[0] + 12 * sd, 40001)
    density = bayes_on_a_grid(t, x0_value, xt_value, grid)
    grid_mean = np.trapezoid(density * grid, grid)
    grid_var = np.trapezoid(density * (grid - grid_mean) ** 2, grid)
    print(f"t = {t:4d}   E11: mean {mean[0]:+.8f}, variance {variance[0]:.6e}   "
          f"grid: mean {grid_mean:+.8f}, variance {grid_var:.6e}")
    assert math.isclose(grid_mean, mean[0], rel_tol=1e-8, abs_tol=1e-9 * sd)
    assert math.isclose(grid_var, variance[0], rel_tol=1e-7)

# %% [markdown]
# The two factors and their product, drawn as densities in $y = x_{t-1}$, for an $x_t$ made from $x_0$ with one
# fixed noise value. Early in the chain ($t$ small) both factors are narrow and the posterior is a compromise
# between them; later the marginal $q(y \mid x_0)$ is wide and the forward step, whose width in $y$ is
# $\sqrt{\beta_t/\alpha_t}$, decides. The product is narrower than either factor (the precisions add).

# %%
def gaussian(y, mean, variance):
    return np.exp(-((y - mean) ** 2) / (2 * variance)) / math.sqrt(2 * math.pi * variance)


fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, t in zip(axes, (2, T // 2), strict=True):
    beta, ab_prev = schedule.betas[t], ab[t - 1]
    xt_value = round(math.sqrt(ab[t]) * x0_value - math.sqrt(1 - ab[t]) * 1.5, 3)  # E3 with eps = -1.5
    mean, variance, _ = q_posterior_mean_variance(schedule, np.array([x0_value]), np.array([xt_value]), t)
    step_mean, step_var = xt_value / math.sqrt(1 - beta), beta / (1 - beta)  # q(x_t | y) as a density in y
    prior_mean, prior_var = math.sqrt(ab_prev) * x0_value, 1 - ab_prev
    span = 4 * math.sqrt(max(step_var, prior_var, variance[0]))
    lo = min(step_mean, prior_mean, mean[0]) - span
    hi = max(step_mean, prior_mean, mean[0]) + span
    y = np.linspace(lo, hi, 2000)
    ax.plot(y, gaussian(y, step_mean, step_var), "--", label=r"$q(x_t \mid y)$, normalized in $y$")
    ax.plot(y, gaussian(y, prior_mean, prior_var), ":", lw=2, label=r"$q(y \mid x_0)$")
    ax.plot(y, gaussian(y, mean[0], variance[0]), "k", label=r"posterior $q(y \mid x_t, x_0)$ [E11]")
    ax.axvline(x0_value, color="0.6", lw=0.8, label=r"$x_0$")
    ax.set_title(f"t = {t}: $x_0$ = {x0_value}, $x_t$ = {xt_value} (made with $\\epsilon$ = -1.5)")
    ax.set_xlabel(r"$y = x_{t-1}$")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### The posterior along the chain
#
# How much of $x_0$ and of $x_t$ the mean takes, and how wide the step is, for every $t$. The weight on $x_0$ is
# near 1 at $t = 1$ and falls towards 0 at large $t$; $\tilde\beta_t$ starts at exactly 0 ($\bar\alpha_0 = 1$:
# given $x_1$ and $x_0$, the previous state $x_0$ is known) and approaches $\beta_t$ once
# $\bar\alpha_{t-1}$ is small, since $\tilde\beta_t/\beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t) < 1$.

# %%
steps = np.arange(1, T + 1)
c0, ct = schedule.posterior_mean_coef_x0[steps], schedule.posterior_mean_coef_xt[steps]
beta_tilde, betas = schedule.posterior_variance[steps], schedule.betas[steps]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
axes[0].plot(steps, c0, label=r"weight of $x_0$: $\sqrt{\bar\alpha_{t-1}}\,\beta_t/(1-\bar\alpha_t)$")
axes[0].plot(steps, ct, label=r"weight of $x_t$: $\sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$")
axes[0].set_title(r"the posterior mean $\tilde\mu_t$")
axes[0].set_ylabel("coefficient")
axes[1].semilogy(steps[1:], beta_tilde[1:], label=r"$\tilde\beta_t$ (posterior variance)")
axes[1].semilogy(steps, betas, "--", label=r"$\beta_t$ (forward step variance)")
axes[1].set_title("the posterior variance")
axes[1].set_ylabel("variance")
axes[2].semilogx(steps, beta_tilde / betas, label=r"$\tilde\beta_t / \beta_t$")
axes[2].set_title(r"$\tilde\beta_t/\beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$")
axes[2].set_ylabel("ratio")
for ax in axes:
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
assert math.isclose(c0[0], 1.0) and beta_tilde[0] == 0.0  # t = 1: the mean is x_0 itself, with no spread
assert np.all(beta_tilde < betas) and beta_tilde[-1] / betas[-1] > 0.99
assert np.all(np.diff(beta_tilde / betas) > 0)  # the ratio rises monotonically towards 1

# %% [markdown]
# ## 2. From a network's guess to a backward step
#
# The learned reverse process is a Markov chain run backwards from noise [E9],
#
# $$p_\theta(x_{0:T}) = p(x_T)\prod_{t=1}^T p_\theta(x_{t-1}\mid x_t),\qquad p(x_T) = \mathcal N(0, I),$$
#
# with Gaussian steps [E10] $p_\theta(x_{t-1}\mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)$ (section 3
# says why Gaussian). Sohl-Dickstein et al. (2015) introduced it; Ho et al. (2020) fixed its form: the mean
# copies the posterior mean $\tilde\mu_t$ with the unknown $x_0$ replaced by the network's estimate of it.
#
# ### Three ways to say "$x_0$"
#
# Given $x_t$ and $t$, [E3] is one linear equation between $x_0$ and $\epsilon$, so a network may output either
# one and the other follows. Write $a_t = \sqrt{\bar\alpha_t}$, $b_t = \sqrt{1-\bar\alpha_t}$ ($a_t^2 + b_t^2 = 1$).
#
# * **Noise** (Ho et al. 2020): the network outputs $\epsilon_\theta(x_t, t)$ and [E13] solves [E3] for $x_0$:
#   $\hat x_0 = (x_t - b_t\,\epsilon_\theta)/a_t$.
# * **Data** ("sample" in the ecosystem's vocabulary): the network outputs $\hat x_0$; then
#   $\hat\epsilon = (x_t - a_t\,\hat x_0)/b_t$.
# * **Velocity** (Salimans & Ho 2022) [E14]: on the quarter circle
#   $x(\phi) = \cos\phi\,x_0 + \sin\phi\,\epsilon$, $x_t$ sits at the angle $\phi_t$ with $\cos\phi_t = a_t$. Its
#   velocity is $v = dx/d\phi = -\sin\phi\,x_0 + \cos\phi\,\epsilon = a_t\,\epsilon - b_t\,x_0$, and rotating back,
#   $x_0 = a_t\,x_t - b_t\,v$ and $\epsilon = b_t\,x_t + a_t\,v$ (substitute $x_t = a_t x_0 + b_t\epsilon$ and use
#   $a_t^2 + b_t^2 = 1$).
#
# In this chapter $v$ always means this velocity.
#
# ### [E12] from [E11] and [E13], step by step
#
# For the noise parameterization the mean has a short form. Write $\tilde\mu_t = c_0\,x_0 + c_t\,x_t$ with
# $c_0 = \sqrt{\bar\alpha_{t-1}}\,\beta_t/(1-\bar\alpha_t)$ and
# $c_t = \sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$ from [E11].
#
# 1. Replace $x_0$ by [E13]'s estimate:
#    $\mu_\theta = c_0\,\dfrac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta}{\sqrt{\bar\alpha_t}} + c_t\,x_t$.
# 2. Group by $x_t$ and $\epsilon_\theta$:
#    $\mu_\theta = \left(\dfrac{c_0}{\sqrt{\bar\alpha_t}} + c_t\right) x_t
#    - \dfrac{c_0\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t}}\,\epsilon_\theta$.
# 3. Simplify $c_0/\sqrt{\bar\alpha_t}$ with $\sqrt{\bar\alpha_t} = \sqrt{\alpha_t}\sqrt{\bar\alpha_{t-1}}$:
#    $\dfrac{c_0}{\sqrt{\bar\alpha_t}} = \dfrac{\beta_t}{(1-\bar\alpha_t)\sqrt{\alpha_t}}$.
# 4. The weight of $x_t$, over the common denominator $(1-\bar\alpha_t)\sqrt{\alpha_t}$:
#    $\dfrac{\beta_t + \alpha_t(1-\bar\alpha_{t-1})}{(1-\bar\alpha_t)\sqrt{\alpha_t}}
#    = \dfrac{1-\bar\alpha_t}{(1-\bar\alpha_t)\sqrt{\alpha_t}} = \dfrac{1}{\sqrt{\alpha_t}}$
#    (the numerator is the one of step 8 in section 1).
# 5. The weight of $\epsilon_\theta$, from steps 2 and 3:
#    $\dfrac{\beta_t}{(1-\bar\alpha_t)\sqrt{\alpha_t}}\sqrt{1-\bar\alpha_t}
#    = \dfrac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}$.
# 6. Together, [E12]:
#
# $$\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}
#   \left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta(x_t, t)\right):$$
#
# remove a little of the predicted noise, then undo the shrinking by $\sqrt{\alpha_t}$ of one forward step. Training
# then regresses the noise, $L_\text{simple} = \mathbb E\,\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2$ [E15];
# chapter 04 derives it from the likelihood. The noise is also the score up to scale,
# $\nabla_{x_t}\log q(x_t \mid x_0) = -\epsilon/\sqrt{1-\bar\alpha_t}$ (chapter 05).
#
# The numbers: [E12] against [E11] at [E13]'s $\hat x_0$ for an arbitrary $\epsilon_\theta$, and every conversion
# between $\epsilon$, $x_0$ and $v$ as a round trip.

# %%
x0 = rng.uniform(-1, 1, (5, 3))
eps = rng.standard_normal((5, 3))
t = T // 3
xt = q_sample(schedule, x0, t, noise=eps)
eps_theta = np.cos(3 * eps)  # any network output, unrelated to the true noise
via_posterior = q_posterior_mean_variance(schedule, predict_x0_from_eps(schedule, xt, t, eps_theta), xt, t)[0]
difference = np.abs(p_mean_from_eps(schedule, xt, t, eps_theta) - via_posterior).max()
print(f"E12 vs E11 at E13's x0: max difference {difference:.1e}")
assert difference < 1e-13

v = v_from_eps_x0(schedule, eps, x0, t)  # the velocity of E14
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
# ### Which parameterization forgives errors
#
# The three are equivalent for a perfect network, not for a real one. An error $\delta$ in the output becomes
# an error in the implied $x_0$ (or $\epsilon$) multiplied by the derivative of the conversion:
#
# * eps-model: $\partial\hat x_0/\partial\epsilon_\theta = -b_t/a_t = -1/\sqrt{\mathrm{SNR}_t}$ [E4], unbounded as
#   $\bar\alpha_t \to 0$ (and $\hat x_0$ is $0/0$ at $\bar\alpha_T = 0$, a zero-terminal-SNR schedule);
# * x0-model: $\partial\hat\epsilon/\partial\hat x_0 = -a_t/b_t = -\sqrt{\mathrm{SNR}_t}$, unbounded as $t \to 0$;
# * v-model: $\partial\hat x_0/\partial v = -b_t$ and $\partial\hat\epsilon/\partial v = a_t$, both at most 1 in
#   size for every $t$.
#
# So a v-model's errors are never amplified in either direction, one reason Salimans & Ho (2022) chose it for
# distillation into few-step samplers, where $\hat x_0$ is used at large $t$.

# %%
a_t, b_t = schedule.sqrt_alpha_bars[steps], schedule.sqrt_one_minus_alpha_bars[steps]
gains = {
    r"eps-model, error in $\hat x_0$: $b_t/a_t$": b_t / a_t,
    r"x0-model, error in $\hat\epsilon$: $a_t/b_t$": a_t / b_t,
    r"v-model, error in $\hat x_0$: $b_t$": b_t,
    r"v-model, error in $\hat\epsilon$: $a_t$": a_t,
}
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for (label, gain), style in zip(gains.items(), ("-", "-", "--", ":"), strict=True):
    ax.semilogy(steps, gain, style, lw=2, label=label)
ax.axhline(1.0, color="0.6", lw=0.8)
ax.set_xlabel("t")
ax.set_ylabel("error amplification |d output / d prediction|")
ax.set_title("how an error of the network grows when converted")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
assert np.all(b_t <= 1) and np.all(a_t <= 1)  # the v-model's two gains
assert (b_t / a_t).max() > 10 and (a_t / b_t).max() > 10  # the others exceed 10 at one end of the chain

# %% [markdown]
# ## 3. Why a Gaussian step: small steps only
#
# [E10] makes every backward step Gaussian. The true backward step is not: $q(x_{t-1} \mid x_t)$ above is a
# mixture over data points. Feller (1949) showed that for a diffusion with small enough steps the reversed
# process has the same functional form as the forward one, and Sohl-Dickstein et al. (2015) built diffusion
# models on this: with many small steps, Gaussian backward steps lose almost nothing. The argument in one
# dimension, with $q_{t-1}$ the marginal density at $t-1$:
#
# 1. Bayes: $q(y \mid x_t) \propto q(x_t \mid y)\, q_{t-1}(y)$, $y = x_{t-1}$.
# 2. In $y$, the first factor is a Gaussian with mean $m = x_t/\sqrt{\alpha_t}$ and variance
#    $r^2 = \beta_t/\alpha_t$: narrow when $\beta_t$ is small.
# 3. So only $y$ within a few $r$ of $m$ matter, and there $\log q_{t-1}$ is nearly linear:
#    $\log q_{t-1}(y) \approx \log q_{t-1}(m) + g\,(y - m)$, with the score $g = \nabla\log q_{t-1}(m)$.
# 4. Then $\log q(y \mid x_t) \approx -\dfrac{(y-m)^2}{2r^2} + g\,(y-m) + C = -\dfrac{(y - m - r^2 g)^2}{2r^2} + C'$
#    (complete the square as in section 1): a Gaussian, $\mathcal N(m + r^2 g,\ r^2)$.
# 5. The next term of the expansion, $\tfrac12 (y-m)^2\,\nabla^2\log q_{t-1}$, is of size $r^2\,|\nabla^2\log q_{t-1}|$
#    where $y - m \sim r$, against 1 for the quadratic: it vanishes as $\beta_t \to 0$.
#
# (The mean $x_t/\sqrt{\alpha_t} + (\beta_t/\alpha_t)\,\nabla\log q_{t-1}$ is a step along the score: chapter 05's
# subject.) With a large step the expansion fails and the backward step can be bimodal, which no Gaussian fits.
# Below: data from two well separated modes, $x_t$ fixed halfway between them at $t = 0.3\,T$, and the exact
# backward kernel $q(x_s \mid x_t)$ for jumps of one step up to all the way to $s = 0$, computed on a grid by Bayes'
# rule (the noised mixture $q_s$ is again a mixture in closed form). The dashed curve is the Gaussian with the
# same mean and variance, the best a Gaussian step could do.

# %%
two_modes = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.05]], [[0.05]]])
t_from, x_from = int(0.3 * T), 0.1


def exact_reverse_kernel(s_to, grid):
    """q(x_s | x_t = x_from) on a grid of x_s, s = s_to, by Bayes: q(x_t | x_s) q_s(x_s), where the jump t -> s
    is x_t = a x_s + n eps with a^2 = alpha_bar_t / alpha_bar_s and n^2 = 1 - a^2."""
    a, n2 = math.sqrt(ab[t_from] / ab[s_to]), 1 - ab[t_from] / ab[s_to]
    q_s = two_modes.noised(math.sqrt(ab[s_to]), math.sqrt(1 - ab[s_to])) if s_to > 0 else two_modes
    log_density = -((x_from - a * grid) ** 2) / (2 * n2) + q_s.log_prob(grid[:, None])
    log_density -= log_density.max()
    log_density -= math.log(np.trapezoid(np.exp(log_density), grid))
    return log_density


def kl_to_best_gaussian(grid, log_density):
    """KL(q || N(mean_q, var_q)) in nats by the trapezoid rule: 0 exactly when q is Gaussian."""
    density = np.exp(log_density)
    mean = np.trapezoid(density * grid, grid)
    var = np.trapezoid(density * (grid - mean) ** 2, grid)
    log_gauss = -((grid - mean) ** 2) / (2 * var) - 0.5 * math.log(2 * math.pi * var)
    return np.trapezoid(density * (log_density - log_gauss), grid), mean, var


grid = np.linspace(-3, 3, 24001)
jumps = np.unique(np.round(np.geomspace(1, t_from, 12)).astype(int))
kls = np.array([kl_to_best_gaussian(grid, exact_reverse_kernel(t_from - j, grid))[0] for j in jumps])
fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
for ax, jump in zip(axes[:3], (1, t_from // 6, t_from), strict=True):
    log_density = exact_reverse_kernel(t_from - jump, grid)
    kl, mean, var = kl_to_best_gaussian(grid, log_density)
    window = np.abs(grid - mean) < 5 * math.sqrt(var)
    label = rf"exact $q(x_{{{t_from - jump}}} \mid x_{{{t_from}}})$"
    ax.plot(grid[window], np.exp(log_density[window]), "k", label=label)
    ax.plot(grid[window], gaussian(grid[window], mean, var), "--", label="Gaussian, same mean and variance")
    ax.set_title(f"{jump} step{'s' if jump > 1 else ''} back: KL = {kl:.1e} nats", fontsize=10)
    ax.set_xlabel(rf"$x_{{{t_from - jump}}}$")
    ax.set_ylabel("density")
    ax.set_ylim(0, 1.45 * np.exp(log_density).max())
    ax.legend(fontsize=7, loc="upper center")
axes[3].loglog(jumps, kls, "o-", label="KL(exact || best Gaussian)")
axes[3].set_xlabel(f"steps jumped back from t = {t_from}")
axes[3].set_ylabel("KL (nats)")
axes[3].set_title("the cost of a Gaussian step")
axes[3].legend(fontsize=8)
plt.tight_layout()
plt.show()
print("KL for jumps of", jumps.tolist(), ":", np.array2string(kls, precision=1))
assert kls[0] < 1e-4 and kls[-1] > 0.1  # one step: Gaussian to 1e-4 nats or better; all the way back: far from it
assert np.all(np.diff(kls) > 0)  # the larger the jump, the less Gaussian the exact step

# %% [markdown]
# This is one reason DDPM uses $T = 1000$ small steps; chapters 06 and 10 show how to sample with far fewer.
#
# ### The variance of the step
#
# Ho et al. (2020) fixed $\sigma_t^2$ of [E10] to one of two values: $\beta_t$, the exact reverse variance when
# the data is $\mathcal N(0, I)$, or $\tilde\beta_t$, the exact one when the data is a single point
# (pen-and-paper problem 3), and report similar samples with either. Nichol & Dhariwal (2021) let the network
# choose between them per coordinate: an extra output $u \in [-1, 1]$ gives
# $\log\sigma_t^2 = f\log\beta_t + (1-f)\log\tilde\beta_t$ with $f = (u+1)/2$ (their paper calls this output $v$; it
# has nothing to do with the velocity). `reverse_variance` implements the three choices; they differ only where
# $\tilde\beta_t/\beta_t$ is visibly below 1, at small $t$ (the right panel of the figure in section 1).

# %%
like = np.zeros((1, 3))
t_small = 3
learned, _ = reverse_variance(schedule, t_small, like, "learned_range", var_output=np.array([[-1.0, 0.0, 1.0]]))
small = reverse_variance(schedule, t_small, like, "fixed_small")[0][0, 0]
large = reverse_variance(schedule, t_small, like, "fixed_large")[0][0, 0]
print(f"t = {t_small}: beta_tilde = {small:.3e}, beta = {large:.3e}; learned range for u = -1, 0, 1: "
      + ", ".join(f"{value:.3e}" for value in learned.ravel()))
assert np.allclose(learned.ravel(), [small, math.sqrt(small * large), large])  # geometric interpolation

# %% [markdown]
# ## 4. Ancestral sampling
#
# Sampling $p_\theta(x_{0:T})$ follows its factorization [E9]: draw $x_T$ from the prior, then each $x_{t-1}$ from
# its step [E16] (Ho et al. 2020, Algorithm 2):
#
# $$x_T \sim \mathcal N(0, I);\qquad x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z,\quad
#   z \sim \mathcal N(0, I)\ \text{for } t > 1,\ z = 0 \text{ at } t = 1.$$
#
# The last step adds no noise: $x_0$ is the mean of the decoder $p_\theta(x_0 \mid x_1)$, the model's best guess
# (for images, added noise of size $\sigma_1$ would be invisible but not useful). That loop is
# `minidiff.diffusion.p_sample_loop`, and **exercise 3.3** asks you to write it; `p_sample` is one step.
#
# ### An exact oracle on 2-D data
#
# To see the sampler work without training anything, use data whose every noised version is known in closed
# form: a mixture of three Gaussians in the plane (`GaussianMixture.example_2d()`). $x_t$ given its component
# is Gaussian, so $\mathbb E[\epsilon \mid x_t]$, the best any noise predictor can do (the minimizer of [E15]), is a
# responsibility-weighted sum of Gaussian conditionings; `gmm.eps_model(schedule)` is that oracle. Driven by it,
# the sampler's only errors are its own.
#
# Two checks that the samples are the mixture. Each statistic (the two means, the three covariance entries, the
# mixture weights read off as average responsibilities) must lie within 5 standard errors of the same statistic
# of fresh data. And the sliced Wasserstein distance (`minidiff.metrics`) to fresh data is printed beside its
# floor, the distance between two independent data sets of the same size, and beside the distance of the
# starting noise $x_T$; the samples must be far closer to the data than the noise they started from.

# %%
gmm = GaussianMixture.example_2d()
eps_oracle = gmm.eps_model(schedule)
chain = p_sample_loop(schedule, eps_oracle, (N, 2), np.random.default_rng(1), return_trajectory=True)
samples = chain[0]  # (N, 2); chain[t] is x_t, shape (T + 1, N, 2)
print(f"chain: {chain.shape} (t, sample, coordinate)")


def z_scores(x, y):
    """|mean difference| / standard error of the difference for the mean, the covariance entries and the mixture
    responsibilities of two independent samples: each statistic is the average of a per-point term."""
    centre = np.concatenate([x, y]).mean(axis=0)

    def terms(p):
        d = p - centre
        return np.concatenate([p, d[:, :1] ** 2, d[:, :1] * d[:, 1:], d[:, 1:] ** 2, gmm.responsibilities(p)], axis=1)

    a, b = terms(x), terms(y)
    return np.abs(a.mean(axis=0) - b.mean(axis=0)) / np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))


data = gmm.sample(np.random.default_rng(2), N)
z = z_scores(samples, data)
print("samples vs data, |difference| in standard errors (mean x2, covariance x3, weights x3):", z.round(1))
assert z.max() < 5, z
directions = random_directions(256, 2, np.random.default_rng(3))  # the same projections for every distance
reference, second_draw = gmm.sample(np.random.default_rng(4), N), gmm.sample(np.random.default_rng(5), N)
sw = {name: sliced_wasserstein(points, reference, directions=directions)
      for name, points in (("samples x_0", samples), ("a second data set (the floor)", second_draw),
                           ("the starting noise x_T", chain[T]))}
print("sliced Wasserstein distance to fresh data: " + ", ".join(f"{k} {v:.3f}" for k, v in sw.items()))
assert sw["samples x_0"] < 0.35 * sw["the starting noise x_T"]

# %% [markdown]
# The chain passes through the forward marginals. At each $t$ below, the contours are the exact density of
# $q(x_t)$ (the mixture noised to level $t$) and the dots are the sampler's $x_t$: they start as standard noise
# and contract onto the data. The check beside it compares the dots with fresh draws of $q(x_t)$ at every
# snapshot.

# %%
def contour_grid(mixture, lim=3.2, n=160):
    g = np.linspace(-lim, lim, n)
    gx, gy = np.meshgrid(g, g)
    density = np.exp(mixture.log_prob(np.stack([gx.ravel(), gy.ravel()], axis=1))).reshape(n, n)
    return gx, gy, density


snapshot_ts = [T] + [int(np.argmin(np.abs(ab - level))) for level in (0.1, 0.4, 0.8)] + [0]
fig, axes = plt.subplots(1, len(snapshot_ts), figsize=(16, 3.6), sharex=True, sharey=True)
shown = 400
for ax, snap in zip(axes, snapshot_ts, strict=True):
    q_t = gmm if snap == 0 else gmm.noised(math.sqrt(ab[snap]), math.sqrt(1 - ab[snap]))
    gx, gy, density = contour_grid(q_t)
    ax.contour(gx, gy, density, levels=6, cmap="Blues")
    ax.scatter(chain[snap, :shown, 0], chain[snap, :shown, 1], s=3, c="C3", label=f"the sampler's $x_t$ ({shown})")
    ax.plot([], [], color="C0", label=r"contours of the exact $q(x_t)$")
    ax.set_title(rf"t = {snap}, $\bar\alpha_t$ = {ab[snap]:.2f}", fontsize=10)
    ax.set_xlabel("coordinate 1")
    ax.set_aspect("equal")
    assert z_scores(chain[snap], q_t.sample(np.random.default_rng(snap + 10), N)).max() < 5, snap
axes[0].set_ylabel("coordinate 2")
axes[0].legend(fontsize=7, loc="lower left")
plt.suptitle("ancestral sampling with the exact oracle, read from left (t = T) to right (t = 0)", y=1.02)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Reverse trajectories
#
# Forty chains drawn whole, each from its $x_T$ to its $x_0$, over the data density, coloured by the component
# they end in (the lines join $x_t$ at every few steps; each step adds noise, so the path is jagged). In the
# middle, the first coordinate of the same chains against $t$. On the right, for all $N$ chains, how sure the noised
# mixture is, given $x_t$, of the component the chain ends in: the average responsibility
# $q(k = k_\text{final} \mid x_t)$. At $t = T$ the components are indistinguishable and it is the chance level
# $\sum_k w_k^2$; it stays near that while $\bar\alpha_t$ is small and climbs towards 1 only in the last part of
# the chain. A chain wanders while $x_t$ is mostly noise and commits to a mode late.

# %%
def responsibility_of_final(t):
    """q(k | x_t) of each chain's final component k under the noised mixture q(x_t), shape (N,)."""
    q_t = gmm if t == 0 else gmm.noised(math.sqrt(ab[t]), math.sqrt(1 - ab[t]))
    return q_t.responsibilities(chain[t])[np.arange(N), final]


final = gmm.responsibilities(chain[0]).argmax(axis=1)  # (N,): the component each chain ends in
shown_ts = np.unique(np.linspace(0, T, 41).astype(int))  # the times at which the paths are drawn
committed = np.array([responsibility_of_final(t).mean() for t in shown_ts])
chance = float((gmm.weights**2).sum())
paths = chain[shown_ts[::-1], :40]  # (len(shown_ts), 40, 2), from x_T to x_0
colours = [f"C{k + 1}" for k in final[:40]]
gx, gy, density = contour_grid(gmm)
fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1.25, 1]})
ax = axes[0]
ax.contourf(gx, gy, np.sqrt(density), levels=10, cmap="Greys")
fade = np.linspace(0.08, 1.0, len(shown_ts) - 1) ** 2  # faint while x_t is mostly noise, solid near t = 0
for k in range(paths.shape[1]):
    segments = np.stack([paths[:-1, k], paths[1:, k]], axis=1)  # (steps, 2 ends, 2 coordinates)
    rgba = np.array([matplotlib.colors.to_rgba(colours[k], alpha) for alpha in fade])
    ax.add_collection(matplotlib.collections.LineCollection(segments, colors=rgba, linewidths=0.5 + fade))
ax.scatter(paths[0, :, 0], paths[0, :, 1], s=14, c="k", marker="o", label=r"start $x_T \sim \mathcal{N}(0, I)$")
ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=30, c=colours, marker="x", label=r"end $x_0$")
ax.plot([], [], color="0.3", label=r"path $x_T \to x_0$ (colour: its final component)")
ax.set_xlabel("coordinate 1")
ax.set_ylabel("coordinate 2")
ax.set_title("40 reverse trajectories over the data density (grey)\nfaint at t = T, solid near t = 0", fontsize=10)
ax.set_aspect("equal")
ax.legend(fontsize=8, loc="lower right")
ax = axes[1]
for k in range(paths.shape[1]):
    ax.plot(shown_ts[::-1], paths[:, k, 0], color=colours[k], lw=0.7, alpha=0.7)
for k, m in enumerate(gmm.means[:, 0]):
    ax.axhline(m, color=f"C{k + 1}", ls="--", lw=1.5, label=f"component {k + 1}: mean, weight {gmm.weights[k]:.1f}")
ax.invert_xaxis()
ax.set_xlabel("t (the chain runs from T on the left to 0 on the right)")
ax.set_ylabel("coordinate 1 of $x_t$")
ax.set_title("the same chains against time")
ax.legend(fontsize=8, loc="upper left")
ax = axes[2]
ax.plot(shown_ts, committed, "o-", ms=3, label=rf"mean of $q(k_\mathrm{{final}} \mid x_t)$ over {N} chains")
ax.axhline(chance, color="0.5", ls=":", label=rf"chance, $\sum_k w_k^2$ = {chance:.2f}")
ax.invert_xaxis()
ax.set_xlabel("t")
ax.set_ylabel("responsibility of the final component")
ax.set_title("when a chain commits to a mode")
ax.legend(fontsize=8, loc="upper left")
plt.tight_layout()
plt.show()
late = int(np.argmin(np.abs(ab - 0.8)))  # the t where alpha_bar_t = 0.8
middle = int(np.argmin(np.abs(ab - 0.1)))
sure = {t: responsibility_of_final(t).mean() for t in (T, middle, late)}
print(f"mean responsibility of the final component: t = T {sure[T]:.2f} (chance {chance:.2f}), "
      f"t = {middle} (alpha_bar 0.1) {sure[middle]:.2f}, t = {late} (alpha_bar 0.8) {sure[late]:.2f}")
assert abs(sure[T] - chance) < 0.02 and sure[middle] < chance + 0.15 and sure[late] > 0.8

# %% [markdown]
# ### How much the choice of $\sigma_t$ matters: Gaussian data
#
# For data $x_0 \sim \mathcal N(\mu, s^2 I)$ everything is Gaussian, and the exact reverse process is known:
# $x_t$ has variance $V_t = \bar\alpha_t s^2 + 1 - \bar\alpha_t$ and covariance $\sqrt{1-\bar\alpha_t}$ with
# $\epsilon$, so the optimal noise predictor is
# $\epsilon^*(x_t, t) = \mathbb E[\epsilon\mid x_t]
# = \frac{\sqrt{1-\bar\alpha_t}}{V_t}\,(x_t - \sqrt{\bar\alpha_t}\,\mu)$,
# and with it [E12]'s mean *is* the true $\mathbb E[x_{t-1}\mid x_t]$. The true step variance is
# $\mathrm{Var}(x_{t-1}\mid x_t) = V_{t-1} - \alpha_t V_{t-1}^2/V_t$ (Gaussian conditioning: $x_{t-1}$ and $x_t$
# have covariance $\sqrt{\alpha_t}V_{t-1}$), and the true $x_T$ is $\mathcal N(\sqrt{\bar\alpha_T}\mu, V_T)$.
# With the exact variances the sampler gives back the data, except that the last step returns the mean
# $\mathbb E[x_0 \mid x_1]$ instead of a draw (a variance $\mathrm{Var}(x_0 \mid x_1)$ less). With the two fixed
# choices the means are still right but the spread is not. The chain is linear, so the variance it gives $x_0$
# can be propagated step by step and compared with the samples.

# %%
mu, s = np.array([0.5, -1.0]), 0.3
V = ab * s**2 + 1 - ab  # V_t for t = 0..T


def eps_star(xt, t):
    a = ab[t][:, None]
    return np.sqrt(1 - a) / (a * s**2 + 1 - a) * (xt - np.sqrt(a) * mu)


exact_variance = np.ones(T + 1)
exact_variance[1:] = V[:-1] - schedule.alphas[1:] * V[:-1] ** 2 / V[1:]
n_gauss = 20 * N
x_T = np.sqrt(ab[T]) * mu + np.sqrt(V[T]) * rng.standard_normal((n_gauss, 2))
gain = np.sqrt(schedule.alphas[1:]) * V[:-1] / V[1:]  # x_{t-1} = gain_t x_t + ... + sigma_t z, for t = 1..T


def predicted_variance(gain, V_T, sigma2):
    """Var(x_0) of the linear chain: Var(x_{t-1}) = gain_t^2 Var(x_t) + sigma_t^2 from Var(x_T) = V_T, with
    sigma2[t] for t = 1..T (index 0 unused) and no noise at t = 1."""
    variance = V_T
    for step_t in range(len(gain), 0, -1):
        variance = gain[step_t - 1] ** 2 * variance + (0.0 if step_t == 1 else sigma2[step_t])
    return variance


tables = {"exact": exact_variance, "beta_tilde": schedule.posterior_variance_clipped, "beta": schedule.betas}
labels = {"exact": r"exact $\sigma_t^2$", "beta_tilde": r"$\sigma_t^2 = \tilde\beta_t$",
          "beta": r"$\sigma_t^2 = \beta_t$"}
results = {}
for name, table in tables.items():
    out = p_sample_loop(schedule, eps_star, (n_gauss, 2), rng, x_T=x_T, variance_type=table)
    predicted = predicted_variance(gain, V[T], table)
    results[name] = (out, predicted)
    print(f"sigma_t^2 = {name:>10}: mean {out.mean(axis=0).round(3)}, sd {out.std(axis=0).round(3)}, "
          f"predicted sd {math.sqrt(predicted):.3f}  (data: mean {mu}, sd {s})")
    # 5 standard errors: of a mean, sd / sqrt(n); of a Gaussian sample variance, var sqrt(2 / n)
    assert np.all(np.abs(out.mean(axis=0) - mu) < 5 * math.sqrt(predicted / n_gauss))
    assert np.all(np.abs(out.var(axis=0) - predicted) < 5 * predicted * math.sqrt(2 / n_gauss))
(_, exact_pred), (_, small_pred), (_, large_pred) = results.values()
assert math.isclose(exact_pred, s**2 - exact_variance[1], rel_tol=1e-9)  # the data minus Var(x_0 | x_1)
assert small_pred < s**2 < large_pred  # the two fixed choices bracket the data's variance

fig, ax = plt.subplots(figsize=(7, 3.6))
bins = np.linspace(mu[0] - 5 * s, mu[0] + 5 * s, 80)
for (name, (out, _)), style in zip(results.items(), ("-", "--", ":"), strict=True):
    ax.hist(out[:, 0], bins=bins, density=True, histtype="step", lw=1.6, ls=style, label=f"samples, {labels[name]}")
ax.plot(bins, gaussian(bins, mu[0], s**2), "k", lw=0.8, label=rf"data $\mathcal{{N}}({mu[0]}, {s}^2)$")
ax.set_xlabel("coordinate 1 of $x_0$")
ax.set_ylabel("density")
ax.set_title("Gaussian data: three choices of the step variance")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The gap between the three shrinks as $T$ grows (each fixed choice differs from the exact variance only at small
# $t$, where the steps are small), the regime where Ho et al. report that the choice hardly matters. And with no
# noise at all ($\sigma_t = 0$ for every $t$) the chain collapses onto the mean (pen-and-paper problem 5). The
# propagated standard deviation of $x_0$, no sampling needed:

# %%
gaps = {}
for steps_T in (100, 1000):
    sched = NoiseSchedule(linear_betas(steps_T))
    V_of_t = sched.alpha_bars * s**2 + 1 - sched.alpha_bars
    gain_of_t = np.sqrt(sched.alphas[1:]) * V_of_t[:-1] / V_of_t[1:]
    sds = {name: math.sqrt(predicted_variance(gain_of_t, V_of_t[-1], table)) for name, table in
           (("beta_tilde", sched.posterior_variance_clipped), ("beta", sched.betas), ("zero", np.zeros(steps_T + 1)))}
    print(f"T = {steps_T:4d}: sd of x_0 with sigma_t^2 = beta_tilde {sds['beta_tilde']:.3f}, = beta {sds['beta']:.3f}, "
          f"= 0 {sds['zero']:.1e}   (data: {s})")
    assert sds["beta_tilde"] < s < sds["beta"] and sds["zero"] < 0.01 * s
    gaps[steps_T] = sds["beta"] - sds["beta_tilde"]
assert gaps[1000] < 0.25 * gaps[100]  # the bracket narrows with more, smaller steps

# %% [markdown]
#
# ### What one step computes
#
# For a fixed variance every ancestral step is an affine combination of $x_t$, the network output and $z$, with
# scalars that depend only on $t$. `p_sample_loop` runs it as one fused kernel call (`ancestral_step_coefs` and
# `minidiff.kernels.sampler_step`, chapter 11); the numbers are those of `p_sample`:

# %%
t, z_step = T // 2, rng.standard_normal(xt.shape)
coefs = ancestral_step_coefs(schedule, t, prediction_type="epsilon", variance_type="fixed_large")
print(coefs)  # x_{t-1} = c_x x_t + c_eps eps_theta + c_z z
fused = sampler_step(xt, eps, z_step, coefs)
step = p_mean_variance(schedule, eps, xt, t, variance_type="fixed_large")
assert np.allclose(fused, step.mean + np.sqrt(step.variance) * z_step, atol=1e-12)
assert np.allclose(fused, p_sample(schedule, eps, xt, t, noise=z_step, variance_type="fixed_large"), atol=1e-12)

# %% [markdown]
# ## Summary
#
# * The true backward step $q(x_{t-1} \mid x_t)$ needs the data distribution; given $x_0$ it is Gaussian,
#   $q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$ [E11], by completing the square in
#   $x_{t-1}$: the precisions of the forward step and of the marginal add, and the mean is their
#   precision-weighted average of "undo one step" and "noise $x_0$ to level $t-1$".
# * $\tilde\beta_t < \beta_t$, with $\tilde\beta_1 = 0$ and $\tilde\beta_t/\beta_t \to 1$ along the chain.
# * A network predicts $\epsilon$, $x_0$ or the velocity $v$; given $x_t$ each determines the others [E13], [E14].
#   Putting [E13]'s $\hat x_0$ into $\tilde\mu_t$ gives [E12],
#   $\mu_\theta = (x_t - \beta_t\,\epsilon_\theta/\sqrt{1-\bar\alpha_t})/\sqrt{\alpha_t}$. Errors of a v-model are
#   never amplified by the conversions; those of eps- and x0-models are, at opposite ends of the chain.
# * A Gaussian backward step [E10] is accurate only for small steps (Feller 1949; Sohl-Dickstein et al. 2015):
#   the exact step's distance from the best Gaussian grows from negligible for one step to large for a jump
#   across the chain.
# * Ancestral sampling [E9], [E16]: $x_T \sim \mathcal N(0, I)$, then $x_{t-1} = \mu_\theta + \sigma_t z$ down to
#   $t = 1$, with no noise at the last step. With the exact oracle of a Gaussian mixture it draws the mixture, and
#   its $x_t$ follow the forward marginals $q(x_t)$ all the way.
#
# ## References
#
# * W. Feller (1949), *On the theory of stochastic processes, with particular reference to applications*,
#   Proc. First Berkeley Symposium on Mathematical Statistics and Probability: the reversal of a diffusion with
#   small steps has the functional form of the forward process.
# * J. Sohl-Dickstein, E. Weiss, N. Maheswaranathan, S. Ganguli (2015), *Deep unsupervised learning using
#   nonequilibrium thermodynamics*, ICML: diffusion models themselves; a learned reverse chain of Gaussian
#   steps, justified by small steps; the posterior $q(x_{t-1} \mid x_t, x_0)$ in the bound.
# * J. Ho, A. Jain, P. Abbeel (2020), *Denoising diffusion probabilistic models*, NeurIPS: the
#   eps-parameterization and [E12], the fixed variances $\beta_t$ and $\tilde\beta_t$, ancestral sampling
#   (Algorithm 2), $L_\text{simple}$.
# * A. Nichol, P. Dhariwal (2021), *Improved denoising diffusion probabilistic models*, ICML: the learned
#   interpolation between $\log\beta_t$ and $\log\tilde\beta_t$, and the clipped $\log\tilde\beta_1$.
# * T. Salimans, J. Ho (2022), *Progressive distillation for fast sampling of diffusion models*, ICLR: the
#   velocity $v$ and v-prediction.
# * S. Lin, B. Liu, J. Li, X. Yang (2024), *Common diffusion noise schedules and sample steps are flawed*, WACV:
#   zero terminal SNR, where eps-prediction cannot give $x_0$ at $t = T$ and v-prediction can.
#
# ## Pen-and-paper problems
#
# 1. Show $\tilde\beta_t < \beta_t$ for every $t \ge 1$ (all $\beta_t > 0$). What does $\tilde\beta_1 = 0$ mean?
# 2. Show that $\tilde\mu_t = w_t\,\dfrac{x_t}{\sqrt{\alpha_t}} + (1-w_t)\,\sqrt{\bar\alpha_{t-1}}\,x_0$ with
#    $w_t = \alpha_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$, and that $w_t$ is the share of the total precision $A$
#    that comes from the forward step.
# 3. (Ho et al.'s two extremes.) (a) If the data is one point, $x_0 = c$, show that the exact $q(x_{t-1} \mid x_t)$ is
#    $\mathcal N(\tilde\mu_t(c, x_t), \tilde\beta_t)$. (b) If $x_0 \sim \mathcal N(0, I)$, show that
#    $q(x_{t-1} \mid x_t) = \mathcal N(\sqrt{\alpha_t}\,x_t, \beta_t I)$.
# 4. On a zero-terminal-SNR schedule ($\bar\alpha_T = 0$), what are $\hat x_0$ and $\hat\epsilon$ from a
#    v-prediction at $t = T$? Why can an eps-prediction not give $\hat x_0$ there?
# 5. How many network evaluations does ancestral sampling of a batch take for $T = 1000$? If $\sigma_t$ were
#    set to 0 for every $t$, what would the sampler return for Gaussian data $\mathcal N(\mu, s^2)$ as $T$ grows,
#    and why is that not a sample?
#
# ### Worked answers
#
# 1. $\tilde\beta_t/\beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$ and $\bar\alpha_t = \alpha_t\bar\alpha_{t-1} <
#    \bar\alpha_{t-1}$ when $\beta_t > 0$, so the ratio is below 1. At $t = 1$, $\bar\alpha_0 = 1$ makes the
#    numerator 0: given $x_1$ and $x_0$, the "previous state" is $x_0$ itself, known exactly (and
#    $\tilde\mu_1 = x_0$, since $c_0 = \beta_1/(1-\bar\alpha_1) = 1$ and $c_t = 0$).
# 2. $w_t/\sqrt{\alpha_t} = \sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t) = c_t$. And
#    $1 - w_t = (1 - \bar\alpha_t - \alpha_t + \bar\alpha_t)/(1-\bar\alpha_t) = \beta_t/(1-\bar\alpha_t)$, so
#    $(1-w_t)\sqrt{\bar\alpha_{t-1}} = c_0$. The forward step's precision in $y$ is $\alpha_t/\beta_t$; divided
#    by $A = (1-\bar\alpha_t)/(\beta_t(1-\bar\alpha_{t-1}))$ it gives $\alpha_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)
#    = w_t$.
# 3. (a) With one data point, $q(x_0 \mid x_t)$ puts all its mass on $c$, so the integral of section 1 has one term:
#    $q(x_{t-1} \mid x_t) = q(x_{t-1} \mid x_t, c)$, which is [E11]. (b) With $x_0 \sim \mathcal N(0, I)$, every
#    $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon$ is $\mathcal N(0, I)$, and
#    $\mathrm{Cov}(x_{t-1}, x_t) = \sqrt{\alpha_t}\,I$ (from $x_t = \sqrt{\alpha_t}x_{t-1} + \sqrt{\beta_t}\epsilon'$).
#    Gaussian conditioning: mean $\sqrt{\alpha_t}\,x_t$, variance $1 - \alpha_t = \beta_t$.
# 4. $a_T = 0$, $b_T = 1$: $\hat x_0 = a_T x_T - b_T v = -v$ and $\hat\epsilon = b_T x_T + a_T v = x_T$. The eps
#    route divides by $a_T = 0$: $x_T = \epsilon$ is pure noise, so knowing $\epsilon$ exactly adds nothing about
#    $x_0$ (the library raises an error there rather than return $0/0$).
# 5. $T$ evaluations, one per step: 1000 (for any batch size; the batch goes through each call together). With
#    $\sigma_t = 0$ each step is the deterministic $x_{t-1} = \mathbb E[x_{t-1} \mid x_t]$ under the exact model, and
#    the map from $x_T$ to $x_0$ is linear; its output variance is
#    $V_T\prod_t \mathrm{gain}_t^2$, which is far below $s^2$ because each step discards the conditional variance
#    it should add back. The result collapses towards $\mu$: a mean, not a sample. (Chapter 06's DDIM gets
#    a deterministic sampler right by changing the step, not by dropping the noise.)
#
# ## Exercises
#
# Open `minidiff/exercises/ch03.py` and fill in:
#
# * **3.1** `posterior_coefficients`: the three arrays of [E11] over $t = 1..T$, written with array slices
#   (which index is $t$, which is $t-1$?);
# * **3.2** `predict_x0_from_eps`: [E13];
# * **3.3** `p_sample_loop`, the chapter's key skill: ancestral sampling itself. Draw $x_T$ (or start from the
#   given one), then for $t = T, \dots, 1$ call the model with one timestep per example, draw $z$ for $t > 1$,
#   and take the step; return $x_0$, or the whole chain. The stub gives you `step(out, x, t, z)`, which is
#   `p_sample` with the loop's options.
#
# Grade them with `pytest --student -m ch03`. For 3.3 the grader checks mathematics, not your code's text: with
# the exact oracle of the mixture above your samples must be the mixture (means, covariances and weights); with
# one seed your chain must equal a chain composed by hand from single `p_sample` steps; the last step must add no
# noise; the dtype must be kept; and the model must be called $T$ times, at $t = T, \dots, 1$, on the current
# $x_t$. To run this chapter on your own solutions, start Jupyter with
# `MINIDIFF_EXERCISES=ex03.3 jupyter lab notebooks/`: section 4 then samples with your loop.
