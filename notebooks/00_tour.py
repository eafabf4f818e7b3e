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
# # 00 · A tour of diffusion in ten minutes
#
# A diffusion model makes data out of noise. It is built from two processes:
#
# * the **forward process** takes a training image and adds a little Gaussian noise at each of $T$ steps,
#   until nothing of the image is left. It is fixed in advance and has nothing to learn;
# * the **reverse process** starts from pure noise and removes a little noise at each step, until an image
#   is left. To know *what* to remove, it needs at every step a guess of the clean image behind the noisy
#   one. A trained network supplies that guess.
#
# Sohl-Dickstein et al. (2015) proposed this scheme; Ho et al. (2020) made it produce high-quality images with
# a simple training loss; Song et al. (2021) described both processes in continuous time, as a stochastic
# differential equation and its reversal in time. This tour runs the whole loop on 8x8 handwritten digits, with
# a picture at every step. It uses no network: the digits are modelled by a distribution simple enough that the
# best possible guess is known exactly. That exact guess is the *oracle* a network is trained to imitate.
# Section 5 maps the chapters that derive each piece.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff.diffusion import GaussianMixture, NoiseSchedule, gaussian_posterior_mean, linear_betas, q_sample
from minidiff.samplers import DDPMSampler

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks the sample sizes and the number of sampling steps
T = 1000  # DDPM's chain length
N_GUESS = 500 if FAST else 1500  # digits used to measure how good a guess is
N_SAMPLES = 64 if FAST else 256  # digits generated in section 4
STEPS = 100 if FAST else T  # reverse steps taken by the sampler
rng = np.random.default_rng(0)

# The UCI handwritten digits (Alpaydin and Kaynak 1998), shipped with minidiff: 1500 training images.
images, labels = md.data.digits("train")  # (1500, 1, 8, 8) in [-1, 1], (1500,) digits 0..9
print("training digits:", images.shape, images.dtype, "pixel range", images.min(), images.max())


def show(ax, image, title=None, xlabel=None):
    """One 8x8 digit: ink (+1) black, paper (-1) white; values beyond [-1, 1] are drawn as the nearest end."""
    ax.imshow(np.reshape(image, (8, 8)), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=9)


# %% [markdown]
# ## 1. Noise a digit: the forward process
#
# Step $t$ shrinks the image a little and adds Gaussian noise of variance $\beta_t$ [E1]:
# $x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$ with $\epsilon_t \sim \mathcal N(0, I)$. DDPM's
# *linear schedule* [E5] raises $\beta_t$ from $10^{-4}$ to $0.02$ over $T = 1000$ steps. The steps compose:
# a sum of independent Gaussians is Gaussian, so $x_t$ can be drawn from $x_0$ in one go [E3],
#
# $$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon, \qquad
# \bar\alpha_t = \prod_{s=1}^{t} (1-\beta_s), \qquad \epsilon \sim \mathcal N(0, I).$$
#
# $\sqrt{\bar\alpha_t}$ is the **signal level**: the fraction of the digit left in $x_t$. Chapter 02 derives
# [E3] and compares schedules; here we only look. Each column below is one $t$, with its signal level under it.

# %%
schedule = NoiseSchedule(linear_betas(T))  # every per-step quantity, indexed by t = 0..T
strip_t = [0, 50, 100, 200, 300, 400, 600, T]
digits = images[[0, 1, 7]]  # three training digits, (3, 1, 8, 8)
fig, axes = plt.subplots(len(digits), len(strip_t), figsize=(1.2 * len(strip_t), 1.35 * len(digits) + 0.4))
for col, t in enumerate(strip_t):
    xt = digits if t == 0 else q_sample(schedule, digits, t, rng=rng)  # (3, 1, 8, 8)
    for row in range(len(digits)):
        show(axes[row, col], xt[row], title=f"t = {t}" if row == 0 else None,
             xlabel=rf"$\sqrt{{\bar\alpha_t}}$ = {schedule.sqrt_alpha_bars[t]:.2f}" if row == len(digits) - 1 else None)
fig.suptitle(r"The forward process: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$", y=1.0)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The noise level curve
#
# How much of $x_0$ survives in $x_t$? Take one pixel value $x_0$ with variance $\sigma^2$ over the data, and
# write $a = \sqrt{\bar\alpha_t}$, $b = \sqrt{1-\bar\alpha_t}$. Since $\epsilon$ is independent of $x_0$:
#
# $$\begin{array}{rll}
# \operatorname{Cov}(x_t, x_0) &= \operatorname{Cov}(a x_0 + b\epsilon,\ x_0)
#   = a \operatorname{Var}(x_0) + b \operatorname{Cov}(\epsilon, x_0) = a\sigma^2
#   & \quad\text{(covariance is linear; } \operatorname{Cov}(\epsilon, x_0) = 0\text{)}\\
# \operatorname{Var}(x_t) &= a^2\sigma^2 + b^2 & \quad\text{(variances of independent terms add)}\\
# \operatorname{corr}(x_t, x_0) &= \frac{a\sigma^2}{\sigma\sqrt{a^2\sigma^2 + b^2}}
#   = \frac{a\sigma}{\sqrt{a^2\sigma^2 + b^2}} & \quad\text{(divide by the two standard deviations)}
# \end{array}$$
#
# So the regression slope of $x_t$ on $x_0$, $\operatorname{Cov}(x_t, x_0)/\operatorname{Var}(x_0)$, is the
# signal level $\sqrt{\bar\alpha_t}$ itself, and for data of unit variance so is the correlation. Our pixels have
# $\sigma^2 < 1$ (printed below), so their correlation falls a little faster than $\sqrt{\bar\alpha_t}$. Let us
# measure both on every pixel of every training digit.

# %%
x0 = images.reshape(len(images), -1).astype(np.float64)  # (1500, 64): one row per digit
n_values = x0.size
sigma2 = x0.var()
curve_t = np.unique(np.linspace(1, T, 25).astype(int))
slope, corr = [], []
for t in curve_t:
    xt = q_sample(schedule, x0, int(t), rng=rng)  # (1500, 64)
    c0, ct = x0 - x0.mean(), xt - xt.mean()
    slope.append((c0 * ct).mean() / (c0 * c0).mean())
    corr.append((c0 * ct).mean() / np.sqrt((c0 * c0).mean() * (ct * ct).mean()))
a, b = schedule.sqrt_alpha_bars[curve_t], schedule.sqrt_one_minus_alpha_bars[curve_t]
corr_formula = a * np.sqrt(sigma2) / np.sqrt(a * a * sigma2 + b * b)
# Given the digits, the measured slope is a + b Cov(eps, x0) / sigma^2, whose noise term has standard error
# b / (sigma sqrt(n)); a correlation estimate has standard error about (1 - corr^2) / sqrt(n).
assert np.all(np.abs(np.array(slope) - a) < 5 * b / np.sqrt(sigma2 * n_values)), "slope != sqrt(alpha_bar)"
assert np.all(np.abs(np.array(corr) - corr_formula) < 5 * (1 - corr_formula**2) / np.sqrt(n_values) + 1e-3)
print(f"pixel variance sigma^2 = {sigma2:.3f} over {n_values} pixel values; largest |slope - sqrt(alpha_bar)| = "
      f"{np.abs(np.array(slope) - a).max():.4f}, largest |corr - formula| = {np.abs(corr - corr_formula).max():.4f}")
half, tenth = np.argmax(schedule.sqrt_alpha_bars < 0.5), np.argmax(schedule.sqrt_alpha_bars < 0.1)
print(f"the signal level falls below 1/2 at t = {half} and below 1/10 at t = {tenth}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
t_all = np.arange(T + 1)
axes[0].plot(t_all, schedule.sqrt_alpha_bars, label=r"signal level $\sqrt{\bar\alpha_t}$")
axes[0].plot(t_all, schedule.sqrt_one_minus_alpha_bars, label=r"noise level $\sqrt{1-\bar\alpha_t}$")
axes[0].set(xlabel="step t", ylabel="coefficient in $x_t$", title="linear schedule, T = 1000")
axes[0].legend()
axes[1].plot(t_all, schedule.sqrt_alpha_bars, color="C0", label=r"$\sqrt{\bar\alpha_t}$")
axes[1].plot(curve_t, slope, "o", color="C0", ms=4, label="measured slope of $x_t$ on $x_0$")
axes[1].plot(curve_t, corr_formula, color="C2", label=r"$a\sigma / \sqrt{a^2\sigma^2 + b^2}$")
axes[1].plot(curve_t, corr, "x", color="C2", ms=5, label="measured corr($x_t$, $x_0$)")
axes[1].set(xlabel="step t", ylabel="what is left of $x_0$", title="measured on the training digits")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The signal level falls below one half about a third of the way along the chain, and below a tenth about
# two thirds of the way (the steps are printed above). Past that, $x_t$ is close to a draw from $\mathcal N(0, I)$
# whatever the digit was: that is what lets the reverse process start from pure noise.
#
# ## 3. The best guess of $x_0$ from $x_t$
#
# Going back needs, at every step, a guess of the clean digit behind $x_t$. The guess that makes the mean
# squared error $\mathbb E\,\lVert x_0 - f(x_t)\rVert^2$ smallest is the posterior mean
# $f(x_t) = \mathbb E[x_0 \mid x_t]$: the average of all the digits that could have produced this $x_t$, each
# weighted by how likely it makes $x_t$.
# It is what a diffusion network is trained to output (chapter 04: Ho et al.'s loss is this regression,
# written for $\epsilon$).
#
# **One Gaussian pixel, by Bayes.** Model one pixel as $x_0 \sim \mathcal N(\mu, s^2)$. Given $x_0$, we have
# $x_t \sim \mathcal N(a x_0, b^2)$. Bayes' rule multiplies the two densities, and we collect the exponent in $x_0$:
#
# $$\begin{array}{rll}
# \log p(x_0 \mid x_t) &= -\frac{(x_t - a x_0)^2}{2b^2} - \frac{(x_0 - \mu)^2}{2s^2} + \text{const}
#   & \quad\text{(Bayes: } p(x_0 \mid x_t) \propto p(x_t \mid x_0)\,p(x_0)\text{)}\\
# &= -\frac{x_0^2}{2}\Big(\frac{a^2}{b^2} + \frac{1}{s^2}\Big) + x_0\Big(\frac{a x_t}{b^2} + \frac{\mu}{s^2}\Big)
#   + \text{const} & \quad\text{(expand the squares; drop terms without } x_0\text{)}\\
# &= -\frac{(x_0 - m)^2}{2v} + \text{const}, \quad \frac{1}{v} = \frac{a^2}{b^2} + \frac{1}{s^2},\quad
#   m = v\Big(\frac{a x_t}{b^2} + \frac{\mu}{s^2}\Big) & \quad\text{(complete the square)}
# \end{array}$$
#
# So the posterior is Gaussian, with precision (inverse variance) $1/v$ the sum of the two precisions. Multiply
# numerator and denominator by $b^2 s^2$ to read off its mean and variance:
#
# $$\mathbb E[x_0 \mid x_t] = m = \frac{a s^2 x_t + b^2 \mu}{a^2 s^2 + b^2}
#   = \mu + \frac{a s^2}{a^2 s^2 + b^2}\,(x_t - a\mu), \qquad v = \frac{s^2 b^2}{a^2 s^2 + b^2}.$$
#
# The guess starts from the prior mean $\mu$ and moves towards what $x_t$ says, by a gain that is large when the
# signal dominates ($b \to 0$: the guess is $x_t / a$) and small when the noise does ($a \to 0$: the guess is
# $\mu$). With a mean and a variance per pixel this is `gaussian_posterior_mean(xt, a, b, mean, var)`, which you
# write in exercise 0.1. A per-pixel Gaussian knows nothing of strokes, though: each pixel is guessed alone.
#
# **A mixture of Gaussians.** A better model of the digits is one Gaussian per digit class, each fitted to its
# class with a full 64x64 covariance (so it knows which pixels go dark together), weighted by how often the
# class occurs: $p(x_0) = \sum_k w_k\,\mathcal N(x_0; \mu_k, \Sigma_k)$. Its guess is the same Bayes rule
# inside each component, averaged with the probabilities $p(k \mid x_t)$ that component $k$ produced $x_t$.
# `minidiff.diffusion.GaussianMixture` computes it exactly, for any noise level (chapter 05 builds it).

# %%
mean_pixel = x0.mean(axis=0).reshape(1, 8, 8)  # (1, 8, 8): the per-pixel Gaussian, fitted to the digits
var_pixel = x0.var(axis=0).reshape(1, 8, 8)
weights = np.bincount(labels, minlength=10) / len(labels)  # (10,) how often each digit occurs
class_means = np.stack([x0[labels == k].mean(axis=0) for k in range(10)])  # (10, 64)
# The border pixels of some classes never change: a small ridge keeps each covariance invertible.
class_covs = np.stack([np.cov(x0[labels == k].T, bias=True) for k in range(10)]) + 1e-3 * np.eye(64)  # (10, 64, 64)
mixture = GaussianMixture(weights, class_means, class_covs)
print(mixture)


def guess_pixel_gaussian(xt, t):
    """E[x0 | x_t] under the per-pixel Gaussian: exercise 0.1 with a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t)."""
    return gaussian_posterior_mean(xt, schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t],
                                   mean_pixel.reshape(-1), var_pixel.reshape(-1))


def guess_mixture(xt, t):
    """E[x0 | x_t] under the mixture of one Gaussian per digit class."""
    return mixture.posterior_mean(xt, schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t])


guess_t = [50, 150, 250, 350, 450, 600]
x_one = x0[[4]]  # (1, 64): a training digit (a 4)
rows = {"noisy $x_t$": [], "guess under a\nper-pixel Gaussian": [], "guess under a\nmixture of 10 Gaussians": []}
for t in guess_t:
    xt = q_sample(schedule, x_one, t, rng=rng)
    rows["noisy $x_t$"].append(xt)
    rows["guess under a\nper-pixel Gaussian"].append(guess_pixel_gaussian(xt, t))
    rows["guess under a\nmixture of 10 Gaussians"].append(guess_mixture(xt, t))
fig, axes = plt.subplots(3, len(guess_t) + 2, figsize=(1.25 * len(guess_t) + 4.0, 4.4),
                         gridspec_kw={"width_ratios": [2.2, 1.15] + [1] * len(guess_t)})
for r, (name, row) in enumerate(rows.items()):
    axes[r, 0].axis("off")
    axes[r, 0].text(1.0, 0.5, name, ha="right", va="center", fontsize=10, transform=axes[r, 0].transAxes)
    if r == 0:
        show(axes[r, 1], x_one, title="the digit $x_0$")
    else:
        axes[r, 1].axis("off")
    for c, (t, image) in enumerate(zip(guess_t, row, strict=True)):
        show(axes[r, c + 2], image, title=f"t = {t}" if r == 0 else None)
fig.suptitle(r"A noisy digit and the best guess $\mathbb{E}[x_0 \mid x_t]$ under two models of the digits")
plt.tight_layout()
plt.show()

# %% [markdown]
# At small $t$ both guesses are close to the digit. As the noise grows the per-pixel Gaussian's guess fades to
# the average digit, a grey blob, while the mixture's guess stays a sharp, plausible digit for longer and then
# becomes an average over the classes that remain likely. How wrong is each guess on average? For the
# per-pixel Gaussian, pen-and-paper problem 1 shows that the mean squared error is the posterior variance
# $v = s^2 b^2 / (a^2 s^2 + b^2)$ averaged over pixels, for *any* data with these per-pixel means and variances,
# Gaussian or not. We check it on the digits and compare with the mixture.

# %%
mse_t = np.unique(np.linspace(10, T, 8 if FAST else 25).astype(int))
subset = rng.choice(len(x0), N_GUESS, replace=False)
mse = {"gaussian": [], "mixture": [], "gaussian, formula": []}
for t in mse_t:
    xt = q_sample(schedule, x0[subset], int(t), rng=rng)  # (N_GUESS, 64)
    err_g = ((guess_pixel_gaussian(xt, t) - x0[subset]) ** 2).mean(axis=1)  # (N_GUESS,) per digit
    err_m = ((guess_mixture(xt, t) - x0[subset]) ** 2).mean(axis=1)
    a, b = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
    formula = np.mean(var_pixel * b * b / (a * a * var_pixel + b * b))
    se_g, se_diff = err_g.std() / np.sqrt(N_GUESS), (err_m - err_g).std() / np.sqrt(N_GUESS)
    assert abs(err_g.mean() - formula) < 5 * se_g, f"t={t}: per-pixel Gaussian MSE {err_g.mean()} != {formula}"
    assert err_m.mean() < err_g.mean() + 5 * se_diff, f"t={t}: the mixture guesses worse than one Gaussian"
    mse["gaussian"].append(err_g.mean())
    mse["mixture"].append(err_m.mean())
    mse["gaussian, formula"].append(formula)
ratio = np.array(mse["mixture"]) / np.array(mse["gaussian"])
print(f"mixture's error / per-pixel Gaussian's error: smallest {ratio.min():.2f} (at t = {mse_t[ratio.argmin()]}), "
      f"at t = {mse_t[-1]}: {ratio[-1]:.2f}")
assert ratio.min() < 0.75

t_fine = np.arange(1, T + 1)
a_f, b_f = schedule.sqrt_alpha_bars[t_fine, None], schedule.sqrt_one_minus_alpha_bars[t_fine, None]
v_flat = var_pixel.reshape(1, -1)
plt.figure(figsize=(6.5, 3.8))
plt.plot(t_fine, (v_flat * b_f**2 / (a_f**2 * v_flat + b_f**2)).mean(axis=1), color="C0",
         label="per-pixel Gaussian: posterior variance $v$ (formula)")
plt.plot(mse_t, mse["gaussian"], "o", color="C0", label="per-pixel Gaussian: measured")
plt.plot(mse_t, mse["mixture"], "s-", color="C1", label="mixture of 10 Gaussians: measured")
plt.axhline(var_pixel.mean(), color="gray", ls=":", label="guessing the average digit")
plt.xlabel("step t")
plt.ylabel(r"mean squared error per pixel")
plt.title(r"How wrong is the best guess $\mathbb{E}[x_0 \mid x_t]$?")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The better model of the data guesses better wherever $x_t$ still carries signal; once the signal is gone both
# can only guess the average digit, whose error is the pixels' variance (dotted line).
#
# ## 4. Denoise from pure noise: the reverse process
#
# One guess from pure noise is the average digit: a blur. The reverse process gets a sharp sample by taking many
# small steps instead of one big one. At step $t$ it
#
# 1. guesses $\hat x_0 = \mathbb E[x_0 \mid x_t]$ (the network's job; here the oracle's);
# 2. draws $x_{t-1}$ from the forward process's own posterior $q(x_{t-1} \mid x_t, x_0 = \hat x_0)$ [E11], a
#    Gaussian whose mean is a weighted sum of $\hat x_0$ and $x_t$ and whose variance is small: a step a little of
#    the way towards the guess, plus a little fresh noise.
#
# This is DDPM's ancestral sampler [E16] (Ho et al. 2020; chapter 03 derives it); `DDPMSampler` runs it, and
# `prediction_type="sample"` tells it that the model returns the guess $\hat x_0$ (chapter 03 shows the
# equivalent forms: predicting $\epsilon$ or $v$). We start at $x_T \sim \mathcal N(0, I)$ and let the mixture's
# oracle guess at every step. A sampler given fewer steps than the chain has lets each step span several steps
# of the chain (the same posterior, between the two ends). `clip_sample=False` leaves the guesses unclipped, so
# what comes out is exactly what the oracle and the sampler make.

# %%
sampler = DDPMSampler(schedule, prediction_type="sample", clip_sample=False)
mixture_model = mixture.x0_model(schedule)  # model(x, t) = E[x0 | x_t = x], for x of shape (B, 1, 8, 8)
trajectory = sampler.sample(mixture_model, (N_SAMPLES, 1, 8, 8), np.random.default_rng(1), num_inference_steps=STEPS,
                            progress=False, return_trajectory=True)  # (STEPS + 1, N_SAMPLES, 1, 8, 8)
frame_t = np.append(sampler.timesteps, 0)  # frame i of the trajectory is x at step frame_t[i]
samples = trajectory[-1]  # (N_SAMPLES, 1, 8, 8)
print(f"{N_SAMPLES} samples in {len(sampler.timesteps)} reverse steps, from t = {frame_t[0]} to t = 0")

frames = np.linspace(0, STEPS, 8).astype(int)
show_rows = [0, 1, 2]
fig, axes = plt.subplots(2 * len(show_rows), len(frames), figsize=(1.2 * len(frames), 1.3 * 2 * len(show_rows) + 0.5))
for r, i_sample in enumerate(show_rows):
    for c, i in enumerate(frames):
        x = trajectory[i][[i_sample]]  # (1, 1, 8, 8)
        guess = x if frame_t[i] == 0 else mixture_model(x, np.array([frame_t[i]]))  # at t = 0 x is the sample
        show(axes[2 * r, c], x, title=f"t = {frame_t[i]}" if r == 0 else None)
        show(axes[2 * r + 1, c], guess)
    axes[2 * r, 0].set_ylabel("$x_t$", fontsize=9)
    axes[2 * r + 1, 0].set_ylabel(r"$\hat x_0$", fontsize=9)
fig.suptitle(r"Three reverse trajectories: the sample $x_t$ and the oracle's guess "
             r"$\hat x_0 = \mathbb{E}[x_0 \mid x_t]$")
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the guesses along a row: at first they are all the same average digit; somewhere in the middle of the run
# each commits to one class; the last steps sharpen the strokes while $x_t$ catches up with its guess.
#
# Are the samples digits? A sampler driven by the exact oracle should draw from the oracle's model of the data,
# so the samples should have the data's per-pixel mean and variance, and they should be as close to some training
# digit as genuinely new handwritten digits are. The test split (digits the mixture never saw) gives that
# yardstick. For contrast we also sample with the per-pixel Gaussian's exact guess: same sampler, worse model.


# %%
def pixel_gaussian_model(x, t):
    """model(x, t) = E[x0 | x_t = x] under the per-pixel Gaussian, t one step per example, shape (B,)."""
    a = schedule.at(schedule.sqrt_alpha_bars, t, x)  # (B, 1, 1, 1)
    b = schedule.at(schedule.sqrt_one_minus_alpha_bars, t, x)
    return gaussian_posterior_mean(x, a, b, mean_pixel, var_pixel)


samples_gauss = sampler.sample(pixel_gaussian_model, (N_SAMPLES, 1, 8, 8), np.random.default_rng(2),
                               num_inference_steps=STEPS, progress=False)
test_images, _ = md.data.digits("test")  # (297, 1, 8, 8), digits the fit never saw


def flat(x):
    return np.reshape(x, (len(x), 64)).astype(np.float64)


def nearest_training_distance(x):
    """Euclidean distance from each image to its nearest training digit, shape (n,)."""
    d2 = (flat(x) ** 2).sum(1)[:, None] - 2 * flat(x) @ x0.T + (x0**2).sum(1)[None, :]  # (n, 1500)
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def neighbour_correlation(x):
    """Correlation of horizontally adjacent pixels after removing each pixel's mean: strokes make it positive."""
    c = flat(x) - flat(x).mean(axis=0)
    c = c.reshape(-1, 8, 8)
    return np.corrcoef(c[:, :, :-1].ravel(), c[:, :, 1:].ravel())[0, 1]


stats = {}
for name, x in (("training digits", images), ("test digits", test_images), ("mixture oracle", samples),
                ("per-pixel Gaussian oracle", samples_gauss)):
    stats[name] = dict(mean=flat(x).mean(), var_ratio=flat(x).var(axis=0).sum() / x0.var(axis=0).sum(),
                       neighbours=neighbour_correlation(x), nearest=np.median(nearest_training_distance(x)))
    s = stats[name]
    print(f"{name:>26}: mean pixel {s['mean']:+.3f}, pixel variance / data's {s['var_ratio']:.3f}, "
          f"neighbour correlation {s['neighbours']:.3f}, median distance to nearest training digit {s['nearest']:.2f}")

# The mixture's mean is the data's mean exactly, its per-pixel variances the data's plus the ridge.
exact_var = np.diagonal(np.einsum("k,kij->ij", weights, class_covs) + np.cov(class_means.T, aweights=weights,
                                                                                  bias=True))
assert np.allclose(mixture.weights @ mixture.means, x0.mean(axis=0))
z = (flat(samples).mean(axis=0) - x0.mean(axis=0)) / np.sqrt(exact_var / N_SAMPLES)  # (64,) standard scores
assert np.all(np.abs(z) < 5), f"a pixel's sample mean is {np.abs(z).max():.1f} standard errors off"
for name in ("mixture oracle", "per-pixel Gaussian oracle"):
    assert 0.8 < stats[name]["var_ratio"] < 1.1, (name, stats[name]["var_ratio"])
assert stats["mixture oracle"]["neighbours"] > 0.5 * stats["training digits"]["neighbours"]
assert abs(stats["per-pixel Gaussian oracle"]["neighbours"]) < 0.1
assert stats["mixture oracle"]["nearest"] < 1.25 * stats["test digits"]["nearest"]
assert stats["per-pixel Gaussian oracle"]["nearest"] > 1.25 * stats["test digits"]["nearest"]

fig = plt.figure(figsize=(13, 3.4))
grids = (("training digits", images[10:26]), ("samples: mixture oracle", samples[:16]),
         ("samples: per-pixel Gaussian oracle", samples_gauss[:16]))
for g, (name, x) in enumerate(grids):
    left, right = 0.01 + 0.205 * g, 0.19 + 0.205 * g
    sub = fig.add_gridspec(4, 4, left=left, right=right, top=0.88, bottom=0.04, wspace=0.05, hspace=0.05)
    for i in range(16):
        show(fig.add_subplot(sub[i // 4, i % 4]), x[i])
    fig.text((left + right) / 2, 0.92, name, ha="center", fontsize=10)
ax = fig.add_axes([0.67, 0.15, 0.32, 0.73])
bins = np.linspace(0, 7, 29)
for name, x in (("test digits (new handwriting)", test_images), ("samples: mixture oracle", samples),
                ("samples: per-pixel Gaussian oracle", samples_gauss)):
    ax.hist(nearest_training_distance(x), bins=bins, density=True, histtype="step", lw=1.5, label=name)
ax.set(xlabel="distance to the nearest training digit", ylabel="density", title="how far from every training digit?")
ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown]
# Both samplers reproduce the per-pixel means and (printed above) variances close to the data's: a sampler that
# follows the exact guess draws from the model behind that guess. Only the mixture's samples look like digits.
# The per-pixel Gaussian's pixels are independent (their neighbour correlation is near 0, against clearly
# positive for real digits), so its samples are speckle around the average digit and lie far from every training
# digit, while the mixture's lie nearly as close to the training digits as new handwriting does (compare the
# medians printed above). The variance
# ratios are near 1, not exactly 1: besides sampling noise, each reverse step replaces the true distribution of
# $x_{t-1}$ given $x_t$ by a Gaussian whose variance the schedule fixes (chapter 03), an error that grows as the
# sampler takes fewer, larger steps (chapter 10; this run's number of steps is printed above).
#
# ## 5. What a network replaces, and the map of the book
#
# Everything above needed the data's distribution in closed form, to compute $\mathbb E[x_0 \mid x_t]$ exactly.
# For real images nobody has it. A diffusion model replaces the oracle by a network $f_\theta(x_t, t)$, trained
# on pairs $(x_0, x_t)$ made by the forward process to minimize $\mathbb E\lVert x_0 - f_\theta(x_t, t)\rVert^2$:
# the regression whose exact solution is the posterior mean. Ho et al. (2020) train the equivalent noise predictor
# $\epsilon_\theta$ with the "simple" loss $\mathbb E\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2$ [E15]. The
# sampler does not change: it takes a callable `model(x, t)`, an oracle or a network alike. (An oracle for the
# *training set itself*, one point per image, would only ever return training images: pen-and-paper problem 2.
# A network that generalizes cannot be that exact.)
#
# | ch | notebook | what it derives |
# |---|---|---|
# | 00 | `00_tour` | this tour |
# | 01 | `01_autodiff` | the gradients that train a network: a hand-written autodiff, checked against PyTorch |
# | 02 | `02_forward_process` | the forward process: schedules, SNR, the closed-form marginal (E1-E8) |
# | 03 | `03_reverse_process` | the reverse step: the posterior, three parameterizations, DDPM sampling (E9-E16) |
# | 04 | `04_elbo` | why the loss is right: the ELBO term by term, $L_\text{simple}$, bits per dimension (E17-E23) |
# | 05 | `05_score_langevin` | the score $\nabla \log p$, score matching, Langevin, the mixture oracle (E24-E28) |
# | 06 | `06_sde_ode_ddim` | Song et al.'s SDE and probability-flow ODE, DDIM, likelihoods (E29-E34) |
# | 07 | `07_unet` | the network: timestep embedding, attention, the U-Net, training it on digits (E43-E46) |
# | 08 | `08_guidance` | steering samples: classifier and classifier-free guidance (E39-E42) |
# | 09 | `09_editing` | editing images: SDEdit, inpainting, inversion and interpolation (E33, E49, E50) |
# | 10 | `10_fast_samplers` | sampling in 10-20 steps: DPM-Solver++, Heun / EDM, flow matching (E35, E36, E38) |
# | 11 | `11_kernels` | the hot loops in C++ and CUDA, timed against PyTorch |
#
# **Install** (pure NumPy, nothing to compile), from the repository's folder:
#
# ```bash
# python -m venv .venv && . .venv/bin/activate
# pip install -e ".[student]" -Ccmake.define.MINIDIFF_BUILD_EXTENSION=OFF
# ```
#
# **Exercises.** `python -m minidiff exercises` writes the stubs `minidiff/exercises/chNN.py` (it never overwrites
# your edits). Replace a `raise NotImplementedError(...)` by your code and grade it with `pytest --student -m ch00`
# (a chapter) or `pytest --student --exercise ex00.1` (one exercise). `MINIDIFF_EXERCISES=ex00.1` runs a
# notebook on your own code wherever it calls the graded function.
#
# ## Summary
#
# * The forward process [E1] [E3] turns a digit into noise:
#   $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$. The signal level $\sqrt{\bar\alpha_t}$ is the
#   regression slope of $x_t$ on $x_0$; it falls from 1 to about 0.
# * The best guess of $x_0$ from $x_t$ in mean square is $\mathbb E[x_0 \mid x_t]$. For a Gaussian pixel Bayes gives
#   it in closed form: $\mu + \frac{a s^2}{a^2 s^2 + b^2}(x_t - a\mu)$, a gain between "trust $x_t$" and "trust
#   the prior".
# * The reverse process [E16] runs from pure noise, stepping a little towards the current guess and adding a
#   little noise at each step. With the exact guess it draws from the model behind the guess: speckle for a
#   per-pixel Gaussian, digits for a mixture of class Gaussians.
# * A diffusion model is this sampler with a network in place of the oracle, trained to regress $x_0$ (or
#   $\epsilon$) from $x_t$.
#
# ## References
#
# * J. Sohl-Dickstein, E. Weiss, N. Maheswaranathan, S. Ganguli (2015). *Deep unsupervised learning using
#   nonequilibrium thermodynamics.* ICML. The idea: destroy structure with a fixed diffusion, learn its reversal,
#   train it with a variational bound.
# * J. Ho, A. Jain, P. Abbeel (2020). *Denoising diffusion probabilistic models.* NeurIPS. The linear schedule,
#   the noise-prediction parameterization and the simple loss [E15], the ancestral sampler [E16]; the first
#   high-quality images from a diffusion model.
# * Y. Song, J. Sohl-Dickstein, D. P. Kingma, A. Kumar, S. Ermon, B. Poole (2021). *Score-based generative modeling
#   through stochastic differential equations.* ICLR. Diffusion as a forward SDE and its reverse in time, driven by
#   the score; the probability-flow ODE; one frame for DDPM and score-based models.
#
# ## Pen-and-paper problems
#
# 1. **The best linear guess, for any data.** A pixel has mean $\mu$ and variance $s^2$ over the data (any
#    distribution), and $x_t = a x_0 + b\epsilon$ with $\epsilon \sim \mathcal N(0, 1)$ independent of $x_0$. For
#    the linear guess $f(x_t) = \mu + g\,(x_t - a\mu)$, compute $\mathbb E\,(x_0 - f(x_t))^2$ as a function of $g$;
#    find the best $g$ and the error there. Why did section 3's measured error match the formula on digits,
#    which are not Gaussian?
# 2. **An oracle that memorizes.** Let the data be the $N$ training images themselves, each with probability $1/N$:
#    $p(x_0) = \frac1N\sum_n \delta(x_0 - x^{(n)})$. Show that $\mathbb E[x_0 \mid x_t] = \sum_n w_n(x_t)\,x^{(n)}$
#    with softmax weights $w_n(x_t) \propto \exp\!\big(-\lVert x_t - a x^{(n)}\rVert^2 / (2b^2)\big)$. What does the
#    guess become as $t \to 0$? What can a sampler driven by this oracle produce?
#
# ### Worked answers
#
# 1. Write $u = x_0 - \mu$ (mean 0, variance $s^2$). Then $x_t - a\mu = a u + b\epsilon$ and
#    $x_0 - f(x_t) = u - g(a u + b\epsilon) = (1 - g a)\,u - g b\,\epsilon$. The two terms are uncorrelated
#    ($\epsilon$ is independent of $u$ and has mean 0), so
#    $\mathbb E\,(x_0 - f)^2 = (1 - g a)^2 s^2 + g^2 b^2$. Setting the derivative $-2a(1 - ga)s^2 + 2 g b^2$ to zero
#    gives $g = a s^2 / (a^2 s^2 + b^2)$, the gain of section 3, and the error there is
#    $s^2 - a^2 s^4 / (a^2 s^2 + b^2) = s^2 b^2 / (a^2 s^2 + b^2) = v$. Only the mean and variance of $x_0$ entered:
#    the per-pixel Gaussian's guess is the best *linear* guess for any data with those moments, and its error is
#    $v$ whatever the data's shape. (For non-Gaussian data a non-linear guess, such as the mixture's, does better.)
# 2. By Bayes, $p(x^{(n)} \mid x_t) \propto \frac1N\,\mathcal N(x_t; a x^{(n)}, b^2 I)
#    \propto \exp(-\lVert x_t - a x^{(n)}\rVert^2 / (2b^2))$ (the normalizing constant $(2\pi b^2)^{-D/2}$ is the same
#    for every $n$), and $\mathbb E[x_0 \mid x_t] = \sum_n p(x^{(n)} \mid x_t)\,x^{(n)}$. As $t \to 0$, $b \to 0$
#    and the softmax puts all its weight on the training image nearest to $x_t / a$: the guess *is* a training
#    image. The sampler's last steps move $x_t$ onto its guess, so it can only produce copies of the training
#    images: the exact optimum of the training loss memorizes. A network that makes new digits must therefore
#    differ from that optimum.
#
# ## Exercises
#
# Open `minidiff/exercises/ch00.py` and fill in:
#
# * **0.1** `gaussian_posterior_mean(xt, scale, std, mean, var)`: the exact denoiser of section 3,
#   $\mathbb E[x_0 \mid a x_0 + b \epsilon = x_t]$ with $a$ = `scale`, $b$ = `std` and
#   $x_0 \sim \mathcal N(\mu, \operatorname{diag}(s^2))$, $\mu$ = `mean`, $s^2$ = `var`, element by element; `scale` and
#   `std` are numbers or one per example (shape `(B, 1, ..., 1)`).
#
# Grade it with `pytest --student -m ch00`. The tests compare your function with `GaussianMixture` given one
# diagonal component (which computes the same posterior another way), check by Monte Carlo that $x_0$ averages to
# your guess among the draws whose $x_t$ lands in the same bin, check the limits (no noise: $x_0 = x_t / a$; no
# signal or no spread: the mean), and that float32 images stay float32. Then run this notebook on your code with
# `MINIDIFF_EXERCISES=ex00.1`: sections 3 and 4 call your function.
