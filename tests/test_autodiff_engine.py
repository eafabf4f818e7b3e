"""The backward pass itself: accumulation, graph freeing, no_grad, deep graphs, dtypes, errors; and
the scalar Value class that opens chapter 01."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff as md
from minidiff.autodiff import Function, Tensor, Value, gradcheck, no_grad


def leaf(*shape, dtype=np.float64, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


def test_a_tensor_used_twice_gets_both_gradients():
    x = leaf(3)
    (x * x + x).sum().backward()  # d/dx (x^2 + x) = 2x + 1
    np.testing.assert_allclose(x.grad, 2 * x.data + 1, rtol=1e-15)


def test_diamond_graph_accumulates_through_both_paths():
    x = leaf(4)
    a, b = x.exp(), x * 3.0
    (a * b).sum().backward()  # d/dx (3 x e^x) = 3 e^x (1 + x)
    np.testing.assert_allclose(x.grad, 3 * np.exp(x.data) * (1 + x.data), rtol=1e-14)


def test_leaf_gradients_accumulate_across_backward_calls_until_zeroed():
    x = leaf(2)
    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 5.0])
    x.zero_grad()
    assert x.grad is None


def test_only_leaves_receive_grad():
    x = leaf(2)
    y = x * 2.0
    y.sum().backward()
    assert y.grad is None
    assert not y.is_leaf


def test_graph_is_freed_after_backward_and_can_be_retained():
    x = leaf(3)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="graph was already freed"):
        y.backward()


def test_a_chain_of_100000_operations_backpropagates():
    x = leaf(2)
    y = x
    for _ in range(100_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 1.0001**100_000, rtol=1e-9)


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    x = leaf(3)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad
    z = (x.detach() * x).sum()  # only the second factor is tracked: dz/dx = x
    z.backward()
    np.testing.assert_allclose(x.grad, x.data)

    @no_grad()
    def double(t):
        return t * 2.0

    assert not double(x).requires_grad


def test_backward_errors_are_clear():
    x = leaf(2, 2)
    with pytest.raises(RuntimeError, match="gradient must be given for a tensor of shape"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"gradient: expected shape \(2, 2\)"):
        (x * 2.0).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()
    with pytest.raises(TypeError, match="requires_grad: only float32 and float64"):
        Tensor(np.arange(3), requires_grad=True)


def test_a_backward_that_returns_the_wrong_shape_is_reported():
    class Broken(Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum(axis=0)

        @staticmethod
        def backward(ctx, grad):
            return grad  # forgot to broadcast back to the input's shape

    x = leaf(3, 2)
    with pytest.raises(RuntimeError, match=r"Broken.backward returned a gradient of shape \(2,\) for an input of "
                                           r"shape \(3, 2\)"):
        Broken.apply(x).sum().backward()


def test_gradcheck_catches_a_wrong_derivative():
    class WrongExp(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save(x)
            return np.exp(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved
            return grad * np.exp(x) * 1.001  # off by 0.1 %

    x = leaf(5)
    report = gradcheck(WrongExp.apply, [x], raise_on_failure=False)
    assert not report.ok
    assert report.inputs[0].worst_rel == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(AssertionError, match="gradcheck FAILED"):
        gradcheck(WrongExp.apply, [x])
    with pytest.raises(TypeError, match="gradcheck needs float64"):
        gradcheck(lambda t: t.exp(), [leaf(2, dtype=np.float32)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_kept_through_forward_and_backward(dtype):
    x = leaf(3, 4, dtype=dtype)
    y = ((x * 2.0 + 1.0) ** 2 / 3.0).exp().mean(axis=0)
    assert y.dtype == dtype
    y.sum().backward()
    assert x.grad.dtype == dtype


def test_python_numbers_default_to_float32_and_arrays_keep_their_dtype():
    assert md.tensor([1.0, 2.0]).dtype == np.float32
    assert md.tensor(np.ones(2)).dtype == np.float64
    assert md.tensor([1, 2]).dtype.kind == "i"
    assert md.tensor([1.0], dtype=np.float64).dtype == np.float64


def test_numpy_operands_on_the_left_defer_to_the_tensor():
    x = leaf(3)
    y = np.array([1.0, 2.0, 3.0]) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0])


# --- the scalar Value class --------------------------------------------------------------------


@given(a=st.floats(-2, 2), b=st.floats(-2, 2))
def test_value_gradients_equal_the_hand_derivation(a, b):
    """c = tanh(a b + a): dc/da = (b + 1)(1 - c^2), dc/db = a (1 - c^2)."""
    va, vb = Value(a), Value(b)
    c = (va * vb + va).tanh()
    c.backward()
    assert va.grad == pytest.approx((b + 1) * (1 - c.data**2), rel=1e-12, abs=1e-12)
    assert vb.grad == pytest.approx(a * (1 - c.data**2), rel=1e-12, abs=1e-12)


@given(xs=st.lists(st.floats(0.1, 2.0), min_size=3, max_size=3))
def test_value_agrees_with_tensor(xs):
    """The same expression through Value and through Tensor: the same value and gradients."""
    vs = [Value(x) for x in xs]
    out_v = ((vs[0] * vs[1]).exp() / (vs[2] ** 2 + 1.0)).log() - vs[1].sigmoid() + vs[2].relu()
    out_v.backward()
    t = Tensor(np.array(xs), requires_grad=True)
    out_t = ((t[0] * t[1]).exp() / (t[2] ** 2 + 1.0)).log() - t[1].sigmoid() + t[2].relu()
    out_t.backward()
    assert out_v.data == pytest.approx(out_t.item(), rel=1e-12)
    # Gradients are sums of O(1) terms that may cancel: absolute error relative to the terms, 1e-12.
    np.testing.assert_allclose([v.grad for v in vs], t.grad, rtol=1e-11, atol=1e-12)


def test_value_backward_handles_deep_graphs():
    x = Value(0.5)
    y = x
    for _ in range(50_000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0
    assert math.isclose(y.data, 0.5)


def test_a_zero_dimensional_leaf_gets_an_array_gradient():
    x = Tensor(np.array(2.0), requires_grad=True)
    x.exp().backward()
    assert isinstance(x.grad, np.ndarray)
    assert x.grad.shape == ()
    assert x.grad == pytest.approx(np.exp(2.0))
