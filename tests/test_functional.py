"""The neural-network ops of minidiff.functional against PyTorch (forward and backward, float64 and
float32) and against central differences, on the edge cases that break them: batch 1, odd sizes,
stride 2, padding 0/1/2; and the errors bad arguments get."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import Case, check_against_torch, check_gradcheck

import minidiff.functional as F
from minidiff.autodiff import Tensor
from minidiff.kernels import conv2d as conv_kernels


@st.composite
def conv_cases(draw):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * padding), 7))
    w = draw(st.integers(max(1, kw - 2 * padding), 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, kh, kw)), rng.standard_normal(o))
    return "conv2d", Case(arrays, lambda x, wt, b: F.conv2d(x, wt, b, stride=stride, padding=padding),
                          lambda t, x, wt, b: t.nn.functional.conv2d(x, wt, b, stride=stride, padding=padding))


@st.composite
def nn_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["linear", "avg_pool2d", "upsample", "group_norm", "layer_norm", "attention",
                                 "cross_entropy", "mse", "embedding"]))
    n = draw(st.integers(1, 3))
    if kind == "linear":
        arrays = (rng.standard_normal((n, 2, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3))
        return kind, Case(arrays, F.linear, lambda t, x, w, b: t.nn.functional.linear(x, w, b))
    if kind == "avg_pool2d":
        k, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        return kind, Case((rng.standard_normal((n, 2, 7, 5)),), lambda x: F.avg_pool2d(x, k, s),
                          lambda t, x: t.nn.functional.avg_pool2d(x, k, s))
    if kind == "upsample":
        return kind, Case((rng.standard_normal((n, 2, 3, 5)),), lambda x: F.upsample_nearest2d(x, 2),
                          lambda t, x: t.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    if kind == "group_norm":
        groups = draw(st.sampled_from([1, 2, 3, 6]))
        arrays = (rng.standard_normal((n, 6, 3, 5)) * 2 + 1, rng.standard_normal(6), rng.standard_normal(6))
        return kind, Case(arrays, lambda x, w, b: F.group_norm(x, groups, w, b),
                          lambda t, x, w, b: t.nn.functional.group_norm(x, groups, w, b))
    if kind == "layer_norm":
        arrays = (rng.standard_normal((n, 4, 6)) + 3, rng.standard_normal((4, 6)), rng.standard_normal((4, 6)))
        return kind, Case(arrays, lambda x, w, b: F.layer_norm(x, (4, 6), w, b),
                          lambda t, x, w, b: t.nn.functional.layer_norm(x, (4, 6), w, b))
    if kind == "attention":
        lq, lk = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        mask = rng.random((lq, lk)) < 0.7
        mask[:, 0] = True  # every query keeps one key
        use_mask = draw(st.booleans())
        arrays = (rng.standard_normal((n, 2, lq, 4)), rng.standard_normal((n, 2, lk, 4)),
                  rng.standard_normal((n, 2, lk, 3)))

        def theirs(t, q, k, v):
            m = t.from_numpy(mask) if use_mask else None
            return t.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)

        return kind, Case(arrays, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask if use_mask else None),
                          theirs)
    if kind == "cross_entropy":
        target = rng.integers(0, 4, n)
        return kind, Case((rng.standard_normal((n, 4)) * 3,), lambda x: F.cross_entropy(x, target),
                          lambda t, x: t.nn.functional.cross_entropy(x, t.from_numpy(target)))
    if kind == "mse":
        target = rng.standard_normal((n, 3))
        return kind, Case((rng.standard_normal((n, 3)),), lambda x: F.mse_loss(x, target),
                          lambda t, x: t.nn.functional.mse_loss(x, t.from_numpy(target).to(x.dtype)))
    idx = rng.integers(0, 5, (n, 4))  # repeats: their gradients add
    return kind, Case((rng.standard_normal((5, 3)),), lambda w: F.embedding(idx, w),
                      lambda t, w: t.nn.functional.embedding(t.from_numpy(idx), w))


FUNCTIONAL_CASES = st.one_of(conv_cases(), nn_cases())


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=120)
@given(named_case=FUNCTIONAL_CASES)
def test_functional_ops_match_pytorch(named_case, dtype):
    """[E45] attention among them: softmax(Q K^T / sqrt(d)) V, masked, against PyTorch's."""
    check_against_torch(named_case, dtype)


@settings(max_examples=80)
@given(named_case=FUNCTIONAL_CASES)
def test_functional_ops_pass_gradcheck(named_case):
    check_gradcheck(named_case)


EMPTY_CASES = {
    "group_norm, N = 0": Case((np.zeros((0, 6, 3, 5)), np.ones(6), np.zeros(6)),
                              lambda x, w, b: F.group_norm(x, 3, w, b),
                              lambda t, x, w, b: t.nn.functional.group_norm(x, 3, w, b)),
    "group_norm (N, C), N = 0": Case((np.zeros((0, 4)),), lambda x: F.group_norm(x, 2),
                                     lambda t, x: t.nn.functional.group_norm(x, 2)),
    **{f"{name}, empty axis {axis}": Case((np.zeros(shape),), lambda x, f=name, a=axis: getattr(F, f)(x, axis=a),
                                          lambda t, x, f=name, a=axis: getattr(t, f)(x, dim=a))
       for name in ("softmax", "log_softmax") for shape, axis in (((3, 0), -1), ((2, 0, 4), 1), ((0, 3), 0))},
}


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", EMPTY_CASES)
def test_empty_inputs_give_empty_outputs_and_gradients_as_in_pytorch(name, dtype):
    """An empty batch or an empty softmax axis: an empty output, empty input gradients and zero parameter
    gradients (group norm's weight and bias), as PyTorch gives."""
    check_against_torch((name, EMPTY_CASES[name]), dtype)


@pytest.mark.exercise("ex01.5")
@given(named_case=conv_cases(), seed=st.integers(0, 2**16))
def test_scatter_windows_is_the_adjoint_of_windows_and_conv2d_gradients_check(named_case, seed):
    """<windows(x), G> = <x, scatter_windows(G)> for all x, G; then conv2d passes gradcheck."""
    _, case = named_case
    x = case.arrays[0]
    kernel = case.arrays[1].shape[2:]
    for stride, padding in (((1, 1), (0, 0)), ((2, 1), (1, 2))):
        if any(s + 2 * p < k for s, k, p in zip(x.shape[2:], kernel, padding, strict=True)):
            continue
        win = conv_kernels.windows(x, kernel, stride, padding)
        g = np.random.default_rng(seed).standard_normal(win.shape)
        back = conv_kernels.scatter_windows(g, x.shape, stride, padding)
        assert back.shape == x.shape
        assert np.sum(win * g) == pytest.approx(np.sum(x * back), rel=1e-12, abs=1e-12)
    check_gradcheck(named_case)


def test_dropout_keeps_the_mean_and_routes_gradients_through_kept_elements():
    x = Tensor(np.ones(200_000), requires_grad=True)
    y = F.dropout(x, 0.3, training=True, rng=np.random.default_rng(0))
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / 0.7)
    # fraction dropped ~ Binomial(n, 0.3) / n: standard error sqrt(0.21 / n) ~ 1e-3; allow 5 of them
    assert abs((~kept).mean() - 0.3) < 5e-3
    y.sum().backward()
    np.testing.assert_allclose(x.grad, kept / 0.7)
    assert F.dropout(x, 0.3, training=False) is x
    with pytest.raises(TypeError, match="rng: dropout draws random numbers"):
        F.dropout(x, 0.3)
    with pytest.raises(ValueError, match=r"p: expected a probability in \[0, 1\)"):
        F.dropout(x, 1.0, rng=np.random.default_rng(0))


def t(*shape):
    return Tensor(np.zeros(shape))


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: F.group_norm(t(2, 6, 3), 4), ValueError, "num_groups: expected a positive divisor of the 6 channels"),
    (lambda: F.conv2d(t(1, 3, 5, 5), t(2, 4, 3, 3)), ValueError, "weight: expected 3 input channels"),
    (lambda: F.conv2d(t(3, 5, 5), t(2, 3, 3, 3)), ValueError, "x: expected 4 dimensions"),
    (lambda: F.conv2d(t(1, 3, 2, 2), t(2, 3, 3, 3)), ValueError, "x: padded height 2 is smaller than the kernel"),
    (lambda: F.conv2d(t(1, 3, 5, 5), t(2, 3, 3, 3), stride=0), ValueError, "stride: expected an int >= 1"),
    (lambda: F.conv2d(t(1, 3, 5, 5), t(2, 3, 3, 3), t(3)), ValueError, r"bias: expected shape \(2,\)"),
    (lambda: F.linear(t(2, 5), t(3, 4)), ValueError, "x: expected last axis 4"),
    (lambda: F.layer_norm(t(2, 5), (4,)), ValueError, "normalized_shape: expected the trailing axes"),
    (lambda: F.scaled_dot_product_attention(t(2, 3, 4), t(2, 5, 3), t(2, 5, 4)), ValueError,
     "k: expected feature size 4"),
    (lambda: F.scaled_dot_product_attention(t(3, 4), t(5, 4), t(5, 2), mask=np.ones((3, 5))), TypeError,
     "mask: expected a boolean array"),
    (lambda: F.cross_entropy(t(3, 4), np.array([0, 4, 1])), ValueError, r"target: class indices must be in \[0, 4\)"),
    (lambda: F.cross_entropy(t(3, 4), np.array([0.0, 1.0, 1.0])), ValueError, "target: expected integer class"),
    (lambda: F.embedding(np.array([5]), t(5, 2)), ValueError, r"indices: expected values in \[0, 5\)"),
    (lambda: F.mse_loss(t(3), np.zeros(4)), ValueError, r"target: expected shape \(3,\)"),
    (lambda: F.softmax(np.zeros(3)), TypeError, "x: expected a minidiff Tensor"),
])
def test_bad_arguments_get_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
