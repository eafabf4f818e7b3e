"""Every primitive and functional op: forward and backward against PyTorch autograd (float64 to
1e-10 relative, float32 to the dtype table) and against float64 central differences (gradcheck), on
hypothesis-drawn shapes (batch 1, odd sizes, broadcasting of size-1 axes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_cases import Case, check_against_torch, check_gradcheck

import minidiff as md
import minidiff.functional as F
from minidiff.autodiff import Tensor, gradcheck


def _pos(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def _normal(rng, shape):
    return rng.standard_normal(shape)


UNARY = {
    "neg": (_normal, lambda x: -x, lambda t, x: -x),
    "exp": (_normal, lambda x: x.exp(), lambda t, x: x.exp()),
    "log": (_pos, lambda x: x.log(), lambda t, x: x.log()),
    "sqrt": (_pos, lambda x: x.sqrt(), lambda t, x: x.sqrt()),
    "abs": (_normal, lambda x: x.abs(), lambda t, x: x.abs()),
    "tanh": (_normal, lambda x: x.tanh(), lambda t, x: x.tanh()),
    "sigmoid": (_normal, F.sigmoid, lambda t, x: t.sigmoid(x)),
    "relu": (_normal, F.relu, lambda t, x: t.relu(x)),
    "silu": (_normal, F.silu, lambda t, x: t.nn.functional.silu(x)),
    "gelu": (_normal, F.gelu, lambda t, x: t.nn.functional.gelu(x)),
    "gelu_tanh": (_normal, lambda x: F.gelu(x, "tanh"), lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    "clip": (_normal, lambda x: F.clip(x, -0.5, 0.7), lambda t, x: x.clamp(-0.5, 0.7)),
    "pow_scalar": (_pos, lambda x: x**2.5, lambda t, x: x**2.5),
    "softmax": (_normal, lambda x: F.softmax(x, axis=-1), lambda t, x: t.softmax(x, dim=-1)),
    "log_softmax": (_normal, lambda x: F.log_softmax(x, axis=0), lambda t, x: t.log_softmax(x, dim=0)),
}

BINARY = {
    "add": (_normal, lambda a, b: a + b, lambda t, a, b: a + b),
    "sub": (_normal, lambda a, b: a - b, lambda t, a, b: a - b),
    "mul": (_normal, lambda a, b: a * b, lambda t, a, b: a * b),
    "div": (_pos, lambda a, b: a / b, lambda t, a, b: a / b),
    "pow": (_pos, lambda a, b: a**b, lambda t, a, b: a**b),
    "where": (_normal, lambda a, b: F.where(a.data > b.data, a, b), lambda t, a, b: t.where(a > b, a, b)),
}


@st.composite
def unary_cases(draw):
    name = draw(st.sampled_from(sorted(UNARY)))
    make, ours, theirs = UNARY[name]
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return name, Case((make(rng, shape),), ours, theirs)


@st.composite
def binary_cases(draw):
    name = draw(st.sampled_from(sorted(BINARY)))
    make, ours, theirs = BINARY[name]
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return name, Case(tuple(make(rng, s) for s in shapes), ours, theirs)


@st.composite
def reduction_cases(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1, max_size=len(shape)))
    axis = tuple(axes) if draw(st.booleans()) else None
    keepdims = draw(st.booleans())
    kind = draw(st.sampled_from(["sum", "mean", "max", "var0", "var1"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dim = list(range(len(shape))) if axis is None else list(axis)
    n = int(np.prod([shape[a] for a in dim]))
    if kind == "var1" and n < 2:
        kind = "var0"
    ours = {
        "sum": lambda x: x.sum(axis=axis, keepdims=keepdims),
        "mean": lambda x: x.mean(axis=axis, keepdims=keepdims),
        "max": lambda x: x.max(axis=axis, keepdims=keepdims),
        "var0": lambda x: x.var(axis=axis, keepdims=keepdims),
        "var1": lambda x: x.var(axis=axis, keepdims=keepdims, correction=1),
    }[kind]
    theirs = {
        "sum": lambda t, x: x.sum(dim=dim, keepdim=keepdims),
        "mean": lambda t, x: x.mean(dim=dim, keepdim=keepdims),
        "max": lambda t, x: x.amax(dim=dim, keepdim=keepdims),
        "var0": lambda t, x: x.var(dim=dim, keepdim=keepdims, correction=0),
        "var1": lambda t, x: x.var(dim=dim, keepdim=keepdims, correction=1),
    }[kind]
    return kind, Case((rng.standard_normal(shape),), ours, theirs)


@st.composite
def shape_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["reshape", "permute", "slice", "int_index", "bool_index", "concat", "stack",
                                 "pad"]))
    x = rng.standard_normal((3, 4, 2))
    if kind == "reshape":
        return kind, Case((x,), lambda a: a.reshape(4, 6), lambda t, a: a.reshape(4, 6))
    if kind == "permute":
        perm = tuple(draw(st.permutations([0, 1, 2])))
        return kind, Case((x,), lambda a: a.permute(perm), lambda t, a: a.permute(perm))
    if kind == "slice":
        return kind, Case((x,), lambda a: a[1:, ::-2, 1], lambda t, a: a[1:, :, 1].flip(1)[:, ::2])
    if kind == "int_index":  # repeated rows must add their gradients
        idx = np.array([2, 0, 2, 2])
        return kind, Case((x,), lambda a: a[idx], lambda t, a: a[t.from_numpy(idx)])
    if kind == "bool_index":
        m = x[..., 0] > 0
        return kind, Case((x,), lambda a: a[m], lambda t, a: a[t.from_numpy(m)])
    y = rng.standard_normal((3, 1, 2))
    if kind == "concat":
        return kind, Case((x, y), lambda a, b: F.concat([a, b], axis=1), lambda t, a, b: t.cat([a, b], dim=1))
    if kind == "stack":
        return kind, Case((x, x * 2), lambda a, b: F.stack([a, b], axis=2), lambda t, a, b: t.stack([a, b], dim=2))
    return kind, Case((x,), lambda a: F.pad(a, [(0, 0), (1, 2), (2, 0)], 0.5),
                      lambda t, a: t.nn.functional.pad(a, (2, 0, 1, 2), value=0.5))


@st.composite
def matmul_cases(draw):
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    a_shape = (*batch[0], n, k) if draw(st.booleans()) else (k,)
    b_shape = (*batch[1], k, m) if draw(st.booleans()) else (k,)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return "matmul", Case((rng.standard_normal(a_shape), rng.standard_normal(b_shape)), lambda a, b: a @ b,
                          lambda t, a, b: a @ b)


ALL_CASES = st.one_of(unary_cases(), binary_cases(), reduction_cases(), shape_cases(), matmul_cases())


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=150)
@given(named_case=ALL_CASES)
def test_primitive_ops_match_pytorch(named_case, dtype):
    check_against_torch(named_case, dtype)


@settings(max_examples=150)
@given(named_case=ALL_CASES)
def test_primitive_ops_pass_gradcheck(named_case):
    check_gradcheck(named_case)


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
