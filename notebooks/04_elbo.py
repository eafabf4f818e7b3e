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
# # 04 · The ELBO: the bound term by term, L_simple against L_vlb, bits per dimension
#
# A diffusion model defines a likelihood $p_\theta(x_0)$: the probability that its reverse chain (chapter 03) ends at
# $x_0$. Computing it means integrating over every path $x_{1:T}$ that could have led there, which nobody can do. This
# chapter replaces that integral by a lower bound, the *evidence lower bound* (ELBO), which splits into one small
# Gaussian KL divergence per step. Then it
#
# * checks the bound on data whose true likelihood is known, and looks at where the bound spends its nats;
# * compares reverse processes by their bounds;
# * turns the bound into DDPM's noise-prediction loss $L_\text{simple}$;
# * measures a model in bits per dimension, the unit of likelihood in papers;
# * trains a first network with $L_\text{simple}$ and samples from it.
#
# The bound is how Sohl-Dickstein et al. (2015) trained the first diffusion models; writing it as a weighted
# noise-prediction loss is due to Ho et al. (2020).

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection
from threadpoolctl import threadpool_limits

import minidiff as md
from minidiff.data import moons
from minidiff.demo import network_fn
from minidiff.diffusion import (
    NoiseSchedule,
    denoising_term,
    discretized_gaussian_log_likelihood,
    elbo_sample,
    l_simple,
    linear_betas,
    neg_elbo_bits_per_dim,
    normal_kl,
    p_sample_loop,
    prior_term,
    q_sample,
    q_sample_trajectory,
    vlb_terms,
    vlb_weight,
)
from minidiff.metrics import random_directions, sliced_wasserstein
from minidiff.nn import MLPDenoiser
from minidiff.optim import AdamW, CosineDecay, LRScheduler

FAST = md.fast_mode()
T = 100 if FAST else 1000  # the linear schedule is rescaled for short chains (chapter 02)
N = 2000 if FAST else 20000
rng = np.random.default_rng(0)
schedule = NoiseSchedule(linear_betas(T))

# %% [markdown]
# ## 1. A lower bound on the log-likelihood [E17]
#
# The model is the reverse chain $p_\theta(x_{0:T}) = p(x_T)\prod_{t=1}^T p_\theta(x_{t-1}\mid x_t)$ [E9], and the
# likelihood of a data point is its marginal, $p_\theta(x_0) = \int p_\theta(x_{0:T})\,dx_{1:T}$. Multiply and divide
# by the forward process $q(x_{1:T}\mid x_0) = \prod_{t=1}^T q(x_t\mid x_{t-1})$ [E1], which is positive everywhere:
#
# $$\begin{aligned}
# \log p_\theta(x_0) &= \log \int q(x_{1:T}\mid x_0)\,\frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\,dx_{1:T}
#   && \text{multiply and divide by } q\\
# &= \log\, \mathbb E_{q(x_{1:T}\mid x_0)}\!\left[\frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\right]
#   && \text{an integral against a density is an expectation}\\
# &\ge \mathbb E_{q(x_{1:T}\mid x_0)}\!\left[\log\frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\right]
#   =: \mathrm{ELBO}(x_0)
#   && \text{Jensen: } \log \mathbb E Z \ge \mathbb E \log Z \text{ (log is concave)}
# \end{aligned}$$
#
# That is [E17]. How much does the inequality lose? Write $p_\theta(x_{0:T}) = p_\theta(x_0)\,p_\theta(x_{1:T}\mid
# x_0)$ (the product rule) inside the ELBO; $\log p_\theta(x_0)$ does not depend on the path and leaves the
# expectation:
#
# $$\begin{aligned}
# \mathrm{ELBO}(x_0) &= \log p_\theta(x_0)
#   - \mathbb E_q\!\left[\log\frac{q(x_{1:T}\mid x_0)}{p_\theta(x_{1:T}\mid x_0)}\right]\\
# &= \log p_\theta(x_0) - \mathrm{KL}\big(q(x_{1:T}\mid x_0)\,\|\,p_\theta(x_{1:T}\mid x_0)\big).
# \end{aligned}$$
#
# The gap is a KL divergence, so it is zero exactly when the model's own posterior over paths is the forward process.
# The forward process has no parameters: raising the ELBO over $\theta$ raises $\log p_\theta(x_0)$ or closes the gap,
# and both are wanted.
#
# ## 2. The bound term by term [E18]: a telescoping sum
#
# Put E9 and E1 into the ELBO, one logarithm per factor, and split off the step $t = 1$:
#
# $$\begin{aligned}
# -\mathrm{ELBO} &= \mathbb E_q\Big[-\log p(x_T)
#   - \sum_{t=1}^{T}\log\frac{p_\theta(x_{t-1}\mid x_t)}{q(x_t\mid x_{t-1})}\Big]\\
# &= \mathbb E_q\Big[-\log p(x_T) - \sum_{t=2}^{T}\log\frac{p_\theta(x_{t-1}\mid x_t)}{q(x_t\mid x_{t-1})}
#   - \log\frac{p_\theta(x_0\mid x_1)}{q(x_1\mid x_0)}\Big].
# \end{aligned}$$
#
# Each ratio compares a *backward* step of the model with a *forward* step of $q$, two densities of different
# variables, so it is not yet a KL. Turn the forward step around with Bayes' rule. The chain is Markov, so $q(x_t\mid
# x_{t-1}) = q(x_t\mid x_{t-1}, x_0)$, and conditioning everything on $x_0$:
#
# $$q(x_t\mid x_{t-1}, x_0) = \frac{q(x_{t-1}\mid x_t, x_0)\,q(x_t\mid x_0)}{q(x_{t-1}\mid x_0)}
#   \qquad\text{for } t \ge 2.$$
#
# **Only for $t \ge 2$.** At $t = 1$ the previous state $x_{t-1}$ *is* $x_0$: the rewrite would need $q(x_0\mid x_1,
# x_0)$ and $q(x_0\mid x_0)$, distributions of a variable that is already given (point masses, not densities). So the
# factor of $t = 1$ stays as it is; it becomes the decoder term below.
#
# For $t \ge 2$ the logarithm of a forward step becomes three logarithms, and the last two *telescope*:
#
# $$\sum_{t=2}^T \log q(x_t\mid x_{t-1}) = \sum_{t=2}^T \log q(x_{t-1}\mid x_t, x_0)
#   + \sum_{t=2}^{T}\big[\log q(x_t\mid x_0) - \log q(x_{t-1}\mid x_0)\big],$$
#
# $$\begin{aligned}
# \sum_{t=2}^{T}\big[\log q(x_t\mid x_0) - \log q(x_{t-1}\mid x_0)\big]
# &= \big[\log q(x_2\mid x_0) - \log q(x_1\mid x_0)\big] + \big[\log q(x_3\mid x_0) - \log q(x_2\mid x_0)\big] + \dots
#   + \big[\log q(x_T\mid x_0) - \log q(x_{T-1}\mid x_0)\big]\\
# &= \log q(x_T\mid x_0) - \log q(x_1\mid x_0)
#   \qquad\text{(every middle marginal appears once with } + \text{ and once with } -\text{)}.
# \end{aligned}$$
#
# Put this back. The $-\log q(x_1\mid x_0)$ it leaves cancels the $+\log q(x_1\mid x_0)$ of the $t = 1$ factor, and
# $\log q(x_T\mid x_0)$ joins $-\log p(x_T)$:
#
# $$-\mathrm{ELBO} = \mathbb E_q\Big[\log\frac{q(x_T\mid x_0)}{p(x_T)}
#   + \sum_{t=2}^T \log\frac{q(x_{t-1}\mid x_t, x_0)}{p_\theta(x_{t-1}\mid x_t)} - \log p_\theta(x_0\mid x_1)\Big].$$
#
# Each logarithm now involves one or two of the $x$'s, so its expectation over the whole path is one over those alone.
# The first is the expectation under $q(x_T\mid x_0)$ of the log-ratio of two densities of $x_T$: a KL. The $t$-th is
# over $q(x_{t-1}, x_t\mid x_0) = q(x_t\mid x_0)\,q(x_{t-1}\mid x_t, x_0)$, and the inner expectation is again a KL.
# This is the decomposition [E18]:
#
# $$-\mathrm{ELBO} = \underbrace{\mathrm{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T\ \text{[E19]}}
# + \sum_{t=2}^T \underbrace{\mathbb E_{q(x_t\mid x_0)}\,\mathrm{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,
#   p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}\ \text{[E20]}}
# \ \underbrace{-\ \mathbb E_{q(x_1\mid x_0)} \log p_\theta(x_0\mid x_1)}_{L_0\ \text{[E21]}} .$$
#
# * $L_T$, the *prior term*, has no parameter: it is small when $\bar\alpha_T \approx 0$.
# * $L_{t-1}$, the *denoising terms*, compare the model's step with chapter 03's posterior [E11], which knows $x_0$.
# * $L_0$, the *decoder term*, scores the data under the model's last step.
#
# All the distributions in the KLs are Gaussians, so every KL has a closed form [E23]. For one dimension and $x \sim
# \mathcal N(m_1, s_1^2)$: $\mathbb E\log\mathcal N(x; m_1, s_1^2) = -\log s_1 - \frac12\log 2\pi - \frac12$ (since
# $\mathbb E(x - m_1)^2 = s_1^2$), and $\mathbb E\log\mathcal N(x; m_2, s_2^2) = -\log s_2 - \frac12\log 2\pi -
# \frac{s_1^2 + (m_1 - m_2)^2}{2 s_2^2}$ (since $\mathbb E(x - m_2)^2 = \mathrm{Var}\,x + (\mathbb E x - m_2)^2$). The
# difference is
#
# $$\mathrm{KL}\big(\mathcal N(m_1, s_1^2)\,\|\,\mathcal N(m_2, s_2^2)\big)
# = \log\frac{s_2}{s_1} + \frac{s_1^2 + (m_1-m_2)^2}{2s_2^2} - \frac12 ,$$
#
# summed over dimensions for diagonal Gaussians. `normal_kl` (exercise 4.1) takes log-variances. A Monte Carlo check of
# that formula:

# %%
m1, s1, m2, s2 = 0.3, 0.8, -0.2, 1.4
x = m1 + s1 * rng.standard_normal(N * 50)
log_ratio = (-0.5 * ((x - m1) / s1) ** 2 - math.log(s1)) - (-0.5 * ((x - m2) / s2) ** 2 - math.log(s2))
kl = float(normal_kl(np.float64(m1), np.float64(2 * math.log(s1)), np.float64(m2), np.float64(2 * math.log(s2))))
print(f"closed form {kl:.5f}, Monte Carlo {log_ratio.mean():.5f} +- {log_ratio.std() / math.sqrt(x.size):.5f}")
assert abs(log_ratio.mean() - kl) < 5 * log_ratio.std() / math.sqrt(x.size)

# %% [markdown]
# ## 3. A model whose likelihood we know
#
# For data $x_0 \sim \mathcal N(\mu, s^2 I)$ chapter 03 wrote down the exact reverse process: the optimal noise
# predictor $\epsilon^*(x_t, t) = \sqrt{1-\bar\alpha_t}\,(x_t - \sqrt{\bar\alpha_t}\mu)/V_t$ with $V_t = \bar\alpha_t
# s^2 + 1 - \bar\alpha_t$, the exact reverse variances $v_t = V_{t-1} - \alpha_t V_{t-1}^2/V_t$ and the true $q(x_T) =
# \mathcal N(\sqrt{\bar\alpha_T}\mu, V_T I)$. Built from those, $p_\theta(x_{0:T})$ *is* the forward joint read
# backwards. The gap of section 1 is then zero, and even a single path gives $\log p_\theta(x_{0:T}) - \log
# q(x_{1:T}\mid x_0) = \log q(x_0)$:

# %%
mu, s = np.array([0.4, -0.6, 0.1]), 0.5
D = mu.size
ab, alphas = schedule.alpha_bars, schedule.alphas
V = ab * s**2 + 1 - ab


def eps_star(xt, t):
    a = ab[t][:, None]
    return np.sqrt(1 - a) / (a * s**2 + 1 - a) * (xt - np.sqrt(a) * mu)


exact_variance = np.ones(T + 1)  # v_t for t = 1..T (index 0 unused)
exact_variance[1:] = V[:-1] - alphas[1:] * V[:-1] ** 2 / V[1:]
oracle = {"variance_type": exact_variance, "prior": (np.sqrt(ab[T]) * mu, V[T])}


def log_q(x0):
    return (-0.5 * ((x0 - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(axis=1)


x0 = mu + s * rng.standard_normal((4, D))
trajectory = q_sample_trajectory(schedule, x0, rng)  # x_0..x_T, shape (T + 1, 4, 3)
one_sample = elbo_sample(schedule, eps_star, trajectory, decoder="gaussian", **oracle)
print("log p(x_0:T) - log q(x_1:T | x_0):", one_sample.round(6))
print("log q(x_0):                       ", log_q(x0).round(6))
assert np.allclose(one_sample, log_q(x0), rtol=1e-9)

# %% [markdown]
# The telescoping of section 2 changed the integrand, not its expectation. For a reverse process that is *not* the true
# one the two differ path by path, so compare their averages: DDPM's step with variances $\sigma_t^2 = \beta_t$, the
# E17 integrand along whole paths (`elbo_sample`) against the sum of the closed-form terms of E18 (`vlb_terms`, one
# $x_t$ per term), for the same data points:

# %%
x0_paths = mu + s * rng.standard_normal((2000, D))
paths = q_sample_trajectory(schedule, x0_paths, rng)  # (T + 1, 2000, 3)
integrand = elbo_sample(schedule, eps_star, paths, decoder="gaussian", variance_type="fixed_large",
                        prior=oracle["prior"])
closed_form = vlb_terms(schedule, eps_star, x0_paths, rng=rng, decoder="gaussian", variance_type="fixed_large",
                        prior=oracle["prior"]).total
difference = -integrand - closed_form  # per data point
difference_se = difference.std() / math.sqrt(difference.size)
print(f"-E[E17 integrand] {-integrand.mean():.4f} nats, sum of the E18 terms {closed_form.mean():.4f} nats; "
      f"difference {difference.mean():+.4f} +- {difference_se:.4f}")
assert abs(difference.mean()) < 5 * difference_se

# %% [markdown]
# Averaged over many data points, the exact process's $-$ELBO must equal the entropy of the data, $H = -\mathbb E\log
# q(x_0) = \frac D2\log(2\pi e s^2)$. Where does the total come from? The left panel shows each denoising term; the
# right one adds the terms up in the order of E18, from $L_0$ through $L_{T-1}$ to $L_T$:

# %%
data = mu + s * rng.standard_normal((N, D))
terms = vlb_terms(schedule, eps_star, data, rng=np.random.default_rng(1), decoder="gaussian", **oracle)
entropy = D * 0.5 * math.log(2 * math.pi * math.e * s**2)
total, se = terms.total.mean(), terms.total.std() / math.sqrt(N)
mean_terms = terms.terms.mean(axis=0)  # (T + 1,): L_0, L_1, ..., L_{T-1}, L_T
decoder_term, denoising_sum = mean_terms[0], mean_terms[1:T].sum()
print(f"-ELBO {total:.4f} +- {se:.4f} nats, entropy of the data {entropy:.4f} nats")
print(f"L_0 = {decoder_term:.3f}, sum of L_1..L_(T-1) = {denoising_sum:.3f}, L_T = {mean_terms[T]:.1e} nats; "
      f"decoder standard deviation sqrt(v_1) = {math.sqrt(exact_variance[1]):.4f}")
assert abs(total - entropy) < 5 * se
assert decoder_term < 0 < total < denoising_sum

steps = np.arange(1, T + 1)
cumulative = np.cumsum(mean_terms[:T])  # L_0 + L_1 + ... + L_{t-1}, for t = 1..T
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
left.loglog(steps[1:], mean_terms[1:T], label=r"$L_{t-1}$, $t = 2..T$")
left.set_xlabel("t")
left.set_ylabel("nats per example (3 dimensions)")
left.set_title(f"Denoising terms ($L_0$ = {decoder_term:.2f} nats is negative: not on a log axis)")
left.legend()
right.semilogx(steps, cumulative, label=r"$L_0 + L_1 + \dots + L_{t-1}$")
right.axhline(entropy, color="C3", ls="--", label=f"entropy of the data, {entropy:.2f} nats")
right.axhline(0.0, color="k", lw=0.6)
right.plot([T], [total], "o", color="C1", label=rf"$-$ELBO (with $L_T$) = {total:.2f} nats")
right.set_xlabel("t (terms added up to this step)")
right.set_ylabel("cumulative nats per example")
right.set_title("The bound, added up term by term")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The cumulative curve starts at $t = 1$ with $L_0$, far below zero, and climbs through the denoising terms to the
# entropy. So the denoising terms alone add up to much more than the total (both printed above): the decoder term is
# negative. That is no contradiction. $L_0 = -\mathbb E\log p_\theta(x_0\mid x_1)$ is minus the log of a *density*, and
# the last reverse step is narrow (its standard deviation is printed above), so its density at the data is far above 1.
# For continuous data single terms of the bound are not amounts of information; their sum is (section 6, on discrete
# data, has only nonnegative terms).
#
# ## 4. The two bounds: other variances bound the entropy from above
#
# Every reverse process $p_\theta$ has its own ELBO, with $\mathrm{ELBO}_\theta(x_0) \le \log p_\theta(x_0)$ (section
# 1). Averaged over the data, $\mathbb E_q\log p_\theta(x_0) = -H - \mathrm{KL}\big(q(x_0)\,\|\,p_\theta(x_0)\big) \le
# -H$ (a KL is $\ge 0$). Chaining the two:
#
# $$\mathbb E_{q(x_0)}\big[-\mathrm{ELBO}_\theta(x_0)\big] \ \ge\ \mathbb E_{q(x_0)}\big[-\log p_\theta(x_0)\big]
# \ \ge\ H .$$
#
# So the average $-$ELBO of *any* reverse process bounds the entropy of the data from above, and the exact process of
# section 3 attains it. Keep its means and change only the variances, to DDPM's two fixed choices (chapter 03):
# $\sigma_t^2 = \tilde\beta_t$ (`"fixed_small"`) and $\sigma_t^2 = \beta_t$ (`"fixed_large"`). Their average $-$ELBOs
# are *the two bounds* of this section. How far above $H$ is each, and which terms pay?
#
# With the exact means, the model's step differs from the true reverse step $q(x_{t-1}\mid x_t) =
# \mathcal N(\mathbb E[x_{t-1}\mid x_t], v_t I)$ only in its variance. Subtract the exact process's term from the
# other's; the $\log q(x_{t-1}\mid x_t, x_0)$ inside both KLs cancels:
#
# $$\begin{aligned}
# \mathbb E_q L_{t-1}(\sigma^2) - \mathbb E_q L_{t-1}(v)
# &= \mathbb E_{q(x_0, x_{t-1}, x_t)}\big[\log q(x_{t-1}\mid x_t) - \log p_\sigma(x_{t-1}\mid x_t)\big]
#   && \text{the posterior log-density cancels}\\
# &= \mathbb E_{q(x_t)}\,\mathrm{KL}\big(q(x_{t-1}\mid x_t)\,\|\,p_\sigma(x_{t-1}\mid x_t)\big)
#   && x_0 \text{ no longer appears}\\
# &= \frac D2\big(r_t - 1 - \log r_t\big),\quad r_t = v_t/\sigma_t^2
#   && \text{E23 with equal means}
# \end{aligned}$$
#
# and the same for $L_0$ with the decoder's variance ($\sigma_1^2 = \tilde\beta_2$ for `fixed_small`, since
# $\tilde\beta_1 = 0$). Both bounds are estimated with the same draws of $x_t$ (the same seed), so the noise of the
# estimates largely cancels in their difference from the exact process:

# %%
variance_labels = {"fixed_small": r"$\sigma_t^2 = \tilde\beta_t$", "fixed_large": r"$\sigma_t^2 = \beta_t$"}
excess_terms, excess_closed = {}, {}
for variance_type, table in (("fixed_small", schedule.posterior_variance_clipped), ("fixed_large", schedule.betas)):
    other = vlb_terms(schedule, eps_star, data, rng=np.random.default_rng(1), decoder="gaussian",
                      variance_type=variance_type, prior=oracle["prior"])
    gap = other.total - terms.total  # per data point, same x_t
    gap_se = gap.std() / math.sqrt(N)
    r = exact_variance[1:] / table[1:]  # v_t / sigma_t^2 for t = 1..T
    excess_closed[variance_type] = D / 2 * (r - 1 - np.log(r))
    excess_terms[variance_type] = (other.terms - terms.terms).mean(axis=0)[:T]  # per term t = 1..T
    share = excess_terms[variance_type][0] / gap.mean()
    print(f"{variance_type}: -ELBO {other.total.mean():.4f} nats, {gap.mean():+.4f} +- {gap_se:.4f} above the exact "
          f"process (closed form {excess_closed[variance_type].sum():+.4f}); L_0's share of the excess {share:.3f}")
    assert gap.mean() > 5 * gap_se
    assert abs(gap.mean() - excess_closed[variance_type].sum()) < 5 * gap_se
    assert share < 0.5
small_excess, large_excess = excess_terms["fixed_small"], excess_terms["fixed_large"]
print("fixed_small excess of the first terms, t = 1..5 (nats):", small_excess[:5].round(3))
print(f"the first five terms carry {small_excess[:5].sum() / small_excess.sum():.0%} of the fixed_small excess and "
      f"{large_excess[:5].sum() / large_excess.sum():.0%} of the fixed_large excess")
assert small_excess[:5].sum() > 0.5 * small_excess.sum() and int(small_excess.argmax()) >= 1  # largest at t >= 2
assert large_excess[:5].sum() < 0.5 * large_excess.sum()
assert np.all(schedule.posterior_variance[1:] <= exact_variance[1:])  # beta_tilde_t <= v_t
assert np.all(exact_variance[1:] <= schedule.betas[1:])  # v_t <= beta_t for these data

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, (variance_type, label) in zip(axes, variance_labels.items(), strict=True):
    ax.semilogx(steps, np.cumsum(excess_terms[variance_type]), label="measured (Monte Carlo)")
    ax.semilogx(steps, np.cumsum(excess_closed[variance_type]), "--",
                label=r"closed form $\frac{D}{2}(r_t - 1 - \log r_t)$")
    ax.set_xlabel("t (terms added up to this step)")
    ax.set_ylabel("cumulative excess over the exact process (nats)")
    ax.set_title(f"{label}: {np.sum(excess_terms[variance_type]):.3f} nats above the exact bound")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# With $\tilde\beta_t$ the step is too narrow, most of all at the start of the chain: the first five terms carry most
# of the excess (printed), and the largest single term is a denoising term at a small $t \ge 2$, not $L_0$. The decoder
# term carries only the share printed for it, well under half. With $\beta_t$ the step is slightly too wide (here $v_t$
# lies between $\tilde\beta_t$ and $\beta_t$, asserted, close to $\beta_t$ since the data's variance is not small
# against the noise): the excess is far smaller and builds up further along the chain, where $v_t/\beta_t$ dips below
# 1; the first five terms carry little of it. In both panels the closed form follows the Monte Carlo estimate.
#
# ## 5. From the bound to L_simple [E22]
#
# Write the posterior mean [E11] with $x_0$ expressed through $x_t$ and the noise that made it, $x_0 = (x_t -
# \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$ [E3]. The algebra of chapter 03's E12, with the true $\epsilon$
# in place of $\epsilon_\theta$, gives line by line:
#
# $$\begin{aligned}
# \tilde\mu_t &= \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon\Big)
#   && \text{E11 at } x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}\\
# \mu_\theta &= \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta(x_t, t)\Big)
#   && \text{E12}\\
# \tilde\mu_t - \mu_\theta &= \frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}\,\big(\epsilon_\theta - \epsilon\big)
#   && \text{subtract: } x_t \text{ cancels}\\
# \mathrm{KL}\big(\mathcal N(\tilde\mu_t, \tilde\beta_t I)\,\|\,\mathcal N(\mu_\theta, \sigma_t^2 I)\big)
#   &= \frac{\lVert\tilde\mu_t - \mu_\theta\rVert^2}{2\sigma_t^2} + C_t
#   && \text{E23 summed over dimensions}\\
# &= \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}\,\lVert\epsilon - \epsilon_\theta\rVert^2 + C_t ,
# \end{aligned}$$
#
# where $C_t = \frac D2\big(\tilde\beta_t/\sigma_t^2 - 1 - \log(\tilde\beta_t/\sigma_t^2)\big)$ is the variance part of
# E23, free of $\theta$ ($C_t = 0$ for $\sigma_t^2 = \tilde\beta_t$). So each denoising term is a weighted
# noise-prediction error [E22]:
#
# $$L_{t-1} = \lambda_t\,\mathbb E\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2 + C_t,\qquad
# \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)} .$$
#
# `denoising_term` computes the KL from the two Gaussians (exercise 4.4); check it against $\lambda_t$ times the
# squared error, with an arbitrary, bad noise prediction:

# %%
t = T // 3
x0_batch = rng.uniform(-1, 1, (8, 3))
eps = rng.standard_normal((8, 3))
xt = q_sample(schedule, x0_batch, t, noise=eps)
eps_theta = np.sin(3 * xt) + 0.5  # anything
kl_term = denoising_term(schedule, eps_theta, x0_batch, xt, t, variance_type="fixed_small")
weighted = vlb_weight(schedule, t, "fixed_small") * ((eps - eps_theta) ** 2).sum(axis=1)
print("KL:", kl_term.round(6), "\nlambda_t |eps - eps_theta|^2:", weighted.round(6))
assert np.allclose(kl_term, weighted, rtol=1e-9)

# %% [markdown]
# How do the weights vary along the chain? For $\sigma_t^2 = \tilde\beta_t =
# \beta_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$ the weight simplifies to $\lambda_t = \beta_t /
# \big(2\alpha_t(1-\bar\alpha_{t-1})\big)$:

# %%
chain = np.arange(2, T + 1)
plt.figure(figsize=(6.5, 3.5))
for variance_type, label in variance_labels.items():
    plt.loglog(chain, vlb_weight(schedule, chain, variance_type), label=label)
plt.axhline(1.0, color="k", lw=0.8, label=r"$L_\mathrm{simple}$: every weight 1")
plt.xlabel("t")
plt.ylabel(r"$\lambda_t$")
plt.title("Weights of the bound on the squared noise error [E22]")
plt.legend()
plt.tight_layout()
plt.show()
lam = vlb_weight(schedule, chain, "fixed_small")
k = int(lam.argmin())
print(f"lambda_2 = {lam[0]:.3g}; minimum {lam[k]:.3g} at t = {chain[k]} (t / T = {chain[k] / T:.2f}); "
      f"lambda_T = {lam[-1]:.3g}, beta_T / (2 alpha_T) = {schedule.betas[T] / (2 * schedule.alphas[T]):.3g}")
assert np.all(np.diff(lam[: k + 1]) < 0) and np.all(np.diff(lam[k:]) > 0)  # falls, then rises: U-shaped
assert lam[0] > lam[-1] > lam[k] and 0.2 < chain[k] / T < 0.5

# %% [markdown]
# The curve is U-shaped. It is largest at $t = 2$ and falls while $\beta_t$ is nearly constant ($1-\bar\alpha_{t-1}
# \approx (t-1)\beta$, so $\lambda_t \approx 1/(2(t-1))$); it reaches its minimum about a third of the way along the
# chain (printed above), then rises again, because $\beta_t$ keeps growing along the linear schedule while
# $1-\bar\alpha_{t-1}$ saturates at 1, ending at $\lambda_T \approx \beta_T/(2\alpha_T)$. The weights for $\sigma_t^2 =
# \beta_t$ have the same shape.
#
# DDPM's $L_\text{simple} = \mathbb E_{t, x_0, \epsilon}\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2$ [E15], with
# $t$ uniform on $1..T$, drops the weights (every $\lambda_t$ becomes 1) and the constants. Training on the bound
# itself, weights included, is training on $L_\text{vlb} = -\mathrm{ELBO}$ (the name Nichol & Dhariwal use). Relative
# to the bound, $L_\text{simple}$ gives the first steps, where $\lambda_t$ is largest, less weight and the middle of
# the chain more. Ho et al. (2020) report that training on $L_\text{simple}$ gave better samples than training on the
# bound (FID 3.17 against 13.51 on CIFAR-10, their Tables 1 and 2) at a slightly worse bound ($\le 3.75$ against $\le
# 3.70$ bits per dimension), and explain it by the network concentrating on the harder denoising tasks at larger $t$.
# That is a finding of their paper, on their network and data, not a theorem. What is a theorem: both losses have the
# same minimizer when the network can fit every $t$ separately, since for each $t$ the squared error is minimized by
# the conditional mean $\mathbb E[\epsilon\mid x_t]$, whatever its weight. For our Gaussian data that minimizer is
# $\epsilon^*$, and its $L_\text{simple}$ is the noise that no function of $x_t$ can predict,
# $\mathbb E\,\mathrm{Var}(\epsilon\mid x_t) = \bar\alpha_t s^2/V_t$ per dimension, averaged over $t$. `l_simple`
# (exercise 4.3) draws $t$ and $\epsilon$ itself:

# %%
batches = np.array([float(l_simple(schedule, eps_star, part, rng=rng)) for part in np.split(data, 20)])
loss, loss_se = batches.mean(), batches.std(ddof=1) / math.sqrt(20)  # standard error from 20 batch means
minimum = float(np.mean(ab[1:] * s**2 / V[1:]))
print(f"L_simple of eps*: {loss:.4f} +- {loss_se:.4f}; analytic minimum {minimum:.4f}")
assert abs(loss - minimum) < 5 * loss_se

# %% [markdown]
# ## 6. Bits per dimension on 8-bit images [E21]
#
# Images are discrete: pixel values $0..255$, scaled to $[-1, 1]$ in steps of $2/255$. The last reverse step therefore
# gives probabilities, not densities: $p_\theta(x_0\mid x_1)$ integrates its Gaussian over each pixel's bin, with the
# two edge bins open to $\pm\infty$ [E21] (exercise 4.2), computed in log space so that no bin has probability 0. Every
# term of the bound is then $\ge 0$. The bound of one image in nats, divided by $D\ln 2$ for its $D$ values, is in
# *bits per dimension*; DDPM reports $\le 3.70$ on CIFAR-10.
#
# Our images: $8\times8$ pixels drawn from $\mathcal N(0, 0.4^2)$ and rounded to the 8-bit grid, so that their entropy
# is known exactly, $H = -\sum_k P_k\log_2 P_k$ per pixel. The reverse process is the exact one for the continuous
# Gaussian before rounding, with each of the three variance choices:

# %%
sd = 0.4
k = np.clip(np.round((sd * rng.standard_normal((256 if FAST else 2000, 1, 8, 8)) + 1.0) * 127.5), 0, 255)
images = k / 127.5 - 1.0
num_dims = images[0].size  # D = 64
centers = -1.0 + 2.0 * np.arange(256) / 255.0
bin_log_p = discretized_gaussian_log_likelihood(centers, np.float64(0.0), np.float64(2 * math.log(sd)))
assert abs(np.exp(bin_log_p).sum() - 1) < 1e-12  # the bins partition the line
entropy_bits = float(-(np.exp(bin_log_p) * bin_log_p).sum() / math.log(2))

V_img = ab * sd**2 + 1 - ab


def eps_image(xt, t):
    a = ab[t].reshape(-1, 1, 1, 1)
    return np.sqrt(1 - a) / (a * sd**2 + 1 - a) * xt


image_variance = np.ones(T + 1)
image_variance[1:] = V_img[:-1] - alphas[1:] * V_img[:-1] ** 2 / V_img[1:]
estimates = {}
for name, variance_type in (("exact", image_variance), ("fixed_large", "fixed_large"), ("fixed_small", "fixed_small")):
    estimates[name] = neg_elbo_bits_per_dim(schedule, eps_image, images, rng=rng, batch_size=128,
                                            variance_type=variance_type, prior=(0.0, V_img[T]), show_progress=False)
    e = estimates[name]
    print(f"{name:>12}: -ELBO = {e.bits_per_dim:.3f} +- {e.standard_error:.3f} bits/dim "
          f"(L_0 {e.terms_bits_per_dim[0]:.3f}, L_T {e.terms_bits_per_dim[-1]:.1e})")
print(f"entropy of the data: {entropy_bits:.3f} bits/dim")
exact = estimates["exact"]
assert exact.bits_per_dim + 5 * exact.standard_error >= entropy_bits  # a bound on the true likelihood
assert exact.bits_per_dim - 5 * exact.standard_error <= entropy_bits + 0.1  # and a tight one here
small = estimates["fixed_small"]
assert small.bits_per_dim > exact.bits_per_dim + 5 * small.standard_error
decoder_share = (small.terms_bits_per_dim[0] - exact.terms_bits_per_dim[0]) / (small.bits_per_dim - exact.bits_per_dim)
print(f"fixed_small is {small.bits_per_dim - exact.bits_per_dim:.3f} bits/dim above the exact process; "
      f"L_0 carries {decoder_share:.1%} of that")
assert decoder_share < 0.5
assert all(e.terms_bits_per_dim[0] > e.terms_bits_per_dim[1:].max() for e in estimates.values())  # L_0 largest
assert all(np.all(e.terms_bits_per_dim >= 0) for e in estimates.values())  # every term >= 0: the curves only rise

plt.figure(figsize=(7, 4))
for name, e in estimates.items():
    plt.semilogx(steps, np.cumsum(e.terms_bits_per_dim[:T]), label=f"{name}: total {e.bits_per_dim:.2f} bits/dim")
plt.axhline(entropy_bits, color="k", ls="--", lw=0.8, label=f"entropy of the data, {entropy_bits:.2f} bits/dim")
plt.xlabel("t (terms added up to this step)")
plt.ylabel(r"$L_0 + \dots + L_{t-1}$ (bits per dimension)")
plt.title("The bound on 8-bit images, added up term by term")
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Units first: section 3's figure was in nats for a whole example of 3 continuous values; here every term is divided by
# $D\ln 2$ with $D = 64$, so the curves end at the bits/dim totals printed above, and since the decoder now gives
# probabilities, $L_0 \ge 0$ and each curve only rises. Every curve starts at $L_0$, the largest single term: the
# decoder must name each pixel's bin. The three curves start close together (their $L_0$ are printed above) and
# separate over the first denoising steps, as in section 4. With the exact process the bound lies within 0.1 bit of the
# entropy (asserted): it is the exact process for the continuous data before rounding, not for the rounded data, so a
# small gap remains. With $\sigma_t^2 = \tilde\beta_t$ the bound ends clearly higher, and the decoder term carries only
# the small share of that excess printed above. Finally the prior term: with the standard prior $\mathcal N(0, I)$,
# DDPM's schedule leaves a negligible $L_T$, below $3\cdot10^{-5}$ bits per dimension:

# %%
prior_bits = prior_term(schedule, images) / (num_dims * math.log(2))
print(f"L_T with p(x_T) = N(0, I): {prior_bits.mean():.2e} bits/dim")
assert prior_bits.mean() < 3e-5

# %% [markdown]
# ## 7. A first learned model
#
# Every model so far was written down, not learned. Now learn $\epsilon_\theta$: a small network from `minidiff.nn`
# (`MLPDenoiser`: $x_t \in \mathbb R^2$ and a sinusoidal embedding of $t$ [E43], chapter 07, through a few residual
# layers, out $\epsilon_\theta \in \mathbb R^2$), differentiated by chapter 01's autodiff, updated by AdamW from
# `minidiff.optim`, on the loss $L_\text{simple}$ [E15]. The data: two moons (`minidiff.data.moons`), a 2-D set with no
# closed-form reverse process. One training step is Ho et al.'s Algorithm 1, which `l_simple` carries out (exercise
# 4.3): draw a batch $x_0$, $t$ uniform on $1..T$ and $\epsilon \sim \mathcal N(0, I)$, form $x_t$ [E3], and take the
# mean squared error between $\epsilon$ and the network's output at $(x_t, t)$; then backpropagate and step.

# %%
toy_rng = np.random.default_rng(4)
toy_data = moons(20000, toy_rng, dtype=np.float32)  # (20000, 2)
net = MLPDenoiser(dim=2, hidden=64 if FAST else 128, layers=2 if FAST else 3, rng=toy_rng)
train_steps, batch_size, n_samples = (300, 128, 1000) if FAST else (3000, 256, 1000)
optimizer = AdamW(net.parameters(), lr=3e-3 if FAST else 2e-3)
lr_schedule = LRScheduler(optimizer, CosineDecay(train_steps, min_factor=0.05))


def eps_theta_graph(xt, t):
    """The network as l_simple calls a model: a NumPy x_t in, a Tensor out (its graph reaches the weights)."""
    return net(md.Tensor(xt), t)


with threadpool_limits(1, user_api="blas"):  # these small matrices run faster on one BLAS thread
    untrained = p_sample_loop(schedule, network_fn(net), (n_samples, 2), np.random.default_rng(5), dtype=np.float32)
    net.train()
    losses = []
    for _ in range(train_steps):
        batch = toy_data[toy_rng.integers(0, len(toy_data), batch_size)]  # (B, 2)
        optimizer.zero_grad()
        loss = l_simple(schedule, eps_theta_graph, batch, rng=toy_rng)  # [E15]: t, eps, x_t, ||eps - eps_theta||^2
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.item()))

window = 25
running = np.convolve(losses, np.ones(window) / window, mode="valid")
plt.figure(figsize=(6.5, 3.5))
plt.plot(losses, lw=0.5, alpha=0.5, label=f"loss of each batch of {batch_size}")
plt.plot(np.arange(window - 1, train_steps), running, label=f"running mean over {window} steps")
plt.axhline(1.0, color="k", ls="--", lw=0.8, label=r"a network that outputs $\epsilon_\theta = 0$")
plt.xlabel("training step")
plt.ylabel(r"$L_\mathrm{simple}$ (mean over dimensions)")
plt.title(f"Training on two moons (T = {T})")
plt.legend()
plt.tight_layout()
plt.show()
first, last = losses[0], np.mean(losses[-window:])
print(f"L_simple: {first:.3f} at the first step, {last:.3f} over the last {window} steps")
assert last < 0.5 < first

# %% [markdown]
# The loss falls from about 1, the score of a network that outputs 0, and levels off well above 0: as in section 5,
# part of $\epsilon$ cannot be predicted from $x_t$.
#
# How will we know whether the samples are good? Measure a distance between samples and data: the sliced Wasserstein
# distance (`minidiff.metrics`) projects both point sets on many random directions, compares the sorted projections
# (the exact 1-D Wasserstein distance) and averages over directions. A distance between finite sets means little alone:
# two independent draws of the data, of the same size, are not at distance 0 either. That distance, averaged over a few
# draws, is the *floor*:

# %%
metric_rng = np.random.default_rng(6)
reference = moons(n_samples, metric_rng)  # fresh data, (n_samples, 2)
directions = random_directions(256, 2, metric_rng)  # every distance below uses the same projections


def distance_to_data(points):
    return sliced_wasserstein(points, reference, directions=directions)


floors = [distance_to_data(moons(n_samples, metric_rng)) for _ in range(5)]
floor = float(np.mean(floors))  # data against data
print(f"floor: {floor:.4f} (draw by draw: {np.round(floors, 4)})")

# %% [markdown]
# Sample with chapter 03's ancestral sampler [E16] (`p_sample_loop`), keep every $x_t$ of the chain, and measure the
# distance to the data along the way:

# %%
with threadpool_limits(1, user_api="blas"):
    chain_xt = p_sample_loop(schedule, network_fn(net), (n_samples, 2), np.random.default_rng(5), dtype=np.float32,
                             return_trajectory=True)  # (T + 1, n_samples, 2), indexed by t
samples = chain_xt[0]
shown = [T, 3 * T // 4, T // 2, T // 4, T // 10, 0]
along = [distance_to_data(chain_xt[t_shown]) for t_shown in shown]
fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.4), sharex=True, sharey=True)
for ax, t_shown, d in zip(axes, shown, along, strict=True):
    ax.scatter(*toy_data[:n_samples].T, s=3, color="0.75", label="data")
    ax.scatter(*chain_xt[t_shown].T, s=1, color="C0", alpha=0.6, label=r"$x_t$ of the sampler")
    ax.set_title(f"t = {t_shown}: distance {d:.3f}")
    ax.set_xlabel("$x_1$")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
axes[0].set_ylabel("$x_2$")
axes[0].legend(loc="lower left", markerscale=4, fontsize=8)
plt.suptitle(f"Ancestral sampling of the learned model, from noise (t = T) to data (t = 0); floor {floor:.3f}")
plt.tight_layout()
plt.show()
assert along[-1] == min(along) and along[-1] < 0.5 * along[0]

step_length = np.linalg.norm(np.diff(chain_xt, axis=0), axis=-1).mean(axis=1)  # |x_t - x_{t-1}|, t = 1..T
early, late = step_length[-(T // 10):].mean(), step_length[: T // 10].mean()
print(f"mean step length: {early:.3f} over the first tenth of the chain (t near T), {late:.3f} over the last")
assert late < 0.5 * early

fig, ax = plt.subplots(figsize=(6.5, 5.5))
ax.scatter(*toy_data[:n_samples].T, s=2, color="0.8", label="data")
stride = max(T // 40, 1)  # every stride-th x_t: 40 segments per trajectory
kept = np.arange(T, -1, -stride)  # T, T - stride, ..., 0
for i in range(5):
    points = chain_xt[kept, i]  # (41, 2), from x_T to x_0
    pieces = LineCollection(np.stack([points[:-1], points[1:]], axis=1), cmap="viridis", linewidths=1.5)
    pieces.set_array(kept[:-1])  # each segment colored by the t it starts from
    pieces.set_clim(0, T)
    ax.add_collection(pieces)
ax.scatter(*chain_xt[T, :5].T, s=40, marker="o", facecolors="none", edgecolors="k", label="start: $x_T$ (noise)")
ax.scatter(*chain_xt[0, :5].T, s=80, marker="*", color="C3", zorder=3, label="end: $x_0$ (sample)")
fig.colorbar(pieces, ax=ax, label="t along the trajectory")
ax.set_xlabel("$x_1$")
ax.set_ylabel("$x_2$")
ax.set_title(f"5 reverse trajectories, $x_T \\to x_0$ ({len(kept) - 1} segments of {stride} steps)")
ax.legend(loc="lower left")
plt.tight_layout()
plt.show()

# %% [markdown]
# Early in the chain the cloud is still Gaussian and far from the data; the distance drops over the last part of the
# chain, where the noise is small, and is smallest at $t = 0$ (asserted). Each trajectory takes large random steps
# while $t$ is large (the noise of a step, $\sigma_t$, grows with $\beta_t$) and small ones near the end, where it
# settles onto a moon (the mean step lengths are printed).
#
# Is that good? Compare with three baselines, at the same distance: the untrained network run through the same sampler,
# the sampler's starting noise $\mathcal N(0, I)$, and the best Gaussian (the data's own mean and covariance), which is
# all a model that learned no shape could reach:

# %%
gaussian_fit = toy_rng.multivariate_normal(toy_data.mean(axis=0), np.cov(toy_data.T), n_samples)
candidates = {"untrained network": untrained, "N(0, I)": chain_xt[T], "Gaussian fit to the data": gaussian_fit,
              "trained network": samples}
distance = {name: distance_to_data(points) for name, points in candidates.items()}
distance["floor: data vs data"] = floor
for name, value in distance.items():
    print(f"{name:>24}: sliced Wasserstein {value:10.4f}  ({value / floor:8.2f} x the floor)")
print(f"1 / sqrt(alpha_bar_T) = {1 / math.sqrt(ab[T]):.0f}")

plt.figure(figsize=(7.5, 3.5))
plt.bar(list(distance), list(distance.values()), color=["0.6", "0.6", "0.6", "C0", "C2"])
plt.yscale("log")
plt.ylabel("sliced Wasserstein distance to the data")
plt.title(f"{n_samples} points each against {n_samples} fresh data points")
plt.xticks(rotation=15)
plt.tight_layout()
plt.show()

ratio_bound = 4.0 if FAST else 2.0
assert distance["trained network"] < ratio_bound * floor, "the trained model is not close to the data"
assert distance["trained network"] < 0.75 * distance["Gaussian fit to the data"]
assert distance["trained network"] < 0.01 * distance["untrained network"]

# %% [markdown]
# The trained network beats every baseline, including the best Gaussian, and comes within the factor of the floor
# asserted above (looser in fast mode, which trains for a few seconds, than in full mode). The floor itself varies by
# tens of percent from one draw of the data to the next (printed above), so a good model can also land below it. The
# untrained network is far worse than the noise it starts from: its guesses of $\epsilon$ are not the noise, so its
# steps do not remove it, while every step divides by $\sqrt{\alpha_t}$ (E12), a factor $1/\sqrt{\bar\alpha_T}$
# (printed above) over the whole chain that magnifies whatever is left.
#
# ## Summary
#
# * The ELBO [E17] follows from Jensen's inequality with the forward process as the distribution over paths; its gap is
#   $\mathrm{KL}(q(x_{1:T}\mid x_0)\,\|\,p_\theta(x_{1:T}\mid x_0))$, zero for the true reverse process.
# * Rewriting each forward step by Bayes' rule with $x_0$ (valid for $t \ge 2$ only) makes the marginals telescope:
#   $-\mathrm{ELBO} = L_T + \sum_{t\ge2} L_{t-1} + L_0$ [E18], a prior term, Gaussian KLs [E19, E20, E23] and a decoder
#   term [E21].
# * For continuous data the decoder term is a log-density and can be very negative: single terms mean little, their sum
#   is the bound. For 8-bit data every term is $\ge 0$ and the total in bits per dimension is the likelihood unit of
#   papers.
# * Any reverse process's average $-$ELBO bounds the entropy of the data from above. With the right means and the wrong
#   variances the excess is $\frac D2(r_t - 1 - \log r_t)$ per step, concentrated in the first steps, not in $L_0$.
# * With the $\epsilon$-parameterization each denoising term is $\lambda_t\lVert\epsilon - \epsilon_\theta\rVert^2 +
#   C_t$ [E22]; $\lambda_t$ is U-shaped along the linear schedule. $L_\text{simple}$ sets every weight to 1; Ho et al.
#   found that this gives better samples, and both losses share their minimizer $\mathbb E[\epsilon\mid x_t]$.
# * A small MLP trained with $L_\text{simple}$ for seconds, sampled by the ancestral sampler, lands within a small
#   factor of the data-vs-data floor of the sliced Wasserstein distance.
#
# ## References
#
# * Sohl-Dickstein, Weiss, Maheswaranathan, Ganguli (2015), *Deep Unsupervised Learning using Nonequilibrium
#   Thermodynamics*: diffusion models themselves, trained by this bound, with the forward process as the distribution
#   over paths and the rewrite through the posterior $q(x_{t-1}\mid x_t, x_0)$ into per-step KLs.
# * Ho, Jain, Abbeel (2020), *Denoising Diffusion Probabilistic Models*: the $\epsilon$-parameterization that turns
#   each KL into a weighted noise-prediction error [E22], $L_\text{simple}$ [E15] and its sample quality, the
#   discretized decoder [E21], bits per dimension on CIFAR-10.
# * Kingma, Salimans, Poole, Ho (2021), *Variational Diffusion Models*: the bound written through the signal-to-noise
#   ratio, its continuous-time limit (which depends on the schedule only through its end points), a learned schedule,
#   and state-of-the-art likelihoods.
# * Nichol, Dhariwal (2021), *Improved Denoising Diffusion Probabilistic Models*: learned variances between
#   $\tilde\beta_t$ and $\beta_t$ trained with a hybrid of $L_\text{simple}$ and the bound, the one-sample-per-term
#   estimator of the bound used by `vlb_terms`, the clipped $\tilde\beta$ at $t = 1$, better log-likelihoods.
#
# ## Pen-and-paper problems
#
# 1. Show that $\log p_\theta(x_0) - \mathrm{ELBO}(x_0) = \mathrm{KL}\big(q(x_{1:T}\mid x_0)\,\|\,p_\theta(x_{1:T}\mid
#    x_0)\big)$.
# 2. Why does the derivation of E18 treat $t = 1$ separately? Try the Bayes rewrite at $t = 1$ and say what breaks.
# 3. For $\sigma_t^2 = \tilde\beta_t$, show $\lambda_t = \beta_t / \big(2\alpha_t(1-\bar\alpha_{t-1})\big)$, and that
#    $\lambda_t \approx 1/(2(t-1))$ for small $t$ when every $\beta_s = \beta$ is small.
# 4. A model gives every 8-bit pixel value the same probability. What is its negative log-likelihood in bits per
#    dimension? A $32\times32\times3$ image has $-\mathrm{ELBO} = 7000$ nats: how many bits per dimension?
# 5. For Gaussian data, the optimal $\epsilon$-predictor reaches $\mathbb E\lVert\epsilon - \epsilon^*\rVert^2 =
#    \bar\alpha_t s^2/V_t$ per dimension at step $t$. Derive it, and explain why it tends to 0 at $t = T$ and to 1 at
#    $t = 1$ when $s^2 \gg \beta_1$.
#
# ### Worked answers
#
# 1. Product rule: $p_\theta(x_{0:T}) = p_\theta(x_0)\,p_\theta(x_{1:T}\mid x_0)$. Then
#
#    $$\mathrm{ELBO} = \mathbb E_q\big[\log p_\theta(x_0) + \log p_\theta(x_{1:T}\mid x_0)
#    - \log q(x_{1:T}\mid x_0)\big]
#    = \log p_\theta(x_0) - \mathbb E_q\log\frac{q(x_{1:T}\mid x_0)}{p_\theta(x_{1:T}\mid x_0)},$$
#
#    and the last expectation is the KL by definition.
# 2. At $t = 1$, $x_{t-1} = x_0$ is the variable we condition on. Bayes would give $q(x_1\mid x_0) = q(x_0\mid x_1,
#    x_0)\,q(x_1\mid x_0)/q(x_0\mid x_0)$: both $q(x_0\mid x_1, x_0)$ and $q(x_0\mid x_0)$ are point masses at the
#    given $x_0$, not densities, so the ratio says nothing and no KL appears. The factor $p_\theta(x_0\mid
#    x_1)/q(x_1\mid x_0)$ is kept; its $q(x_1\mid x_0)$ cancels against the telescoped sum, leaving $L_0$.
# 3. Put $\tilde\beta_t = \beta_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$ into $\lambda_t$:
#
#    $$\lambda_t = \frac{\beta_t^2\,(1-\bar\alpha_t)}{2\beta_t(1-\bar\alpha_{t-1})\,\alpha_t(1-\bar\alpha_t)}
#    = \frac{\beta_t}{2\alpha_t(1-\bar\alpha_{t-1})} .$$
#
#    With a constant small $\beta$: $\bar\alpha_{t-1} = (1-\beta)^{t-1} \approx 1 - (t-1)\beta$, so $1 -
#    \bar\alpha_{t-1} \approx (t-1)\beta$, and $\alpha_t \approx 1$: $\lambda_t \approx 1/(2(t-1))$.
# 4. $-\log_2(1/256) = 8$ bits per dimension. $7000 / (3072 \ln 2) = 7000 / 2129.3 \approx 3.29$ bits per dimension.
# 5. $\epsilon$ and $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ are jointly Gaussian per dimension
#    with $\mathrm{Cov}(\epsilon, x_t) = \sqrt{1-\bar\alpha_t}$ and $\mathrm{Var}\,x_t = V_t$, so
#    $\mathrm{Var}(\epsilon\mid x_t) = 1 - (1-\bar\alpha_t)/V_t = (V_t - 1 + \bar\alpha_t)/V_t = \bar\alpha_t s^2/V_t$,
#    and the conditional mean is the best predictor. At $t = T$, $\bar\alpha_T \approx 0$: $x_T$ is almost pure noise,
#    which reveals $\epsilon$ almost completely. At $t = 1$, $V_1 \approx s^2$ and $\bar\alpha_1 \approx 1$, so the
#    error is $\approx 1$: the noise is tiny against the data's own spread and cannot be told apart from it.
#
# ## Exercises
#
# Open `minidiff/exercises/ch04.py` and fill in:
#
# * **4.1** `normal_kl`: the Gaussian KL of [E23], from log-variances.
# * **4.2** `discretized_gaussian_log_likelihood`: the decoder of [E21], with its open edge bins, using the stable
#   `log_normal_cdf` and `log_normal_cdf_diff` helpers.
# * **4.3** `l_simple`: the training step's loss [E15]: draw $t$, then $\epsilon$, form $x_t$, call the model, compare
#   with the target. This is what section 7 trains with.
# * **4.4** `denoising_term`: one term of the bound [E20], the KL between the posterior [E11] and the model's step
#   [E10], per example.
#
# Grade them with `pytest --student -m ch04`. Your KL is compared with Monte Carlo and quadrature; your bins must sum
# to one and match the Gaussian mass of each bin; your `l_simple` must equal the hand formula for the same seed, be
# unbiased for the exact Gaussian model, and pass gradients to a network's weights; your `denoising_term` must match
# the Monte Carlo mean of $\log q - \log p$ and $\lambda_t\lVert\epsilon - \epsilon_\theta\rVert^2 + C_t$. Each
# exercise is graded with the others at their reference solutions. To run this notebook on your own code, start Jupyter
# with `MINIDIFF_EXERCISES=all` (see the README).
