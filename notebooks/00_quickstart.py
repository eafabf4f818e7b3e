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
# # 00 · Quickstart: backends, one kernel and its twin, the map of the book
#
# minidiff builds diffusion models from nothing but NumPy: every equation of the theory is one
# readable function, checked by a test that knows the mathematics. Where NumPy is too slow, the
# same function also exists as a C++ kernel and as a CUDA kernel, and each of those is tested
# against its NumPy *twin*.
#
# This notebook shows that machinery on the smallest kernel that matters, then maps the book.
#
# | ch | notebook | topic |
# |---|---|---|
# | 00 | `00_quickstart` | backends, one kernel and its twin (this one) |
# | 01 | `01_autodiff` | a scalar `Value`, then tensors, gradcheck, side by side with PyTorch |
# | 02 | `02_forward_process` | schedules, SNR, the closed-form marginal |
# | 03 | `03_reverse_process` | posterior, parameterizations, ancestral sampling |
# | 04 | `04_elbo` | the bound term by term, bits per dimension |
# | 05 | `05_score_langevin` | scores, score matching, Langevin dynamics |
# | 06 | `06_sde_ode_ddim` | SDEs, probability flow, DDIM |
# | 07 | `07_unet` | timestep embedding, attention, the U-Net |
# | 08 | `08_guidance` | classifier and classifier-free guidance |
# | 09 | `09_editing` | SDEdit, inpainting, inversion |
# | 10 | `10_fast_samplers` | DPM-Solver++, Heun/EDM, flow matching |
# | 11 | `11_kernels` | GEMM, convolution, attention in C++ and CUDA against PyTorch |
#
# Chapters appear as the library grows; each ends with exercises graded by `pytest --student -m chNN`.

# %%
import time

import numpy as np

import minidiff as md
from minidiff.kernels import StepCoefs, sampler_step, sampler_step_ref

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks every size below
rng = np.random.default_rng(0)

# %% [markdown]
# ## Backends
#
# A *backend* decides which implementation runs the hot kernels: `numpy` (always there), `cpp`
# (the compiled extension `minidiff._C`, OpenMP threads) or `cuda` (CuPy on an NVIDIA GPU). The
# default is the fastest one available; `set_backend`, the `use_backend` context manager and the
# `MINIDIFF_BACKEND` environment variable choose another. `python -m minidiff info` tells what is
# available on your machine and why the rest is not: paste it when you ask for help.

# %%
from minidiff.info import report

print("available:", md.available_backends(), "  current:", md.get_backend())
print(report())

# %% [markdown]
# ## One kernel: the fused sampler step
#
# Every step of the DDPM and DDIM samplers met in chapters 03 and 06 has the same shape. Given the
# scalars of timestep $t$ (computed once per step), the new sample is an affine combination of the
# current sample $x$, the network's output $\epsilon$ and fresh noise $z$:
#
# $$x_{\text{prev}} = c_x\,x + c_\epsilon\,\epsilon + c_z\,z .$$
#
# Optionally the implied estimate of the clean image, $\hat x_0 = r_x x + r_\epsilon \epsilon$, is
# clipped to $[-1, 1]$, which adds the term $c_{x_0}\,\mathrm{clip}(\hat x_0)$. NumPy evaluates the
# formula one operator at a time, writing a temporary array for each; the C++ and CUDA kernels read
# every input once and write the output once.
#
# The same form also *adds* noise: the closed-form forward process of chapter 02 is
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, that is $c_x = \sqrt{\bar\alpha_t}$,
# $c_\epsilon = \sqrt{1-\bar\alpha_t}$. Let us use it that way and check the statistics: data with
# variance $v$ must come out with variance $\bar\alpha_t v + (1 - \bar\alpha_t)$.

# %%
n = 20_000 if FAST else 2_000_000
x0 = rng.uniform(-1.0, 1.0, n)  # variance 1/3
eps = rng.standard_normal(n)
alpha_bar = 0.3
coefs = StepCoefs(c_x=np.sqrt(alpha_bar), c_eps=np.sqrt(1.0 - alpha_bar))

xt = sampler_step(x0, eps, None, coefs)
expected_var = alpha_bar / 3.0 + (1.0 - alpha_bar)
print(f"variance of x_t: {xt.var():.4f}   expected: {expected_var:.4f}")
assert abs(xt.var() - expected_var) < 5 * expected_var * np.sqrt(2.0 / n)  # five standard errors

# %% [markdown]
# ## The twin, and every backend against it
#
# `sampler_step_ref` is the NumPy twin: the specification every other implementation must match. The
# C++ kernel is compiled with `-march=native`, so it may fuse a multiply and an add into one rounding
# (FMA); results then differ from NumPy in the last bits, never more. The tests allow
# `atol + rtol * scale`, where the scale of a sum is the sum of the magnitudes of its terms.

# %%
x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
eps_model = rng.standard_normal(x.shape).astype(np.float32)
z = rng.standard_normal(x.shape).astype(np.float32)
clipped = StepCoefs(c_x=0.7, c_eps=-0.2, c_z=0.1, c_x0=0.3, r_x=1.2, r_eps=-0.6, clip=1.0)

twin = sampler_step_ref(x, eps_model, z, clipped, np.empty_like(x))
for name in md.available_backends():
    with md.use_backend(name):
        got = sampler_step(x, eps_model, z, clipped)
    worst = np.max(np.abs(got - twin))
    print(f"{name:>6}: max |difference| to the twin = {worst:.2e}")
    assert worst < 1e-5

# %% [markdown]
# Strided inputs (a transposed view, every other element) give the same answer; the output may be
# written over `x` itself, which is how a sampler loop avoids allocating every step.

# %%
xt_view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, other strides
assert not xt_view.flags.c_contiguous
same = sampler_step(xt_view, eps_model, z, clipped)
assert np.allclose(same, twin, atol=1e-5)
buffer = x.copy()
sampler_step(buffer, eps_model, z, clipped, out=buffer)
assert np.allclose(buffer, twin, atol=1e-5)

# %% [markdown]
# ## How much does fusing buy?
#
# A rough look (the `benchmarks/` folder measures properly: interleaved runs, medians, pinned threads,
# and PyTorch in the same run). Do not trust one timing on a shared machine.

# %%
def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


big = rng.standard_normal(200_000 if FAST else 4_000_000).astype(np.float32)
timings = {}
for name in md.available_backends():
    with md.use_backend(name):
        timings[name] = median_seconds(lambda: sampler_step(big, big, big, clipped), 3 if FAST else 15)
for name, seconds in timings.items():
    print(f"{name:>6}: {seconds * 1e3:7.2f} ms   ({timings['numpy'] / seconds:4.1f}x NumPy)")

# %% [markdown]
# ## Bad input gets a clear error
#
# Every kernel checks its arguments at the Python boundary and names the one that is wrong; the C++
# side checks again what it relies on, so nothing can make it read out of bounds.

# %%
try:
    sampler_step(x, eps_model.astype(np.float64), z, clipped)
except TypeError as err:
    print("TypeError:", err)
try:
    sampler_step(x, eps_model[:1], z, clipped)
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## Exercise 0.1
#
# Open `minidiff/exercises/ch00.py`: `sampler_step_ref` raises `NotImplementedError`. Write the
# update (the affine part, then the clipped $\hat x_0$ term when `coefs.clip` is set) and grade it:
#
# ```
# pytest --student -m ch00
# ```
#
# The tests compare your twin with the formula evaluated element by element, check that without the
# clip it is linear in $(x, \epsilon, z)$, and that the clip does nothing inside the bound and
# saturates outside it.
