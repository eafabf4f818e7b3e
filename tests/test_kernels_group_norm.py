"""Group norm with the U-Net's fused epilogue (AdaGN scale and shift [E44], SiLU): the C++ kernel
(csrc/cpu/group_norm.cpp) against the NumPy twin on shapes that break it (N = 0 and 1, one channel per group,
channels per group not a multiple of the vector width, spatial 1x1, odd and empty, 2-D to 5-D inputs,
non-contiguous and negative-stride inputs, each optional input present or not), against PyTorch autograd,
through gradcheck, on any number of threads; constant groups, large offsets; bad input at the Python and C++
boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import (
    GRADS,
    PARAMS,
    arguments,
    assert_clear_error,
    assert_matches_twin,
    autodiff_tests,
    bad_calls,
    group_mean,
    make_problem,
    run_group_norm,
    same_on_every_thread_count,
)
from op_cases import Case
from strategies import float_dtypes, layouts
from tolerances import Tol, assert_close

import minidiff as md
import minidiff.functional as F
from minidiff.autodiff import Tensor
from minidiff.kernels.group_norm import (
    group_norm_backward,
    group_norm_forward,
)
from minidiff.nn.unet import adaptive_group_norm


@st.composite
def problems(draw):
    """Sizes from 0; one to five channels per group; x (N, C) to (N, C, D, H, W); each optional input drawn."""
    dtype = draw(float_dtypes)
    groups, per_group = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(0, 7), min_size=0, max_size=3))
    x_shape = (draw(st.integers(0, 3)), groups * per_group, *spatial)
    present = [name for name in PARAMS if draw(st.booleans())]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return make_problem(rng, dtype, x_shape, groups, present, draw(st.sampled_from([None, "silu"])),
                        draw(st.sampled_from([1e-5, 1e-2, 1.0])), spread=draw(st.sampled_from([0.3, 1.0, 4.0])),
                        offset=draw(st.floats(-3, 3)), per_sample_4d=draw(st.booleans()))


# --- the C++ kernel against the twin ------------------------------------------------------------------------------


@given(p=problems(), layout=layouts)
def test_cpp_equals_the_twin(p, layout):
    require_backend("cpp")
    assert_matches_twin(run_group_norm("cpp", p, layout), p)


@given(p=problems())
def test_numpy_path_is_the_twin(p):
    """The dispatch on "numpy" runs the twin itself, in x's dtype but for the statistics and x_hat (float64)."""
    assert_matches_twin(run_group_norm("numpy", p), p)


EDGE_SHAPES = {
    "N = 0": ((0, 6, 3, 5), 3),
    "x (N, C)": ((2, 4), 2),
    "1 x 1 spatial, C = G": ((3, 5, 1, 1), 5),
    "empty spatial": ((2, 6, 0, 3), 2),
    "N = 1, 3-D": ((1, 9, 7), 3),
    "5-D": ((2, 6, 3, 2, 5), 3),
    "17 channels per group": ((2, 34, 3, 3), 2),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", EDGE_SHAPES)
def test_edge_shapes(name, dtype):
    require_backend("cpp")
    x_shape, groups = EDGE_SHAPES[name]
    p = make_problem(np.random.default_rng(0), dtype, x_shape, groups)
    assert_matches_twin(run_group_norm("cpp", p), p, what=f"{name}: ")


# (x shape, groups): each over 2 kParallelGrain numbers, so 2 and 3 threads share the (sample, group) tasks
THREAD_SHAPES = [((6, 64, 16, 17), 32), ((3, 30, 41, 37), 5), ((1, 96, 40, 40), 32)]


@pytest.mark.parametrize(("x_shape", "groups"), THREAD_SHAPES)
def test_result_does_not_depend_on_the_thread_count(x_shape, groups):
    """Bit for bit on 1, 2 and 3 threads (grad_weight and grad_bias add the samples' terms in sample order)."""
    require_backend("cpp")
    p = make_problem(np.random.default_rng(1), np.float32, x_shape, groups)
    assert_matches_twin(same_on_every_thread_count(lambda: run_group_norm("cpp", p), ("y", "mean", "rstd", *GRADS)), p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_groups_normalize_to_zero_with_finite_gradients(dtype):
    """Variance 0: the corrected two-pass mean is the constant itself, so x_hat = 0 exactly: y = act(b (1 + scale)
    + shift), grad_weight = 0 (it multiplies x_hat), and grad_x = rstd (g - mean(g)) with g = dz w (1 + scale) the
    gradient of x_hat, finite (rstd = 1 / sqrt(eps))."""
    require_backend("cpp")
    rng = np.random.default_rng(2)
    p = make_problem(rng, dtype, (2, 6, 4, 3), 3)
    p["x"] = np.repeat(rng.standard_normal((2, 3)) * 100, 2 * 12).reshape(2, 6, 4, 3).astype(dtype)
    y, mean, rstd, grad_x, grad_weight, *_ = run_group_norm("cpp", p)
    weight, bias, scale, shift = (p[k].astype(np.float64) for k in PARAMS)  # (C,), (C,), (N, C), (N, C)
    z = (bias * (1 + scale) + shift)[:, :, None, None]  # (N, C, 1, 1)
    sig = 1 / (1 + np.exp(-z))
    assert_close(y, np.broadcast_to(z * sig, y.shape), dtype=dtype, what="y of constant groups:")
    np.testing.assert_array_equal(mean, p["x"][:, ::2, 0, 0], err_msg="the mean of a constant group")
    assert_close(rstd, np.full(rstd.shape, 1 / math.sqrt(p["eps"])), dtype=dtype, what="rstd:")
    np.testing.assert_array_equal(grad_weight, 0.0, err_msg="grad_weight of constant groups")
    g = p["grad_y"] * sig * (1 + z * (1 - sig)) * (weight * (1 + scale))[:, :, None, None]  # (N, C, H, W)
    expected = (g - group_mean(g, 3)) / math.sqrt(p["eps"])
    assert np.isfinite(grad_x).all()
    assert_close(grad_x, expected, dtype=dtype, scale=2 * np.abs(g).max() / math.sqrt(p["eps"]), what="grad_x:")


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_float32_statistics_stay_accurate_at_large_offsets(backend):
    """Groups of mean 1e4 and std 1, float32: the statistics in double (the C++ kernel: two passes, then the mean
    split in two floats for x - mean; the twin: x in float64) leave y and grad_x within float32 rounding of the
    float64 result. A float32 mean alone would shift every x_hat by up to half an ulp of 1e4 (5e-4), a float32
    one-pass variance would lose all its digits."""
    require_backend(backend)
    p = make_problem(np.random.default_rng(3), np.float32, (4, 8, 16, 16), 4, offset=1e4)
    got = run_group_norm(backend, p)
    x = p["x"].astype(np.float64).reshape(16, -1)
    exact_mean = np.array([math.fsum(row) / row.size for row in x])
    exact_var = np.array([math.fsum((row - m) ** 2) / row.size for row, m in zip(x, exact_mean, strict=True)])
    assert_close(got[1].ravel(), exact_mean, tol=Tol(atol=0.0, rtol=1e-14), what="mean:")
    assert_close(got[2].ravel(), 1 / np.sqrt(exact_var + p["eps"]), tol=Tol(atol=0.0, rtol=1e-12), what="rstd:")
    assert_matches_twin(got, p)


@pytest.mark.parametrize(("forward_backend", "backward_backend"), [("numpy", "cpp"), ("cpp", "numpy")])
def test_statistics_of_one_backend_serve_the_other(forward_backend, backward_backend):
    """A forward on one backend and its backward on another (the backend switched in between) agree with the
    twin: the statistics are float64 (N, G) arrays on both."""
    require_backend("cpp")
    p = make_problem(np.random.default_rng(4), np.float32, (2, 6, 5, 3), 3)
    weight, bias, scale, shift = arguments(p)
    with md.use_backend(forward_backend):
        y, mean, rstd = group_norm_forward(p["x"], 3, weight, bias, p["eps"], scale, shift, "silu")
    assert mean.dtype == rstd.dtype == np.float64
    with md.use_backend(backward_backend):
        grads = group_norm_backward(p["grad_y"], p["x"], mean, rstd, 3, weight, bias, scale, shift, "silu")
    assert_matches_twin((y, mean, rstd, *grads), p)


# --- the differentiable op: composition, PyTorch, gradcheck -------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize("scale_shape", ["(N, C)", "(N, C, 1, 1)"])
def test_fused_op_is_silu_of_adaptive_group_norm_E44(backend, scale_shape):
    """[E44] F.group_norm(x, G, w, b, scale=s, shift=t, activation="silu") = SiLU(AdaGN(x)) =
    silu(adaptive_group_norm(group_norm(x, G, w, b), s, t)), forward and every gradient."""
    require_backend(backend)
    p = make_problem(np.random.default_rng(5), np.float64, (3, 6, 4, 5), 2, per_sample_4d=scale_shape != "(N, C)")
    results = []
    for fused in (True, False):
        with md.use_backend(backend):
            x, w, b, s, t = (Tensor(p[k], requires_grad=True) for k in ("x", *PARAMS))
            if fused:
                y = F.group_norm(x, 2, w, b, scale=s, shift=t, activation="silu")
            else:
                view = (3, 6, 1, 1)
                y = F.silu(adaptive_group_norm(F.group_norm(x, 2, w, b), s.reshape(view), t.reshape(view)))
            y.backward(p["grad_y"])
        results.append([y.data, x.grad, w.grad, b.grad, s.grad, t.grad])
    for name, got, ref in zip(("y", *GRADS), *results, strict=True):
        assert_close(got, ref, what=f"{name}:")


@st.composite
def functional_cases(draw):
    """F.group_norm with each optional input present or not, x 2-D to 5-D, sizes >= 1, at least two numbers per
    group (PyTorch refuses one)."""
    groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 4), max_size=3))
    per_group += per_group * math.prod(spatial) == 1
    x_shape = (draw(st.integers(1, 3)), groups * per_group, *spatial)
    present = [name for name in PARAMS if draw(st.booleans())]
    activation = draw(st.sampled_from([None, "silu"]))
    p = make_problem(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), np.float64, x_shape, groups, present,
                     activation, eps=1e-3, offset=1.0, per_sample_4d=draw(st.booleans()))
    names = ["x", *present]

    def ours(*tensors):
        given_ = dict(zip(names, tensors, strict=True))
        return F.group_norm(given_["x"], groups, given_.get("weight"), given_.get("bias"), eps=1e-3,
                            scale=given_.get("scale"), shift=given_.get("shift"), activation=activation)

    def theirs(torch, *tensors):
        from reference.torch_twins import group_norm_torch

        given_ = dict(zip(names, tensors, strict=True))
        return group_norm_torch(given_["x"], groups, given_.get("weight"), given_.get("bias"), 1e-3,
                                given_.get("scale"), given_.get("shift"), activation)

    return f"group_norm {x_shape} G={groups} {present} {activation}", Case(tuple(p[k] for k in names), ours, theirs)


# gradcheck: float64 central differences for every input, scale and shift included
test_cpp_path_matches_pytorch_autograd, test_cpp_path_passes_gradcheck = autodiff_tests(functional_cases(), "cpp")


# --- bad input -----------------------------------------------------------------------------------------------------


def bad_forward_cases():
    x, w, s = (np.ones(shape, np.float32) for shape in ((2, 6, 3, 3), (6,), (2, 6)))
    yield "x a list", ([[1.0]], 1, None, None, 1e-5, None, None, None), TypeError, "x: expected a numpy.ndarray"
    yield "int x", (x.astype(np.int32), 3), TypeError, "x: expected dtype float32 or float64"
    yield "1-D x", (w, 3), ValueError, r"x: expected \(N, C, ...\)"
    yield "groups not a divisor", (x, 4), ValueError, "num_groups: expected a positive divisor of the 6 channels"
    yield "zero groups", (x, 0), ValueError, "num_groups: expected a positive divisor"
    yield "float groups", (x, 3.0), ValueError, "num_groups: expected a positive divisor"
    yield "weight dtype", (x, 3, w.astype(np.float64)), TypeError, "weight: expected dtype float32"
    yield "weight shape", (x, 3, w[:3]), ValueError, r"weight: expected shape \(6,\)"
    yield "bias a list", (x, 3, None, [0.0] * 6), TypeError, "bias: expected a numpy.ndarray or None"
    yield "scale shape", (x, 3, w, w, 1e-5, w), ValueError, r"scale: expected shape \(2, 6\) or \(2, 6, 1, 1\)"
    yield "shift batch", (x, 3, w, w, 1e-5, s, s[:1]), ValueError, r"shift: expected shape \(2, 6\)"
    yield "negative eps", (x, 3, w, w, -1e-5), ValueError, "eps: expected a number >= 0"
    yield "NaN eps", (x, 3, w, w, float("nan")), ValueError, "eps: expected a finite number"
    yield "activation", (x, 3, w, w, 1e-5, None, None, "relu"), ValueError, "activation: expected None or 'silu'"


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize(("args", "error", "message"), bad_calls(bad_forward_cases()))
def test_bad_input_gets_a_clear_error(backend, args, error, message):
    assert_clear_error(backend, group_norm_forward, args, error, message)


def bad_backward_cases():
    x, stats = np.ones((2, 6, 3), np.float32), np.zeros((2, 3))
    yield "grad_y shape", (x[:, :, :2], x, stats, stats, 3), ValueError, r"grad_y: expected shape \(2, 6, 3\)"
    yield "grad_y dtype", (x.astype(np.float64), x, stats, stats, 3), TypeError, "grad_y: expected dtype float32"
    yield "mean shape", (x, x, np.zeros((2, 2)), stats, 3), ValueError, r"mean: expected shape \(2, 3\) \(N, G\)"
    yield "rstd shape", (x, x, stats, np.zeros(6), 3), ValueError, r"rstd: expected shape \(2, 3\)"
    yield "int rstd", (x, x, stats, stats.astype(np.int64), 3), TypeError, "rstd: expected dtype float32 or float64"


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize(("args", "error", "message"), bad_calls(bad_backward_cases()))
def test_bad_backward_input_gets_a_clear_error(backend, args, error, message):
    assert_clear_error(backend, group_norm_backward, args, error, message)


def test_functional_op_names_the_bad_argument():
    x = Tensor(np.ones((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match="num_groups: expected a positive divisor of the 6 channels"):
        F.group_norm(x, 4)
    with pytest.raises(ValueError, match="activation: expected None or 'silu', got 'gelu'"):
        F.group_norm(x, 3, activation="gelu")
    with pytest.raises(ValueError, match=r"scale: expected shape \(2, 6\) or \(2, 6, 1\)"):
        F.group_norm(x, 3, scale=Tensor(np.ones(6, np.float32)))
    with pytest.raises(TypeError, match="x: expected a minidiff Tensor"):
        F.group_norm(x.data, 3)


def test_cpp_boundary_rechecks_what_it_relies_on():
    """Called directly, bypassing the Python checks: errors naming the argument, never a crash or an out-of-bounds
    access."""
    require_backend("cpp")
    C = md.backend.extension()
    x, w, s = np.ones((2, 6, 3)), np.ones(6), np.ones((2, 6))
    y, mean, rstd = np.empty_like(x), np.empty((2, 3)), np.empty((2, 3))

    def forward(**changes):
        args = dict(x=x, weight=w, bias=w, scale=s, shift=s, y=y, mean=mean, rstd=rstd, num_groups=3, eps=1e-5,
                    activation="silu")
        C.group_norm_forward(**{**args, **changes})

    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    buf = np.ones(100)
    forward_cases = [
        (dict(x=x.astype(np.float16)), TypeError, "x: expected dtype float32 or float64"),
        (dict(x=x.transpose(0, 2, 1).copy().transpose(0, 2, 1)), ValueError, "x: expected a C-contiguous"),
        (dict(x=np.ones(6), y=np.empty(6)), ValueError, r"x: expected \(N, C, ...\)"),
        (dict(num_groups=4), ValueError, "num_groups: expected a positive divisor of the 6 channels"),
        (dict(num_groups=0), ValueError, "num_groups: expected a positive divisor"),
        (dict(weight=np.ones(5)), ValueError, r"weight: expected shape \(6\)"),
        (dict(bias=w.astype(np.float32)), TypeError, "bias: expected a float64 array"),
        (dict(scale=np.ones((2, 6, 1))), ValueError, r"scale: expected shape \(2, 6\)"),
        (dict(shift="zero"), TypeError, "shift: expected an array or None"),
        (dict(y=np.empty((2, 6, 4))), ValueError, r"y: expected shape \(2, 6, 3\)"),
        (dict(y=read_only), ValueError, "y: expected a writeable array"),
        (dict(mean=np.empty((2, 2))), ValueError, r"mean: expected shape \(2, 3\)"),
        (dict(rstd=np.empty((2, 3), np.float32)), TypeError, "rstd: expected a float64 array"),
        (dict(eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
        (dict(eps=float("inf")), ValueError, "eps: expected a finite number >= 0"),
        (dict(activation="relu"), ValueError, "activation: expected 'identity' or 'silu', got 'relu'"),
        (dict(x=buf[:36].reshape(2, 6, 3), y=buf[30:66].reshape(2, 6, 3)), ValueError, "y: overlaps x"),
        (dict(mean=buf[:6].reshape(2, 3), rstd=buf[3:9].reshape(2, 3)), ValueError, "mean: overlaps rstd"),
    ]
    for changes, error, message in forward_cases:
        with pytest.raises(error, match=message):
            forward(**changes)

    grad_x, grad_w, grad_s = np.empty_like(x), np.empty(6), np.empty((2, 6))

    def backward(**changes):
        args = dict(grad_y=x, x=x, mean=mean, rstd=rstd, weight=w, bias=w, scale=s, shift=s, grad_x=grad_x,
                    grad_weight=grad_w, grad_bias=np.empty(6), grad_scale=grad_s, grad_shift=np.empty((2, 6)),
                    num_groups=3, activation="silu")
        C.group_norm_backward(**{**args, **changes})

    backward_cases = [
        (dict(grad_y=np.ones((2, 6, 2))), ValueError, r"grad_y: expected shape \(2, 6, 3\) \(the shape of x\)"),
        (dict(grad_x=np.empty((2, 6))), ValueError, r"grad_x: expected shape \(2, 6, 3\)"),
        (dict(grad_weight=np.empty(3)), ValueError, r"grad_weight: expected shape \(6\)"),
        (dict(grad_scale=np.empty((6, 2))), ValueError, r"grad_scale: expected shape \(2, 6\)"),
        (dict(mean=np.ones((3, 2))), ValueError, r"mean: expected shape \(2, 3\)"),
        (dict(grad_y=buf[:36].reshape(2, 6, 3), grad_x=buf[20:56].reshape(2, 6, 3)), ValueError,
         "grad_x: overlaps grad_y"),
        (dict(grad_weight=buf[:6], grad_bias=buf[5:11]), ValueError, "grad_weight: overlaps grad_bias"),
        (dict(grad_shift=s), ValueError, "grad_shift: overlaps scale"),
    ]
    for changes, error, message in backward_cases:
        with pytest.raises(error, match=message):
            backward(**changes)
