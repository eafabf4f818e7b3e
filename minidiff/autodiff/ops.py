"""The primitive operations. Each is a Function with its forward and backward side by side; the
docstring gives the local derivative. Shapes: `a`, `b` broadcast against each other (NumPy rules);
every backward returns gradients of exactly its inputs' shapes (`sum_to_shape` undoes broadcasting).

The arrays may be NumPy's or CuPy's: NumPy functions (np.exp, np.where, ...) run CuPy's on CuPy arrays, and
`as_array` (not np.asarray, which would copy to the host) turns a NumPy reduction's scalar into an array.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from minidiff.autodiff.function import Context, Function, sum_to_shape
from minidiff.backend import array_module, as_array, is_device_array
from minidiff.exercise_tools import exercise
from minidiff.kernels.activation import stable_sigmoid
from minidiff.kernels.gemm import matmul


def _shape(x: Any) -> tuple[int, ...]:
    """The shape of an array, or () for a Python number."""
    return getattr(x, "shape", ())


# --- elementwise, two inputs ---------------------------------------------------------------------


class Add(Function):
    """out = a + b;  d/da = 1, d/db = 1."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> np.ndarray:
        ctx.save(_shape(a), _shape(b))
        return as_array(a + b)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a_shape, b_shape = ctx.saved
        return sum_to_shape(grad, a_shape), sum_to_shape(grad, b_shape)


class Sub(Function):
    """out = a - b;  d/da = 1, d/db = -1."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> np.ndarray:
        ctx.save(_shape(a), _shape(b))
        return as_array(a - b)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a_shape, b_shape = ctx.saved
        return sum_to_shape(grad, a_shape), sum_to_shape(-grad, b_shape)


class Mul(Function):
    """out = a * b;  d/da = b, d/db = a."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> np.ndarray:
        ctx.save(a, b)
        return as_array(a * b)

    @staticmethod
    @exercise("ex01.2")
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a, b = ctx.saved
        # BEGIN SOLUTION ex01.2: each input's gradient is grad times the other input, summed back to its shape
        grad_a = sum_to_shape(grad * b, _shape(a)) if ctx.needs_input_grad[0] else None
        grad_b = sum_to_shape(grad * a, _shape(b)) if ctx.needs_input_grad[1] else None
        # END SOLUTION
        return grad_a, grad_b


class Div(Function):
    """out = a / b;  d/da = 1 / b, d/db = -a / b^2."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> np.ndarray:
        ctx.save(a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            return as_array(a / b)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a, b = ctx.saved
        with np.errstate(divide="ignore", invalid="ignore"):
            grad_a = sum_to_shape(grad / b, _shape(a)) if ctx.needs_input_grad[0] else None
            grad_b = sum_to_shape(-grad * a / (b * b), _shape(b)) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


class Pow(Function):
    """out = a ** b;  d/da = b a^(b-1), d/db = a^b log a (taken as 0 where a = 0 and b >= 0)."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = as_array(np.power(a, b))
        ctx.save(a, b, out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a, b, out = ctx.saved
        grad_a = grad_b = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if ctx.needs_input_grad[0]:
                grad_a = sum_to_shape(grad * b * np.power(a, b - 1), _shape(a))
            if ctx.needs_input_grad[1]:
                log_a = np.where((as_array(a) == 0) & (as_array(b) >= 0), 0.0, np.log(a))
                grad_b = sum_to_shape(grad * out * log_a, _shape(b))
        return grad_a, grad_b


class Where(Function):
    """out = a where condition else b;  d/da = [condition], d/db = [not condition].
    `condition` is a boolean array (it has no gradient)."""

    @staticmethod
    def forward(ctx: Context, condition: Any, a: Any, b: Any) -> np.ndarray:
        condition = as_array(condition, bool)
        ctx.save(condition, _shape(a), _shape(b))
        return np.where(condition, a, b)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any, Any]:
        condition, a_shape, b_shape = ctx.saved
        zero = grad.dtype.type(0)
        return None, sum_to_shape(np.where(condition, grad, zero), a_shape), \
            sum_to_shape(np.where(condition, zero, grad), b_shape)


# --- elementwise, one input ----------------------------------------------------------------------


class Neg(Function):
    """out = -x;  d/dx = -1."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        return -x

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        return -grad


class Exp(Function):
    """out = e^x;  d/dx = e^x = out."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        out = np.exp(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        return grad * out


class Log(Function):
    """out = log x;  d/dx = 1 / x."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        ctx.save(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (x,) = ctx.saved
        with np.errstate(divide="ignore"):
            return grad / x


class Sqrt(Function):
    """out = sqrt x;  d/dx = 1 / (2 sqrt x)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            out = np.sqrt(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        with np.errstate(divide="ignore"):
            return grad / (2 * out)


class Abs(Function):
    """out = |x|;  d/dx = sign(x) (0 at 0, as in PyTorch)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        ctx.save(x)
        return np.abs(x)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (x,) = ctx.saved
        return grad * np.sign(x)


class Tanh(Function):
    """out = tanh x;  d/dx = 1 - out^2."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        out = np.tanh(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        return grad * (1 - out * out)


class Sigmoid(Function):
    """out = 1 / (1 + e^-x);  d/dx = out (1 - out)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        out = stable_sigmoid(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        return grad * out * (1 - out)


class Relu(Function):
    """out = max(x, 0);  d/dx = [x > 0] (0 at 0, as in PyTorch)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        ctx.save(x > 0)
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (positive,) = ctx.saved
        return grad * positive


class Silu(Function):
    """out = x sigmoid(x);  d/dx = s (1 + x (1 - s)), s = sigmoid(x)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        s = stable_sigmoid(x)
        ctx.save(x, s)
        return x * s

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        x, s = ctx.saved
        return grad * s * (1 + x * (1 - s))


_erf = np.frompyfunc(math.erf, 1, 1)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 in x's dtype: math.erf per element (NumPy has no erf), or CuPy's erf."""
    if is_device_array(x):
        from cupyx.scipy.special import erf

        return 0.5 * (1 + erf(x / math.sqrt(2)))
    return np.asarray(0.5 * (1 + _erf(x / math.sqrt(2))), dtype=x.dtype)  # _erf of 0-d x: a float


class Gelu(Function):
    """Exact: out = x Phi(x), Phi the standard normal CDF;  d/dx = Phi(x) + x phi(x).
    approximate="tanh": out = x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3);
    d/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, approximate: str = "none") -> np.ndarray:
        if approximate == "tanh":
            th = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3))
            ctx.save(x, th, approximate)
            return 0.5 * x * (1 + th)
        cdf = _normal_cdf(x)
        ctx.save(x, cdf, approximate)
        return x * cdf

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        x, t, approximate = ctx.saved
        if approximate == "tanh":
            du = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x**2)
            return grad * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return grad * (t + x * pdf)


class Clip(Function):
    """out = min(max(x, low), high);  d/dx = [low <= x <= high] (as torch.clamp)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
        inside = array_module(x).ones(x.shape, bool)
        if low is not None:
            inside &= x >= low
        if high is not None:
            inside &= x <= high
        ctx.save(inside)
        return np.clip(x, low, high)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (inside,) = ctx.saved
        return grad * inside


class Cast(Function):
    """out = x as another dtype;  the gradient is cast back."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        ctx.save(x.dtype)
        return x.astype(dtype)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (dtype,) = ctx.saved
        return grad.astype(dtype)


# --- reductions ---------------------------------------------------------------------------------


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """axis (None, an int or a tuple, negative allowed) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int | np.integer) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis: {a} is out of range for a tensor with {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"axis: repeated axis in {axis}")
    return tuple(sorted(out))


def _expand_to(grad: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """A reduction's output gradient, broadcast back over the reduced axes of the input."""
    if not keepdims:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


class Sum(Function):
    """out = sum of x over axes;  d/dx = 1 for every summed element."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
        axes = normalize_axes(axis, x.ndim)
        ctx.save(x.shape, axes, keepdims)
        return as_array(x.sum(axis=axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        shape, axes, keepdims = ctx.saved
        return _expand_to(grad, shape, axes, keepdims).copy()


class Mean(Function):
    """out = mean of x over axes (n elements each);  d/dx = 1 / n."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
        axes = normalize_axes(axis, x.ndim)
        ctx.save(x.shape, axes, keepdims)
        return as_array(x.mean(axis=axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        shape, axes, keepdims = ctx.saved
        n = math.prod(shape[a] for a in axes)
        return _expand_to(grad / n, shape, axes, keepdims).copy()


class Max(Function):
    """out = max of x over axes;  d/dx = 1 / (number of maxima) at each maximum, 0 elsewhere
    (ties share the gradient, as torch.amax)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
        axes = normalize_axes(axis, x.ndim)
        out = x.max(axis=axes, keepdims=True)
        ctx.save(x == out, axes, keepdims)
        return out if keepdims else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        is_max, axes, keepdims = ctx.saved
        count = is_max.sum(axis=axes, keepdims=True)
        return _expand_to(grad, is_max.shape, axes, keepdims) * is_max / count


class Var(Function):
    """out = sum (x - mean)^2 / (n - correction) over axes;  d/dx = 2 (x - mean) / (n - correction)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: Any = None, keepdims: bool = False,
                correction: int = 0) -> np.ndarray:
        axes = normalize_axes(axis, x.ndim)
        centered = x - x.mean(axis=axes, keepdims=True)
        denom = math.prod(x.shape[a] for a in axes) - correction
        ctx.save(centered, axes, keepdims, denom)
        with np.errstate(divide="ignore", invalid="ignore"):
            return as_array((centered * centered).sum(axis=axes, keepdims=keepdims) / denom)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        centered, axes, keepdims, denom = ctx.saved
        return _expand_to(grad, centered.shape, axes, keepdims) * (2 / denom) * centered


# --- shapes ------------------------------------------------------------------------------------


class Reshape(Function):
    """out = x with another shape (same elements, C order);  the gradient is reshaped back."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        ctx.save(x.shape)
        return x.reshape(shape)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (shape,) = ctx.saved
        return grad.reshape(shape)


class Permute(Function):
    """out = x with its axes reordered;  the gradient is permuted by the inverse order."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        if sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
            raise ValueError(f"axes: expected a permutation of 0..{x.ndim - 1}, got {axes}")
        axes = tuple(a % x.ndim for a in axes)  # negative axes counted from the end: the backward inverts these
        ctx.save(axes)
        return np.transpose(x, axes)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (axes,) = ctx.saved
        return np.transpose(grad, tuple(np.argsort(axes)))


def _is_advanced(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, np.ndarray | list) or is_device_array(p) for p in parts)


def _add_at(out: np.ndarray, index: Any, values: np.ndarray) -> None:
    """out[index] += values, adding once per occurrence of a repeated index: np.add.at, or cupyx.scatter_add."""
    if is_device_array(out):
        import cupyx

        cupyx.scatter_add(out, index, values)
    else:
        np.add.at(out, index, values)


class GetItem(Function):
    """out = x[index] (slices, integers, integer or boolean arrays);  the gradient is scattered back,
    adding where an element was picked more than once."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, index: Any) -> np.ndarray:
        ctx.save(x.shape, x.dtype, index)
        return as_array(x[index])

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        shape, dtype, index = ctx.saved
        out = array_module(grad).zeros(shape, dtype)
        if _is_advanced(index):
            _add_at(out, index, grad)  # repeated indices accumulate
        else:
            out[index] += grad
        return out


class Concat(Function):
    """out = the inputs joined along an existing axis;  each gets its slice of the gradient."""

    @staticmethod
    def forward(ctx: Context, *xs: np.ndarray, axis: int = 0) -> np.ndarray:
        ctx.save([_shape(x)[axis] for x in xs], axis)
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[np.ndarray, ...]:
        sizes, axis = ctx.saved
        return tuple(np.split(grad, list(itertools.accumulate(sizes[:-1])), axis=axis))


class Stack(Function):
    """out = the inputs stacked along a new axis;  each gets its slice of the gradient."""

    @staticmethod
    def forward(ctx: Context, *xs: np.ndarray, axis: int = 0) -> np.ndarray:
        ctx.save(len(xs), axis)
        return np.stack(xs, axis=axis)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[np.ndarray, ...]:
        n, axis = ctx.saved
        return tuple(np.take(grad, i, axis=axis) for i in range(n))


class Pad(Function):
    """out = x padded with a constant;  the gradient is the interior of the output gradient."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, widths: tuple[tuple[int, int], ...], value: float = 0.0) -> np.ndarray:
        if len(widths) != x.ndim or any(lo < 0 or hi < 0 for lo, hi in widths):
            raise ValueError(f"widths: expected {x.ndim} non-negative (before, after) pairs, got {widths}")
        ctx.save(widths)
        if not widths:  # a 0-d x: nothing to pad (np.pad refuses an empty list of widths)
            return x.copy()
        return np.pad(x, widths, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (widths,) = ctx.saved
        return grad[tuple(slice(lo, n - hi) for (lo, hi), n in zip(widths, grad.shape, strict=True))]


# --- matrix product ------------------------------------------------------------------------------


def _swap_last(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


class MatMul(Function):
    """out = a @ b, batched over leading axes that broadcast (NumPy's matmul; 1-D operands are
    treated as a row or a column and the axis is dropped again);  d/da = grad @ b^T, d/db = a^T @ grad."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = as_array(a), as_array(b)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: operands must have at least one dimension (use * for scalars)")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: inner dimensions differ, a {a.shape} @ b {b.shape}")
        ctx.save(a, b)
        return matmul(a, b)

    @staticmethod
    @exercise("ex01.3")
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a  # (..., n, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (..., k, m)
        g2 = grad
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)  # (..., n, m)
        # BEGIN SOLUTION ex01.3: grad_a = g2 @ b2^T and grad_b = a2^T @ g2, each summed over broadcast batch axes
        grad_a = sum_to_shape(matmul(g2, _swap_last(b2)), a2.shape) if ctx.needs_input_grad[0] else None
        grad_b = sum_to_shape(matmul(_swap_last(a2), g2), b2.shape) if ctx.needs_input_grad[1] else None
        # END SOLUTION
        return (None if grad_a is None else grad_a.reshape(a.shape),
                None if grad_b is None else grad_b.reshape(b.shape))
