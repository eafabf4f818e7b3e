"""The neural-network ops of minidiff.functional beyond the op table (tests/op_table.py checks every op against
PyTorch, central differences and its NumPy twin): chapter 01's conv2d exercise, dropout's statistics, and the
errors bad arguments get."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from op_cases import Case, check_gradcheck

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
        assert np.sum(x * back) == pytest.approx(np.sum(win * g), rel=1e-12, abs=1e-12), \
            f"stride {stride}, padding {padding}: <x, scatter_windows(G)> must equal <windows(x), G>\n" \
            "add (+=) each window's gradient into the padded input at the pixels it read, then cut the padding off"
    check_gradcheck(named_case)


def test_dropout_drops_a_fraction_p_and_needs_a_generator():
    """The fraction dropped is p (the op table checks the scaling and the gradients on a given mask)."""
    x = Tensor(np.ones(200_000), requires_grad=True)
    kept = F.dropout(x, 0.3, training=True, rng=np.random.default_rng(0)).data != 0
    # fraction dropped ~ Binomial(n, 0.3) / n: standard error sqrt(0.21 / n) ~ 1e-3; allow 5 of them
    assert abs((~kept).mean() - 0.3) < 5e-3
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
