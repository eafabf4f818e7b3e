"""The teaching kernels of chapter 11 as mathematics: im2col (exercise 11.1) against the definition of a window and
as the adjoint of scatter_windows, the convolution as one matrix product per image; the online softmax (exercise
11.2) against the direct log-sum-exp, for any block size and any order of the scores, with large logits, masked
(-inf) scores and fully masked rows, and attention computed with it against the NumPy twin; the conv2d weight
gradient as one GEMM (exercise 11.3) against the twin and float64 central differences. Then the same against
PyTorch, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import float_dtypes
from tolerances import FINITE_DIFFERENCES, assert_close

from minidiff.kernels.attention import attention_forward_ref
from minidiff.kernels.conv2d import (
    conv2d_backward_ref,
    conv2d_forward_im2col,
    conv2d_forward_ref,
    conv2d_weight_grad_gemm,
    im2col,
    output_size,
    scatter_windows,
)
from minidiff.kernels.online_softmax import (
    attention_forward_tiled,
    logsumexp_online,
    online_softmax_update,
    softmax_online,
)

# --- convolution problems ---------------------------------------------------------------------------------------


@st.composite
def conv_problems(draw, dtype=None):
    """(x, weight, grad_out, stride, padding): kernels up to 4 x 4, stride and padding drawn per axis (so they
    differ between height and width), images from the kernel's size up, batches and channels from 1 (0 sometimes)."""
    dtype = draw(float_dtypes) if dtype is None else np.dtype(dtype)
    n, c, o = draw(st.integers(0, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, kh - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # seeded values: no symmetric kernel hides a flip
    x, weight = rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((o, c, kh, kw)).astype(dtype)
    grad_out = rng.standard_normal(conv2d_forward_ref(x, weight, stride, padding).shape).astype(dtype)
    return x, weight, grad_out, stride, padding


def im2col_longhand(x, kernel, stride, padding):
    """The definition, one element at a time: row (c, i, j), column (y, x) holds pixel (y sh + i - ph, x sw + j - pw)
    of channel c, or 0 where that falls in the padding."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    cols = np.zeros((n, c * kh * kw, ho * wo), x.dtype)
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for y in range(ho):
                    for xx in range(wo):
                        row, col = y * sh + i - ph, xx * sw + j - pw
                        if 0 <= row < h and 0 <= col < w:
                            cols[:, (ch * kh + i) * kw + j, y * wo + xx] = x[:, ch, row, col]
    return cols


def conv_scales(x, weight, grad_out, stride, padding):
    """The float64 twin's (out, grad_weight) and each one's rounding scale: the same sums over |terms|."""
    x64, w64, g64 = (a.astype(np.float64) for a in (x, weight, grad_out))
    ax, aw, ag = np.abs(x64), np.abs(w64), np.abs(g64)
    out, out_scale = conv2d_forward_ref(x64, w64, stride, padding), conv2d_forward_ref(ax, aw, stride, padding)
    grad_w = conv2d_backward_ref(g64, x64, w64, stride, padding)[1]
    grad_w_scale = conv2d_backward_ref(ag, ax, aw, stride, padding)[1]
    return out, out_scale, grad_w, grad_w_scale


# --- exercise 11.1: im2col ----------------------------------------------------------------------------------------


@pytest.mark.exercise("ex11.1")
@given(conv_problems())
def test_im2col_holds_each_window_as_one_column(problem):
    x, weight, _, stride, padding = problem
    kernel = weight.shape[2:]
    got = im2col(x, kernel, stride, padding)
    expected = im2col_longhand(x, kernel, stride, padding)
    assert got.dtype == x.dtype
    assert_close(got, expected, what=f"im2col with kernel {kernel}, stride {stride}, padding {padding}")


@pytest.mark.exercise("ex11.1")
@given(conv_problems(dtype=np.float64), st.integers(0, 2**16))
def test_im2col_is_the_adjoint_of_scatter_windows(problem, seed):
    """<im2col(x), G> = <x, col2im(G)>, col2im being scatter_windows (exercise 1.5) on G laid out as windows: each
    pixel is read exactly where the gradient is added back."""
    x, weight, _, stride, padding = problem
    (kh, kw), (n, c) = weight.shape[2:], x.shape[:2]
    cols = im2col(x, (kh, kw), stride, padding)
    g = np.random.default_rng(seed).standard_normal(cols.shape)  # (N, C KH KW, HO WO)
    ho, wo = (output_size(s, k, st_, p) for s, k, st_, p in zip(x.shape[2:], (kh, kw), stride, padding, strict=True))
    g_windows = g.reshape(n, c, kh, kw, ho, wo).transpose(0, 1, 4, 5, 2, 3)  # (N, C, HO, WO, KH, KW)
    back = scatter_windows(g_windows, x.shape, stride, padding)
    lhs, rhs = np.sum(cols * g), np.sum(x * back)
    assert_close(lhs, rhs, scale=np.sum(np.abs(cols * g)), what="<im2col(x), G> against <x, col2im(G)>")


@pytest.mark.exercise("ex11.1")
@given(conv_problems())
def test_conv2d_as_one_product_per_image_equals_the_twin(problem):
    x, weight, grad_out, stride, padding = problem
    out, out_scale, _, _ = conv_scales(x, weight, grad_out, stride, padding)
    got = conv2d_forward_im2col(x, weight, stride, padding)
    assert got.dtype == x.dtype
    assert_close(got, out, dtype=x.dtype, scale=out_scale, what="W @ im2col(x) against conv2d_forward_ref")


# --- exercise 11.2: the online softmax ------------------------------------------------------------------------------


@st.composite
def score_rows(draw):
    """(scores (R, L), block size): logits of spread 1 to 1e4 around 0 or +-1e3 (where exp overflows float32),
    some scores masked (-inf), sometimes whole rows, block sizes from 1 to past L."""
    dtype = draw(float_dtypes)
    rows, length = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread, offset = draw(st.sampled_from([1.0, 30.0, 1e4])), draw(st.sampled_from([0.0, 1e3, -1e3]))
    scores = rng.standard_normal((rows, length)) * spread + offset
    masked = rng.random((rows, length)) < draw(st.sampled_from([0.0, 0.3, 0.8]))
    if draw(st.booleans()):
        masked[draw(st.integers(0, rows - 1))] = True  # a fully masked row
    return np.where(masked, -np.inf, scores).astype(dtype), draw(st.integers(1, length + 3))


def direct_state(scores):
    """(max, sum exp(s - max)) of each row in float64, in one piece; (-inf, 0) for a row of -inf only."""
    s = scores.astype(np.float64)
    m = np.max(s, axis=-1)
    origin = np.where(np.isneginf(m), 0.0, m)
    return m, np.sum(np.exp(s - origin[..., None]), axis=-1)


def assert_lse_close(got, scores, what, extra=0.0):
    """log-sum-exp per row against float64: -inf exactly where the row has no finite score, else within the
    dtype's tolerance of |max| + 2 L (the max's rounding, one rounding per term of the sum under the log) + extra
    (the rounding of the scores themselves, when they were computed in got's dtype)."""
    m, l = direct_state(scores)
    empty = np.isneginf(m)
    assert got.shape == m.shape
    assert np.all(np.isneginf(got[empty])), f"{what}: a row of -inf scores only must give -inf (log of an empty sum)"
    scale = np.abs(m) + 2 * scores.shape[-1] + extra
    with np.errstate(divide="ignore"):
        expected = m + np.log(l)
    assert_close(got[~empty], expected[~empty], dtype=got.dtype, scale=np.broadcast_to(scale, m.shape)[~empty],
                 what=what)


def finite(a):
    """a in float64 with -inf (masked scores) as 0: for rounding scales, where a masked score contributes nothing."""
    a = np.asarray(a, np.float64)
    return np.where(np.isneginf(a), 0.0, a)


@pytest.mark.exercise("ex11.2")
@given(score_rows(), st.integers(1, 23))
def test_one_update_is_the_state_of_both_blocks_together(rows, cut):
    """Reading block A then block B gives the max and the sum of A and B read in one piece, exactly (the rescaling
    by exp(m_A - m_AB) is exact), with the rescale and the weights the update promises."""
    scores, _ = rows
    cut = min(cut, scores.shape[-1] - 1)
    a, b = scores[:, :cut], scores[:, cut:]
    m_a, l_a = direct_state(a) if cut else (np.full(len(scores), -np.inf), np.zeros(len(scores)))
    m_a, l_a = m_a.astype(scores.dtype), l_a.astype(scores.dtype)  # the state after block A, in the dtype
    m, l, rescale, weights = online_softmax_update(m_a, l_a, b)
    m_ab, l_ab = direct_state(scores)
    assert m.dtype == scores.dtype and l.dtype == scores.dtype
    assert np.array_equal(m, m_ab), "m_new must be the max of the old max and the block's scores"
    origin = np.where(np.isneginf(m_ab), 0.0, m_ab)  # (R,)
    # exp(d) rounds d to ~ulp(|d|): relative error (1 + |d|) eps, d the exponent (0 for a masked score's exp(-inf))
    d_a, d_b = finite(m_a) - origin, finite(b) - origin[:, None]
    want_rescale = np.exp(m_a.astype(np.float64) - origin)  # 0 where m_a = -inf
    want_weights = np.exp(b.astype(np.float64) - origin[:, None])  # 0 where the score is -inf
    assert_close(rescale, want_rescale, dtype=scores.dtype, scale=want_rescale * (1 + np.abs(d_a)),
                 what="rescale = exp(m - m_new) (0 for a row that had seen only -inf)")
    assert_close(weights, want_weights, dtype=scores.dtype, scale=want_weights * (1 + np.abs(d_b)),
                 what="weights = exp(s - m_new) (relative to 0 while m_new is -inf)")
    l_scale = (np.sum(want_weights * (1 + np.abs(d_b)), axis=-1) + l_a * want_rescale * (1 + np.abs(d_a))
               + l_ab * scores.shape[-1])
    assert_close(l, l_ab, dtype=scores.dtype, scale=l_scale, what="l_new = l * exp(m - m_new) + sum exp(s - m_new)")


@pytest.mark.exercise("ex11.2")
@given(score_rows())
def test_logsumexp_online_equals_the_direct_formula(rows):
    scores, block = rows
    got = logsumexp_online(scores, block)
    assert got.dtype == scores.dtype
    assert_lse_close(got, scores, what=f"logsumexp_online with blocks of {block}")


@pytest.mark.exercise("ex11.2")
@given(score_rows(), st.integers(1, 30), st.integers(0, 2**16))
def test_online_softmax_depends_on_neither_block_size_nor_order(rows, other_block, seed):
    """The softmax of a row is a function of the set of its scores: shuffled and read in other blocks, each
    score keeps its probability."""
    scores, block = rows
    order = np.random.default_rng(seed).permutation(scores.shape[-1])
    p = softmax_online(scores, block)
    p_shuffled = softmax_online(scores[:, order], other_block)[:, np.argsort(order)]
    m, _ = direct_state(scores)
    live = ~np.isneginf(m)
    # p = exp(s - lse): relative error (1 + |s - lse|) eps, and lse's own (|m| + 2 L) eps
    scale = np.abs(p[live]) * (1 + np.abs(finite(scores[live]) - m[live, None]) + 2 * np.abs(m[live, None])
                               + 2 * scores.shape[-1])
    assert_close(p_shuffled[live], p[live], dtype=scores.dtype, scale=scale,
                 what=f"probabilities with blocks of {other_block} in shuffled order against blocks of {block}")
    assert np.all(np.isnan(p[~live])), "a fully masked row has no softmax: NaN, as softmax_ref's exp(-inf + inf)"


@st.composite
def attention_problems(draw):
    """(q, k, v, mask, scale, block): batch shapes that broadcast, some queries with every key masked, logits large
    enough to overflow a float32 exp without the max, block sizes from 1 to past Lk."""
    dtype = draw(float_dtypes)
    batch = draw(st.sampled_from([(), (2,), (2, 3)]))
    lq, lk, d, dv = (draw(st.integers(1, hi)) for hi in (6, 13, 5, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gain = draw(st.sampled_from([1.0, 20.0]))  # 20: scores of order 400 (exp(89) overflows float32)
    q = (gain * rng.standard_normal(batch + (lq, d))).astype(dtype)
    k = (gain * rng.standard_normal((lk, d) if draw(st.booleans()) else batch + (lk, d))).astype(dtype)
    v = rng.standard_normal(batch + (lk, dv)).astype(dtype)
    mask = None
    if draw(st.booleans()):
        mask = rng.random((lq, lk)) < 0.6
        mask[draw(st.integers(0, lq - 1))] = False  # a query with no key to attend
    return q, k, v, mask, 1 / np.sqrt(d), draw(st.integers(1, lk + 2))


@pytest.mark.exercise("ex11.2")
@given(attention_problems())
def test_tiled_attention_equals_the_twin_and_keeps_the_lse(problem):
    """[E45] out as the twin's (NaN for a query with no key), lse = log sum_j exp(s_j), and the twin's probabilities
    recomputed from the lse alone, P = exp(S - lse), as FlashAttention's backward does."""
    q, k, v, mask, scale, block = problem
    out, lse = attention_forward_tiled(q, k, v, mask, scale, block)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    expected, probs = attention_forward_ref(q64, k64, v64, mask, scale)
    scores = (q64 @ np.swapaxes(k64, -1, -2)) * scale  # (..., Lq, Lk)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    live = ~np.all(np.isneginf(scores), axis=-1)  # (..., Lq): queries with a key to attend
    assert out.dtype == q.dtype and out.shape == expected.shape and lse.dtype == q.dtype
    assert np.all(np.isnan(out[~live])), "a query with every key masked must get NaN (0 / 0), as the twin"
    # each score rounds to ~D |q||k| scale eps in q's dtype; then as in the rows above, per key
    magnitude = q.shape[-1] * np.max((np.abs(q64) @ np.swapaxes(np.abs(k64), -1, -2)) * scale, axis=-1)
    lse64 = np.where(live, lse.astype(np.float64), 0.0)
    row_scale = 1 + magnitude + 2 * np.abs(lse64) + np.max(np.abs(finite(scores)), axis=-1) + 2 * k.shape[-2]
    out_scale = (probs @ np.abs(v64)) * row_scale[..., None]
    assert_close(out[live], expected[live], dtype=q.dtype, scale=out_scale[live],
                 what=f"attention out with blocks of {block} keys")
    assert_lse_close(lse, scores, what="attention lse", extra=magnitude)
    with np.errstate(invalid="ignore"):
        recomputed = np.exp(scores - lse.astype(np.float64)[..., None])  # (..., Lq, Lk)
    assert_close(recomputed[live], probs[live], dtype=q.dtype, scale=probs[live] * row_scale[live][..., None],
                 what="exp(S - lse) against the twin's probabilities")


# --- exercise 11.3: the weight gradient as one GEMM ---------------------------------------------------------------


@pytest.mark.exercise("ex11.3")
@given(conv_problems())
def test_weight_grad_as_one_gemm_equals_the_twin(problem):
    x, weight, grad_out, stride, padding = problem
    _, _, grad_w, grad_w_scale = conv_scales(x, weight, grad_out, stride, padding)
    got = conv2d_weight_grad_gemm(grad_out, im2col(x, weight.shape[2:], stride, padding), weight.shape)
    assert got.dtype == x.dtype
    assert_close(got, grad_w, dtype=x.dtype, scale=grad_w_scale, what="grad_W = G @ cols^T against the twin's")


@pytest.mark.exercise("ex11.3")
@given(conv_problems(dtype=np.float64))
def test_weight_grad_as_one_gemm_equals_central_differences(problem):
    """L(W) = <grad_out, conv(x, W)> is linear in W, so its central differences are its gradient up to rounding."""
    x, weight, grad_out, stride, padding = problem
    got = conv2d_weight_grad_gemm(grad_out, im2col(x, weight.shape[2:], stride, padding), weight.shape)
    h = 1e-3
    numeric = np.zeros_like(weight)
    for idx in np.ndindex(weight.shape):
        step = np.zeros_like(weight)
        step[idx] = h
        up = np.sum(grad_out * conv2d_forward_ref(x, weight + step, stride, padding))
        down = np.sum(grad_out * conv2d_forward_ref(x, weight - step, stride, padding))
        numeric[idx] = (up - down) / (2 * h)
    assert_close(got, numeric, tol=FINITE_DIFFERENCES, what="grad_W against float64 central differences")


# --- against PyTorch ------------------------------------------------------------------------------------------------


@pytest.mark.torch
@given(conv_problems(dtype=np.float64))
def test_conv_as_gemms_equals_torch(problem):
    import torch

    x, weight, grad_out, stride, padding = problem
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    y = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding)
    y.backward(torch.tensor(grad_out))
    _, out_scale, _, grad_w_scale = conv_scales(x, weight, grad_out, stride, padding)
    assert_close(conv2d_forward_im2col(x, weight, stride, padding), y.detach().numpy(), scale=out_scale,
                 what="W @ im2col(x) against torch.nn.functional.conv2d")
    got = conv2d_weight_grad_gemm(grad_out, im2col(x, weight.shape[2:], stride, padding), weight.shape)
    assert_close(got, tw.grad.numpy(), scale=grad_w_scale, what="grad_W against torch autograd")


@pytest.mark.torch
@given(attention_problems(), score_rows())
def test_online_softmax_and_tiled_attention_equal_torch(problem, rows):
    """Against torch.logsumexp, torch.softmax and scaled_dot_product_attention in float64 (on queries with a key to
    attend: PyTorch 2.13 returns zeros for the others, where the twin and this kernel give NaN)."""
    import torch

    scores, block = rows
    live = ~np.all(np.isneginf(scores), axis=-1)
    t_scores = torch.tensor(scores.astype(np.float64))
    expected_lse = torch.logsumexp(t_scores, -1).numpy()
    assert_close(logsumexp_online(scores, block)[live], expected_lse[live], dtype=scores.dtype,
                 scale=np.abs(expected_lse[live]) + 2 * scores.shape[-1], what="logsumexp_online against torch")
    assert_close(softmax_online(scores.astype(np.float64), block)[live], torch.softmax(t_scores, -1).numpy()[live],
                 what="softmax_online against torch.softmax")
    q, k, v, mask, scale, block = problem
    q, v = q.astype(np.float64), v.astype(np.float64)
    k = np.broadcast_to(k.astype(np.float64), q.shape[:-2] + k.shape[-2:])
    out, _ = attention_forward_tiled(q, k, v, mask, scale, block)
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.tensor(q), torch.tensor(k), torch.tensor(v), attn_mask=None if mask is None else torch.tensor(mask),
        scale=scale).numpy()
    with_keys = np.ones(out.shape[:-1], bool) if mask is None else np.broadcast_to(mask.any(-1), out.shape[:-1])
    assert_close(out[with_keys], expected[with_keys], scale=np.max(np.abs(v)),
                 what="attention_forward_tiled against scaled_dot_product_attention")


# --- edges and bad input ------------------------------------------------------------------------------------------


def test_attention_over_no_keys_is_an_empty_sum():
    q = np.ones((2, 3, 4))
    out, lse = attention_forward_tiled(q, np.ones((2, 0, 4)), np.ones((2, 0, 5)), None, 0.5, 4)
    assert out.shape == (2, 3, 5) and np.all(out == 0) and np.all(np.isneginf(lse))


@pytest.mark.parametrize("block", [0, -1, 2.5, True])
def test_a_block_size_that_is_not_a_positive_int_is_refused(block):
    with pytest.raises(ValueError, match="block_size: expected an int >= 1"):
        logsumexp_online(np.zeros((2, 5)), block)


def test_conv2d_forward_im2col_names_a_wrong_weight():
    with pytest.raises(ValueError, match=r"weight: expected shape \(O, 3, KH, KW\)"):
        conv2d_forward_im2col(np.zeros((1, 3, 5, 5)), np.zeros((2, 4, 3, 3)), 1, 0)
