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
# # 07 · The network: timestep embedding, AdaGN, attention, the U-Net
#
# Chapters 02 to 06 treated the denoiser $\epsilon_\theta(x_t, t)$ as given: an oracle for toy data whose
# $p_t$ we knew. For images we must *learn* it, and the network of choice since DDPM (Ho, Jain & Abbeel 2020,
# "Denoising Diffusion Probabilistic Models") is a U-Net (Ronneberger, Fischer & Brox 2015, "U-Net:
# Convolutional Networks for Biomedical Image Segmentation") that also receives $t$. This chapter builds it
# piece by piece: how $t$ enters [E43], how it modulates the features [E44], how distant pixels talk [E45],
# and how the pieces form the encoder-decoder with skip connections [E46]. It ends by checking the whole
# network against diffusers' `UNet2DModel` and training it briefly on 8x8 digits.

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import minidiff as md
from minidiff import functional as F
from minidiff.data import digits
from minidiff.demo import single_threaded_blas
from minidiff.diffusion import NoiseSchedule, l_simple, linear_betas
from minidiff.nn import SelfAttention2d, UNet
from minidiff.nn.embedding import timestep_embedding
from minidiff.nn.unet import ResBlock, adaptive_group_norm
from minidiff.samplers import DDIMSampler
from minidiff.train import TrainConfig, Trainer

FAST = md.fast_mode()
T = 1000
rng = np.random.default_rng(0)


def count(module):
    """Number of trainable numbers in a module."""
    return sum(p.data.size for p in module.parameters())


# %% [markdown]
# ## 1. Why the network needs $t$, and how to feed it
#
# One network serves every noise level: at $t$ near $T$ it must guess the noise of almost pure noise, near $t=1$
# it must find a faint perturbation of a clean image. The optimal output depends on $t$ (chapter 03), so $t$ is an
# input. A raw number is a poor input (one scale for 1 and for 1000); the Transformer's positional encoding
# (Vaswani et al. 2017, "Attention Is All You Need"), reused by DDPM, spreads it over $h = d/2$ frequencies [E43]:
#
# $$\text{emb}(t) = \big[\sin(t\,w_0), \dots, \sin(t\,w_{h-1}),\ \cos(t\,w_0), \dots, \cos(t\,w_{h-1})\big],
# \qquad w_i = \text{max\_period}^{-i/(h - \text{shift})}.$$
#
# The frequencies run geometrically from $w_0 = 1$ (one radian per step: tells $t$ from $t+1$) down to about
# $10^{-4}$ (one slow turn over all $T$: tells early from late). Two facts follow line by line:
#
# * every pair $(\sin t w_i, \cos t w_i)$ lies on the unit circle, so $\|\text{emb}(t)\|^2 = h$ for every $t$;
# * $\text{emb}(t)\cdot\text{emb}(t+k) = \sum_i [\sin(t w_i)\sin((t+k) w_i) + \cos(t w_i)\cos((t+k) w_i)]
#   = \sum_i \cos(k\,w_i)$ (by $\cos(a-b) = \cos a\cos b + \sin a \sin b$): the similarity of two
#   timesteps depends only on their distance $k$, and is largest ($= h$) at $k = 0$.
#
# A two-layer MLP (linear, SiLU, linear) then maps the features to the width the blocks use.

# %%
dim, half = 64, 32
ts = np.arange(1, T + 1)
emb = timestep_embedding(ts, dim)  # (T, dim)
print("embedding matrix:", emb.shape)
assert np.allclose(np.sum(emb**2, axis=1), half)  # each (sin, cos) pair is a unit vector
freqs = np.exp(-np.log(10000) * np.arange(half) / (half - 1))
for k in (1, 10, 100):
    dots = np.sum(emb[:-k] * emb[k:], axis=1)  # emb(t) . emb(t + k) for every t
    print(f"k = {k:3d}: emb(t).emb(t+k) ranges over [{dots.min():.6f}, {dots.max():.6f}];"
          f" sum_i cos(k w_i) = {np.sum(np.cos(k * freqs)):.6f}")
    assert np.allclose(dots, np.sum(np.cos(k * freqs)), atol=1e-9)

cosine = emb @ emb.T / half  # cosine similarity of every pair of timesteps
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
im = axes[0].imshow(emb.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower",
                    extent=(0.5, T + 0.5, -0.5, dim - 0.5))
axes[0].set_xlabel("timestep t")
axes[0].set_ylabel("feature index (sines below 32, cosines above)")
axes[0].set_title("[E43] sinusoidal embedding emb(t)")
fig.colorbar(im, ax=axes[0], label="feature value")
for t0 in (100, 500, 900):
    axes[1].plot(ts, cosine[t0 - 1], label=f"t' = {t0}")
axes[1].set_xlabel("timestep t")
axes[1].set_ylabel("cosine similarity of emb(t) and emb(t')")
axes[1].set_title("nearby timesteps look alike")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The residual block and AdaGN
#
# The U-Net's unit is a residual block (He et al. 2016, "Deep Residual Learning"): two 3x3 convolutions with
# group norm and SiLU, added to the input (through a 1x1 convolution when the channel count changes). The time
# embedding enters between them. DDPM *adds* a projection of it to the features, one number per channel. FiLM
# (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer") lets a condition both *scale*
# and *shift* features; Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis") put it right
# after the group norm and called it adaptive group norm [E44]:
#
# $$\text{AdaGN}(h, t) = \text{GroupNorm}(h)\,\big(1 + s(t)\big) + b(t),
# \qquad (s, b) = \text{Linear}(\text{SiLU}(\text{emb}(t))).$$
#
# Why after the norm: the norm sets every group to mean 0 and variance 1, so the condition *decides* the
# statistics. With one channel per group, channel $c$ leaves AdaGN with mean $b_c$ and standard deviation
# $|1 + s_c|$ over the pixels; the "default" addition before the norm would be removed by that same norm. The
# $1 +$ makes a zero-initialized projection the identity.

# %%
B, C, H, W = 2, 6, 8, 8
h = md.tensor(rng.standard_normal((B, C, H, W)) * 3 + 1)
scale = md.tensor(rng.standard_normal((B, C, 1, 1)) * 0.5)
shift = md.tensor(rng.standard_normal((B, C, 1, 1)))
out = adaptive_group_norm(F.group_norm(h, C, eps=1e-12), scale, shift).data  # one channel per group
print("per-channel mean - shift:", np.abs(out.mean(axis=(2, 3)) - shift.data[..., 0, 0]).max())
print("per-channel std - |1 + scale|:", np.abs(out.std(axis=(2, 3)) - np.abs(1 + scale.data[..., 0, 0])).max())
assert np.allclose(out.mean(axis=(2, 3)), shift.data[..., 0, 0], atol=1e-8)
assert np.allclose(out.std(axis=(2, 3)), np.abs(1 + scale.data[..., 0, 0]), atol=1e-6)

temb_channels = 32
block = ResBlock(C, 12, temb_channels, groups=3, time_scale_shift="scale_shift", rng=rng, dtype=np.float64)
temb = md.tensor(rng.standard_normal((B, temb_channels)))
print(block)
print("input", h.shape, "+ time embedding", temb.shape, "->", block(h, temb).shape)
print("time_emb_proj:", block.time_emb_proj.weight.shape, "-> scale and shift, 12 channels each")
assert block(h, temb).shape == (B, 12, H, W)

# %% [markdown]
# ## 3. Attention at low resolution
#
# A 3x3 convolution sees its neighbours; a digit's top and bottom loops are far apart. Self-attention
# (Vaswani et al. 2017) lets every pixel look at every other [E45]. The feature map $(B, C, H, W)$ becomes
# $HW$ tokens of $C$ numbers; each token emits a query $q$, a key $k$ and a value $v$ (three linear maps), and
#
# $$\text{Attention}(Q, K, V) = \text{softmax}\!\left(\frac{Q K^\top}{\sqrt d}\right) V .$$
#
# Row $i$ of the softmax is a probability distribution over the pixels: *where pixel $i$ looks*. The $\sqrt d$
# keeps the scores of unit variance when $q$ and $k$ have $d$ independent unit components. With several heads
# the $C$ channels are cut into groups of $d$, each head attends on its own, the results are concatenated; then an
# output projection and a residual connection. The cost grows as $(HW)^2$, so DDPM uses it only at 16x16 and
# our digits U-Net at 4x4; for a clearer picture we look here at a full 8x8 grid. Cross-attention takes the
# keys and values from another sequence (a text encoding, chapter 08) instead of the image.
#
# We recompute the block's output by hand from its weights (that gives us the attention map it used):

# %%
x_img, y_img = digits("train")
channels, heads = 8, 2
attn = SelfAttention2d(channels, attention_head_dim=channels // heads, norm_num_groups=2, rng=rng,
                       dtype=np.float64)
# features: the digit, its two coordinates, and random mixtures of them (a stand-in for a conv layer's output)
yy, xx = np.mgrid[0:8, 0:8] / 7.0
base = np.stack([x_img[0, 0], xx * 2 - 1, yy * 2 - 1])  # (3, 8, 8)
feats = np.einsum("cd,dhw->chw", rng.standard_normal((channels, 3)), base)[None]  # (1, 8, 8, 8)
out = attn(md.tensor(feats)).data

g = feats.reshape(1, 2, -1)
normed = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(feats.shape)
tokens = normed.reshape(1, channels, 64).transpose(0, 2, 1)  # (B, HW, C)
print("tokens:", tokens.shape)
q, k, v = (tokens @ lin.weight.data.T + lin.bias.data for lin in (attn.to_q, attn.to_k, attn.to_v))
d = channels // heads
q, k, v = (a.reshape(1, 64, heads, d).transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, heads, HW, d)
print("q, k, v per head:", q.shape)
scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # (B, heads, HW, HW)
probs = np.exp(scores - scores.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
print("attention weights:", probs.shape)
merged = (probs @ v).transpose(0, 2, 1, 3).reshape(1, 64, channels)  # (B, HW, C)
by_hand = (merged @ attn.to_out[0].weight.data.T + attn.to_out[0].bias.data).transpose(0, 2, 1).reshape(feats.shape)
by_hand = by_hand + feats
print("largest |module - by hand|:", np.abs(out - by_hand).max())
assert np.abs(out - by_hand).max() < 1e-10
assert np.allclose(probs.sum(-1), 1.0)

query = 3 * 8 + 3  # pixel (row 3, column 3)
fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.6))
axes[0].imshow(x_img[0, 0], cmap="gray_r")
axes[0].plot(3, 3, "r+", markersize=14, label="query pixel")
axes[0].set_title(f"input digit (label {y_img[0]})")
axes[0].legend(loc="lower right", fontsize=8)
for i in range(heads):
    im = axes[i + 1].imshow(probs[0, i, query].reshape(8, 8), cmap="viridis")
    axes[i + 1].plot(3, 3, "r+", markersize=14)
    axes[i + 1].set_title(f"head {i}: weights of pixel (3, 3)")
    fig.colorbar(im, ax=axes[i + 1], label="attention weight")
for ax in axes:
    ax.set_xlabel("column")
    ax.set_ylabel("row")
plt.tight_layout()
plt.show()

# %% [markdown]
# The weights here are untrained, so the maps show only what the random projections happen to prefer; each
# head's map sums to one and the two heads look at different places, which is what several heads buy.

# %% [markdown]
# ## 4. The U-Net assembled
#
# The U-Net [E46] is an encoder that halves the resolution level by level and doubles the channels, a middle
# block at the lowest resolution (residual, attention, residual), and a decoder that mirrors the encoder. What
# makes it a *U*: every output of the encoder is kept and handed to the decoder at the same resolution,
# concatenated to its input along the channels (Ronneberger et al. 2015). The fine detail needed to predict the
# noise of each pixel travels along these skips; the coarse path decides the content. Ho et al. 2020 added the
# time embedding to every residual block and attention at one low resolution.
#
# minidiff's `UNet` speaks diffusers' `UNet2DModel` vocabulary (`block_out_channels`, `down_block_types`, ...).
# We follow one input through it and print the shape after every block, and each skip as it is pushed:

# %%
config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
              attention_head_dim=8, norm_num_groups=8)
unet = UNet(**config, rng=np.random.default_rng(1))
x = md.tensor(x_img[:2])
t_in = np.array([10, 500])
with md.no_grad():
    temb = unet.time_embedding(unet.time_proj(t_in))
    print(f"{'time embedding':<26}{temb.shape!s:<18}")
    h = unet.conv_in(x)
    skips = [h]
    print(f"{'conv_in':<26}{h.shape!s:<18}skip {h.shape}")
    for i, blk in enumerate(unet.down_blocks):
        before = len(skips)
        h = blk(h, temb, None, skips)
        pushed = ", ".join(str(s.shape) for s in skips[before:])
        print(f"{f'down_blocks.{i}':<26}{h.shape!s:<18}skips {pushed}")
    h = unet.mid_block(h, temb, None)
    print(f"{'mid_block':<26}{h.shape!s:<18}")
    for i, blk in enumerate(unet.up_blocks):
        used = ", ".join(str(s.shape) for s in skips[-len(blk.resnets):][::-1])
        h = blk(h, temb, None, skips)
        print(f"{f'up_blocks.{i}':<26}{h.shape!s:<18}used skips {used}")
    h = unet.conv_out(unet.conv_norm_out(h, activation="silu"))  # the norm and its SiLU in one kernel call
    print(f"{'conv_out':<26}{h.shape!s:<18}")
    assert not skips  # every skip pushed was used once
    assert np.array_equal(h.data, unet(x, t_in).data)  # the walk is the forward pass

print()
parts = ["conv_in", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_out"]
for name in parts:
    print(f"{name:<16}{count(getattr(unet, name)):>8,d} parameters")
print(f"{'total':<16}{count(unet):>8,d}")
assert sum(count(getattr(unet, n)) for n in parts) == count(unet)

# %% [markdown]
# The decoder has more parameters than the encoder: its residual blocks read the concatenation of two
# feature maps, and each up level has one block more (one per skip).
#
# ## 5. Side by side with diffusers' UNet2DModel
#
# Because the configuration and the parameter names are diffusers', its `UNet2DModel` built from the same
# config accepts minidiff's state dict as is. Same weights, same input, same $t$: the outputs must agree to
# float32 rounding (diffusers computes the sinusoidal features in float32, so large $t$ costs a few ulps).

# %%
diffusers = md.optional_reference("diffusers", "the comparison with diffusers' UNet2DModel")

if diffusers is not None:
    import torch
    from diffusers import UNet2DModel

    twin = UNet2DModel(**{k: v for k, v in unet.config.items() if k != "cross_attention_dim"}).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in unet.state_dict().items()}, strict=True)
    print("diffusers parameters:", sum(p.numel() for p in twin.parameters()), "  minidiff:", count(unet))
    assert sum(p.numel() for p in twin.parameters()) == count(unet)
    xs = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    t_cmp = np.array([1, 10, 250, 999])
    with md.no_grad():
        ours = unet(md.tensor(xs), t_cmp).data
    with torch.no_grad():
        theirs = twin(torch.from_numpy(xs), torch.from_numpy(t_cmp)).sample.numpy()
    diff = np.abs(ours - theirs).max()
    print(f"largest |minidiff - diffusers| = {diff:.1e} (outputs of size {np.abs(theirs).max():.2f})")
    assert diff < 1e-4 * (1 + np.abs(theirs).max())

# %% [markdown]
# ## 6. A short training on digits
#
# The `Trainer` runs the loop of chapter 04's $L_\text{simple}$ [E15]: draw $t$ uniformly and
# $\epsilon \sim \mathcal N(0, I)$, form $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, predict
# $\epsilon$, take the mean squared error, backpropagate, clip, step AdamW, update the EMA. A network that outputs
# zero scores $E\|\epsilon\|^2/D = 1$: the trivial predictor's loss. We measure the loss on a fixed held-out batch
# (fixed $t$ and noise) before and after training. In fast mode a tiny net takes a handful of steps, enough to
# see the loss fall but not to draw digits; the full run (800 steps, batch 64, a few minutes on one core) is
# enough for recognizable digits.

# %%
steps = 3 if FAST else 800
train_config = dict(config, block_out_channels=(8, 16), norm_num_groups=4) if FAST else config
net = UNet(**train_config, rng=np.random.default_rng(2))
schedule = NoiseSchedule(linear_betas(T))
x_test, _ = digits("test")
x_eval = x_test[: 32 if FAST else 256]


def eval_loss(model):
    """L_simple on the held-out batch with fixed t and noise (the same draws every call)."""
    with md.no_grad():
        loss = l_simple(schedule, lambda xt, t: model(md.tensor(xt.astype(np.float32)), t), x_eval,
                        rng=np.random.default_rng(123))
    return float(loss.item())


before = eval_loss(net)
out_dir = tempfile.mkdtemp(prefix="minidiff_ch07_")
trainer = Trainer(net, TrainConfig(steps=steps, batch_size=16 if FAST else 64, lr=2e-3, warmup_steps=0 if FAST else 50,
                                   ema_decay=0.9 if FAST else 0.99, checkpoint_every=10_000, log_every=1,
                                   num_train_timesteps=T),
                  x_img, out_dir, show_progress=False)
with single_threaded_blas():  # these matrices are small: BLAS threads would only contend for the cores
    result = trainer.train()
after = eval_loss(net)
print(f"held-out loss: {before:.3f} before, {after:.3f} after {steps} steps (trivial predictor: 1.0)")
assert after < before and after < 1.0
if not FAST:
    assert after < 0.2  # far below the trivial predictor's 1.0 (0.11 measured)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, len(result.losses) + 1), result.losses, label="training batch loss")
ax.axhline(1.0, color="gray", linestyle="--", label="trivial predictor (output 0)")
ax.axhline(after, color="C1", linestyle=":", label="held-out loss after training")
ax.set_xlabel("step")
ax.set_ylabel("L_simple (mean squared error)")
ax.set_title("training the U-Net on 8x8 digits")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Sampling uses the EMA weights (chapter 04's Polyak average) and DDIM (chapter 06, $\eta = 0$) with few steps.

# %%
trainer.ema.copy_to(net)
n_side = 4 if FAST else 6
sampler = DDIMSampler(schedule)
with md.no_grad():
    samples = sampler.sample(lambda xt, t: net(md.tensor(xt), t).data, (n_side**2, 1, 8, 8),
                             np.random.default_rng(7), num_inference_steps=4 if FAST else 20, progress=False)
print("samples:", samples.shape, f"pixel range [{samples.min():.2f}, {samples.max():.2f}]")
assert np.all(np.isfinite(samples))


def grid(images, n):
    """(n*n, 1, 8, 8) -> one (9n+1, 9n+1) image with a 1-pixel border."""
    canvas = np.zeros((9 * n + 1, 9 * n + 1))  # gray borders
    for i, img in enumerate(images[: n * n]):
        r, c = divmod(i, n)
        canvas[1 + 9 * r: 9 * r + 9, 1 + 9 * c: 9 * c + 9] = img[0]
    return canvas


fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, images, title in ((axes[0], x_img, "training digits"),
                          (axes[1], np.clip(samples, -1, 1), f"DDIM samples after {steps} steps of training")):
    im = ax.imshow(grid(images, n_side), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(title)
    ax.set_xlabel("pixel column")
    ax.set_ylabel("pixel row")
    fig.colorbar(im, ax=ax, label="pixel value", fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# In fast mode a handful of steps leaves the samples as noise; the full run's 800 steps draw recognizable if
# blurry digits. `python -m minidiff demo` trains a similar net longer (v-prediction, a cosine schedule and
# min-SNR weighting, chapter 04) and judges its samples with a classifier; `python -m minidiff train` runs such
# trainings with checkpoints.
#
# ## Summary
#
# * The timestep enters as sinusoidal features [E43] (Vaswani et al. 2017; Ho et al. 2020): unit-length
#   $(\sin, \cos)$ pairs over geometric frequencies, whose dot products depend only on the distance between
#   timesteps, then an MLP.
# * Residual blocks receive the embedding either added before the second group norm (DDPM) or as AdaGN [E44],
#   a FiLM-style scale and shift after it (Perez et al. 2018; Dhariwal & Nichol 2021): the condition sets the
#   per-channel mean and spread.
# * Self-attention [E45] (Vaswani et al. 2017) lets every pixel weigh every other, head by head, at a low
#   resolution where $(HW)^2$ is affordable; the module's output is reproduced by hand from its weights.
# * The U-Net [E46] (Ronneberger et al. 2015) keeps every encoder output as a skip for the decoder at the same
#   resolution; minidiff's UNet matches diffusers' `UNet2DModel` by state dict, to float32 rounding.
# * A short training with the `Trainer` lowers $L_\text{simple}$ below the trivial predictor's 1.0 on held-out
#   digits; DDIM samples from the EMA weights.
#
# ## Exercises
#
# Open `minidiff/exercises/ch07.py` and fill in:
#
# * **7.1** `timestep_embedding(t, dim, ...)`: the frequencies, the angles $t\,w_i$ as a (B, h) array, the
#   sines and cosines side by side (flipped on request) and a zero column for an odd `dim` [E43].
# * **7.2** `ResBlock.forward(x, temb)`: the block's order of operations, with the embedding added before
#   `norm2` or split into scale and shift for AdaGN after it [E44], the shortcut and the output scale. (A
#   `GroupNorm` module can apply AdaGN and the SiLU after it in the same kernel call:
#   `norm2(h, scale=s, shift=t, activation="silu")`.)
# * **7.3** `_PixelAttention._attend(x, context)` (used by `SelfAttention2d` and `CrossAttention`): pixels to
#   tokens, queries, keys and values split into heads, attention, heads merged, output projection, residual [E45].
# * **7.4** `Trainer.train_step(batch)`: the heart of a training step: zeroed gradients, the objective's loss,
#   backward, gradient clipping, the optimizer step.
#
# Grade them with `pytest --student -m ch07`. 7.1: the closed form for small dims and diffusers'
# `get_timestep_embedding`. 7.2: AdaGN with scale $-1$ leaves only the shortcut and conv2's bias; the "default"
# embedding is normalized away with one channel per group; diffusers' `ResnetBlock2D` (outputs and gradients).
# 7.3: attention written out head by head in NumPy, and diffusers' `Attention`. 7.4: the returned loss and the
# gradient norm equal a replay of the same draws, the weights move downhill, the loss has the value of the
# targets the model saw, and training reaches the known optimum of Gaussian data.

# %% [markdown]
# ## Appendix · Running a published model: diffusers folders
#
# Because minidiff's `UNet` speaks `UNet2DModel`'s vocabulary, the models people publish in diffusers' format run
# here too. DDPM's own CIFAR-10 network (Ho et al. 2020), converted to diffusers as `google/ddpm-cifar10-32`
# (35.7M parameters), is a folder as diffusers' `save_pretrained` writes it:
#
#     model_index.json                          the pipeline (DDPMPipeline) and its parts: unet, scheduler
#     unet/config.json                          UNet2DModel's arguments: block_out_channels, down_block_types, ...
#     unet/diffusion_pytorch_model.safetensors  the weights, under the state dict keys minidiff's UNet has too
#     scheduler/scheduler_config.json           the noise schedule and the sampler's options
#
# `minidiff.interop.load_diffusers(folder)` reads it: the config becomes `UNet` arguments (an option minidiff does
# not implement, a Fourier time embedding or a skip block say, is refused by name rather than mis-loaded), the
# weights are read memory-mapped by minidiff's own safetensors reader (float16 files are upcast), the scheduler
# config becomes a sampler through `from_config`. One thing does not carry over as it is: the count of time.
#
# ### The count of time, folded into one matrix
#
# diffusers numbers the steps $k = 0, \dots, T-1$, minidiff $t = k + 1$, so a network trained in diffusers has
# seen $\text{emb}(k) = \text{emb}(t - 1)$. Rather than remember to call it with $t - 1$, the importer changes one
# weight so that the network computes at $t$ what it computed at $t - 1$ [E43]. For each frequency $w_i$ the
# angle-addition formulas give
#
# $$\sin((t + d) w_i) = \sin(t w_i)\cos(d w_i) + \cos(t w_i)\sin(d w_i), \qquad
#   \cos((t + d) w_i) = \cos(t w_i)\cos(d w_i) - \sin(t w_i)\sin(d w_i),$$
#
# so $\text{emb}(t + d) = R_d\,\text{emb}(t)$, where $R_d$ rotates each $(\sin, \cos)$ pair by the angle $d\,w_i$
# and does not depend on $t$. The first layer that reads the embedding is linear, $W\,\text{emb} + b$, hence
# $(W R_d)\,\text{emb}(t) + b = W\,\text{emb}(t + d) + b$: replacing `time_embedding.linear_1.weight` by $W R_d$
# shifts the network's clock by exactly $d$. The importer folds $d = -1$, the exporter `save_diffusers`
# $d = +1$; every other weight moves as it is. We build $R_d$ from the two formulas and check the identity:

# %%
dim, half = 8, 4
w = np.exp(-np.log(10000) * np.arange(half) / (half - 1))  # the frequencies of [E43] (freq_shift 1)
d = -1.0
rotation = np.zeros((dim, dim))  # R_d: emb(t + d) = R_d emb(t), rows and columns [sines, cosines]
rotation[:half, :half] = rotation[half:, half:] = np.diag(np.cos(d * w))
rotation[:half, half:] = np.diag(np.sin(d * w))  # sin((t + d) w) gains cos(t w) sin(d w)
rotation[half:, :half] = -np.diag(np.sin(d * w))  # cos((t + d) w) loses sin(t w) sin(d w)
t_check = np.array([1.0, 17.0, 500.0, 1000.0])
err = np.abs(timestep_embedding(t_check + d, dim) - timestep_embedding(t_check, dim) @ rotation.T).max()
print(f"largest |emb(t - 1) - R emb(t)| over t = {t_check.astype(int).tolist()}: {err:.1e}")
assert err < 1e-12
print("R is a rotation (R R^T = I):", np.allclose(rotation @ rotation.T, np.eye(dim)))
assert np.allclose(rotation @ rotation.T, np.eye(dim))

# %% [markdown]
# ### A folder written by diffusers, read by minidiff
#
# A published checkpoint is a download away (below); to run in seconds we let diffusers write a small seeded
# random `UNet2DModel` with a DDIM scheduler into a temporary folder, the way `save_pretrained` writes any model.
# (Without diffusers installed, minidiff's own `save_diffusers` writes the same kind of folder.)

# %%
import inspect
from pathlib import Path

from minidiff.interop import load_diffusers, save_diffusers
from minidiff.nn.layers import ModuleList

folder = Path(tempfile.mkdtemp(prefix="minidiff_ch07_diffusers_")) / "tiny-ddim"
published = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=8, norm_num_groups=8, flip_sin_to_cos=False, freq_shift=1)
if diffusers is not None:
    torch.manual_seed(0)
    reference = diffusers.DDIMPipeline(diffusers.UNet2DModel(**published).eval(),
                                       diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2"))
    with torch.no_grad():  # move the norms' scales and every bias off their initial 1 and 0
        for p in reference.unet.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    reference.set_progress_bar_config(disable=True)
    reference.save_pretrained(folder)
else:
    save_diffusers(UNet(**published, rng=np.random.default_rng(3)),
                   DDIMSampler(NoiseSchedule.named("cosine", T)), folder)
for path in sorted(folder.rglob("*")):
    if path.is_file():
        print(f"{path.relative_to(folder)!s:<42}{path.stat().st_size:>9,d} bytes")

pipe = load_diffusers(folder)
print("\nsampler from scheduler_config.json:", pipe.sampler)
print("U-Net parameters:", f"{count(pipe.unet):,d}")

# %% [markdown]
# Each block of the folder's network, as diffusers builds it (when installed) beside the minidiff class that
# implements it and where to read that code; the parameter counts agree block by block.

# %%
unet_twin = reference.unet if diffusers is not None else None
modules = dict(pipe.unet.named_modules())  # every submodule by dotted name ("" is the UNet itself)
print(f"{'module':<30}{'diffusers class':<20}{'minidiff class':<29}{'defined in':<20}{'parameters':>10}")
for name, module in modules.items():
    # a row per top-level part and per entry of a block's list (down_blocks.0, down_blocks.0.resnets.1, ...)
    in_list = isinstance(modules[name.rpartition(".")[0]], ModuleList) and name.count(".") <= 3
    if not name or isinstance(module, ModuleList) or not ("." not in name or in_list):
        continue
    source = Path(inspect.getsourcefile(type(module)))
    where = f"{source.parent.name}/{source.name}:{inspect.getsourcelines(type(module))[1]}"
    theirs = "-"
    if unet_twin is not None:
        twin_module = unet_twin.get_submodule(name)
        theirs = type(twin_module).__name__
        assert sum(p.numel() for p in twin_module.parameters()) == count(module), name
    print(f"{name:<30}{theirs:<20}{type(module).__name__:<29}{where:<20}{count(module):>10,d}")

# %% [markdown]
# Now a whole DDIM run (chapter 06), once by minidiff from the loaded folder and once by diffusers' own
# `DDIMPipeline`, from the same initial noise: the pipeline draws $x_T$ from a seeded `torch.Generator`, so we
# draw the same numbers and hand them to minidiff's sampler. The pipeline returns images clipped to
# $[-1, 1]$ and mapped to $[0, 1]$; we do the same with minidiff's samples.

# %%
n_show, ddim_steps = (4, 10) if FAST else (16, 20)
shape = pipe.image_shape(n_show)
if diffusers is not None:
    torch.set_num_threads(1)  # a tiny model: a second thread would only wait for the first
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0)).numpy()
else:
    x_T = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
with single_threaded_blas():
    ours = pipe.sample(n_show, np.random.default_rng(0), num_inference_steps=ddim_steps, x_T=x_T, progress=False)
ours = np.clip(ours / 2 + 0.5, 0.0, 1.0)[:, 0]  # (N, 8, 8) in [0, 1], as the pipeline returns its images
panels = [("minidiff, from the loaded folder", ours)]
if diffusers is not None:
    theirs = reference(batch_size=n_show, generator=torch.Generator().manual_seed(0), num_inference_steps=ddim_steps,
                       output_type="np").images[..., 0]  # (N, 8, 8)
    largest = np.abs(ours - theirs).max()
    print(f"{ddim_steps} DDIM steps, {n_show} images: largest |minidiff - diffusers| = {largest:.1e}")
    assert largest < 1e-4
    panels += [("diffusers' DDIMPipeline", theirs), ("|minidiff - diffusers|", np.abs(ours - theirs))]

side = int(np.sqrt(n_show))
fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4))
for ax, (title, images) in zip(np.atleast_1d(axes), panels, strict=True):
    difference = title.startswith("|")
    if difference:
        im = ax.imshow(grid(images[:, None], side), cmap="magma", vmin=0)
    else:
        im = ax.imshow(grid(images[:, None] * 2 - 1, side), cmap="gray", vmin=-1, vmax=1)  # back to [-1, 1]
    ax.set_title(title)
    ax.set_xlabel("pixel column")
    ax.set_ylabel("pixel row")
    fig.colorbar(im, ax=ax, fraction=0.046, label="absolute difference" if difference else "pixel value")
plt.tight_layout()
plt.show()

# %% [markdown]
# The weights are random, so the images are structured noise; the point is that the two runs are the same
# images, to float32 rounding (the printed difference). Each step carries that rounding through the network, so
# the difference grows with the number of steps; `load_diffusers(folder, dtype=np.float64)` runs minidiff's side
# in float64 to see how much of it is diffusers' own float32 rounding.
#
# ### With a real checkpoint, and the way back
#
# * **Run a published model.** Download the folder, then load it as above:
#
#       huggingface-cli download google/ddpm-cifar10-32 --local-dir ddpm-cifar10
#
#   `pipe = load_diffusers("ddpm-cifar10")`, then `pipe.sample(16, np.random.default_rng(0),
#   num_inference_steps=1000)` runs its own DDPM scheduler, or `pipe.sample(..., sampler=DDIMSampler(
#   pipe.sampler.schedule), num_inference_steps=50)` fifty DDIM steps; on the command line,
#   `python -m minidiff sample --diffusers ddpm-cifar10 --sampler ddim --steps 50 --n 16 --out cifar10` writes
#   `samples.png` and `samples.npy`. A network of this size is slow on a CPU: benchmarks/bench_interop.py times
#   its forward pass and a 50-step DDIM run against PyTorch. A folder holding only the older PyTorch pickle
#   `diffusion_pytorch_model.bin` is refused with the one-line fix: convert it once with diffusers,
#   `DDPMPipeline.from_pretrained("ddpm-cifar10").save_pretrained("ddpm-cifar10")`.
# * **Take a minidiff model to diffusers.** `python -m minidiff export --checkpoint runs/digits --out
#   runs/digits-diffusers` (or `save_diffusers(unet, sampler, folder)`) writes the EMA U-Net and a DDPM
#   (`--sampler ddim`: DDIM) scheduler; `DDPMPipeline.from_pretrained("runs/digits-diffusers")` runs it as it is.
# * **Train it on many GPUs and bring it back.** diffusers' example `examples/unconditional_image_generation/
#   train_unconditional.py` trains a `UNet2DModel` with accelerate (`accelerate launch --multi_gpu
#   --num_processes 8 train_unconditional.py --model_config_name_or_path runs/digits-diffusers/unet ...`). It
#   builds its network from that config; to continue from the exported weights change its line
#   `model = UNet2DModel.from_config(config)` to `model = UNet2DModel.from_pretrained(args.model_config_name_or_path)`.
#   It trains $\epsilon$ or $x_0$ prediction on a "linear" or "squaredcos_cap_v2" schedule (minidiff's "linear"
#   and "cosine"), so train in minidiff with `--objective epsilon` and pass the same `--ddpm_beta_schedule`. Its
#   output folder is a `DDPMPipeline`: `load_diffusers(folder)` or `sample --diffusers folder` brings it back.
#
# In short: a diffusers folder is a config, a state dict with the keys minidiff's `UNet` already has, and a
# scheduler config; the only conversion is the count of time, a rotation folded into one matrix [E43].
