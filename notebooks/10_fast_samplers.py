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
# # 10 · Fast samplers: DPM-Solver++, Heun and EDM, flow matching, error against steps
#
# DDPM draws a sample in $T = 1000$ network calls. Chapter 06 showed that the same model also defines a
# deterministic *probability-flow ODE* whose solution carries noise to data, and that DDIM is one way to
# solve it. This chapter treats sampling as what it then is, numerical integration, and asks the
# numerical analyst's question: how does the error fall with the work? We derive the two solvers most
# used today, Heun's method in the noise-level form of Karras et al. (EDM, 2022) and the exponential
# integrator DPM-Solver++ of Lu et al. (2022), measure every sampler's error against the number of model
# calls on one problem, and end with flow matching (Lipman et al. 2023; Liu et al. 2023), which changes
# the path itself.
#
# As in chapter 05 the data is a 2-D Gaussian mixture whose optimal denoiser is known in closed form
# (`GaussianMixture`), so every sampler runs with the *exact* model, and every error we see is the
# solver's own.

# %%
import itertools
import math

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import minidiff as md
from minidiff import nn
from minidiff.autodiff import Tensor
from minidiff.diffusion import NoiseSchedule, linear_betas
from minidiff.diffusion.flow import flow_interpolant, flow_matching_loss
from minidiff.diffusion.gmm import GaussianMixture
from minidiff.diffusion.ode import solve_ivp_rk45
from minidiff.optim import Adam, CosineDecay, LRScheduler
from minidiff.samplers.ddim import DDIMSampler
from minidiff.samplers.ddpm import DDPMSampler
from minidiff.samplers.dpm_solver import DPMSolverMultistepSampler, dpm_solver_2m_update
from minidiff.samplers.edm import (
    EDMHeunSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    edm_heun_step,
    euler_step,
)
from minidiff.samplers.flow import FlowMatchEulerSampler, FlowMatchHeunSampler
from minidiff.samplers.sigmas import edm_preconditioning, karras_sigmas, sigma_at, sigma_table, vp_coefficients

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks the sample sizes, the training run and DDPM's chain
N = 2000 if FAST else 10000  # samples per sampler in section 5
B = 64 if FAST else 256  # starting points of the error measurements
rng = np.random.default_rng(0)
gmm = GaussianMixture.example_2d()
T = 1000
schedule = NoiseSchedule(linear_betas(T))
eps_model = gmm.eps_model(schedule)  # the exact E[eps | x_t], the best possible noise predictor
table = sigma_table(schedule)  # sigma_t for t = 0..T
SIGMA_MIN, SIGMA_MAX = float(table[1]), float(table[T])

BOX = (-2.2, 2.2)
axis = np.linspace(*BOX, 200)
GX, GY = np.meshgrid(axis, axis)
DENSITY = np.exp(gmm.log_prob(np.column_stack([GX.ravel(), GY.ravel()]))).reshape(GX.shape)


def draw_density(ax):
    """Contour lines of the mixture's density, the box, equal axes and axis labels."""
    ax.contour(GX, GY, DENSITY, levels=8, colors="0.6", linewidths=0.8)
    ax.set_xlim(BOX)
    ax.set_ylim(BOX)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")


def path_error(x, reference):
    """The mean Euclidean distance between matching points of two batches (B, 2)."""
    return float(np.sqrt(((x - reference) ** 2).sum(axis=1)).mean())


def log_log_slope(nfe, errors):
    """Least-squares slope of log(error) against log(NFE): -p for a solver of order p."""
    return float(np.polyfit(np.log(nfe), np.log(errors), 1)[0])


def ve_reference(x_start, sigma_start, sigma_end, tol=1e-10):
    """A tight adaptive RK45 solution of dx/dsigma = (x - D(x; sigma)) / sigma with the exact denoiser,
    integrated in u = log sigma, where it reads dx/du = x - D(x; e^u) (smooth over the whole range)."""
    def f(u, x):
        return x - gmm.denoiser(x, math.exp(u))

    return solve_ivp_rk45(f, math.log(sigma_start), math.log(sigma_end), x_start, rtol=tol, atol=tol).y


print(gmm)
print(f"T = {T}, sigma_1 = {SIGMA_MIN:.4f}, sigma_T = {SIGMA_MAX:.1f}")

# %% [markdown]
# ## 1. Sampling is solving an ODE, and the cost is the number of model calls
#
# Chapter 06 derived the probability-flow ODE [E31] $dx = [f(x,t) - \frac12 g(t)^2\nabla_x\log p_t(x)]\,dt$:
# its solutions have the marginals $p_t$ of the diffusion, so integrating it from $x_T \sim \mathcal N(0, I)$
# down to $t = 0$ draws from the data distribution. A sampler is then an ODE solver, and each evaluation
# of the right-hand side is one call of the network: the cost of a sample is its number of function
# evaluations, **NFE**. Everything else (a few multiply-adds per step) is free by comparison.
#
# A solver of *order* $p$ makes a local error $O(h^{p+1})$ in a step of size $h$. Covering a fixed range
# takes $L/h$ steps and, for a stable ODE, the local errors add up (each carried to the end with a bounded
# factor), so the global error is $(L/h)\cdot O(h^{p+1}) = O(h^p)$. With $k$ model calls per step,
# $\mathrm{NFE} = kL/h$, hence
#
# $$\text{error} \approx C\,\mathrm{NFE}^{-p}\quad\Longleftrightarrow\quad
#   \log\text{error} \approx \log C - p\,\log\mathrm{NFE}:$$
#
# a straight line of slope $-p$ on log-log axes. Doubling the calls halves a first-order error and
# quarters a second-order one; but the constant $C$, which depends on the solver, on the grid of noise
# levels and on the problem, decides who wins at the 10 to 50 calls one can afford.
#
# **One time variable for all samplers.** Divide $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$
# (E3) by $\sqrt{\bar\alpha_t}$: $\tilde x = x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma_t\,\epsilon$ with
# $\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t} = \mathrm{SNR}(t)^{-1/2}$ [E4]. The schedule only says at
# which noise levels $\sigma$ the steps are taken; the ODE itself, written in $\sigma$, is the same for every
# schedule. Our linear schedule spans $\sigma$ from $\sigma_1 = 0.01$ to $\sigma_T \approx 157$:

# %%
assert np.allclose(1.0 / (1.0 + table[1:] ** 2), schedule.alpha_bars[1:], rtol=1e-12, atol=0)
assert np.allclose(table[1:], schedule.snr[1:] ** -0.5, rtol=1e-12, atol=0)
print("sigma_t at t = 1, 10, 100, 500, 1000:", np.round(table[[1, 10, 100, 500, 1000]], 4))
assert abs(SIGMA_MIN - 0.01) < 1e-4 and 157 < SIGMA_MAX < 158

# %% [markdown]
# ## 2. The EDM view [E36]
#
# Karras et al. (2022, *Elucidating the design space of diffusion-based generative models*, "EDM")
# write everything in $\tilde x = x_0 + \sigma\epsilon$ (we drop the tilde from now on). Its variance-exploding
# SDE has no drift, $f = 0$, and $g(t)^2 = \frac{d\sigma^2}{dt} = 2\sigma\dot\sigma$, so E31 reads
#
# $$\frac{dx}{dt} = -\tfrac12\cdot 2\sigma\dot\sigma\,\nabla_x\log p_\sigma(x)
#   \quad\Longrightarrow\quad \frac{dx}{d\sigma} = -\sigma\,\nabla_x\log p_\sigma(x).$$
#
# The time variable has disappeared: only $\sigma$ matters. Now Tweedie's formula (chapter 05) gives the score
# from the *denoiser* $D(x;\sigma) = \mathbb E[x_0 \mid x_0 + \sigma\epsilon = x]$:
# $\nabla_x\log p_\sigma(x) = (D(x;\sigma) - x)/\sigma^2$. Substituting,
#
# $$\boxed{\;\frac{dx}{d\sigma} = \frac{x - D(x;\sigma)}{\sigma}\;}$$
#
# The slope points from the denoised guess to $x$, scaled by $1/\sigma$; following it down to $\sigma = 0$
# removes the noise. Every network parameterization is a denoiser in disguise: an $\epsilon$-model gives
# $D = x - \sigma\,\epsilon_\theta$ (E13 divided by $\sqrt{\bar\alpha_t}$), which is how minidiff's Euler and Heun
# samplers read one. First a check of Tweedie's link on the mixture, whose noised scores are exact:

# %%
x_check = gmm.sample(rng, 500) + 0.7 * rng.standard_normal((500, 2))
tweedie = (gmm.denoiser(x_check, 0.7) - x_check) / 0.7**2
score_gap = float(np.abs(tweedie - gmm.noised(1.0, 0.7).score(x_check)).max())
print(f"max |(D(x; sigma) - x) / sigma^2 - grad log p_sigma(x)| = {score_gap:.1e}")
assert score_gap < 1e-10

# %% [markdown]
# ### The noise levels: Karras' schedule
#
# Which $\sigma_i$ to step through is a free choice, independent of the schedule the model was trained with
# (the denoiser is a function of $\sigma$). EDM spaces $N$ levels evenly in $\sigma^{1/\rho}$ [E36]:
#
# $$\sigma_i = \Big(\sigma_\text{max}^{1/\rho} + \tfrac{i}{N-1}\big(\sigma_\text{min}^{1/\rho}
#   - \sigma_\text{max}^{1/\rho}\big)\Big)^{\rho},\qquad i = 0,\dots,N-1,\qquad \sigma_N = 0.$$
#
# $\rho = 1$ is evenly spaced in $\sigma$; as $\rho\to\infty$, $\sigma^{1/\rho} = e^{(\log\sigma)/\rho}
# \approx 1 + (\log\sigma)/\rho$ becomes linear in $\log\sigma$, an evenly spaced *geometric* grid. EDM's
# $\rho = 7$ sits in between: it crowds the steps at small $\sigma$, where the ODE bends as the sample
# commits to one piece of the data. Compare with the grid DDPM's linear schedule gives when its
# $t$ is spaced evenly (what Euler and Heun do with diffusers' default "linspace" spacing), over our range:

# %%
n_levels = 18
grids = {
    r"Karras $\rho = 7$": karras_sigmas(SIGMA_MIN, SIGMA_MAX, n_levels, rho=7.0),
    r"Karras $\rho = 3$": karras_sigmas(SIGMA_MIN, SIGMA_MAX, n_levels, rho=3.0),
    r"evenly in $\log\sigma$ ($\rho\to\infty$)": np.geomspace(SIGMA_MAX, SIGMA_MIN, n_levels),
    r"evenly in $\sigma$ ($\rho = 1$)": karras_sigmas(SIGMA_MIN, SIGMA_MAX, n_levels, rho=1.0),
    "linear betas, evenly in t": sigma_at(table, np.linspace(T, 1, n_levels)),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, sigmas in grids.items():
    ax.semilogy(np.arange(n_levels), sigmas, "o-", ms=3, label=name)
ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
ax.set_xlabel("step index i")
ax.set_ylabel(r"noise level $\sigma_i$")
ax.set_title(f"{n_levels} noise levels from $\\sigma_T$ = {SIGMA_MAX:.0f} to $\\sigma_1$ = {SIGMA_MIN:.2f}")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
below_one = {name: int(np.sum(sigmas < 1.0)) for name, sigmas in grids.items()}
for name, count in below_one.items():
    print(f"{name:>42}: {count:2d} of {n_levels} levels below sigma = 1")
assert list(below_one.values()) == [6, 3, 9, 1, 5]
karras7 = grids[r"Karras $\rho = 7$"]
roots = karras7 ** (1 / 7)
assert math.isclose(karras7[0], SIGMA_MAX, rel_tol=1e-12) and math.isclose(karras7[-1], SIGMA_MIN, rel_tol=1e-10)
assert np.allclose(np.diff(roots), np.diff(roots)[0], rtol=1e-9, atol=0)  # evenly spaced in sigma^(1/rho)
geometric = grids[r"evenly in $\log\sigma$ ($\rho\to\infty$)"]
assert np.allclose(karras_sigmas(SIGMA_MIN, SIGMA_MAX, n_levels, rho=1e4), geometric, rtol=1e-2)  # the limit

# %% [markdown]
# The counts printed above: below $\sigma = 1$, where a sample of our data (scale about 1) is decided, $\rho = 7$
# puts 6 of its 18 levels and the linear schedule's evenly spaced $t$ puts 5; evenly in $\sigma$ puts a single
# one. Karras et al. found $\rho = 7$ to work well on images, with $\sigma$ from 80 down to 0.002; section 4
# measures what the grid does on our problem.
#
# ### Heun's method, and why its last step is Euler's
#
# Write $d(x,\sigma) = (x - D(x;\sigma))/\sigma$ and $h = \sigma_{i+1} - \sigma_i < 0$. Euler's method
# takes the slope at the start, $x_{i+1} = x_i + h\,d(x_i,\sigma_i)$: exact for a straight path,
# with local error $\frac12 h^2\ddot x$. Integrating the ODE over the step,
#
# $$x(\sigma_{i+1}) = x_i + \int_{\sigma_i}^{\sigma_{i+1}} d(x(s), s)\,ds
#   \approx x_i + \frac h2\Big(d(x_i,\sigma_i) + d\big(x(\sigma_{i+1}),\sigma_{i+1}\big)\Big)$$
#
# by the trapezoid rule, whose error is $O(h^3)$. The unknown end point is replaced by Euler's prediction
# $x' = x_i + h\,d(x_i,\sigma_i)$; its $O(h^2)$ error enters multiplied by $h/2$, so it stays $O(h^3)$ [E36]:
#
# $$x' = x_i + h\,d_i,\qquad d'_i = \frac{x' - D(x';\sigma_{i+1})}{\sigma_{i+1}},\qquad
#   x_{i+1} = x_i + \frac h2\,(d_i + d'_i).$$
#
# A second-order method for two calls per step. The last step goes to $\sigma_N = 0$, where $d'$ would divide
# by zero ($x' - D(x'; 0)$ is $0/0$). So the last step is Euler's alone, and it lands on the denoiser's output:
# $x_i - \sigma_i\,(x_i - D(x_i;\sigma_i))/\sigma_i = D(x_i;\sigma_i)$. $N$ steps cost $2N - 1$ calls.
# This is `edm_heun_step` (exercise 10.2). One step from $\sigma = 1$ against a tight RK45 solution: the local
# error must fall by $2^3 = 8$ each time $h$ halves.

# %%
x_start = gmm.sample(rng, B) + 1.0 * rng.standard_normal((B, 2))
hs = [0.2, 0.1, 0.05, 0.025]
heun_errors, euler_errors = [], []
for h in hs:
    exact = ve_reference(x_start, 1.0, 1.0 - h, tol=1e-12)
    heun_errors.append(path_error(edm_heun_step(gmm.denoiser, x_start, 1.0, 1.0 - h), exact))
    euler = x_start - h * (x_start - gmm.denoiser(x_start, 1.0)) / 1.0
    euler_errors.append(path_error(euler, exact))
for h, e_heun, e_euler in zip(hs, heun_errors, euler_errors, strict=True):
    print(f"h = {h:5.3f}: Heun local error {e_heun:.2e}   Euler local error {e_euler:.2e}")
heun_local, euler_local = log_log_slope(hs, heun_errors), log_log_slope(hs, euler_errors)
print(f"local error ~ h^p: Heun p = {heun_local:.2f}, Euler p = {euler_local:.2f}")
assert abs(heun_local - 3) < 0.3 and abs(euler_local - 2) < 0.3
last = edm_heun_step(gmm.denoiser, x_start, 0.05, 0.0)
assert np.allclose(last, gmm.denoiser(x_start, 0.05), rtol=0, atol=1e-12)  # the last step lands on D(x; sigma)

# %% [markdown]
# ### Preconditioning: what the network should see and predict
#
# A network $F_\theta$ is happiest with inputs and targets of unit variance at every $\sigma$. EDM wraps it
# [E36]: $D_\theta(x;\sigma) = c_\text{skip}(\sigma)\,x + c_\text{out}(\sigma)\,F_\theta\big(c_\text{in}(\sigma)\,x;\
# c_\text{noise}(\sigma)\big)$, and derives the coefficients from data $y$ of variance $\sigma_\text{data}^2$ per
# coordinate (EDM takes $\sigma_\text{data} = 0.5$ for images in $[-1, 1]$), $x = y + \sigma n$ with $y$ and $n$
# independent:
#
# * **input**: $\mathrm{Var}(x) = \sigma_\text{data}^2 + \sigma^2$, so
#   $c_\text{in} = 1/\sqrt{\sigma^2 + \sigma_\text{data}^2}$.
# * **target**: $D_\theta = y$ asks $F_\theta = (y - c_\text{skip}x)/c_\text{out}$. Its variance is
#   $\big((1-c_\text{skip})^2\sigma_\text{data}^2 + c_\text{skip}^2\sigma^2\big)/c_\text{out}^2$; unit variance fixes
#   $c_\text{out}^2 = (1-c_\text{skip})^2\sigma_\text{data}^2 + c_\text{skip}^2\sigma^2$.
# * **skip**: $c_\text{out}$ multiplies the network's errors, so choose $c_\text{skip}$ to make it smallest:
#   $\frac{d}{dc}\big[(1-c)^2\sigma_\text{data}^2 + c^2\sigma^2\big]
#   = -2(1-c)\sigma_\text{data}^2 + 2c\sigma^2 = 0$ gives
#   $c_\text{skip} = \sigma_\text{data}^2/(\sigma^2 + \sigma_\text{data}^2)$, and putting it back,
#   $c_\text{out}^2 = \frac{\sigma^4\sigma_\text{data}^2 + \sigma_\text{data}^4\sigma^2}
#   {(\sigma^2+\sigma_\text{data}^2)^2} = \frac{\sigma^2\sigma_\text{data}^2}{\sigma^2+\sigma_\text{data}^2}$, i.e.
#   $c_\text{out} = \sigma\,\sigma_\text{data}/\sqrt{\sigma^2 + \sigma_\text{data}^2}$.
# * **noise input**: $c_\text{noise} = \frac14\ln\sigma$, an empirical choice that spreads $\sigma \in [0.002, 80]$
#   over $[-1.55, 1.10]$.
#
# At small $\sigma$, $c_\text{skip}\to 1$: the input is almost the answer and the network predicts a small
# correction (like an $\epsilon$-model); at large $\sigma$, $c_\text{skip}\to 0$, $c_\text{out}\to\sigma_\text{data}$
# and it predicts $y/\sigma_\text{data}$ itself, where an $\epsilon$-model's error would be multiplied by $\sigma$
# in $D = x - \sigma\epsilon_\theta$.

# %%
sd = 0.5
sigma_grid = np.geomspace(0.002, 80, 200)
c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma_grid, sd)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for values, name in ((c_skip, r"$c_\mathrm{skip}$"), (c_out, r"$c_\mathrm{out}$"), (c_in, r"$c_\mathrm{in}$")):
    axes[0].loglog(sigma_grid, values, label=name)
axes[0].axvline(sd, color="0.5", lw=0.8, ls=":", label=r"$\sigma = \sigma_\mathrm{data}$")
axes[0].set_xlabel(r"$\sigma$")
axes[0].set_ylabel("coefficient")
axes[0].set_title(r"EDM preconditioning, $\sigma_\mathrm{data} = 0.5$")
axes[0].legend()
assert -1.56 < c_noise[0] < -1.55 and 1.09 < c_noise[-1] < 1.10  # the range quoted above
axes[1].semilogx(sigma_grid, c_noise, label=r"$c_\mathrm{noise} = \frac{1}{4}\ln\sigma$")
axes[1].set_xlabel(r"$\sigma$")
axes[1].set_ylabel(r"$c_\mathrm{noise}$")
axes[1].set_title("what the network is told about the noise level")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The derivation used only the variance of the data, not its shape. A Monte Carlo check with our very
# non-Gaussian mixture, shifted to mean 0 and scaled to standard deviation $\sigma_\text{data}$ per
# coordinate: the input $c_\text{in}x$ and the target $(y - c_\text{skip}x)/c_\text{out}$ must have unit
# variance at every $\sigma$ (within 5 standard errors of a sample variance, estimated from the sample's
# fourth moment).

# %%
M = 20000 if FAST else 200000
mix_mean = gmm.weights @ gmm.means
mix_cov = np.einsum("k,kij->ij", gmm.weights, gmm.covariances + np.einsum("ki,kj->kij", gmm.means, gmm.means))
mix_cov -= np.outer(mix_mean, mix_mean)
y = (gmm.sample(rng, M) - mix_mean) * (sd / np.sqrt(np.diag(mix_cov)))  # mean 0, std sd per coordinate


def variance_and_se(u):
    """Per-coordinate sample variance and its standard error sqrt((m4 - var^2) / M)."""
    centred = u - u.mean(axis=0)
    var = (centred**2).mean(axis=0)
    return var, np.sqrt(((centred**2 - var) ** 2).mean(axis=0) / len(u))


for sigma in (0.002, 0.2, 1.0, 80.0):
    x_noisy = y + sigma * rng.standard_normal(y.shape)
    c_skip, c_out, c_in, _ = edm_preconditioning(sigma, sd)
    v_in, se_in = variance_and_se(c_in * x_noisy)
    v_target, se_target = variance_and_se((y - c_skip * x_noisy) / c_out)
    print(f"sigma = {sigma:6.3f}: Var(c_in x) = {np.round(v_in, 3)}, Var(target) = {np.round(v_target, 3)}")
    assert np.all(np.abs(v_in - 1) < 5 * se_in) and np.all(np.abs(v_target - 1) < 5 * se_target)

# %% [markdown]
# ## 3. DPM-Solver++ [E35]: integrate the linear part exactly
#
# Lu et al. (2022, *DPM-Solver: a fast ODE solver for diffusion probabilistic model sampling in around 10
# steps*, and *DPM-Solver++: fast solver for guided sampling*, same year) start from the same ODE and make
# one change of variable. Write $\tilde x$ again for section 2's VE sample, to tell it from the VP sample
# $x_t = \alpha_t x_0 + \sigma_t\epsilon$, and let $\lambda = -\log\sigma$; for the VP sample
# ($\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1-\bar\alpha_t}$, so $\sigma = \sigma_t/\alpha_t$) this is
# $\lambda = \log(\alpha_t/\sigma_t)$, half the log-SNR. Line by line:
#
# 1. $d\sigma = -\sigma\,d\lambda$, so section 2's ODE becomes
#    $\dfrac{d\tilde x}{d\lambda} = -\sigma\,\dfrac{\tilde x - D}{\sigma} = -\tilde x + D(\tilde x; e^{-\lambda})$:
#    a *linear* part $-\tilde x$ plus the model's part.
# 2. The linear part has the integrating factor $e^{\lambda}$:
#    $\dfrac{d}{d\lambda}\big(e^\lambda\tilde x\big) = e^\lambda\tilde x + e^\lambda(-\tilde x + D) = e^\lambda D$.
# 3. Integrate from $\lambda_s$ to $\lambda_t$ (variation of constants):
#    $e^{\lambda_t}\tilde x_t = e^{\lambda_s}\tilde x_s + \int_{\lambda_s}^{\lambda_t} e^{\lambda} D\,d\lambda$.
# 4. Back to the VP sample: $e^\lambda\tilde x = \frac{\alpha_t}{\sigma_t}\cdot\frac{x_t}{\alpha_t} = x_t/\sigma_t$,
#    and $D$ is the data prediction $\hat x_0$ (E13, E14). So
#
# $$x_t = \frac{\sigma_t}{\sigma_s}\,x_s
#   + \sigma_t\int_{\lambda_s}^{\lambda_t} e^{\lambda}\,\hat x_0(x_\lambda, \lambda)\,d\lambda .$$
#
# Nothing is approximated yet. The linear part is integrated exactly, and only the data prediction $\hat x_0$ along
# the path needs a quadrature rule; at low noise it varies slowly with $\lambda$ (it tends to the final sample).
#
# **First order.** Hold $\hat x_0$ at its value $m_s$ at the start: with $h = \lambda_t - \lambda_s$,
# $\int e^\lambda d\lambda = e^{\lambda_t}(1 - e^{-h})$ and $\sigma_t e^{\lambda_t} = \alpha_t$, so
#
# $$x_t = \frac{\sigma_t}{\sigma_s}\,x_s - \alpha_t\,(e^{-h} - 1)\,m_s .$$
#
# This is DDIM with $\eta = 0$ [E32]: $x_t = \alpha_t\hat x_0 + \sigma_t\hat\epsilon$ with
# $\hat\epsilon = (x_s - \alpha_s\hat x_0)/\sigma_s$ is
# $\frac{\sigma_t}{\sigma_s}x_s + (\alpha_t - \frac{\sigma_t\alpha_s}{\sigma_s})\hat x_0$, and
# $\frac{\sigma_t\alpha_s}{\sigma_s} = \alpha_t e^{\lambda_s - \lambda_t} = \alpha_t e^{-h}$. The same numbers, step for
# step:

# %%
z = np.random.default_rng(1).standard_normal((B, 2))  # the x_T of every comparison below
dpm1 = DPMSolverMultistepSampler(schedule, solver_order=1, final_sigmas_type="sigma_min")
dpm1.set_timesteps(25)
ddim = DDIMSampler(schedule, clip_sample=False, set_alpha_to_one=False)  # alpha_bar_1 after the last step: sigma_1
ddim.set_timesteps(timesteps=dpm1.timesteps)
run_dpm1 = dpm1.sample(eps_model, z.shape, rng, x_T=z, dtype=np.float64, progress=False, return_trajectory=True)
run_ddim = ddim.sample(eps_model, z.shape, rng, x_T=z, dtype=np.float64, progress=False, return_trajectory=True)
ddim_gap = float(np.abs(run_dpm1 - run_ddim).max())
print(f"25 steps: max |DPM-Solver-1 - DDIM| over the whole trajectory = {ddim_gap:.1e}")
assert ddim_gap < 1e-12

# %% [markdown]
# **Second order without extra calls: 2M.** A multistep method reuses the previous step's estimate $m_{i-1}$
# (at $\lambda_{i-1}$) with the current one $m_i$: the straight line through them,
# $\hat x_0(\lambda) \approx m_i + (\lambda - \lambda_i)\,\frac{m_i - m_{i-1}}{h_{i-1}}$, is a first-order accurate
# model of $\hat x_0$, enough for a second-order step. DPM-Solver++(2M) ("midpoint" form, Algorithm 2 of the
# paper, diffusers' default) holds $\hat x_0$ at the line's value at the middle of the step,
# $\lambda_i + h/2$:
#
# $$m_i + \frac h2\cdot\frac{m_i - m_{i-1}}{h_{i-1}} = m_i + \tfrac12 D_1,\qquad
#   D_1 = \frac{m_i - m_{i-1}}{r},\quad r = \frac{h_{i-1}}{h},$$
#
# and integrates the rest exactly, as in first order [E35]:
#
# $$x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}\,x_i - \alpha_{i+1}\,(e^{-h} - 1)\Big(m_i + \tfrac12 D_1\Big).$$
#
# (The "heun" form integrates the line itself, $\int e^\lambda(\lambda - \lambda_i)\,d\lambda$ in closed form;
# the two differ by $O(h^3)$ per step, both are second order.) The very first step has no $m_{i-1}$ and is
# first order. This is `dpm_solver_2m_update` (exercise 10.1), which `DPMSolverMultistepSampler` calls. A check
# of the sentence above, independent of the algebra: the update must be the exact flow of the ODE with $\hat x_0$
# frozen at the line's midpoint value. In $\lambda$ and VP coordinates that ODE is
# $dx/d\lambda = -\alpha^2 x + \alpha\,\hat x_0$, with $\alpha^2 = 1/(1 + e^{-2\lambda})$ (from step 1, with
# $\tilde x = x/\alpha$ and $d\log\alpha/d\lambda = \sigma_t^2$); we integrate it with RK45.

# %%
ve_levels = (1.5, 0.8, 0.3)  # sigma at t_{i-1}, t_i, t_{i+1}
lambdas = tuple(-math.log(s) for s in ve_levels)
alphas, sigmas_vp = zip(*(vp_coefficients(s) for s in ve_levels), strict=True)
x_i = (gmm.sample(rng, B) + ve_levels[1] * rng.standard_normal((B, 2))) * alphas[1]  # a VP sample at t_i
m0 = gmm.denoiser(x_i / alphas[1], ve_levels[1])  # the x0 estimate at t_i
m1 = gmm.denoiser(x_i / alphas[1], ve_levels[0])  # and one at t_{i-1} (any array would do for this check)
x_2m = dpm_solver_2m_update(x_i, m0, m1, lambdas, alphas, sigmas_vp)
frozen = m0 + 0.5 * (lambdas[2] - lambdas[1]) * (m0 - m1) / (lambdas[1] - lambdas[0])  # the line at the middle


def frozen_flow(lam, x):
    alpha2 = 1.0 / (1.0 + math.exp(-2.0 * lam))
    return -alpha2 * x + math.sqrt(alpha2) * frozen


x_flow = solve_ivp_rk45(frozen_flow, lambdas[1], lambdas[2], x_i, rtol=1e-12, atol=1e-12).y
midpoint_gap = float(np.abs(x_2m - x_flow).max())
print(f"h = {lambdas[2] - lambdas[1]:.3f}, r = {(lambdas[1] - lambdas[0]) / (lambdas[2] - lambdas[1]):.3f}: "
      f"max |2M update - exact flow with x0 frozen at the midpoint| = {midpoint_gap:.1e}")
assert midpoint_gap < 1e-9

# %% [markdown]
# **Lower order at the end.** With diffusers' default spacing (timesteps evenly spaced in $t$), the last step
# runs from $t \approx T/N$ down to $t = 1$. In $\lambda = -\log\sigma$ that is a long way: $\sigma$ falls from
# about 0.34 at $t = 101$ to $\sigma_1 = 0.01$, so for $N = 10$ the last step is several times longer than
# the one before it ($r \ll 1$, printed below). The line through the last two estimates is then extrapolated
# over $h/2 \gg h_{i-1}$, and $D_1 = (m_i - m_{i-1})/r$ amplifies whatever separates the two estimates.
# diffusers' `lower_order_final` falls back to first order for the last step (and at most second order for
# the one before, with 3M) when $N < 15$. Its effect at $N = 10$, against the tight RK45 solution at $\sigma_1$:

# %%
sigma_T_ve = math.sqrt(SIGMA_MAX**2 + 1)  # z as a VE sample at sigma_T: x = x_T / sqrt(alpha_bar_T)
reference_end = ve_reference(z * sigma_T_ve, SIGMA_MAX, SIGMA_MIN)  # the exact ODE solution at sigma_1
alpha_end = vp_coefficients(SIGMA_MIN)[0]
lower_order_errors = {}
for lower in (True, False):
    sampler = DPMSolverMultistepSampler(schedule, final_sigmas_type="sigma_min", lower_order_final=lower)
    x = sampler.sample(eps_model, z.shape, rng, num_inference_steps=10, x_T=z, dtype=np.float64, progress=False)
    lower_order_errors[lower] = path_error(x / alpha_end, reference_end)
lam_last = -np.log(sampler.sigmas[-3:])
h_last, h_before = lam_last[2] - lam_last[1], lam_last[1] - lam_last[0]
print(f"10 steps: last step h = {h_last:.2f} in lambda, r = h_prev / h = {h_before / h_last:.2f}")
print(f"error at sigma_1: last step first order {lower_order_errors[True]:.3f}, "
      f"second order {lower_order_errors[False]:.3f}")
assert sampler.timesteps[-1] == 101 and abs(table[101] - 0.34) < 0.01  # the numbers quoted above
assert h_before / h_last < 0.5 and lower_order_errors[True] < lower_order_errors[False]

# %% [markdown]
# ## 4. Error against steps, for every sampler, from the same $x_T$
#
# Now the experiment of section 1. The same $B$ points $x_T = z$ are carried from $\sigma_T$ to $\sigma_1$ by
# every sampler, and compared with the tight RK45 solution of the same ODE (above: `reference_end`); the
# error is the mean distance to it. The samplers, each configured as in diffusers:
#
# * **DDIM** ($\eta = 0$, E32) and **DPM-Solver++(2M)**, **(3M)** on the VP sample, at integer timesteps evenly
#   spaced in $t$, one call per step;
# * **Euler** and **Heun** in $\sigma$ (E36's ODE; diffusers' `EulerDiscreteScheduler` and `HeunDiscreteScheduler`),
#   the $\sigma$ table interpolated at $t$ evenly spaced, one and two calls per step;
# * **EDM-Heun**: Heun on Karras' levels with $\rho = 7$, here between $\sigma_1$ and $\sigma_T$ so that it
#   solves the same problem, calling the denoiser directly.
#
# NFE counts the calls that bring the sample to $\sigma_1$ (a Heun run then takes one more, Euler, call to reach
# $\sigma = 0$). The slopes are fitted over the last doublings, NFE 128 to 512, where the asymptotic regime of
# section 1 has set in.

# %%
NFES = [8, 16, 32, 64, 128, 256, 512]
FIT_FROM = 128
x_T_ve = z * sigma_T_ve


def dpm_run(order, nfe):
    sampler = DPMSolverMultistepSampler(schedule, solver_order=order, final_sigmas_type="sigma_min")
    sampler.set_timesteps(nfe)
    return sampler


def run_sampler(name, nfe):
    """The sample at sigma_1 (VE scale) after `nfe` model calls."""
    if name == "DDIM":
        sampler = DDIMSampler(schedule, clip_sample=False, set_alpha_to_one=False)
        sampler.set_timesteps(timesteps=dpm_run(2, nfe).timesteps)  # the same integer timesteps as DPM-Solver
        return sampler.sample(eps_model, z.shape, rng, x_T=z, dtype=np.float64, progress=False) / alpha_end
    if name.startswith("DPM"):
        sampler = dpm_run(int(name[-3]), nfe)  # the 2 of "(2M)"
        return sampler.sample(eps_model, z.shape, rng, x_T=z, dtype=np.float64, progress=False) / alpha_end
    if name == "EDM-Heun":
        run = EDMHeunSampler(nfe // 2 + 1, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        return run.sample(gmm.denoiser, z.shape, rng, x_T=x_T_ve, return_trajectory=True)[-2]
    sampler = EulerSampler(schedule) if name == "Euler" else HeunSampler(schedule)
    sampler.set_timesteps(nfe + 1 if name == "Euler" else nfe // 2 + 1)  # N steps: N - 1 or 2 (N - 1) calls to sigma_1
    trajectory = sampler.sample(eps_model, z.shape, rng, x_T=x_T_ve, dtype=np.float64, progress=False,
                                return_trajectory=True)
    assert math.isclose(sampler.sigmas[-2], SIGMA_MIN, rel_tol=1e-12)
    return trajectory[-2]  # before the last, Euler, step to sigma = 0


NAMES = ["DDIM", "Euler", "Heun", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "EDM-Heun"]
COLORS = dict(zip(NAMES, ["C0", "C1", "C2", "C3", "C4", "C5"], strict=True))
errors = {name: np.array([path_error(run_sampler(name, n), reference_end) for n in NFES]) for name in NAMES}
fit = np.array(NFES) >= FIT_FROM
slopes = {name: log_log_slope(np.array(NFES)[fit], e[fit]) for name, e in errors.items()}

STYLES = {"DDIM": "o-", "Euler": "x--", "Heun": "o-", "DPM-Solver++(2M)": "s-", "DPM-Solver++(3M)": "^-",
          "EDM-Heun": "D-"}
fig, ax = plt.subplots(figsize=(8.5, 5.8))
ax.axvspan(FIT_FROM * 0.9, NFES[-1] * 1.1, color="0.93", label="range of the fitted slopes")
for name in NAMES:
    ax.loglog(NFES, errors[name], STYLES[name], color=COLORS[name], ms=5,
              label=f"{name} (slope {slopes[name]:.2f})")
nfe_line = np.array([NFES[0], NFES[-1]], dtype=float)
for p, anchor, style in ((1, errors["Euler"][-1], ":"), (2, errors["Heun"][-1], "-.")):
    ax.loglog(nfe_line, 0.4 * anchor * (nfe_line / NFES[-1]) ** -p, style, color="k", lw=1,
              label=f"reference slope $-{p}$")
ax.set_xlabel("model evaluations to reach $\\sigma_1$ (NFE)")
ax.set_ylabel("mean distance to the exact ODE solution")
ax.set_title("Error against cost, same $x_T$, exact model")
ax.legend(fontsize=8, loc="lower left")
plt.tight_layout()
plt.show()
print(" NFE:" + "".join(f"{n:>9d}" for n in NFES) + "   slope")
for name in NAMES:
    print(f"{name[:16]:>16}:" + "".join(f"{e:9.1e}" for e in errors[name]) + f"   {slopes[name]:.2f}")
for name, order in (("DDIM", 1), ("Euler", 1), ("Heun", 2), ("DPM-Solver++(2M)", 2), ("EDM-Heun", 2)):
    assert abs(slopes[name] + order) < 0.25, (name, slopes[name])
assert np.allclose(errors["DDIM"], errors["Euler"], rtol=0.1)  # two first-order methods, nearly one curve
at_16 = NFES.index(16)
first_order_at_16 = min(errors["DDIM"][at_16], errors["Euler"][at_16])
assert first_order_at_16 == min(e[at_16] for e in errors.values())  # at 16 calls, first order is best here
for name in ("DPM-Solver++(2M)", "DPM-Solver++(3M)"):
    assert errors[name][at_16] > errors[name][0]  # worse at 16 steps than at 8: lower_order_final stops at 15
three_m = errors["DPM-Solver++(3M)"]
assert three_m[at_16] == max(e[at_16] for e in errors.values()) and three_m[-1] == min(e[-1] for e in errors.values())
assert slopes["DPM-Solver++(3M)"] < slopes["DPM-Solver++(2M)"]

# %% [markdown]
# What the plot says:
#
# * Each method has its order, once $N$ is large: slopes close to $-1$ for DDIM and Euler, $-2$ for Heun,
#   EDM-Heun and DPM-Solver++(2M) (the fitted values are in the legend and the table). DDIM and Euler, both
#   first order, lie almost on one curve: on this problem DDIM's exact treatment of the linear part buys little.
# * At few calls the order is not the whole story. At NFE 16 the first-order methods have the smallest errors;
#   the second-order curves reach their slope only further right. Their constants, and the grid, matter as much
#   as $p$ there.
# * The DPM-Solver++ curves are *worse* at 16 steps than at 8: below 15 steps `lower_order_final` takes the last
#   steps at lower order (section 3); from 15 on, the last long step is taken at full order.
# * DPM-Solver++(3M) fits a quadratic through three estimates. Here it is the worst method at 16 steps (its
#   extrapolation over the long, uneven last steps amplifies errors) and the best at 512, with a slope steeper
#   than 2M's; we read no order off it, as the curve is still bending over this range. (Its weight of the quadratic
#   term is half the one that would integrate a quadratic exactly, a detail of diffusers' and the authors' code that
#   minidiff keeps for parity.)
#
# ## 5. Side by side: what the samples look like
#
# Distances to the exact ODE solution are the solver's view. The user's view is the distribution of the samples.
# From the same noise $z$ (scaled to each sampler's own starting noise level), with the exact model:
# DDPM's ancestral sampler (E16, many steps), DDIM with 50 steps, DPM-Solver++(2M) with 20, EDM's Heun
# sampler with its own defaults ($N = 18$ Karras levels from $\sigma = 80$ to $0.002$, 35 calls), and Euler
# ancestral (the stochastic sampler in $\sigma$; diffusers' `EulerAncestralDiscreteScheduler`) with 50. Each panel
# is compared with fresh samples of the mixture: the mean, the variances and the mixture weights, estimated
# as the average responsibility $\frac1N\sum_i p(k\mid x_i)$ (whose expectation under the data is exactly $w_k$).

# %%
z_big = np.random.default_rng(2).standard_normal((N, 2))
ddpm_steps = 100 if FAST else 1000
sample_runs = {
    f"DDPM, {ddpm_steps} steps": lambda: DDPMSampler(schedule, clip_sample=False).sample(
        eps_model, z_big.shape, np.random.default_rng(3), num_inference_steps=ddpm_steps, x_T=z_big,
        dtype=np.float64, progress=False),
    "DDIM, 50 steps": lambda: DDIMSampler(schedule, clip_sample=False).sample(
        eps_model, z_big.shape, rng, num_inference_steps=50, x_T=z_big, dtype=np.float64, progress=False),
    "DPM-Solver++(2M), 20 steps": lambda: DPMSolverMultistepSampler(schedule).sample(
        eps_model, z_big.shape, rng, num_inference_steps=20, x_T=z_big, dtype=np.float64, progress=False),
    "EDM Heun, 18 levels (35 NFE)": lambda: EDMHeunSampler(18).sample(gmm.denoiser, z_big.shape, rng, x_T=80.0 * z_big),
    "Euler ancestral, 50 steps": lambda: EulerAncestralSampler(schedule).sample(
        eps_model, z_big.shape, np.random.default_rng(4), num_inference_steps=50, x_T=z_big * sigma_T_ve,
        dtype=np.float64, progress=False),
}
samples = {name: run() for name, run in sample_runs.items()}
fresh = gmm.sample(np.random.default_rng(5), N)

fig, axes = plt.subplots(2, 3, figsize=(13, 8.8))
for ax, (name, x) in zip(axes.ravel(), [("fresh samples of the mixture", fresh), *samples.items()], strict=True):
    draw_density(ax)
    ax.scatter(*x[:2000].T, s=2, alpha=0.5, color="C0" if name.startswith("fresh") else "C3")
    ax.set_title(name, fontsize=10)
plt.tight_layout()
plt.show()


def summary(x):
    return x.mean(axis=0), x.var(axis=0), gmm.responsibilities(x).mean(axis=0), gmm.log_prob(x)


fresh_mean, fresh_var, fresh_weights, fresh_logp = summary(fresh)
# Two independent samples of N: the standard error of a difference of means is sqrt(2 var / N); of average
# responsibilities at most sqrt(2 w (1 - w) / N) (a responsibility lies in [0, 1] with mean w).
se_mean = np.sqrt(2 * fresh_var / N)
se_weights = np.sqrt(2 * gmm.weights * (1 - gmm.weights) / N)
variance_ratios, logp_gaps = {}, {}
print(f"{'':>30}  {'mean':>16}  {'var / data var':>15}  {'weights':>19}  mean log p(x)")
print(f"{'fresh samples':>30}  {np.array2string(fresh_mean, precision=3):>16}  {'':>15}  "
      f"{np.array2string(fresh_weights, precision=3):>19}  {fresh_logp.mean():.3f}")
for name, x in samples.items():
    mean, var, weights, logp = summary(x)
    variance_ratios[name] = var / fresh_var
    logp_gaps[name] = (logp.mean() - fresh_logp.mean()) / math.sqrt((logp.var() + fresh_logp.var()) / N)
    print(f"{name:>30}  {np.array2string(mean, precision=3):>16}  {np.array2string(var / fresh_var, precision=3):>15}"
          f"  {np.array2string(weights, precision=3):>19}  {logp.mean():.3f} ({logp_gaps[name]:+.1f} s.e.)")
    assert np.all(np.abs(mean - fresh_mean) < 5 * se_mean), name
    assert np.all(np.abs(weights - fresh_weights) < 5 * se_weights), name
# The variance of a variance estimate, from the fourth moment of the fresh sample; two samples: sqrt(2) of it.
se_var_ratio = np.sqrt(2 * ((fresh - fresh_mean) ** 4).mean(axis=0) / fresh_var**2 / N)
ddpm_name = next(iter(samples))
assert np.all(np.abs(variance_ratios[ddpm_name] - 1) < 5 * se_var_ratio)
assert all(np.all(np.abs(r - 1) < 0.1 + 5 * se_var_ratio) for r in variance_ratios.values())
assert logp_gaps["DPM-Solver++(2M), 20 steps"] > 5 and logp_gaps["Euler ancestral, 50 steps"] > 5
# DDPM's row depends on its chain: 1000 steps (full mode) match the data, 100 (fast mode) pack the samples too
assert abs(logp_gaps[ddpm_name]) < 5 if ddpm_steps == 1000 else logp_gaps[ddpm_name] > 5

# %% [markdown]
# Every sampler puts the right mass on each component and the right mean (all within 5 standard errors of the
# fresh samples), and DDPM also matches the spread. The variances of the few-step samplers are within 10% here
# (asserted, with the sampling noise added), but the variance mixes the spread *within* the components with the
# distances *between* them. The mean log-density $\frac1N\sum_i\log p(x_i)$ sees the first: samples packed too
# tightly around the modes score higher than the data, samples spread too wide lower (the last column, with the
# gap to the data in standard errors). DPM-Solver++(2M) with 20 steps and Euler ancestral with 50 both pack their
# samples, by more than 5 standard errors (compare the DPM-Solver++ panel with the data's). DDPM's row depends on
# its chain length: with 1000 steps its log-density matches the data's, with the 100 steps of fast mode it packs
# the samples too. For Euler ancestral the packing is expected: each step draws from the posterior given the
# current estimate $\hat x_0$ and so forgets $\mathrm{Var}(x_0\mid x_t)$ (chapter 03), an error that falls only as
# $1/N$. For the deterministic solvers it is their discretization error, which section 4 measured point by point.
#
# ## 6. Flow matching and rectified flow [E38]
#
# Flow matching (Lipman et al. 2023, *Flow matching for generative modeling*) and rectified flow (Liu, Gong &
# Liu 2023, *Flow straight and fast*) keep the idea of an ODE from noise to data but choose the simplest path.
# **The convention used here** (E38; SD3 and diffusers): time $t \in [0, 1]$, $t = 0$ is the data, $t = 1$ the
# noise,
#
# $$x_t = (1 - t)\,x_0 + t\,\epsilon,\qquad v = \frac{dx_t}{dt} = \epsilon - x_0 .$$
#
# (Rectified flow's paper and much flow-matching code run time the other way, $x_s = s\,x_0 + (1-s)\,\epsilon$
# with velocity $x_0 - \epsilon$; it is the same path with $s = 1 - t$.) Given $(x_0, \epsilon)$ the path is a
# straight line traversed at constant speed. A network $v_\theta(x_t, t)$ is trained by least squares,
# $\min\mathbb E\,\lVert v_\theta(x_t, t) - (\epsilon - x_0)\rVert^2$, whose minimizer is the conditional mean
# $v^*(x, t) = \mathbb E[\epsilon - x_0\mid x_t = x]$, and one samples by integrating $dx/dt = v^*(x, t)$ from
# $t = 1$ to $0$.
#
# **The exact velocity of our mixture.** $x_t = (1-t)(x_0 + \sigma\epsilon)$ with $\sigma = t/(1-t)$: the flow
# sample is a VE sample scaled by $1 - t$, so $\mathbb E[x_0\mid x_t] = D\big(x_t/(1-t);\,t/(1-t)\big)$. From
# $\epsilon = (x_t - (1-t)x_0)/t$,
#
# $$v^*(x, t) = \mathbb E[\epsilon\mid x] - \mathbb E[x_0\mid x] = \frac{x - (1-t)\,\hat x_0}{t} - \hat x_0
#   = \frac{x - \hat x_0}{t},\qquad \hat x_0 = D\big(x/(1-t);\ t/(1-t)\big),$$
#
# the same denoiser again: a flow model and a diffusion model trained on the same data differ only by the
# path's coordinates. (And the ODE is the same too: $\tilde x = x/(1-t)$ and $\sigma = t/(1-t)$ turn
# $dx/dt = (x - \hat x_0)/t$ into section 2's $d\tilde x/d\sigma = (\tilde x - D)/\sigma$.)

# %%
x_check = flow_interpolant(gmm.sample(rng, 500), rng.standard_normal((500, 2)), 0.4)
t_check = 0.4
via_denoiser = (x_check - gmm.denoiser(x_check / (1 - t_check), t_check / (1 - t_check))) / t_check
velocity_gap = float(np.abs(gmm.velocity(x_check, t_check) - via_denoiser).max())
print(f"max |v*(x, t) - (x - D(x / (1 - t); t / (1 - t))) / t| = {velocity_gap:.1e}")
assert velocity_gap < 1e-12

# %% [markdown]
# **Straight conditional paths, bent marginal paths.** Training regresses onto straight lines, but the ODE
# follows their *average* $v^*$, and an average of straight lines need not be straight. Below, left: the
# conditional paths of E3 (VP: $\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon$, an arc, since the two
# weights have squares summing to 1) and of E38 (a segment) for the same pairs $(\epsilon, x_0)$. Right: the ODE
# paths from the same noise $z$: VP probability flow (DDIM with 500 steps) and the flow ODE (Euler with 1000
# steps, exact velocity). We also solve both ODEs tightly with RK45 and compare where they end.

# %%
n_pairs, n_paths = 6, 25
pair_x0, pair_eps = gmm.sample(rng, n_pairs), rng.standard_normal((n_pairs, 2))
s_grid = np.linspace(0, 1, 100)[:, None, None]  # 0 = data, 1 = noise
ab_grid = np.interp(s_grid, np.linspace(0, 1, T + 1), schedule.alpha_bars)  # alpha_bar along the VP path
vp_pairs = np.sqrt(ab_grid) * pair_x0 + np.sqrt(1 - ab_grid) * pair_eps
flow_pairs = (1 - s_grid) * pair_x0 + s_grid * pair_eps
vp_paths = DDIMSampler(schedule, clip_sample=False).sample(
    eps_model, z.shape, rng, num_inference_steps=500, x_T=z, dtype=np.float64, progress=False, return_trajectory=True)
flow_euler = FlowMatchEulerSampler()
flow_euler.set_timesteps(timesteps=np.linspace(1, 0, 1001)[:-1])
flow_paths = flow_euler.sample(gmm.velocity, z.shape, rng, x_T=z, dtype=np.float64, progress=False,
                               return_trajectory=True)


def length_over_chord(paths):
    """Per path: its length divided by the distance between its ends (1 for a straight path)."""
    length = np.sqrt((np.diff(paths, axis=0) ** 2).sum(axis=-1)).sum(axis=0)
    return length / np.sqrt(((paths[-1] - paths[0]) ** 2).sum(axis=-1))


fig, axes = plt.subplots(1, 2, figsize=(12, 5.8))
for k in range(n_pairs):
    axes[0].plot(*vp_pairs[:, k].T, color="C0", lw=1.2, label="VP path (E3)" if k == 0 else None)
    axes[0].plot(*flow_pairs[:, k].T, color="C3", lw=1.2, label="flow path (E38)" if k == 0 else None)
axes[0].scatter(*pair_eps.T, s=30, marker="x", color="k", zorder=3, label=r"$\epsilon$")
axes[0].scatter(*pair_x0.T, s=14, color="k", zorder=3, label="$x_0$")
axes[0].set_title(r"conditional paths: given $(\epsilon, x_0)$")
for k in range(n_paths):
    axes[1].plot(*vp_paths[:, k].T, color="C0", lw=0.9, label="VP probability flow" if k == 0 else None)
    axes[1].plot(*flow_paths[:, k].T, color="C3", lw=0.9, label="flow ODE" if k == 0 else None)
axes[1].scatter(*z[:n_paths].T, s=30, marker="x", color="k", zorder=3, label="start $z$")
axes[1].set_title("marginal ODE paths from the same noise, exact models")
for ax in axes:
    draw_density(ax)
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()
ratio_vp, ratio_flow = np.median(length_over_chord(vp_paths)), np.median(length_over_chord(flow_paths))
flow_reference = solve_ivp_rk45(lambda t, x: gmm.velocity(x, t), 1.0, 0.0, z, rtol=1e-10, atol=1e-10).y
end_gap = path_error(flow_reference, reference_end)
print(f"length / chord, median over {B} paths: VP {ratio_vp:.3f}, flow {ratio_flow:.3f}")
print(f"tight solutions: mean distance between the flow ODE's end (t = 0) and the VP one's (sigma_1): {end_gap:.4f}")
assert ratio_flow > max(ratio_vp, 1.1)  # the marginal flow paths are not straight, nor straighter than VP's here
assert end_gap < 0.01  # both ODEs carry z to (nearly) the same point of the data

# %% [markdown]
# The flow's marginal paths first head for the data's mean (at $t \approx 1$ the best guess of $x_0$ is the mean,
# so $v^* \approx x - \mathbb E x_0$), then turn towards their component once the noise is low enough to tell the
# components apart: by length over chord they are *less* straight than the VP ones here. Yet the two ODEs
# transport the noise to nearly the same data point (the tight solutions printed above; the small gap is the VP
# chain starting at $\sigma_T \approx 157$ instead of infinite noise and stopping at $\sigma_1$): they are the same
# ODE in other coordinates. Straightening the paths is what rectified flow's *reflow* does: retrain on the
# pairs $(z, x_0)$ the ODE produces, so that the new conditional paths no longer cross.
#
# **Euler and Heun on the flow ODE.** The flow samplers (diffusers' `FlowMatchEulerDiscreteScheduler` and
# `FlowMatchHeunDiscreteScheduler`) on a uniform grid in $t$, against the tight RK45 solution from $z$ at $t = 1$
# to $t = 0$, beside the VP solvers of section 4 (DDIM, Heun) from the same $z$:

# %%
flow_errors = {}
for name, cls in (("flow Euler", FlowMatchEulerSampler), ("flow Heun", FlowMatchHeunSampler)):
    rows = []
    for nfe in NFES:
        steps = nfe if cls is FlowMatchEulerSampler else nfe // 2  # Heun: 2 n - 1 calls, the last step Euler
        sampler = cls()
        sampler.set_timesteps(timesteps=np.linspace(1, 0, steps + 1)[:-1])
        x = sampler.sample(gmm.velocity, z.shape, rng, x_T=z, dtype=np.float64, progress=False)
        rows.append((steps if cls is FlowMatchEulerSampler else 2 * steps - 1, path_error(x, flow_reference)))
    flow_errors[name] = np.array(rows)
flow_slopes = {name: log_log_slope(r[fit, 0], r[fit, 1]) for name, r in flow_errors.items()}

fig, ax = plt.subplots(figsize=(7.5, 5))
for name, color in (("DDIM", COLORS["DDIM"]), ("Heun", COLORS["Heun"])):
    ax.loglog(NFES, errors[name], "o--", color=color, alpha=0.6, label=f"VP {name} (section 4)")
for name, color in (("flow Euler", "C1"), ("flow Heun", "C3")):
    rows = flow_errors[name]
    ax.loglog(rows[:, 0], rows[:, 1], "s-", color=color, label=f"{name} (slope {flow_slopes[name]:.2f})")
ax.set_xlabel("model evaluations (NFE)")
ax.set_ylabel("mean distance to the exact ODE solution")
ax.set_title("Flow ODE against VP probability flow, same noise")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for name, rows in flow_errors.items():
    print(f"{name:>10}: " + "  ".join(f"{int(n)}: {e:.1e}" for n, e in rows) + f"   slope {flow_slopes[name]:.2f}")
assert abs(flow_slopes["flow Euler"] + 1) < 0.25 and abs(flow_slopes["flow Heun"] + 2) < 0.25
assert np.all(flow_errors["flow Euler"][:, 1] < errors["DDIM"])
assert np.all(flow_errors["flow Heun"][:, 1] < errors["Heun"])

# %% [markdown]
# At equal cost (flow Heun even uses one call fewer) the flow ODE is integrated more accurately than the VP
# probability flow on the linear schedule's grid, although its paths are not straighter. For Euler the whole
# difference is the grid. With $\tilde x = x/(1-t)$ and $\sigma = t/(1-t)$, one Euler step of the flow ODE from
# $t$ to $t'$ is exactly one Euler step of section 2's ODE from $\sigma$ to $\sigma'$: expand
# $\tilde x + (\sigma' - \sigma)(\tilde x - D)/\sigma$ with $\sigma' - \sigma = (t'-t)/((1-t)(1-t'))$ and
# $(\tilde x - D)/\sigma = (x - (1-t)D)/t$, multiply by $1 - t'$, and the terms regroup into
# $x + (t'-t)(x - D)/t$. And a uniform grid in $t$ puts half its levels below $\sigma = t/(1-t) = 1$, where the
# paths bend; the linear schedule's uniform $t$ puts 5 of 18 there (section 2). (Heun's average of two slopes
# depends on the variable it averages over, so for Heun the coordinates matter as well.) Both facts, numerically:
# the equivalence over 20 Euler steps from $t = 0.95$, and the count over section 2's range of $\sigma$:

# %%
t_grid = np.append(np.linspace(0.95, 0.0, 21)[:-1], 0.0)  # 20 flow steps down to t = 0
x_flow_start = flow_interpolant(gmm.sample(rng, B), rng.standard_normal((B, 2)), 0.95)
flow_run = FlowMatchEulerSampler()
flow_run.set_timesteps(timesteps=t_grid[:-1])
x_flow_end = flow_run.sample(gmm.velocity, x_flow_start.shape, rng, x_T=x_flow_start, dtype=np.float64,
                             progress=False)
x_ve = x_flow_start / (1 - t_grid[0])
for t_now, t_next in itertools.pairwise(t_grid):
    sigma_now, sigma_next = t_now / (1 - t_now), t_next / (1 - t_next)
    x_ve = euler_step(x_ve, gmm.denoiser(x_ve, sigma_now), sigma_now, sigma_next)
euler_gap = float(np.abs(x_ve - x_flow_end).max())  # at t = sigma = 0 the two coordinates coincide
print(f"20 Euler steps: max |flow ODE in t - VE ODE in sigma = t / (1 - t)| = {euler_gap:.1e}")
assert euler_gap < 1e-12
t_levels = np.linspace(SIGMA_MAX / (1 + SIGMA_MAX), SIGMA_MIN / (1 + SIGMA_MIN), n_levels)  # section 2's range
flow_below_one = int(np.sum(t_levels / (1 - t_levels) < 1.0))
print(f"{n_levels} levels evenly spaced in the flow's t: {flow_below_one} below sigma = 1 "
      f"(linear betas, evenly in t: {below_one['linear betas, evenly in t']})")
assert flow_below_one == n_levels // 2

# %% [markdown]
# **Training a small flow model.** Finally the real thing: a small MLP $v_\theta(x, t)$ (inputs $x$, $t$ and a few
# Fourier features of $t$) trained by flow matching with minidiff's autodiff on fresh mixture samples, then
# sampled with 20 Heun steps (39 calls).

# %%
net_rng = np.random.default_rng(6)
hidden = 64
flow_net = nn.Sequential(nn.Linear(7, hidden, rng=net_rng, dtype=np.float64), nn.SiLU(),
                         nn.Linear(hidden, hidden, rng=net_rng, dtype=np.float64), nn.SiLU(),
                         nn.Linear(hidden, hidden, rng=net_rng, dtype=np.float64), nn.SiLU(),
                         nn.Linear(hidden, 2, rng=net_rng, dtype=np.float64))


def flow_features(x, t):
    """(x, t, sin / cos of pi t and 2 pi t): (B, 7)."""
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],))[:, None]
    waves = [f(k * np.pi * t) for k in (1, 2) for f in (np.sin, np.cos)]
    return np.concatenate([x, t, *waves], axis=1)


def flow_model(x, t):
    return flow_net(Tensor(flow_features(x, t)))


def learned_velocity(x, t):
    with md.no_grad():
        return flow_model(x, t).data


train_steps = 200 if FAST else 3000
optimizer = Adam(list(flow_net.parameters()), lr=1e-2)
lr_schedule = LRScheduler(optimizer, CosineDecay(train_steps))
losses = []
with threadpool_limits(1):  # small matrices train several times faster on one BLAS thread
    for _ in range(train_steps):
        loss = flow_matching_loss(flow_model, gmm.sample(rng, 512), rng=rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.data))

# The loss of the exact velocity is the floor no model can go below (the part of eps - x0 no function of x_t
# predicts); the learned model's excess over it, on the same fresh (x0, eps, t), measures what is left to learn.
x0_eval, eps_eval, t_eval = gmm.sample(rng, N), rng.standard_normal((N, 2)), rng.random(N)
x_eval = flow_interpolant(x0_eval, eps_eval, t_eval)
floor = float(((gmm.velocity(x_eval, t_eval) - (eps_eval - x0_eval)) ** 2).mean())
learned = float(((learned_velocity(x_eval, t_eval) - (eps_eval - x0_eval)) ** 2).mean())
relative_velocity_error = float(((learned_velocity(x_eval, t_eval) - gmm.velocity(x_eval, t_eval)) ** 2).sum()
                                / (gmm.velocity(x_eval, t_eval) ** 2).sum())
flow_samples = FlowMatchHeunSampler().sample(learned_velocity, z_big.shape, rng, num_inference_steps=20,
                                             x_T=z_big, dtype=np.float64, progress=False)
learned_weights = gmm.responsibilities(flow_samples).mean(axis=0)
print(f"{train_steps} steps: loss {learned:.4f}, exact velocity's loss {floor:.4f}; "
      f"relative squared velocity error {relative_velocity_error:.3f}")
print(f"samples: mixture weights {np.round(learned_weights, 3)} (data {gmm.weights}), mean log p "
      f"{gmm.log_prob(flow_samples).mean():.3f} (fresh samples {gmm.log_prob(fresh).mean():.3f})")
assert relative_velocity_error < 0.2
assert np.all(np.abs(learned_weights - gmm.weights) < 0.03 + 5 * se_weights)

fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
axes[0].plot(losses, lw=0.6, label="training loss (batch of 512)")
axes[0].axhline(floor, color="k", ls="--", lw=0.9, label="loss of the exact velocity")
axes[0].set_xlabel("training step")
axes[0].set_ylabel("flow-matching loss")
axes[0].set_ylim(floor - 0.2, floor + 1.0)
axes[0].set_title("Training: towards the floor, not to 0")
axes[0].legend()
draw_density(axes[1])
axes[1].scatter(*flow_samples[:2000].T, s=2, alpha=0.5, color="C3")
axes[1].set_title("samples of the learned flow, Heun, 20 steps")
plt.tight_layout()
plt.show()

# %% [markdown]
# The loss falls towards the exact velocity's loss, not to zero: $\epsilon - x_0$ is not a function of $x_t$, and
# the floor is its conditional variance. The relative error of the learned velocity and the mixture weights of its
# samples are asserted above (weights within 3% plus sampling noise); the mean log-density of the samples against
# that of fresh data (both printed) shows how much the model still blurs the components.
#
# ## 7. Side by side with diffusers
#
# minidiff's `DPMSolverMultistepSampler` is configured from diffusers' `DPMSolverMultistepScheduler` config
# (its `from_config` reads the same keys) and converts time once: diffusers' step $k = 0..T-1$ is minidiff's
# $t = k + 1$. Same model (the exact $\epsilon$-model of the mixture), same $x_T$, 20 steps, the whole trajectory
# compared. diffusers keeps its schedule in float32 and rounds the sample to float32 at each step, so the runs
# agree to float32 precision, not to float64's.

# %%
diffusers = md.optional_reference("diffusers", "the comparison with diffusers' DPMSolverMultistepScheduler")

if diffusers is not None:
    import torch
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                            beta_end=0.02)
    scheduler.set_timesteps(20)
    x = torch.from_numpy(z.copy())
    theirs = [z.copy()]
    for k in scheduler.timesteps:
        out = eps_model(x.numpy(), np.full(len(z), int(k) + 1))  # diffusers' k is minidiff's t = k + 1
        x = scheduler.step(torch.from_numpy(out), k, x).prev_sample
        theirs.append(x.numpy().astype(np.float64))
    ours_sampler = DPMSolverMultistepSampler.from_config(dict(scheduler.config))
    ours = ours_sampler.sample(eps_model, z.shape, rng, num_inference_steps=20, x_T=z, dtype=np.float64,
                               progress=False, return_trajectory=True)
    assert np.array_equal(ours_sampler.timesteps, scheduler.timesteps.numpy() + 1)
    diffusers_gap = float(np.abs(ours - np.stack(theirs)).max())
    print(f"timesteps (minidiff t = diffusers k + 1): {ours_sampler.timesteps[:5]} ...")
    print(f"max |minidiff - diffusers| over 20 steps of {len(z)} samples: {diffusers_gap:.1e}")
    assert diffusers_gap < 1e-5  # float32 rounding of O(1) numbers, carried over 20 steps

# %% [markdown]
# ## Summary
#
# * Sampling with the probability-flow ODE is numerical integration; its cost is the number of model calls
#   (NFE), and a solver of order $p$ has error $\approx C\,\mathrm{NFE}^{-p}$. The order wins in the end, the
#   constant and the grid decide at 10-50 calls.
# * EDM [E36] (Karras et al. 2022) writes the ODE in the noise level alone, $dx/d\sigma = (x - D(x;\sigma))/\sigma$,
#   steps through levels evenly spaced in $\sigma^{1/\rho}$ ($\rho = 7$), integrates with Heun's method (two calls
#   per step, Euler for the last step to $\sigma = 0$, so $2N-1$ calls), and preconditions the network so that its
#   input and target have unit variance: $c_\text{in}$, $c_\text{skip}$, $c_\text{out}$ follow from that alone.
# * DPM-Solver++ [E35] (Lu et al. 2022) changes variable to $\lambda = \log(\alpha_t/\sigma_t)$, integrates the linear
#   part exactly and approximates only the data prediction: first order is DDIM; 2M extrapolates the last two
#   estimates to the middle of the step, second order at one call per step. Long uneven last steps call for
#   lower order there.
# * Measured on one problem with the exact model, the slopes are the orders (1 for DDIM and Euler, 2 for Heun,
#   EDM-Heun and DPM-Solver++(2M)); at few calls no method dominates.
# * Flow matching [E38] (Lipman et al. 2023; Liu et al. 2023) regresses the velocity $\epsilon - x_0$ of straight
#   paths $x_t = (1-t)x_0 + t\epsilon$; the optimal velocity is $(x - \hat x_0)/t$, the same denoiser in other
#   coordinates. Its marginal paths still bend, but its uniform grid in $t$ spends the steps where they do.
#
# ## Exercises
#
# Open `minidiff/exercises/ch10.py` and fill in:
#
# * **10.1** `dpm_solver_2m_update`: one DPM-Solver++(2M) step [E35] from $(x_i, m_i, m_{i-1})$ and the
#   $\lambda$, $\alpha_t$, $\sigma_t$ at $t_{i-1}, t_i, t_{i+1}$: the step $h$, the ratio $r$, the difference $D_1$, the
#   update. `DPMSolverMultistepSampler` calls your function from its second step on.
# * **10.2** `edm_heun_step`: one step of Heun's method on $dx/d\sigma = (x - D)/\sigma$ [E36], including the Euler
#   step when $\sigma_\text{next} = 0$. `EDMHeunSampler` calls it.
#
# Grade them with `pytest --student -m ch10`. For 10.1: with $m_{i-1} = m_i$ your step must be DDIM's; it must
# equal the exact flow with $\hat x_0$ frozen at the midpoint of the line (integrated numerically); its local
# error must fall as $h^3$ and a whole run's error as $1/N^2$ on Gaussian data. For 10.2: the step to $\sigma = 0$
# must land on $D(x;\sigma)$ with one call; the corrector must use the slope at the Euler prediction; the step
# must be exact for data at one point, with local error $O(h^3)$ and global error $O(1/N^2)$ on Karras' levels.
