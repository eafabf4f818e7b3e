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
# # 05 · Scores, score matching, Langevin dynamics, NCSN
#
# Chapters 02-04 built diffusion models from a chain of Gaussians and a bound on the likelihood. This
# chapter tells the same story from the other end, as Song & Ermon (2019) did: learn the *gradient* of the
# log density, the score, and sample by following it with a little noise added (Langevin dynamics).
# We derive why Langevin dynamics samples $p$ and what a finite step costs, how a score can be learned
# from samples alone (score matching, then denoising score matching), why one noise level is not enough
# and how annealing over many noise levels fixes it. On the way, denoising score matching turns out to be
# the $L_\text{simple}$ of chapter 04 in disguise.
#
# Everything runs on a 2-D Gaussian mixture whose density, score and every noised version are known in
# closed form (`GaussianMixture`), so each claim can be checked against the exact answer.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from threadpoolctl import threadpool_limits

import minidiff as md
from minidiff import nn
from minidiff.autodiff import Tensor
from minidiff.diffusion import NoiseSchedule, cosine_betas, eps_from_score, l_simple, score_from_eps
from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.score import (
    LinearScore,
    denoising_score_matching_loss,
    explicit_score_matching_loss,
    implicit_score_matching_loss,
)
from minidiff.optim import Adam, CosineDecay, LRScheduler
from minidiff.samplers.langevin import AnnealedLangevinSampler, langevin_dynamics, langevin_step

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks the sample sizes and the training run
N = 2000 if FAST else 20000
rng = np.random.default_rng(0)
gmm = GaussianMixture.example_2d()
print(gmm)

# The plotting box and a grid over it, for densities and fields.
BOX = (-2.2, 2.2)
axis = np.linspace(*BOX, 200)
GX, GY = np.meshgrid(axis, axis)
GRID = np.column_stack([GX.ravel(), GY.ravel()])  # (40000, 2)


def draw_density(ax, mixture=gmm, box=BOX):
    """Contour lines of a mixture's density, the box, equal axes and axis labels."""
    a = np.linspace(*box, 200)
    gx, gy = np.meshgrid(a, a)
    density = np.exp(mixture.log_prob(np.column_stack([gx.ravel(), gy.ravel()]))).reshape(gx.shape)
    ax.contour(gx, gy, density, levels=8, colors="0.55", linewidths=0.8)
    ax.set_xlim(box)
    ax.set_ylim(box)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")


def weight_error(x, mixture=gmm):
    """max_k |mean_i p(k | x_i) - w_k|: E_p[p(k | x)] = w_k exactly, so this is 0 up to noise for samples of p."""
    return float(np.abs(mixture.responsibilities(x).mean(axis=0) - mixture.weights).max())


def weight_tolerance(n, mixture=gmm):
    """5 standard errors of `weight_error` for n samples of p: p(k | x) lies in [0, 1] with mean w_k, so its
    variance is at most w_k (1 - w_k)."""
    return 5 * float(np.sqrt(mixture.weights * (1 - mixture.weights) / n).max())


# %% [markdown]
# ## 1. The score
#
# The score of a density $p$ on $\mathbb R^D$ is the gradient of its logarithm [E24]:
#
# $$s(x) = \nabla_x \log p(x).$$
#
# It points uphill, towards where the data is denser, and it does not care about normalization: if
# $p(x) = \tilde p(x)/Z$ with an intractable $Z = \int \tilde p$, then $\log p = \log\tilde p - \log Z$ and
# $\nabla_x \log Z = 0$, so $s = \nabla_x \log\tilde p$. An energy-based model $\tilde p = e^{-E_\theta}$ has
# score $-\nabla_x E_\theta$ without ever computing $Z$: that is what makes scores the convenient object to
# learn (Hyvärinen 2005, *Estimation of non-normalized statistical models by score matching*).
#
# For a Gaussian $\mathcal N(\mu, \Sigma)$, $\log p = -\frac12 (x-\mu)^\top\Sigma^{-1}(x-\mu) + \text{const}$, so
# $s(x) = -\Sigma^{-1}(x-\mu)$: a linear field pulling back to the mean. For a mixture
# $p = \sum_k w_k \mathcal N_k$, differentiate the log of a sum:
#
# $$\nabla_x \log p = \frac{\sum_k w_k \nabla_x \mathcal N_k}{p}
#   = \sum_k \underbrace{\frac{w_k \mathcal N_k(x)}{p(x)}}_{r_k(x) = p(k\mid x)} \nabla_x\log\mathcal N_k(x)
#   = -\sum_k r_k(x)\,\Sigma_k^{-1}(x-\mu_k),$$
#
# each component's Gaussian score weighted by how responsible that component is for $x$. Our example
# mixture has three elongated, rotated components with weights 0.5, 0.3 and 0.2. First a check that
# `gmm.score` is the gradient of `gmm.log_prob`, by central differences:

# %%
x = np.concatenate([gmm.sample(rng, 500), rng.uniform(-3, 3, (500, 2))])  # near the data and far from it
h = 1e-6
numeric = np.column_stack([(gmm.log_prob(x + h * e) - gmm.log_prob(x - h * e)) / (2 * h) for e in np.eye(2)])
score = gmm.score(x)
fd_error = float(np.max(np.abs(numeric - score) / (1 + np.abs(score))))
print(f"max |finite differences - score| / (1 + |score|) = {fd_error:.1e}")
# central differences with h = 1e-6: truncation h^2 |f'''| / 6 plus rounding ~1e-16 |log p| / h, both below 1e-7
assert fd_error < 1e-6

# %% [markdown]
# The field over the density: arrows show the direction of the score, their colour its size. Between the
# components the arrows turn (the responsibilities hand over from one component to the next), and far
# from the data the score grows linearly with the distance.

# %%
coarse = np.linspace(*BOX, 23)
QX, QY = np.meshgrid(coarse, coarse)
QGRID = np.column_stack([QX.ravel(), QY.ravel()])


def draw_field(ax, field, title):
    """Unit arrows along the field, coloured by log10 of its length; returns the quiver (for a colorbar)."""
    length = np.linalg.norm(field, axis=1)
    unit = field / length[:, None]
    q = ax.quiver(QGRID[:, 0], QGRID[:, 1], unit[:, 0], unit[:, 1], np.log10(length), cmap="viridis",
                  scale=30, width=0.004, clim=(-0.5, 2.0))
    ax.set_title(title)
    return q


fig, ax = plt.subplots(figsize=(6, 5.2))
draw_density(ax)
q = draw_field(ax, gmm.score(QGRID), "The score over the density (contours)")
fig.colorbar(q, ax=ax, label=r"$\log_{10}\,\|\nabla_x \log p(x)\|$")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Langevin dynamics
#
# Knowing the score, how do we draw samples? Take the stochastic differential equation
#
# $$dx = \tfrac12 \nabla_x \log p(x)\,dt + dw$$
#
# (drift up the score, plus Brownian motion $w$). The density $\rho_t$ of $x(t)$ obeys its Fokker-Planck
# equation, which for a drift $b(x)$ and unit diffusion reads
#
# $$\partial_t \rho = -\nabla\cdot J,\qquad J = b\,\rho - \tfrac12\nabla\rho .$$
#
# $J$ is the probability flux. Put $b = \frac12\nabla\log p$ and $\rho = p$:
# $J = \frac12 p\,\frac{\nabla p}{p} - \frac12\nabla p = 0$, so $\partial_t p = 0$: **$p$ is stationary**, and
# under mild conditions (e.g. $\log p$ strongly concave far out) every start converges to it. Only the
# score enters, never $Z$. The Euler-Maruyama discretization with step $\delta$ is Langevin dynamics
# [E25] (the *unadjusted Langevin algorithm*: Roberts & Tweedie 1996, *Exponential convergence of Langevin
# distributions and their discrete approximations*; brought to machine learning by Welling & Teh 2011,
# *Bayesian learning via stochastic gradient Langevin dynamics*):
#
# $$x_{i+1} = x_i + \frac{\delta}{2}\,\nabla_x\log p(x_i) + \sqrt{\delta}\,z_i,\qquad z_i\sim\mathcal N(0, I).$$
#
# **What the finite step costs.** Take $p = \mathcal N(0, s^2)$ in one dimension, score $-x/s^2$. One step is
#
# $$x_{i+1} = x_i - \frac{\delta}{2s^2}\,x_i + \sqrt\delta\,z_i = \rho\,x_i + \sqrt\delta\,z_i,
#   \qquad \rho = 1 - \frac{\delta}{2s^2},$$
#
# an AR(1) process. $z_i$ is independent of $x_i$, so the variances add:
# $v_{i+1} = \rho^2 v_i + \delta$. Its fixed point $v = \rho^2 v + \delta$ is the stationary variance
#
# $$v = \frac{\delta}{1 - \rho^2} = \frac{\delta}{1-\left(1-\frac{\delta}{2s^2}\right)^2}.$$
#
# Factor the denominator: $1-\rho^2 = (1-\rho)(1+\rho) = \frac{\delta}{2s^2}\left(2 - \frac{\delta}{2s^2}\right)
# = \frac{\delta}{s^2}\left(1 - \frac{\delta}{4s^2}\right)$, hence
#
# $$v = \frac{s^2}{1 - \delta/(4s^2)} = s^2 + \frac{\delta}{4} + O(\delta^2).$$
#
# The chain samples a slightly wider law than $p$: a bias of order $\delta$, which vanishes as $\delta\to 0$
# (a Metropolis accept/reject step would remove it; diffusion samplers do without). And the chain is stable
# only if $|\rho| < 1$, i.e. $\delta < 4s^2$: the step must be small against the *narrowest* direction of $p$.
# Since $v_i - v = \rho^{2i}(v_0 - v)$, chains started at 0 forget their start geometrically. Simulated
# against the formula:

# %%
s2 = 1.0
deltas = np.array([0.05, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5])
n_chains = 4000 if FAST else 40000
variances = np.array([langevin_dynamics(lambda v: -v / s2, np.zeros((n_chains, 1)), d, 300, rng).var()
                      for d in deltas])
predicted = deltas / (1 - (1 - deltas / (2 * s2)) ** 2)
se = predicted * math.sqrt(2 / (n_chains - 1))  # standard error of a Gaussian sample variance
for d, v_sim, v_pred, e in zip(deltas, variances, predicted, se, strict=True):
    print(f"delta = {d:4.2f}: chain variance {v_sim:.4f}, AR(1) formula {v_pred:.4f} (5 s.e. {5 * e:.4f})")
# after 300 steps |rho|^600 < 1e-6 for every delta: the chains are stationary
assert np.all(np.abs(variances - predicted) < 5 * se)
assert np.all(np.abs(variances - s2)[deltas >= 1.0] > 5 * se[deltas >= 1.0])  # the bias is resolved there

fine = np.linspace(0.01, 3.0, 200)
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.plot(fine, fine / (1 - (1 - fine / (2 * s2)) ** 2), label=r"stationary variance $\delta / (1 - \rho^2)$")
ax.plot(fine, s2 + fine / 4, "--", label=r"first order $s^2 + \delta / 4$")
ax.axhline(s2, color="0.4", lw=1, label=r"target variance $s^2$")
ax.errorbar(deltas, variances, yerr=5 * se, fmt="o", color="C3", capsize=3,
            label=f"{n_chains} chains, 300 steps (bars: 5 s.e.)")
ax.set_xlabel(r"step size $\delta$")
ax.set_ylabel("variance of the chain")
ax.set_title(r"Langevin on $\mathcal{N}(0, 1)$: an $O(\delta)$ bias")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# On the mixture the step must be small against the variance of its narrowest direction (the smallest
# eigenvalue of the $\Sigma_k$, printed below); we take $\delta = 0.005$. A few chains, started around the box:

# %%
narrowest = float(np.linalg.eigvalsh(gmm.covariances).min())  # the smallest variance s^2 of any component
print(f"narrowest direction: s = {math.sqrt(narrowest):.2f}, stability limit 4 s^2 = {4 * narrowest:.3f}")
assert 4 * narrowest / 10 > 0.005  # delta an order of magnitude below the limit
starts = np.array([[-2.0, 2.0], [2.0, -1.8], [2.0, 2.0], [-2.0, -2.0], [0.3, -0.4]])
paths = langevin_dynamics(gmm.score, starts, 0.005, 600, rng, return_trajectory=True)  # (601, 5, 2)
fig, ax = plt.subplots(figsize=(5.5, 5))
draw_density(ax)
for j in range(len(starts)):
    ax.plot(paths[:, j, 0], paths[:, j, 1], lw=0.8, color=f"C{j}", alpha=0.8)
ax.plot(starts[:, 0], starts[:, 1], "ko", ms=5, label="start")
ax.plot(paths[-1, :, 0], paths[-1, :, 1], "r*", ms=11, label="after 600 steps")
ax.set_title(r"Langevin paths, $\delta = 0.005$")
ax.legend(loc="lower center")
plt.tight_layout()
plt.show()

# %% [markdown]
# Each chain runs downhill into one of the components and then wanders inside it. Two experiments with
# many chains: started *at* $p$ (fresh draws of the mixture), the chains must stay at $p$ (stationarity; a
# smaller step $\delta = 0.002$ keeps the $O(\delta)$ bias below what $N$ samples resolve); started from
# $\mathcal N(0, 4I)$, around the data, they must find the components. We compare means, covariances and the
# mixture weights (estimated as the mean responsibilities: $\mathbb E_p[p(k\mid x)] = w_k$ exactly) with a
# fresh sample of the data, in units of the standard error of the difference.

# %%


def two_sample_z(a, b, mixture=gmm):
    """For two samples (n, 2): the largest |difference| / standard error of their means, covariances and mean
    responsibilities (each a mean of i.i.d. terms, so se = sqrt(var_a / n_a + var_b / n_b))."""

    def terms(x):
        c = x - x.mean(axis=0)
        return {"mean": x, "covariance": (c[:, :, None] * c[:, None, :]).reshape(len(x), -1),
                "weights": mixture.responsibilities(x)}

    ta, tb = terms(a), terms(b)
    return {k: float(np.max(np.abs(ta[k].mean(axis=0) - tb[k].mean(axis=0))
                            / np.sqrt(ta[k].var(axis=0) / len(a) + tb[k].var(axis=0) / len(b)))) for k in ta}


n_steps = 500 if FAST else 1000
data = gmm.sample(rng, N)
from_p = langevin_dynamics(gmm.score, gmm.sample(rng, N), 0.002, n_steps, rng)
from_noise = langevin_dynamics(gmm.score, 2 * rng.standard_normal((N, 2)), 0.002, n_steps, rng)
z_p, z_noise = two_sample_z(from_p, data), two_sample_z(from_noise, data)
print("started at p:       |difference| / s.e. =", {k: round(v, 1) for k, v in z_p.items()})
print("started at N(0,4I): |difference| / s.e. =", {k: round(v, 1) for k, v in z_noise.items()})
for name, x in (("data", data), ("started at p", from_p), ("started at N(0, 4I)", from_noise)):
    print(f"{name:>19}: mixture weights {gmm.responsibilities(x).mean(axis=0).round(3)}")
assert max(z_p.values()) < 5  # p is stationary: after n_steps the chains still sample it
assert weight_error(from_noise) > weight_tolerance(N)  # but from N(0, 4I) the weights come out wrong


def scatter_by_component(ax, x, title, mixture=gmm, n_max=2000):
    """Up to n_max points coloured by their most likely component; the legend gives the estimated weights."""
    r = mixture.responsibilities(x)
    shown = r[:n_max].argmax(axis=1)
    draw_density(ax)
    for k in range(mixture.K):
        ax.scatter(*x[:n_max][shown == k].T, s=3, color=f"C{k}", alpha=0.6,
                   label=f"weight {r[:, k].mean():.2f} (true {mixture.weights[k]:.1f})")
    ax.set_title(title)
    ax.legend(loc="lower right", markerscale=3, fontsize=8)


fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), sharex=True, sharey=True)
scatter_by_component(axes[0], data, "data")
scatter_by_component(axes[1], from_p, f"Langevin from p, {n_steps} steps")
scatter_by_component(axes[2], from_noise, f"Langevin from N(0, 4I), {n_steps} steps")
plt.tight_layout()
plt.show()

# %% [markdown]
# The chains started at $p$ are indistinguishable from the data. The chains started from noise have found
# the three components, but hold them in the wrong proportions (compare the printed weights): a chain is
# captured by the component whose basin it starts in and almost never crosses the low-density gaps between
# them. A larger step would cross sooner, but the narrowest component caps it ($\delta < 4s^2$, printed above).
# Section 5 returns to this.
#
# ## 3. Score matching
#
# We do not know the score of real data. Fit a model $s_\theta$ to it by the *explicit* score matching
# objective [E26]:
#
# $$J_\text{ESM}(\theta) = \tfrac12\,\mathbb E_{p}\,\lVert s_\theta(x) - \nabla_x\log p(x)\rVert^2 .$$
#
# It needs the unknown $\nabla\log p$. Hyvärinen (2005) removed it by integrating by parts. Expand the square:
#
# $$J_\text{ESM} = \tfrac12\mathbb E\lVert s_\theta\rVert^2 - \mathbb E[s_\theta^\top\nabla\log p]
#   + \tfrac12\mathbb E\lVert\nabla\log p\rVert^2 .$$
#
# The last term does not depend on $\theta$. In one dimension the middle one is, using $p\,(\log p)' = p'$,
#
# $$\mathbb E_p[s_\theta\,(\log p)'] = \int p(x)\,s_\theta(x)\,\frac{p'(x)}{p(x)}\,dx = \int s_\theta\,p'\,dx
#   = \big[s_\theta\,p\big]_{-\infty}^{\infty} - \int s_\theta'\,p\,dx = -\mathbb E_p[s_\theta'] ,$$
#
# where the boundary term vanishes when $s_\theta(x)p(x)\to 0$ at $\pm\infty$. In $D$ dimensions do the same
# for each coordinate $j$, integrating by parts in $x_j$ with the others fixed:
# $\mathbb E_p[s_{\theta,j}\,\partial_j\log p] = \int s_{\theta,j}\,\partial_j p\,dx
# = -\mathbb E_p[\partial_j s_{\theta,j}]$.
# Summed over $j$, $\sum_j \partial_j s_{\theta,j} = \operatorname{tr}(\nabla_x s_\theta)$, so
#
# $$J_\text{ESM}(\theta) = \underbrace{\mathbb E_p\!\left[\operatorname{tr}(\nabla_x s_\theta(x))
#   + \tfrac12\lVert s_\theta(x)\rVert^2\right]}_{J_\text{ISM}(\theta)}
#   + \tfrac12\,\mathbb E_p\lVert\nabla_x\log p\rVert^2 .$$
#
# The *implicit* objective $J_\text{ISM}$ needs samples of $p$ only, and has the same minimizer. A check
# with a fixed, untrained network on the mixture: per sample, $J_\text{ISM}$ terms minus
# ($J_\text{ESM}$ terms $-\frac12\lVert\nabla\log p\rVert^2$) must average to zero.

# %%


def make_mlp(seed, hidden=32):
    """A small score network R^2 -> R^2 (two hidden SiLU layers), float64."""
    r = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(2, hidden, rng=r, dtype=np.float64), nn.SiLU(),
                         nn.Linear(hidden, hidden, rng=r, dtype=np.float64), nn.SiLU(),
                         nn.Linear(hidden, 2, rng=r, dtype=np.float64))


network = make_mlp(1)
x = gmm.sample(rng, N)
true_score = gmm.score(x)
ism = implicit_score_matching_loss(network, x, reduction="none").data  # the trace by D backward passes
esm = explicit_score_matching_loss(network, x, true_score, reduction="none").data
half_fisher = 0.5 * (true_score**2).sum(axis=1)  # 1/2 ||grad log p||^2 per sample
gap = ism - (esm - half_fisher)
gap_se = gap.std() / math.sqrt(N)
print(f"J_ISM = {ism.mean():.4f},  J_ESM - E||grad log p||^2 / 2 = {(esm - half_fisher).mean():.4f},  "
      f"difference {gap.mean():+.4f} +- {gap_se:.4f}")
assert abs(gap.mean()) < 5 * gap_se

# %% [markdown]
# **What the autodiff can and cannot do here.** $J_\text{ISM}$ contains $\operatorname{tr}(\nabla_x s_\theta)$, a
# derivative in $x$; its gradient in $\theta$ is a second derivative. minidiff's backward passes run on NumPy
# arrays and record no graph (no "double backward"; PyTorch has one, `create_graph=True`). So
# `score_jacobian_trace` gets the trace *value* by $D$ backward passes, one per input coordinate, but the
# loss of a network built from it carries no gradient: training a network by $J_\text{ISM}$ is out of reach
# here. A model whose divergence is written in Tensor operations can still be trained, e.g. the linear
# $s_\theta(x) = Ax + b$ with $\operatorname{tr}(\nabla_x s_\theta) = \operatorname{tr}A$ (`LinearScore.divergence`).
# Its minimizer is the score of the Gaussian with the sample's mean $\bar x$ and covariance $S$. Set the
# gradients of $\operatorname{tr}A + \frac12\mathbb E\lVert Ax+b\rVert^2$ to zero: in $b$,
# $\mathbb E[Ax + b] = 0$, so $b = -A\bar x$; in $A$,
# $I + \mathbb E[(Ax+b)\,x^\top] = I + A\,\mathbb E[(x-\bar x)\,x^\top] = I + AS = 0$, so $A = -S^{-1}$ and
# $b = S^{-1}\bar x$.

# %%
print("a network's implicit loss has a gradient:", implicit_score_matching_loss(network, x[:100]).requires_grad)
linear = LinearScore.zeros(2)
optimizer = Adam(linear.parameters(), lr=0.1)
lr_schedule = LRScheduler(optimizer, CosineDecay(500))
for _ in range(500):
    optimizer.zero_grad()
    implicit_score_matching_loss(linear, x, trace_fn=linear.divergence).backward()
    optimizer.step()
    lr_schedule.step()
S = np.cov(x.T, bias=True)
ism_fit_error = max(np.abs(linear.weight.data + np.linalg.inv(S)).max(),
                    np.abs(linear.bias.data - np.linalg.inv(S) @ x.mean(axis=0)).max())
print(f"linear model fitted by J_ISM vs the Gaussian fit (-S^-1, S^-1 xbar): max difference {ism_fit_error:.1e}")
assert ism_fit_error < 1e-6

# %% [markdown]
# Even with double backward, the trace costs $D$ backward passes per batch: for a $3\times 64\times 64$ image,
# $D = 12288$. Random projections (Song, Garg, Shi & Ermon 2019, *Sliced score matching*) cut that to one or
# a few, but the way that won avoids derivatives of the model altogether.
#
# ## 4. Denoising score matching
#
# Vincent (2011, *A connection between score matching and denoising autoencoders*) noises the data,
# $x_t = s\,x_0 + n\,\epsilon$ (here VE: $s = 1$, $n = \sigma$; the VP path of chapter 02 has
# $s = \sqrt{\bar\alpha_t}$, $n = \sqrt{1-\bar\alpha_t}$), and regresses the score of the *noising kernel*,
# which is known [E27]:
#
# $$J_\text{DSM}(\theta) = \tfrac12\,\mathbb E_{x_0, x_t}\lVert s_\theta(x_t) - \nabla_{x_t}\log q(x_t\mid x_0)\rVert^2,
#   \qquad \nabla_{x_t}\log q(x_t\mid x_0) = -\frac{x_t - s\,x_0}{n^2} = -\frac{\epsilon}{n}.$$
#
# **Why it learns the score of the noised density** $q(x_t) = \int p(x_0)\,q(x_t\mid x_0)\,dx_0$. Expand both
# objectives:
#
# $$J_\text{DSM} = \tfrac12\mathbb E\lVert s_\theta\rVert^2
#   - \mathbb E\big[s_\theta(x_t)^\top\nabla\log q(x_t\mid x_0)\big] + C_1,\qquad
#   J_\text{ESM}(q) = \tfrac12\mathbb E\lVert s_\theta\rVert^2
#   - \mathbb E\big[s_\theta(x_t)^\top\nabla\log q(x_t)\big] + C_2,$$
#
# with $C_1, C_2$ free of $\theta$. The cross terms agree: condition on $x_t$,
#
# $$\mathbb E\big[\nabla\log q(x_t\mid x_0)\,\big|\,x_t\big]
#   = \int \frac{p(x_0)\,q(x_t\mid x_0)}{q(x_t)}\,\frac{\nabla q(x_t\mid x_0)}{q(x_t\mid x_0)}\,dx_0
#   = \frac{\nabla \int p(x_0)\,q(x_t\mid x_0)\,dx_0}{q(x_t)} = \nabla\log q(x_t),$$
#
# so $\mathbb E[s_\theta(x_t)^\top\nabla\log q(x_t\mid x_0)] = \mathbb E[s_\theta(x_t)^\top\nabla\log q(x_t)]$ and
# $J_\text{DSM} = J_\text{ESM}(q) + C_1 - C_2$: explicit score matching on the noised density, plus a constant.
# The minimizer is $s^*(x_t) = \mathbb E[-\epsilon/n\mid x_t] = \nabla\log q(x_t)$, no derivative of $s_\theta$ needed.
# The constant is
# $C_1 - C_2 = \frac12\mathbb E\lVert\epsilon/n\rVert^2 - \frac12\mathbb E\lVert\nabla\log q(x_t)\rVert^2$ (the two
# $\frac12\mathbb E\lVert\text{target}\rVert^2$ terms; the first is $D/(2n^2)$), the same for every model.
# We estimate it sample by sample, with the same $\epsilon$ and $x_t$ as the two losses, so that most of the Monte Carlo
# noise cancels in the difference (what is left per sample is
# $s_\theta^\top(\epsilon/n + \nabla\log q(x_t))$, the difference of the two cross terms):

# %%
sigma = 0.25  # the one noise level of this section
noised = gmm.noised(1.0, sigma)  # q(x_t), the law of x0 + sigma eps, in closed form
x0 = gmm.sample(rng, N)
noise = rng.standard_normal(x0.shape)
xt = x0 + sigma * noise
noised_score = noised.score(xt)
constant = 0.5 * (noise**2).sum(axis=1) / sigma**2 - 0.5 * (noised_score**2).sum(axis=1)  # per sample, (N,)
for name, model in (("network", network), ("linear", LinearScore(-np.eye(2), np.zeros(2)))):
    dsm = denoising_score_matching_loss(lambda v, sg, m=model: m(v), x0, noise, sigma=sigma, reduction="none").data
    esm_q = explicit_score_matching_loss(model, xt, noised_score, reduction="none").data
    gap = dsm - esm_q - constant
    print(f"{name:>8}: J_DSM = {dsm.mean():8.4f}, J_ESM(q) + constant = {(esm_q + constant).mean():8.4f}, "
          f"difference {gap.mean():+.4f} +- {gap.std() / math.sqrt(N):.4f}")
    assert abs(gap.mean()) < 5 * gap.std() / math.sqrt(N)

# %% [markdown]
# **Score and noise are the same prediction.** With $s_\theta = -\epsilon_\theta/n$ the DSM residual is
# $s_\theta + \epsilon/n = (\epsilon - \epsilon_\theta)/n$. Weight each noise level by $\lambda = n^2$
# (Song & Ermon's choice, which makes every level's loss of order 1) and the DSM loss becomes
# $\frac12\lVert\epsilon - \epsilon_\theta\rVert^2$: DDPM's $L_\text{simple}$ of chapters 03-04 [E15] is weighted
# denoising score matching on the VP path, with $s_\theta(x_t, t) = -\epsilon_\theta(x_t, t)/\sqrt{1-\bar\alpha_t}$
# (`score_from_eps`, `eps_from_score`). With the mixture's optimal noise predictor on a cosine schedule
# (a mean over dimensions in $L_\text{simple}$, a sum in DSM, hence the factor $D/2$):

# %%
T = 100
schedule = NoiseSchedule(cosine_betas(T))
eps_model = gmm.eps_model(schedule)
x0_batch = gmm.sample(rng, 512)
t = rng.integers(1, T + 1, size=512)
eps = rng.standard_normal(x0_batch.shape)
weighted_dsm = denoising_score_matching_loss(lambda v, tt: score_from_eps(schedule, eps_model(v.data, tt), tt),
                                             x0_batch, eps, schedule=schedule, t=t, weighted=True).data
simple = l_simple(schedule, eps_model, x0_batch, t=t, noise=eps)
D = x0_batch.shape[1]
print(f"weighted DSM {float(weighted_dsm):.10f},  D/2 * L_simple {D / 2 * simple:.10f}")
assert math.isclose(float(weighted_dsm), D / 2 * simple, rel_tol=1e-12)
round_trip = eps_from_score(schedule, score_from_eps(schedule, eps, t), t)
assert np.allclose(round_trip, eps, rtol=1e-12, atol=0)

# %% [markdown]
# **Learning a score.** A small network trained by DSM at $\sigma = 0.25$ on fresh mixture samples each step
# (Adam, cosine learning-rate decay; a few seconds). With a single noise level the weight $\lambda = \sigma^2$ only
# rescales the loss. We measure the relative error
# $\mathbb E_q\lVert s_\theta - \nabla\log q\rVert^2 / \mathbb E_q\lVert\nabla\log q\rVert^2$ on fresh noised samples:

# %%
score_net = make_mlp(2, hidden=64)
train_steps = 400 if FAST else 3000
optimizer = Adam(list(score_net.parameters()), lr=1e-2)
lr_schedule = LRScheduler(optimizer, CosineDecay(train_steps))
losses = []
with threadpool_limits(1):  # small matrices train several times faster on one BLAS thread
    for _ in range(train_steps):
        loss = denoising_score_matching_loss(lambda v, sg: score_net(v), gmm.sample(rng, 256), sigma=sigma,
                                             rng=rng, weighted=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.data))


def learned_score(v):
    with md.no_grad():
        return score_net(Tensor(v)).data


xt_eval = noised.sample(rng, N)
exact_eval = noised.score(xt_eval)
relative_error = float(((learned_score(xt_eval) - exact_eval) ** 2).sum() / (exact_eval**2).sum())
print(f"{train_steps} steps: relative squared error of the learned score on q = {relative_error:.4f}")
assert relative_error < 0.1
# The loss's minimum: sigma^2 (C_1 - C_2) = D / 2 - sigma^2 E||grad log q||^2 / 2 (the lambda = sigma^2 weight)
loss_floor = D / 2 - 0.5 * sigma**2 * (exact_eval**2).sum(axis=1).mean()
print(f"minimum of the weighted loss {loss_floor:.3f}; mean loss over the last 100 steps {np.mean(losses[-100:]):.3f}")

fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
axes[0].plot(losses, lw=0.6, label="minibatch loss (256 samples)")
axes[0].axhline(loss_floor, ls="--", color="C3", label=r"its minimum $\sigma^2 (C_1 - C_2)$")
axes[0].legend()
axes[0].set_xlabel("training step")
axes[0].set_ylabel(r"weighted DSM loss ($\lambda = \sigma^2$)")
axes[0].set_title("Training: the loss tends to a constant, not to 0")
for ax, field, title in ((axes[1], learned_score(QGRID), r"learned $s_\theta(x)$, $\sigma = 0.25$"),
                         (axes[2], noised.score(QGRID), r"exact $\nabla \log q_\sigma(x)$")):
    draw_density(ax, noised)
    fig.colorbar(draw_field(ax, field, title), ax=ax, label=r"$\log_{10}$ of the arrow's length")
plt.tight_layout()
plt.show()

# %% [markdown]
# The loss does not go to zero: its minimum is the constant $C_1 - C_2$ above (times the weight $\sigma^2$),
# the part of the target $-\epsilon/\sigma$ that no function of $x_t$ can predict. The minibatch losses settle
# around that line; by Vincent's identity their expectation exceeds it by exactly $\sigma^2 J_\text{ESM}(q)$, the
# network's remaining error. The learned field matches the exact one where the noised data lives.
#
# ## 5. Why one noise level is not enough, and annealed Langevin dynamics
#
# Two problems remain, both in the low-density regions. **Learning**: DSM only sees $x_t$ where the noised
# data is, so between and beyond the components the score is barely trained. The error of our network
# against the density of $q$:

# %%
grid_error = np.linalg.norm(learned_score(GRID) - noised.score(GRID), axis=1)  # (40000,)
grid_density = np.exp(noised.log_prob(GRID))
dense = grid_density > 0.1 * grid_density.max()
sparse = grid_density < 1e-3 * grid_density.max()
print(f"mean |s_theta - score| where q > 10% of its peak: {grid_error[dense].mean():.3f}; "
      f"where q < 0.1% of its peak: {grid_error[sparse].mean():.3f}")
assert grid_error[sparse].mean() > 3 * grid_error[dense].mean()

fig, ax = plt.subplots(figsize=(6, 5.2))
image = ax.pcolormesh(GX, GY, grid_error.reshape(GX.shape), norm=LogNorm(vmin=1e-2, vmax=grid_error.max()),
                      cmap="magma", shading="auto")
draw_density(ax, noised)
ax.set_title(r"Error $\|s_\theta - \nabla\log q_\sigma\|$ of the learned score")
fig.colorbar(image, ax=ax, label="error (log scale)")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Sampling**: even with the exact score, section 2's chains got the mixture weights wrong, because they
# cannot cross the gaps. Song & Ermon (2019, *Generative modeling by estimating gradients of the data
# distribution*, NCSN) fix both with many noise levels [E28]: train one network $s_\theta(x, \sigma)$ on
# the noised densities $p_\sigma = p * \mathcal N(0,\sigma^2 I)$ for a geometric sequence
# $\sigma_1 > \sigma_2 > \dots > \sigma_L$, and sample by *annealed* Langevin dynamics: run E25 on $p_{\sigma_1}$,
# then on $p_{\sigma_2}$ starting where the previous level ended, and so on, with step
#
# $$\delta_i = \varepsilon\,\sigma_i^2/\sigma_L^2 .$$
#
# At large $\sigma$ the components merge into one broad bump that chains cross freely, so they spread over
# the components in proportion to their weights before the gaps open; and the noised samples fill the
# space, so the score is learned everywhere it is needed. The step grows like $\sigma_i^2$: the variance of
# $p_{\sigma_i}$ grows the same way, so $\delta_i$ stays at the same fraction of the stability limit
# $4\times$(variance) of section 2, and the ratio of the drift
# $\frac{\delta_i}{2}\lVert s\rVert \sim \delta_i/(2\sigma_i)$ to the noise $\sqrt{\delta_i}$ is the same at every
# level.
#
# Here $\sigma$ goes from 2.5 (about the largest distance between two data points, Song & Ermon's rule) down
# to 0.05, in $L = 10$ levels, with the exact noised scores of the mixture. Section 4's optimum gives them
# from the ideal denoiser $D(x, \sigma) = \mathbb E[x_0\mid x_0 + \sigma\epsilon = x]$, which the oracle
# computes in closed form: $\nabla\log p_\sigma(x) = \mathbb E[-\epsilon/\sigma\mid x]
# = \mathbb E[-(x - x_0)/\sigma^2\mid x] = (D(x,\sigma) - x)/\sigma^2$ (Tweedie's formula). The chains, level by
# level:

# %%
sigma_max, sigma_min, L, eps_step = 2.5, 0.05, 10, 0.002


def noised_score_fn(v, sigma_batch):
    """grad log p_sigma(x) for one sigma per example (the annealed sampler passes sigma of shape (B,))."""
    return (gmm.denoiser(v, sigma_batch) - v) / sigma_batch[:, None] ** 2


n_each = 20
annealed = AnnealedLangevinSampler.geometric(sigma_max, sigma_min, L, eps_step, n_each)
print(annealed, "\nsteps delta_i:", annealed.step_sizes.round(4))
traj = annealed.sample(noised_score_fn, (500, 2), rng, progress=False, return_trajectory=True)  # (201, 500, 2)
level_of_state = np.concatenate([[sigma_max], np.repeat(annealed.sigmas, n_each)])  # sigma of each state
wide = (-4.5, 4.5)
fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.4))
draw_density(axes[0], box=wide)
for i, color in zip((0, 3, 6, 9), ("C3", "C1", "C2", "C0"), strict=True):
    cloud = traj[(i + 1) * n_each]  # the chains at the end of level i + 1
    axes[0].scatter(*cloud.T, s=4, color=color, alpha=0.6,
                    label=rf"end of level {i + 1}, $\sigma$ = {annealed.sigmas[i]:.2f}")
axes[0].set_title("500 chains at the end of four of the levels")
axes[0].legend(loc="lower right", markerscale=3, fontsize=8)
steps = np.arange(traj.shape[0])
for j in range(8):
    axes[1].plot(steps, traj[:, j, 0], lw=0.8)
for k, m in enumerate(gmm.means[:, 0]):
    axes[1].axhline(m, ls="--", color="0.3", lw=0.8, label="component means" if k == 0 else None)
for i in range(1, L):
    axes[1].axvline(i * n_each, color="0.85", lw=0.8)
axes[1].set_xlim(0, steps[-1])
axes[1].set_ylim(-4, 4)
axes[1].set_xlabel("Langevin step (grey lines: a new noise level)")
axes[1].set_ylabel("$x_1$ of the chain")
axes[1].legend(loc="lower right")
top = axes[1].twiny()
top.set_xlim(axes[1].get_xlim())
top.set_xticks((np.arange(L) + 0.5) * n_each, [f"{sg:.2g}" for sg in annealed.sigmas], fontsize=8)
top.set_xlabel(r"noise level $\sigma_i$")
axes[1].set_title("8 chains: first coordinate along the annealing", pad=32)
plt.tight_layout()
plt.show()

# %% [markdown]
# The chains start wide, take big steps while the levels are high (a broad cloud that covers all the
# components), and settle into the components as $\sigma$ shrinks. Now the comparison at equal cost: the same
# starting points (the sampler's default $\mathcal N(0, \sigma_1^2 I)$), plain Langevin with the step of
# section 2's paths, $\delta = 0.005$, against annealed Langevin with $L = 10$ levels, for several budgets of
# total steps (annealed: budget$/L$ steps per level). The distance is the mixture-weight error of section 2,
# measured against the law each one targets: $p$ for plain Langevin, $p_{\sigma_L}$ (the same weights) for
# the annealed chains.

# %%
n_chains = 2000 if FAST else 4000
budgets = [20, 50, 100, 200, 400] if FAST else [20, 50, 100, 200, 500, 1000, 2000]
start = sigma_max * rng.standard_normal((n_chains, 2))
target_L = gmm.noised(1.0, sigma_min)
errors = {"plain": [], "annealed": []}
plain_x, steps_done = start, 0
for budget in budgets:
    # one plain chain, continued from the previous budget: its state after `budget` steps from `start`
    plain_x, steps_done = langevin_dynamics(gmm.score, plain_x, 0.005, budget - steps_done, rng), budget
    sampler = AnnealedLangevinSampler.geometric(sigma_max, sigma_min, L, eps_step, budget // L)
    annealed_x = sampler.sample(noised_score_fn, start, rng, progress=False)
    errors["plain"].append(weight_error(plain_x))
    errors["annealed"].append(weight_error(annealed_x, target_L))
tolerance = weight_tolerance(n_chains)
for name, errs in errors.items():
    print(f"{name:>8}: weight error " + ", ".join(f"{e:.3f}" for e in errs) + f"  (5 s.e. = {tolerance:.3f})")
assert errors["annealed"][-1] < tolerance < min(errors["plain"])  # plain is off at every budget
assert errors["annealed"][0] < errors["plain"][-1]  # annealing at the smallest budget beats plain at the largest

fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
axes[0].semilogx(budgets, errors["plain"], "o-", label=r"plain Langevin, $\delta = 0.005$")
axes[0].semilogx(budgets, errors["annealed"], "s-", label=f"annealed, L = {L}")
axes[0].axhline(tolerance, ls="--", color="0.4", label="5 standard errors")
axes[0].set_xticks(budgets, [str(b) for b in budgets])
axes[0].minorticks_off()
axes[0].set_ylim(0, 1.6 * max(errors["plain"]))
axes[0].set_xlabel("total Langevin steps")
axes[0].set_ylabel(r"max$_k$ |mixture weight $-\ w_k$|")
axes[0].set_title(f"Distance to the mixture, {n_chains} chains")
axes[0].legend(loc="upper center")
scatter_by_component(axes[1], plain_x, f"plain, {budgets[-1]} steps")
scatter_by_component(axes[2], annealed_x, f"annealed, {budgets[-1]} steps", mixture=target_L)
plt.tight_layout()
plt.show()

# %% [markdown]
# Plain Langevin keeps whatever proportions its start gave it: its error stays above the noise level at
# every budget. Annealed Langevin brings the error down to the noise level, and even its smallest budget
# beats plain Langevin's largest.
# (The last level is $p_{\sigma_L}$, the data blurred by $\sigma_L = 0.05$: a small $\sigma_L$ costs little, as
# the scatter shows.) Score-based models of images are exactly this recipe, with a U-Net for
# $s_\theta(x, \sigma)$. Chapter 06 takes $L\to\infty$: the noise levels become a stochastic differential
# equation (the VE SDE), whose reverse-time SDE replaces the level-by-level Langevin runs, with Langevin steps
# kept as a "corrector", the one diffusers implements below.
#
# ## 6. Side by side with diffusers
#
# diffusers' `ScoreSdeVeScheduler` (the VE sampler of Song et al. 2021, *Score-based generative modeling
# through stochastic differential equations*) has a Langevin *corrector*, `step_correct`. It draws $z$ and
# picks the step from a target signal-to-noise ratio `snr`, with the norms averaged over the batch:
#
# $$\epsilon_\text{d} = 2\left(\text{snr}\,\frac{\overline{\lVert z\rVert}}{\overline{\lVert s\rVert}}\right)^2,\qquad
#   x' = x + \epsilon_\text{d}\,s + \sqrt{2\epsilon_\text{d}}\,z .$$
#
# Matching with E25's $\frac{\delta}{2}s + \sqrt\delta\,z$ gives $\delta = 2\epsilon_\text{d}
# = 4\,(\text{snr}\,\overline{\lVert z\rVert}/\overline{\lVert s\rVert})^2$, one value broadcast over the batch
# (diffusers stores it per example, so we pass it as an array of shape $(B,)$). The same score (the exact noised score
# at $\sigma = 0.5$), the same $x$ and the same $z$ (drawn from a torch generator with the same seed as
# diffusers' own draw) must give the same step:

# %%
diffusers = md.optional_reference("diffusers", "the comparison with diffusers' ScoreSdeVeScheduler")

if diffusers is not None:
    import torch
    from diffusers import ScoreSdeVeScheduler

    snr, B = 0.16, 16
    level = gmm.noised(1.0, 0.5)
    x = level.sample(rng, B)  # (B, 2)
    s = level.score(x)  # the "model output": the exact score at sigma = 0.5
    scheduler = ScoreSdeVeScheduler(snr=snr, sigma_min=0.01, sigma_max=2.5)
    scheduler.set_timesteps(10)
    ref = scheduler.step_correct(torch.from_numpy(s), torch.from_numpy(x),
                                 generator=torch.Generator().manual_seed(0)).prev_sample.numpy()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).numpy().astype(np.float64)  # its draw
    delta = 4 * (snr * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(s, axis=1).mean()) ** 2
    ours = langevin_step(x, s, np.full(B, delta), z)
    diff = float(np.abs(ours - ref).max())
    print(f"delta = {delta:.5f}; max |minidiff - diffusers| = {diff:.1e}")
    # diffusers keeps z and the step size in float32: agreement to float32 rounding of O(1) numbers
    assert diff < 1e-6

# %% [markdown]
# ## Summary
#
# * The score $\nabla_x\log p$ [E24] ignores the normalizing constant; for a mixture it is the components'
#   scores weighted by their responsibilities.
# * Langevin dynamics [E25] is the discretized SDE $dx = \frac12\nabla\log p\,dt + dw$, whose stationary law is
#   $p$ (zero Fokker-Planck flux). A step $\delta$ adds an $O(\delta)$ bias (for a Gaussian, variance
#   $s^2/(1-\delta/(4s^2))$) and must stay below $4\times$ the smallest variance. Chains find the modes but not
#   their weights when the modes are separated.
# * Score matching [E26] (Hyvärinen 2005) trades the unknown score for the trace of the model's Jacobian by
#   integration by parts: $D$ backward passes, and a second derivative to train, which minidiff's autodiff
#   does not have.
# * Denoising score matching [E27] (Vincent 2011) regresses $-\epsilon/n$ and equals explicit score matching
#   on the noised density up to a constant. With $s_\theta = -\epsilon_\theta/n$ and weight $n^2$ it *is*
#   DDPM's $L_\text{simple}$: a noise predictor is a score model.
# * One noise level leaves the gaps between modes unlearned and uncrossed. NCSN [E28] (Song & Ermon 2019)
#   learns the scores of many noised densities and anneals Langevin dynamics through them, with steps
#   $\delta_i \propto \sigma_i^2$; it gets the weights right where plain Langevin cannot.
#
# ## Exercises
#
# Open `minidiff/exercises/ch05.py` and fill in:
#
# * **5.1** `langevin_step`: one step of [E25], for one step size for the whole batch or one per example
#   (an array of shape $(B,)$, as in section 6): broadcast $\delta$ over each example's axes and keep the
#   dtype of $x$.
# * **5.2** `denoising_score_matching_loss`: the heart of [E27]: build $x_t = s\,x_0 + n\,\epsilon$ and the
#   target $\nabla\log q(x_t\mid x_0) = -\epsilon/n$, call the model on $x_t$, and return $\frac12$ the squared
#   error per example (times $n^2$ when weighted), in Tensor operations so that it can be trained.
#
# Grade them with `pytest --student -m ch05`. 5.1: one step against the formula written out per example
# (float32 and float64), and chains on a Gaussian whose mean and variance must follow the AR(1) formulas of
# section 2 (Monte Carlo, 5 standard errors), with one step size for all chains and with one per chain.
# 5.2: the loss of a linear model against its closed-form expectation (VE and VP, weighted or not), its
# gradient vanishing at the least-squares fit and that fit being the exact noised score, a fit by Adam,
# Vincent's identity, the weighted loss equal to $L_\text{simple}$, and gradients against central differences.
