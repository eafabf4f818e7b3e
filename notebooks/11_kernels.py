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
# # 11 · Kernels: from the naive triple loop to FlashAttention
#
# A diffusion model spends its time in a few loops: the matrix products inside every convolution and linear
# layer, the softmax of attention, and the elementwise update of each sampler step. This chapter writes those
# loops the way high-performance libraries do and measures each step of the way against what the machine can do.
#
# 1. **Backends and one kernel.** How minidiff picks an implementation, and the smallest kernel that matters,
#    the fused sampler step, with its NumPy *twin*.
# 2. **GEMM.** Four versions of $C = AB$, from the naive triple loop to the packed, register-blocked kernel of
#    Goto & van de Geijn (2008) and BLIS (Van Zee & van de Geijn 2015), placed on a *roofline* (Williams et al.
#    2009): the machine's peak and memory bandwidth, measured in the same run.
# 3. **Convolution as GEMM.** im2col (Chellapilla et al. 2006) lays every window out as a column; implicit GEMM
#    reads the same numbers without writing them down; the weight gradient is one more product.
# 4. **Attention without the $L \times L$ matrix.** The online softmax (Milakov & Gimelshein 2018), derived line by
#    line, and FlashAttention's tiles and saved log-sum-exp (Dao et al. 2022; Dao 2023).
# 5. **The CUDA thread hierarchy,** shown by running CUDA kernels on minidiff's CPU emulator.
# 6. **Against PyTorch,** with the benchmark of `benchmarks/bench_kernels.py`.
#
# The timings below come from whatever machine runs the notebook, shared or not; the prose quotes no time, only
# what the printed numbers show.

# %%
import contextlib
import re
import sys
import timeit
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from threadpoolctl import threadpool_limits

import minidiff as md
from minidiff.info import report
from minidiff.kernels import StepCoefs, _cuda, sampler_step, sampler_step_ref
from minidiff.kernels.attention import (
    CUDA_VERSIONS,
    attention_backward,
    attention_backward_ref,
    attention_forward,
    attention_forward_ref,
)
from minidiff.kernels.conv2d import (
    conv2d_backward_ref,
    conv2d_forward,
    conv2d_forward_im2col,
    conv2d_forward_ref,
    conv2d_weight_grad_gemm,
    im2col,
    output_size,
    scatter_windows,
)
from minidiff.kernels.gemm import gemm, micro_kernels
from minidiff.kernels.online_softmax import attention_forward_tiled, logsumexp_online, online_softmax_update

FAST = md.fast_mode()  # MINIDIFF_FAST=1 (as in CI) shrinks every size and the number of timed runs
rng = np.random.default_rng(0)
if "cpp" not in md.available_backends():
    raise RuntimeError(f"chapter 11 measures the C++ kernels, and the extension is unavailable here: "
                       f"{md.backend.why_unavailable('cpp')} (its exercises need none: pytest --student -m ch11)")
HAS_EMU = md.backend.why_unavailable("cuda-emu") == ""
BENCHMARKS = Path.cwd().parent / "benchmarks"  # the notebook runs from notebooks/
sys.path.insert(0, str(BENCHMARKS))
from _timing import interleaved_medians  # the benchmarks' timing: contenders in turns, medians

REPEATS = 3 if FAST else 7


@contextlib.contextmanager
def one_thread():
    """minidiff's kernels and NumPy's BLAS on one thread: the roofline of one core."""
    before = md.get_num_threads()
    md.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        md.set_num_threads(before)


def show_source(relative: str, first: str) -> None:
    """Print a function (or struct) of csrc/`relative`: from the line holding `first` to its closing brace."""
    lines = (_cuda.csrc_dir() / relative).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    stop = next(i for i in range(start + 1, len(lines))
                if lines[i].strip() in ("}", "};") and len(lines[i]) - len(lines[i].lstrip()) == indent)
    print("\n".join(lines[start : stop + 1]))


# %% [markdown]
# ## 1. Backends and one kernel: the fused sampler step
#
# A *backend* decides which implementation runs the hot kernels: `numpy` (always there), `cpp` (the compiled
# extension `minidiff._C`, OpenMP threads) or `cuda` (CuPy on an NVIDIA GPU); `cuda-emu` runs the CUDA sources on
# the CPU, for tests (section 5). The default is the fastest available; `md.set_backend`, the `md.use_backend`
# context manager and the `MINIDIFF_BACKEND` environment variable choose another. `python -m minidiff info` says
# what is available here and why the rest is not.

# %%
print("available:", md.available_backends(), "  current:", md.get_backend(), "  cuda-emu:", HAS_EMU)
print(report())

# %% [markdown]
# Every step of the DDPM [E16] and DDIM [E32] samplers of chapters 03 and 06 has the same shape. Given the scalars
# of timestep $t$, computed once per step, the new sample is an affine combination of the current sample $x$, the
# network's output $\epsilon$ and fresh noise $z$:
#
# $$x_{\text{prev}} = c_x\,x + c_\epsilon\,\epsilon + c_z\,z .$$
#
# Optionally the implied clean image $\hat x_0 = r_x x + r_\epsilon \epsilon$ [E13] is clipped to $[-1, 1]$, which
# adds the term $c_{x_0}\,\mathrm{clip}(\hat x_0)$. NumPy evaluates the formula one operator at a time, writing a
# temporary array for each; the C++ and CUDA kernels read every input once and write the output once.
#
# The same form also *adds* noise: the forward marginal of chapter 02 [E3] is
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, that is $c_x = \sqrt{\bar\alpha_t}$ and
# $c_\epsilon = \sqrt{1-\bar\alpha_t}$. Data of variance $v$ must come out with variance
# $\bar\alpha_t v + (1 - \bar\alpha_t)$.

# %%
n = 20_000 if FAST else 2_000_000
x0 = rng.uniform(-1.0, 1.0, n)  # variance 1/3
alpha_bar = 0.3
xt = sampler_step(x0, rng.standard_normal(n), None, StepCoefs(c_x=np.sqrt(alpha_bar), c_eps=np.sqrt(1 - alpha_bar)))
expected_var = alpha_bar / 3.0 + (1.0 - alpha_bar)
print(f"variance of x_t: {xt.var():.4f}   expected: {expected_var:.4f}")
assert abs(xt.var() - expected_var) < 5 * expected_var * np.sqrt(2.0 / n)  # five standard errors

# %% [markdown]
# `sampler_step_ref` is the NumPy twin: the specification every other implementation must match (you write it in
# Exercise 11.4). The C++ kernel is compiled with `-march=native`, so it may fuse a multiply and an add into one
# rounding (FMA); its results then differ from NumPy's in the last bits, never more. Strided inputs give the same
# answer, and the output may be written over `x` itself, which is how a sampler loop avoids allocating every step.

# %%
x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
eps_model = rng.standard_normal(x.shape).astype(np.float32)
z = rng.standard_normal(x.shape).astype(np.float32)
clipped = StepCoefs(c_x=0.7, c_eps=-0.2, c_z=0.1, c_x0=0.3, r_x=1.2, r_eps=-0.6, clip=1.0)

twin = sampler_step_ref(x, eps_model, z, clipped, np.empty_like(x))
for name in md.available_backends() + (["cuda-emu"] if HAS_EMU else []):
    with md.use_backend(name):
        got = sampler_step(x, eps_model, z, clipped)
        transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, other strides
        strided = sampler_step(transposed, eps_model, z, clipped)
        in_place = x.copy()
        sampler_step(in_place, eps_model, z, clipped, out=in_place)
    worst = max(np.max(np.abs(r - twin)) for r in (got, strided, in_place))
    print(f"{name:>8}: max |difference| to the twin = {worst:.2e} (contiguous, strided, in place)")
    assert worst < 1e-5

# %% [markdown]
# Fusing saves memory traffic, not arithmetic: the NumPy twin writes and reads back a temporary for each operator
# (pen-and-paper problem 5 counts them), the kernel touches each array once. The ratio below, for the affine step,
# is measured in turns (each contender once, then again, medians of the runs), one thread each; on a shared
# machine it moves from run to run.

# %%
big = [rng.standard_normal(200_000 if FAST else 4_000_000).astype(np.float32) for _ in range(3)]
affine = StepCoefs(c_x=0.7, c_eps=-0.2, c_z=0.1)  # the step of pen-and-paper problem 5


def fused_step(backend):
    def run():
        with md.use_backend(backend):
            return sampler_step(*big, affine)
    return run


contenders = {name: fused_step(name) for name in md.available_backends()}
with one_thread():
    fused = interleaved_medians(contenders, repeats=REPEATS)
for name, seconds in fused.items():
    print(f"{name:>6}: {seconds * 1e3:7.3f} ms per step of {big[0].size} numbers   "
          f"({fused['numpy'] / seconds:4.1f}x NumPy's speed)")

# %% [markdown]
# Every kernel checks its arguments at the Python boundary and names the one that is wrong; the C++ side checks
# again what it relies on, so no input makes it read out of bounds.

# %%
for bad, error in ((lambda: sampler_step(x, eps_model.astype(np.float64), z, clipped), TypeError),
                   (lambda: sampler_step(x, eps_model[:1], z, clipped), ValueError)):
    try:
        bad()
    except error as err:
        print(f"{type(err).__name__}: {err}")
    else:
        raise AssertionError("bad input was accepted")

# %% [markdown]
# ## 2. GEMM: four versions on one roofline
#
# Every convolution and linear layer of the U-Net ends in a matrix product $C = AB$, $A$ of shape $m \times k$,
# $B$ of shape $k \times n$: *GEMM*, in BLAS's name. It does $mnk$ multiply-adds, $2mnk$ floating-point operations
# (FLOP). It must read $A$ and $B$ and write $C$ at least once: $4(mk + kn + mn)$ bytes in float32. The ratio of
# the two is the **arithmetic intensity** $I$, in FLOP per byte. For square matrices the best any implementation
# can do is
#
# $$I_{\max} = \frac{2n^3}{4 \cdot 3n^2} = \frac{n}{6},$$
#
# large for large $n$: each number brought in can serve many multiply-adds. Whether it does depends on the order
# of the loops. The **roofline** model (Williams, Waterman & Patterson 2009) bounds the speed of a kernel of
# intensity $I$ on a core with peak $P$ (FLOP/s) fed by a memory of bandwidth $\beta$ (bytes/s):
#
# $$\text{FLOP/s} \le \min(P,\ \beta I).$$
#
# Left of the *ridge point* $I = P/\beta$ a kernel waits for memory; right of it, for arithmetic. minidiff's
# `csrc/cpu/gemm.cpp` keeps four versions side by side; `md.kernels.gemm(a, b, version=v)` runs version $v$.
#
# **Version 1**, the textbook triple loop: one dot product per element of $C$.

# %%
show_source("cpu/gemm.cpp", "void gemm_v1_naive")

# %% [markdown]
# Its inner loop walks down a column of $B$, $k$ numbers $n$ apart in memory, each in a different cache line, and
# adds into one `sum`: every multiply-add waits for the one before it, and nothing is vectorized.
#
# **Version 2** swaps the two inner loops (order $i, p, j$). The inner loop now runs along a row of $B$ and a row
# of $C$, contiguous in memory, and its iterations are independent, so the compiler vectorizes it
# (`axpy_row`: $c_{i,:} \mathrel{+}= a_{ip}\,b_{p,:}$, eight floats per AVX2 instruction).

# %%
show_source("cpu/gemm.cpp", "void gemm_v2_ikj")

# %% [markdown]
# Same arithmetic, other order. But for every row $i$ of $C$ it streams the whole of $B$ once more: $mkn$ numbers
# of $B$ read for $mkn$ multiply-adds, 4 bytes per 2 FLOP, $I = 0.5$.
#
# **Version 3** blocks the loops so that a block of $B$ is reused while it is in cache: a $K_C \times N_C$ block of
# $B$ serves every row of an $M_C$-row block of $A$ before the next block is read.

# %%
show_source("cpu/gemm.cpp", "void gemm_v3_blocked")

# %% [markdown]
# **Version 4** is the design of Goto & van de Geijn (2008), as BLIS (Van Zee & van de Geijn 2015) organizes it:
# five loops around a *micro-kernel*. A $K_C \times N_C$ block of $B$ and an $M_C \times K_C$ block of $A$ are
# *packed*: copied once into the exact order the micro-kernel reads them, contiguous, so the innermost code never
# sees a stride or an edge. The micro-kernel then keeps an $M_R \times N_R$ tile of $C$ in registers for the whole
# depth $K_C$: per step $p$ it loads $M_R$ numbers of $A$ and $N_R$ of $B$ and does $M_R N_R$ multiply-adds.

# %%
show_source("cpu/gemm.cpp", "// --- v4")
print("...")
show_source("cpu/gemm_kernels.h", "struct PortableKernel")
kernel_info = {k["name"]: k for k in md.backend.extension().gemm_micro_kernels()}
for name, info in kernel_info.items():
    print(f"micro-kernel {name:>8}: float32 tile M_R x N_R = {info['float32_tile']}, "
          f"blocking (M_C, K_C, N_C) = {info['blocking']}")

# %% [markdown]
# The portable micro-kernel is the plain C++ above, vectorized by the compiler as it can; the `avx2` (and, where the
# CPU has it, `avx512`) ones are the same loops written with vector intrinsics, a $4 \times 24$ tile in twelve
# 256-bit registers for AVX2 (three more hold the row of $B$, one the broadcast of $A$: all sixteen in use).
#
# ### Counting the traffic
#
# Where does each version read its numbers from? Take a model with two memories: a slow one that holds the
# matrices, and the caches, too small for a whole matrix but large enough for the blocks a version asks for. A
# version that works on blocks of $M_C$ rows of $C$, $N_C$ columns and depth $K_C$ reads
#
# $$\begin{array}{rll}
# B: & kn\,\lceil m / M_C \rceil \text{ numbers} & \text{once for each block of } M_C \text{ rows of } C \\
# A: & mk\,\lceil n / N_C \rceil & \text{once for each block of } N_C \text{ columns} \\
# C: & 2\,mn\,\lceil k / K_C \rceil & \text{read and written once for each block of depth } K_C
# \end{array}$$
#
# from the slow memory. Version 2 is the case $M_C = 1$ (all of $B$ again for every row), $N_C = n$, $K_C = k$
# (a row of $C$ stays in cache while $p$ runs): $I \approx 0.5$. Version 1 moves as many numbers, though its
# column walk uses one number of each 64-byte cache line it fetches. Version 3 reads $B$ once per block of rows;
# version 4 reads $B$ once in all ($M_C = m$: the packed block of $B$ stays in cache while every block of $A$
# passes it), and $C$ once per $K_C$. The intensities, for the size measured here:

# %%
def v3_blocking() -> tuple[int, int, int]:
    """(M_C, N_C, K_C) of version 3, read from its constants in csrc/cpu/gemm.cpp."""
    text = (_cuda.csrc_dir() / "cpu" / "gemm.cpp").read_text()
    value = {name: int(re.search(rf"k{name} = (\d+)", text).group(1)) for name in ("V3RowBlock", "V3ColBlock",
                                                                                   "V3DepthBlock")}
    return value["V3RowBlock"], value["V3ColBlock"], value["V3DepthBlock"]


def traffic_bytes(m: int, n: int, k: int, mc: int, nc: int, kc: int) -> int:
    """Bytes between the slow memory and the caches for a float32 GEMM on blocks (mc rows, nc columns, kc deep)."""
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    return 4 * (k * n * ceil(m, mc) + m * k * ceil(n, nc) + 2 * m * n * ceil(k, kc))


N = 256 if FAST else 512
BLOCKS = {"v1 naive": (1, N, N), "v2 loops i-p-j": (1, N, N), "v3 blocked": v3_blocking()}
for name, info in kernel_info.items():
    mc, kc, nc = info["blocking"]
    BLOCKS[f"v4 packed, {name}"] = (N, nc, kc)  # B is packed once and serves every block of A
intensity = {name: 2 * N**3 / traffic_bytes(N, N, N, *blocks) for name, blocks in BLOCKS.items()}
for name, value in intensity.items():
    print(f"{name:>20}: blocks (M_C, N_C, K_C) = {BLOCKS[name]!s:>17}, I = {value:6.2f} FLOP/byte")
print(f"{'least possible':>20}: I = {N / 6:6.2f} FLOP/byte (n / 6, n = {N})")

# %% [markdown]
# ### Measuring the roof and the points
#
# The roof comes from two measurements made in this run, on one core:
#
# * the **peak** $P$: `minidiff._C.fma_peak` runs chains of independent fused multiply-adds on registers, with no
#   memory traffic at all, once with the vector instructions of the best micro-kernel and once with scalar ones
#   (one number per instruction). The best of several runs: another process on the core can only lower a run;
# * the **bandwidth** $\beta$: the bytes read and written per second by `np.copyto` between two arrays, once for
#   arrays far larger than any cache (main memory) and once for arrays the size of one matrix (the cache level
#   where the matrices of this size live).
#
# Each version is checked against float64 NumPy before it is timed, then all are timed in turns.

# %%
a = rng.standard_normal((N, N)).astype(np.float32)
b = rng.standard_normal((N, N)).astype(np.float32)
exact = a.astype(np.float64) @ b
outs = {name: np.empty((N, N), np.float32) for name in [*BLOCKS, "numpy"]}
gemms = {"v1 naive": lambda: gemm(a, b, outs["v1 naive"], version=1),
         "v2 loops i-p-j": lambda: gemm(a, b, outs["v2 loops i-p-j"], version=2),
         "v3 blocked": lambda: gemm(a, b, outs["v3 blocked"], version=3)}
for name in kernel_info:
    gemms[f"v4 packed, {name}"] = lambda name=name: gemm(a, b, outs[f"v4 packed, {name}"], version=4,
                                                          micro_kernel=name)
gemms["numpy"] = lambda: np.matmul(a, b, out=outs["numpy"])
for name, run in gemms.items():  # correctness before timing
    error = np.max(np.abs(run() - exact)) / np.max(np.abs(exact))
    assert error < 1e-5, f"{name} is wrong (relative error {error:.1e}): not timing it"

ext = md.backend.extension()
best_kernel = micro_kernels()[-1]


def fma_peak(kernel: str, rounds: int = 5) -> float:
    """GFLOP/s of independent FMA chains on one core, best of `rounds`."""
    return max(ext.fma_peak(kernel, "float32", 4_000_000, 1) for _ in range(rounds)) / 1e9


def copy_bandwidth(nbytes: int, rounds: int = 5) -> float:
    """GB/s read + written by np.copyto between two float32 arrays of nbytes each, best of `rounds`. Both are cut
    from one buffer, a fixed distance apart: with two separate allocations the rate varied tenfold between calls."""
    size = nbytes // 4
    buffer = np.ones(2 * size + 128, np.float32)
    src, dst = buffer[:size], buffer[size + 128 :]  # 512 bytes apart modulo the page
    copies = max(1, 2**27 // nbytes)  # enough copies per timing to dwarf the clock's resolution
    best = min(timeit.repeat(lambda: np.copyto(dst, src), number=copies, repeat=rounds))
    return 2 * nbytes * copies / best / 1e9


with one_thread():
    peak = {"vector": fma_peak(best_kernel), "scalar": fma_peak("portable")}
    seconds = interleaved_medians(gemms, repeats=REPEATS, warmup=1)
    peak["vector"] = max(peak["vector"], fma_peak(best_kernel))  # again after the GEMMs, in the same conditions
    bandwidth = {"main memory": copy_bandwidth(2**27 if FAST else 2**28), "one matrix": copy_bandwidth(4 * N * N)}
gflops = {name: 2 * N**3 / s / 1e9 for name, s in seconds.items()}
print(f"peak, {best_kernel} FMAs: {peak['vector']:.1f} GFLOP/s; scalar FMAs: {peak['scalar']:.1f} GFLOP/s")
print("copy bandwidth: " + ", ".join(f"{where} {gbs:.1f} GB/s" for where, gbs in bandwidth.items()))


def roof(i: float, beta: float) -> float:
    """The roofline's bound min(P, beta I), in GFLOP/s, for beta in GB/s."""
    return min(peak["vector"], beta * i)


for name, value in gflops.items():
    line = f"{name:>20}: {value:7.2f} GFLOP/s = {100 * value / peak['vector']:5.1f}% of the peak"
    if name in intensity:
        line += f", {100 * value / roof(intensity[name], bandwidth['one matrix']):5.1f}% of the roof at its I"
    print(line)
assert gflops[f"v4 packed, {best_kernel}"] > 2 * gflops["v2 loops i-p-j"] > 4 * gflops["v1 naive"]
assert gflops["v1 naive"] < peak["scalar"] < min(gflops[f"v4 packed, {name}"] for name in kernel_info)

# %%
fig, ax = plt.subplots(figsize=(9.5, 5.6))
I = np.logspace(-1, np.log10(300), 200)
ax.plot(I, [roof(i, bandwidth["one matrix"]) for i in I], color="k", lw=2,
        label=f"roof: {best_kernel} FMA peak; copy bandwidth, arrays of one matrix's size")
ax.plot(I, [roof(i, bandwidth["main memory"]) for i in I], color="k", lw=1, ls=":",
        label="roof with the main-memory copy bandwidth")
ax.axhline(peak["scalar"], color="0.4", lw=1, ls="--", label="scalar FMAs (one number per instruction)")
ax.axhline(gflops["numpy"], color="tab:gray", lw=1, ls="-.", label="NumPy's BLAS (its traffic is not modelled)")
colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(BLOCKS)}
for name in BLOCKS:  # each point is labelled where it stands
    ax.plot(intensity[name], gflops[name], "o", ms=9, color=colors[name])
    ax.annotate(name, (intensity[name], gflops[name]), textcoords="offset points", xytext=(8, -4), fontsize=9)
ax.axvline(N / 6, color="tab:green", lw=1, ls=":", label=f"least possible traffic, I = n/6 (n = {N})")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("arithmetic intensity I (FLOP per byte of slow-memory traffic, the model above)")
ax.set_ylabel("GFLOP/s (measured, one core)")
ax.set_title(f"Roofline of one core: GEMM {N} x {N} x {N}, float32")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read it: a point under the sloped part is held back by memory traffic (its model intensity is too low);
# a point under the flat part by arithmetic; a point far below both, by something the model leaves out. The
# printed "% of the roof" says how much of its bound each version reaches.
#
# * **Version 1** lies below even the scalar line (asserted above): its single running `sum` makes each
#   multiply-add wait for the previous one to finish, a latency of several cycles, while the peak needs many
#   independent ones in flight. No amount of bandwidth would help it.
# * **Versions 2 and 3** share an inner loop, vectorized, that reads a number of $B$ (and reads and writes one of
#   $C$) per multiply-add. Version 3's blocks are sized for the second-level cache; in the model they raise its
#   intensity, but when the whole of $B$ already fits in that cache (at the fast mode's size it may) the blocks
#   have nothing to save: compare the two printed speeds, and version 3's point with its roof.
# * **Version 4** runs above the scalar line (asserted), which no code without vector instructions can pass:
#   after packing, the micro-kernel loads $M_R + N_R$ numbers per $M_R N_R$ multiply-adds, all from the first-level
#   cache, and keeps the vector units busy. The portable micro-kernel, vectorized by the compiler alone, passes the
#   line too. The printed percentage of the peak says how close the best one comes; NumPy's BLAS (OpenBLAS, the
#   same design) is the line to compare with.
#
# The points of versions 1-3 may sit above the dotted main-memory roof: at this size the matrices live in a cache,
# whose bandwidth the solid roof uses. The model counts numbers, not cache lines, and ignores latency; it says
# which resource bounds a loop, not its exact speed.

# %% [markdown]
# ## 3. Convolution as GEMM: im2col and implicit GEMM
#
# A convolution (a cross-correlation, as every deep-learning library computes it) of $x$ of shape $(N, C, H, W)$
# with a weight of shape $(O, C, K_H, K_W)$, stride $(s_h, s_w)$ and zero padding $(p_h, p_w)$ is
#
# $$\text{out}[n, o, y, x] = \sum_{c, i, j} x_{\text{pad}}[n, c, y s_h + i, x s_w + j]\ W[o, c, i, j].$$
#
# Chellapilla, Puri & Simard (2006) turned it into a matrix product. Lay the window under each output pixel
# $(y, x)$ out as one column, in the order $(c, i, j)$ of the weight's last three axes:
#
# $$\text{cols}[n, (c K_H + i) K_W + j,\ y W_O + x] = x_{\text{pad}}[n, c, y s_h + i, x s_w + j]$$
#
# Then the sum over $(c, i, j)$ is a dot product of a row of the weight, reshaped to $O \times C K_H K_W$, with a
# column: $\text{out}_n = W \cdot \text{cols}_n$, one GEMM per image, with $m = O$, $k = C K_H K_W$,
# $n = H_O W_O$. Writing `im2col` is Exercise 11.1. Here it is on an image whose pixels hold their own numbers, so
# that each entry of the columns shows where it was read (0 is padding):

# %%
image = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # pixel numbers 1..16
cols = im2col(image, (3, 3), (1, 1), (1, 1))[0]  # (C KH KW, HO WO) = (9, 16)
padded = np.pad(image[0, 0], 1)
pick = (1, 2)  # the output pixel whose window is highlighted
column = pick[0] * 4 + pick[1]

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2.3]})
palette = plt.get_cmap("tab20")
for ax, grid in ((left, padded), (right, cols)):
    colors_rgb = np.array([[(0.92, 0.92, 0.92) if v == 0 else palette((int(v) - 1) % 20)[:3] for v in row]
                           for row in grid])
    ax.imshow(colors_rgb)
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, f"{int(v)}", ha="center", va="center", fontsize=9)
left.add_patch(Rectangle((pick[1] - 0.5, pick[0] - 0.5), 3, 3, fill=False, lw=3, ec="k"))
right.add_patch(Rectangle((column - 0.5, -0.5), 1, 9, fill=False, lw=3, ec="k"))
left.set_title("x padded by 1 (pixel numbers; 0 = padding)\n3 x 3 window of output pixel (y, x) = (1, 2)")
left.set_xlabel("column of x_pad")
left.set_ylabel("row of x_pad")
right.set_title(f"im2col(x): one column per output pixel; column {column} $= y W_O + x$ holds that window")
right.set_xlabel("column: output pixel $y\\,W_O + x$")
right.set_ylabel("row $(c, i, j)$: channel, kernel offset")
right.set_yticks(range(9), [f"(0,{i},{j})" for i in range(3) for j in range(3)])
plt.tight_layout()
plt.show()
assert np.array_equal(cols[:, column].reshape(3, 3), padded[pick[0] : pick[0] + 3, pick[1] : pick[1] + 3])

# %% [markdown]
# The product is the convolution: `conv2d_forward_im2col` is `W.reshape(O, -1) @ im2col(x)`. It agrees with the
# NumPy twin (windows contracted by `tensordot`) and with the C++ kernel, on strides and paddings that differ per
# axis:

# %%
x_img = rng.standard_normal((4, 8, 13, 11)).astype(np.float32)
weight = rng.standard_normal((6, 8, 3, 2)).astype(np.float32)
for stride, padding in (((1, 1), (1, 1)), ((2, 1), (0, 2))):
    by_gemm = conv2d_forward_im2col(x_img, weight, stride, padding)
    twin = conv2d_forward_ref(x_img, weight, stride, padding)
    with md.use_backend("cpp"):
        by_cpp = conv2d_forward(x_img, weight, stride, padding)
    print(f"stride {stride}, padding {padding}: out {by_gemm.shape}, |W @ cols - twin| = "
          f"{np.abs(by_gemm - twin).max():.1e}, |C++ - twin| = {np.abs(by_cpp - twin).max():.1e}")
    assert np.allclose(by_gemm, twin, atol=1e-4)

# %% [markdown]
# The price is memory. Each pixel is copied into every window that covers it, about $K_H K_W / (s_h s_w)$ times.
# For a 3x3 convolution of the U-Net's first level:

# %%
n_img, c_img, side = 64, 64, 32
x_bytes = 4 * n_img * c_img * side * side
cols_bytes = 4 * n_img * c_img * 9 * output_size(side, 3, 1, 1) ** 2
print(f"x (64, 64, 32, 32): {x_bytes / 2**20:.0f} MiB; its columns for a 3x3 kernel, stride 1: "
      f"{cols_bytes / 2**20:.0f} MiB ({cols_bytes / x_bytes:.0f}x)")
assert cols_bytes == 9 * x_bytes

# %% [markdown]
# **Implicit GEMM** never writes the columns down. The GEMM only ever needs a small tile of `cols` at a time (in
# version 4, the sliver it packs), and the address of any entry follows from its row $(c, i, j)$ and column
# $(y, x)$: a loader can read the tile straight from the image. cuDNN's implicit-GEMM convolutions (Chetlur et al.
# 2014) and CUTLASS work this way. The NumPy form of the idea: for each kernel offset $(i, j)$, the rows of `cols`
# with that offset are a strided *view* of the padded image (no copy), and the product splits into $K_H K_W$
# products that add up:
#
# $$\text{out}_n = \sum_{i, j} W[:, :, i, j] \cdot x_{\text{pad}}[n, :, i :: s_h, j :: s_w] .$$
#
# minidiff's C++ kernel takes this route for "same" convolutions with stride 1 (every 3x3 of the U-Net but the
# downsampling ones): it hands the packed GEMM a table of row pointers into shifted copies of the image
# (`csrc/cpu/conv2d.cpp`), and im2col, in chunks that fit in cache, elsewhere.

# %%
def conv2d_implicit(x, weight, stride, padding):
    """The convolution as K_H K_W GEMMs over strided views of the padded image: the columns are never written."""
    (kh, kw), (sh, sw), (ph, pw) = weight.shape[2:], stride, padding
    ho, wo = output_size(x.shape[2], kh, sh, ph), output_size(x.shape[3], kw, sw, pw)
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((x.shape[0], weight.shape[0], ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = x_pad[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]  # (N, C, HO, WO), a view
            out += np.einsum("oc,nchw->nohw", weight[:, :, i, j], rows)
    return out


implicit = conv2d_implicit(x_img, weight, (2, 1), (0, 2))
twin = conv2d_forward_ref(x_img, weight, (2, 1), (0, 2))
print(f"implicit GEMM against the twin: {np.abs(implicit - twin).max():.1e}")
assert np.allclose(implicit, twin, atol=1e-4)

# %% [markdown]
# ### The backward pass is two more products
#
# With $\text{out}[n, o, p] = \sum_r W[o, r]\,\text{cols}[n, r, p]$ ($r$ runs over $(c, i, j)$, $p$ over output
# pixels) and $G = \partial L / \partial\,\text{out}$, the chain rule gives, line by line:
#
# $$\begin{array}{rll}
# \dfrac{\partial L}{\partial W[o, r]}
#   &= \sum_{n, p} G[n, o, p]\ \dfrac{\partial\, \text{out}[n, o, p]}{\partial W[o, r]}
#   & \text{chain rule; } W[o, r] \text{ enters only row } o \\
# &= \sum_{n, p} G[n, o, p]\ \text{cols}[n, r, p] & \text{out is linear in } W \\
# &= \big(G_{\text{mat}}\ \text{cols}_{\text{mat}}^{\top}\big)[o, r]
#   & G_{\text{mat}}: O \times N H_O W_O,\ \ \text{cols}_{\text{mat}}: C K_H K_W \times N H_O W_O
# \end{array}$$
#
# One GEMM over every output pixel of every image (Exercise 11.3). The gradient of the input goes the other way:
# $\partial L / \partial\,\text{cols}_n = W^\top G_n$, then each entry is added back onto the pixel it was read
# from (*col2im*, the adjoint of im2col: `scatter_windows`, Exercise 1.5).

# %%
grad_out = rng.standard_normal(conv2d_forward_ref(x_img, weight, (2, 1), (0, 2)).shape).astype(np.float32)
cols_x = im2col(x_img, weight.shape[2:], (2, 1), (0, 2))  # (N, C KH KW, HO WO)
grad_w = conv2d_weight_grad_gemm(grad_out, cols_x, weight.shape)
grad_cols = weight.reshape(weight.shape[0], -1).T @ grad_out.reshape(*grad_out.shape[:2], -1)  # (N, C KH KW, HO WO)
n_, c_, (kh_, kw_), (ho_, wo_) = *x_img.shape[:2], weight.shape[2:], grad_out.shape[2:]
grad_x = scatter_windows(grad_cols.reshape(n_, c_, kh_, kw_, ho_, wo_).transpose(0, 1, 4, 5, 2, 3), x_img.shape,
                         (2, 1), (0, 2))
twin_x, twin_w = conv2d_backward_ref(grad_out, x_img, weight, (2, 1), (0, 2))
print(f"grad_W = G cols^T against the twin: {np.abs(grad_w - twin_w).max():.1e};  "
      f"grad_x = col2im(W^T G): {np.abs(grad_x - twin_x).max():.1e}")
assert np.allclose(grad_w, twin_w, atol=1e-3) and np.allclose(grad_x, twin_x, atol=1e-4)

# %% [markdown]
# ## 4. Attention without the $L \times L$ matrix: the online softmax
#
# Attention [E45] computes, for each query $q_i$, the scores $s_{ij} = q_i \cdot k_j / \sqrt d$ against every key,
# their softmax $p_{ij}$, and $o_i = \sum_j p_{ij} v_j$. The NumPy twin builds the $L_q \times L_k$ matrix of
# probabilities and keeps it for the backward. At a 64x64 latent ($L = 4096$ tokens) that is, per head and per
# image:

# %%
L = 64 * 64
print(f"L x L float32 probabilities for L = {L}: {4 * L * L / 2**20:.0f} MiB per head and image; "
      f"one log-sum-exp per query instead: {4 * L / 2**10:.0f} KiB")

# %% [markdown]
# The softmax needs the whole row before it can normalize: $p_j = e^{s_j} / \sum_i e^{s_i}$. And $e^{s}$ overflows
# float32 past $s \approx 88$, so every implementation subtracts the row's max $m$ first, which multiplies the
# numerator and the denominator by the same $e^{-m}$: $p_j = e^{s_j - m} / \sum_i e^{s_i - m}$. Milakov &
# Gimelshein (2018) showed that the max and the sum can be built together, in one pass over blocks of the row.
#
# After some scores of the row, keep two numbers: the max so far $m$, and the sum *relative to it*
# $\ell = \sum_{i \text{ seen}} e^{s_i - m}$. A new block $B$ of scores arrives; let
# $m' = \max(m, \max_{j \in B} s_j)$. Then
#
# $$\begin{array}{rll}
# \ell' &= \sum_{i \text{ seen}} e^{s_i - m'} + \sum_{j \in B} e^{s_j - m'}
#   & \text{the definition of } \ell \text{, at the new max} \\
# &= \sum_{i \text{ seen}} e^{s_i - m}\, e^{m - m'} + \sum_{j \in B} e^{s_j - m'} & e^{a - c} = e^{a - b}\, e^{b - c} \\
# &= e^{m - m'}\ \sum_{i \text{ seen}} e^{s_i - m} + \sum_{j \in B} e^{s_j - m'}
#   & \text{the factor does not depend on } i \\
# &= \ell\, e^{m - m'} + \sum_{j \in B} e^{s_j - m'} & \text{the definition of } \ell
# \end{array}$$
#
# Each line is an identity, so the rescaling by $e^{m - m'}$ is exact: no approximation enters, only floating-point
# rounding. Every exponent is $\le 0$, so no term overflows, and $\ell \ge 1$ (the max's own term is $e^0$). At
# the end of the row,
#
# $$\log \sum_j e^{s_j} = m + \log \ell \quad (\text{the log-sum-exp, lse}), \qquad p_j = e^{s_j - \text{lse}} .$$
#
# Writing the update is Exercise 11.2 (`online_softmax_update`). A masked score is $-\infty$; while a row has seen
# nothing else, $m = -\infty$ and $e^{s - m}$ would be $e^{-\infty + \infty}$, so the terms are taken relative to
# 0 until a finite score arrives. Here is one row read in blocks of 4. The max jumps when a block holds a larger
# score, and at that moment the sum so far is multiplied by $e^{m - m'} < 1$ (the printed rescale factors: 0 for
# the first block, whose predecessor is the empty sum, 1 when the max stays). $\ell\,e^{m - m_{\text{final}}}$,
# the same sums measured against the final max, only grows:

# %%
row = np.concatenate([rng.normal(0, 1, 8), rng.normal(2, 1, 8), rng.normal(1, 1, 8), rng.normal(4, 1, 8)])
block = 4
m_run, l_run = np.array(-np.inf), np.array(0.0)
history = []
for start in range(0, row.size, block):
    m_run, l_run, rescale, _ = online_softmax_update(m_run, l_run, row[start : start + block])
    history.append((start + block, float(m_run), float(l_run), float(rescale)))
read, ms, ls, rescales = map(np.array, zip(*history, strict=True))
lse_direct = row.max() + np.log(np.sum(np.exp(row - row.max())))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.stem(np.arange(1, row.size + 1), row, basefmt=" ", linefmt="0.7", markerfmt="o", label=r"scores $s_j$")
ax1.hlines(ms, read - block + 0.5, read + 0.5, color="tab:red", lw=2.5, label=r"running max $m$ after each block")
for edge in read[:-1]:
    ax1.axvline(edge + 0.5, color="0.85", lw=0.8)
ax1.set_xlabel("scores read (blocks of 4)")
ax1.set_ylabel("score")
ax1.set_title("One row of scores and the running max")
ax1.legend(fontsize=8)
ax2.plot(read, ls, "o-", color="tab:blue", label=r"running sum $\ell$ (relative to the running max $m$)")
ax2.plot(read, ls * np.exp(ms - ms[-1]), "s--", color="tab:green",
         label=r"$\ell\,e^{m - m_{final}}$: the same sum against the final max")
ax2.set_yscale("log")
ax2.set_xlabel("scores read (blocks of 4)")
ax2.set_ylabel(r"$\ell$ (log scale)")
ax2.set_title("The running sum, rescaled when the max grows")
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"lse online: {ms[-1] + np.log(ls[-1]):.12f}   direct: {lse_direct:.12f}")
print(f"rescale factors exp(m - m') at each block: {np.round(rescales, 4)}")
assert abs(ms[-1] + np.log(ls[-1]) - lse_direct) < 1e-12
assert np.all(np.diff(ls * np.exp(ms - ms[-1])) > 0)

# %% [markdown]
# Nothing depends on how the row is cut: reading it in blocks of 1, 7 or all at once, or in another order, gives
# the same log-sum-exp up to rounding.

# %%
lses = {size: float(logsumexp_online(row, size)) for size in (1, 7, row.size)}
lses["shuffled, blocks of 5"] = float(logsumexp_online(rng.permutation(row), 5))
print({k: f"{v:.12f}" for k, v in lses.items()})
assert max(lses.values()) - min(lses.values()) < 1e-12

# %% [markdown]
# ### FlashAttention: tiles, and the log-sum-exp for the backward
#
# Attention adds one accumulator per query, the unnormalized output $a = \sum_{j \text{ seen}} e^{s_j - m} v_j$. It
# is a sum relative to $m$ like $\ell$, so the same factor moves it to the new max:
#
# $$a' = a\, e^{m - m'} + \sum_{j \in B} e^{s_j - m'} v_j, \qquad o = a / \ell \text{ at the end.}$$
#
# FlashAttention (Dao, Fu, Ermon, Rudra & Ré 2022) computes attention this way, tile by tile of queries and keys,
# in the GPU's on-chip memory: only a tile of scores ever exists, never the $L_q \times L_k$ matrix, and the main
# memory no longer sees $L^2$ numbers written and read back: $K$ and $V$ are read once per tile of queries (Dao et
# al. count $O(L^2 d^2 / M)$ accesses for an on-chip memory of $M$ numbers, against $O(Ld + L^2)$ for the
# standard implementation). For the backward it keeps one number
# per query, the lse, and recomputes any probability from it, $p_{ij} = e^{s_{ij} - \text{lse}_i}$, tile by tile.
# FlashAttention-2 (Dao 2023) reorders the loops (queries outside, keys inside, the division by $\ell$ once at
# the end) and splits the work across more threads. `attention_forward_tiled` is the NumPy form of the forward: it
# reads `block_size` keys at a time and returns `(out, lse)`.

# %%
q = rng.standard_normal((2, 4, 48, 16))  # (batch, heads, Lq, d)
k = rng.standard_normal((2, 4, 80, 16))
v = rng.standard_normal((2, 4, 80, 16))
mask = rng.random((48, 80)) < 0.8
mask[5] = False  # a query with nothing to attend: NaN, as in the twin
out_twin, probs_twin = attention_forward_ref(q, k, v, mask, 0.25)
for size in (1, 16, 33, 80):
    out_tiled, lse = attention_forward_tiled(q, k, v, mask, 0.25, size)
    same_nan = np.array_equal(np.isnan(out_tiled), np.isnan(out_twin))
    print(f"blocks of {size:>2} keys: max |tiled - twin| = {np.nanmax(np.abs(out_tiled - out_twin)):.1e}, "
          f"NaN where the twin has NaN: {same_nan}")
    assert same_nan and np.nanmax(np.abs(out_tiled - out_twin)) < 1e-12
scores = np.where(mask, q @ np.swapaxes(k, -1, -2) * 0.25, -np.inf)
with np.errstate(invalid="ignore"):
    recomputed = np.exp(scores - lse[..., None])  # the backward's probabilities, from lse alone
print(f"P recomputed from the lse against the twin's stored P: {np.nanmax(np.abs(recomputed - probs_twin)):.1e}; "
      f"kept for the backward: {lse.size} numbers instead of {probs_twin.size}")
assert np.nanmax(np.abs(recomputed - probs_twin)) < 1e-12

# %% [markdown]
# The compiled kernels keep exactly this lse. `attention_forward` returns what the backward needs: the NumPy twin
# keeps the probabilities, the C++ kernel (query tiles of the online softmax in `csrc/cpu/attention.cpp`) and the
# CUDA kernels (one warp per query row, its max and sum reduced by warp shuffles in `csrc/cuda/attention.cu`, run
# here on the emulator) keep only the lse. Their lse and outputs agree with the tiled NumPy forward above.

# %%
for name in [b for b in ("cpp", "cuda-emu") if md.backend.why_unavailable(b) == ""]:
    with md.use_backend(name):
        result = attention_forward(q, k, v, mask, 0.25)
    with np.errstate(invalid="ignore"):  # the fully masked row: lse = -inf in both, and -inf - (-inf) is NaN
        lse_gap = np.nanmax(np.abs(result.lse - lse))
    out_gap = np.nanmax(np.abs(result.out - out_twin))
    print(f"{name:>8}: probabilities kept: {result.probs is not None}; max |lse - tiled lse| = {lse_gap:.1e}; "
          f"max |out - twin| = {out_gap:.1e}; NaN rows as the twin: "
          f"{np.array_equal(np.isnan(result.out), np.isnan(out_twin))}")
    assert result.probs is None and lse_gap < 1e-10 and out_gap < 1e-10

# %% [markdown]
# The backward recomputes each $p_{ij} = e^{s_{ij} - \text{lse}_i}$ where it needs it. So that no two threads add
# into the same number (no atomics, the same result on every run), the CUDA backward makes two passes that each own
# what they write: a query-major one for $dQ$ and a key-major one for $dK$ and $dV$, each recomputing the
# probabilities and $dS$. Both come in the forward's two versions: in version 1 a warp per row reads the other
# side's rows from main memory; in version 2 a block of four warps takes four rows (query rows for the forward and
# $dQ$, key rows for $dK$ and $dV$) and stages the other side 32 rows at a time in shared memory, once for all four:
# keys and values, or queries and their upstream gradients $dO$. A query with no key would make its whole batch
# element's $dK$ and $dV$ NaN (its probabilities are $0/0$), so here every query keeps a key.

# %%
if HAS_EMU:
    mask_b = mask.copy()
    mask_b[5, 0] = True  # the fully masked query now attends to key 0
    grad_out = rng.standard_normal(out_twin.shape)
    grads_twin = attention_backward_ref(grad_out, q, k, v, attention_forward_ref(q, k, v, mask_b, 0.25)[1], 0.25)
    with md.use_backend("cuda-emu"):
        for version in CUDA_VERSIONS:
            result = attention_forward(q, k, v, mask_b, 0.25, version=version)
            grads = attention_backward(grad_out, q, k, v, mask_b, result, 0.25, version=version)
            gaps = [np.max(np.abs(g - t)) for g, t in zip(grads, grads_twin, strict=True)]
            print(f"CUDA version {version} on the emulator: max |grad - twin| for dQ, dK, dV = "
                  + ", ".join(f"{gap:.1e}" for gap in gaps))
            assert max(gaps) < 1e-10

# %% [markdown]
# ## 5. The CUDA thread hierarchy, on the emulator
#
# A CUDA kernel is one function run by many threads. A launch names a **grid** of **blocks** and the number of
# **threads** per block; each thread finds its work from `blockIdx`, `threadIdx`, `blockDim` and `gridDim`. The
# hardware runs a block on one streaming multiprocessor, in **warps** of 32 threads that execute the same
# instruction together. Threads of one block share a small, fast **shared memory** (`__shared__`) and can wait
# for each other at a barrier, `__syncthreads()`; blocks cannot wait for each other, and may run in any order.
# (NVIDIA's *CUDA C++ Programming Guide* describes the model; Kirk & Hwu's *Programming Massively Parallel
# Processors* teaches it.)
#
# No GPU is needed to see this. `cuda-emu` compiles the very `.cu` files of `csrc/cuda/` with g++ under a header
# of minidiff's own (`csrc/include/minidiff/cuda_emu.h`): blocks run one after another; the threads of a block
# are *fibers*, each with its own stack, and the emulator switches from one to the next whenever a thread reaches
# `__syncthreads()`, so a barrier is kept exactly: no thread passes it before all have arrived. Lanes are grouped
# into warps of 32 for the warp intrinsics (`__shfl_sync`, `__shfl_xor_sync`, `__ballot_sync`, `__syncwarp`),
# `__shared__` arrays (static or sized at launch) belong to the running block, and `atomicAdd` is there for
# reductions across blocks. A kernel whose threads wait for each other forever, or that calls `__syncthreads()`
# from only part of a block, stops with an error naming the block, where a GPU would hang or silently compute
# garbage. It checks indexing, tiling and synchronization, not speed. Which waiting thread goes on first is the
# emulator's choice: by default every ready thread runs to its next barrier or warp intrinsic in turn, while
# `_cuda.emulator_schedule("run_ahead")` lets a warp run on to the next barrier before the other warps start, so
# that a warp overwriting shared memory another has yet to read gives a wrong result (the tests run both ways).
# `minidiff.kernels._cuda.launch` takes the same grid, block and arguments on a GPU and on the emulator.
#
# The sampler step kernel gives each thread every `gridDim.x * blockDim.x`-th element, a *grid-stride loop*, so
# any grid covers any $n$:

# %%
show_source("cuda/sampler_step.cu", "__global__ void sampler_step_kernel")

# %% [markdown]
# Below it runs on the emulator with a tiny launch, 3 blocks of 4 threads for 30 numbers, into an output filled
# with NaN first: every element must be written. The figure draws which thread handled what, from
# the kernel's index arithmetic.

# %%
grid, block, n_small = (3,), (4,), 30
xs, es = rng.standard_normal(n_small).astype(np.float32), rng.standard_normal(n_small).astype(np.float32)
emu_coefs = StepCoefs(c_x=0.9, c_eps=-0.4)
if HAS_EMU:
    result = np.full(n_small, np.nan, np.float32)
    scalars = (emu_coefs.c_x, emu_coefs.c_eps, 0, 0, 0, 0, 0)  # c_x, c_eps, c_z, c_x0, r_x, r_eps, clip
    args = (xs, es, xs, result, np.int64(n_small), *map(np.float32, scalars), np.int32(0), np.int32(0))  # no z, no clip
    _cuda.launch("cuda-emu", "sampler_step.cu", "sampler_step_kernel<float>", grid, block, args, writes=(3,))
    gap = np.max(np.abs(result - sampler_step_ref(xs, es, None, emu_coefs, np.empty_like(xs))))
    print(f"emulated launch {grid} x {block} over {n_small} numbers: max |difference| to the twin = {gap:.1e}")
    assert gap < 1e-6  # no NaN left: every element written
else:
    print("cuda-emu is not built here:", md.backend.why_unavailable("cuda-emu"))

threads_total = grid[0] * block[0]  # element i goes to global thread i mod threads_total, on pass i // threads_total
passes = -(-n_small // threads_total)

fig, ax = plt.subplots(figsize=(11, 2.9))
block_colors = ["tab:blue", "tab:orange", "tab:green"]
for i in range(passes * threads_total):
    g, p = i % threads_total, i // threads_total
    b_id, t_id = divmod(g, block[0])
    done = i < n_small
    ax.add_patch(Rectangle((g, -p - 1), 1, 1, fc=block_colors[b_id] if done else "white", alpha=0.35 + 0.15 * t_id,
                           ec="k"))
    ax.text(g + 0.5, -p - 0.5, f"{i}" if done else "idle", ha="center", va="center", fontsize=9)
for b_id in range(grid[0]):
    ax.text(b_id * block[0] + block[0] / 2, 0.35, f"block {b_id}", ha="center", fontsize=10, color=block_colors[b_id])
ax.set_xlim(0, threads_total)
ax.set_ylim(-passes, 0.8)
ax.set_xticks(np.arange(threads_total) + 0.5, [f"t{t}" for t in range(block[0])] * grid[0])
ax.set_yticks(-np.arange(passes) - 0.5, [f"pass {p}" for p in range(passes)])
ax.set_xlabel("threadIdx.x within each block (global id = blockIdx.x * blockDim.x + threadIdx.x)")
ax.set_ylabel("loop pass")
ax.set_title("Grid-stride loop: each cell is the element a thread handles on each pass (stride = 3 x 4 = 12)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Shared memory and `__syncthreads()` appear in the row-sum kernel, the pattern of every normalization (group norm
# statistics, softmax denominators): each thread first sums every `blockDim.x`-th number of its row, then the
# block adds the partial sums pairwise in shared memory, halving the active threads at each level, with a barrier
# between levels so that no thread reads a partial sum before it is written.

# %%
show_source("cuda/block_reduce.cu", "__global__ void row_sum_kernel")

# %% [markdown]
# The order of float32 additions is set by the thread hierarchy, so it can be checked bit for bit. The function
# below adds in the order the kernel's threads do; it reproduces the emulator's sums exactly, while NumPy's and a
# left-to-right sum round differently on some rows.

# %%
def row_sum_in_thread_order(row: np.ndarray, threads: int) -> np.float32:
    """row_sum_kernel's additions for one row, in float32: thread t adds row[t], row[t + threads], ...; then the
    tree: at each level thread t < half adds partial[t + half] to partial[t]."""
    partial = np.zeros(threads, np.float32)
    for t in range(threads):
        for j in range(t, row.size, threads):
            partial[t] = partial[t] + row[j]
    half = threads // 2
    while half:
        partial[:half] = partial[:half] + partial[half : 2 * half]  # one level; then __syncthreads()
        half //= 2
    return partial[0]


reduce_threads, cols_n = 8, 20
rows_x = (rng.standard_normal((64, cols_n)) * 10.0 ** rng.uniform(-3, 3, (64, cols_n))).astype(np.float32)
ours = np.array([row_sum_in_thread_order(r, reduce_threads) for r in rows_x])
left_to_right = np.array([np.cumsum(r, dtype=np.float32)[-1] for r in rows_x])
print(f"rows where a left-to-right float32 sum differs from the thread order: "
      f"{np.count_nonzero(left_to_right != ours)} of {len(rows_x)}")
if HAS_EMU:
    emulated = np.empty(len(rows_x), np.float32)
    _cuda.launch("cuda-emu", "block_reduce.cu", "row_sum_kernel<float>", (5,), (reduce_threads,),
                 (rows_x, emulated, np.int64(len(rows_x)), np.int64(cols_n)), writes=(1,))
    print(f"emulator == thread-order sum, bit for bit, on all {len(rows_x)} rows: {np.array_equal(emulated, ours)}")
    assert np.array_equal(emulated, ours)
assert np.count_nonzero(left_to_right != ours) > 0

# %%
fig, ax = plt.subplots(figsize=(11, 4.6))
thread_colors = plt.get_cmap("tab10")
for j in range(cols_n):  # the row, colored by the thread that reads each number
    ax.add_patch(Rectangle((j, 4), 1, 0.8, fc=thread_colors(j % reduce_threads), alpha=0.6, ec="k"))
    ax.text(j + 0.5, 4.4, f"x{j}", ha="center", va="center", fontsize=8)
width = cols_n / reduce_threads
levels = int(np.log2(reduce_threads))
for level in range(levels + 1):
    active = reduce_threads >> level
    y = 2.8 - level * 0.9
    for t in range(active):
        ax.add_patch(Rectangle((t * width + 0.1, y), width - 0.2, 0.6, fc=thread_colors(t), alpha=0.6, ec="k"))
        ax.text(t * width + width / 2, y + 0.3, f"partial[{t}]", ha="center", va="center", fontsize=8)
        if level == 0:
            for j in range(t, cols_n, reduce_threads):
                ax.plot([j + 0.5, t * width + width / 2], [4, y + 0.6], color=thread_colors(t), lw=0.6)
        else:
            for src in (t, t + active):
                ax.plot([src * width + width / 2, t * width + width / 2], [y + 0.9, y + 0.6], color="0.3", lw=0.8)
    note = ("each thread's strided sum; __syncthreads()" if level == 0 else
            f"level {level}: partial[t] += partial[t + {active}]; __syncthreads()")
    ax.text(cols_n + 0.3, y + 0.3, note + ("\nthread 0 writes out[row]" if active == 1 else ""), va="center",
            fontsize=9)
ax.set_xlim(0, cols_n + 7.5)
ax.set_ylim(2.8 - levels * 0.9 - 0.2, 5)
ax.axis("off")
ax.set_title(f"row_sum_kernel with blockDim.x = {reduce_threads}: strided partial sums, then a tree in shared memory")
plt.tight_layout()
plt.show()

# %% [markdown]
# On a GPU the same loops get their speed from the hierarchy: a block stages a tile of $A$ and $B$ in shared
# memory (each number loaded once, used by many threads), each thread keeps a small tile of $C$ in registers, and
# the warps of many blocks hide each other's memory latency. It is version 4's blocking with shared memory in the
# role of the cache and the thread's registers in the role of the micro-kernel's. `csrc/cuda/gemm.cu` keeps four
# versions side by side: one thread per element of $C$ reading global memory (1); $16 \times 16$ tiles of $A$ and
# $B$ staged in shared memory (2); $64 \times 64$ tiles of $C$ with a $4 \times 4$ block of it in each thread's
# registers (3); and version 3 double-buffered, the next slabs loading while these are multiplied (4). Here is
# version 2's inner loop: load a tile, wait, multiply from shared memory, wait again before the next tile
# overwrites it.

# %%
show_source("cuda/gemm.cu", "gemm_v2_kernel(md::index_t")

# %% [markdown]
# The emulator runs each version on sizes that are not multiples of any tile (the edges are where tiled kernels go
# wrong) and compares with NumPy. The emulator is slow (every thread is a fiber on one CPU core), so the sizes are
# small; a GPU would run the same launch.

# %%
if HAS_EMU:
    a_g = rng.standard_normal((37, 53)).astype(np.float32)
    b_g = rng.standard_normal((53, 70)).astype(np.float32)
    with md.use_backend("cuda-emu"):
        for v in (1, 2, 3, 4):
            c_g = gemm(a_g, b_g, version=v)
            gap = np.max(np.abs(c_g - a_g.astype(np.float64) @ b_g)) / np.max(np.abs(a_g.astype(np.float64) @ b_g))
            print(f"CUDA GEMM version {v} on the emulator, (37 x 53) @ (53 x 70): max relative error {gap:.1e}")
            assert gap < 1e-5

# %% [markdown]
# ## 6. Against PyTorch
#
# `benchmarks/bench_kernels.py` validates every contender against a float64 reference first (a wrong one is not
# timed), then times them in turns with every library pinned to the same number of threads. Below, its own
# functions run here, on small sizes in fast mode; the bars are each contender's time over PyTorch's in the same
# run, so below 1 is faster than PyTorch. The command line (`python benchmarks/bench_kernels.py`) runs the full
# sizes and writes a markdown table and a JSON file.

# %%
torch = md.optional_reference("torch", "the benchmark against PyTorch")
if torch is not None:
    import bench_kernels

    quick = dict(repeats=3, min_seconds=0.0) if FAST else dict(repeats=5)
    threads_list = [1] if FAST else [1, 2]
    probe = bench_kernels.FmaProbe(seconds=0.02 if FAST else 0.1)
    probe.run(threads_list)
    rows = bench_kernels.bench_gemm([128] if FAST else [256, 512], threads_list, quick, probe, best_kernel)
    rows += bench_kernels.bench_conv(bench_kernels.QUICK_CONV_SHAPES[:1] if FAST else bench_kernels.CONV_SHAPES,
                                     threads_list, quick)
    rows += bench_kernels.bench_attention(bench_kernels.QUICK_ATTENTION_SHAPES[:1] if FAST
                                          else bench_kernels.ATTENTION_SHAPES[:1], threads_list, quick)
    sections = ["gemm", "conv forward", "conv forward+backward", "attention forward+backward"]
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r.contender for r in rows))}  # one per contender
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6), sharey=True)
    for ax, section in zip(axes, sections, strict=True):
        chosen = [r for r in rows if r.section == section]
        groups = list(dict.fromkeys((r.case, r.threads) for r in chosen))
        names = list(dict.fromkeys(r.contender for r in chosen))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            heights = [next(r.vs_torch for r in chosen if (r.case, r.threads, r.contender) == (*g, name))
                       for g in groups]
            ax.bar(np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width, heights, width, label=name,
                   color=colors[name])
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(range(len(groups)), ["\n".join([*case.rsplit(" ", 1), f"{t} thread{'s' if t > 1 else ''}"])
                                           for case, t in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(section)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("time / PyTorch's time (same run; below 1 is faster)")
    plt.tight_layout()
    plt.show()
    for r in rows:
        print(f"{r.section:>22} | {r.case:>14} | {r.threads} thr | {r.contender:>20} | {r.gflops:6.1f} GFLOP/s | "
              f"{r.vs_torch:5.2f}x torch's time")
    assert all(r.seconds > 0 for r in rows)

# %% [markdown]
# The GEMM bars compare version 4 with the BLAS behind NumPy and PyTorch; the convolution bars compare the C++
# path (im2col or row tables into version 4) and the NumPy twins with PyTorch's own convolution, on its default
# layout and on `channels_last`; the attention bars compare the flash-style C++ kernel and the NumPy twin (which
# keeps the $L \times L$ probabilities) with PyTorch's fused `scaled_dot_product_attention` and with the
# matmul-softmax-matmul a PyTorch user writes by hand. The benchmark's markdown table adds each GEMM's fraction of
# the FMA peak and the load of the machine when it ran; `benchmarks/README.md` reports the full sizes.

# %% [markdown]
# ## Summary
#
# * A kernel is the NumPy twin plus faster code that must agree with it: minidiff picks `numpy`, `cpp` or `cuda`
#   per call through its backend, and every compiled kernel is tested against the twin. Fusing an elementwise
#   update saves memory traffic, not arithmetic.
# * GEMM does $2mnk$ FLOP on $O(mk + kn + mn)$ numbers; how much of that reuse a loop order realizes is its
#   arithmetic intensity. The roofline $\min(P, \beta I)$ says which resource bounds it (Williams et al. 2009).
# * The naive loop is bound by the latency of one chain of dependent multiply-adds; reordering vectorizes it but
#   streams $B$ once per row ($I \approx 0.5$); blocking raises the intensity; packing and a register-blocked
#   micro-kernel (Goto & van de Geijn 2008; BLIS, Van Zee & van de Geijn 2015) bring it near the peak.
# * A convolution is a GEMM on im2col's columns, $\text{out}_n = W\,\text{cols}_n$ (Chellapilla et al. 2006), at a
#   memory cost of about $K_H K_W / (s_h s_w)$ copies of the input; implicit GEMM reads the columns where they
#   lie. The weight gradient is one more GEMM, $G\,\text{cols}^\top$; the input gradient is col2im of $W^\top G$.
# * The online softmax keeps a running max and a running sum and rescales the sum by $e^{m - m'}$ when the max
#   grows: an exact identity (Milakov & Gimelshein 2018). With an output accumulator rescaled the same way it is
#   FlashAttention's forward; the lse $= m + \log \ell$ is all the backward keeps (Dao et al. 2022; Dao 2023).
# * CUDA runs a grid of blocks of threads; threads of a block share memory and meet at `__syncthreads()`. The
#   emulator runs the same `.cu` files on the CPU, so tests check their indexing and synchronization without a GPU.
#
# ## References
#
# * K. Goto, R. A. van de Geijn (2008). *Anatomy of high-performance matrix multiplication.* ACM TOMS 34(3). The
#   layered blocking: a packed block of $A$ in the L2 cache, slivers of $B$ in L1, a tile of $C$ in registers.
# * F. G. Van Zee, R. A. van de Geijn (2015). *BLIS: a framework for rapidly instantiating BLAS functionality.* ACM
#   TOMS 41(3). The five loops around one small micro-kernel, the only part written per architecture.
# * S. Williams, A. Waterman, D. Patterson (2009). *Roofline: an insightful visual performance model for multicore
#   architectures.* Communications of the ACM 52(4). The bound $\min(P, \beta I)$ and its picture.
# * J.-W. Hong, H. T. Kung (1981). *I/O complexity: the red-blue pebble game.* STOC. The lower bound on the traffic
#   of a matrix product with a fast memory of $M$ words, $\Omega(n^3/\sqrt M)$, which blocking attains.
# * K. Chellapilla, S. Puri, P. Simard (2006). *High performance convolutional neural networks for document
#   processing.* IWFHR. Unfolding convolutions into matrix products (im2col) to run them on BLAS.
# * S. Chetlur, C. Woolley, P. Vandermersch, J. Cohen, J. Tran, B. Catanzaro, E. Shelhamer (2014). *cuDNN:
#   efficient primitives for deep learning.* arXiv:1410.0759. Convolution as a GEMM whose tiles are gathered on the
#   fly (implicit GEMM).
# * M. Milakov, N. Gimelshein (2018). *Online normalizer calculation for softmax.* arXiv:1805.02867. The running
#   max and rescaled running sum, in one pass.
# * T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré (2022). *FlashAttention: fast and memory-efficient exact attention
#   with IO-awareness.* NeurIPS. Tiled attention with the online softmax, never writing the $L \times L$ matrix;
#   the saved log-sum-exp and recomputation in the backward.
# * T. Dao (2023). *FlashAttention-2: faster attention with better parallelism and work partitioning.*
#   arXiv:2307.08691. Queries in the outer loop, one normalization at the end, more parallelism.
# * NVIDIA, *CUDA C++ Programming Guide*: the thread hierarchy, shared memory and `__syncthreads()`.
# * J. Ho, A. Jain, P. Abbeel (2020), *Denoising diffusion probabilistic models*, and J. Song, C. Meng, S. Ermon
#   (2021), *Denoising diffusion implicit models*: the sampler steps [E16] [E32] that section 1 fuses.

# %% [markdown]
# ## Pen-and-paper problems
#
# 1. **Intensity of a blocked GEMM.** Multiply two $n \times n$ float32 matrices in $b \times b$ blocks: for each
#    block of $C$, read it, then for each of the $n/b$ pairs of blocks of $A$ and $B$ read both and accumulate,
#    then write the block of $C$. How many numbers move? What is the intensity, and how large may $b$ be if three
#    blocks must fit in a cache of $M$ bytes?
# 2. **The ridge point.** A core does $P$ FLOP/s and its memory delivers $\beta$ bytes/s. Above which intensity is
#    a kernel compute-bound? With version 2's $I = 0.5$, what fraction of $P$ can it reach at most? Use the numbers
#    this notebook printed.
# 3. **The cost of im2col.** For an input $(N, C, H, W)$, a $K_H \times K_W$ kernel, stride $s$ and "same" padding,
#    how many numbers does im2col write? Compare with the input for $3 \times 3$ at stride 1 and stride 2.
# 4. **Merging two softmax states.** Two threads have read disjoint parts of a row and hold $(m_1, \ell_1)$ and
#    $(m_2, \ell_2)$. Give the state of the whole row. Is the merge associative and commutative? Why does that let
#    a GPU split one long row across many blocks?
# 5. **What fusing saves.** The NumPy twin of the affine sampler step evaluates $c_x x$, $c_\epsilon \epsilon$,
#    their sum, $c_z z$ and the final sum, each into a new array. Count the arrays read and written, against a
#    fused kernel's. If the step is bound by memory, how much faster can fusing make it at most?
#
# ### Worked answers
#
# 1. Each of the $(n/b)^2$ blocks of $C$ is read and written once ($2b^2$ numbers) and needs $n/b$ blocks of $A$
#    and of $B$ ($2b^2 \cdot n/b$ numbers): in all $(n/b)^2(2b^2 + 2nb) = 2n^2 + 2n^3/b$ numbers, $4\times$ that in
#    bytes. The intensity is $2n^3 / (4(2n^2 + 2n^3/b)) \approx b/4$ FLOP/byte for large $n$: it grows with the
#    block. Three float32 blocks fit when $12 b^2 \le M$, so $b \le \sqrt{M/12}$; a 1 MiB cache allows $b = 295$,
#    $I \approx 74$. Hong & Kung (1981) showed that no order of the $n^3$ multiply-adds moves fewer than
#    $\Omega(n^3 / \sqrt M)$ numbers, which this attains up to a constant.
# 2. Compute-bound when $\beta I \ge P$, that is $I \ge P/\beta$. At $I = 0.5$ the bound is $0.5\,\beta$ FLOP/s,
#    a fraction $0.5\,\beta / P$ of the peak. The cell below evaluates both with this run's measurements.
# 3. Each of the $N H_O W_O$ output pixels gets a column of $C K_H K_W$ numbers. With "same" padding
#    $H_O = \lceil H/s \rceil$, so about $N C H W K_H K_W / s^2$ numbers: $9\times$ the input at stride 1 and
#    $9/4 = 2.25\times$ at stride 2.
# 4. With $m = \max(m_1, m_2)$: $\ell = \ell_1 e^{m_1 - m} + \ell_2 e^{m_2 - m}$ (each sum moved to the common max,
#    as in the update; the update is the merge with a state of one block). It is commutative (symmetric in 1 and
#    2), and associative because both groupings give $(\max_i m_i, \sum_i \ell_i e^{m_i - m})$. So any tree of
#    merges gives the same state up to rounding: blocks can each reduce a piece of the row and merge their states
#    at the end (split-K, "flash decoding"), which also merges partial attention outputs $a$ the same way.
# 5. The twin: $c_x x$ (read 1, write 1), $c_\epsilon\epsilon$ (read 1, write 1), the sum (read 2, write 1),
#    $c_z z$ (read 1, write 1), the final sum (read 2, write 1): 7 reads and 5 writes, 12 array passes (the copy
#    into `out` adds 2 more). The fused kernel reads $x, \epsilon, z$ and writes the output: 4. If memory traffic
#    bounds the step, fusing is at most $12/4 = 3\times$ faster (3.5 with the copy). Section 1 printed what this
#    machine gave; a larger ratio means something else costs too: NumPy allocates every temporary, and fresh
#    memory costs a page fault per page the first time it is written.

# %%
ridge = peak["vector"] / bandwidth["one matrix"]
print(f"problem 2: ridge point P / beta = {ridge:.1f} FLOP/byte (cache bandwidth), "
      f"{peak['vector'] / bandwidth['main memory']:.1f} (main memory); at I = 0.5 at most "
      f"{100 * 0.5 * bandwidth['one matrix'] / peak['vector']:.1f}% of the peak")
b_max = int(np.sqrt(2**20 / 12))
print(f"problem 1: b <= sqrt(M / 12) = {b_max} for M = 1 MiB, I ~ b / 4 = {b_max / 4:.0f} FLOP/byte")
same = im2col(np.zeros((1, 3, 16, 16)), (3, 3), (2, 2), (1, 1))
print(f"problem 3: stride 2 writes {same.size / (3 * 16 * 16):.2f}x the input")
assert same.size == 3 * 9 * 8 * 8 and abs(same.size / (3 * 16 * 16) - 2.25) < 1e-12
half_a, half_b = row[:11], row[11:]  # problem 4: the states of two halves, merged
ma, mb = half_a.max(), half_b.max()
la, lb = np.exp(half_a - ma).sum(), np.exp(half_b - mb).sum()
merged = max(ma, mb) + np.log(la * np.exp(ma - max(ma, mb)) + lb * np.exp(mb - max(ma, mb)))
print(f"problem 4: merged lse {merged:.12f}, whole row {lse_direct:.12f}")
assert abs(merged - lse_direct) < 1e-12

# %% [markdown]
# ## Exercises
#
# Open `minidiff/exercises/ch11.py` and fill in:
#
# * **11.1** `im2col(x, kernel, stride, padding)`: the columns of section 3, `(N, C*KH*KW, HO*WO)`, for strides and
#   paddings that differ between height and width. `conv2d_forward_im2col` multiplies the weight by your columns.
# * **11.2** `online_softmax_update(m, l, scores)`: one step of the recurrence of section 4: the new max, the
#   rescale factor $e^{m - m'}$, the weights $e^{s - m'}$ and the new sum, with rows that have seen only $-\infty$
#   (masked) handled without NaN. `logsumexp_online`, `softmax_online` and `attention_forward_tiled` call it.
# * **11.3** `conv2d_weight_grad_gemm(grad_out, cols, weight_shape)`: the weight gradient as one GEMM,
#   $G\,\text{cols}^\top$, over every output pixel of every image.
# * **11.4** `sampler_step_ref(x, eps, z, coefs, out)`: the NumPy twin of section 1: the affine part, then the
#   clipped $\hat x_0$ term when `coefs.clip` is set.
#
# Grade them with `pytest --student -m ch11` (add `--exercise ex11.2` for one). The tests check mathematics: your
# columns against the definition of a window, element by element, and as the adjoint of `scatter_windows`
# ($\langle \text{im2col}(x), G\rangle = \langle x, \text{col2im}(G)\rangle$); your update against the max and sum of
# two blocks read as one, the log-sum-exp for every block size and order of the scores, with logits large enough
# to overflow a plain `exp`, masked scores and fully masked rows, and attention against the NumPy twin, with the
# probabilities recomputed from your lse; your weight gradient against the twin and float64 central differences;
# your sampler step against the formula element by element, its linearity without the clip, and the clip's
# saturation.
