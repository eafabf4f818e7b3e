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
# # 06 · SDEs, the reverse SDE, the probability flow ODE, DDIM, likelihood
#
# Chapters 02-04 built diffusion from a chain of $T$ Gaussian steps; chapter 05 from scores and a ladder of
# noise levels. Song et al. (2021, *Score-based generative modeling through stochastic differential
# equations*) joined the two: let the number of steps go to infinity and both become a stochastic
# differential equation (SDE) in continuous time. That single picture explains a lot at once:
#
# * sampling is running the SDE backwards in time, which needs only the score of every noised density;
# * there is a *deterministic* process with the same marginals, the probability flow ODE, so noise can be
#   turned into data (and back) by an ODE solver;
# * DDIM (Song, Meng & Ermon 2021), found from a different argument, is the simplest solver of that ODE,
#   and its invertibility gives latents that can be interpolated;
# * an ODE transports densities by the change of variables, so it gives exact log-likelihoods.
#
# As in chapter 05, everything runs on the 2-D Gaussian mixture whose noised densities, scores and
# Hessians are known in closed form at every noise level (`GaussianMixture`): the exact score stands in for
# a trained network, so every claim can be checked against the exact answer.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
import minidiff.functional as F
from minidiff.diffusion import NoiseSchedule, linear_betas
from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.likelihood import ode_log_likelihood, probe_vectors, score_divergence_hutchinson
from minidiff.diffusion.ode import solve_ivp_rk45
from minidiff.diffusion.sde import VESDE, VPSDE, SubVPSDE
from minidiff.samplers.ddim import DDIMSampler, ddim_step_coefficients, slerp
from minidiff.samplers.ddpm import DDPMSampler
from minidiff.samplers.sde import (
    EulerMaruyamaSampler,
    PredictorCorrectorSampler,
    ProbabilityFlowODE,
    simulate_forward_sde,
)

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks sample sizes and step counts
N = 1000 if FAST else 10000  # samples per sampler run
STEPS = 200 if FAST else 1000  # steps of the stochastic samplers
rng = np.random.default_rng(0)
gmm = GaussianMixture.example_2d()
vp, subvp, ve = VPSDE(), SubVPSDE(), VESDE()  # beta(t) from 0.1 to 20; sigma(t) from 0.01 to 50
print(gmm, vp, subvp, ve, sep="\n")

BOX = (-2.2, 2.2)
# Density levels whose contours enclose 25, 50, 75, 90 and 99% of the data's probability: the region
# {p > c} holds mass q when c is the (1 - q) quantile of p(X), X ~ p (estimated from 10^5 draws).
MASS = np.array([0.25, 0.5, 0.75, 0.9, 0.99])
LEVELS = np.sort(np.exp(np.quantile(gmm.log_prob(gmm.sample(np.random.default_rng(100), 100_000)), 1 - MASS)))


def draw_density(ax, box=BOX):
    """Contours of the data density enclosing 25 to 99% of its mass, equal axes, axis labels."""
    a = np.linspace(*box, 200)
    gx, gy = np.meshgrid(a, a)
    density = np.exp(gmm.log_prob(np.column_stack([gx.ravel(), gy.ravel()]))).reshape(gx.shape)
    ax.contour(gx, gy, density, levels=LEVELS, colors="0.35", linewidths=0.8, zorder=2)
    ax.set_xlim(box)
    ax.set_ylim(box)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")


def noised(sde, t):
    """p_t, the law of x(t) when x(0) is drawn from the mixture: the mixture scaled by s(t), plus n(t)^2 I."""
    return gmm.noised(float(sde.marginal_mean_coef(t)), float(sde.marginal_std(t)))


def exact_score(sde):
    """The exact score of p_t, as a model: score_fn(x, t), t of shape (B,) (one time for the whole batch)."""
    return lambda x, t: noised(sde, float(t[0])).score(x)


def law_z_scores(x, y):
    """Two independent samples of one law in R^2: the largest |difference| / standard error of their means,
    covariances and mixture weights (the mean responsibilities p(k | x)). Each statistic is an average of
    i.i.d. terms, so its standard error is sqrt(var / n); the two samples' add in quadrature."""

    def terms(a):
        centred = a - a.mean(axis=0)  # (n, 2)
        return {"mean": a, "covariance": (centred[:, :, None] * centred[:, None, :]).reshape(len(a), 4),
                "weights": gmm.responsibilities(a)}

    ta, tb = terms(x), terms(y)
    return {k: float(np.max(np.abs(ta[k].mean(0) - tb[k].mean(0))
                            / np.sqrt(ta[k].var(0) / len(x) + tb[k].var(0) / len(y)))) for k in ta}


# %% [markdown]
# ## 1. From steps to an SDE
#
# One DDPM step (chapter 02) is $x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z_i$. Give step $i$ the time
# $t_i = i/T$ and write its $\beta$ as a rate times the time step, $\beta_i = \beta(t_i)\,\Delta t$ with
# $\Delta t = 1/T$. (DDPM's linear schedule is exactly that: $\beta(t) = 0.1 + 19.9\,t$ and $T = 1000$ give
# $\beta_i$ from $10^{-4}$ to $0.02$.) For small $\Delta t$, $\sqrt{1-\beta\Delta t} = 1 - \tfrac12\beta\Delta t
# + O(\Delta t^2)$, so
#
# $$x_i - x_{i-1} = -\tfrac12\beta(t_i)\,x_{i-1}\,\Delta t + \sqrt{\beta(t_i)}\,\sqrt{\Delta t}\,z_i + O(\Delta t^2).$$
#
# $\sqrt{\Delta t}\,z_i$ is an increment of Brownian motion $w$ over $\Delta t$ (Gaussian, variance $\Delta t$,
# independent of the past). As $T\to\infty$ the chain becomes the **variance-preserving (VP) SDE** [E29]
#
# $$dx = f(x, t)\,dt + g(t)\,dw,\qquad f = -\tfrac12\beta(t)\,x,\quad g = \sqrt{\beta(t)} .$$
#
# All three SDEs of Song et al. have a drift linear in $x$, $f = a(t)\,x$, so $x(t)$ given $x(0)$ stays
# Gaussian, $\mathcal N(s(t)\,x_0,\ n(t)^2 I)$. The mean obeys $\dot s = a s$, so $s(t) = e^{\int_0^t a}$. For the
# variance, Itô's rule $d(x^2) = 2x\,dx + g^2\,dt$ gives $\frac{d}{dt}n^2 = 2a\,n^2 + g^2$. For VP,
# $s = e^{-\frac12\int_0^t\beta}$ and $n^2 = 1 - s^2$ solves it: $\frac{d}{dt}(1-s^2) = -2a s^2 = \beta s^2$ and
# $2a(1-s^2) + \beta = \beta s^2$. So $\bar\alpha_i \to s(t_i)^2$: the SDE's marginal is chapter 02's closed form.
#
# * **VE** (variance exploding, the limit of NCSN's noise levels of chapter 05): $f = 0$,
#   $g = \sqrt{d\sigma^2/dt}$ with $\sigma(t) = \sigma_\min(\sigma_\max/\sigma_\min)^t$; then $s = 1$ and
#   $n^2 = \sigma(t)^2 - \sigma_\min^2$.
# * **sub-VP**: the VP drift with $g^2 = \beta(t)\,(1 - e^{-2\int_0^t\beta})$; then $n = 1 - s^2$, below VP's
#   $\sqrt{1-s^2}$ at every $t > 0$.
#
# First, the limit itself: $\bar\alpha_i$ of the chain with $\beta_i = \beta(i/T)/T$ against $s(i/T)^2$. Both
# errors of the argument ($\log(1-\beta) = -\beta - \beta^2/2 - \dots$, and $\sum_i\beta_i$ as a Riemann sum of
# $\int\beta$) are $O(1/T)$, so the gap must halve when $T$ doubles:

# %%
assert np.allclose(vp.discrete_betas(1000), linear_betas(1000), rtol=1e-12)  # DDPM's schedule, exactly
gaps = []
for T in (250, 500, 1000, 2000):
    i = np.arange(1, T + 1)
    gaps.append(np.max(np.abs(NoiseSchedule(vp.discrete_betas(T)).alpha_bars[i] - vp.marginal_mean_coef(i / T) ** 2)))
    print(f"T = {T:4d}: max_i |alpha_bar_i - s(i/T)^2| = {gaps[-1]:.2e}")
ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
print("ratios of successive gaps:", ratios.round(3))
assert np.all(np.abs(ratios - 2) < 0.1)

# %% [markdown]
# A few paths of the forward SDEs, from points of the mixture (first coordinate against time). VP pulls every
# path towards 0 while adding noise, and ends in $\mathcal N(0, I)$ whatever the start; VE only adds noise, whose
# scale grows geometrically to $\sigma_\max = 50$ (hence the symmetric-log axis: linear inside $\pm 1$,
# logarithmic outside). Dashed: each path's mean $s(t)\,x_0$.

# %%
starts = gmm.sample(np.random.default_rng(1), 5)  # (5, 2)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, sde, name in zip(axes, (vp, ve), ("VP", "VE"), strict=True):
    paths = simulate_forward_sde(sde, starts, 1000, np.random.default_rng(2), return_trajectory=True)  # (1001, 5, 2)
    times = np.linspace(0, 1, len(paths))
    for k in range(len(starts)):
        line, = ax.plot(times, paths[:, k, 0], lw=0.9, label="a path $x_1(t)$" if k == 0 else None)
        ax.plot(times, sde.marginal_mean_coef(times) * starts[k, 0], "--", color=line.get_color(),
                label="its mean $s(t)\\,x_1(0)$" if k == 0 else None)
    ax.set_xlabel("t")
    ax.set_ylabel("$x_1(t)$")
    ax.set_title(f"{name} SDE: forward paths")
    if name == "VE":
        ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# `simulate_forward_sde` integrates E29 with the **Euler-Maruyama** scheme, the SDE's Euler method:
# $x \leftarrow x + f(x, t)\,\Delta t + g(t)\sqrt{\Delta t}\,z$. Started at one point $x_0$, its empirical mean
# and standard deviation must follow $s(t)\,x_0$ and $n(t)$, up to sampling noise and the scheme's own $O(\Delta t)$
# bias. That bias is known exactly here, because the scheme is linear: its moments obey
# $m \leftarrow (1 + a\Delta t)\,m$ and $V \leftarrow (1 + a\Delta t)^2 V + g^2\Delta t$. The check: every sample moment
# within 5 standard errors of the closed form, plus that bias.

# %%
N_FWD = 1000 if FAST else 2000
x0_point = np.array([1.5, -0.5])
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for ax, sde, name in zip(axes, (vp, subvp, ve), ("VP", "sub-VP", "VE"), strict=True):
    paths = simulate_forward_sde(sde, np.tile(x0_point, (N_FWD, 1)), STEPS, np.random.default_rng(3),
                                 return_trajectory=True)  # (STEPS + 1, N_FWD, 2)
    dt = 1.0 / STEPS
    every = STEPS // 20
    m_em, v_em, worst = x0_point.copy(), 0.0, 0.0
    for i in range(STEPS + 1):
        if i % every == 0 and i > 0:
            t = i * dt
            mean, std = sde.marginal(x0_point[None], t)
            m, v = mean[0], std[0, 0] ** 2
            se_m, se_v = math.sqrt(v / N_FWD), v * math.sqrt(2 / (N_FWD - 1))
            sample_m, sample_v = paths[i].mean(0), paths[i].var(0, ddof=1)
            assert np.all(np.abs(sample_m - m) <= 5 * se_m + np.abs(m_em - m)), (name, t, sample_m, m)
            assert np.all(np.abs(sample_v - v) <= 5 * se_v + abs(v_em - v)), (name, t, sample_v, v)
            worst = max(worst, float(np.max(np.abs(sample_m - m) / se_m)), float(np.max(np.abs(sample_v - v) / se_v)))
        a, g2 = float(sde.drift_coef(i * dt)), float(sde.diffusion(i * dt)) ** 2
        m_em, v_em = (1 + a * dt) * m_em, (1 + a * dt) ** 2 * v_em + g2 * dt
    print(f"{name:>6}: largest |sample moment - closed form| = {worst:.2f} standard errors")
    ts = np.arange(every, STEPS + 1, every) * dt
    closed_mean, closed_std = sde.marginal(np.tile(x0_point, (len(ts), 1)), ts)
    ax.plot(ts, closed_mean[:, 0], color="C0", label="mean $s(t)\\,x_{0,1}$ (closed form)")
    ax.plot(ts, paths[::every][1:, :, 0].mean(1), "o", color="C0", ms=4, label="mean (Euler-Maruyama)")
    ax.plot(ts, closed_std[:, 0], color="C1", label="std $n(t)$ (closed form)")
    ax.plot(ts, paths[::every][1:, :, 0].std(1), "s", color="C1", ms=4, label="std (Euler-Maruyama)")
    ax.set_xlabel("t")
    ax.set_ylabel("first coordinate")
    ax.set_title(f"{name}: from $x_0$ = ({x0_point[0]}, {x0_point[1]})")
    if name == "VE":
        ax.set_yscale("log")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Running it backwards
#
# Anderson (1982, *Reverse-time diffusion equation models*) showed that a diffusion run backwards in time is
# again a diffusion, with the same $g$ and the drift [E30]
#
# $$dx = \left[f(x, t) - g(t)^2\,\nabla_x\log p_t(x)\right]dt + g(t)\,d\bar w,$$
#
# where time runs from 1 to 0 ($dt < 0$) and $\bar w$ is a Brownian motion in reverse time. Why the score
# appears is easiest to see on the densities. The marginals $p_t$ of E29 obey the Fokker-Planck equation
#
# $$\partial_t p = -\nabla\cdot(f\,p) + \tfrac12 g^2\,\Delta p .$$
#
# Now take the reversed process $y(\tau) = x(1-\tau)$ and ask for a drift $\bar f$ such that
# $dy = \bar f\,d\tau + g\,dw$ has the marginals $p_{1-\tau}$. Its own Fokker-Planck equation,
# $\partial_\tau p = -\nabla\cdot(\bar f p) + \frac12 g^2\Delta p$, must equal
# $\partial_\tau p = -\partial_t p = \nabla\cdot(f p) - \frac12 g^2\Delta p$. The diffusion terms come with opposite
# signs: run backwards, the marginals must *un*-spread, while the reversed process adds noise of its own, which
# spreads them. So the drift has to pay for both: $\nabla\cdot(\bar f\,p) = -\nabla\cdot(f p) + g^2\Delta p$. With
# $\Delta p = \nabla\cdot(p\,\nabla\log p)$ this holds for
#
# $$\bar f = -f + g^2\,\nabla\log p_t ,$$
#
# which, written in the original time ($d\tau = -dt$), is E30's drift $f - g^2\nabla\log p_t$. The score pushes
# mass back up the density to undo the spreading of the noise. (Anderson's theorem says more: the paths,
# not only the marginals, have the law of the forward paths run backwards.)
#
# A check of the derivation at points: divide the Fokker-Planck equations by $p$. In terms of $\log p$ they read
# $\partial_t\log p = -\nabla\cdot f - f\cdot\nabla\log p + \frac12 g^2(\Delta\log p + \lVert\nabla\log p\rVert^2)$
# (forward) and $\partial_t\log p = -\nabla\cdot f_\text{rev} - f_\text{rev}\cdot\nabla\log p
# - \frac12 g^2(\Delta\log p + \lVert\nabla\log p\rVert^2)$ (reverse, $f_\text{rev} = f - g^2\nabla\log p$).
# With the mixture's $\log p_t$, its score and its Hessian (whose trace is $\Delta\log p$;
# $\nabla\cdot f = D\,a(t)$ and $\nabla\cdot f_\text{rev} = D\,a - g^2\Delta\log p$), and $\partial_t\log p_t$ by
# central differences in $t$, both must hold at every point:


# %%
def log_density_terms(sde, t, x, h=1e-5):
    """d/dt log p_t(x) (central differences), grad log p_t(x), laplacian of log p_t(x) (exact)."""
    dlogp = (noised(sde, t + h).log_prob(x) - noised(sde, t - h).log_prob(x)) / (2 * h)
    p = noised(sde, t)
    return dlogp, p.score(x), np.trace(p.score_jacobian(x), axis1=1, axis2=2)


fp_points = gmm.sample(np.random.default_rng(4), 8) * 1.3  # near the data and around it
worst = {"forward (E29)": 0.0, "reverse (E30)": 0.0}
for sde in (vp, subvp, ve):
    for t in (0.05, 0.3, 0.7, 0.95):
        x = float(sde.marginal_mean_coef(t)) * fp_points + float(sde.marginal_std(t)) * rng.standard_normal((8, 2))
        dlogp, score, lap = log_density_terms(sde, t, x)
        a, g2, D = float(sde.drift_coef(t)), float(sde.diffusion(t)) ** 2, x.shape[1]
        f, f_rev = sde.drift(x, t), sde.reverse_drift(x, t, score)
        spread = 0.5 * g2 * (lap + np.sum(score**2, axis=1))
        forward = -D * a - np.sum(f * score, axis=1) + spread
        reverse = -(D * a - g2 * lap) - np.sum(f_rev * score, axis=1) - spread
        scale = 1 + np.abs(dlogp) + np.abs(spread)
        worst["forward (E29)"] = max(worst["forward (E29)"], float(np.max(np.abs(dlogp - forward) / scale)))
        worst["reverse (E30)"] = max(worst["reverse (E30)"], float(np.max(np.abs(dlogp - reverse) / scale)))
for name, err in worst.items():
    print(f"Fokker-Planck {name}: largest relative residual {err:.1e}")
    # central differences with h = 1e-5: truncation h^2 |d^3 log p / dt^3| / 6 plus rounding 1e-16 |log p| / h
    assert err < 1e-6

# %% [markdown]
# To sample: draw $x(1)$ from the prior ($\mathcal N(0, I)$ for VP; the data's weight in $x(1)$ is
# $s(1) = 0.0066$) and integrate E30 from $t = 1$ to a small $t = \varepsilon$ with Euler-Maruyama:
# $x \leftarrow x - [f(x, t) - g^2\,s_\theta(x, t)]\,\Delta t + g\sqrt{\Delta t}\,z$ with $\Delta t > 0$ the step
# backwards. The samplers stop at $\varepsilon = 10^{-3}$ rather than 0, where the score of the data may
# diverge; the target is then $p_\varepsilon$, the data blurred by $n(\varepsilon) \approx 0.01$. With the exact
# score, the samples must be draws of $p_\varepsilon$: the two-sample test compares means, covariances and
# mixture weights with a fresh sample of $p_\varepsilon$. (In the plots, the contours of the data density enclose
# 25, 50, 75, 90 and 99% of its probability.)
#
# **Predictor-corrector** sampling (Song et al. 2021) adds, at every time, one or a few Langevin steps [E25] of
# chapter 05 with the score of $p_t$ (the *corrector*: it pulls the sample back towards $p_t$, repairing the
# discretization error of the step), then the reverse-SDE step (the *predictor*: here "reverse diffusion",
# which reverses the exact transition of the forward SDE between two times; for VP it is, to first order,
# DDPM's ancestral step). The Langevin step size is set from a target signal-to-noise ratio, snr $= 0.16$.
# With one corrector step, each time costs two evaluations of the score, so it gets half as many steps:

# %%
assert abs(float(vp.marginal_mean_coef(1.0)) - 0.0066) < 5e-5 and float(vp.marginal_std(1e-3)) < 0.011
em = EulerMaruyamaSampler(vp, STEPS)
x_em = em.sample(exact_score(vp), (N, 2), np.random.default_rng(5), progress=False)
pc = PredictorCorrectorSampler(vp, STEPS // 2, snr=0.16, n_corrector=1)
x_pc = pc.sample(exact_score(vp), (N, 2), np.random.default_rng(6), progress=False)
target = noised(vp, em.eps).sample(np.random.default_rng(7), N)  # fresh draws of p_eps
z_em, z_pc = law_z_scores(x_em, target), law_z_scores(x_pc, target)
print(f"Euler-Maruyama, {STEPS} steps:      largest |difference| / s.e.:", {k: round(v, 2) for k, v in z_em.items()})
print(f"predictor-corrector, {STEPS // 2} steps: largest |difference| / s.e.:",
      {k: round(v, 2) for k, v in z_pc.items()})
assert max(z_em.values()) < 5 and max(z_pc.values()) < 5

fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
titles = ("data ($p_\\varepsilon$)", f"reverse SDE, Euler-Maruyama ({STEPS})", f"predictor-corrector ({STEPS // 2})")
for ax, x, title in zip(axes, (target, x_em, x_pc), titles, strict=True):
    draw_density(ax)
    ax.scatter(x[:2000, 0], x[:2000, 1], s=2, alpha=0.4, color="C0", label="samples")
    ax.set_title(title)
    ax.legend(loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The probability flow ODE
#
# Look at the Fokker-Planck equation again and write the diffusion term as a transport, with
# $\Delta p = \nabla\cdot(p\,\nabla\log p)$:
#
# $$\partial_t p = -\nabla\cdot(f\,p) + \tfrac12 g^2\,\nabla\cdot(p\,\nabla\log p)
#   = -\nabla\cdot\Big(\big[f - \tfrac12 g^2\,\nabla\log p_t\big]\,p\Big).$$
#
# That is the continuity equation $\partial_t p = -\nabla\cdot(\tilde f\,p)$ of a *deterministic* flow with
# velocity $\tilde f$: the **probability flow ODE** [E31]
#
# $$\frac{dx}{dt} = \tilde f(x, t) = f(x, t) - \tfrac12 g(t)^2\,\nabla_x\log p_t(x).$$
#
# Both equations have the same $p_t$ as a solution, so if $x(1)\sim p_1$ and $x$ follows the ODE backwards,
# $x(t)\sim p_t$ at every $t$: the same marginals as the SDE, without noise. (Half the score term of E30: the
# reverse SDE also has to cancel the noise it adds itself.) Along a path, $\log p_t$ then changes by
# $\partial_t\log p + \tilde f\cdot\nabla\log p = -\nabla\cdot\tilde f$, the check in the continuity equation's
# log form, with $\nabla\cdot\tilde f = D\,a - \frac12 g^2\,\Delta\log p$:

# %%
worst = 0.0
for sde in (vp, subvp, ve):
    for t in (0.05, 0.3, 0.7, 0.95):
        x = float(sde.marginal_mean_coef(t)) * fp_points + float(sde.marginal_std(t)) * rng.standard_normal((8, 2))
        dlogp, score, lap = log_density_terms(sde, t, x)
        a, g2, D = float(sde.drift_coef(t)), float(sde.diffusion(t)) ** 2, x.shape[1]
        velocity = sde.probability_flow_drift(x, t, score)
        rhs = -(D * a - 0.5 * g2 * lap) - np.sum(velocity * score, axis=1)
        worst = max(worst, float(np.max(np.abs(dlogp - rhs) / (1 + np.abs(dlogp) + 0.5 * g2 * np.abs(lap)))))
print(f"continuity equation (E31): largest relative residual {worst:.1e}")
assert worst < 1e-6

# %% [markdown]
# The same starting points $x(1)$, run backwards by the reverse SDE (Euler-Maruyama, 200 steps) and by the
# probability flow ODE: the SDE paths jitter and may end in any component; the ODE paths are smooth curves
# and each start has exactly one end.

# %%
x_T = vp.prior_sample(np.random.default_rng(24), (8, 2))
sde_paths = EulerMaruyamaSampler(vp, 200).sample(exact_score(vp), (8, 2), np.random.default_rng(9), x_T=x_T,
                                                   return_trajectory=True, progress=False)  # (201, 8, 2)
flow = ProbabilityFlowODE(vp, rtol=1e-6, atol=1e-6)
ode_paths = flow.sample(exact_score(vp), (8, 2), rng, x_T=x_T, return_trajectory=True, progress=False)
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
for ax, paths, title in zip(axes, (sde_paths, ode_paths), ("reverse SDE (E30)", "probability flow ODE (E31)"),
                            strict=True):
    draw_density(ax, box=(-3, 3))
    for k in range(8):
        ax.plot(paths[:, k, 0], paths[:, k, 1], lw=0.7, alpha=0.8, color=f"C{k}", zorder=1)
    ax.scatter(x_T[:, 0], x_T[:, 1], marker="o", color="k", s=25, label="start $x(1)$", zorder=3)
    ax.scatter(paths[-1, :, 0], paths[-1, :, 1], marker="x", color="r", s=40, label="end $x(\\varepsilon)$", zorder=3)
    ax.set_title(title)
    ax.legend(loc="lower right")
plt.tight_layout()
plt.show()
print(f"ODE solve: {len(ode_paths) - 1} accepted RK45 steps, {flow.last_result.nfev} evaluations of the score")

# %% [markdown]
# An ODE can be solved with an adaptive solver. minidiff's `solve_ivp_rk45` is Dormand and Prince's 5(4) pair
# (1980), the method of scipy's `solve_ivp(method="RK45")`, written out: each step evaluates the velocity six
# times, builds a fifth- and a fourth-order solution, and takes their difference as the error estimate; the
# step is accepted when that error is below `atol + rtol |x|` and the next step size is scaled by
# $(\text{error})^{-1/5}$. The error it controls is a root mean square over all the numbers of the state (here
# the whole batch), so that is the error to watch. Here are its cost and its rms error on the flow from 200 prior
# samples, against a solve at rtol = atol = $10^{-10}$:

# %%
latents = vp.prior_sample(np.random.default_rng(10), (200, 2))
reference = ProbabilityFlowODE(vp, rtol=1e-10, atol=1e-10).decode(exact_score(vp), latents)
tolerances = np.array([1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
nfevs, errors = [], []
for tol in tolerances:
    ode = ProbabilityFlowODE(vp, rtol=tol, atol=tol)
    errors.append(float(np.sqrt(np.mean((ode.decode(exact_score(vp), latents) - reference) ** 2))))
    nfevs.append(ode.last_result.nfev)
    print(f"rtol = atol = {tol:.0e}: {nfevs[-1]:4d} evaluations "
          f"({ode.last_result.n_accepted} steps, {ode.last_result.n_rejected} rejected), rms error {errors[-1]:.1e}")
assert np.all(np.diff(nfevs) > 0) and np.all(np.diff(errors) < 0)
assert np.all(np.array(errors) < 20 * tolerances)  # a per-step tolerance: the global error is a few times it

fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.loglog(nfevs, errors, "o-", label="RK45 on the probability flow ODE")
for n, e, tol in zip(nfevs, errors, tolerances, strict=True):
    ax.annotate(f"{tol:.0e}", (n, e), textcoords="offset points", xytext=(5, 3), fontsize=7)
ax.set_xlabel("evaluations of the score")
ax.set_ylabel("rms error of x(eps)")
ax.set_title("Adaptive RK45: error against cost (labels: tolerance)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The flow's samples are the mixture too, at a cost (printed) of about a hundred evaluations of the score,
# where the SDE samplers above took one or two per step:

# %%
ode = ProbabilityFlowODE(vp)  # rtol = atol = 1e-5
x_ode = ode.sample(exact_score(vp), (N, 2), np.random.default_rng(11), progress=False)
z_ode = law_z_scores(x_ode, target)
print(f"probability flow ODE ({ode.last_result.nfev} evaluations): largest |difference| / s.e.:",
      {k: round(v, 2) for k, v in z_ode.items()})
assert max(z_ode.values()) < 5 and 50 < ode.last_result.nfev < 200

# %% [markdown]
# ## 4. DDIM
#
# Song, Meng & Ermon (2021, *Denoising diffusion implicit models*) started from a different observation. The
# training loss $L_\text{simple}$ only ever uses the marginals $q(x_t\mid x_0)$, never the one-step chain
# $q(x_t\mid x_{t-1})$. So any other process with the same marginals is trained by the same loss, and a
# network trained for DDPM can drive its reverse process. They take, for a free $\sigma_t$,
#
# $$q_\sigma(x_{t-1}\mid x_t, x_0) = \mathcal N\!\Big(\sqrt{\bar\alpha_{t-1}}\,x_0
#   + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},
#   \ \sigma_t^2 I\Big).$$
#
# *It keeps the marginals.* Suppose $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$. The fraction
# in the mean is then exactly $\epsilon$, so
# $x_{t-1} = \sqrt{\bar\alpha_{t-1}}x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\,\epsilon + \sigma_t z$, whose noise has
# variance $(1-\bar\alpha_{t-1}-\sigma_t^2) + \sigma_t^2 = 1-\bar\alpha_{t-1}$: that is $q(x_{t-1}\mid x_0)$, and by
# induction from $t = T$ every marginal is chapter 02's. The forward process this defines is not Markovian
# ($x_t$ depends on $x_0$ as well as $x_{t-1}$), which is the point: nothing ties $\sigma_t$ to $\beta_t$.
#
# *Sampling* replaces $x_0$ by the network's estimate
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$ (E13) and the fraction by
# $\hat\epsilon = \epsilon_\theta(x_t, t)$, which gives the **DDIM step** [E32]
#
# $$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\hat\epsilon + \sigma_t z,
#   \qquad \sigma_t(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}}
#   \sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t-1}}} .$$
#
# Since only marginals matter, $t-1$ can be any earlier $t'$ of a strided sub-sequence of timesteps (with
# $\bar\alpha_{t'}$ in place of $\bar\alpha_{t-1}$): that is how DDIM samples in 50 steps with a model trained on 1000.
#
# *$\eta = 1$ is DDPM.* Then $\sigma_t^2 = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t = \tilde\beta_t$, the
# posterior variance of E11, and the weight of $\hat\epsilon$ becomes
#
# $$\sqrt{1-\bar\alpha_{t-1}-\tilde\beta_t}
#   = \sqrt{\frac{(1-\bar\alpha_{t-1})(1-\bar\alpha_t-\beta_t)}{1-\bar\alpha_t}}
#   = \frac{(1-\bar\alpha_{t-1})\sqrt{\alpha_t}}{\sqrt{1-\bar\alpha_t}}$$
#
# (use $1-\bar\alpha_t-\beta_t = \alpha_t(1-\bar\alpha_{t-1})$). Writing
# $\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\hat x_0)/\sqrt{1-\bar\alpha_t}$, the weight of $x_t$ is
# $\frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}$, E11's; the weight of $\hat x_0$,
# $\sqrt{\bar\alpha_{t-1}} - \frac{(1-\bar\alpha_{t-1})\alpha_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t}
# = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}$, is E11's too. So DDIM at $\eta = 1$ *is* DDPM's
# ancestral step with $\sigma_t^2 = \tilde\beta_t$. `ddim_step_coefficients` returns the three weights
# $(\sqrt{\bar\alpha_{t'}},\ \sqrt{1-\bar\alpha_{t'}-\sigma_t^2},\ \sigma_t)$ (exercise 6.1):

# %%
schedule = NoiseSchedule(linear_betas(1000))
T = schedule.T
worst = 0.0
for t in (2, 10, 100, 500, 1000):
    c_x0, c_eps, sigma = ddim_step_coefficients(schedule, t, t - 1, 1.0)
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    pairs = [(sigma**2, schedule.posterior_variance[t]),  # sigma_t(1)^2 = beta_tilde_t
             (c_eps / b, schedule.posterior_mean_coef_xt[t]),  # the weight of x_t
             (c_x0 - c_eps * a / b, schedule.posterior_mean_coef_x0[t])]  # the weight of x0_hat
    worst = max(worst, max(abs(u - v) / abs(v) for u, v in pairs))
    for eta in (0.0, 0.5):  # every member keeps the marginal: c_x0^2 + c_eps^2 + sigma^2 = 1
        c_x0, c_eps, sigma = ddim_step_coefficients(schedule, t, t - 1, eta)
        assert abs(c_x0**2 + c_eps**2 + sigma**2 - 1) < 1e-12
print(f"DDIM at eta = 1 against E11's posterior: largest relative difference {worst:.1e}")
assert worst < 1e-10

# %% [markdown]
# So with the same noise, DDIM($\eta = 1$) and DDPM($\tilde\beta$) over all $T$ steps are one trajectory (here on the
# exact noise model of the mixture, $\epsilon^*(x_t, t) = \mathbb E[\epsilon\mid x_t]$):

# %%
eps_model = gmm.eps_model(schedule)  # the optimal noise predictor of the mixture, at every t
ddim1 = DDIMSampler(schedule, eta=1.0, clip_sample=False)
ddpm = DDPMSampler(schedule, variance_type="fixed_small", clip_sample=False)
ddim1.set_timesteps(T)
ddpm.set_timesteps(T)
noise_rng = np.random.default_rng(12)
x_a = x_b = noise_rng.standard_normal((8, 2))
biggest = 0.0
for t in ddpm.timesteps:
    z = noise_rng.standard_normal((8, 2))
    x_a = ddim1.step(eps_model(x_a, np.full(8, t)), t, x_a, noise=z).prev_sample
    x_b = ddpm.step(eps_model(x_b, np.full(8, t)), t, x_b, noise=z).prev_sample
    biggest = max(biggest, float(np.abs(x_a - x_b).max()))
print(f"DDIM(eta = 1) vs DDPM(beta_tilde), {T} steps, same noise: max difference along the run {biggest:.1e}")
assert biggest < 1e-9

# %% [markdown]
# **$\eta = 0$ is an ODE solver.** Divide by $\sqrt{\bar\alpha}$: with $\bar x = x/\sqrt{\bar\alpha}$ and
# $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$ (the noise-to-signal ratio, chapter 05's VE noise level),
# $x_t = \sqrt{\bar\alpha_t}(x_0 + \sigma_t\epsilon)$ becomes $\bar x_t = x_0 + \sigma_t\epsilon$. The $\eta = 0$ step
# $x_{t'} = \sqrt{\bar\alpha_{t'}}\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\,\hat\epsilon$ becomes
# $\bar x_{t'} = \hat x_0 + \sigma_{t'}\hat\epsilon$, and with $\hat x_0 = \bar x_t - \sigma_t\hat\epsilon$:
#
# $$\bar x_{t'} = \bar x_t + (\sigma_{t'} - \sigma_t)\,\epsilon_\theta(x_t, t),$$
#
# one **Euler step** of $\;d\bar x/d\sigma = \epsilon_\theta$. That ODE is the probability flow of the VP SDE.
# With $s$ the signal coefficient ($s^2 = \bar\alpha$, $\dot s = -\frac12\beta s$), $n = \sqrt{1-s^2}$ and the score
# $\nabla\log p_t = -\epsilon/n$ (chapter 05), E31 reads $\dot x = -\frac12\beta x + \frac12\beta\,\epsilon/n$. Then
#
# $$\frac{d\bar x}{dt} = \frac{\dot x}{s} - \frac{x\,\dot s}{s^2} = \frac{\beta\,\epsilon}{2ns},\qquad
#   \frac{d\sigma}{dt} = \frac{d}{dt}\sqrt{s^{-2}-1} = \frac{-\dot s}{\sigma s^3} = \frac{\beta}{2ns},$$
#
# and the ratio is $d\bar x/d\sigma = \epsilon$. In these variables the flow does not depend on the schedule at all:
# the schedule only decides which noise levels $\sigma_t$ the steps visit. So DDIM is a first-order method: its
# error must halve when the number of steps doubles. One step first, against the Euler formula:

# %%
ddim = DDIMSampler(schedule, clip_sample=False)  # eta = 0
ddim.set_timesteps(timesteps=[800, 300])
x_t = rng.standard_normal((5, 2))
ab = schedule.alpha_bars
nsr = np.sqrt(schedule.one_minus_alpha_bars / ab)  # sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), t = 0..T
eps_hat = eps_model(x_t, np.full(5, 800))
x_next = ddim.step(eps_hat, 800, x_t).prev_sample
euler = (x_t / np.sqrt(ab[800]) + (nsr[300] - nsr[800]) * eps_hat) * np.sqrt(ab[300])
print(f"DDIM step 800 -> 300 vs Euler in (sigma, x / sqrt(alpha_bar)): max difference "
      f"{np.abs(x_next - euler).max():.1e}")
assert np.allclose(x_next, euler, rtol=1e-12, atol=1e-12)

# %% [markdown]
# Now the error of whole runs. The reference is the flow solved accurately by RK45 in the same variables,
# $d\bar x/d\sigma = \epsilon^*(\bar x, \sigma) = (\bar x - D(\bar x, \sigma))/\sigma$ with the mixture's exact denoiser
# $D(\bar x, \sigma) = \mathbb E[x_0\mid x_0 + \sigma\epsilon = \bar x]$ (the same information as $\epsilon^*(x_t, t)$),
# from $\sigma_T$ down to $\sigma_1$; DDIM runs $n$ evenly spaced timesteps from $T$ to 1, and we compare at $t = 1$,
# just before its last step (which returns $\hat x_0$ in both cases). The error is the median over 200 starting
# points: a few points start near the boundary between two components' basins, where the flow separates
# nearby paths, and those dominate the maximum without changing the order.

# %%
x_T = rng.standard_normal((200, 2))


def flow_in_sigma(sigma, x_bar):
    return (x_bar - gmm.denoiser(x_bar, sigma)) / sigma


solved = solve_ivp_rk45(flow_in_sigma, nsr[T], nsr[1], x_T / np.sqrt(ab[T]), rtol=1e-10, atol=1e-10)
x1_exact = solved.y * np.sqrt(ab[1])
print(f"RK45 reference: {solved.nfev} evaluations")
step_counts = np.array([10, 20, 40, 80] if FAST else [10, 20, 40, 80, 160, 320, 640])
median_errors = []
for n in step_counts:
    ddim = DDIMSampler(schedule, clip_sample=False)
    ddim.set_timesteps(timesteps=np.linspace(T, 1, n).round().astype(np.int64))
    path = ddim.sample(eps_model, x_T.shape, rng, x_T=x_T, dtype=np.float64, progress=False, return_trajectory=True)
    median_errors.append(float(np.median(np.linalg.norm(path[-2] - x1_exact, axis=1))))
    print(f"DDIM, {n:3d} steps: median error at t = 1: {median_errors[-1]:.2e}")
slope = np.polyfit(np.log(step_counts), np.log(median_errors), 1)[0]
print(f"fitted slope of log(error) against log(steps): {slope:.3f}")
assert abs(slope + 1) < 0.25

fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.loglog(step_counts, median_errors, "o-", label="DDIM ($\\eta = 0$), median error")
ax.loglog(step_counts, median_errors[0] * step_counts[0] / step_counts, "k--", label="slope $-1$")
ax.set_xlabel("number of steps")
ax.set_ylabel("median $|x_1 - x_1^{\\mathrm{ODE}}|$")
ax.set_title(f"DDIM is first order (fitted slope {slope:.2f})")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# With the exact model, 10 and 50 DDIM steps from $\mathcal N(0, I)$ against the data. Ten steps leave a trail of
# samples between the components and pull the whole cloud inwards (its total variance, printed, comes out too
# small), which the two-sample test sees in the covariance; by 50 steps the difference is within the noise of
# the sample:

# %%
N_DDIM = 1000 if FAST else 4000
data = gmm.sample(np.random.default_rng(13), N_DDIM)
ddim_samples, ddim_z = {}, {}
for n in (10, 50):
    ddim = DDIMSampler(schedule, clip_sample=False)
    ddim_samples[n] = ddim.sample(eps_model, (N_DDIM, 2), np.random.default_rng(14), num_inference_steps=n,
                                  dtype=np.float64, progress=False)
    ddim_z[n] = law_z_scores(ddim_samples[n], data)
    print(f"DDIM {n:2d} steps: largest |difference| / s.e.:", {k: round(v, 2) for k, v in ddim_z[n].items()})
total_variance = {name: float(np.trace(np.cov(x.T))) for name, x in (("data", data), *ddim_samples.items())}
print("total variance (trace of the covariance):", {k: round(v, 3) for k, v in total_variance.items()})
assert max(ddim_z[50].values()) < 5 and ddim_z[10]["covariance"] > ddim_z[50]["covariance"]
assert total_variance[10] < total_variance["data"]

fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for ax, (x, title) in zip(axes, ((data, "data"), (ddim_samples[10], "DDIM, 10 steps"),
                                 (ddim_samples[50], "DDIM, 50 steps")), strict=True):
    draw_density(ax)
    ax.scatter(x[:2000, 0], x[:2000, 1], s=2, alpha=0.4, color="C0", label="samples")
    ax.set_title(title)
    ax.legend(loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Inversion and interpolation
#
# A deterministic sampler is a map from latents $x_T$ to data, and an ODE map can be run the other way. DDIM
# inversion [E33] runs the $\eta = 0$ step backwards, from $x_0$ up to $x_T$: in $(\sigma, \bar x)$ the step is a
# translation, $\bar x_t = \bar x_{t'} + (\sigma_t - \sigma_{t'})\,\hat\epsilon$, undone exactly given the same
# $\hat\epsilon$.
# But $\hat\epsilon$ should be the model at $(x_t, t)$, which is not known yet; inversion uses the model at the point
# it has, $x_{t'}$: an Euler step of the same ODE forwards. Encoding then decoding therefore returns $x_0$ only up
# to the first-order error of both solves, which must shrink as $1/n$:

# %%
N_INV = 500 if FAST else 2000
x0_data, labels = gmm.sample(np.random.default_rng(15), N_INV, return_labels=True)
inversion_counts = [10, 20, 50] if FAST else [10, 20, 50, 100, 200, 500]
reconstruction = []
for n in inversion_counts:
    ddim = DDIMSampler(schedule, clip_sample=False)
    encoded = ddim.invert(eps_model, x0_data, n, progress=False)
    decoded = ddim.sample(eps_model, x0_data.shape, rng, x_T=encoded, dtype=np.float64, progress=False)
    reconstruction.append(float(np.median(np.linalg.norm(decoded - x0_data, axis=1))))
    print(f"{n:3d} steps: median |decode(encode(x0)) - x0| = {reconstruction[-1]:.2e}")
assert np.all(np.diff(reconstruction) < 0)
# first order: n times the error stays roughly constant (here within a factor 2 from the fewest to the most steps)
scaled = np.array(reconstruction) * np.array(inversion_counts)
assert scaled.max() / scaled.min() < 2
print("latents: mean", encoded.mean(0).round(3), " covariance", np.cov(encoded.T).round(3).ravel(),
      "(N(0, I) would be 0 and the identity)")

fig, axes = plt.subplots(1, 2, figsize=(11, 5))
for ax, points, title in zip(axes, (x0_data, encoded), ("data $x_0$, coloured by component",
                                                        f"their DDIM latents $x_T$ ({inversion_counts[-1]} steps)"),
                             strict=True):
    for k in range(gmm.K):
        ax.scatter(points[labels == k, 0], points[labels == k, 1], s=3, alpha=0.5, color=f"C{k}",
                   label=f"component {k} (weight {gmm.weights[k]:.1f})")
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title)
    ax.legend(loc="lower right", markerscale=4)
axes[0].set_xlim(BOX)
axes[0].set_ylim(BOX)
axes[1].set_xlim(-3.5, 3.5)
axes[1].set_ylim(-3.5, 3.5)
plt.tight_layout()
plt.show()

# %% [markdown]
# Each component's points land in a region of latent space of their own, holding about the component's
# weight of the Gaussian's mass: the latent space is organized, and nearby latents decode to nearby data.
#
# **Interpolating latents.** To blend two samples, interpolate their latents and decode. The straight line
# (lerp) $(1-\alpha)z_0 + \alpha z_1$ is a poor path in high dimension: a Gaussian latent has norm close to
# $\sqrt D$ (the norm's standard deviation is about $1/\sqrt2$, whatever $D$), two independent ones are nearly
# orthogonal, and the midpoint has norm about $\sqrt{D/2}$, a latent the model has never seen. Spherical
# interpolation (slerp; Shoemake 1985, used on DDIM latents by Song et al.) moves along the great circle instead,
# $\frac{\sin((1-\alpha)\theta)}{\sin\theta}z_0 + \frac{\sin(\alpha\theta)}{\sin\theta}z_1$ with $\theta$ the angle
# between them, and keeps the norm when the norms are equal. For two latents in $D = 1000$:

# %%
D = 1000
z0, z1 = np.random.default_rng(16).standard_normal((2, 1, D))
alphas = np.linspace(0, 1, 41)
lerp_norms = np.array([np.linalg.norm((1 - a) * z0 + a * z1) for a in alphas])
slerp_norms = np.array([np.linalg.norm(slerp(z0, z1, a)) for a in alphas])
ends = sorted([np.linalg.norm(z0), np.linalg.norm(z1)])
print(f"norms: |z0|, |z1| = {np.linalg.norm(z0):.1f}, {np.linalg.norm(z1):.1f} (sqrt(D) = {math.sqrt(D):.1f}); "
      f"lerp's midpoint {lerp_norms[20]:.1f}; slerp from {slerp_norms.min():.1f} to {slerp_norms.max():.1f}")
assert lerp_norms[20] < math.sqrt(D) - 5  # far outside the shell sqrt(D) +- a few / sqrt(2)
assert ends[0] - 0.5 < slerp_norms.min() and slerp_norms.max() < ends[1] + 0.5

fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.plot(alphas, lerp_norms, label="lerp")
ax.plot(alphas, slerp_norms, label="slerp")
ax.axhspan(math.sqrt(D) - 2 / math.sqrt(2), math.sqrt(D) + 2 / math.sqrt(2), color="0.85",
           label="typical norms of $N(0, I_D)$ ($\\pm 2$ sd)")
ax.set_xlabel("$\\alpha$")
ax.set_ylabel("norm of the interpolated latent")
ax.set_title(f"Interpolating two Gaussian latents, D = {D}")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# In our 2-D example the same two paths, between the latents of two data points of different components,
# decoded by DDIM (100 steps). Lerp cuts through the middle of latent space, where the norm is small; slerp
# goes round. Both paths start and end at the two data points (up to the inversion error above).

# %%
ddim = DDIMSampler(schedule, clip_sample=False)
ddim.set_timesteps(100)
ends_x0 = np.array([x0_data[labels == 0][0], x0_data[labels == 1][0]])  # (2, 2)
ends_latent = ddim.invert(eps_model, ends_x0, progress=False)
alphas = np.linspace(0, 1, 21)
paths_latent = {
    "lerp": np.array([(1 - a) * ends_latent[0] + a * ends_latent[1] for a in alphas]),
    "slerp": np.array([slerp(ends_latent[:1], ends_latent[1:], a)[0] for a in alphas]),
}
paths_data = {k: ddim.sample(eps_model, v.shape, rng, x_T=v, dtype=np.float64, progress=False)
              for k, v in paths_latent.items()}
for k, v in paths_data.items():
    assert np.abs(v[[0, -1]] - ends_x0).max() < 0.1, k  # both ends decode back to the two data points
fig, axes = plt.subplots(1, 2, figsize=(11, 5))
for k, color in (("lerp", "C0"), ("slerp", "C1")):
    axes[0].plot(paths_latent[k][:, 0], paths_latent[k][:, 1], ".-", color=color, label=k)
    axes[1].plot(paths_data[k][:, 0], paths_data[k][:, 1], ".-", color=color, label=f"decoded {k}")
axes[0].add_patch(plt.Circle((0, 0), 1.0, fill=False, ls=":", color="0.5"))
axes[0].scatter(ends_latent[:, 0], ends_latent[:, 1], color="k", zorder=3, label="latents of the two points")
axes[0].set_aspect("equal")
axes[0].set_xlim(-3, 3)
axes[0].set_ylim(-3, 3)
axes[0].set_xlabel("$x_{T,1}$")
axes[0].set_ylabel("$x_{T,2}$")
axes[0].set_title("latent space (dotted: unit circle)")
axes[0].legend(loc="lower right")
draw_density(axes[1])
axes[1].scatter(ends_x0[:, 0], ends_x0[:, 1], color="k", zorder=3, label="the two data points")
axes[1].set_title("decoded paths over the data density")
axes[1].legend(loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Likelihood
#
# An ODE moves densities without creating or destroying mass, so it gives exact likelihoods (Chen et al.
# 2018, *Neural ordinary differential equations*; Grathwohl et al. 2019, *FFJORD*; for diffusion, Song et al.
# 2021). Along a solution $x(t)$ of $\dot x = \tilde f(x, t)$, use the continuity equation
# $\partial_t p = -\nabla\cdot(\tilde f p) = -\tilde f\cdot\nabla p - p\,\nabla\cdot\tilde f$:
#
# $$\frac{d}{dt}\log p_t(x(t)) = \partial_t\log p_t + \nabla\log p_t\cdot\dot x
#   = -\tilde f\cdot\nabla\log p - \nabla\cdot\tilde f + \nabla\log p\cdot\tilde f = -\nabla\cdot\tilde f(x(t), t),$$
#
# the *instantaneous change of variables* (the continuous form of $\log|\det J|$). Integrating from 0 to 1 [E34]:
#
# $$\log p_0(x(0)) = \log p_1(x(1)) + \int_0^1 \nabla\cdot\tilde f(x(t), t)\,dt,$$
#
# with $\nabla\cdot\tilde f = D\,a(t) - \frac12 g(t)^2\,\nabla\cdot s_\theta$. `ode_log_likelihood` solves the ODE
# forwards from $x(\varepsilon) = x$, with the integral as one more coordinate of the state, by RK45. With the mixture's
# exact score, its Hessian's trace as the divergence and the exact $p_1$, the result must be the mixture's own
# $\log p(x)$ (up to the start at $\varepsilon = 10^{-5}$ instead of 0 and the solver's tolerance, $10^{-6}$):

# %%
N_LL = 50 if FAST else 500
x_ll = gmm.sample(np.random.default_rng(17), N_LL)


def exact_divergence(x, t):
    """tr of the Hessian of log p_t: the exact divergence of the score, per example."""
    return np.trace(noised(vp, float(t[0])).score_jacobian(x), axis1=1, axis2=2)


log_p1 = noised(vp, 1.0).log_prob  # the exact p_1 (the prior N(0, I) is off by s(1) = 0.0066 of the data)
ll_ode = ode_log_likelihood(vp, exact_score(vp), x_ll, divergence_fn=exact_divergence, prior_log_prob=log_p1,
                            rtol=1e-6, atol=1e-6)
ll_exact = gmm.log_prob(x_ll)
per_dim = np.abs(ll_ode - ll_exact) / 2
print(f"{N_LL} points: largest |log p_ODE - log p| = {per_dim.max():.1e} nats per dimension")
assert per_dim.max() < 1e-3
ll_prior = ode_log_likelihood(vp, exact_score(vp), x_ll, divergence_fn=exact_divergence, rtol=1e-6, atol=1e-6)
print(f"with the prior N(0, I) for p_1 instead: largest change {np.abs(ll_prior - ll_ode).max():.1e} nats")

fig, ax = plt.subplots(figsize=(4.8, 4.4))
ax.scatter(ll_exact, ll_ode, s=8, label="data points")
lims = [ll_exact.min() - 0.3, ll_exact.max() + 0.3]
ax.plot(lims, lims, "k--", lw=0.8, label="y = x")
ax.set_xlabel("exact log p(x) (the mixture)")
ax.set_ylabel("log p(x) by the probability flow ODE")
ax.set_title("E34 with the exact divergence")
ax.set_aspect("equal")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Hutchinson's estimator.** The divergence is the trace of the score's Jacobian $J$: $D$ backward passes
# through a network, too many for an image. For any random probe with $\mathbb E[zz^\top] = I$,
# $\mathbb E[z^\top J z] = \mathrm{tr}(J\,\mathbb E[zz^\top]) = \mathrm{tr}\,J$ (Hutchinson 1989): one vector-Jacobian
# product $z^\top J$ per evaluation gives an unbiased estimate. Its variance depends on the probe: for symmetric
# $J$, $\mathrm{Var} = 2\sum_{i\ne j}J_{ij}^2$ with Rademacher probes ($z_i = \pm1$: $z_i^2 = 1$, so the diagonal
# is always exact) and $2\lVert J\rVert_F^2$ with Gaussian ones. The estimator needs $z^\top J$ from the autodiff,
# so the mixture's score is written again on minidiff Tensors (its inverse covariances by `numpy.linalg.inv`):


# %%
def tensor_score(sde):
    """The mixture's score of p_t on autodiff Tensors:
    sum_k softmax_k(log w_k + log N(x; m_k, C_k)) (-C_k^{-1} (x - m_k))."""

    def score(x, t):
        p = noised(sde, float(t[0]))
        precisions = np.linalg.inv(p.covariances)  # (K, D, D)
        logits, grads = [], []
        for k in range(p.K):
            diff = x - p.means[k]  # (B, D)
            grad = diff @ -precisions[k]  # (B, D)
            log_det = np.linalg.slogdet(2 * np.pi * p.covariances[k])[1]
            logits.append((diff * grad).sum(axis=1) * 0.5 + (math.log(p.weights[k]) - 0.5 * log_det))
            grads.append(grad)
        r = F.softmax(F.stack(logits, axis=1), axis=1)  # (B, K)
        return sum(r[:, k : k + 1] * grads[k] for k in range(p.K))  # (B, D)

    return score


t_probe, n_probes = 0.3, 4000 if FAST else 40000
point = gmm.sample(np.random.default_rng(18), 1)  # (1, 2)
x_rep = np.repeat(point, n_probes, axis=0)
J = noised(vp, t_probe).score_jacobian(point)[0]  # (2, 2), symmetric
trace = float(np.trace(J))
predicted = {"rademacher": 2 * (J[0, 1] ** 2 + J[1, 0] ** 2), "gaussian": 2 * float(np.sum(J**2))}
for probe in ("rademacher", "gaussian"):
    z = probe_vectors(np.random.default_rng(19), x_rep.shape, probe)
    _, est = score_divergence_hutchinson(tensor_score(vp), x_rep, np.full(n_probes, t_probe), z)
    sq = (est - trace) ** 2  # the variance about the known mean
    se = sq.std() / math.sqrt(n_probes)
    print(f"{probe:>10}: mean {est.mean():.4f} (tr J = {trace:.4f}), variance {sq.mean():.4f} "
          f"(predicted {predicted[probe]:.4f})")
    assert abs(est.mean() - trace) < 5 * math.sqrt(predicted[probe] / n_probes) + 1e-12
    assert abs(sq.mean() - predicted[probe]) <= 5 * se + 1e-9 * predicted[probe]
assert predicted["rademacher"] < predicted["gaussian"]

# %% [markdown]
# (In two dimensions a Rademacher probe is off by exactly $\pm 2J_{12}$, so its variance is hit to rounding.)
# Along the ODE the probe is drawn once per example and kept for the whole solve (as FFJORD does), so the
# integral is an unbiased estimate of the exact one. Many copies of three points, one probe each, with both kinds
# of probe. In two dimensions a Rademacher probe has $z_1z_2 = \pm1$ for the whole solve, so its estimate takes
# only two values, the exact one plus or minus $\int \frac12 g^2\, 2J_{12}\,dt$: two spikes, symmetric about 0.

# %%
copies = 100 if FAST else 400
points = gmm.sample(np.random.default_rng(20), 3)
exact = ode_log_likelihood(vp, exact_score(vp), points, divergence_fn=exact_divergence, prior_log_prob=log_p1)
spreads = {}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, probe, seed in zip(axes, ("rademacher", "gaussian"), (21, 22), strict=True):
    estimates = ode_log_likelihood(vp, tensor_score(vp), np.repeat(points, copies, axis=0), np.random.default_rng(seed),
                                   divergence="hutchinson", probe=probe, prior_log_prob=log_p1).reshape(3, copies)
    spreads[probe] = estimates.std(axis=1, ddof=1)  # (3,)
    for k in range(3):
        spread = spreads[probe][k]
        se = spread / math.sqrt(copies)
        print(f"{probe:>10}, point {k}: exact {exact[k]:.3f}; Hutchinson mean {estimates[k].mean():.3f} +- {se:.3f} "
              f"(s.e.), spread of one estimate {spread:.2f} nats")
        assert abs(estimates[k].mean() - exact[k]) <= 5 * se
        ax.hist(estimates[k] - exact[k], bins=40, alpha=0.5, label=f"point {k}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Hutchinson estimate - exact log p (nats)")
    ax.set_ylabel("number of solves")
    ax.set_title(f"{probe} probes, {copies} solves per point")
    ax.legend()
plt.tight_layout()
plt.show()
assert np.all(3 * spreads["rademacher"] < spreads["gaussian"]) and np.all(spreads["rademacher"] > 0.5)

# %% [markdown]
# Unbiased, but each single estimate is off by a nat or more with Rademacher probes, and several times that
# with Gaussian ones (the spreads printed above): Gaussian probes also pay for the diagonal of $J$, which is
# large near $t = 0$ where the noised density is narrow. Fine for an average over a test set (the number
# reported as bits per dimension), useless for one image. With images, $D$ is in the thousands and Hutchinson
# is the only affordable choice.
#
# ## 7. Side by side with diffusers
#
# diffusers' `DDIMScheduler` is the most used DDIM implementation. Built from the same configuration (here
# diffusers' defaults: the linear schedule of DDPM, "leading" spacing, `set_alpha_to_one`), minidiff's
# `DDIMSampler.from_config` must take the same steps from the same $x_T$ with the same model. One difference
# in bookkeeping: diffusers counts timesteps $k = 0, \dots, T-1$, minidiff $t = 1, \dots, T$ (so that $t = 0$ is
# the data and `alpha_bars[t]` is $\bar\alpha_t$): $t = k + 1$. The model is called with minidiff's $t$ in both
# loops. diffusers keeps its schedule in float32, so the two agree to float32 rounding (printed), not to float64's.

# %%
diffusers = md.optional_reference("diffusers", "the comparison with diffusers' DDIMScheduler")

if diffusers is not None:
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(clip_sample=False)
    sampler = DDIMSampler.from_config(dict(scheduler.config))
    scheduler.set_timesteps(50)
    sampler.set_timesteps(50)
    assert np.array_equal(sampler.timesteps, scheduler.timesteps.numpy() + 1)  # t = k + 1
    print("diffusers k:", scheduler.timesteps[:4].tolist(), "...  minidiff t:", sampler.timesteps[:4].tolist(), "...")
    x_ours = rng.standard_normal((16, 2))
    x_theirs = torch.from_numpy(x_ours.copy())
    largest = 0.0
    for k, t in zip(scheduler.timesteps, sampler.timesteps, strict=True):
        x_ours = sampler.step(eps_model(x_ours, np.full(16, t)), t, x_ours).prev_sample
        eps_theirs = torch.from_numpy(eps_model(x_theirs.numpy(), np.full(16, int(k) + 1)))
        x_theirs = scheduler.step(eps_theirs, k, x_theirs, eta=0.0).prev_sample
        largest = max(largest, float(np.max(np.abs(x_ours - x_theirs.numpy()) / (1 + np.abs(x_ours)))))
    print(f"50 DDIM steps: largest |minidiff - diffusers| / (1 + |x|) along the trajectory = {largest:.1e}")
    assert largest < 1e-4

# %% [markdown]
# ## Summary
#
# * As $T\to\infty$ DDPM's chain becomes the VP SDE $dx = -\frac12\beta x\,dt + \sqrt\beta\,dw$ and NCSN's noise
#   levels the VE SDE [E29] (Song et al. 2021). Linear drifts keep the marginals Gaussian given $x_0$, with
#   $s(t)$ and $n(t)$ from two ODEs; Euler-Maruyama reaches them up to an $O(\Delta t)$ bias.
# * Time reversal (Anderson 1982) gives the reverse SDE [E30], drift $f - g^2\nabla\log p_t$: sampling needs only
#   the score of every $p_t$. With the exact score, Euler-Maruyama and predictor-corrector sample the mixture.
# * Writing the diffusion term of the Fokker-Planck equation as a transport gives the probability flow ODE
#   [E31], velocity $f - \frac12 g^2\nabla\log p_t$, with the same marginals and no noise; an adaptive RK45 solves
#   it in about a hundred score evaluations at tolerance $10^{-5}$.
# * DDIM [E32] (Song, Meng & Ermon 2021) comes from a non-Markovian forward process with DDPM's marginals, so it
#   reuses a DDPM network. $\eta = 1$ is DDPM's ancestral step with $\tilde\beta_t$; $\eta = 0$ is Euler's method on
#   $d\bar x/d\sigma = \epsilon_\theta$, the probability flow in the variables $x/\sqrt{\bar\alpha}$ and
#   $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$: first order, as the slope shows.
# * The $\eta = 0$ map is invertible [E33]: inversion encodes data into latents (up to first-order error), slerp
#   interpolates latents without leaving the shell where Gaussian latents live.
# * The ODE gives exact likelihoods by the instantaneous change of variables [E34]; the divergence is exact in
#   low dimension and estimated without bias by Hutchinson's trick in high dimension.
# * minidiff's DDIM takes diffusers' DDIMScheduler's steps, with $t = k + 1$.
#
# ## Exercises
#
# Open `minidiff/exercises/ch06.py` and fill in:
#
# * **6.1** `ddim_step_coefficients(schedule, t, t_prev, eta)`: the three weights of the DDIM step [E32],
#   $\sqrt{\bar\alpha_{t'}}$, $\sqrt{1-\bar\alpha_{t'}-\sigma_t^2}$ and $\sigma_t(\eta)$, read from the schedule's
#   arrays at $t$ and $t'$ (which may be several steps apart, or 0, the data). `DDIMSampler` uses your function for
#   every step.
# * **6.2** `SDE.reverse_drift(x, t, score)`: the drift $f(x, t) - g(t)^2\,\text{score}$ of the reverse-time SDE
#   [E30], for one time or one time per example ($g(t)^2$ shaped to multiply $x$). The reverse-SDE samplers use it.
#
# Grade them with `pytest --student -m ch06`. 6.1: the weights keep the marginal $q(x_{t'}\mid x_0)$ for every $\eta$
# and are Bayes' posterior at $\eta = 1$; every step of DDIM runs against the formula written out; DDIM at
# $\eta = 1$ equals DDPM over all $T$ steps; $\eta = 0$ is deterministic and converges at first order to the
# closed-form probability flow map of Gaussian data. 6.2: the drift at points against a hand computation for
# VP, sub-VP and VE; the reverse Fokker-Planck equation with the mixture's exact $p_t$; the probability flow
# drift relation; with the exact score of Gaussian data, the reverse SDE reproduces the closed-form marginals.
