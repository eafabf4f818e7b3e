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
# # 02 · The forward process: schedules, SNR, the closed-form marginal
#
# A diffusion model learns to undo a process that is fixed in advance and has no parameters: the
# *forward process*. It takes a data point $x_0$ and adds a little Gaussian noise at each of $T$ steps,
# until nothing of $x_0$ is left. Sohl-Dickstein et al. (2015) introduced this idea; Ho et al. (2020, DDPM)
# made it work on images with the choices this chapter starts from.
#
# This chapter builds the chain step by step, derives the identity that makes training cheap ($x_t$ can be
# drawn from $x_0$ in one step, whatever $t$), and then looks at the *noise schedule*: how much noise
# each step adds, what that does to the signal-to-noise ratio, and why Nichol & Dhariwal (2021) replaced
# DDPM's linear schedule by a cosine one. It ends with what a noise-predicting model can and cannot
# learn at the last step.
#
# Conventions used in all of minidiff: timesteps are $t = 1, \dots, T$; $t = 0$ is the data itself.
# A `NoiseSchedule` stores every per-step quantity once, in arrays of length $T + 1$ indexed by $t$
# itself, so `schedule.alpha_bars[t]` is $\bar\alpha_t$.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff.diffusion import (
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    predict_x0_from_eps,
    q_sample,
    q_sample_trajectory,
    scaled_linear_betas,
    sigmoid_betas,
)

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) draws fewer samples; T and the schedules stay DDPM's
T = 1000
N = 4000 if FAST else 20000  # Monte Carlo sample size
rng = np.random.default_rng(0)
linear = NoiseSchedule(linear_betas(T))  # DDPM's schedule [E5]
cosine = NoiseSchedule(cosine_betas(T))  # improved DDPM's [E6]

# %% [markdown]
# ## 1. One step
#
# Step $t$ shrinks the current point a little towards 0 and adds Gaussian noise of variance $\beta_t$ [E1]:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\right).$$
#
# To *draw* from it, scale a standard normal $\epsilon_t \sim \mathcal N(0, I)$ by the standard deviation and
# add the mean (a Gaussian is its mean plus its standard deviation times a standard normal):
#
# $$x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t ,$$
#
# with a *fresh* $\epsilon_t$ at every step, independent of everything before. Two names make the
# algebra short [E2]: $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s=1}^t \alpha_s$, with $\bar\alpha_0 = 1$
# (the empty product).
#
# **Why the factor $\sqrt{1-\beta_t}$.** Take one coordinate and its variance. The two terms are independent,
# so their variances add, and scaling by $c$ scales a variance by $c^2$:
#
# $$\operatorname{Var}(x_t) = \alpha_t \operatorname{Var}(x_{t-1}) + \beta_t .$$
#
# Subtract 1 from both sides and use $\beta_t = 1 - \alpha_t$:
#
# $$\operatorname{Var}(x_t) - 1 = \alpha_t\big(\operatorname{Var}(x_{t-1}) - 1\big)
# \quad\Longrightarrow\quad \operatorname{Var}(x_t) = 1 + \bar\alpha_t\big(\operatorname{Var}(x_0) - 1\big).$$
#
# Whatever the variance of the data, the chain pulls it to 1, and $\bar\alpha_t$ says how much of the
# difference is left. Without the factor the variance would grow by $\beta_t$ at every step instead. This is
# why DDPM's process is called *variance preserving*. A check: chains from data of four different variances,
# drawn step by step with `q_sample_trajectory` (the function exercise 2.3 asks you to write).

# %%
n_var = N // 2
starts = np.array([0.0, 0.5, 1.0, 2.0])  # standard deviations of x_0, one per column
x0 = (rng.standard_normal((n_var, 4)) * starts).astype(np.float32)  # (n_var, 4)
chains = q_sample_trajectory(linear, x0, rng)  # (T + 1, n_var, 4), float32 like x0
assert chains.dtype == np.float32 and chains.shape == (T + 1, n_var, 4)
ts = np.arange(0, T + 1, 25)
empirical = chains[ts].astype(np.float64).var(axis=1)  # (len(ts), 4)
exact = 1 + linear.alpha_bars[:, None] * (starts**2 - 1)  # (T + 1, 4): 1 + alpha_bar_t (Var x_0 - 1)
# Var of a Gaussian sample variance is 2 sigma^4 / n: 5 standard errors, at every plotted t
assert np.all(np.abs(empirical - exact[ts]) <= 5 * exact[ts] * math.sqrt(2 / n_var) + 1e-12)

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for j, sd in enumerate(starts):
    line, = ax.plot(np.arange(T + 1), exact[:, j], label=rf"$1 + \bar\alpha_t(\mathrm{{Var}}\,x_0 - 1)$, "
                    rf"Var $x_0$ = {sd**2:g}")
    ax.plot(ts, empirical[:, j], "o", ms=3, color=line.get_color())
ax.plot([], [], "ko", ms=3, label=f"sample variance of {n_var} chains")
ax.set(xlabel="step t", ylabel=r"Var$(x_t)$", title="the chain pulls every variance to 1 (linear schedule)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. A digit along the chain
#
# The same chain on an image: one 8x8 digit of `md.data.digits` (pixels in $[-1, 1]$), noised step by step
# with DDPM's linear schedule (top) and the cosine schedule of section 4 (bottom). Each frame shows $x_t$
# clipped to the data range $[-1, 1]$, with $\bar\alpha_t$ under it.

# %%
images, labels = md.data.digits("train")
digit = images[np.flatnonzero(labels == 3)[0]]  # (1, 8, 8) float32
frames = [0, 50, 100, 200, 300, 400, 500, 600, 800, 1000]
fig, axes = plt.subplots(2, len(frames), figsize=(1.25 * len(frames), 3.4))
for row, (name, schedule) in enumerate((("linear", linear), ("cosine", cosine))):
    strip = q_sample_trajectory(schedule, digit, rng)[frames]  # (frames, 1, 8, 8)
    for ax, t, image in zip(axes[row], frames, strip, strict=True):
        ax.imshow(image[0], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(rf"$\bar\alpha_t$={schedule.alpha_bars[t]:.2g}", fontsize=8)
        if row == 0:
            ax.set_title(f"t = {t}", fontsize=9)
    axes[row, 0].set_ylabel(name)
fig.suptitle("one digit noised along the chain: x_t for t = 0 (left) to T (right)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the frames by their $\bar\alpha_t$ rather than by $t$: the digit fades as $\bar\alpha_t$ falls, whichever
# schedule brings it there. The two schedules bring it down at different speeds:

# %%
half = {name: int(np.argmax(s.alpha_bars < 0.5)) for name, s in (("linear", linear), ("cosine", cosine))}
print(f"alpha_bar_t first falls below 1/2 at t = {half['linear']} (linear) and t = {half['cosine']} (cosine)")
assert half["linear"] < T // 3 and half["cosine"] > 0.45 * T

# %% [markdown]
# The linear schedule has removed half of the signal power within its first third; the cosine schedule keeps it
# until about the middle of the chain. Section 4 returns to this difference.

# %% [markdown]
# ## 3. The closed-form marginal, derived
#
# Training needs $x_t$ at a random $t$ for each example. Running $t$ steps of the chain each time would cost
# up to $T = 1000$ steps per example. It is not needed: $q(x_t \mid x_0)$ is a Gaussian we can write down.
#
# **Two facts about Gaussians** (for vectors with independent coordinates, $\epsilon \sim \mathcal N(0, I)$):
#
# * scaling: $c\,\epsilon \sim \mathcal N(0, c^2 I)$;
# * sums: if $a \sim \mathcal N(0, \sigma_a^2 I)$ and $b \sim \mathcal N(0, \sigma_b^2 I)$ are *independent*, then
#   $a + b \sim \mathcal N\big(0, (\sigma_a^2 + \sigma_b^2) I\big)$ (a sum of independent Gaussians is Gaussian, and
#   variances of independent terms add). So $a + b$ can be written $\sqrt{\sigma_a^2 + \sigma_b^2}\;\bar\epsilon$
#   with one standard normal $\bar\epsilon$.
#
# **Two steps.** Write step $t - 1$ and step $t$:
#
# $$x_{t-1} = \sqrt{\alpha_{t-1}}\,x_{t-2} + \sqrt{\beta_{t-1}}\,\epsilon_{t-1},\qquad
#   x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t .$$
#
# Substitute the first into the second:
#
# $$x_t = \sqrt{\alpha_t}\big(\sqrt{\alpha_{t-1}}\,x_{t-2} + \sqrt{\beta_{t-1}}\,\epsilon_{t-1}\big)
#   + \sqrt{\beta_t}\,\epsilon_t$$
#
# $$\phantom{x_t} = \sqrt{\alpha_t\alpha_{t-1}}\,x_{t-2}
#   + \underbrace{\sqrt{\alpha_t\beta_{t-1}}\,\epsilon_{t-1}
#   + \sqrt{\beta_t}\,\epsilon_t}_{\text{two independent Gaussians}} .$$
#
# By the scaling fact the two noise terms have variances $\alpha_t\beta_{t-1}$ and $\beta_t$; by the sum fact
# (they are independent: $\epsilon_t$ is fresh) their sum is one Gaussian of variance
#
# $$\alpha_t\beta_{t-1} + \beta_t = \alpha_t(1 - \alpha_{t-1}) + 1 - \alpha_t = 1 - \alpha_t\alpha_{t-1} .$$
#
# So two steps are one step with signal factor $\sqrt{\alpha_t\alpha_{t-1}}$ and noise variance
# $1 - \alpha_t\alpha_{t-1}$: the same form, with products of alphas.
#
# **All $t$ steps, by induction.** Claim: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\bar\epsilon_t$
# with $\bar\epsilon_t \sim \mathcal N(0, I)$ independent of $x_0$.
#
# * $t = 1$: it is the one-step formula, since $\bar\alpha_1 = \alpha_1$ and $1 - \bar\alpha_1 = \beta_1$.
# * From $t - 1$ to $t$: substitute the claim for $x_{t-1}$ into one step,
#
# $$x_t = \sqrt{\alpha_t}\big(\sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}}\,\bar\epsilon_{t-1}\big)
#   + \sqrt{\beta_t}\,\epsilon_t
#   = \sqrt{\bar\alpha_t}\,x_0
#   + \big(\sqrt{\alpha_t(1-\bar\alpha_{t-1})}\,\bar\epsilon_{t-1} + \sqrt{\beta_t}\,\epsilon_t\big),$$
#
#   using $\alpha_t\bar\alpha_{t-1} = \bar\alpha_t$. $\bar\epsilon_{t-1}$ is made of $\epsilon_1, \dots,
#   \epsilon_{t-1}$ only, so it is independent of $\epsilon_t$; the bracket is one Gaussian of variance
#   $\alpha_t(1 - \bar\alpha_{t-1}) + 1 - \alpha_t = 1 - \bar\alpha_t$. That is the claim at $t$.
#
# Hence the closed-form marginal [E3]:
#
# $$q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\right),\qquad
# x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon .$$
#
# `q_sample` (exercise 2.2) draws from it in one line. The induction used independence at every step: a chain
# that reused one $\epsilon$ for all steps would add standard deviations instead of variances, and its $x_t$
# would not have this law.
#
# First the recursion itself, in numbers, with no sampling: iterate the mean factor and the variance of one
# step from $x_0$ and compare with $\sqrt{\bar\alpha_t}$ and $1 - \bar\alpha_t$.

# %%
for name, s in (("linear", linear), ("cosine", cosine)):
    factor, variance = np.ones(T + 1), np.zeros(T + 1)  # x_t = factor_t x_0 + noise of this variance
    for t in range(1, T + 1):
        factor[t] = math.sqrt(s.alphas[t]) * factor[t - 1]
        variance[t] = s.alphas[t] * variance[t - 1] + s.betas[t]
    err_f = np.max(np.abs(factor - s.sqrt_alpha_bars))
    err_v = np.max(np.abs(variance - s.one_minus_alpha_bars))
    print(f"{name:>6}: max |factor_t - sqrt(alpha_bar_t)| = {err_f:.1e},  max |variance_t - (1 - alpha_bar_t)| = "
          f"{err_v:.1e}  over t = 0..{T}")
    assert err_f < 1e-12 and err_v < 1e-12

# %% [markdown]
# Now in distribution: 1-D data made of two clusters, $x_0 = \pm 1$ plus a little noise of standard deviation 0.15.
# Each $x_t$ is drawn twice, *composed* ($t$ steps of the chain, `q_sample_trajectory`) and *direct* (one draw of
# the closed form, `q_sample`). E3 also gives the exact density: each cluster $\mathcal N(\pm 1, 0.15^2)$ becomes
# $\mathcal N\big(\pm\sqrt{\bar\alpha_t},\ 0.15^2\,\bar\alpha_t + 1 - \bar\alpha_t\big)$. The title of each panel gives
# the two-sample Kolmogorov-Smirnov distance $D$ between composed and direct draws.


# %%
def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, points, "right") / a.size
                               - np.searchsorted(b, points, "right") / b.size)))


def mixture_density(x: np.ndarray, alpha_bar: float, spread: float = 0.15) -> np.ndarray:
    """q(x_t) for data 0.5 N(-1, spread^2) + 0.5 N(1, spread^2), by E3 applied to each cluster."""
    var = spread**2 * alpha_bar + 1 - alpha_bar
    bumps = [np.exp(-((x - c * math.sqrt(alpha_bar)) ** 2) / (2 * var)) for c in (-1.0, 1.0)]
    return 0.5 * (bumps[0] + bumps[1]) / math.sqrt(2 * math.pi * var)


data = (rng.choice([-1.0, 1.0], N) + 0.15 * rng.standard_normal(N)).astype(np.float32)  # (N,)
composed_all = q_sample_trajectory(linear, data, rng)  # (T + 1, N)
critical = math.sqrt(math.log(2 / 1e-4) / 2) * math.sqrt(2 / N)  # KS at level 1e-4 per comparison
shown = (20, 150, 300, T)
fig, axes = plt.subplots(1, len(shown), figsize=(13, 3.3), sharey=True)
for ax, t in zip(axes, shown, strict=True):
    composed, direct = composed_all[t], q_sample(linear, data, t, rng=rng)
    d = ks_distance(composed, direct)
    assert d < critical, (t, d, critical)
    grid = np.linspace(-3.5, 3.5, 400)
    bins = np.linspace(-3.5, 3.5, 71)
    ax.hist(composed, bins, density=True, alpha=0.5, label="composed: t steps of E1 (q_sample_trajectory)")
    ax.hist(direct, bins, density=True, alpha=0.5, label="direct: one draw of E3 (q_sample)")
    ax.plot(grid, mixture_density(grid, linear.alpha_bars[t]), "k", lw=1.2, label=r"exact density of $x_t$")
    ax.set(xlabel=r"$x_t$", title=rf"t = {t}, $\bar\alpha_t$ = {linear.alpha_bars[t]:.3g}, D = {d:.3f}")
axes[0].set_ylabel("density")
axes[-1].legend(fontsize=7, loc="upper left")
axes[-1].set_ylim(top=1.45)
fig.suptitle(f"composed steps and the closed form draw the same x_t ({N} samples each; KS critical value "
             f"{critical:.3f})")
plt.tight_layout()
plt.show()

# %% [markdown]
# The two histograms lie on each other and on the exact density at every $t$, and each $D$ is below the critical
# value printed in the title: at $t = 20$ the two clusters are barely touched, at $t = 150$ they have spread and
# moved in, by $t = 300$ they have merged, and at $t = T$ the distribution is $\mathcal N(0, 1)$.

# %% [markdown]
# ## 4. Noise schedules
#
# The schedule $\beta_1, \dots, \beta_T$ is a design choice. Four are in common use:
#
# * **linear** [E5] (Ho et al. 2020): $\beta_t$ from $10^{-4}$ to $0.02$ in $T = 1000$ steps;
# * **cosine** [E6] (Nichol & Dhariwal 2021): chosen through $\bar\alpha$ itself,
#   $\bar\alpha_t = f(t)/f(0)$ with $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1+s}\tfrac{\pi}{2}\big)$, $s = 0.008$, and
#   $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$ clipped at $0.999$;
# * **scaled linear** [E7] (latent diffusion, Rombach et al. 2022): linear in $\sqrt{\beta}$, from $\sqrt{0.00085}$
#   to $\sqrt{0.012}$;
# * **sigmoid** [E8]: $\beta_t$ follows a logistic curve between the two ends of the linear schedule.
#
# What the model sees is the curve $\bar\alpha_t$: how much of the signal is left at step $t$.
#
# **Why the cosine schedule.** Nichol & Dhariwal (2021) observed that with the linear schedule the last part of
# the chain is almost pure noise: in their experiments, skipping up to 20% of the reverse process cost little
# sample quality, so those steps contribute little. They designed $\bar\alpha_t$ directly instead: a curve that
# falls close to linearly in the middle and changes slowly near $t = 0$ and $t = T$. Their two details: the offset
# $s$ keeps $\beta_1$ from being tiny near $t = 0$, and the clip at 0.999 avoids $\beta_T = 1$, since $f(T) = 0$.

# %%
makers = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas,
          "sigmoid": sigmoid_betas}
schedules = {name: NoiseSchedule(make(T)) for name, make in makers.items()}
noisy_share = {name: float(np.mean(s.alpha_bars[1:] < 0.01)) for name, s in schedules.items()}
for name, s in schedules.items():
    print(f"{name:>13}: alpha_bar at T/2 = {s.alpha_bars[T // 2]:.3f}, alpha_bar_T = {s.alpha_bars[T]:.1e}, "
          f"steps with alpha_bar_t < 0.01 (almost pure noise): {noisy_share[name]:.1%}")
assert noisy_share["linear"] > 0.3 and noisy_share["cosine"] < 0.1
cos_s = schedules["cosine"]
clipped = np.flatnonzero(cos_s.betas[1:] >= 0.999) + 1
assert list(clipped) == [T], clipped  # the clip bites at t = T only

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, s in schedules.items():
    axes[0].plot(np.arange(T + 1) / T, s.alpha_bars, label=name)
    axes[1].plot(np.arange(1, T + 1) / T, s.betas[1:], label=name)
axes[0].set(xlabel="t / T", ylabel=r"$\bar\alpha_t$ (signal left)", title=r"$\bar\alpha_t$: what the model sees")
axes[1].set(xlabel="t / T", ylabel=r"$\beta_t$ (log scale)", yscale="log", title=r"$\beta_t$: noise added per step")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The printed shares say it in one number: about a third of the linear schedule's steps have less than 1% of the
# signal power left, against under a tenth for the cosine schedule. The right panel shows the cosine schedule's
# price: tiny $\beta_t$ at the start, and a sharp rise to the clip at the very end.
#
# ## 5. The signal-to-noise ratio
#
# By E3, $x_t$ is the signal $\sqrt{\bar\alpha_t}\,x_0$ plus noise of variance $1 - \bar\alpha_t$. For data of unit
# variance the signal has power $\bar\alpha_t$, so the *signal-to-noise ratio* is [E4]
#
# $$\mathrm{SNR}(t) = \frac{\bar\alpha_t}{1-\bar\alpha_t}.$$
#
# Kingma et al. (2021, *Variational Diffusion Models*) made SNR the central quantity. Two facts follow from the
# definition. First, SNR decreases strictly from $\mathrm{SNR}(0) = \infty$, so it can replace $t$ as the clock.
# Second, $\bar\alpha_t$ is a function of SNR alone: solve the definition for $\bar\alpha_t$,
#
# $$\bar\alpha_t = \frac{\mathrm{SNR}}{1 + \mathrm{SNR}} = \frac{1}{1 + e^{-\lambda_t}} = \sigma(\lambda_t),
# \qquad \lambda_t = \log\mathrm{SNR}(t),$$
#
# the logistic sigmoid of the log-SNR. So *any* schedule is one curve $\lambda_t$, and two schedules differ only
# in how they spend their $T$ steps along the $\lambda$ axis. Kingma et al. show that in continuous time the
# variational bound depends on the schedule only through its two end values of SNR; what happens in between
# changes where training spends its effort and the variance of the loss estimate. For the cosine schedule,
# with $f(0) \approx 1$, $\mathrm{SNR} \approx \cos^2 u / \sin^2 u$ with $u = \frac{t/T + s}{1+s}\frac{\pi}{2}$, so
# $\lambda_t \approx -2\log\tan u$: close to a straight line in the middle, where its slope
# $-4/\sin 2u$ is smallest, and steep only at the two ends.

# %%
for name, s in schedules.items():
    assert np.all(np.diff(s.log_snr) < 0), name  # strictly decreasing
    sig = 1 / (1 + np.exp(-s.log_snr[1:]))
    assert np.allclose(sig, s.alpha_bars[1:], rtol=1e-12, atol=0), name  # alpha_bar = sigmoid(log SNR)
u = (np.arange(1, T) / T + 0.008) / 1.008 * (np.pi / 2)
tan_gap = np.abs(cosine.log_snr[1:T] + 2 * np.log(np.tan(u)))  # t = 1..T-1
print(f"cosine: |log SNR + 2 log tan u| <= {tan_gap[T // 10 - 1:].max():.1e} for t >= T/10 "
      f"(largest at t = 1: {tan_gap[0]:.2f}, where f(0) < 1 matters)")
assert tan_gap[T // 10 - 1:].max() < 0.01
low = {name: float(np.mean(s.log_snr[1:] < -5)) for name, s in schedules.items()}
middle = {name: float(np.mean(np.abs(s.log_snr[1:]) < 2.5)) for name, s in schedules.items()}
for name in schedules:
    print(f"{name:>13}: steps with log SNR < -5: {low[name]:.1%};  with |log SNR| < 2.5: {middle[name]:.1%}")
assert low["linear"] > 0.25 > 0.1 > low["cosine"] and middle["cosine"] > middle["linear"]

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, s in schedules.items():
    axes[0].plot(np.arange(1, T + 1) / T, s.snr[1:], label=name)
    axes[1].hist(s.log_snr[1:], bins=np.linspace(-20, 11, 63), histtype="step", lw=1.5, label=name)
axes[0].plot(np.arange(1, T) / T, np.tan(u) ** -2, "k:", lw=1, label=r"$\tan^{-2} u$ (cosine, approx.)")
axes[0].set(xlabel="t / T", ylabel="SNR(t) (log scale)", yscale="log", title="signal-to-noise ratio")
axes[1].set(xlabel=r"$\lambda$ = log SNR", ylabel="number of steps (bins of width 0.5)",
            title=r"where the T steps sit on the $\lambda$ axis")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Left: on the log axis the cosine curve is close to straight in the middle of the chain and follows the
# $\tan^{-2} u$ approximation. Right: the cosine schedule puts most of its steps around $\lambda = 0$, where signal
# and noise have comparable power, and few below $\lambda = -5$ ($\bar\alpha_t < 0.007$); the linear schedule puts
# more than a quarter of its steps there, the near-pure-noise region of section 4 (the printed shares).
# minidiff computes $1 - \bar\alpha_t$ as
# $-\mathrm{expm1}(\sum_s \log(1-\beta_s))$, which keeps its digits at small $t$, where $\bar\alpha_t$ is within
# $10^{-4}$ of 1 and $1 - \bar\alpha_t$ would otherwise lose most of them to cancellation.

# %% [markdown]
# ## 6. Short chains: rescale the schedule, do not cut it
#
# Tests and quick experiments run with small $T$. Cutting DDPM's schedule to 50 steps leaves most of the signal:
# $\log\bar\alpha_T = \sum_t \log(1-\beta_t) \approx -\sum_t \beta_t$, and 50 betas between $10^{-4}$ and $0.02$ add
# up to only about 0.5. Improved DDPM's code keeps the sum instead: for $T$ steps use
# $\beta_\text{start} = 10^{-4}\cdot 1000/T$ and $\beta_\text{end} = 0.02\cdot 1000/T$. Then
# $\sum_t\beta_t = T(\beta_1 + \beta_T)/2 = 10.05$ for every $T$, and, since $\log(1-\beta) \le -\beta$,
# $\bar\alpha_T \le e^{-10.05}$. `linear_betas(T)` (and the scaled-linear and sigmoid schedules) apply this rule
# whenever the range is not given. The dashed curves below are cut schedules; the cut at $T = 100$ still keeps a
# third of the signal power.

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(np.arange(T + 1) / T, linear.alpha_bars, "k", label="T = 1000 (DDPM)")
for steps in (25, 50, 100):
    cut = NoiseSchedule(linear_betas(steps, 1e-4, 0.02))
    rule = NoiseSchedule(linear_betas(steps))
    assert rule.alpha_bars[-1] <= math.exp(-10.05) and cut.alpha_bars[-1] > (0.5 if steps <= 50 else 0.3), steps
    line, = ax.plot(np.arange(steps + 1) / steps, rule.alpha_bars, label=f"T = {steps}, range rescaled by 1000/T")
    ax.plot(np.arange(steps + 1) / steps, cut.alpha_bars, "--", color=line.get_color(),
            label=rf"T = {steps}, range cut ($\bar\alpha_T$ = {cut.alpha_bars[-1]:.2f})")
ax.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$ (log scale)", yscale="log",
       title="short chains: rescaled betas still reach noise")
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. The last step: what an $\epsilon$-model learns at $t = T$
#
# Chapter 03 trains a network $\epsilon_\theta(x_t, t)$ to predict the noise $\epsilon$ of E3 from $x_t$, and recovers
# a guess of the data by solving E3 for $x_0$ [E13]:
#
# $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}} .$$
#
# What happens near $t = T$, where $\bar\alpha_t \to 0$? Two different things, and it is easy to mix them up.
#
# **The $\epsilon$-model learns (close to) the identity.** At $\bar\alpha_t = 0$, E3 says $x_T = \epsilon$ exactly, so
# the best prediction of $\epsilon$ from $x_T$ is $x_T$ itself. Near it the best predictor (the conditional mean,
# which minimizes the squared error) can be written out for data $x_0 = \pm 1$ with equal probability. Bayes' rule
# with the two Gaussians $\mathcal N(\pm\sqrt{\bar\alpha_t}, 1 - \bar\alpha_t)$ gives
# $\mathbb E[x_0 \mid x_t] = \tanh\!\big(\sqrt{\bar\alpha_t}\,x_t / (1 - \bar\alpha_t)\big)$, and solving E3 for
# $\epsilon$:
#
# $$\epsilon^*(x_t) = \mathbb E[\epsilon \mid x_t]
#   = \frac{x_t - \sqrt{\bar\alpha_t}\,\mathbb E[x_0 \mid x_t]}{\sqrt{1-\bar\alpha_t}}
#   \ \xrightarrow{\ \bar\alpha_t \to 0\ }\ x_t .$$
#
# So near $t = T$ the $\epsilon$-model has an easy and well-defined target; it does not "learn nothing".
#
# **It is $\hat x_0$ from $\epsilon$ that breaks.** An error $\delta$ in the predicted $\epsilon$ becomes an error
# $-\delta\,\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t} = -\delta/\sqrt{\mathrm{SNR}(t)}$ in $\hat x_0$: the division by
# $\sqrt{\bar\alpha_t}$ magnifies it. At $\bar\alpha_T = 0$ even the perfect prediction $\epsilon_\theta = x_T$ gives
# $\hat x_0 = (x_T - x_T)/0 = 0/0$: the $\epsilon$-model is right, and says nothing about $x_0$.
#
# Schedules with $\bar\alpha_T = 0$ exist on purpose. Even DDPM's linear schedule keeps
# $\bar\alpha_T \approx 4\cdot 10^{-5}$, a trace of $x_0$ in $x_T$, while sampling starts from pure noise. Lin et al.
# (2023) rescale $r_t = \sqrt{\bar\alpha_t}$ affinely so that it ends at exactly 0 and keeps its first value,
# $r_t \leftarrow (r_t - r_T)\, r_1 / (r_1 - r_T)$: then $\mathrm{SNR}(T) = 0$. Such schedules go with a
# parameterization whose target stays informative at $t = T$, the $v$-prediction of chapter 03 (Salimans & Ho 2022).
# The cell below checks each claim of this section.

# %%
zero = NoiseSchedule(linear_betas(T), zero_terminal_snr=True)
print(f"alpha_bar_1: {linear.alpha_bars[1]:.6f} -> {zero.alpha_bars[1]:.6f};  alpha_bar_T: "
      f"{linear.alpha_bars[T]:.1e} -> {zero.alpha_bars[T]};  SNR(T) = {zero.snr[T]}")
assert zero.alpha_bars[T] == 0.0 and math.isclose(zero.alpha_bars[1], linear.alpha_bars[1], rel_tol=1e-12)


def eps_star(xt: np.ndarray, alpha_bar: float) -> np.ndarray:
    """E[eps | x_t] for data x_0 = +-1 with probability 1/2 each."""
    x0_mean = np.tanh(math.sqrt(alpha_bar) * xt / (1 - alpha_bar))  # E[x_0 | x_t]
    return (xt - math.sqrt(alpha_bar) * x0_mean) / math.sqrt(1 - alpha_bar)


# Draws at t = T of the linear schedule: how well do "predict 0" and "predict x_T" do?
x0_pm = rng.choice([-1.0, 1.0], N)
eps = rng.standard_normal(N)
xT = q_sample(linear, x0_pm, T, noise=eps)
loss_zero, loss_identity = np.mean(eps**2), np.mean((eps - xT) ** 2)
loss_best = np.mean((eps - eps_star(xT, linear.alpha_bars[T])) ** 2)
print(f"t = T, linear schedule: E|eps - 0|^2 = {loss_zero:.3f},  E|eps - x_T|^2 = {loss_identity:.1e},  "
      f"E|eps - eps*(x_T)|^2 = {loss_best:.1e}")
assert loss_identity < 1e-3 * loss_zero and loss_best <= loss_identity

# x0 from eps: an error delta in eps is magnified by 1 / sqrt(SNR(T)) in x0_hat
delta = 0.01
x0_hat = predict_x0_from_eps(linear, xT, T, eps)  # the true eps gives x0 back
x0_off = predict_x0_from_eps(linear, xT, T, eps + delta)
gain = np.abs(x0_off - x0_hat).mean() / delta
print(f"an eps error of {delta} moves x0_hat by {gain * delta:.2f} at t = T: gain {gain:.0f} = 1/sqrt(SNR(T)) = "
      f"{1 / math.sqrt(linear.snr[T]):.0f}")
assert np.allclose(x0_hat, x0_pm) and math.isclose(gain, 1 / math.sqrt(linear.snr[T]), rel_tol=1e-6)

# With alpha_bar_T = 0 the perfect eps prediction gives 0/0
xT_zero = q_sample(zero, x0_pm, T, noise=eps)  # equals eps exactly
assert np.array_equal(xT_zero, eps)
with np.errstate(invalid="ignore", divide="ignore"):
    by_hand = (xT_zero - zero.sqrt_one_minus_alpha_bars[T] * xT_zero) / zero.sqrt_alpha_bars[T]
print("by hand, (x_T - x_T) / 0 =", by_hand[:3], "...")
assert np.isnan(by_hand).all()
try:
    predict_x0_from_eps(zero, xT_zero, T, xT_zero)
except ValueError as err:
    print("predict_x0_from_eps says:", err)
else:
    raise AssertionError("x0 from eps at alpha_bar_T = 0 should be refused")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
grid = np.linspace(-3, 3, 301)
for t in (100, 250, 400, 600, T):
    axes[0].plot(grid, eps_star(grid, linear.alpha_bars[t]),
                 label=rf"t = {t}, $\bar\alpha_t$ = {linear.alpha_bars[t]:.2g}")
axes[0].plot(grid, grid, "k:", label=r"identity, $\epsilon^* = x_t$ ($\bar\alpha_t$ = 0)")
axes[0].set(xlabel=r"$x_t$", ylabel=r"$\epsilon^*(x_t) = \mathbb{E}[\epsilon \mid x_t]$",
            title=r"best $\epsilon$-prediction, data $x_0 = \pm 1$")
steps = np.arange(1, T + 1)
for name, s in (("linear", linear), ("cosine", cosine), ("linear, zero terminal SNR", zero)):
    with np.errstate(divide="ignore"):
        axes[1].plot(steps / T, 1 / np.sqrt(s.snr[1:]), label=name)
axes[1].set(xlabel="t / T", ylabel=r"$1/\sqrt{\mathrm{SNR}(t)}$ (log scale)", yscale="log",
            title=r"how much an $\epsilon$ error grows in $\hat x_0$")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Left: early in the chain the best $\epsilon$-prediction is far from linear (it has to tell the two data points
# apart); as $t \to T$ it straightens into the identity. Right: the gain from an $\epsilon$ error to an $\hat x_0$
# error grows fast near the end of every schedule. The cosine schedule's last step, with $\bar\alpha_T$ near
# $10^{-9}$, has a far larger gain than the linear one's (printed below); for the zero-terminal-SNR schedule it is
# infinite at $t = T$ (the curve leaves the plot), which is the 0/0 printed above.

# %%
gain_T = {name: 1 / math.sqrt(s.snr[T]) for name, s in (("linear", linear), ("cosine", cosine))}
print(f"1/sqrt(SNR(T)): linear {gain_T['linear']:.0f}, cosine {gain_T['cosine']:.0f}")
assert gain_T["cosine"] > 100 * gain_T["linear"]

# %% [markdown]
# ## Summary
#
# * The forward process is a fixed Markov chain of Gaussian steps [E1]:
#   $x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$, a fresh $\epsilon_t$ per step. The factor
#   $\sqrt{1-\beta_t}$ pulls every variance to 1: $\mathrm{Var}(x_t) = 1 + \bar\alpha_t(\mathrm{Var}(x_0) - 1)$.
# * Two steps are one step with multiplied alphas, because independent Gaussian noises add their variances; by
#   induction $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$ [E2, E3]. Training draws
#   $x_t$ in one step instead of $t$.
# * A schedule is best read through $\bar\alpha_t$ or $\lambda_t = \log\mathrm{SNR}(t)$ [E4], with
#   $\bar\alpha_t = \sigma(\lambda_t)$. DDPM's linear schedule [E5] spends about a third of its steps at almost pure
#   noise; the cosine schedule [E6] puts most of its steps where signal and noise are comparable ($\lambda$ near 0).
#   Scaled-linear [E7] and sigmoid [E8] are two more shapes.
# * For short chains, rescale the beta range by $1000/T$; cutting the schedule leaves most of the signal.
# * Near $t = T$ an $\epsilon$-model learns close to the identity, $\epsilon_\theta(x_T) \approx x_T$. What fails is
#   $\hat x_0$ from $\epsilon$: errors grow like $1/\sqrt{\mathrm{SNR}}$ and at $\mathrm{SNR}(T) = 0$ it is 0/0.
#
# ## References
#
# * Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), *Deep Unsupervised Learning using Nonequilibrium
#   Thermodynamics*: the forward diffusion as a Markov chain of small Gaussian steps that turns data into
#   $\mathcal N(0, I)$, and generation as its learned reversal.
# * Ho, Jain & Abbeel (2020), *Denoising Diffusion Probabilistic Models*: the variance-preserving chain with the
#   linear schedule ($10^{-4}$ to $0.02$, $T = 1000$) [E5], and training on $x_t$ drawn in closed form [E3] at a
#   random $t$.
# * Nichol & Dhariwal (2021), *Improved Denoising Diffusion Probabilistic Models*: the cosine schedule [E6], with its
#   offset $s$ and clip; the observation that the linear schedule's last steps add little; the $1000/T$ rescaling
#   in their code.
# * Kingma, Salimans, Poole & Ho (2021), *Variational Diffusion Models*: the forward process written in terms of
#   SNR; the continuous-time bound depends on the schedule only through its end values of SNR.
# * Rombach, Blattmann, Lorenz, Esser & Ommer (2022), *High-Resolution Image Synthesis with Latent Diffusion Models*:
#   the scaled-linear schedule [E7].
# * Lin, Liu, Li & Yang (2023), *Common Diffusion Noise Schedules and Sample Steps are Flawed*: zero terminal SNR.
# * Salimans & Ho (2022), *Progressive Distillation for Fast Sampling of Diffusion Models*: the $v$-parameterization.

# %% [markdown]
# ## Pen-and-paper problems
#
# 1. **Forgetting the variance.** Show $\mathrm{Var}(x_t) = 1 + \bar\alpha_t(\mathrm{Var}(x_0) - 1)$ for one coordinate,
#    from $x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$. What is $\mathrm{Cov}(x_t, x_0)$?
# 2. **Unrolling the chain.** Show that
#    $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sum_{s=1}^t \sqrt{\bar\alpha_t/\bar\alpha_s}\,\sqrt{\beta_s}\,\epsilon_s$, and
#    check directly that the noise terms' variances sum to $1 - \bar\alpha_t$.
# 3. **Without the shrink factor.** Let $x_t = x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$ instead. What is $q(x_t \mid x_0)$?
#    With DDPM's betas, how large is the noise at $t = T$, and why is that a problem for $x_T \sim \mathcal N(0, I)$?
# 4. **Shared noise.** A buggy chain draws one $\epsilon$ and uses it at every step. Compute the variance of its
#    $x_2$ given $x_0$ and compare with $1 - \bar\alpha_2$.
# 5. **SNR.** Show $\bar\alpha_t = \sigma(\log \mathrm{SNR}(t))$, and $\mathrm{SNR}(1) = (1 - \beta_1)/\beta_1$. With
#    DDPM's $\beta_1 = 10^{-4}$, what is $\log\mathrm{SNR}(1)$?
# 6. **The last step.** For a schedule with $\bar\alpha_T = 0$: what does the best $\epsilon$-model output at $t = T$,
#    what does $\hat x_0$ from it give, and what does a $v$-model
#    ($v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$) learn there?
#
# ### Worked answers
#
# 1. $\epsilon_t$ is independent of $x_{t-1}$, so $\mathrm{Var}(x_t) = \alpha_t\mathrm{Var}(x_{t-1}) + \beta_t$.
#    Subtract 1: $\mathrm{Var}(x_t) - 1 = \alpha_t(\mathrm{Var}(x_{t-1}) - 1)$; apply it $t$ times:
#    $\mathrm{Var}(x_t) - 1 = \bar\alpha_t(\mathrm{Var}(x_0) - 1)$. For the covariance use E3 ($\epsilon$ is
#    independent of $x_0$): $\mathrm{Cov}(x_t, x_0) = \mathrm{Cov}(\sqrt{\bar\alpha_t}\,x_0
#    + \sqrt{1 - \bar\alpha_t}\,\epsilon,\ x_0) = \sqrt{\bar\alpha_t}\,\mathrm{Var}(x_0)$.
# 2. By induction: $x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$, and substituting the formula at $t-1$
#    multiplies each of its terms by $\sqrt{\alpha_t}$, which turns $\sqrt{\bar\alpha_{t-1}/\bar\alpha_s}$ into
#    $\sqrt{\bar\alpha_t/\bar\alpha_s}$; the new term is $\epsilon_t$'s, with $\bar\alpha_t/\bar\alpha_t = 1$. The
#    variances: $\frac{\bar\alpha_t}{\bar\alpha_s}\beta_s = \frac{\bar\alpha_t}{\bar\alpha_s}(1 - \alpha_s) =
#    \frac{\bar\alpha_t}{\bar\alpha_s} - \frac{\bar\alpha_t}{\bar\alpha_{s-1}}$
#    (use $\bar\alpha_s = \alpha_s\bar\alpha_{s-1}$), so the sum over $s = 1..t$ telescopes to
#    $\frac{\bar\alpha_t}{\bar\alpha_t} - \frac{\bar\alpha_t}{\bar\alpha_0} = 1 - \bar\alpha_t$. (The tests of
#    exercise 2.3 compare your chain with this formula.)
# 3. The noises add: $q(x_t \mid x_0) = \mathcal N(x_0, \sum_{s \le t}\beta_s\, I)$. With DDPM's betas
#    $\sum_s \beta_s = 10.05$, a standard deviation of about 3.2, and the mean is still $x_0$: $x_T$ is neither
#    independent of $x_0$ nor $\mathcal N(0, I)$, so sampling cannot start from $\mathcal N(0, I)$. (The *variance
#    exploding* processes of chapters 05 and 06 take this route with a very large final variance and start from
#    $\mathcal N(0, \sigma_\text{max}^2 I)$.)
# 4. $x_2 = \sqrt{\alpha_2\alpha_1}\,x_0 + (\sqrt{\alpha_2\beta_1} + \sqrt{\beta_2})\,\epsilon$, variance
#    $(\sqrt{\alpha_2\beta_1} + \sqrt{\beta_2})^2 = \alpha_2\beta_1 + \beta_2 + 2\sqrt{\alpha_2\beta_1\beta_2}$, larger
#    than $1 - \bar\alpha_2 = \alpha_2\beta_1 + \beta_2$ by the cross term: standard deviations added instead of
#    variances. With DDPM's first two betas, nearly equal, that is about twice the right variance.
# 5. From $\mathrm{SNR} = \bar\alpha/(1-\bar\alpha)$: $\bar\alpha = \mathrm{SNR}/(1 + \mathrm{SNR})
#    = 1/(1 + 1/\mathrm{SNR}) = 1/(1 + e^{-\log\mathrm{SNR}})$. At $t = 1$, $\bar\alpha_1 = 1 - \beta_1$, so
#    $\mathrm{SNR}(1) = (1-\beta_1)/\beta_1$, and $\log\mathrm{SNR}(1) = \log(0.9999/10^{-4}) \approx 9.21$.
# 6. $x_T = \epsilon$, so the best $\epsilon$-model outputs $x_T$ (the identity) with zero error. $\hat x_0 =
#    (x_T - 1\cdot x_T)/0$ is 0/0: undefined. The $v$ target at $t = T$ is $v = 0\cdot\epsilon - 1\cdot x_0 = -x_0$;
#    from $x_T$, which is independent of $x_0$, the best a $v$-model can do is $-\mathbb E[x_0]$: finite and defined,
#    so it still gives a sensible $\hat x_0 = \mathbb E[x_0]$.

# %%
beta_1 = linear.betas[1]
print(f"problem 5: log SNR(1) = {linear.log_snr[1]:.4f}, "
      f"log((1 - beta_1) / beta_1) = {math.log((1 - beta_1) / beta_1):.4f}")
assert math.isclose(linear.log_snr[1], math.log((1 - beta_1) / beta_1), rel_tol=1e-12)
a1, a2, b1, b2 = linear.alphas[1], linear.alphas[2], linear.betas[1], linear.betas[2]
shared = (math.sqrt(a2 * b1) + math.sqrt(b2)) ** 2
print(f"problem 4: shared noise gives Var(x_2 | x_0) = {shared:.2e}, E3 says 1 - alpha_bar_2 = "
      f"{linear.one_minus_alpha_bars[2]:.2e}")
assert math.isclose(a2 * b1 + b2, linear.one_minus_alpha_bars[2], rel_tol=1e-12) and shared > 1.9 * (a2 * b1 + b2)

# %% [markdown]
# ## Exercises
#
# Open `minidiff/exercises/ch02.py` and fill in:
#
# * **2.1** `cosine_betas`: the cosine schedule [E6], from $f(t)$ to clipped betas, without a Python loop;
# * **2.2** `q_sample`: the closed-form marginal [E3], for one $t$ or one $t$ per example;
# * **2.3** `q_sample_trajectory`: the chain itself [E1], step by step from $x_0$, with `noise[t - 1]` as the
#   $\epsilon_t$ of step $t$ and the whole trajectory returned in $x_0$'s dtype. This is the chapter's key skill.
#
# Grade them with `pytest --student -m ch02` (add `--exercise ex02.3` for one). The tests check mathematics, not
# your code's text: your schedule against $f$ evaluated step by step and the clip applied exactly where needed;
# your `q_sample` against a longhand evaluation and against composed steps; your chain against the unrolled sum of
# problem 2, each of its steps against $q(x_t \mid x_{t-1})$ (slope, noise variance, fresh noise) and its
# $x_t$ against the closed form of section 3 by a Kolmogorov-Smirnov test.
