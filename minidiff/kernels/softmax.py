"""Softmax and log-softmax along an axis, forward and backward:

    softmax:      s = exp(x - max x) / sum exp(x - max x)     grad_x = s (g - sum(g s))
    log_softmax:  l = (x - max x) - log sum exp(x - max x)    grad_x = g - exp(l) sum(g)

NumPy twins, and the dispatch to csrc/cpu/softmax.cpp on the "cpp" backend (rows of the last axis: another axis
is moved last, and back, in Python). Subtracting the max changes nothing mathematically and keeps exp from
overflowing. A row of -inf only (everything masked) gives NaN, as exp(-inf + inf) does; an empty axis gives an
empty result.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from minidiff import backend as _backend
from minidiff.exercise_tools import exercise
from minidiff.kernels import _checks
from minidiff.kernels._dispatch import implementation


def softmax_ref(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.size == 0:  # no max to shift by, nothing to do
        return x.copy()
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


@exercise("ex01.4")
def softmax_backward_ref(grad: np.ndarray, s: np.ndarray, axis: int = -1) -> np.ndarray:
    """grad_x from the upstream gradient `grad` and the forward's output s = softmax(x)."""
    # BEGIN SOLUTION ex01.4: the Jacobian is diag(s) - s s^T; apply it without building it
    grad_x = s * (grad - np.sum(grad * s, axis=axis, keepdims=True))
    # END SOLUTION
    return grad_x


def log_softmax_ref(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.size == 0:
        return x.copy()
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax_backward_ref(grad: np.ndarray, out: np.ndarray, axis: int = -1) -> np.ndarray:
    """grad_x from `grad` and the forward's output out = log_softmax(x) (so exp(out) is the softmax)."""
    return grad - np.exp(out) * grad.sum(axis=axis, keepdims=True)


# --- checked entry points, on the current backend ------------------------------------------------------------------


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    axis = _check(x, "x", axis)
    return implementation({"numpy": softmax_ref, "cpp": partial(_forward_cpp, log_softmax=False)})(x, axis)


def softmax_backward(grad: np.ndarray, s: np.ndarray, axis: int = -1) -> np.ndarray:
    axis = _check(s, "s", axis, grad)
    return implementation({"numpy": softmax_backward_ref, "cpp": partial(_backward_cpp, log_softmax=False)})(
        grad, s, axis)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    axis = _check(x, "x", axis)
    return implementation({"numpy": log_softmax_ref, "cpp": partial(_forward_cpp, log_softmax=True)})(x, axis)


def log_softmax_backward(grad: np.ndarray, out: np.ndarray, axis: int = -1) -> np.ndarray:
    axis = _check(out, "out", axis, grad)
    return implementation({"numpy": log_softmax_backward_ref, "cpp": partial(_backward_cpp, log_softmax=True)})(
        grad, out, axis)


def _check(y: np.ndarray, name: str, axis: object, grad: np.ndarray | None = None) -> int:
    """The checks every backend relies on (grad: the backward's upstream gradient, like y); returns axis >= 0."""
    _checks.float_array(y, name)
    if grad is not None:
        _checks.like(grad, "grad", y, name)
    if y.ndim == 0:
        raise ValueError(f"{name}: expected at least 1 dimension (an axis to normalize along), got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -y.ndim <= axis < y.ndim:
        raise ValueError(f"axis: expected an int in [-{y.ndim}, {y.ndim}) ({name} has shape {y.shape}), got {axis!r}")
    return int(axis) % y.ndim


# --- the C++ kernels: rows of the last axis ------------------------------------------------------------------------


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """`a` with `axis` moved last, as a C-contiguous (rows, n) matrix."""
    moved = np.moveaxis(a, axis, -1)
    return _checks.c_contiguous(moved).reshape(math.prod(moved.shape[:-1]), moved.shape[-1])


def _unrows(rows: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of _rows: back to like's shape, `axis` in its place (a view of `rows`)."""
    return np.moveaxis(rows.reshape(np.moveaxis(like, axis, -1).shape), -1, axis)


def _forward_cpp(x: np.ndarray, axis: int, log_softmax: bool) -> np.ndarray:
    x_rows = _rows(x, axis)
    y = np.empty_like(x_rows)
    _backend.extension().softmax_forward(x_rows, y, log_softmax)
    return _unrows(y, x, axis)


def _backward_cpp(grad: np.ndarray, y: np.ndarray, axis: int, log_softmax: bool) -> np.ndarray:
    y_rows = _rows(y, axis)
    grad_x = np.empty_like(y_rows)
    _backend.extension().softmax_backward(_rows(grad, axis), y_rows, grad_x, log_softmax)
    return _unrows(grad_x, y, axis)
