"""Chapter 01's exercises on the primitive ops (sum_to_shape, Mul and MatMul backward, softmax backward) and the
hypothesis strategies they draw from. Every op itself is checked on its own samples by the op table
(tests/op_table.py, tests/test_op_table.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_cases import Case, check_gradcheck

import minidiff as md
import minidiff.functional as F
from minidiff.autodiff import Tensor, gradcheck


def _pos(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def _normal(rng, shape):
    return rng.standard_normal(shape)


BINARY = {
    "add": (_normal, lambda a, b: a + b, lambda t, a, b: a + b),
    "sub": (_normal, lambda a, b: a - b, lambda t, a, b: a - b),
    "mul": (_normal, lambda a, b: a * b, lambda t, a, b: a * b),
    "div": (_pos, lambda a, b: a / b, lambda t, a, b: a / b),
    "pow": (_pos, lambda a, b: a**b, lambda t, a, b: a**b),
    "where": (_normal, lambda a, b: F.where(a.data > b.data, a, b), lambda t, a, b: t.where(a > b, a, b)),
}


@st.composite
def binary_cases(draw):
    name = draw(st.sampled_from(sorted(BINARY)))
    make, ours, theirs = BINARY[name]
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return name, Case(tuple(make(rng, s) for s in shapes), ours, theirs)


@st.composite
def matmul_cases(draw):
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    a_shape = (*batch[0], n, k) if draw(st.booleans()) else (k,)
    b_shape = (*batch[1], k, m) if draw(st.booleans()) else (k,)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return "matmul", Case((rng.standard_normal(a_shape), rng.standard_normal(b_shape)), lambda a, b: a @ b,
                          lambda t, a, b: a @ b)


# --- exercises of chapter 01 ---------------------------------------------------------------------


@pytest.mark.exercise("ex01.1")
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4), seed=st.integers(0, 2**16))
def test_sum_to_shape_is_the_adjoint_of_broadcasting(shapes, seed):
    """<broadcast(x), g> = <x, sum_to_shape(g)> for every x and g: summing is broadcasting's adjoint."""
    from minidiff.autodiff.function import sum_to_shape

    x_shape = shapes.input_shapes[0]
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal(x_shape), rng.standard_normal(shapes.result_shape)
    reduced = sum_to_shape(g, x_shape)
    assert reduced.shape == x_shape
    lhs = np.sum(np.broadcast_to(x, shapes.result_shape) * g)
    assert lhs == pytest.approx(np.sum(x * reduced), rel=1e-12, abs=1e-12)


@pytest.mark.exercise("ex01.2")
@given(named_case=binary_cases().filter(lambda c: c[0] == "mul"))
def test_mul_backward_with_broadcasting(named_case):
    check_gradcheck(named_case)


@pytest.mark.exercise("ex01.3")
@given(named_case=matmul_cases())
def test_batched_matmul_backward(named_case):
    check_gradcheck(named_case)


@pytest.mark.exercise("ex01.4")
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), seed=st.integers(0, 2**16))
def test_softmax_backward(shape, seed):
    x = Tensor(np.random.default_rng(seed).standard_normal(shape) * 3, requires_grad=True)
    with md.use_backend("numpy"):  # the exercise is the NumPy twin; the cpp backend has a C++ kernel instead
        gradcheck(lambda t: F.softmax(t, axis=-1), [x])
