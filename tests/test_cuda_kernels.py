"""The CUDA twins of attention and group norm (csrc/cuda/attention.cu, group_norm.cu), run by the emulator cuda-emu,
against their NumPy twins: sizes 0 and 1, primes and sizes that are not multiples of a warp (32), so that key and
query blocks end part-filled; feature sizes that are not multiples of 32 either; masks (broadcast, fully masked rows,
a whole key block masked); N = 0, one channel per group, odd spatial sizes, each optional input present or not;
float32 and float64. The problems are small: the emulator runs every thread of every block in turn. The reference
scaffolding (float64 twins, rounding scales) is the C++ kernels' tests'."""

from __future__ import annotations

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import (
    NAMES,
    PARAMS,
    assert_close_with_specials,
    assert_matches_twin,
    make_problem,
    run_group_norm,
    twin_and_scale,
)
from strategies import float_dtypes

import minidiff as md
from minidiff.kernels._cuda import EMULATOR_SCHEDULES, emulator_schedule
from minidiff.kernels.attention import CUDA_VERSIONS, attention_backward, attention_forward

WARP = 32
SIDES = st.sampled_from([0, 1, 2, 5, 31, 33, 37])  # a key or query block of 32: part-filled, one and a bit
FEATURES = st.sampled_from([0, 1, 3, 17, 33])


@pytest.fixture(autouse=True)
def _emulator():
    require_backend("cuda-emu")


# --- attention ------------------------------------------------------------------------------------------------------


@st.composite
def attention_problems(draw):
    """(q, k, v, mask, scale, grad_out): at most a few thousand scores, batch axes that broadcast, masks of every
    broadcastable shape, a query with no key, a row whose first key block is wholly masked (its running max stays
    -inf for a block, then becomes finite)."""
    dtype = draw(float_dtypes)
    lq, lk, d, dv = draw(SIDES), draw(SIDES), draw(FEATURES), draw(FEATURES)
    batch = draw(st.sampled_from([(), (1,), (2,), (0,)]))
    kv_batch = draw(st.sampled_from([batch, tuple(1 for _ in batch)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([1.0, 6.0]))  # 6: large logits, exp(s - m) underflows for most keys

    def normal(shape):
        return (spread * rng.standard_normal(shape)).astype(dtype)

    q, k, v = normal(batch + (lq, d)), normal(kv_batch + (lk, d)), normal(kv_batch + (lk, dv))
    mask_kind = draw(st.sampled_from(["none", "full", "shared", "keys", "first key block"]))
    mask_shape = {"none": None, "full": batch + (lq, lk), "shared": (lq, lk), "keys": (lk,),
                  "first key block": (lq, lk)}[mask_kind]
    mask = None if mask_shape is None else rng.random(mask_shape) < draw(st.sampled_from([0.2, 0.9]))
    if mask_kind == "first key block":
        mask[1::2, :WARP] = False
    if mask is not None and mask.ndim >= 2 and draw(st.booleans()):
        mask[..., :1, :] = False  # a query with no key: NaN
    scale = draw(st.sampled_from([1 / np.sqrt(max(d, 1)), -0.7, 0.0]))
    grad_out = normal(np.broadcast_shapes(batch, kv_batch, () if mask is None else mask.shape[:-2]) + (lq, dv))
    return q, k, v, mask, scale, grad_out


def run_attention(version, q, k, v, mask, scale, grad_out):
    with md.use_backend("cuda-emu"):
        forward = attention_forward(q, k, v, mask, scale, version=version)
        return forward, attention_backward(grad_out, q, k, v, mask, forward, scale, version=version)


@pytest.mark.parametrize("schedule", EMULATOR_SCHEDULES)
@pytest.mark.parametrize("version", CUDA_VERSIONS)
@settings(max_examples=25)
@given(problem=attention_problems())
def test_attention_versions_equal_the_twin_under_emulation(version, schedule, problem):
    """[E45] out, lse and the three gradients of every CUDA version, NaN where the twin has NaN (rows with no key),
    0 for Lk = 0; under both schedules of the emulator (run_ahead: a warp passes the others between barriers)."""
    q, k, v, mask, scale, grad_out = problem
    expected, scales = twin_and_scale(q, k, v, mask, scale, grad_out)
    with emulator_schedule(schedule):
        forward, grads = run_attention(version, q, k, v, mask, scale, grad_out)
    assert forward.probs is None
    for name, got, e, s in zip(NAMES, (forward.out, forward.lse, *grads), expected, scales, strict=True):
        assert_close_with_specials(got, e, s, q.dtype, f"v{version} {name}:")


@pytest.mark.parametrize("version", CUDA_VERSIONS)
def test_attention_online_softmax_across_key_blocks(version):
    """Scores growing from key block to key block (each block's max rescales what came before), a row whose first
    block is masked, one whose last keys are, one with no key, and one whose first key dominates (every other
    exp(s - m) underflows). float64, tight."""
    rng = np.random.default_rng(5)
    lq, lk, d = 5, 3 * WARP + 7, 4
    q = np.ones((lq, d))
    k = np.linspace(-3, 3, lk)[:, None] * rng.uniform(0.5, 1.5, (lk, d))
    k[0] = 200.0
    v, grad_out = rng.standard_normal((lk, 6)), rng.standard_normal((lq, 6))
    mask = np.ones((lq, lk), bool)
    mask[1, :WARP] = False
    mask[2, -10:] = False
    mask[3] = False
    mask[4, 1:] = False
    expected, scales = twin_and_scale(q, k, v, mask, 1.0, grad_out)
    forward, grads = run_attention(version, q, k, v, mask, 1.0, grad_out)
    for name, got, e, s in zip(NAMES, (forward.out, forward.lse, *grads), expected, scales, strict=True):
        assert_close_with_specials(got, e, s, np.float64, f"v{version} {name}:")
    assert np.isnan(forward.out[3]).all() and forward.lse[3] == -np.inf


def test_attention_emulated_launch_rechecks_what_the_kernels_rely_on():
    """The kernels trust their sizes, mask indices and launch; the emulated launch checks them against the arrays."""
    emu = md.backend.extension().cuda_emu
    q = np.zeros((2, 3, 4))
    out, lse = np.empty((2, 3, 4)), np.empty((2, 3))
    mask = np.ones((1, 3, 3), np.uint8)
    sizes = (2, 3, 3, 4, 4)

    def forward(block=(32,), index=(0, 0), has_mask=1, sizes=sizes, q=q):
        emu.attention_forward_v1_kernel((1,), block, q, q, q, mask, np.array(index, np.int64), has_mask, 1.0, out,
                                        lse, *sizes)

    forward()  # the valid launch runs
    with pytest.raises(ValueError, match="mask_index: expected values in"):
        forward(index=(0, 1))
    with pytest.raises(ValueError, match="whole warps"):
        forward(block=(48,))
    with pytest.raises(ValueError, match="q: expected shape"):
        forward(sizes=(2, 4, 3, 4, 4))
    with pytest.raises(TypeError, match="float64"):
        forward(q=q.astype(np.float32))
    forward(index=(0, 7), has_mask=0)  # without a mask, the mask arguments are not read
    inputs = (q, q, q, mask, np.zeros(2, np.int64), 1, 1.0)
    for pass_, outputs in (("forward", (out, lse)), ("grad_q", (out, lse, lse, q)),
                           ("grad_kv", (out, lse, lse, q, out))):
        kernel, args = f"attention_{pass_}_v2_kernel", (*inputs, *outputs, *sizes)
        getattr(emu, kernel)((1,), (128,), *args, shared_mem=2048)  # 32 (4 + 4) doubles: the valid launch runs
        with pytest.raises(ValueError, match=f"shared_mem: {kernel} needs 2048 bytes"):
            getattr(emu, kernel)((1,), (128,), *args, shared_mem=2047)
        with pytest.raises(ValueError, match=rf"block: {kernel} needs \(128,\)"):
            getattr(emu, kernel)((1,), (64,), *args, shared_mem=2048)


def test_attention_version_2_needs_its_blocks_in_shared_memory():
    """Version 2 stages blocks of 32 rows of D + Dv numbers (keys and values; or queries and dO) in 48 KiB: with
    D + Dv = 200 float64 numbers they do not fit, so asking for it is an error, forward or backward, and the default
    is version 1."""
    rng = np.random.default_rng(1)
    q, k, v, grad_out = (rng.standard_normal(shape) for shape in ((2, 100), (3, 100), (3, 100), (2, 100)))
    with md.use_backend("cuda-emu"):
        with pytest.raises(ValueError, match="version: 2 stages blocks of 32 rows of D \\+ Dv = 200 numbers"):
            attention_forward(q, k, v, None, 0.1, version=2)
        forward = attention_forward(q, k, v, None, 0.1)
        with pytest.raises(ValueError, match="version: 2 stages blocks of 32 rows"):
            attention_backward(grad_out, q, k, v, None, forward, 0.1, version=2)
        grads = attention_backward(grad_out, q, k, v, None, forward, 0.1)
    expected, scales = twin_and_scale(q, k, v, None, 0.1, grad_out)
    for name, got, e, s in zip(NAMES, (forward.out, forward.lse, *grads), expected, scales, strict=True):
        assert_close_with_specials(got, e, s, np.float64, f"{name}:")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_backward_v2_same_bits_on_any_grid_and_schedule(dtype):
    """Version 2's backward passes on grids of 1 block (striding over every tile, each tile's blocks staged over the
    last tile's), 3 blocks and a block per tile, under both schedules: the same numbers bit for bit (each is written
    by one warp, summing in a fixed order: no atomics), and the twin's. 2 batch elements of Lq = 37 queries and
    Lk = 33 keys: tiles of 4 rows end part-filled, and so do blocks of 32; rows whose first key block is masked, and
    a query with no key."""
    rng = np.random.default_rng(3)
    batch, lq, lk, d, dv = 2, 37, 33, 5, 3
    q, k, v, grad_out = (rng.standard_normal(s).astype(dtype) for s in ((batch, lq, d), (batch, lk, d),
                                                                         (batch, lk, dv), (batch, lq, dv)))
    mask = rng.random((batch, lq, lk)) < 0.8
    mask[0, 1::3, :WARP] = False  # only the second key block: its last key
    mask[0, 1::3, WARP] = True
    mask[1, 4] = False  # no key: NaN in every dK and dV of element 1, none in element 0's
    expected, scales = twin_and_scale(q, k, v, mask, 0.4, grad_out)
    out, lse = (e.astype(dtype) for e in expected[:2])
    delta = np.sum(grad_out * out, axis=-1)  # NaN for the query with no key, as the kernels' own D
    emu = md.backend.extension().cuda_emu
    inputs = (q, k, v, mask.view(np.uint8), np.arange(batch, dtype=np.int64), 1, 0.4, grad_out, lse, delta)
    shared = WARP * (d + dv) * np.dtype(dtype).itemsize
    runs = []
    for schedule in EMULATOR_SCHEDULES:
        for blocks in (1, 3, batch * -(-max(lq, lk) // 4)):
            grads = [np.empty_like(a) for a in (q, k, v)]
            with emulator_schedule(schedule):
                emu.attention_grad_q_v2_kernel((blocks,), (128,), *inputs, grads[0], batch, lq, lk, d, dv,
                                               shared_mem=shared)
                emu.attention_grad_kv_v2_kernel((blocks,), (128,), *inputs, *grads[1:], batch, lq, lk, d, dv,
                                                shared_mem=shared)
            runs.append((f"{blocks} blocks, {schedule}", grads))
    for what, grads in runs[1:]:
        for name, got, first in zip(NAMES[2:], grads, runs[0][1], strict=True):
            np.testing.assert_array_equal(got, first, err_msg=f"{name}: {what} against {runs[0][0]}")
    for name, got, e, s in zip(NAMES[2:], runs[0][1], expected[2:], scales[2:], strict=True):
        assert np.isfinite(e[0]).all(), f"{name}: the problem should leave element 0 finite"
        assert_close_with_specials(got, e, s, dtype, f"v2 {name}:")


def test_attention_versions_belong_to_the_cuda_kernels():
    q = np.zeros((2, 3))
    with md.use_backend("numpy"), pytest.raises(ValueError, match="only the CUDA kernels"):
        attention_forward(q, q, q, None, 1.0, version=1)
    with md.use_backend("cuda-emu"), pytest.raises(ValueError, match="version: expected None or one of"):
        attention_forward(q, q, q, None, 1.0, version=9)


# --- group norm -----------------------------------------------------------------------------------------------------


@st.composite
def group_norm_problems(draw):
    """N from 0; one to three channels per group; x (N, C) to (N, C, H, W) with odd and empty spatial sizes; groups
    larger than a warp or a block of threads; each optional input drawn."""
    groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = draw(st.lists(st.sampled_from([0, 1, 3, 5, 13, 40]), max_size=2))
    x_shape = (draw(st.integers(0, 2)), groups * per_group, *spatial)
    present = [name for name in PARAMS if draw(st.booleans())]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return make_problem(rng, draw(float_dtypes), x_shape, groups, present, draw(st.sampled_from([None, "silu"])),
                        draw(st.sampled_from([1e-5, 1.0])), spread=draw(st.sampled_from([0.3, 4.0])),
                        offset=draw(st.floats(-3, 3)), per_sample_4d=draw(st.booleans()))


@pytest.mark.parametrize("schedule", EMULATOR_SCHEDULES)
@settings(max_examples=30)
@given(p=group_norm_problems())
def test_group_norm_equals_the_twin_under_emulation(schedule, p):
    """[E44] y, the statistics, and the gradients of x, weight, bias, scale and shift; under both schedules of the
    emulator (run_ahead: a warp passes the others between barriers, as block_sum's last barrier must prevent)."""
    with emulator_schedule(schedule):
        assert_matches_twin(run_group_norm("cuda-emu", p), p, f"cuda-emu {schedule} ")


def test_group_norm_statistics_of_a_large_offset():
    """A group at mean 1e4 with std 1 (the one-pass E[x^2] - E[x]^2 keeps no digit of the variance in float32) and a
    constant group (variance 0, x_hat 0): the two-pass statistics in double, as on the CPU."""
    rng = np.random.default_rng(2)
    p = make_problem(rng, np.float32, (2, 4, 9, 7), 2, PARAMS, offset=1e4)
    p["x"][1, 2:] = np.float32(1e4 + 0.5)
    assert_matches_twin(run_group_norm("cuda-emu", p), p, "cuda-emu ")
