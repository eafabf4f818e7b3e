"""2-D convolution (cross-correlation, as in every deep-learning library), NCHW layout.

    out[n, o, y, x] = sum_{c, i, j} x_pad[n, c, y * sh + i, x * sw + j] * weight[o, c, i, j]

NumPy twins of the forward and the backward; compiled versions plug in through the same functions.
Windows are read with sliding_window_view (no copy) and contracted with tensordot (BLAS).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minidiff.exercise_tools import exercise
from minidiff.kernels._dispatch import implementation


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """Every kernel-sized window of the zero-padded x: (N, C, HO, WO, KH, KW), a strided view."""
    (ph, pw), (sh, sw) = padding, stride
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    return sliding_window_view(x_pad, kernel, axis=(2, 3))[:, :, ::sh, ::sw]


@exercise("ex01.5")
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
    # BEGIN SOLUTION ex01.5: for each kernel offset (i, j), window (y, x) read pixel (y*sh + i, x*sw + j)
    for i in range(kh):
        for j in range(kw):
            grad_pad[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += grad_windows[:, :, :, :, i, j]
    # END SOLUTION
    return grad_pad[:, :, ph : ph + h, pw : pw + w]


def conv2d_forward_ref(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                       padding: tuple[int, int]) -> np.ndarray:
    """x (N, C, H, W), weight (O, C, KH, KW) -> (N, O, HO, WO)."""
    cols = windows(x, weight.shape[2:], stride, padding)  # (N, C, HO, WO, KH, KW)
    out = np.tensordot(cols, weight, axes=([1, 4, 5], [1, 2, 3]))  # (N, HO, WO, O)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def conv2d_backward_ref(grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                        padding: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """grad_out (N, O, HO, WO) -> (grad_x (N, C, H, W), grad_weight (O, C, KH, KW))."""
    cols = windows(x, weight.shape[2:], stride, padding)  # (N, C, HO, WO, KH, KW)
    grad_weight = np.tensordot(grad_out, cols, axes=([0, 2, 3], [0, 2, 3]))  # (O, C, KH, KW)
    grad_cols = np.tensordot(grad_out, weight, axes=([1], [0]))  # (N, HO, WO, C, KH, KW)
    grad_x = scatter_windows(grad_cols.transpose(0, 3, 1, 2, 4, 5), x.shape, stride, padding)
    return grad_x, grad_weight


def conv2d_forward(x, weight, stride, padding):
    return implementation({"numpy": conv2d_forward_ref})(x, weight, stride, padding)


def conv2d_backward(grad_out, x, weight, stride, padding):
    return implementation({"numpy": conv2d_backward_ref})(grad_out, x, weight, stride, padding)
