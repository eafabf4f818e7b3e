"""2-D convolution (cross-correlation, as in every deep-learning library), NCHW layout.

    out[n, o, y, x] = sum_{c, i, j} x_pad[n, c, y * sh + i, x * sw + j] * weight[o, c, i, j]

NumPy twins of the forward and the backward; compiled versions plug in through the same functions.
Windows are read with sliding_window_view (no copy) and contracted with tensordot (BLAS).

The same convolution as matrix products (Chellapilla, Puri & Simard 2006), for chapter 11: `im2col` lays every
window out as one column, so the forward is W (O, C KH KW) @ cols (C KH KW, HO WO) per image
(`conv2d_forward_im2col`) and the weight gradient one product over all images (`conv2d_weight_grad_gemm`).

`conv2d_forward` and `conv2d_backward` check their arguments and run the current backend's version: the
twins on "numpy", csrc/cpu/conv2d.cpp on "cpp" (per-image im2col into the packed GEMM of kernels/gemm.py), and
csrc/cuda/conv2d.cu on "cuda" and "cuda-emu", in two numbered versions (`version=`):
    version 1   direct: one thread per element of the result, its whole sum in a loop
    version 2   implicit GEMM: the sums as matrix products on GEMM v4's tiles, reading the image patches in place
                (never storing im2col's matrix); grad_x gathers, so no two threads write one element. The default.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minidiff import backend as _backend
from minidiff.exercise_tools import exercise
from minidiff.kernels import _checks, _cuda
from minidiff.kernels._dispatch import implementation

CUDA_VERSIONS = (1, 2)


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
                        padding: tuple[int, int], needs_input_grad: tuple[bool, bool] = (True, True)
                        ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """grad_out (N, O, HO, WO) -> (grad_x (N, C, H, W), grad_weight (O, C, KH, KW)); each None, not computed, where
    needs_input_grad (for x, weight) says False."""
    grad_x = grad_weight = None
    if needs_input_grad[1]:
        cols = windows(x, weight.shape[2:], stride, padding)  # (N, C, HO, WO, KH, KW)
        grad_weight = np.tensordot(grad_out, cols, axes=([0, 2, 3], [0, 2, 3]))  # (O, C, KH, KW)
    if needs_input_grad[0]:
        grad_cols = np.tensordot(grad_out, weight, axes=([1], [0]))  # (N, HO, WO, C, KH, KW)
        grad_x = scatter_windows(grad_cols.transpose(0, 3, 1, 2, 4, 5), x.shape, stride, padding)
    return grad_x, grad_weight


@exercise("ex11.1")
def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """x (N, C, H, W) -> cols (N, C KH KW, HO WO): column y WO + x of image n holds the window under output pixel
    (y, x), in the order of the weight's (c, i, j): cols[n, (c KH + i) KW + j, y WO + x] = x_pad[n, c, y sh + i,
    x sw + j], x_pad being x with `padding` zeros on each side. kernel, stride, padding: (height, width) pairs."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H + 2 ph, W + 2 pw)
    cols = np.empty((n, c, kh, kw, ho, wo), x.dtype)
    # BEGIN SOLUTION ex11.1: for each kernel offset (i, j), output pixel (y, x) reads x_pad[:, :, y*sh + i, x*sw + j]
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x_pad[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]  # (N, C, HO, WO)
    # END SOLUTION
    return cols.reshape(n, c * kh * kw, ho * wo)


def conv2d_forward_im2col(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                          padding: tuple[int, int]) -> np.ndarray:
    """x (N, C, H, W), weight (O, C, KH, KW) -> (N, O, HO, WO) as one matrix product per image:
    out_n (O, HO WO) = W (O, C KH KW) @ cols_n (C KH KW, HO WO). The teaching form of conv2d_forward_ref."""
    stride, padding = _check_conv(x, weight, stride, padding)
    cols = im2col(x, weight.shape[2:], stride, padding)  # (N, C KH KW, HO WO)
    out = weight.reshape(weight.shape[0], cols.shape[1]) @ cols  # (N, O, HO WO): the product broadcast over images
    return out.reshape(_out_shape(x, weight, stride, padding))


@exercise("ex11.3")
def conv2d_weight_grad_gemm(grad_out: np.ndarray, cols: np.ndarray, weight_shape: tuple[int, int, int, int]
                            ) -> np.ndarray:
    """grad_out (N, O, HO, WO), cols = im2col(x, ...) (N, C KH KW, HO WO) -> grad_weight (O, C, KH, KW) as one GEMM
    over every output position of every image: grad_W (O, C KH KW) = G (O, N HO WO) @ cols^T (N HO WO, C KH KW),
    since out[n, o, p] = sum_r W[o, r] cols[n, r, p] gives dL/dW[o, r] = sum_{n, p} grad_out[n, o, p] cols[n, r, p]."""
    n, o, ho, wo = grad_out.shape
    rows = cols.shape[1]  # C KH KW
    # BEGIN SOLUTION ex11.3: lay grad_out out as (O, N*HO*WO) and cols as (C*KH*KW, N*HO*WO), then one product
    g = grad_out.transpose(1, 0, 2, 3).reshape(o, n * ho * wo)  # (O, N HO WO)
    cols_all = cols.transpose(1, 0, 2).reshape(rows, n * ho * wo)  # (C KH KW, N HO WO)
    grad_w = g @ cols_all.T  # (O, C KH KW)
    # END SOLUTION
    return grad_w.reshape(weight_shape)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], *,
                   version: int | None = None) -> np.ndarray:
    """x (N, C, H, W), weight (O, C, KH, KW) -> out (N, O, HO, WO) on the current backend.

    version: on "cuda" and "cuda-emu", None or one of CUDA_VERSIONS (see the module docstring); elsewhere None.
    """
    stride, padding = _check_conv(x, weight, stride, padding)
    version = _cuda.pick_version(version, CUDA_VERSIONS)
    if version is not None:
        out = _checks.array_module(x).empty(_out_shape(x, weight, stride, padding), x.dtype)  # (N, O, HO, WO)
        return _launch("forward", version, (x, weight), out, out.shape[1], x.shape, weight.shape, stride, padding)
    return implementation({"numpy": conv2d_forward_ref, "cpp": _forward_cpp})(x, weight, stride, padding)


def conv2d_backward(grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                    padding: tuple[int, int], *, version: int | None = None,
                    needs_input_grad: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray | None, np.ndarray | None]:
    """grad_out (N, O, HO, WO) -> (grad_x (N, C, H, W), grad_weight (O, C, KH, KW)) on the current backend.

    version: as for conv2d_forward. needs_input_grad: which of (grad_x, grad_weight) to compute; the other comes
    back None (a network's first layer needs no gradient for its input image).
    """
    stride, padding = _check_conv(x, weight, stride, padding)
    if not _checks.is_array(grad_out):
        raise TypeError(f"grad_out: expected a numpy.ndarray, got {type(grad_out).__name__}")
    if grad_out.dtype != x.dtype:
        raise TypeError(f"grad_out: expected dtype {x.dtype} (the dtype of x), got {grad_out.dtype}")
    if grad_out.shape != _out_shape(x, weight, stride, padding):
        raise ValueError(f"grad_out: expected shape {_out_shape(x, weight, stride, padding)} (the output's), got "
                         f"{grad_out.shape}")
    needs_x, needs_weight = (bool(n) for n in needs_input_grad)
    version = _cuda.pick_version(version, CUDA_VERSIONS)
    if version is not None:
        xp = _checks.array_module(x)
        grad_x = _launch("grad_x", version, (grad_out, weight), xp.empty(x.shape, x.dtype), x.shape[1], x.shape,
                         weight.shape, stride, padding) if needs_x else None
        grad_weight = _launch("grad_weight", version, (grad_out, x), xp.empty(weight.shape, x.dtype),
                              weight.shape[0], x.shape, weight.shape, stride, padding) if needs_weight else None
        return grad_x, grad_weight
    return implementation({"numpy": conv2d_backward_ref, "cpp": _backward_cpp})(grad_out, x, weight, stride, padding,
                                                                                 (needs_x, needs_weight))


_MAX_BYTES = 2**62  # no array this large can exist; past it sizes would also overflow 64-bit byte offsets


def _int_pair(v: object, name: str, minimum: int) -> tuple[int, int]:
    pair = tuple(v) if isinstance(v, tuple | list) else (v, v)
    if len(pair) != 2 or any(isinstance(p, bool) or not isinstance(p, int | np.integer) or p < minimum for p in pair):
        raise ValueError(f"{name}: expected an int >= {minimum} or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def _check_conv(x: np.ndarray, weight: np.ndarray, stride: object,
                padding: object) -> tuple[tuple[int, int], tuple[int, int]]:
    """The checks every backend relies on; returns (stride, padding) as pairs of ints."""
    _checks.float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x: expected 4 dimensions (N, C, H, W), got shape {x.shape}")
    if not _checks.is_array(weight):
        raise TypeError(f"weight: expected a numpy.ndarray, got {type(weight).__name__}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight: expected dtype {x.dtype} (the dtype of x), got {weight.dtype}")
    if weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected shape (O, {x.shape[1]}, KH, KW) (x has {x.shape[1]} channels), got "
                         f"{weight.shape}")
    stride, padding = _int_pair(stride, "stride", 1), _int_pair(padding, "padding", 0)
    for size, k, p, name in zip(x.shape[2:], weight.shape[2:], padding, ("height", "width"), strict=True):
        if k < 1:
            raise ValueError(f"weight: expected a kernel of at least 1 x 1, got shape {weight.shape}")
        if size + 2 * p < k:
            raise ValueError(f"x: padded {name} {size + 2 * p} is smaller than the kernel ({k})")
    out_shape = _out_shape(x, weight, stride, padding)
    if math.prod(out_shape) * x.itemsize >= _MAX_BYTES:
        raise ValueError(f"padding: the output {out_shape} would not fit in memory (padding {padding})")
    return stride, padding


def _out_shape(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
               padding: tuple[int, int]) -> tuple[int, int, int, int]:
    ho, wo = (output_size(s, k, st, p) for s, k, st, p in zip(x.shape[2:], weight.shape[2:], stride, padding,
                                                                strict=True))
    return x.shape[0], weight.shape[0], ho, wo


def _forward_cpp(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                 padding: tuple[int, int]) -> np.ndarray:
    out = np.empty(_out_shape(x, weight, stride, padding), x.dtype)  # (N, O, HO, WO)
    _backend.extension().conv2d_forward(_checks.c_contiguous(x), _checks.c_contiguous(weight), out, stride, padding)
    return out


def _backward_cpp(grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                  padding: tuple[int, int], needs_input_grad: tuple[bool, bool]
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    grad_x = np.empty(x.shape, x.dtype) if needs_input_grad[0] else None  # None: the kernel skips it
    grad_weight = np.empty(weight.shape, weight.dtype) if needs_input_grad[1] else None
    _backend.extension().conv2d_backward(_checks.c_contiguous(grad_out), _checks.c_contiguous(x),
                                         _checks.c_contiguous(weight), grad_x, grad_weight, stride, padding)
    return grad_x, grad_weight


def _launch(part: str, version: int, inputs: tuple[np.ndarray, np.ndarray], out: np.ndarray, gemm_rows: int,
            x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
            padding: tuple[int, int]) -> np.ndarray:
    """Kernel conv2d_`part`_v`version` of csrc/cuda/conv2d.cu into out; returns out. Version 2 computes out as a
    matrix product with `gemm_rows` rows (O for out and grad_weight, C for grad_x), tiled 64 x 64."""
    if out.size == 0:
        return out
    backend = _backend.get_backend()
    in0, in1 = (_cuda.to_device(backend, _checks.c_contiguous(a)) for a in inputs)
    out_dev = _cuda.to_device(backend, out)
    sizes = tuple(np.int64(v) for v in (*x_shape, w_shape[0], *w_shape[2:], *stride, *padding))
    if version == 1:
        grid, block = _cuda.launch_config_1d(out.size)
    else:
        tiles = -(-gemm_rows // 64) * -(-(out.size // gemm_rows) // 64)  # the blocks stride over the tiles
        grid, block = (min(tiles, _cuda.MAX_BLOCKS),), (16, 16)
    kernel = f"conv2d_{part}_v{version}_kernel<{_cuda.ctype(out.dtype)}>"
    _cuda.launch(backend, "conv2d.cu", kernel, grid, block, (in0, in1, out_dev, *sizes), writes=(2,))
    _cuda.to_host(out_dev, out)
    return out
