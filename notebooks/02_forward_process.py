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
# *forward process*, which takes a data point $x_0$ and adds a little Gaussian noise at each of $T$
# steps until nothing of $x_0$ is left. This chapter builds that process, the *noise schedules* that
# say how much noise each step adds, and the one identity that makes training cheap: $x_t$ can be drawn
# from $x_0$ in a single step, whatever $t$.
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
    q_mean_variance,
    q_sample,
    q_sample_trajectory,
    q_step,
    scaled_linear_betas,
    sigmoid_betas,
)

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks T and the sample sizes
T = 100 if FAST else 1000
N = 4000 if FAST else 40000
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. One step
#
# Step $t$ shrinks the current point a little towards 0 and adds noise of variance $\beta_t$ [E1]:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\right),
# \qquad\text{i.e.}\qquad x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t .$$
#
# The factor $\sqrt{1-\beta_t}$ is what keeps the variance bounded: if $x_{t-1}$ has variance 1, so does
# $x_t$, since $(1-\beta_t)\cdot 1 + \beta_t = 1$. Without it the variance would grow at every step.
# Write $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s=1}^t \alpha_s$, with $\bar\alpha_0 = 1$, the
# empty product [E2].

# %%
schedule = NoiseSchedule(linear_betas(T))
x = np.full((N, 1), 1.5)  # every chain starts at x_0 = 1.5
for t in range(1, 4):
    x = q_step(schedule, x, t, rng=rng)
    print(f"t={t}: mean {x.mean():.4f} (sqrt(alpha_bar_t) x0 = {1.5 * schedule.sqrt_alpha_bars[t]:.4f}), "
          f"variance {x.var():.2e} (1 - alpha_bar_t = {schedule.one_minus_alpha_bars[t]:.2e})")
print("alpha_bar_0 =", schedule.alpha_bars[0], "  arrays have length T + 1 =", len(schedule.alpha_bars))

# %% [markdown]
# ## 2. Noise schedules
#
# The schedule $\beta_1, \dots, \beta_T$ is a design choice. Four are in common use:
#
# * **linear** [E5] (DDPM): $\beta_t$ from $10^{-4}$ to $0.02$ in $T = 1000$ steps;
# * **cosine** [E6] (improved DDPM): chosen through $\bar\alpha$ itself,
#   $\bar\alpha_t = f(t)/f(0)$ with $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1+s}\tfrac{\pi}{2}\big)$, $s = 0.008$, and
#   $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$ clipped at $0.999$ (at $t = T$, $f(T) \approx 0$ would
#   give $\beta_T \approx 1$);
# * **scaled linear** [E7] (latent diffusion): linear in $\sqrt{\beta}$, from $\sqrt{0.00085}$ to $\sqrt{0.012}$;
# * **sigmoid** [E8]: $\beta_t$ follows a logistic curve between the two ends.
#
# What matters for the model is the curve $\bar\alpha_t$: how much of the signal is left at step $t$.

# %%
makers = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas,
          "sigmoid": sigmoid_betas}
schedules = {name: NoiseSchedule(make(T)) for name, make in makers.items()}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, s in schedules.items():
    axes[0].plot(np.arange(T + 1) / T, s.alpha_bars, label=name)
    axes[1].plot(np.arange(1, T + 1) / T, s.log_snr[1:], label=name)
axes[0].set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title="signal left")
axes[1].set(xlabel="t / T", ylabel="log SNR(t)", title="log signal-to-noise ratio")
axes[0].legend()
plt.tight_layout()
plt.show()
for name, s in schedules.items():
    print(f"{name:>13}: alpha_bar_T = {s.alpha_bars[T]:.2e}, alpha_bar at T/2 = {s.alpha_bars[T // 2]:.3f}")

# %% [markdown]
# The linear schedule spends its second half where almost no signal is left ($\bar\alpha_{T/2} \approx 0.08$
# with $T = 1000$): those steps teach the model little. The cosine schedule destroys information more
# evenly. Its clip at 0.999 only bites at the very end; let us check that it clips nothing else, and
# that near $t = T$, where $\bar\alpha_t$ is about $10^{-9}$, nothing overflows.

# %%
cos_s = schedules["cosine"]
clipped = np.flatnonzero(cos_s.betas[1:] >= 0.999) + 1
print("clipped steps:", clipped, "  last betas:", cos_s.betas[-3:])
assert list(clipped) == [T]
for values in (cos_s.snr, cos_s.log_snr, cos_s.sqrt_one_minus_alpha_bars, cos_s.posterior_variance):
    assert np.isfinite(values[1:]).all()

# %% [markdown]
# ## 3. The signal-to-noise ratio
#
# At step $t$ the signal has power $\bar\alpha_t$ and the noise $1 - \bar\alpha_t$ (section 4 shows why),
# so the *signal-to-noise ratio* is [E4]
#
# $$\mathrm{SNR}(t) = \frac{\bar\alpha_t}{1-\bar\alpha_t}.$$
#
# It decreases strictly from $\mathrm{SNR}(0) = \infty$; later chapters see losses, samplers and
# weightings as functions of $\log \mathrm{SNR}$. minidiff computes $1 - \bar\alpha_t$ as
# $-\mathrm{expm1}(\sum_s \log(1-\beta_s))$, which keeps its digits when $\bar\alpha_t$ is within $10^{-4}$ of 1.

# %%
for name, s in schedules.items():
    assert np.all(np.diff(s.log_snr) < 0), name
lin = schedules["linear"]
print("SNR(1) =", lin.snr[1], " = (1 - beta_1) / beta_1 =", (1 - lin.betas[1]) / lin.betas[1])
assert math.isclose(lin.snr[1], (1 - lin.betas[1]) / lin.betas[1], rel_tol=1e-13)

# %% [markdown]
# ## 4. The closed-form marginal
#
# Two steps at once: $x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$ and
# $x_{t-1} = \sqrt{\alpha_{t-1}}\,x_{t-2} + \sqrt{\beta_{t-1}}\,\epsilon_{t-1}$ give
#
# $$x_t = \sqrt{\alpha_t\alpha_{t-1}}\,x_{t-2}
#   + \sqrt{\alpha_t\beta_{t-1}}\,\epsilon_{t-1} + \sqrt{\beta_t}\,\epsilon_t .$$
#
# The two noise terms are independent Gaussians, so their sum is one Gaussian with variance
# $\alpha_t(1-\alpha_{t-1}) + 1 - \alpha_t = 1 - \alpha_t\alpha_{t-1}$. By induction (if
# $x_{t-1} = \sqrt{\bar\alpha_{t-1}}x_0 + \sqrt{1-\bar\alpha_{t-1}}\,\epsilon$, one more step gives variance
# $\alpha_t(1 - \bar\alpha_{t-1}) + \beta_t = 1 - \bar\alpha_t$) [E3]:
#
# $$q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\right),\qquad
# x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon .$$
#
# Training needs $x_t$ at a random $t$ for each example: this is one line instead of $t$ steps. Let us
# check it on a small 2-D dataset: $t$ composed steps (`q_sample_trajectory`) against one draw
# (`q_sample`), by their means, variances and correlation.

# %%
n_data = N // 4
data = np.concatenate([rng.normal([-1.0, 0.5], 0.1, (n_data, 2)), rng.normal([1.0, -0.5], 0.2, (n_data, 2))])
chains = q_sample_trajectory(lin, data, rng)  # (T + 1, 2 n_data, 2), indexed by t
for t in (1, T // 10, T // 2, T):
    direct = q_sample(lin, data, t, rng=rng)
    composed = chains[t]
    mean_e, var_e = q_mean_variance(lin, data, t)  # the exact moments given each x_0
    expected_mean = mean_e.mean(axis=0)
    expected_var = var_e.mean(axis=0) + mean_e.var(axis=0)  # law of total variance over the data
    for name, sample in (("composed", composed), ("direct", direct)):
        se_mean = np.sqrt(expected_var / len(sample))
        # Var of a sample variance is (mu_4 - sigma^4) / n: 2 sigma^4 / n for a Gaussian, less for these two
        # clusters (a two-point-like mixture has kurtosis below 3), so the Gaussian value is an upper bound.
        se_var = expected_var * np.sqrt(2.0 / len(sample))
        assert np.all(np.abs(sample.mean(axis=0) - expected_mean) < 5 * se_mean), (t, name)
        assert np.all(np.abs(sample.var(axis=0) - expected_var) < 5 * se_var), (t, name)
    print(f"t={t:4d}: composed mean {composed.mean(axis=0).round(3)}, direct {direct.mean(axis=0).round(3)}, "
          f"exact {expected_mean.round(3)};  var composed {composed.var(axis=0).round(3)}, "
          f"direct {direct.var(axis=0).round(3)}")

fig, axes = plt.subplots(1, 4, figsize=(12, 3), sharex=True, sharey=True)
for ax, t in zip(axes, (0, T // 20, T // 5, T), strict=True):
    ax.scatter(*chains[t][::4].T, s=1, alpha=0.4)
    ax.set_title(f"t = {t}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Short chains: rescale the schedule, do not cut it
#
# Notebooks and tests here run with small $T$ (fast mode uses $T = 100$). Cutting DDPM's schedule to 50
# steps leaves most of the signal: $\log\bar\alpha_T \approx -\sum_t \beta_t$, and 50 betas between $10^{-4}$
# and $0.02$ add up to only about 0.5. Improved DDPM's rule keeps the sum instead: for $T$ steps use
# $\beta_\text{start} = 10^{-4}\cdot 1000/T$ and $\beta_\text{end} = 0.02\cdot 1000/T$. Then
# $\sum_t\beta_t = T(\beta_1 + \beta_T)/2 = 10.05$ for every $T$, and $\bar\alpha_T \le e^{-10.05}$.
# `linear_betas(T)` (and the scaled-linear and sigmoid schedules) apply it whenever the range is not given.

# %%
for steps in (25, 50, 100, 1000):
    cut = NoiseSchedule(linear_betas(steps, 1e-4, 0.02))
    rule = NoiseSchedule(linear_betas(steps))
    print(f"T = {steps:4d}: cut alpha_bar_T = {cut.alpha_bars[-1]:.3e}   "
          f"rescaled alpha_bar_T = {rule.alpha_bars[-1]:.3e}")
    assert rule.alpha_bars[-1] <= math.exp(-10.05)
assert NoiseSchedule(linear_betas(50, 1e-4, 0.02)).alpha_bars[-1] > 0.5

# %% [markdown]
# ## 6. Zero terminal SNR
#
# Even DDPM's schedule keeps $\bar\alpha_T = 4\cdot 10^{-5}$: $x_T$ still carries a trace of $x_0$, while the
# sampler starts from pure noise. Lin et al. (2023) rescale $\sqrt{\bar\alpha_t}$ affinely so that it ends at
# exactly 0 and keeps its first value: $r_t \leftarrow (r_t - r_T)\, r_1 / (r_1 - r_T)$. Then
# $\mathrm{SNR}(T) = 0$, and a model that predicts $\epsilon$ learns nothing at $t = T$ (there $x_T = \epsilon$):
# such schedules go with the $v$-parameterization of chapter 03.

# %%
zero = NoiseSchedule(linear_betas(T), zero_terminal_snr=True)
print("alpha_bar_1:", lin.alpha_bars[1], "->", zero.alpha_bars[1], "   alpha_bar_T:", lin.alpha_bars[T], "->",
      zero.alpha_bars[T], "   SNR(T):", zero.snr[T])
assert zero.alpha_bars[T] == 0.0 and math.isclose(zero.alpha_bars[1], lin.alpha_bars[1], rel_tol=1e-12)
x_T = q_sample(zero, np.full((N, 1), 3.0), T, rng=rng)  # no trace of x_0 = 3 is left
assert abs(x_T.mean()) < 5 / math.sqrt(N) and abs(x_T.var() - 1) < 5 * math.sqrt(2 / N)

# %% [markdown]
# ## Exercises
#
# Open `minidiff/exercises/ch02.py` and fill in:
#
# * **2.1** `cosine_betas`: the cosine schedule [E6], from $f(t)$ to clipped betas;
# * **2.2** `q_sample`: the closed-form marginal [E3], for one $t$ or one $t$ per example.
#
# Grade them with `pytest --student -m ch02`. The tests compare your schedule with $f$ evaluated step by
# step, check that only betas above `max_beta` are clipped and that $\bar\alpha_t = f(t)/f(0)$ where
# nothing is; your `q_sample` is compared with a longhand evaluation and, by a two-sample test, with
# $t$ composed one-step transitions.
