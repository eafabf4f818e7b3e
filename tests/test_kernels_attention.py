"""Attention's C++ kernel (csrc/cpu/attention.cpp: tiles of queries x keys, an online softmax, only the log-sum-exp
of each row kept and the probabilities recomputed from it in the backward) and the softmax kernels
(csrc/cpu/softmax.cpp) against their NumPy twins on what breaks them: sizes 0 and 1, primes, more queries and keys
than a tile holds, Lq != Lk, Dv != D, broadcast batch axes, non-contiguous and reversed inputs, masks (broadcast,
a whole key tile masked, fully masked rows), large logits and ties; against PyTorch; through gradcheck on the cpp
backend; on any number of threads; and bad input at the Python and C++ boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import (
    NAMES,
    assert_clear_error,
    assert_close_with_specials,
    autodiff_tests,
    bad_calls,
    ones,
    same_on_every_thread_count,
    twin_and_scale,
)
from op_cases import Case
from strategies import float_dtypes, in_layout, layouts
from tolerances import Tol, assert_close

import minidiff as md
import minidiff.functional as F
from minidiff.autodiff import Tensor
from minidiff.kernels import softmax as sm
from minidiff.kernels.attention import (
    AttentionForward,
    attention_backward,
    attention_forward,
)

QUERY_TILE, KEY_TILE = 64, 128  # csrc/cpu/attention.cpp's tiles: the sides below cross them
SIDES = st.sampled_from([0, 1, 2, 3, 5, 7, 13, 64, 67, 131, 257])
FEATURES = st.sampled_from([0, 1, 3, 8, 17, 33])


@st.composite
def attention_problems(draw):
    """(q, k, v, mask, scale, grad_out). Batch axes broadcast (k and v may have fewer or size-1 ones); values are
    normal, normal x 6 (large logits) or small integers (tied scores); masks of every broadcastable shape, from
    sparse to dense, with whole rows and whole key tiles masked."""
    dtype = draw(float_dtypes)
    lq, lk, d, dv = draw(SIDES), draw(SIDES), draw(FEATURES), draw(FEATURES)
    batch = draw(st.sampled_from([(), (1,), (2,), (2, 3), (0,), (3, 1)]))
    if lq * lk * max(1, np.prod(batch)) > 70_000:  # the twin's float64 reference stays fast
        batch = ()
    kv_batch = draw(st.sampled_from([batch, tuple(1 for _ in batch), batch[1:]]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = draw(st.sampled_from(["normal", "large", "ties"]))

    def draw_array(shape):
        if values == "ties":
            return rng.integers(-2, 3, shape).astype(dtype)
        return (rng.standard_normal(shape) * (6.0 if values == "large" else 1.0)).astype(dtype)

    q, k, v = draw_array(batch + (lq, d)), draw_array(kv_batch + (lk, d)), draw_array(kv_batch + (lk, dv))
    mask_kind = draw(st.sampled_from(["none", "full", "shared", "keys", "queries", "first key tile"]))
    keep = draw(st.sampled_from([0.2, 0.9]))
    mask_shape = {"none": None, "full": batch + (lq, lk), "shared": (lq, lk), "keys": (lk,), "queries": (lq, 1),
                  "first key tile": (lq, lk)}[mask_kind]
    mask = None if mask_shape is None else rng.random(mask_shape) < keep
    if mask_kind == "first key tile":  # odd rows see only keys past the first tile: m = -inf for a whole tile
        mask[1::2, :KEY_TILE] = False
    if mask is not None and mask.ndim >= 2 and draw(st.booleans()):
        mask[..., :1, :] = False  # a query with no key: NaN
    scale = draw(st.sampled_from([1 / np.sqrt(max(d, 1)), -0.7, 0.0, 2.5]))
    grad_out = draw_array(np.broadcast_shapes(batch, kv_batch, () if mask is None else mask.shape[:-2]) + (lq, dv))
    return q, k, v, mask, scale, grad_out


def run(backend, q, k, v, mask, scale, grad_out):
    with md.use_backend(backend):
        result = attention_forward(q, k, v, mask, scale)
        return result, attention_backward(grad_out, q, k, v, mask, result, scale)


@given(problem=attention_problems(), layout=layouts)
def test_cpp_equals_the_twin(problem, layout):
    """[E45] out, the log-sum-exp and the three gradients, in any memory layout; the C++ forward keeps no
    probabilities."""
    require_backend("cpp")
    q, k, v, mask, scale, grad_out = problem
    expected, scales = twin_and_scale(q, k, v, mask, scale, grad_out)
    arrays = [None if a is None else in_layout(a, layout) for a in (q, k, v, mask, grad_out)]
    result, grads = run("cpp", *arrays[:4], scale, arrays[4])
    assert result.probs is None
    for name, got, e, s in zip(NAMES, (result.out, result.lse, *grads), expected, scales, strict=True):
        assert_close_with_specials(got, e, s, q.dtype, f"{name}:")


def test_online_softmax_rescales_when_the_max_grows_from_tile_to_tile():
    """Scores that grow from key tile to key tile (every tile's max raises the running max), a row whose first
    tile is fully masked (running max -inf, then finite), one whose last tile is, and one with no key at all; the
    first key's score far above the others' (exp(s - m) underflows for them) in another. float64, tight."""
    require_backend("cpp")
    rng = np.random.default_rng(3)
    lq, lk, d = 5, 3 * KEY_TILE + 17, 4
    q = np.ones((lq, d))
    k = np.linspace(-3, 3, lk)[:, None] * rng.uniform(0.5, 1.5, (lk, d))  # scores increase with the key's index
    k[0] = 200.0
    v = rng.standard_normal((lk, 6))
    mask = np.ones((lq, lk), bool)
    mask[1, :KEY_TILE] = False
    mask[2, -30:] = False
    mask[3] = False
    mask[4, 1:] = False
    grad_out = rng.standard_normal((lq, 6))
    expected, scales = twin_and_scale(q, k, v, mask, 1.0, grad_out)
    result, grads = run("cpp", q, k, v, mask, 1.0, grad_out)
    for name, got, e, s in zip(NAMES, (result.out, result.lse, *grads), expected, scales, strict=True):
        assert_close_with_specials(got, e, s, np.float64, f"{name}:")
    assert np.isnan(result.out[3]).all() and result.lse[3] == -np.inf


# (batch shape, Lq, Lk, D, Dv): each past 2^20 multiply-adds per thread, so that the kernels use their threads
THREAD_SHAPES = [
    ((6,), 200, 200, 24, 24),  # 4 query tiles x 2 key tiles per batch element
    ((3,), 150, 300, 16, 40),  # fewer batch elements than the backward's 8 units: dQ summed over key-tile groups
    ((1,), 700, 260, 8, 8),  # one batch element, 11 query tiles, 3 key groups
]


@pytest.mark.parametrize(("batch", "lq", "lk", "d", "dv"), THREAD_SHAPES)
def test_result_does_not_depend_on_the_thread_count(batch, lq, lk, d, dv):
    """Bit for bit on 1, 2 and 3 threads, masked, and right."""
    require_backend("cpp")
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(batch + (lq, d)), rng.standard_normal(batch + (lk, d))
    v, grad_out = rng.standard_normal(batch + (lk, dv)), rng.standard_normal(batch + (lq, dv))
    q, k, v, grad_out = (a.astype(np.float32) for a in (q, k, v, grad_out))
    mask = rng.random((lq, lk)) < 0.8

    def compute():
        result, grads = run("cpp", q, k, v, mask, 0.3, grad_out)
        return result.out, result.lse, *grads

    one_thread = same_on_every_thread_count(compute, NAMES)
    expected, scales = twin_and_scale(q, k, v, mask, 0.3, grad_out)
    for name, got, e, s in zip(NAMES, one_thread, expected, scales, strict=True):
        assert_close_with_specials(got, e, s, np.float32, f"{name}:")


def test_the_backward_runs_on_what_the_forward_kept():
    """A graph built on the cpp backend and differentiated on the numpy one (or the other way round) runs each
    backward from its own forward's residual (lse or probabilities): the same gradients either way."""
    require_backend("cpp")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in ((2, 5, 4), (2, 6, 4), (2, 6, 3))]
    mask = rng.random((5, 6)) < 0.7
    mask[:, 0] = True
    grads = {}
    for forward_backend, backward_backend in (("cpp", "numpy"), ("numpy", "cpp")):
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        with md.use_backend(forward_backend):
            out = F.scaled_dot_product_attention(*ts, mask=mask)
        with md.use_backend(backward_backend):
            out.backward(np.ones(out.shape))
        grads[forward_backend] = [t.grad for t in ts]
    for got, ref in zip(grads["cpp"], grads["numpy"], strict=True):
        assert_close(got, ref, scale=np.abs(ref) + 1)


# --- softmax and log_softmax ---------------------------------------------------------------------------------------


@st.composite
def softmax_inputs(draw):
    """(x, grad, axis): 1-4 axes of sizes 0-9 (or one long axis), normal, large (x 1e3), tied or -inf entries
    (masked), some rows -inf only."""
    dtype = draw(float_dtypes)
    shape = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple) | st.sampled_from([(3, 700)]))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "large", "ties", "masked"]))
    x = rng.integers(-2, 3, shape).astype(np.float64) if kind == "ties" else rng.standard_normal(shape)
    if kind == "large":
        x *= 1e3
    if kind == "masked":
        x[rng.random(shape) < 0.4] = -np.inf
        if x.size:
            np.moveaxis(x, axis, -1)[(0,) * (len(shape) - 1)] = -np.inf  # a row of -inf only: NaN
    return x.astype(dtype), rng.standard_normal(shape).astype(dtype), axis


def softmax_twins_and_scales(x, grad, axis):
    """float64 twins of (softmax, log_softmax, their backwards) and rounding scales: exp(x - m) is off by about
    u (1 + |x - m|) relative, so each row by u R, R = 1 + its largest finite |x - m|."""
    x, g = x.astype(np.float64), grad.astype(np.float64)
    with np.errstate(invalid="ignore"):
        s, log_s = sm.softmax_ref(x, axis), sm.log_softmax_ref(x, axis)
        expected = (s, log_s, sm.softmax_backward_ref(g, s, axis), sm.log_softmax_backward_ref(g, log_s, axis))
    finite = np.isfinite(x)
    top = np.max(np.where(finite, x, -np.inf), axis=axis, keepdims=True, initial=-np.inf)
    spread = np.where(finite & np.isfinite(top), np.abs(x - np.where(np.isfinite(top), top, 0)), 0.0)
    r = 1 + np.max(spread, axis=axis, keepdims=True, initial=0.0)
    s0 = np.nan_to_num(s)
    g_abs = np.abs(g)
    scales = (s0 * r, r + np.abs(np.nan_to_num(log_s, nan=0.0, neginf=0.0)),
              s0 * r * (g_abs + np.sum(g_abs * s0, axis=axis, keepdims=True)),
              g_abs + s0 * r * np.sum(g_abs, axis=axis, keepdims=True))
    return expected, scales


SOFTMAX_NAMES = ("softmax", "log_softmax", "softmax backward", "log_softmax backward")


@given(inputs=softmax_inputs(), layout=layouts)
def test_softmax_cpp_equals_the_twin(inputs, layout):
    require_backend("cpp")
    x, grad, axis = inputs
    expected, scales = softmax_twins_and_scales(x, grad, axis)
    x, grad = in_layout(x, layout), in_layout(grad, layout)
    with md.use_backend("cpp"):
        s, log_s = sm.softmax(x, axis), sm.log_softmax(x, axis)
        got = (s, log_s, sm.softmax_backward(grad, s, axis), sm.log_softmax_backward(grad, log_s, axis))
    for name, g, e, sc in zip(SOFTMAX_NAMES, got, expected, scales, strict=True):
        assert g.shape == x.shape
        assert_close_with_specials(g, e, sc, x.dtype, f"{name}:")


@pytest.mark.parametrize(("dtype", "lowest"), [(np.float32, -87.0), (np.float64, -708.0)])
def test_the_kernels_exponential_is_accurate_to_a_few_ulp(dtype, lowest):
    """softmax([0, t])_2 = e^t / (1 + e^t) over the whole range where e^t is a normal number: the C++ kernels'
    own exp (csrc/include/minidiff/vec_exp.h, a polynomial; group norm's SiLU uses it too) is within an ulp, so the
    quotient is within a few. A polynomial one degree short is off by hundreds of ulp near |r| = ln 2 / 2."""
    require_backend("cpp")
    t = np.linspace(lowest, 0.0, 20_001).astype(dtype)
    rows = np.stack([np.zeros_like(t), t], axis=1)
    with md.use_backend("cpp"):
        got = sm.softmax(rows, axis=1)[:, 1]
    e = np.exp(t.astype(np.longdouble))
    expected = e / (1 + e)
    assert_close(got, expected.astype(np.float64), tol=Tol(atol=0.0, rtol=8 * float(np.finfo(dtype).eps)),
                 what="e^t / (1 + e^t):")


def test_softmax_result_does_not_depend_on_the_thread_count():
    require_backend("cpp")
    rng = np.random.default_rng(4)
    x, grad = rng.standard_normal((300, 517)).astype(np.float32), rng.standard_normal((300, 517)).astype(np.float32)

    def compute():
        with md.use_backend("cpp"):
            s, log_s = sm.softmax(x, 0), sm.log_softmax(x, 1)
            return s, log_s, sm.softmax_backward(grad, s, 0), sm.log_softmax_backward(grad, log_s, 1)

    same_on_every_thread_count(compute, SOFTMAX_NAMES)


# --- the autodiff on the cpp backend ------------------------------------------------------------------------------


@st.composite
def functional_cases(draw):
    """F.scaled_dot_product_attention on sizes >= 1 with a mask in which every query keeps a key (PyTorch gives 0
    where we give NaN), or none, and a scale (or the default)."""
    n, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    lq, lk, d, dv = (draw(st.integers(1, hi)) for hi in (6, 7, 5, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((lq, lk)) < 0.6 if draw(st.booleans()) else None
    if mask is not None:
        mask[np.arange(lq), rng.integers(0, lk, lq)] = True
    scale = draw(st.sampled_from([None, 0.3, -1.5]))
    arrays = (rng.standard_normal((n, heads, lq, d)), rng.standard_normal((n, heads, lk, d)),
              rng.standard_normal((n, heads, lk, dv)))

    def theirs(t, q, k, v):
        m = None if mask is None else t.from_numpy(mask)
        return t.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)

    return "attention", Case(arrays, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, scale), theirs)


@st.composite
def softmax_cases(draw):
    name = draw(st.sampled_from(["softmax", "log_softmax"]))
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 30.0]))
    return name, Case((x,), lambda t: getattr(F, name)(t, axis=axis), lambda t, a: getattr(t, name)(a, dim=axis))


CPP_CASES = st.one_of(functional_cases(), softmax_cases())


# [E45] attention against torch.nn.functional.scaled_dot_product_attention, softmax and log_softmax against torch's,
# forward and backward; and gradcheck
test_cpp_path_matches_pytorch_autograd, test_cpp_path_passes_gradcheck = autodiff_tests(CPP_CASES, "cpp")


@pytest.mark.torch
def test_a_query_with_no_key_gets_nan_as_pytorchs_matmul_softmax():
    """Every key of query 1 masked: NaN there (softmax of -inf only), the other rows as PyTorch's."""
    require_backend("cpp")
    import torch
    from reference.torch_twins import attention_torch

    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal(s) for s in ((2, 4, 3), (2, 5, 3), (2, 5, 2)))
    mask = rng.random((4, 5)) < 0.6
    mask[:, 2] = True
    mask[1] = False
    with md.use_backend("cpp"):
        out = F.scaled_dot_product_attention(*(Tensor(a) for a in (q, k, v)), mask=mask, scale=0.8).data
    expected = attention_torch(*(torch.from_numpy(a) for a in (q, k, v)), torch.from_numpy(mask), 0.8).numpy()
    assert_close_with_specials(out, expected, np.abs(expected), np.float64, "out:")
    assert np.isnan(out[:, 1]).all()


# --- bad input -----------------------------------------------------------------------------------------------------


def bad_attention_calls():
    q, k, v, g = ones(2, 3, 4), ones(2, 5, 4), ones(2, 5, 6), ones(2, 3, 6)
    mask = np.ones((3, 5), bool)
    yield "q a list", (q.tolist(), k, v, None, 1.0), TypeError, "q: expected a numpy.ndarray"
    yield "int q", (q.astype(np.int32), k, v, None, 1.0), TypeError, "q: expected dtype float32 or float64"
    yield "k dtype", (q, k.astype(np.float64), v, None, 1.0), TypeError, r"k: expected dtype float32 \(the dtype of q"
    yield "v a list", (q, k, v.tolist(), None, 1.0), TypeError, "v: expected a numpy.ndarray"
    yield "1-d q", (ones(4), k, v, None, 1.0), ValueError, r"q: expected \(..., L, d\)"
    yield "features", (q, ones(2, 5, 3), v, None, 1.0), ValueError, "k: expected feature size 4"
    yield "keys", (q, k, ones(2, 4, 6), None, 1.0), ValueError, "v: expected 5 keys"
    yield "batch", (q, ones(3, 5, 4), ones(3, 5, 6), None, 1.0), ValueError, "k, v: batch shapes"
    yield "int mask", (q, k, v, mask.astype(np.int8), 1.0), TypeError, "mask: expected a boolean"
    yield "mask shape", (q, k, v, np.ones((3, 4), bool), 1.0), ValueError, r"mask: shape \(3, 4\) does not broadcast"
    yield "mask batch", (q, k, v, np.ones((3, 3, 5), bool), 1.0), ValueError, r"mask: shape \(3, 3, 5\)"
    yield "scale a string", (q, k, v, None, "0.5"), TypeError, "scale: expected a real number"
    result = AttentionForward(ones(2, 3, 6), None, ones(2, 3))
    yield "grad_out shape", (g[:, :2], q, k, v, None, result, 1.0), ValueError, r"grad_out: expected shape \(2, 3, 6\)"
    yield "grad_out dtype", (g.astype(np.float64), q, k, v, None, result, 1.0), TypeError, "grad_out: expected dtype"
    bad_lse = AttentionForward(ones(2, 3, 6), None, ones(2, 4))
    yield "lse shape", (g, q, k, v, None, bad_lse, 1.0), ValueError, r"forward: expected lse of shape \(2, 3\)"


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize(("args", "error", "message"), bad_calls(bad_attention_calls()))
def test_bad_attention_input_gets_a_clear_error(backend, args, error, message):
    assert_clear_error(backend, attention_backward if len(args) == 7 else attention_forward, args, error, message)


def test_functional_attention_without_features_needs_a_scale():
    t = Tensor(np.ones((2, 3, 0)))
    with pytest.raises(ValueError, match="scale: q has feature size 0"):
        F.scaled_dot_product_attention(t, t, t)


def bad_softmax_calls():
    x = ones(3, 4)
    yield "x a list", (sm.softmax, x.tolist(), -1), TypeError, "x: expected a numpy.ndarray"
    yield "int x", (sm.log_softmax, x.astype(np.int64), -1), TypeError, "x: expected dtype float32 or float64"
    yield "0-d x", (sm.softmax, ones(), -1), ValueError, "x: expected at least 1 dimension"
    yield "axis too large", (sm.softmax, x, 2), ValueError, r"axis: expected an int in \[-2, 2\)"
    yield "float axis", (sm.log_softmax, x, 1.0), ValueError, "axis: expected an int"
    yield "grad shape", (sm.softmax_backward, ones(3, 5), x, -1), ValueError, r"grad: expected shape \(3, 4\)"
    yield "grad dtype", (sm.log_softmax_backward, x.astype(np.float64), x, 0), TypeError, "grad: expected dtype float32"


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize(("args", "error", "message"), bad_calls(bad_softmax_calls()))
def test_bad_softmax_input_gets_a_clear_error(backend, args, error, message):
    assert_clear_error(backend, args[0], args[1:], error, message)


def test_cpp_boundary_rechecks_what_it_relies_on():
    """Called directly, bypassing the Python checks: errors naming the argument, never a crash or an out-of-bounds
    access."""
    require_backend("cpp")
    C = md.backend.extension()
    q, k, v = ones(2, 3, 4, dtype=np.float64), ones(2, 5, 4, dtype=np.float64), ones(2, 5, 6, dtype=np.float64)
    out, lse = np.empty((2, 3, 6)), np.empty((2, 3))
    mask, index = np.ones((2, 3, 5), bool), np.array([0, 1])
    forward_cases = [
        ((q.astype(np.float16), k, v, None, None, 1.0, out, lse), TypeError, "q: expected dtype float32 or float64"),
        ((q, k.astype(np.float32), v, None, None, 1.0, out, lse), TypeError, "k: expected a float64 array"),
        ((q.transpose(0, 2, 1), k, v, None, None, 1.0, out, lse), ValueError, "q: expected a C-contiguous"),
        ((q[0], k, v, None, None, 1.0, out, lse), ValueError, "q: expected 3 dimensions"),
        ((q, k[:, :, :3].copy(), v, None, None, 1.0, out, lse), ValueError, r"k: expected shape \(2, 5, 4\)"),
        ((q, k, v[:, :4].copy(), None, None, 1.0, out, lse), ValueError, r"v: expected shape \(2, 5, 6\)"),
        ((q, k, v, None, None, 1.0, out[:, :2].copy(), lse), ValueError, r"out: expected shape \(2, 3, 6\)"),
        ((q, k, v, None, None, 1.0, out, lse[:1].copy()), ValueError, r"lse: expected shape \(2, 3\)"),
        ((q, k, v, mask, None, 1.0, out, lse), ValueError, "mask_index: expected an array exactly when mask is one"),
        ((q, k, v, mask.astype(np.uint8), index, 1.0, out, lse), TypeError, "mask: expected a bool array"),
        ((q, k, v, mask[:, :, :4].copy(), index, 1.0, out, lse), ValueError, r"mask: expected shape \(2, 3, 5\)"),
        ((q, k, v, mask, np.array([0, 2]), 1.0, out, lse), ValueError, r"mask_index: expected values in \[0, 2\)"),
        ((q, k, v, mask, index.astype(np.int32), 1.0, out, lse), TypeError, "mask_index: expected an int64 array"),
        ((q, k, v, mask, index[:1].copy(), 1.0, out, lse), ValueError, r"mask_index: expected shape \(2\)"),
        ((np.empty((0, 2**29, 2**29)), np.empty((0, 2**29, 2**29)), np.empty((0, 2**29, 1)), None, None, 1.0,
          np.empty((0, 2**29, 1)), np.empty((0, 2**29))), ValueError, "the sizes overflow 64-bit indexing"),
    ]
    for args, error, message in forward_cases:
        with pytest.raises(error, match=message):
            C.attention_forward(*args)
    read_only = np.empty((2, 3, 6))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        C.attention_forward(q, k, v, None, None, 1.0, read_only, lse)
    buf = np.ones(100)
    with pytest.raises(ValueError, match="out: overlaps q"):
        C.attention_forward(buf[:24].reshape(2, 3, 4), k, v, None, None, 1.0, buf[12:48].reshape(2, 3, 6), lse)
    with pytest.raises(ValueError, match="out: overlaps lse"):
        C.attention_forward(q, k, v, None, None, 1.0, buf[:36].reshape(2, 3, 6), buf[30:36].reshape(2, 3))

    g, gq, gk, gv = np.ones((2, 3, 6)), np.empty_like(q), np.empty_like(k), np.empty_like(v)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(2, 3, 6\)"):
        C.attention_backward(g[:1], q, k, v, None, None, out, lse, 1.0, gq, gk, gv)
    with pytest.raises(ValueError, match=r"grad_k: expected shape \(2, 5, 4\)"):
        C.attention_backward(g, q, k, v, None, None, out, lse, 1.0, gq, gk[:1], gv)
    with pytest.raises(ValueError, match="grad_q: overlaps grad_out"):
        C.attention_backward(buf[:36].reshape(2, 3, 6), q, k, v, None, None, out, lse, 1.0,
                             buf[30:54].reshape(2, 3, 4), gk, gv)
    with pytest.raises(ValueError, match="grad_k: overlaps grad_v"):
        C.attention_backward(g, q, k, v, None, None, out, lse, 1.0, gq, buf[:40].reshape(2, 5, 4),
                             buf[30:90].reshape(2, 5, 6))

    x, y = np.ones((3, 4)), np.empty((3, 4))
    with pytest.raises(ValueError, match="x: expected 2 dimensions"):
        C.softmax_forward(x[0], y[0], False)
    with pytest.raises(ValueError, match=r"y: expected shape \(3, 4\)"):
        C.softmax_forward(x, y[:2], True)
    with pytest.raises(ValueError, match="y: overlaps x"):
        C.softmax_forward(buf[:12].reshape(3, 4), buf[8:20].reshape(3, 4), False)
    with pytest.raises(TypeError, match="grad_y: expected a float64 array"):
        C.softmax_backward(x.astype(np.float32), y, np.empty((3, 4)), False)
    with pytest.raises(ValueError, match="grad_x: overlaps grad_y"):
        C.softmax_backward(buf[:12].reshape(3, 4), x, buf[6:18].reshape(3, 4), True)
