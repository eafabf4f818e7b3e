"""The fused sampler update: its NumPy twin as mathematics (exercise 11.4), every compiled backend
against the twin, and bad input at the Python and C++ boundaries."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from backends import COMPILED, require_backend
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import assert_clear_error, bad_calls
from strategies import float_arrays, float_dtypes, in_layout, layouts, shapes, step_coefs
from tolerances import assert_close

import minidiff as md
from minidiff.kernels import StepCoefs, sampler_step, sampler_step_ref

ALL_BACKENDS = ("numpy", *COMPILED)


def longhand(x, eps, z, c: StepCoefs):
    """The update element by element in Python floats (float64), with the rounding-error scale of each
    element: the sum of the magnitudes of the terms."""
    xs, es = np.asarray(x, np.float64).ravel(), np.asarray(eps, np.float64).ravel()
    zs = np.zeros_like(xs) if z is None else np.asarray(z, np.float64).ravel()
    value, scale = np.empty_like(xs), np.empty_like(xs)
    for i, (xi, ei, zi) in enumerate(zip(xs, es, zs, strict=True)):
        terms = [c.c_x * xi, c.c_eps * ei, c.c_z * zi]
        if c.clip is not None:
            x0 = c.r_x * xi + c.r_eps * ei
            terms.append(c.c_x0 * min(max(x0, -c.clip), c.clip))
            terms.append(abs(c.c_x0) * (abs(c.r_x * xi) + abs(c.r_eps * ei)))  # error of x0, into scale only
            value[i] = math.fsum(terms[:-1])
        else:
            value[i] = math.fsum(terms)
        scale[i] = sum(abs(t) for t in terms)
    return value.reshape(np.shape(x)), scale.reshape(np.shape(x))


@st.composite
def step_inputs(draw, max_side: int = 9, clip: bool | None = None):
    dtype = draw(float_dtypes)
    shape = draw(shapes(max_side=max_side))
    x = draw(float_arrays(dtype, shape))
    eps = draw(float_arrays(dtype, shape))
    z = draw(st.none() | float_arrays(dtype, shape))
    coefs = draw(step_coefs(clip=clip))
    if z is None:
        coefs = StepCoefs(coefs.c_x, coefs.c_eps, 0.0, coefs.c_x0, coefs.r_x, coefs.r_eps, coefs.clip)
    return x, eps, z, coefs


def run_ref(x, eps, z, coefs):
    return sampler_step_ref(x, eps, z, coefs, np.empty_like(x))


# --- exercise 11.4: the NumPy twin is the formula -------------------------------------------------


@pytest.mark.exercise("ex11.4")
@given(step_inputs(max_side=5))
def test_ref_equals_the_formula_element_by_element(inputs):
    x, eps, z, coefs = inputs
    expected, scale = longhand(x, eps, z, coefs)
    got = run_ref(x, eps, z, coefs)
    assert got.dtype == x.dtype
    assert_close(got, expected, scale=scale, what=f"c_x x + c_eps eps + c_z z [+ c_x0 clip(r_x x + r_eps eps)] (clip "
                 f"{coefs.clip}, z {'None' if z is None else 'given'})")


@pytest.mark.exercise("ex11.4")
@given(step_inputs(clip=False), st.floats(-2, 2), st.floats(-2, 2))
def test_ref_without_clip_is_linear_in_x_eps_z(inputs, a, b):
    """f(a u + b w) = a f(u) + b f(w) for the affine step, in float64."""
    x, eps, z, coefs = inputs
    u = [np.asarray(v, np.float64) for v in (x, eps, z if z is not None else np.zeros_like(x))]
    w = [np.cos(3.0 * v) for v in u]
    combo = [a * p + b * q for p, q in zip(u, w, strict=True)]
    lhs = run_ref(*combo, coefs)
    rhs = a * run_ref(*u, coefs) + b * run_ref(*w, coefs)
    cs = (coefs.c_x, coefs.c_eps, coefs.c_z)
    scale = sum(abs(c) * (abs(a * p) + abs(b * q)) for c, p, q in zip(cs, u, w, strict=True))
    assert_close(lhs, rhs, scale=scale, what="without clip the step is linear in (x, eps, z): f(a u + b w) = a f(u) + "
                 "b f(w)")


@pytest.mark.exercise("ex11.4")
@given(step_inputs(clip=True))
def test_ref_clip_is_inactive_inside_the_bound_and_saturates_outside(inputs):
    x, eps, z, coefs = inputs
    x, eps = np.asarray(x, np.float64), np.asarray(eps, np.float64)
    z = None if z is None else np.asarray(z, np.float64)
    x0 = coefs.r_x * x + coefs.r_eps * eps
    affine = StepCoefs(coefs.c_x, coefs.c_eps, coefs.c_z)
    base = run_ref(x, eps, z, affine)
    got = run_ref(x, eps, z, coefs)
    # Inside the bound the clip does nothing: the x0 term is c_x0 * x0 exactly.
    inside = np.abs(x0) <= coefs.clip
    expected = np.where(inside, base + coefs.c_x0 * x0, base + coefs.c_x0 * np.sign(x0) * coefs.clip)
    scale = np.abs(base) + np.abs(coefs.c_x0) * (np.abs(coefs.r_x * x) + np.abs(coefs.r_eps * eps)) + 1.0
    assert_close(got, expected, scale=scale, what=f"the x0 term c_x0 clip(x0, -{coefs.clip}, {coefs.clip})")


# --- every backend against the twin -------------------------------------------------------------


@pytest.mark.parametrize("backend", COMPILED)
@given(inputs=step_inputs(), layout=layouts)
def test_compiled_backend_equals_twin(backend, inputs, layout):
    require_backend(backend)
    x, eps, z, coefs = inputs
    expected, scale = longhand(x, eps, z, coefs)
    twin = run_ref(x, eps, z, coefs)
    with md.use_backend(backend):
        got = sampler_step(in_layout(x, layout), in_layout(eps, layout),
                           None if z is None else in_layout(z, layout), coefs)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert_close(got, twin, scale=scale, what=f"{backend} vs twin:")
    assert_close(got, expected, scale=scale, what=f"{backend} vs longhand:")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_array_in_place_on_x(backend, dtype):
    """Above the OpenMP grain, over many CUDA blocks (the emulator runs them one by one: fewer there;
    the grid-stride loop has its own test below), written over x itself."""
    require_backend(backend)
    rng = np.random.default_rng(0)
    n = 40 * 256 + 17 if backend == "cuda-emu" else 3 * 2**20 + 17
    x, eps, z = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    coefs = StepCoefs(1.01, -0.2, 0.1, c_x0=0.5, r_x=1.3, r_eps=-0.7, clip=1.0)
    expected = run_ref(x, eps, z, coefs)
    scale = 1.01 * abs(x) + 0.2 * abs(eps) + 0.1 * abs(z) + 0.5 * (1.3 * abs(x) + 0.7 * abs(eps))
    with md.use_backend(backend):
        got = sampler_step(x, eps, z, coefs, out=x)
    assert got is x
    assert_close(x, expected, scale=scale)


@pytest.mark.torch
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@given(inputs=step_inputs())
def test_every_backend_matches_pytorch(backend, inputs):
    require_backend(backend)
    import torch
    from reference.torch_twins import sampler_step_torch

    x, eps, z, coefs = inputs
    expected = sampler_step_torch(*(None if a is None else torch.from_numpy(a.copy()) for a in (x, eps, z)), coefs)
    with md.use_backend(backend):
        got = sampler_step(x, eps, z, coefs)
    _, scale = longhand(x, eps, z, coefs)
    assert_close(got, expected.numpy(), scale=scale)


@pytest.mark.parametrize("block", [1, 7, 32, 256])
@pytest.mark.parametrize("grid", [1, 3])
def test_cuda_emu_grid_stride_covers_every_element_once(grid, block):
    """Launched directly with grids far smaller than n: each element is written exactly once."""
    require_backend("cuda-emu")
    emu = md.backend.extension().cuda_emu
    n = 1000
    x = np.arange(n, dtype=np.float64)
    eps = np.zeros(n)
    out = np.full(n + 5, -1.0)  # the tail past n must stay untouched
    emu.sampler_step_kernel((grid,), (block,), x, eps, x, out, n, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    np.testing.assert_array_equal(out[:n], x)
    np.testing.assert_array_equal(out[n:], -1.0)


# --- bad input ---------------------------------------------------------------------------------

GOOD = StepCoefs(0.5, 0.25, 0.1)


def arrays(shape=(2, 3), dtype=np.float32):
    return [np.ones(shape, dtype) for _ in range(3)]


def bad_cases():
    x, eps, z = arrays()
    ro = np.ones((2, 3), np.float32)
    ro.flags.writeable = False
    yield "x not an array", ([[1.0]], eps, z, GOOD), {}, TypeError, "x: expected a numpy.ndarray"
    yield "int x", (np.ones((2, 3), np.int64), eps, z, GOOD), {}, TypeError, "x: expected dtype float32 or float64"
    yield "float16 x", (x.astype(np.float16), eps, z, GOOD), {}, TypeError, "x: expected dtype float32"
    yield "mixed dtypes", (x, eps.astype(np.float64), z, GOOD), {}, TypeError, "eps: expected dtype float32"
    yield "eps shape", (x, np.ones((3, 2), np.float32), z, GOOD), {}, ValueError, "eps: expected shape (2, 3)"
    yield "z shape", (x, eps, np.ones((2, 3, 1), np.float32), GOOD), {}, ValueError, "z: expected shape (2, 3)"
    yield "coefs type", (x, eps, z, (0.5, 0.25)), {}, TypeError, "coefs: expected a minidiff.kernels.StepCoefs"
    yield "c_z without z", (x, eps, None, GOOD), {}, ValueError, "z: is None but coefs.c_z"
    yield "out dtype", (x, eps, z, GOOD), {"out": np.empty((2, 3))}, TypeError, "out: expected dtype float32"
    yield "out shape", (x, eps, z, GOOD), {"out": np.empty(6, np.float32)}, ValueError, "out: expected shape"
    yield "out strided", (x, eps, z, GOOD), {"out": np.empty((2, 6), np.float32)[:, ::2]}, ValueError, \
        "out: expected a C-contiguous"
    yield "out read-only", (x, eps, z, GOOD), {"out": ro}, ValueError, "out: expected a writeable"
    buf = np.ones(7, np.float32)
    yield "out overlaps x", (buf[:6].reshape(2, 3), eps, z, GOOD), {"out": buf[1:].reshape(2, 3)}, ValueError, \
        "out: overlaps x"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(("args", "kwargs", "error", "message"), bad_calls(bad_cases()))
def test_bad_input_gets_a_clear_error(backend, args, kwargs, error, message):
    assert_clear_error(backend, sampler_step, args, error, re.escape(message), kwargs)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("c_x", float("nan"), "coefs.c_x: expected a finite number"),
    ("c_eps", float("inf"), "coefs.c_eps: expected a finite number"),
    ("clip", 0.0, "coefs.clip: expected a positive bound"),
    ("clip", -1.0, "coefs.clip: expected a positive bound"),
    ("r_x", "1.0", "coefs.r_x: expected a real number"),
])
def test_bad_coefficients(field, value, message):
    kwargs = {"c_x": 1.0, "c_eps": 0.0, field: value}
    with pytest.raises((ValueError, TypeError), match=message):
        StepCoefs(**kwargs)


def test_cpp_boundary_rechecks_what_it_relies_on():
    """Called directly, bypassing the Python checks: errors, never a crash or an out-of-bounds access."""
    require_backend("cpp")
    C = md.backend.extension()
    x = np.ones((2, 3))
    good = dict(c_x=1.0, c_eps=1.0, c_z=0.0, c_x0=0.0, r_x=0.0, r_eps=0.0, clip=0.0, has_clip=False)
    with pytest.raises(ValueError, match="eps: expected shape"):
        C.sampler_step(x, np.ones(5), None, np.empty((2, 3)), **good)
    with pytest.raises(ValueError, match="out: expected shape"):
        C.sampler_step(x, x, None, np.empty(2), **good)
    with pytest.raises(TypeError, match="eps: expected a float64 array"):
        C.sampler_step(x, x.astype(np.float32), None, np.empty((2, 3)), **good)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64"):
        C.sampler_step(x.astype(np.int32), x, None, np.empty((2, 3)), **good)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        C.sampler_step(np.ones((3, 2)).T, x, None, np.empty((2, 3)), **good)
    with pytest.raises(ValueError, match="z: expected shape"):
        C.sampler_step(x, x, np.ones(2), np.empty((2, 3)), **good)
    with pytest.raises(TypeError, match="z: expected an array or None"):
        C.sampler_step(x, x, [1.0], np.empty((2, 3)), **good)
    ro = np.empty((2, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        C.sampler_step(x, x, None, ro, **good)


def test_cuda_emu_boundary_rechecks_counts_and_launch():
    require_backend("cuda-emu")
    emu = md.backend.extension().cuda_emu
    x, out = np.ones(10), np.empty(10)
    coefs = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="x: expected at least 11 elements"):
        emu.sampler_step_kernel((1,), (32,), x, x, x, out, 11, *coefs, 0, 0)
    with pytest.raises(ValueError, match="z: expected at least 10 elements"):
        emu.sampler_step_kernel((1,), (32,), x, x, np.ones(3), out, 10, *coefs, 1, 0)
    with pytest.raises(ValueError, match="expected at least -1"):
        emu.sampler_step_kernel((1,), (32,), x, x, x, out, -1, *coefs, 0, 0)
    with pytest.raises(ValueError, match="grid: sizes must be in"):
        emu.sampler_step_kernel((0,), (32,), x, x, x, out, 10, *coefs, 0, 0)
    with pytest.raises(ValueError, match=r"at most 1048576 blocks per launch"):
        emu.sampler_step_kernel((2**21,), (32,), x, x, x, out, 10, *coefs, 0, 0)
    with pytest.raises(ValueError, match=r"block must have 1\.\.1024 threads"):
        emu.sampler_step_kernel((1,), (64, 32), x, x, x, out, 10, *coefs, 0, 0)
