"""The checks every kernel test file (tests/test_kernels_*.py) makes of its kernel, written once:

- the result is the same, bit for bit, on any number of threads (the kernels cut their work by the sizes,
  never by the thread count);
- a bad argument raises an error naming it (cases as generators of (id, *values) tuples);
- the differentiable op on a backend matches PyTorch's autograd and passes gradcheck (op_cases's two checks);

and the float64 twins, with the rounding scales of their outputs, that the C++ kernels of attention and group
norm and their CUDA twins (tests/test_cuda_kernels.py) are held to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import check_against_torch, check_gradcheck
from strategies import in_layout
from tolerances import assert_close

import minidiff as md
from minidiff.kernels.attention import attention_backward_ref, attention_forward_ref
from minidiff.kernels.group_norm import (
    group_norm_backward,
    group_norm_backward_ref,
    group_norm_forward,
    group_norm_forward_ref,
)

THREAD_COUNTS = (1, 2, 3)


def ones(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


def same_on_every_thread_count(compute: Callable[[], Sequence[Any]], names: Sequence[str]) -> tuple[Any, ...]:
    """compute() on 1, 2 and 3 threads (md.set_num_threads): asserts each result equals the one-thread result bit
    for bit, array by array (named by `names` in a failure), and returns the one-thread result."""
    results = {}
    before = md.get_num_threads()
    try:
        for threads in THREAD_COUNTS:
            md.set_num_threads(threads)
            results[threads] = tuple(compute())
    finally:
        md.set_num_threads(before)
    one = results[THREAD_COUNTS[0]]
    for threads in THREAD_COUNTS[1:]:
        for name, got, ref in zip(names, results[threads], one, strict=True):
            np.testing.assert_array_equal(got, ref, err_msg=f"{name}, {threads} threads")
    return one


def bad_calls(cases: Iterable[tuple]) -> list:
    """pytest.param(*values, id=case_id) for each (case_id, *values) a bad-input generator yields."""
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


def assert_clear_error(backend: str, call: Callable, args: Sequence[Any], error: type[Exception], message: str,
                       kwargs: dict | None = None) -> None:
    """call(*args, **kwargs) on `backend` raises `error` with a message matching the regex `message` (the argument's
    name and what was expected)."""
    require_backend(backend)
    with md.use_backend(backend), pytest.raises(error, match=message):
        call(*args, **(kwargs or {}))


def autodiff_tests(cases: st.SearchStrategy, backend: str, dtypes: Sequence = (np.float64, np.float32),
                   max_examples: tuple[int | None, int | None] = (None, None)) -> tuple[Callable, Callable]:
    """Two tests of an op's differentiable form on `backend`, from a strategy of (name, op_cases.Case): against
    PyTorch's autograd (forward and every input gradient, inputs rounded to each of `dtypes`), and gradcheck
    (float64 central differences for every input). max_examples: hypothesis's, per test (None: the profile's).
    Bind them to test_ names in the test module, where pytest collects them."""

    def limited(test: Callable, examples: int | None) -> Callable:
        return test if examples is None else settings(max_examples=examples)(test)

    @pytest.mark.torch
    @pytest.mark.parametrize("dtype", dtypes)
    @given(named_case=cases)
    def matches_pytorch_autograd(named_case, dtype):
        require_backend(backend)
        with md.use_backend(backend):
            check_against_torch(named_case, dtype)

    @given(named_case=cases)
    def passes_gradcheck(named_case):
        require_backend(backend)
        with md.use_backend(backend):
            check_gradcheck(named_case)

    return limited(matches_pytorch_autograd, max_examples[0]), limited(passes_gradcheck, max_examples[1])


# --- attention: the float64 twin and its rounding scales -------------------------------------------------------------

NAMES = ("out", "lse", "grad_q", "grad_k", "grad_v")


def swap(a):
    return np.swapaxes(a, -1, -2)


def twin_and_scale(q, k, v, mask, scale, grad_out):
    """The float64 NumPy twin's (out, lse, grad_q, grad_k, grad_v) on the very inputs, and each one's rounding scale.

    A score s_ij is a sum of D products, off by about u sum_p |q_ip k_jp| |scale| <= u R_i, R_i the row's largest
    such sum; so every probability of row i is off by about u (1 + R_i) relative, and so is everything made from
    them: out = P V by u (1 + R) P |V|, the gradients likewise through dS = P (dP - D), |dP - D| <= |dO| |V|^T +
    |dO| |O|. The twin's float64 has the same error 2^29 times smaller."""
    q, k, v, g = (a.astype(np.float64) for a in (q, k, v, grad_out))
    out, probs = attention_forward_ref(q, k, v, mask, scale)
    grads = attention_backward_ref(g, q, k, v, probs, scale)
    scores = (q @ swap(k)) * scale
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        top = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
        lse = (np.where(np.isfinite(top), top, 0) + np.log(np.sum(np.exp(scores - np.where(np.isfinite(top), top, 0)),
                                                                      axis=-1, keepdims=True)))[..., 0]
    row = 1 + np.max((np.abs(q) @ swap(np.abs(k))) * abs(scale), axis=-1, keepdims=True, initial=0.0)  # (..., Lq, 1)
    p = np.nan_to_num(probs) * row  # probabilities times their relative error, in units of u
    g_abs, d_term = np.abs(g), np.sum(np.abs(g) * np.nan_to_num(np.abs(out)), axis=-1, keepdims=True)
    ds = p * (g_abs @ swap(np.abs(v)) + d_term)  # (..., Lq, Lk)
    scales = (p @ np.abs(v), row[..., 0] + np.log(max(k.shape[-2], 1)), abs(scale) * (ds @ np.abs(k)),
              abs(scale) * (swap(ds) @ np.abs(q)), swap(p) @ g_abs)
    return (out, lse, *grads), scales


def assert_close_with_specials(got, expected, scale, dtype, what):
    """NaN and infinities where the twin has them, the finite values within the table's tolerance."""
    assert got.dtype == dtype, f"{what} dtype {got.dtype}"
    got, expected = np.asarray(got), np.broadcast_to(expected, np.shape(got))
    special = ~np.isfinite(expected)
    np.testing.assert_array_equal(np.where(special, got, 0), np.where(special, expected, 0),
                                  err_msg=f"{what}: NaN and infinities where the twin has them")
    assert_close(np.where(special, 0, got), np.where(special, 0, expected), dtype=dtype,
                 scale=np.where(special, 0, np.broadcast_to(scale, got.shape)), what=what)


# --- group norm: problems, the float64 twin and its rounding scales --------------------------------------------------

PARAMS = ("weight", "bias", "scale", "shift")
GRADS = ("grad_x", "grad_weight", "grad_bias", "grad_scale", "grad_shift")


def make_problem(rng, dtype, x_shape, num_groups, present=PARAMS, activation="silu", eps=1e-5, spread=1.0,
                 offset=0.0, per_sample_4d=False):
    """x, the optional inputs named in `present` (the others None), and an upstream gradient, as a dict."""
    n, c = x_shape[:2]
    per_sample = (n, c, *(1,) * (len(x_shape) - 2)) if per_sample_4d else (n, c)
    shapes = {"weight": (c,), "bias": (c,), "scale": per_sample, "shift": per_sample}
    p = {"x": (offset + spread * rng.standard_normal(x_shape)).astype(dtype), "num_groups": num_groups,
         "eps": eps, "activation": activation, "grad_y": rng.standard_normal(x_shape).astype(dtype)}
    for name in PARAMS:
        p[name] = (0.5 * rng.standard_normal(shapes[name])).astype(dtype) if name in present else None
    return p


def arguments(p, layout="c"):
    """The kernels' positional arguments after x and num_groups, each array in `layout`."""
    return [None if p[k] is None else in_layout(p[k], layout) for k in PARAMS]


def run_group_norm(backend, p, layout="c"):
    """(y, mean, rstd, grad_x, grad_weight, grad_bias, grad_scale, grad_shift) on `backend`, inputs in `layout`."""
    x, grad_y = in_layout(p["x"], layout), in_layout(p["grad_y"], layout)
    weight, bias, scale, shift = arguments(p, layout)
    with md.use_backend(backend):
        y, mean, rstd = group_norm_forward(x, p["num_groups"], weight, bias, p["eps"], scale, shift, p["activation"])
        grads = group_norm_backward(grad_y, x, mean, rstd, p["num_groups"], weight, bias, scale, shift,
                                    p["activation"])
    return y, mean, rstd, *grads


def twin64(p):
    """The float64 twin on the very inputs: (y, mean, rstd, *grads)."""
    x, grad_y = (p[k].astype(np.float64) for k in ("x", "grad_y"))
    weight, bias, scale, shift = (None if p[k] is None else p[k].astype(np.float64) for k in PARAMS)
    y, mean, rstd = group_norm_forward_ref(x, p["num_groups"], weight, bias, p["eps"], scale, shift, p["activation"])
    grads = group_norm_backward_ref(grad_y, x, mean, rstd, p["num_groups"], weight, bias, scale, shift,
                                    p["activation"])
    return y, mean, rstd, *grads


def group_rows(a, num_groups):
    """a (N, C, *) as (N G, M): one row per group of each sample (also for N = 0)."""
    return a.reshape(a.shape[0] * num_groups, math.prod(a.shape[1:]) // num_groups)


def group_mean(a, num_groups):
    """Each group's mean of a (N, C, *), broadcast back to a's shape."""
    rows = group_rows(a, num_groups)
    return np.broadcast_to(rows.sum(axis=1, keepdims=True) / max(rows.shape[1], 1), rows.shape).reshape(a.shape)


def rounding_scales(p, mean, rstd):
    """Per output, the magnitudes its rounding error is proportional to: each sum with its terms' absolute values.
    x - mean is computed with one rounding relative to itself (both paths take the statistics in float64; the C++
    kernel splits the mean in two floats), not with the rounding of |x| and |mean|. SiLU's derivative is at most 1.1
    in magnitude, its second derivative at most 0.5 (how z's rounding moves dz)."""
    x, g = p["x"].astype(np.float64), p["num_groups"]
    n, c = x.shape[:2]
    per_channel, per_sample = (1, c, *(1,) * (x.ndim - 2)), (n, c, *(1,) * (x.ndim - 2))

    def magnitude(name, absent, shape):
        return np.full(shape, absent) if p[name] is None else np.abs(p[name].astype(np.float64)).reshape(shape)

    w, b = magnitude("weight", 1.0, per_channel), magnitude("bias", 0.0, per_channel)
    gain, shift = 1 + magnitude("scale", 0.0, per_sample), magnitude("shift", 0.0, per_sample)
    rows, mean_rows, rstd_rows = group_rows(x, g), mean.reshape(-1, 1), rstd.reshape(-1, 1)
    x_hat = np.abs(rows - mean_rows) * rstd_rows
    x_hat, r = x_hat.reshape(x.shape), np.broadcast_to(rstd_rows, rows.shape).reshape(x.shape)
    u = x_hat * w + b
    z = u * gain + shift
    dz = 1.1 * np.abs(p["grad_y"].astype(np.float64)) * (1 + z)
    g_hat = dz * w * gain  # the gradient of x_hat
    spatial, batch = tuple(range(2, x.ndim)), (0, *range(2, x.ndim))
    return {"y": z, "grad_x": r * (g_hat + group_mean(g_hat, g) + x_hat * group_mean(g_hat * x_hat, g)),
            "grad_weight": (dz * gain * x_hat).sum(axis=batch), "grad_bias": (dz * gain).sum(axis=batch),
            "grad_scale": (dz * u).sum(axis=spatial), "grad_shift": dz.sum(axis=spatial)}


def assert_matches_twin(got, p, what=""):
    """got = run(...) against the float64 twin on the same inputs, each output to its rounding scale."""
    expected = twin64(p)
    scales = rounding_scales(p, expected[1], expected[2])
    dtype = p["x"].dtype
    for name, g, e in zip(("y", *GRADS), (got[0], *got[3:]), (expected[0], *expected[3:]), strict=True):
        if e is None:
            assert g is None, f"{what}{name}: expected None (no such input), got an array"
            continue
        assert g.dtype == dtype and g.shape == e.shape, f"{what}{name}: {g.dtype} {g.shape}, expected {e.shape}"
        assert_close(g, e, dtype=dtype, scale=scales[name].reshape(e.shape), what=f"{what}{name}:")
    largest = np.abs(group_rows(p["x"], p["num_groups"])).max(axis=1, initial=0.0).reshape(expected[1].shape)
    assert_close(got[1], expected[1], dtype=dtype, scale=largest, what=f"{what}mean:")  # 0 for an empty group
    assert_close(got[2], expected[2], dtype=dtype, what=f"{what}rstd:")  # 1 / sqrt(eps) for an empty group
