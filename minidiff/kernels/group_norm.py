"""Group normalization: each group of channels of each sample normalized to mean 0 and variance 1,
then scaled and shifted per channel. Layer normalization is the same row normalization over the
trailing axes.

    x_hat = (x - mean) / sqrt(var + eps) over each group (biased variance), u = x_hat * weight[c] + bias[c]

The U-Net fuses two more steps into it: AdaGN's per-sample scale and shift [E44] and a SiLU,

    y = act(u * (1 + scale[n, c]) + shift[n, c]),   act = identity (activation=None) or SiLU ("silu").

`group_norm_forward` and `group_norm_backward` check their arguments and run the current backend's version:
the twins below on "numpy", csrc/cpu/group_norm.cpp on "cpp", csrc/cuda/group_norm.cu on "cuda" and "cuda-emu"
(a block of threads per group of each sample, the statistics by block reductions). The forward returns the group
statistics (mean, rstd) as (N, G) float64 arrays, and the backward recomputes x_hat from x and them: two numbers per
group kept for the backward instead of a copy of x.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidiff import backend as _backend
from minidiff.kernels import _checks, _cuda
from minidiff.kernels._dispatch import implementation
from minidiff.kernels.activation import ACTIVATIONS, activation_backward_ref, activation_ref


def _row_mean(a: np.ndarray) -> np.ndarray:
    """a (R, M) -> (R, 1): a.mean(axis=1), the same numbers, but 0 for rows of M = 0 (no warning)."""
    return a.sum(axis=1, keepdims=True) / max(a.shape[1], 1)


def normalize_rows_ref(rows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rows (R, M) -> (x_hat (R, M), mean (R, 1), rstd (R, 1)): each row to mean 0, variance 1."""
    mean = _row_mean(rows)
    centered = rows - mean
    rstd = 1.0 / np.sqrt(_row_mean(centered * centered) + eps)
    return centered * rstd, mean, rstd


def normalize_rows_backward_ref(grad_x_hat: np.ndarray, x_hat: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """Gradient through x_hat = (x - mean) rstd for each row of M elements:
    grad_x = rstd (g - mean(g) - x_hat mean(g x_hat))."""
    return rstd * (grad_x_hat - _row_mean(grad_x_hat) - x_hat * _row_mean(grad_x_hat * x_hat))


def _group_rows(a: np.ndarray, num_groups: int) -> np.ndarray:
    """a (N, C, *) -> (N * G, C / G * prod(*)): one row per group of each sample (also when N = 0)."""
    return a.reshape(a.shape[0] * num_groups, math.prod(a.shape[1:]) // num_groups)


def _per_channel(p: np.ndarray, ndim: int) -> np.ndarray:
    return p.reshape((1, -1) + (1,) * (ndim - 2))  # (1, C, 1, ...)


def _per_sample_channel(p: np.ndarray, ndim: int) -> np.ndarray:
    return p.reshape(p.shape[:2] + (1,) * (ndim - 2))  # (N, C, 1, ...)


def _affine_ref(x_hat: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    """u = x_hat * weight[c] + bias[c] (either may be None)."""
    u = x_hat if weight is None else x_hat * _per_channel(weight, x_hat.ndim)
    return u if bias is None else u + _per_channel(bias, x_hat.ndim)


def _scale_shift_ref(u: np.ndarray, scale: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray:
    """[E44] AdaGN's z = u (1 + scale[n, c]) + shift[n, c] (either may be None)."""
    z = u if scale is None else u * (1 + _per_sample_channel(scale, u.ndim))
    return z if shift is None else z + _per_sample_channel(shift, u.ndim)


def group_norm_forward_ref(x: np.ndarray, num_groups: int, weight: np.ndarray | None, bias: np.ndarray | None,
                           eps: float, scale: np.ndarray | None = None, shift: np.ndarray | None = None,
                           activation: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[E44] x (N, C, *) -> (y (N, C, *), mean (N, G), rstd (N, G)), y = act((x_hat w + b) (1 + scale) + shift).

    weight, bias (C,); scale, shift (N, C) or (N, C, 1, ...); any may be None. The statistics and x_hat are
    computed in float64 for float32 x too, as the C++ kernel does: at a mean of 1e4, float32 sums would shift
    every x_hat by up to half an ulp of the mean (5e-4); they come back as float64 (N, G) arrays."""
    rows = _group_rows(x, num_groups).astype(np.float64, copy=False)  # (N G, M)
    x_hat, mean, rstd = normalize_rows_ref(rows, eps)  # (N G, M), (N G, 1), (N G, 1), all float64
    z = _scale_shift_ref(_affine_ref(x_hat.reshape(x.shape).astype(x.dtype), weight, bias), scale, shift)
    stats_shape = (x.shape[0], num_groups)
    return activation_ref(z, activation), mean.reshape(stats_shape), rstd.reshape(stats_shape)


def _affine_backward_ref(grad_u: np.ndarray, x_hat: np.ndarray, rstd: np.ndarray, weight: np.ndarray | None,
                         num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Through u = x_hat w + b: grad_u (N, C, *) -> (grad_x (N, C, *), grad_weight (C,), grad_bias (C,))."""
    reduce_axes = (0, *range(2, grad_u.ndim))
    grad_weight = (grad_u * x_hat).sum(axis=reduce_axes)
    grad_bias = grad_u.sum(axis=reduce_axes)
    grad_x_hat = grad_u * _per_channel(weight, grad_u.ndim) if weight is not None else grad_u
    grad_x = normalize_rows_backward_ref(_group_rows(grad_x_hat, num_groups), _group_rows(x_hat, num_groups), rstd)
    return grad_x.reshape(grad_u.shape), grad_weight, grad_bias


def group_norm_backward_ref(grad_y: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, num_groups: int,
                            weight: np.ndarray | None, bias: np.ndarray | None, scale: np.ndarray | None = None,
                            shift: np.ndarray | None = None, activation: str | None = None) -> tuple[Any, ...]:
    """grad_y (N, C, *) -> (grad_x (N, C, *), grad_weight (C,), grad_bias (C,), grad_scale, grad_shift), the last
    two shaped as scale and shift (None where they are). x_hat is recomputed from x and the forward's mean, rstd,
    in float64 as in the forward."""
    rows = _group_rows(x, num_groups).astype(np.float64, copy=False)  # (N G, M)
    x_hat = ((rows - mean.reshape(-1, 1)) * rstd.reshape(-1, 1)).reshape(x.shape).astype(x.dtype)
    rstd_rows = rstd.reshape(-1, 1).astype(x.dtype)  # (N G, 1)
    u = _affine_ref(x_hat, weight, bias)  # (N, C, *)
    grad_z = activation_backward_ref(grad_y, _scale_shift_ref(u, scale, shift), activation)
    spatial = tuple(range(2, x.ndim))
    grad_scale = None if scale is None else (grad_z * u).sum(axis=spatial).reshape(scale.shape)
    grad_shift = None if shift is None else grad_z.sum(axis=spatial).reshape(shift.shape)
    grad_u = grad_z if scale is None else grad_z * (1 + _per_sample_channel(scale, x.ndim))
    return *_affine_backward_ref(grad_u, x_hat, rstd_rows, weight, num_groups), grad_scale, grad_shift


# --- dispatch ------------------------------------------------------------------------------------------------------


def group_norm_forward(x: np.ndarray, num_groups: int, weight: np.ndarray | None = None,
                       bias: np.ndarray | None = None, eps: float = 1e-5, scale: np.ndarray | None = None,
                       shift: np.ndarray | None = None,
                       activation: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y (N, C, *), mean (N, G), rstd (N, G)) on the current backend; see group_norm_forward_ref."""
    num_groups, eps = _check(x, num_groups, weight, bias, scale, shift, eps, activation)
    return implementation({"numpy": group_norm_forward_ref, "cpp": _forward_cpp, "cuda": _forward_cuda,
                           "cuda-emu": _forward_cuda})(
        x, num_groups, weight, bias, eps, scale, shift, activation)


def group_norm_backward(grad_y: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, num_groups: int,
                        weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                        scale: np.ndarray | None = None, shift: np.ndarray | None = None,
                        activation: str | None = None) -> tuple[Any, ...]:
    """(grad_x, grad_weight, grad_bias, grad_scale, grad_shift) on the current backend; see
    group_norm_backward_ref."""
    num_groups, _ = _check(x, num_groups, weight, bias, scale, shift, 0.0, activation)
    _checks.like(grad_y, "grad_y", x, "x")
    for a, name in ((mean, "mean"), (rstd, "rstd")):
        _checks.float_array(a, name)
        if a.shape != (x.shape[0], num_groups):
            raise ValueError(f"{name}: expected shape {(x.shape[0], num_groups)} (N, G), got {a.shape}")
    return implementation({"numpy": group_norm_backward_ref, "cpp": _backward_cpp, "cuda": _backward_cuda,
                           "cuda-emu": _backward_cuda})(
        grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift, activation)


def _check(x: Any, num_groups: Any, weight: Any, bias: Any, scale: Any, shift: Any, eps: Any,
           activation: Any) -> tuple[int, float]:
    """The checks every backend relies on; returns (num_groups, eps) as int and float."""
    _checks.float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected (N, C, ...), got shape {x.shape}")
    n, channels = x.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int | np.integer) or num_groups < 1 \
            or channels % num_groups:
        raise ValueError(f"num_groups: expected a positive divisor of the {channels} channels of x, got {num_groups}")
    per_sample = ((n, channels), (n, channels) + (1,) * (x.ndim - 2))
    for p, name, shapes in ((weight, "weight", ((channels,),)), (bias, "bias", ((channels,),)),
                            (scale, "scale", per_sample), (shift, "shift", per_sample)):
        if p is None:
            continue
        if not _checks.is_array(p):
            raise TypeError(f"{name}: expected a numpy.ndarray or None, got {type(p).__name__}")
        if p.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {p.dtype}")
        if p.shape not in shapes:
            raise ValueError(f"{name}: expected shape {' or '.join(map(str, dict.fromkeys(shapes)))}, got {p.shape}")
    eps = _checks.finite(eps, "eps")
    if eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    return int(num_groups), eps


def _per_sample_rows(p: np.ndarray | None) -> np.ndarray | None:
    """scale or shift as the (N, C) C-contiguous array the C++ kernel reads."""
    return None if p is None else _checks.c_contiguous(p.reshape(p.shape[:2]))


def _optional(p: np.ndarray | None) -> np.ndarray | None:
    return None if p is None else _checks.c_contiguous(p)


def _forward_cpp(x: np.ndarray, num_groups: int, weight: np.ndarray | None, bias: np.ndarray | None, eps: float,
                 scale: np.ndarray | None, shift: np.ndarray | None,
                 activation: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.empty(x.shape, x.dtype)  # (N, C, *)
    mean, rstd = np.empty((x.shape[0], num_groups)), np.empty((x.shape[0], num_groups))  # (N, G) float64
    _backend.extension().group_norm_forward(_checks.c_contiguous(x), _optional(weight), _optional(bias),
                                            _per_sample_rows(scale), _per_sample_rows(shift), y, mean, rstd,
                                            num_groups, eps, activation or "identity")
    return y, mean, rstd


def _backward_cpp(grad_y: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, num_groups: int,
                  weight: np.ndarray | None, bias: np.ndarray | None, scale: np.ndarray | None,
                  shift: np.ndarray | None, activation: str | None) -> tuple[Any, ...]:
    n, channels = x.shape[:2]
    grad_x, grad_weight, grad_bias = np.empty(x.shape, x.dtype), np.empty(channels, x.dtype), np.empty(channels,
                                                                                                          x.dtype)
    grad_scale, grad_shift = (None if p is None else np.empty((n, channels), x.dtype) for p in (scale, shift))
    _backend.extension().group_norm_backward(
        _checks.c_contiguous(grad_y), _checks.c_contiguous(x), np.ascontiguousarray(mean, np.float64),
        np.ascontiguousarray(rstd, np.float64), _optional(weight), _optional(bias), _per_sample_rows(scale),
        _per_sample_rows(shift), grad_x, grad_weight, grad_bias, grad_scale, grad_shift, num_groups,
        activation or "identity")
    return (grad_x, grad_weight, grad_bias, None if scale is None else grad_scale.reshape(scale.shape),
            None if shift is None else grad_shift.reshape(shift.shape))


# --- the CUDA kernels: x as (N, C, S) -------------------------------------------------------------------------------

_PRESENT_BITS = (1, 2, 4, 8)  # kWeight, kBias, kScale, kShift of csrc/cuda/group_norm.cu
_MAX_THREADS = 256


def _cuda_params(backend: str, x_dev: Any, weight: Any, bias: Any, scale: Any, shift: Any) -> tuple[Any, ...]:
    """weight, bias, scale, shift as the kernels read them, on the device, and the `present` bits; x_dev stands in
    for those absent, which the kernels never read."""
    given = (_optional(weight), _optional(bias), _per_sample_rows(scale), _per_sample_rows(shift))
    present = sum(bit for bit, p in zip(_PRESENT_BITS, given, strict=True) if p is not None)
    return (*(x_dev if p is None else _cuda.to_device(backend, p) for p in given), np.int32(present))


def _block_launch(x: Any, num_groups: int) -> tuple[tuple[int], tuple[int], int]:
    """(grid, block, shared_mem) for a block per (sample, group): whole warps, enough for the group's M numbers up to
    _MAX_THREADS, and one double of shared memory per warp."""
    group_size = math.prod(x.shape[1:]) // num_groups
    threads = min(_MAX_THREADS, max(32, -(-group_size // 32) * 32))
    return (min(_cuda.MAX_BLOCKS, x.shape[0] * num_groups),), (threads,), threads // 32 * 8


def _activation_code(activation: str | None) -> np.int32:
    """md::Activation of minidiff/group_norm.h: 0 identity, 1 SiLU (ACTIVATIONS' order)."""
    return np.int32(ACTIVATIONS.index(activation))


def _sizes(x: Any, num_groups: int) -> tuple[np.int64, ...]:
    return tuple(np.int64(v) for v in (x.shape[0], x.shape[1], num_groups, math.prod(x.shape[2:])))


def _forward_cuda(x: Any, num_groups: int, weight: Any, bias: Any, eps: float, scale: Any, shift: Any,
                  activation: str | None) -> tuple[Any, Any, Any]:
    backend, xp = _backend.get_backend(), _checks.array_module(x)
    n = x.shape[0]
    y = xp.empty(x.shape, x.dtype)  # (N, C, *)
    mean, rstd = xp.empty((n, num_groups)), xp.empty((n, num_groups))  # (N, G) float64
    if n == 0:
        return y, mean, rstd
    sizes = _sizes(x, num_groups)
    x_dev = _cuda.to_device(backend, _checks.c_contiguous(x).reshape(sizes[:2] + sizes[3:]))  # (N, C, S)
    hosts = (y.reshape(x_dev.shape), mean, rstd)  # y as (N, C, S), a view
    y_dev, mean_dev, rstd_dev = (_cuda.to_device(backend, a) for a in hosts)
    grid, block, shared = _block_launch(x, num_groups)
    _cuda.launch(backend, "group_norm.cu", f"group_norm_forward_kernel<{_cuda.ctype(x.dtype)}>", grid, block,
                 (x_dev, *_cuda_params(backend, x_dev, weight, bias, scale, shift), _activation_code(activation),
                  np.float64(eps), y_dev, mean_dev, rstd_dev, *sizes),
                 writes=(8, 9, 10), shared_mem=shared)  # y, mean, rstd
    for dev, host in zip((y_dev, mean_dev, rstd_dev), hosts, strict=True):
        _cuda.to_host(dev, host)
    return y, mean, rstd


def _backward_cuda(grad_y: Any, x: Any, mean: Any, rstd: Any, num_groups: int, weight: Any, bias: Any, scale: Any,
                   shift: Any, activation: str | None) -> tuple[Any, ...]:
    """group_norm_backward_kernel, then group_norm_param_grad_kernel to add each (n, c)'s terms of grad_weight and
    grad_bias over the samples."""
    backend, xp = _backend.get_backend(), _checks.array_module(x)
    n, channels = x.shape[:2]
    grad_x = xp.empty(x.shape, x.dtype)  # (N, C, *)
    grad_weight, grad_bias = xp.empty(channels, x.dtype), xp.empty(channels, x.dtype)  # (C,)
    grad_scale, grad_shift = (None if p is None else xp.empty((n, channels), x.dtype) for p in (scale, shift))
    sizes, t = _sizes(x, num_groups), _cuda.ctype(x.dtype)
    x_dev, grad_y_dev = (_cuda.to_device(backend, _checks.c_contiguous(a).reshape(sizes[:2] + sizes[3:]))
                         for a in (x, grad_y))  # (N, C, S)
    hosts = (grad_x.reshape(x_dev.shape), grad_weight, grad_bias, grad_scale, grad_shift)  # grad_x as (N, C, S)
    grad_x_dev = _cuda.to_device(backend, hosts[0])
    weight_terms, bias_terms = (_cuda.to_device(backend, xp.empty((n, channels))) for _ in range(2))  # (N, C) float64
    optional_grads = [x_dev if g is None else _cuda.to_device(backend, g) for g in (grad_scale, grad_shift)]
    stats = (_cuda.to_device(backend, xp.ascontiguousarray(a, xp.float64)) for a in (mean, rstd))  # (N, G)
    if n:
        grid, block, shared = _block_launch(x, num_groups)
        optional_writes = tuple(13 + i for i, g in enumerate((grad_scale, grad_shift)) if g is not None)
        _cuda.launch(backend, "group_norm.cu", f"group_norm_backward_kernel<{t}>", grid, block,
                     (grad_y_dev, x_dev, *stats,
                      *_cuda_params(backend, x_dev, weight, bias, scale, shift), _activation_code(activation),
                      grad_x_dev, weight_terms, bias_terms, *optional_grads, *sizes),
                     writes=(10, 11, 12, *optional_writes), shared_mem=shared)  # grad_x, the terms, grad_scale/shift
    grad_params = [_cuda.to_device(backend, g) for g in (grad_weight, grad_bias)]
    if channels:
        _cuda.launch(backend, "group_norm.cu", f"group_norm_param_grad_kernel<{t}>", *_cuda.launch_config_1d(channels),
                     (weight_terms, bias_terms, *grad_params, *sizes[:2]), writes=(2, 3))  # grad_weight, grad_bias
    for dev, host in zip((grad_x_dev, *grad_params, *optional_grads), hosts, strict=True):
        if host is not None:
            _cuda.to_host(dev, host)
    return (grad_x, grad_weight, grad_bias, None if scale is None else grad_scale.reshape(scale.shape),
            None if shift is None else grad_shift.reshape(shift.shape))
