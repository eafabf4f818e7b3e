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
# # 09 · Editing: SDEdit, inpainting, inversion and interpolation
#
# A trained diffusion model knows how to turn noise into data. This chapter uses that skill on images we
# already have: repair a crude drawing into a realistic digit (SDEdit), fill in a missing half of an image
# (inpainting, with RePaint's resampling), and run the sampler backwards to find the noise that produces a
# given image, then edit or blend in that noise (DDIM inversion). No new training objective is needed: all
# three are new ways of *running* the samplers of chapters 03, 06 and 10.
#
# Each method is checked first on the analytic Gaussian-mixture oracle of chapter 05, where the exact answer
# is known, and then shown on the 8x8 digits with a small U-Net trained here.

# %%
import itertools
import math
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff.data import digits
from minidiff.demo import DemoConfig, network_fn, single_threaded_blas
from minidiff.diffusion import GaussianMixture, NoiseSchedule, linear_betas
from minidiff.editing import (
    forward_jump,
    inpaint,
    interpolate,
    invert_and_edit,
    repaint_schedule,
    sdedit,
    sdedit_start,
)
from minidiff.samplers import DDIMSampler, DDPMSampler, DPMSolverMultistepSampler, slerp
from minidiff.train import Trainer

FAST = md.fast_mode()
N = 600 if FAST else 4000  # points of the 2-D experiments
schedule = NoiseSchedule(linear_betas(1000))
gmm = GaussianMixture.example_2d()
eps_model = gmm.eps_model(schedule)  # the exact E[eps | x_t]: no training, no model error

# %% [markdown]
# ## 1. SDEdit [E49]: noise the input, then denoise it
#
# SDEdit (Meng et al. 2022, *SDEdit: guided image synthesis and editing with stochastic differential
# equations*) edits an input $a$ (a stroke drawing, a corrupted photo) in two moves: noise it to a level
# $t_0$ with the forward process (E3),
#
# $$x_{t_0} = \sqrt{\bar\alpha_{t_0}}\,a + \sqrt{1-\bar\alpha_{t_0}}\,\epsilon,$$
#
# then run the reverse process from $t_0$ down to the data. Why should the result look like data? The reverse
# process maps the noised data distribution $q_{t_0}$ to $p_\text{data}$; it is fed instead the law of
# $x_{t_0}$ given $a$, $\mathcal N(\sqrt{\bar\alpha}\,a, (1-\bar\alpha) I)$. Two such Gaussians, centred on
# $\sqrt{\bar\alpha}\,a$ and $\sqrt{\bar\alpha}\,b$ with the same covariance, are at
#
# $$\mathrm{KL} = \frac{\bar\alpha\,\|a - b\|^2}{2(1-\bar\alpha)} = \tfrac12\,\mathrm{SNR}(t_0)\,\|a-b\|^2 .$$
#
# $q_{t_0}$ is the mixture of these Gaussians over data points $b$, and KL is convex, so
# $\mathrm{KL}(\text{law of } x_{t_0} \,\|\, q_{t_0}) \le \tfrac12\,\mathrm{SNR}(t_0)\,\mathbb E_b\|a-b\|^2$; the
# reverse process is one fixed Markov kernel applied to both, which cannot increase a KL (the data processing
# inequality), so the same bound holds between the law of the output and $p_\text{data}$. As $t_0$ grows the
# SNR falls to 0 and the output becomes a realistic sample, but the same noise that hides the input's flaws
# hides the input: the output remembers less of it. $t_0$ sets the trade-off between realism and
# faithfulness. (At $t_0 = T$ it is ordinary sampling; at $t_0 = 0$ nothing changes.)
#
# A first check of the KL formula, by Monte Carlo of the log-density ratio:

# %%
a, b = np.array([1.5, -2.0]), np.array([-0.5, 0.5])
for t in (50, 300, 700):
    ab = float(schedule.alpha_bars[t])
    x = math.sqrt(ab) * a + math.sqrt(1 - ab) * np.random.default_rng(t).standard_normal((200_000, 2))
    log_ratio = ((x - math.sqrt(ab) * b) ** 2 - (x - math.sqrt(ab) * a) ** 2).sum(axis=1) / (2 * (1 - ab))
    closed = 0.5 * float(schedule.snr[t]) * float(np.sum((a - b) ** 2))
    se = log_ratio.std() / math.sqrt(len(log_ratio))
    print(f"t = {t:3d}: SNR = {schedule.snr[t]:8.3f}, Monte Carlo KL = {log_ratio.mean():8.4f}, "
          f"SNR |a - b|^2 / 2 = {closed:8.4f}")
    assert abs(log_ratio.mean() - closed) < 5 * se + 1e-12

# %% [markdown]
# **The knob t0.** minidiff's `sdedit(model, sampler, x0, t0, rng)` takes $t_0$ as a fraction of the chain in
# $[0, 1]$, as the SDEdit paper does (and as diffusers' img2img calls `strength`): it keeps the sampler's timesteps
# $t \le t_0 T$ and noises the input to the first of them, so that the first step gets the noise level it
# expects. `sdedit_start` does exactly that (exercise 9.2):

# %%
ddpm10 = DDPMSampler(schedule, clip_sample=False)
ddpm10.set_timesteps(10)
print("DDPM's 10 timesteps:", ddpm10.timesteps)
x_in = np.array([[1.5, -2.0]])
noise = np.random.default_rng(0).standard_normal(x_in.shape)
for t0 in (0.0, 0.35, 0.9, 1.0):
    start, begin = sdedit_start(ddpm10, x_in, t0, noise)
    kept = ddpm10.timesteps[begin:]
    print(f"t0 = {t0:4.2f}: {len(kept):2d} steps kept {kept}, x_start = {start.round(3)}")
start, begin = sdedit_start(ddpm10, x_in, 0.35, noise)
t_first = int(ddpm10.timesteps[begin])
expected = schedule.sqrt_alpha_bars[t_first] * x_in + schedule.sqrt_one_minus_alpha_bars[t_first] * noise
assert t_first == 301 and np.allclose(start, expected)

# %% [markdown]
# **SDEdit of data is data.** If the input is itself a draw of $p_\text{data}$, $x_{t_0}$ is a draw of $q_{t_0}$
# exactly and the exact reverse process returns $p_\text{data}$, whatever $t_0$. With the oracle's exact noise
# prediction, the edited points must pass a two-sample test against fresh data (means and covariances within 5
# standard errors), for a stochastic (DDPM) and a deterministic (DPM-Solver++, chapter 10) sampler alike. And
# $t_0 = 1$ must be ordinary sampling, draw for draw:

# %%
def two_sample_z(x, y):
    """The largest |difference| / standard error over the means and the covariance entries of two samples."""
    centre = np.concatenate([x, y]).mean(axis=0)

    def terms(z):
        d = z - centre
        return np.concatenate([z, d[:, :1] * d, d[:, 1:] * d[:, 1:]], axis=1)  # x, y, xx, xy, yy

    fx, fy = terms(x), terms(y)
    se = np.sqrt(fx.var(axis=0) / len(x) + fy.var(axis=0) / len(y))
    return float(np.max(np.abs(fx.mean(axis=0) - fy.mean(axis=0)) / se))


def dpm_solver(steps=25):
    sampler = DPMSolverMultistepSampler(schedule)
    sampler.set_timesteps(steps)
    return sampler


data_in = gmm.sample(np.random.default_rng(1), N)
ddpm = DDPMSampler(schedule, clip_sample=False)
ddpm.set_timesteps(1000)
for name, sampler in (("DDPM 1000", ddpm), ("DPM-Solver++ 25", dpm_solver())):
    out = sdedit(eps_model, sampler, data_in, 0.5, np.random.default_rng(2), progress=False)
    z = two_sample_z(out, gmm.sample(np.random.default_rng(3), N))
    print(f"{name:16s} SDEdit at t0 = 0.5 of {N} data points: largest two-sample z = {z:.2f}")
    assert z < 5
same = sdedit(eps_model, dpm_solver(), data_in, 1.0, np.random.default_rng(4), progress=False)
ordinary = dpm_solver().sample(eps_model, data_in.shape, np.random.default_rng(4), dtype=np.float64, progress=False)
assert np.array_equal(same, ordinary)
print("t0 = 1 is sampler.sample from the same generator, bit for bit")

# %% [markdown]
# **The trade-off on a "stroke".** Now the input is off the data: points along a straight stroke across the
# plane, which the mixture's three elongated clusters never visit. We edit it at increasing $t_0$ and measure
# realism as the mean log-density of the outputs under the data distribution, $\mathbb E\log p_\text{data}(x)$,
# and faithfulness as the mean distance to the input.

# %%
u = np.random.default_rng(5).uniform(0.0, 1.0, N)
stroke = np.stack([-2.0 + 4.0 * u, 1.8 - 3.0 * u], axis=1)  # (N, 2) along a line from (-2, 1.8) to (2, -1.2)
t0_grid = [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0]
edited = {t0: sdedit(eps_model, dpm_solver(), stroke, t0, np.random.default_rng(6), progress=False) for t0 in t0_grid}
log_p = {t0: gmm.log_prob(x) for t0, x in edited.items()}
distance = {t0: np.linalg.norm(x - stroke, axis=1) for t0, x in edited.items()}
data_log_p = gmm.log_prob(gmm.sample(np.random.default_rng(7), N))
print(" t0   mean log p_data   mean distance to the input")
for t0 in t0_grid:
    print(f"{t0:4.2f}   {log_p[t0].mean():10.3f}      {distance[t0].mean():8.3f}")
print(f"data:  {data_log_p.mean():10.3f}")
for lo, hi in itertools.pairwise([0.0, 0.1, 0.3]):  # realism and distance both rise over the first steps
    for name, stat in (("log p", log_p), ("distance", distance)):
        step = stat[hi] - stat[lo]  # paired: the same inputs and noise
        assert step.mean() > 5 * step.std() / math.sqrt(N), (name, lo, hi)
z_far = two_sample_z(edited[1.0], gmm.sample(np.random.default_rng(8), N))
print(f"t0 = 1 against fresh data: largest two-sample z = {z_far:.2f}")
assert z_far < 5 and log_p[1.0].mean() > log_p[0.3].mean()
fine = gmm.log_prob(dpm_solver(100).sample(eps_model, stroke.shape, np.random.default_rng(6), dtype=np.float64,
                                           progress=False))
print(f"ordinary sampling, mean log p_data: {log_p[1.0].mean():.3f} with 25 steps, {fine.mean():.3f} with 100")
assert abs(fine.mean() - data_log_p.mean()) < abs(log_p[1.0].mean() - data_log_p.mean())

# %%
grid = np.linspace(-2.5, 2.5, 200)
gx, gy = np.meshgrid(grid, grid)
density = np.exp(gmm.log_prob(np.stack([gx.ravel(), gy.ravel()], axis=1))).reshape(gx.shape)
shown = [0.1, 0.3, 0.6, 1.0]
fig, axes = plt.subplots(1, len(shown) + 1, figsize=(17, 3.6))
for ax, t0 in zip(axes, shown, strict=False):
    ax.contour(gx, gy, density, levels=6, colors="0.6", linewidths=0.8)
    ax.scatter(*stroke[:300].T, s=3, color="tab:red", label="input (a stroke)")
    ax.scatter(*edited[t0][:300].T, s=3, color="tab:blue", label="SDEdit output")
    ax.set_title(f"t0 = {t0}")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-2.5, 2.5)
    ax.legend(loc="lower left", fontsize=7)
ax = axes[-1]
ax.plot(t0_grid, [log_p[t].mean() for t in t0_grid], "o-", color="tab:blue", label="realism: mean log p_data")
ax.axhline(data_log_p.mean(), color="tab:blue", ls=":", label="log p_data of real data")
ax.set_xlabel("t0")
ax.set_ylabel("mean log p_data(output)")
twin = ax.twinx()
twin.plot(t0_grid, [distance[t].mean() for t in t0_grid], "s-", color="tab:red", label="faithfulness loss: distance")
twin.set_ylabel("mean distance to the input")
lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
ax.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=7)
ax.set_title("realism vs faithfulness")
plt.tight_layout()
plt.show()

# %% [markdown]
# Small $t_0$ keeps the stroke where it was, only nudged towards the clusters; $t_0$ near 1 draws points from
# the clusters with no memory of where the stroke went. The printed table shows the log-density climbing to
# the level of real data while the distance to the input grows; SDEdit's sweet spot is in between, where the
# output is realistic but still follows the input's layout. (At large $t_0$ the mean log-density even exceeds
# the data's: a 25-step ODE solver puts its samples slightly too close to the modes, the discretization error
# of chapter 10; with 100 steps it comes closer to the data's, as printed.)
#
# ## 2. A digits model to edit
#
# The rest of the chapter edits 8x8 digits with a small unconditional U-Net (chapter 07), trained here once
# with the demo's settings: $v$-prediction, cosine schedule, min-SNR-5 weighting, EMA. In fast mode the net is
# tiny and trains for a few steps only, so its pictures are noise-like; the full run trains long enough to draw
# digits.

# %%
cfg = DemoConfig()
if FAST:
    cfg = DemoConfig(block_out_channels=(8, 16), norm_num_groups=4, batch_size=16, warmup_steps=0, ema_decay=0.9)
train_steps = 4 if FAST else 800
x_train, _ = digits("train")
x_test, y_test = digits("test")
with single_threaded_blas():
    net = cfg.unet(np.random.default_rng(0))
    trainer = Trainer(net, cfg.train_config(0, None, train_steps), (x_train,),
                      tempfile.mkdtemp(prefix="minidiff_ch09_"), show_progress=False)
    result = trainer.train()
trainer.ema.copy_to(net)
unet = network_fn(net)  # model(x, t) on arrays, EMA weights
digit_schedule = NoiseSchedule.named(cfg.schedule, cfg.num_train_timesteps)
print(f"trained {result.last_step} steps in {trainer.elapsed:.0f} s ({cfg.objective}, {cfg.schedule} schedule)")


def digit_sampler(kind, steps):
    """A sampler for the digits model: its schedule and prediction type."""
    options = {"prediction_type": cfg.objective}
    if kind is DDIMSampler:
        options["clip_sample"] = False  # inversion needs the plain (invertible) DDIM step
    sampler = kind(digit_schedule, **options)
    sampler.set_timesteps(steps)
    return sampler


def show_rows(rows, row_labels, title, col_labels=None):
    """A grid of 8x8 images: one row per entry of rows, (n, 1, 8, 8) each, and the pixel-value colorbar."""
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.1 * n_cols + 2.2, 1.1 * n_rows + 0.6), squeeze=False,
                             layout="constrained")  # constrained: it makes room for the shared colorbar
    for i, j in itertools.product(range(n_rows), range(n_cols)):
        ax = axes[i, j]
        im = ax.imshow(np.clip(rows[i][j, 0], -1, 1), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_ylabel(row_labels[i], fontsize=9)
        if i == 0 and col_labels is not None:
            ax.set_title(col_labels[j], fontsize=9)
    fig.colorbar(im, ax=axes, label="pixel value", shrink=0.8)
    fig.suptitle(title)
    plt.show()


# %% [markdown]
# ## 3. SDEdit on digits
#
# Inputs: four coarse digits drawn by hand on the 8x8 grid (strokes at +1 on a background of -1, much blockier
# than the training digits) and a real test digit with one pixel in eight flipped. Each row edits all five
# from a larger $t_0$, with the same noise draw per column.

# %%
DRAWINGS = {
    "0": ["..####..", ".##..##.", ".#....#.", ".#....#.", ".#....#.", ".#....#.", ".##..##.", "..####.."],
    "1": ["....#...", "...##...", "..#.#...", "....#...", "....#...", "....#...", "....#...", "..#####."],
    "7": [".######.", "......#.", ".....#..", ".....#..", "....#...", "....#...", "...#....", "...#...."],
    "4": ["....##..", "...#.#..", "..#..#..", ".#...#..", ".######.", ".....#..", ".....#..", ".....#.."],
}
drawn = np.array([[[[1.0 if c == "#" else -1.0 for c in row] for row in rows]] for rows in DRAWINGS.values()])
corrupted = x_test[:1].copy()
flip = np.random.default_rng(8).uniform(size=corrupted.shape) < 0.125
corrupted[flip] = -corrupted[flip]
inputs = np.concatenate([drawn, corrupted]).astype(np.float32)  # (5, 1, 8, 8)
t0_digits = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
sdedit_steps = 5 if FAST else 25
rows = [sdedit(unet, digit_sampler(DPMSolverMultistepSampler, sdedit_steps), inputs, t0, np.random.default_rng(9),
               progress=False) for t0 in t0_digits]
pixel_distance = [float(np.abs(r - inputs).mean()) for r in rows]
for t0, d in zip(t0_digits, pixel_distance, strict=True):
    print(f"t0 = {t0:.1f}: mean |output - input| per pixel = {d:.3f}")
assert pixel_distance[0] == 0.0 and pixel_distance[1] < pixel_distance[-1]
show_rows(rows, [f"t0 = {t0}" for t0 in t0_digits], "SDEdit of drawn and corrupted digits (row t0 = 0: the inputs)",
          [f"drawn {k}" for k in DRAWINGS] + [f"corrupted {y_test[0]}"])

# %% [markdown]
# In the full run, small $t_0$ mostly smooths the blocky strokes (the shape is kept, the style becomes the
# training digits'), around $t_0 = 0.4$ the strokes look handwritten, and from there on the output follows the
# input more and more loosely, up to the class itself; at $t_0 = 1$ the outputs are unrelated samples. The
# printed distances to the input grow with $t_0$ accordingly.
#
# ## 4. Inpainting [E50] and RePaint
#
# Now part of the image is *known*: pixels where the mask $m$ is 1 must stay as they are, the others (mask 0)
# are to be filled so that the whole looks like data. We want a draw from the conditional law
# $p(x^u \mid x^k = y)$ of the unknown part $x^u$ given the known part $y$.
#
# **Replacement.** Run the reverse process on the whole image; after every step, to level $t'$, overwrite the
# known region by the input noised to that level, $\sqrt{\bar\alpha_{t'}}\,y + \sqrt{1-\bar\alpha_{t'}}\,\epsilon$
# (E3), and keep the generated unknown region:
#
# $$x_{t'} = m \odot \big(\sqrt{\bar\alpha_{t'}}\,y + \sqrt{1-\bar\alpha_{t'}}\,\epsilon\big) + (1-m) \odot
# x_{t'}^\text{generated}.$$
#
# The known half is right: the forward noise is independent across pixels, so $q(x_{t'}^k \mid x_0)$ depends on
# the known pixels alone and this *is* a draw of the noised known part. After the last step $t' = 0$ and
# $\bar\alpha_0 = 1$: the known region is the input exactly. (`replace_known` is this step; exercise 9.1.)
#
# **When it is exact, and when not.** The reverse step of the unknown part is $p(x^u_{t'} \mid x^u_t, x^k_t)$, with
# $x_t^k$ a fresh noisy copy of $y$. The correct step given the known part would be
# $p(x^u_{t'} \mid x^u_t, x^k_0 = y)$, conditioned on the clean $y$. If the known and unknown pixels are
# independent, $p(x) = p(x^k)\,p(x^u)$, every noised marginal factorizes, the exact reverse step of $x^u$ ignores
# $x^k$, and replacement is exact. If they depend on each other, the noisy copy tells the unknown part about
# $y$ only through $\mathrm{SNR}(t)$: at high noise almost nothing. The unknown part then commits (to a mode,
# a stroke direction) before it hears about $y$, and cannot take it back later.
#
# **RePaint** (Lugmayr et al. 2022, *RePaint: inpainting using denoising diffusion probabilistic models*) gives
# it more chances: after a step from $t$ to $t'$, go back up with the forward process (E1 composed over the
# skipped steps),
#
# $$q(x_t \mid x_{t'}) = \mathcal N\Big(\sqrt{\bar\alpha_t/\bar\alpha_{t'}}\;x_{t'},\
#   \big(1 - \bar\alpha_t/\bar\alpha_{t'}\big) I\Big),$$
#
# and redo the step, $r$ times in all (`resample=r`). The way back up noises the unknown part a little and the
# redone step sees a new noisy copy of $y$: the two halves harmonize. With jumps (`jump=j`) the run goes back
# $j$ steps at a time and redoes them all, the paper's setting being $r = j = 10$. The cost is about $r$ times
# the model calls. The visits of a run of 12 steps:

# %%
fig, ax = plt.subplots(figsize=(9, 3.2))
for r, j in ((1, 1), (3, 1), (3, 4)):
    positions = repaint_schedule(12, r, j)
    ax.plot(positions, drawstyle="steps-post", label=f"resample r = {r}, jump j = {j} ({len(positions) - 1} moves)")
ax.set_xlabel("move")
ax.set_ylabel("steps taken (0 = noise, 12 = data)")
ax.set_title("RePaint's schedule: down one step, back up by the forward process, down again")
ax.legend()
plt.tight_layout()
plt.show()
x = np.array([[0.7, -0.2]])
ratio = schedule.alpha_bars[600] / schedule.alpha_bars[500]
assert np.allclose(forward_jump(schedule, x, 500, 600, np.zeros_like(x)), math.sqrt(ratio) * x)

# %% [markdown]
# **The check on the oracle.** For a Gaussian mixture the exact conditional is again a mixture: Gaussian
# conditioning within each component, $\mu^u_k + \Sigma^{uk}_k (\Sigma^{kk}_k)^{-1}(y - \mu^k_k)$ and
# $\Sigma^{uu}_k - \Sigma^{uk}_k (\Sigma^{kk}_k)^{-1}\Sigma^{ku}_k$, with the weights reweighted by how well each
# component explains the known part, $w_k \propto w_k\,\mathcal N(y; \mu^k_k, \Sigma^{kk}_k)$.
#
# Two 2-D mixtures, $x_1$ known, $x_2$ filled. In *independent*, $x_1$ and $x_2$ are independent (four
# components on a grid): replacement must be exact. In *modes*, two components sit on the diagonal, at
# $(-1, -1)$ and $(1, 1)$: knowing $x_1 = 0.3$ makes the upper mode of $x_2$ much more likely, which is exactly
# the dependence replacement struggles with. We measure the share of $x_2$ in the upper mode against the exact
# conditional's.

# %%
def conditional_on_x1(mixture, y):
    """The law of x2 given x1 = y: per component mean, variance and reweighted weight."""
    mu, cov = mixture.means, mixture.covariances
    log_w = np.log(mixture.weights) - 0.5 * ((y - mu[:, 0]) ** 2 / cov[:, 0, 0] + np.log(2 * np.pi * cov[:, 0, 0]))
    weights = np.exp(log_w - log_w.max())
    means = mu[:, 1] + cov[:, 1, 0] / cov[:, 0, 0] * (y - mu[:, 0])
    variances = cov[:, 1, 1] - cov[:, 1, 0] ** 2 / cov[:, 0, 0]
    return weights / weights.sum(), means, variances


independent = GaussianMixture([0.15, 0.35, 0.15, 0.35], [[-1, -1], [-1, 1], [1, -1], [1, 1]],
                              np.stack([np.diag([0.1, 0.1])] * 4))  # p(x1) p(x2), x2 = +1 with probability 0.7
modes = GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], np.stack([0.25 * np.eye(2)] * 2))
y_known = 0.3
exact_steps, repaint_steps = (250, 50) if FAST else (1000, 100)
runs = {}  # (mixture, label) -> filled x2
for mixture_name, mixture, settings in (("independent", independent, [(1, 1)]),
                                        ("modes", modes, [(1, 1), (3, 1), (10, 1), (10, 10)])):
    steps = exact_steps if mixture_name == "independent" else repaint_steps
    for r, j in settings:
        sampler = DDPMSampler(schedule, clip_sample=False)
        out = inpaint(mixture.eps_model(schedule), sampler, np.full((N, 2), y_known), np.array([1, 0]),
                      np.random.default_rng(10), resample=r, jump=j, num_inference_steps=steps, progress=False)
        assert np.all(out[:, 0] == y_known)  # the known coordinate is the input, exactly
        runs[mixture_name, f"r = {r}, j = {j}"] = out[:, 1]

print(f"share of x2 > 0 (the upper mode) given x1 = {y_known}, {N} draws each; DDPM with {exact_steps} steps "
      f"(independent), {repaint_steps} (modes):")
errors = {}
for (mixture_name, label), x2 in runs.items():
    weights, means, _ = conditional_on_x1(independent if mixture_name == "independent" else modes, y_known)
    exact = float(weights[means > 0].sum())
    share = float(np.mean(x2 > 0))
    se = math.sqrt(exact * (1 - exact) / N)
    errors[mixture_name, label] = (exact - share, se)
    print(f"  {mixture_name:11s} {label:13s}: {share:.3f}  exact {exact:.3f}  error {exact - share:+.3f} "
          f"({(exact - share) / se:+.1f} s.e.)")
err_indep, se_indep = errors["independent", "r = 1, j = 1"]
err_plain, se_modes = errors["modes", "r = 1, j = 1"]
err_repaint, _ = errors["modes", "r = 10, j = 1"]
assert abs(err_indep) < 5 * se_indep  # replacement is exact for independent coordinates
assert err_plain > 5 * se_modes  # ... and biased when they depend on each other
assert err_repaint < 0.5 * err_plain  # RePaint removes most of the bias

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
grid = np.linspace(-2.5, 2.5, 400)
for ax, mixture_name, labels in ((axes[0], "independent", ["r = 1, j = 1"]),
                                 (axes[1], "modes", ["r = 1, j = 1", "r = 10, j = 1"])):
    weights, means, variances = conditional_on_x1(independent if mixture_name == "independent" else modes, y_known)
    exact_density = sum(w * np.exp(-(grid - m) ** 2 / (2 * v)) / math.sqrt(2 * math.pi * v)
                        for w, m, v in zip(weights, means, variances, strict=True))
    for label in labels:
        name = "replacement (r = 1)" if label == "r = 1, j = 1" else f"RePaint ({label})"
        ax.hist(runs[mixture_name, label], bins=60, range=(-2.5, 2.5), density=True, alpha=0.5, label=name)
    ax.plot(grid, exact_density, "k", label="exact conditional")
    ax.set_xlabel(f"$x_2$ (given $x_1$ = {y_known})")
    ax.set_ylabel("density")
    ax.set_title(f"{mixture_name}: filled coordinate")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
within = {label: runs["modes", label][runs["modes", label] > 0].var() / 0.25
          for label in ("r = 1, j = 1", "r = 10, j = 1", "r = 10, j = 10")}
print("variance of x2 within the upper mode / exact (0.25):", {k: round(float(v), 3) for k, v in within.items()})

# %% [markdown]
# What the numbers say. With independent coordinates the filled share matches the exact one within the
# standard error: replacement is exact there, as derived. With dependent coordinates plain replacement fills
# too many points into the wrong mode, many standard errors off; RePaint's resampling removes most of that
# error, at ten times the model calls. It is no exact sampler either: the printed within-mode variances show
# that repeating the 100 discrete steps also repeats their small variance error, so the resampled modes come
# out narrower than the exact ones (jumps of 10 narrow them less). With the exact model the remaining errors
# are the method's, not the network's.
#
# **Digits.** Three masks, each on six test digits: the left half known (fill the right), the top half known
# (fill the bottom), and a centre box to fill. Masks of shape (B, 1, 8, 8), one per image, broadcast over the
# channel. DDPM steps (RePaint is defined for ancestral steps), plain replacement against RePaint with $r = 5$.

# %%
masks = np.ones((3, 1, 8, 8))
masks[0, :, :, 4:] = 0  # left half known
masks[1, :, 4:, :] = 0  # top half known
masks[2, :, 2:6, 2:6] = 0  # centre box unknown
per_mask = 6
originals = np.concatenate([x_test[10:10 + per_mask]] * 3)  # (18, 1, 8, 8)
mask_batch = np.repeat(masks, per_mask, axis=0)  # (18, 1, 8, 8)
inpaint_steps = 6 if FAST else 50
filled = {}
for r in (1, 2 if FAST else 5):
    filled[r] = inpaint(unet, digit_sampler(DDPMSampler, inpaint_steps), originals, mask_batch,
                        np.random.default_rng(11), resample=r, progress=False)
    assert np.array_equal(filled[r][mask_batch == 1], originals[mask_batch == 1])  # known pixels: exact
shown_input = np.where(mask_batch == 1, originals, 0.0)  # unknown pixels shown grey
for k, name in enumerate(("left half known", "top half known", "centre box unknown")):
    block = slice(k * per_mask, (k + 1) * per_mask)
    show_rows([originals[block], shown_input[block], filled[1][block], filled[max(filled)][block]],
              ["original", "known part", "replacement", f"RePaint r = {max(filled)}"], f"inpainting: {name}")

# %% [markdown]
# The known pixels are the original's exactly (asserted). In the full run the filled parts are digit strokes
# that continue the known ones, though not necessarily into the original digit: the top half of a digit is
# often compatible with several. Whether the resampled fills fit better is left to the eye here; on the
# oracle, where the exact conditional is known, the check above measured it.
#
# ## 5. Editing by DDIM inversion [E33]
#
# With $\eta = 0$, DDIM (E32; Song et al. 2021, *Denoising diffusion implicit models*) is a deterministic map
# from $x_T$ to $x_0$, a first-order solver of the probability flow ODE. Run backwards it *encodes*: each step
# from $t'$ to $t$ solves the DDIM update for $x_t$, with the model's $\hat\epsilon$ evaluated where we are,
#
# $$\frac{x_t}{\sqrt{\bar\alpha_t}} = \frac{x_{t'}}{\sqrt{\bar\alpha_{t'}}}
#   + \Big(\sqrt{\tfrac{1}{\bar\alpha_t} - 1} - \sqrt{\tfrac{1}{\bar\alpha_{t'}} - 1}\Big)\,\hat\epsilon(x_{t'}, t),$$
#
# which stands in for $\hat\epsilon(x_t, t)$ (unknown before the step): an $O(1/N)$ error per run, so encoding
# then decoding returns the input up to an error that halves as the steps double. The latent $x_T$ is then a
# handle on the image: decode it as is (a reconstruction), decode it with another model (another class label,
# a guided model of chapter 08: `invert_and_edit(..., edit_model=...)`), change it (`edit_latent=...`), or
# blend two latents. First the reconstruction error against the number of steps:

# %%
to_invert = x_test[20:28]  # (8, 1, 8, 8)
inversion_steps = [2, 4, 8] if FAST else [10, 20, 50, 100]
recon_error = []
for steps in inversion_steps:
    result = invert_and_edit(unet, digit_sampler(DDIMSampler, steps), to_invert, progress=False)
    recon_error.append(float(np.abs(result.x - to_invert).mean()))
    print(f"{steps:4d} DDIM steps: mean |decode(encode(x)) - x| per pixel = {recon_error[-1]:.4f}; latent mean "
          f"{result.latent.mean():+.2f}, std {result.latent.std():.2f}")
assert recon_error[-1] < recon_error[0]

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(inversion_steps, recon_error, "o-", label="digits U-Net")
ax.loglog(inversion_steps, recon_error[0] * inversion_steps[0] / np.array(inversion_steps), "k:", label="slope -1")
ax.set_xlabel("DDIM steps")
ax.set_ylabel("mean reconstruction error per pixel")
ax.set_title("inversion then decoding")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Interpolation.** To blend two digits, encode both, interpolate the latents, decode. Not linearly: two draws
# of $\mathcal N(0, I)$ in $D$ dimensions have norms close to $\sqrt D$ and are nearly orthogonal, so their midpoint
# has norm about $\sqrt{D/2}$, a latent far shorter than any the model starts from at $t = T$. Spherical
# interpolation (slerp, Shoemake 1985), with $\theta$ the angle between them,
#
# $$\mathrm{slerp}(z_a, z_b; \alpha) = \frac{\sin((1-\alpha)\theta)}{\sin\theta}\,z_a
#   + \frac{\sin(\alpha\theta)}{\sin\theta}\,z_b,$$
#
# moves along the great circle and keeps the norm when $\|z_a\| = \|z_b\|$ (in between, it stays between the two
# norms). The printed norms of the two inverted digits show the effect: the straight midpoint is shorter than both
# latents, slerp's is not (asserted). We compare the decoded slerp path with the linear path in pixel space (a
# cross-fade of the two images).

# %%
interp_steps = 5 if FAST else 50
alphas = np.linspace(0.0, 1.0, 7)
ia, ib = int(np.flatnonzero(y_test == 3)[0]), int(np.flatnonzero(y_test == 8)[0])
xa, xb = x_test[ia:ia + 1], x_test[ib:ib + 1]  # a 3 and an 8 of the test set
decoded = interpolate(unet, digit_sampler(DDIMSampler, interp_steps), xa, xb, alphas, progress=False)  # (7, 1, ...)
pixel_path = np.stack([(1 - a_) * xa + a_ * xb for a_ in alphas])  # (7, 1, 1, 8, 8)
latents = digit_sampler(DDIMSampler, interp_steps).invert(unet, np.concatenate([xa, xb]), progress=False)
za, zb = latents[:1], latents[1:]
norm_slerp = float(np.linalg.norm(slerp(za, zb, 0.5)))
norm_lerp = float(np.linalg.norm(0.5 * (za + zb)))
print(f"|z_a| = {np.linalg.norm(za):.2f}, |z_b| = {np.linalg.norm(zb):.2f}, cos angle = "
      f"{float(np.sum(za * zb) / (np.linalg.norm(za) * np.linalg.norm(zb))):.2f}; midpoint norm: slerp "
      f"{norm_slerp:.2f}, lerp {norm_lerp:.2f} (sqrt(D) = {math.sqrt(za.size):.2f})")
norms = sorted([float(np.linalg.norm(za)), float(np.linalg.norm(zb))])
assert norm_lerp < norms[0] and norms[0] - 1e-9 <= norm_slerp <= norms[1] + 1e-9
show_rows([pixel_path[:, 0], decoded[:, 0]], ["pixel lerp", "latent slerp"],
          "from a 3 to an 8: pixel cross-fade against decoded latent slerp", [f"alpha = {a_:.2f}" for a_ in alphas])

# %% [markdown]
# The pixel path is a cross-fade: its middle frames are two half-transparent digits on top of each other, which
# is not a digit. The latent path decodes every frame with the model, so (in the full run) each frame is a
# plausible digit, the stroke morphing from one to the other. Its ends are the reconstructions of the two
# inputs, which the reconstruction error above says are close to them.
#
# ## 6. Side by side with diffusers
#
# diffusers' img2img pipelines do SDEdit this way: with $N$ steps and strength $s$ they keep the last
# $\lfloor N s\rfloor$ timesteps, `add_noise` the input to the first of them, tell a multistep scheduler where
# it starts (`set_begin_index`) and step. minidiff's `sdedit` with `t0 = s` keeps the same timesteps here; with
# the same noise and the exact model both runs must agree to diffusers' float32 schedule. Its
# `RePaintScheduler` lists the timesteps of the RePaint schedule; minidiff's `repaint_schedule` must visit the
# same ones (minidiff goes back up a jump in one draw, diffusers one step at a time).

# %%
diffusers = md.optional_reference("diffusers", "the comparison with diffusers' img2img loop and RePaintScheduler")

if diffusers is not None:
    import torch
    from diffusers import DPMSolverMultistepScheduler, RePaintScheduler

    strength, n_steps = 0.6, 20
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(n_steps)
    begin = n_steps - int(n_steps * strength)
    scheduler.set_begin_index(begin)
    noise = np.random.default_rng(12).standard_normal(stroke.shape)
    x = scheduler.add_noise(torch.from_numpy(stroke), torch.from_numpy(noise), scheduler.timesteps[begin:begin + 1])
    for k in scheduler.timesteps[begin:]:
        out = eps_model(x.numpy(), np.full(len(stroke), int(k) + 1))  # diffusers' k is minidiff's t = k + 1
        x = scheduler.step(torch.from_numpy(out), k, x).prev_sample
    ours = sdedit(eps_model, DPMSolverMultistepSampler.from_config(dict(scheduler.config)), stroke, strength,
                  np.random.default_rng(12), num_inference_steps=n_steps, progress=False)
    gap = float(np.abs(ours - x.numpy()).max())
    print(f"SDEdit at strength {strength}, {n_steps} DPM-Solver++ steps: max |minidiff - diffusers| = {gap:.1e}")
    assert gap < 1e-4

    repaint = RePaintScheduler(num_train_timesteps=1000)
    repaint.set_timesteps(50, jump_length=10, jump_n_sample=10)
    positions = repaint_schedule(50, 10, 10)
    unit = [int(positions[0])]
    for p, q in itertools.pairwise(positions):
        unit.extend(range(p - 1, q - 1, -1) if q < p else [q])  # a jump up, one step at a time
    ddpm50 = DDPMSampler(schedule)
    ddpm50.set_timesteps(50)
    ours_k = [int(ddpm50.timesteps[p]) - 1 for p in unit if p < 50]  # the model's timesteps, in diffusers' k
    print(f"RePaint r = j = 10 over 50 steps: {len(ours_k)} model timesteps, identical to diffusers': "
          f"{ours_k == repaint.timesteps.tolist()}")
    assert ours_k == repaint.timesteps.tolist()

# %% [markdown]
# ## Summary
#
# * **SDEdit** [E49] (Meng et al. 2022): noise the input to $t_0$ with E3, run the reverse process from there.
#   The noised input is within $\mathrm{KL} \le \tfrac12\mathrm{SNR}(t_0)\,\mathbb E\|a-b\|^2$ of the noised data, so
#   larger $t_0$ gives more realistic outputs that remember less of the input. Data in, data out (checked on
#   the oracle); $t_0 = 1$ is ordinary sampling.
# * **Inpainting** [E50]: after every reverse step put the input, noised to the new level, back on the known
#   region; the last step leaves the known pixels exact. Exact when the unknown pixels are independent of the
#   known ones, biased when they depend on them, because the unknown part hears about the known one only
#   through noisy copies. **RePaint** (Lugmayr et al. 2022) goes back up by the forward process and redoes each
#   step $r$ times (in jumps of $j$): it removed most of the bias on the oracle, for $r$ times the cost.
# * **DDIM inversion** [E33] (Song et al. 2021): the $\eta = 0$ map run backwards encodes an image into its
#   latent, to first order in the steps; decoding it with another model, an edited latent, or a slerp between
#   two latents edits, or blends, images.
#
# ## Exercises
#
# Open `minidiff/exercises/ch09.py` and fill in:
#
# * **9.1** `replace_known`: the inpainting step [E50]: noise the known image to the level $t$ (the schedule's
#   arrays are indexed by $t$; $t = 0$ is the data), then take it where the mask is 1 and the generated sample
#   elsewhere. `inpaint` calls it after every step.
# * **9.2** `sdedit_start`: where SDEdit begins [E49]: the first of the sampler's timesteps at or below
#   $t_0 T$ (there may be none), the input noised to it with the sampler's `add_noise`, and the prior's draw at
#   $t_0 = 1$. `sdedit` calls it.
#
# Grade them with `pytest --student -m ch09`. For 9.1: the known region must be E3 of the input at $t$
# (computed from a running product of $1 - \beta$), bit for bit the input at $t = 0$, the unknown region untouched,
# for masks of every broadcast shape; a whole inpainting run of independent Gaussian coordinates must fill them
# with the right mean and variance. For 9.2: the kept timesteps and the noised start must be right for DDPM's
# and Euler's timesteps, $t_0 = 0$ must return the input and $t_0 = 1$ the prior's draw.
