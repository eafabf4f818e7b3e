"""Chapter 01 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch01
"""

from __future__ import annotations

import numpy as np
from minidiff.autodiff.function import Context
from minidiff.autodiff.ops import _shape
from minidiff.autodiff.ops import _swap_last
from typing import Any


# Exercise 1.1 (reference: minidiff.autodiff.function.sum_to_shape)
def sum_to_shape(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo broadcasting in the backward pass: sum `grad` over the axes along which an input of
    `shape` was broadcast, so that the gradient has the input's shape.

    Broadcasting first prepends size-1 axes to the shorter shape, then stretches size-1 axes. Each
    copy of an input element receives its own gradient, and the element's gradient is their sum.
    """
    if grad.shape == shape:
        return grad
    raise NotImplementedError("Exercise 1.1: sum away the prepended axes, then the stretched size-1 axes (keepdims)")
    return grad.reshape(shape)


class Mul:
    # Exercise 1.2 (reference: minidiff.autodiff.ops.Mul.backward)
    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a, b = ctx.saved
        raise NotImplementedError("Exercise 1.2: each input's gradient is grad times the other input, summed back to its shape")
        return grad_a, grad_b


class MatMul:
    # Exercise 1.3 (reference: minidiff.autodiff.ops.MatMul.backward)
    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, Any]:
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a  # (..., n, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (..., k, m)
        g2 = grad
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)  # (..., n, m)
        raise NotImplementedError("Exercise 1.3: grad_a = g2 @ b2^T and grad_b = a2^T @ g2, each summed over broadcast batch axes")
        return (None if grad_a is None else grad_a.reshape(a.shape),
                None if grad_b is None else grad_b.reshape(b.shape))


class Softmax:
    # Exercise 1.4 (reference: minidiff.functional.Softmax.backward)
    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        s, axis = ctx.saved
        raise NotImplementedError("Exercise 1.4: the Jacobian is diag(s) - s s^T; apply it without building it")
        return grad_x


# Exercise 1.5 (reference: minidiff.kernels.conv2d.scatter_windows)
def scatter_windows(grad_windows: np.ndarray, x_shape: tuple[int, ...], stride: tuple[int, int],
                    padding: tuple[int, int]) -> np.ndarray:
    """The adjoint of `windows`: add each window's gradient back onto the pixels it was read from.

    grad_windows: (N, C, HO, WO, KH, KW). Returns the gradient of x: (N, C, H, W). A pixel inside
    several windows receives the sum of their gradients; the padding's share is dropped.
    """
    n, c, h, w = x_shape
    (ph, pw), (sh, sw) = padding, stride
    _, _, ho, wo, kh, kw = grad_windows.shape
    grad_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), grad_windows.dtype)
    raise NotImplementedError("Exercise 1.5: for each kernel offset (i, j), window (y, x) read pixel (y*sh + i, x*sw + j)")
    return grad_pad[:, :, ph : ph + h, pw : pw + w]
