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
# A diffusion model defines a likelihood $p_\theta(x_0)$, but computing it means integrating over every
# path $x_{1:T}$. The *evidence lower bound* replaces that integral by an expectation under the forward
# process, which we can sample, and it splits into one small Gaussian KL per step. This chapter derives
# the bound, checks it on data whose true likelihood we know, shows how DDPM's simple noise-prediction
# loss is the bound with its weights dropped, and measures a model in bits per dimension.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff.diffusion import (
    NoiseSchedule,
    denoising_term,
    discretized_gaussian_log_likelihood,
    elbo_sample,
    l_simple,
    linear_betas,
    neg_elbo_bits_per_dim,
    normal_kl,
    prior_term,
    q_sample,
    q_sample_trajectory,
    vlb_terms,
    vlb_weight,
)

FAST = md.fast_mode()
T = 100 if FAST else 1000
N = 2000 if FAST else 20000
rng = np.random.default_rng(0)
schedule = NoiseSchedule(linear_betas(T))

# %% [markdown]
# ## 1. The bound
#
# For any distribution $q(x_{1:T}\mid x_0)$, Jensen's inequality ($\log$ is concave) gives [E17]
#
# $$\log p_\theta(x_0) = \log \mathbb E_{q(x_{1:T}\mid x_0)}\!\left[\frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\right]
# \ \ge\ \mathbb E_{q}\!\left[\log \frac{p_\theta(x_{0:T})}{q(x_{1:T}\mid x_0)}\right] = \text{ELBO}(x_0),$$
#
# with a gap of exactly $\mathrm{KL}\big(q(x_{1:T}\mid x_0)\,\|\,p_\theta(x_{1:T}\mid x_0)\big)$. The forward process
# is our $q$: it has no parameters, so only $p_\theta$ is trained. Rewriting each forward step by Bayes,
# $q(x_t\mid x_{t-1}) = q(x_{t-1}\mid x_t, x_0)\,q(x_t\mid x_0)/q(x_{t-1}\mid x_0)$, the marginals telescope and
# [E18]
#
# $$-\text{ELBO} = \underbrace{\mathrm{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T\ \text{[E19]}}
# + \sum_{t=2}^T \underbrace{\mathbb E_q\,\mathrm{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,
#   p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}\ \text{[E20]}}
# \ \underbrace{-\ \mathbb E_q \log p_\theta(x_0\mid x_1)}_{L_0\ \text{[E21]}} .$$
#
# Every KL is between Gaussians (chapter 03's posterior and reverse step), in closed form per dimension
# [E23]: $\mathrm{KL}(\mathcal N(m_1, s_1^2)\,\|\,\mathcal N(m_2, s_2^2))
# = \log\frac{s_2}{s_1} + \frac{s_1^2 + (m_1-m_2)^2}{2s_2^2} - \frac12$.
# A Monte Carlo check of that formula:

# %%
m1, s1, m2, s2 = 0.3, 0.8, -0.2, 1.4
x = m1 + s1 * rng.standard_normal(N * 50)
log_ratio = (-0.5 * ((x - m1) / s1) ** 2 - math.log(s1)) - (-0.5 * ((x - m2) / s2) ** 2 - math.log(s2))
kl = float(normal_kl(np.float64(m1), np.float64(2 * math.log(s1)), np.float64(m2), np.float64(2 * math.log(s2))))
print(f"closed form {kl:.5f}, Monte Carlo {log_ratio.mean():.5f} +- {log_ratio.std() / math.sqrt(x.size):.5f}")
assert abs(log_ratio.mean() - kl) < 5 * log_ratio.std() / math.sqrt(x.size)

# %% [markdown]
# ## 2. A model whose likelihood we know
#
# For data $x_0 \sim \mathcal N(\mu, s^2 I)$ chapter 03 wrote down the exact reverse process: the optimal noise
# predictor $\epsilon^*(x_t, t) = \sqrt{1-\bar\alpha_t}\,(x_t - \sqrt{\bar\alpha_t}\mu)/V_t$, the exact variances
# $V_{t-1} - \alpha_t V_{t-1}^2/V_t$ and the true $q(x_T)$. Built from those, $p_\theta(x_{0:T})$ *is* the forward
# joint, read backwards. The gap of the bound, a KL between $q(x_{1:T}\mid x_0)$ and $p_\theta(x_{1:T}\mid x_0)$,
# is then zero, so even a single trajectory gives $\log p_\theta(x_{0:T}) - \log q(x_{1:T}\mid x_0) = \log q(x_0)$:

# %%
mu, s = np.array([0.4, -0.6, 0.1]), 0.5
ab, alphas = schedule.alpha_bars, schedule.alphas
V = ab * s**2 + 1 - ab


def eps_star(xt, t):
    a = ab[t][:, None]
    return np.sqrt(1 - a) / (a * s**2 + 1 - a) * (xt - np.sqrt(a) * mu)


exact_variance = np.ones(T + 1)
exact_variance[1:] = V[:-1] - alphas[1:] * V[:-1] ** 2 / V[1:]
oracle = {"variance_type": exact_variance, "prior": (np.sqrt(ab[T]) * mu, V[T])}


def log_q(x0):
    return (-0.5 * ((x0 - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(axis=1)


x0 = mu + s * rng.standard_normal((4, 3))
trajectory = q_sample_trajectory(schedule, x0, rng)  # x_0..x_T, shape (T + 1, 4, 3)
one_sample = elbo_sample(schedule, eps_star, trajectory, decoder="gaussian", **oracle)
print("log p(x_0:T) - log q(x_1:T | x_0):", one_sample.round(6))
print("log q(x_0):                       ", log_q(x0).round(6))
assert np.allclose(one_sample, log_q(x0), rtol=1e-9)

# %% [markdown]
# The decomposition estimates each term with one $x_t \sim q(x_t\mid x_0)$ per step. Averaged over many data
# points, the total must match the entropy of the data, $-\mathbb E\log q(x_0)$. Where does the bound spend
# its nats? Mostly at small $t$, where the denoising steps are sharpest:

# %%
data = mu + s * rng.standard_normal((N, 3))
terms = vlb_terms(schedule, eps_star, data, rng=np.random.default_rng(1), decoder="gaussian", **oracle)
entropy = float(np.sum(0.5 * np.log(2 * np.pi * np.e * s**2) * np.ones(3)))
total, se = terms.total.mean(), terms.total.std() / math.sqrt(N)
print(f"-ELBO {total:.4f} +- {se:.4f} nats, entropy of the data {entropy:.4f} nats")
assert abs(total - entropy) < 5 * se
mean_terms = terms.terms.mean(axis=0)
plt.figure(figsize=(6, 3))
plt.loglog(np.arange(1, T), mean_terms[1:T], label=r"$L_{t-1}$, t = 2..T")
plt.xlabel("t - 1")
plt.ylabel("nats")
plt.title(f"L_0 = {mean_terms[0]:.2f}, L_T = {mean_terms[T]:.2e}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Other variances only bound the likelihood
#
# Keep the optimal means but use DDPM's fixed variances: the reverse process is no longer the true one, and
# on average over the data the bound drops below the log-likelihood (the true variances are the ones that
# minimize every expected KL term). The difference can be small, so both bounds are estimated with the
# same draws of $x_t$ (the same seed): the noise of the estimates then largely cancels in their difference.

# %%
for variance_type in ("fixed_small", "fixed_large"):
    other = vlb_terms(schedule, eps_star, data, rng=np.random.default_rng(1), decoder="gaussian",
                      variance_type=variance_type, prior=oracle["prior"])
    gap = other.total - terms.total  # per data point, same x_t
    gap_se = gap.std() / math.sqrt(N)
    print(f"{variance_type}: -ELBO {other.total.mean():.4f} nats, {gap.mean():+.4f} +- {gap_se:.4f} "
          "against the exact process")
    assert gap.mean() > 5 * gap_se

# %% [markdown]
# ## 4. From the bound to L_simple
#
# With the mean of [E12] the posterior mean and the model mean differ only through the noise:
# $\tilde\mu_t - \mu_\theta = \frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}(\epsilon_\theta - \epsilon)$.
# So the KL of [E20] is a weighted noise-prediction error [E22]:
#
# $$L_{t-1} = \lambda_t\,\mathbb E\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2 + C_t,\qquad
# \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)} ,$$
#
# with $C_t$ independent of $\theta$ ($C_t = 0$ for $\sigma_t^2 = \tilde\beta_t$). Check it with an arbitrary,
# bad noise prediction:

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
# DDPM's $L_\text{simple} = \mathbb E_{t, x_0, \epsilon}\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2$ [E15], $t$
# uniform, sets every $\lambda_t$ to 1. The weights of the true bound are largest at small $t$ (for
# $\sigma_t^2 = \tilde\beta_t$, $\lambda_t = \beta_t / (2\alpha_t(1-\bar\alpha_{t-1}))$, about $1/(2(t-1))$ while the
# betas are nearly constant) and fall to about $\beta_T/2$, so $L_\text{simple}$ shifts the model's effort
# towards the noisier steps, which is what makes samples good;
# the bound is still the right measure of likelihood, and a model trained on $L_\text{simple}$ is evaluated with
# it.

# %%
steps = np.arange(2, T + 1)
plt.figure(figsize=(6, 3))
for variance_type in ("fixed_small", "fixed_large"):
    plt.loglog(steps, vlb_weight(schedule, steps, variance_type), label=variance_type)
plt.axhline(1.0, color="k", lw=0.8, label=r"$L_\mathrm{simple}$")
plt.xlabel("t")
plt.ylabel(r"$\lambda_t$")
plt.legend()
plt.tight_layout()
plt.show()
lam = vlb_weight(schedule, steps, "fixed_small")
print(f"lambda_2 = {lam[0]:.3g}, lambda_T = {lam[-1]:.3g}")
assert lam[0] > 10 * lam[-1]

# %% [markdown]
# Both losses share their minimizer: the conditional mean $\mathbb E[\epsilon\mid x_t]$, which for our Gaussian
# data is $\epsilon^*$. Its $L_\text{simple}$ is the remaining noise $\mathbb E\,\mathrm{Var}(\epsilon\mid x_t) =
# \bar\alpha_t s^2/V_t$ per dimension, averaged over $t$:

# %%
batches = np.array([float(l_simple(schedule, eps_star, part, rng=rng)) for part in np.split(data, 20)])
loss, loss_se = batches.mean(), batches.std(ddof=1) / math.sqrt(20)  # standard error from 20 batch means
minimum = float(np.mean(ab[1:] * s**2 / V[1:]))
print(f"L_simple of eps*: {loss:.4f} +- {loss_se:.4f}; analytic minimum {minimum:.4f}")
assert abs(loss - minimum) < 5 * loss_se

# %% [markdown]
# ## 5. Bits per dimension on 8-bit images
#
# Images are discrete: pixel values $0..255$, scaled to $[-1, 1]$ in steps of $2/255$. The last reverse step
# therefore gives probabilities, not densities: $p_\theta(x_0\mid x_1)$ integrates its Gaussian over each
# pixel's bin, with the two edge bins open to $\pm\infty$ [E21], computed in log space so that no bin has
# probability 0. The bound in nats, divided by $D\ln 2$ for $D$ values per image, is in *bits per dimension*;
# DDPM reports $\le 3.70$ on CIFAR-10.
#
# Our images: $8\times8$ pixels drawn from $\mathcal N(0, 0.4^2)$ and rounded to the 8-bit grid, so that their
# entropy is known exactly, $H = -\sum_k P_k\log_2 P_k$ per pixel.

# %%
sd = 0.4
k = np.clip(np.round((sd * rng.standard_normal((N // 4 if FAST else N // 10, 1, 8, 8)) + 1.0) * 127.5), 0, 255)
images = k / 127.5 - 1.0
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
                                            variance_type=variance_type, prior=(0.0, V_img[T]))
    e = estimates[name]
    print(f"{name:>12}: -ELBO = {e.bits_per_dim:.3f} +- {e.standard_error:.3f} bits/dim "
          f"(L_0 {e.terms_bits_per_dim[0]:.3f}, L_T {e.terms_bits_per_dim[-1]:.1e})")
print(f"entropy of the data: {entropy_bits:.3f} bits/dim")
exact = estimates["exact"]
assert exact.bits_per_dim + 5 * exact.standard_error >= entropy_bits  # a bound on the true likelihood
assert exact.bits_per_dim - 5 * exact.standard_error <= entropy_bits + 0.1  # and a tight one here
assert estimates["fixed_small"].bits_per_dim > exact.bits_per_dim + 5 * estimates["fixed_small"].standard_error

# %% [markdown]
# With the exact reverse process the bound is within a few hundredths of a bit of the entropy: the only
# loss is that a discrete $x_0$ does not pin $x_1$ down as tightly as a continuous one would. With
# $\sigma_t^2 = \tilde\beta_t$ the decoder is far too narrow (at $t = 1$ it uses $\tilde\beta_2$, much smaller than
# the true $\mathrm{Var}(x_0\mid x_1)$), and $L_0$ pays for it. Finally the prior term: with the standard
# prior $\mathcal N(0, I)$, DDPM's schedule leaves $L_T$ of about $10^{-5}$ bits per dimension:

# %%
prior_bits = prior_term(schedule, images) / (64 * math.log(2))
print(f"L_T with p(x_T) = N(0, I): {prior_bits.mean():.2e} bits/dim")
assert prior_bits.mean() < 3e-5

# %% [markdown]
# ## Exercises
#
# Open `minidiff/exercises/ch04.py` and fill in:
#
# * **4.1** `normal_kl`: the Gaussian KL of [E23], from log-variances;
# * **4.2** `discretized_gaussian_log_likelihood`: the decoder of [E21], with its open edge bins, using the
#   stable `log_normal_cdf` and `log_normal_cdf_diff` helpers.
#
# Grade them with `pytest --student -m ch04`: your KL is compared with Monte Carlo and quadrature, your bins
# must sum to one, match the Gaussian mass of each bin, and stay finite a thousand standard deviations out.
