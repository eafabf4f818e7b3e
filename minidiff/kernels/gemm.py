"""GEMM, C = alpha A B + beta C: the product every convolution and linear layer reduces to.

Implementations, all computing ``out = alpha * a @ b + beta * out`` (out is not read when beta == 0):
    gemm_ref    NumPy, the reference twin (matmul, i.e. the BLAS NumPy was built with)
    version 1   csrc/cpu/gemm.cpp: the naive triple loop, one dot product per element of C
    version 2   the loops reordered i-k-j, so the inner loop runs along rows of B and C
    version 3   version 2 over cache-sized blocks, blocks of rows spread over threads
    version 4   BLIS-style: packed panels of A and B, a register-blocked micro-kernel (AVX-512, AVX2 or
                portable C++: see `micro_kernels()`), threads over slabs of C. The fast one; conv2d uses it.

On the GPU (csrc/cuda/gemm.cu; backends "cuda" and "cuda-emu") the numbered versions are the GPU's own kernel lab:
    version 1   one thread per element of C, reading A and B from global memory
    version 2   16 x 16 tiles of A and B staged in shared memory
    version 3   64 x 64 tiles of C, each thread a 4 x 4 block of it in registers
    version 4   version 3 double-buffered: the next slabs load while these are multiplied. The fast one.

``gemm(a, b)`` runs the current backend's (NumPy's matmul, C++ version 4, or CUDA version 4); ``gemm(a, b,
version=v)`` runs version v: the CUDA one on "cuda" and "cuda-emu", else the C++ one (the teaching versions, for
tests, benchmarks and the chapter 11 notebook). a and b may have any strides: transposed views and slices are read
in place, without a copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff import backend as _backend
from minidiff.kernels import _checks, _cuda

VERSIONS = (1, 2, 3, 4)
GPU_BACKENDS = ("cuda", "cuda-emu")
CUDA_TILES = {1: 16, 2: 16, 3: 64, 4: 64}  # the side of the tile of C one block of each CUDA version computes


def gemm_ref(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, alpha: float = 1.0,
             beta: float = 0.0) -> np.ndarray:
    """NumPy reference twin: alpha a @ b + beta c as a new array; c is not read when beta == 0."""
    product = a @ b  # (m, n)
    if alpha != 1.0:
        product *= alpha
    return product if beta == 0.0 else product + beta * c


# Multiply-adds from which the autodiff's matrix products run on minidiff's GEMM on the "cpp" backend: the size from
# which OpenBLAS starts its own threads. Below it NumPy's matmul is faster (no checks); above it, OpenBLAS's
# threads, which keep spinning after each call, took the second core from the C++ kernels' threads (the digits
# U-Net's forward ran slower on 2 threads than on 1).
MATMUL_MIN_FMAS = 1 << 18


def matmul(a: Any, b: Any) -> Any:
    """a @ b as NumPy's matmul computes it (batched, broadcast, 1-D operands), the autodiff's matrix product. On the
    "cpp" backend a float product of two matrices, or of a stack of row vectors (..., k) and a matrix (k, n), with at
    least MATMUL_MIN_FMAS multiply-adds runs on minidiff's GEMM (version 4), so that one thread pool does the work."""
    if (_backend.get_backend() == "cpp" and b.ndim == 2 and a.ndim >= 2 and a.dtype == b.dtype
            and a.dtype in _checks.FLOAT_DTYPES and isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            and a.shape[-1] == b.shape[0] and a.size * b.shape[1] >= MATMUL_MIN_FMAS):
        rows = a.reshape(-1, a.shape[-1])  # (..., k) -> (m, k): a view when a's rows are one after another
        return gemm(rows, b).reshape(*a.shape[:-1], b.shape[1])
    return np.matmul(a, b)


def micro_kernels() -> list[str]:
    """The micro-kernels version 4 can use in this build, best last (e.g. ["portable", "avx2", "avx512"])."""
    return [k["name"] for k in _backend.extension().gemm_micro_kernels()]


def gemm(a: Any, b: Any, out: Any = None, *, alpha: float = 1.0, beta: float = 0.0, version: int | None = None,
         micro_kernel: str | None = None) -> Any:
    """out = alpha a b + beta out; returns out (a new array when out is None).

    a (m, k), b (k, n): float32 or float64 arrays of one dtype, any strides.
    out: (m, n) of that dtype with unit column stride and rows one after another (C-contiguous, or a block of
        a C-contiguous array), sharing no memory with a or b. Required when beta != 0 (it is read).
    version: None for the current backend's GEMM, or 1-4 for that version: the CUDA one on the "cuda" and
        "cuda-emu" backends, else the C++ one (see the module docstring).
    micro_kernel: with the C++ version 4, one of micro_kernels(); None for the best.
    """
    a = _checks.float_array(a, "a")
    if a.ndim != 2:
        raise ValueError(f"a: expected 2 dimensions (m, k), got shape {a.shape}")
    b = _checks.float_array(b, "b")
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected dtype {a.dtype} (the dtype of a), got {b.dtype}")
    if b.ndim != 2 or b.shape[0] != a.shape[1]:
        raise ValueError(f"b: expected shape ({a.shape[1]}, n) (a is {a.shape}), got {b.shape}")
    alpha, beta = _checks.finite(alpha, "alpha"), _checks.finite(beta, "beta")
    shape = (a.shape[0], b.shape[1])
    if out is None:
        if beta != 0.0:
            raise ValueError(f"out: required when beta != 0 (beta = {beta} scales what out holds)")
        out = _checks.array_module(a).empty(shape, a.dtype)
    else:
        _check_out(out, shape, a, b)
    backend = _backend.get_backend()
    if version is not None and (isinstance(version, bool) or version not in VERSIONS):
        raise ValueError(f"version: expected None or one of {VERSIONS}, got {version!r}")
    if backend in GPU_BACKENDS:
        if micro_kernel is not None:
            raise ValueError(f"micro_kernel: only the C++ version 4 has micro-kernels (the backend is {backend!r})")
        return _on_gpu(backend, a, b, out, alpha, beta, version or 4)
    if version is None and micro_kernel is None:
        return _IMPLEMENTATIONS.get(backend, _numpy)(a, b, out, alpha, beta)
    version = 4 if version is None else version
    if micro_kernel is not None:
        if version != 4:
            raise ValueError(f"micro_kernel: only version 4 has micro-kernels, got version {version}")
        if micro_kernel not in micro_kernels():
            raise ValueError(f"micro_kernel: expected one of {micro_kernels()} (this build's), got {micro_kernel!r}")
    return _cpp(a, b, out, alpha, beta, version, micro_kernel or "")


def _check_out(out: Any, shape: tuple[int, int], a: Any, b: Any) -> None:
    if not _checks.is_array(out):
        raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
    xp = _checks.array_module(out)
    if _checks.array_module(a) is not xp or _checks.array_module(b) is not xp:
        raise TypeError("out: expected an array of the kind of a and b (NumPy or CuPy, all three alike)")
    if out.dtype != a.dtype:
        raise TypeError(f"out: expected dtype {a.dtype} (the dtype of a), got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    m, n = shape
    size = out.itemsize
    rows_ok = out.size == 0 or ((n <= 1 or out.strides[1] == size) and (m <= 1 or out.strides[0] >= n * size))
    if not rows_ok:
        raise ValueError(f"out: expected unit column stride and rows one after another (a C-contiguous array or a "
                         f"block of one), got strides {out.strides}")
    for name, x in (("a", a), ("b", b)):
        if xp.may_share_memory(out, x):
            raise ValueError(f"out: shares memory with {name}; pass a separate array")


def _numpy(a: np.ndarray, b: np.ndarray, out: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    out[...] = gemm_ref(a, b, out, alpha, beta)
    return out


def _whole_elements(x: np.ndarray) -> np.ndarray:
    """x itself when its strides are whole elements (the C++ side indexes in elements), else a copy."""
    return x if all(s % x.itemsize == 0 for s in x.strides) else x.copy()


def _cpp(a: np.ndarray, b: np.ndarray, out: np.ndarray, alpha: float, beta: float, version: int = 4,
         micro_kernel: str = "") -> np.ndarray:
    _backend.extension().gemm(_whole_elements(a), _whole_elements(b), out, alpha, beta, version, micro_kernel)
    return out


def _element_strides(x: Any) -> tuple[np.int64, np.int64]:
    return np.int64(x.strides[0] // x.itemsize), np.int64(x.strides[1] // x.itemsize)


def _on_gpu(backend: str, a: Any, b: Any, out: Any, alpha: float, beta: float, version: int) -> Any:
    """CUDA version `version` of csrc/cuda/gemm.cu, on the GPU or under the emulator; a, b, out as gemm() takes them."""
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0:
        return out
    a_dev, b_dev, out_dev = (_cuda.to_device(backend, x) for x in (_whole_elements(a), _whole_elements(b), out))
    scalar = a.dtype.type
    args = (np.int64(m), np.int64(n), np.int64(k), scalar(alpha), a_dev, *_element_strides(a_dev), b_dev,
            *_element_strides(b_dev), scalar(beta), out_dev, _element_strides(out_dev)[0])
    tile = CUDA_TILES[version]
    tiles = -(-m // tile) * -(-n // tile)  # the blocks stride over the tiles of C: any grid covers them
    kernel = f"gemm_v{version}_kernel<{_cuda.ctype(a.dtype)}>"
    _cuda.launch(backend, "gemm.cu", kernel, (min(tiles, _cuda.MAX_BLOCKS),), (16, 16), args, writes=(11,))  # out
    _cuda.to_host(out_dev, out)
    return out


_IMPLEMENTATIONS = {"numpy": _numpy, "cpp": _cpp}
