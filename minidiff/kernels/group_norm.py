"""Group normalization: each group of channels of each sample normalized to mean 0 and variance 1,
then scaled and shifted per channel. Layer normalization is the same row normalization over the
trailing axes.

    x_hat = (x - mean) / sqrt(var + eps) over each group (biased variance), y = x_hat * weight[c] + bias[c]
"""

from __future__ import annotations

import math

import numpy as np

from minidiff.kernels._dispatch import implementation


def normalize_rows_ref(rows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """rows (R, M) -> (x_hat (R, M), rstd (R, 1)): each row to mean 0, variance 1."""
    mean = rows.mean(axis=1, keepdims=True)
    centered = rows - mean
    rstd = 1.0 / np.sqrt((centered * centered).mean(axis=1, keepdims=True) + eps)
    return centered * rstd, rstd


def normalize_rows_backward_ref(grad_x_hat: np.ndarray, x_hat: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """Gradient through x_hat = (x - mean) rstd for each row of M elements:
    grad_x = rstd (g - mean(g) - x_hat mean(g x_hat))."""
    return rstd * (grad_x_hat - grad_x_hat.mean(axis=1, keepdims=True)
                   - x_hat * (grad_x_hat * x_hat).mean(axis=1, keepdims=True))


def _group_rows(a: np.ndarray, num_groups: int) -> np.ndarray:
    """a (N, C, *) -> (N * G, C / G * prod(*)): one row per group of each sample (also when N = 0)."""
    return a.reshape(a.shape[0] * num_groups, math.prod(a.shape[1:]) // num_groups)


def _per_channel(p: np.ndarray, ndim: int) -> np.ndarray:
    return p.reshape((1, -1) + (1,) * (ndim - 2))  # (1, C, 1, ...)


def group_norm_forward_ref(x: np.ndarray, num_groups: int, weight: np.ndarray | None, bias: np.ndarray | None,
                           eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, C, *) -> (y (N, C, *), x_hat (N, C, *), rstd (N * G, 1))."""
    x_hat, rstd = normalize_rows_ref(_group_rows(x, num_groups), eps)
    x_hat = x_hat.reshape(x.shape)
    y = x_hat
    if weight is not None:
        y = y * _per_channel(weight, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, x.ndim)
    return y, x_hat, rstd


def group_norm_backward_ref(grad_y: np.ndarray, x_hat: np.ndarray, rstd: np.ndarray, weight: np.ndarray | None,
                            num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """grad_y (N, C, *) -> (grad_x (N, C, *), grad_weight (C,), grad_bias (C,))."""
    reduce_axes = (0, *range(2, grad_y.ndim))
    grad_weight = (grad_y * x_hat).sum(axis=reduce_axes)
    grad_bias = grad_y.sum(axis=reduce_axes)
    grad_x_hat = grad_y * _per_channel(weight, grad_y.ndim) if weight is not None else grad_y
    grad_x = normalize_rows_backward_ref(_group_rows(grad_x_hat, num_groups), _group_rows(x_hat, num_groups), rstd)
    return grad_x.reshape(grad_y.shape), grad_weight, grad_bias


def group_norm_forward(x, num_groups, weight, bias, eps):
    return implementation({"numpy": group_norm_forward_ref})(x, num_groups, weight, bias, eps)


def group_norm_backward(grad_y, x_hat, rstd, weight, num_groups):
    return implementation({"numpy": group_norm_backward_ref})(grad_y, x_hat, rstd, weight, num_groups)
