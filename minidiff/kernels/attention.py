"""Scaled dot-product attention [E45]: softmax(Q K^T * scale + mask) V, over the last two axes.

Two ways to the same numbers:
- the NumPy twins keep the attention probabilities P (..., Lq, Lk) for the backward;
- the C++ kernel of the "cpp" backend (csrc/cpu/attention.cpp) works flash-attention style (Dao et al. 2022): it
  walks tiles of queries and keys with an online softmax (Milakov and Gimelshein 2018), never holds an Lq x Lk
  matrix, and keeps of each row of scores s_i only its log-sum-exp lse_i = log sum_j exp(s_ij), from which its
  backward recomputes P = exp(S - lse) tile by tile;
- the CUDA kernels of "cuda" and "cuda-emu" (csrc/cuda/attention.cu) do the same with the same online softmax, in
  numbered versions (`version=`):
      version 1   one warp per row: its lanes over 32 keys at a time, the row's max and sum by warp shuffles; the
                  backward in two passes, query-major (dQ) and key-major (dK, dV), so that no atomics are needed.
      version 2   the flash style: a block per tile of 4 rows (a warp each), every 32 of the other side's rows
                  staged in shared memory once for the tile: in the forward and the query-major pass a tile of
                  query rows and blocks of keys and values, in the key-major pass a tile of key rows and blocks of
                  queries and their rows of dO. The default where 32 (D + Dv) numbers fit in 48 KiB of shared
                  memory, else version 1 (forward and backward alike).
`attention_forward` returns an AttentionForward with what its backward needs: probs or lse, never both.

A boolean mask marks the (query, key) pairs that may attend (True = keep), as PyTorch's boolean attn_mask. A
query with no key left gets NaN (0 / 0: the twin's exp(-inf + inf)); PyTorch 2.13's scaled_dot_product_attention
returns zeros there. With no keys at all (Lk = 0) the output is 0, a sum over nothing, as in PyTorch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidiff import backend as _backend
from minidiff.kernels import _checks, _cuda
from minidiff.kernels._dispatch import implementation
from minidiff.kernels.softmax import softmax_ref


def attention_forward_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                          scale: float) -> tuple[np.ndarray, np.ndarray]:
    """q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), mask (..., Lq, Lk) bool or None
    -> (out (..., Lq, Dv), probs (..., Lq, Lk))."""
    scores = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., Lq, Lk)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    with np.errstate(invalid="ignore"):
        probs = softmax_ref(scores)
    return probs @ v, probs


def attention_backward_ref(grad_out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray,
                           scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """grad_out (..., Lq, Dv) -> (grad_q, grad_k, grad_v), through out = P V, P = softmax(S), S = Q K^T scale."""
    grad_v = np.swapaxes(probs, -1, -2) @ grad_out  # (..., Lk, Dv)
    grad_probs = grad_out @ np.swapaxes(v, -1, -2)  # (..., Lq, Lk)
    grad_scores = probs * (grad_probs - np.sum(grad_probs * probs, axis=-1, keepdims=True))
    grad_q = (grad_scores @ k) * scale  # (..., Lq, D)
    grad_k = (np.swapaxes(grad_scores, -1, -2) @ q) * scale  # (..., Lk, D)
    return grad_q, grad_k, grad_v


class AttentionForward(NamedTuple):
    """The forward's output and what its backward needs."""

    out: np.ndarray  # (..., Lq, Dv)
    probs: np.ndarray | None  # (..., Lq, Lk): kept by the NumPy twin
    lse: np.ndarray | None  # (..., Lq): kept by the C++ kernel instead


CUDA_VERSIONS = (1, 2)
_TILE_ROWS = 4  # kTileRows of csrc/cuda/attention.cu: version 2's query rows per block
_MAX_SHARED_BYTES = 48 * 1024  # a GPU's dynamic shared memory per block without an opt-in


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float, *,
                      version: int | None = None) -> AttentionForward:
    """q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), mask broadcastable to (..., Lq, Lk) bool or None, on the
    current backend; leading axes broadcast. version: on "cuda" and "cuda-emu", None (the newest) or one of
    CUDA_VERSIONS; elsewhere None."""
    _check_attention(q, k, v, mask, scale)
    version = _pick_version(version, q, v)
    if version is not None:
        return _forward_cuda(q, k, v, mask, float(scale), version)
    return implementation({"numpy": _forward_numpy, "cpp": _forward_cpp})(q, k, v, mask, float(scale))


def attention_backward(grad_out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                       forward: AttentionForward, scale: float, *,
                       version: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grad_q, grad_k, grad_v), each of the broadcast batch shape, from what the forward kept (whatever the backend
    is now): the NumPy twin from its probs; from an lse (the C++ and CUDA kernels keep the same one), the CUDA
    kernel on "cuda" and "cuda-emu" (`version` as for attention_forward, whichever version ran the forward: each
    keeps the same lse), else the C++ kernel."""
    _check_attention(q, k, v, mask, scale)
    _checks.like(grad_out, "grad_out", forward.out, "the forward's out")
    if forward.lse is not None and (forward.lse.shape != forward.out.shape[:-1] or forward.lse.dtype != q.dtype):
        raise ValueError(f"forward: expected lse of shape {forward.out.shape[:-1]} and dtype {q.dtype} (out's rows), "
                         f"got {forward.lse.shape} {forward.lse.dtype}")
    version = _pick_version(version, q, v)
    if forward.lse is None:
        return attention_backward_ref(grad_out, q, k, v, forward.probs, float(scale))
    if version is not None:
        return _backward_cuda(grad_out, q, k, v, mask, forward, float(scale), version)
    return _backward_cpp(grad_out, q, k, v, mask, forward, float(scale))


def _pick_version(version: int | None, q: np.ndarray, v: np.ndarray) -> int | None:
    """The CUDA version to run (None off "cuda" and "cuda-emu"): the newest whose shared memory fits, or the one
    asked for, which must fit."""
    asked, version = version, _cuda.pick_version(version, CUDA_VERSIONS)
    if version == 2 and _staged_bytes(q, v) > _MAX_SHARED_BYTES:
        if asked is not None:
            raise ValueError(f"version: 2 stages blocks of 32 rows of D + Dv = {q.shape[-1] + v.shape[-1]} numbers "
                             f"in {_MAX_SHARED_BYTES} bytes of shared memory, which they overflow; use version 1")
        version = 1
    return version


def _check_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float) -> None:
    """The checks every backend relies on (as functional.scaled_dot_product_attention's, on arrays)."""
    _checks.float_array(q, "q")
    for a, name in ((k, "k"), (v, "v")):
        if not _checks.is_array(a):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (the dtype of q), got {a.dtype}")
    for a, name in ((q, "q"), (k, "k"), (v, "v")):
        if a.ndim < 2:
            raise ValueError(f"{name}: expected (..., L, d), got shape {a.shape}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected feature size {q.shape[-1]} (q's), got shape {k.shape}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v: expected {k.shape[-2]} keys (k's), got shape {v.shape}")
    try:
        np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"k, v: batch shapes of q {q.shape}, k {k.shape}, v {v.shape} do not broadcast") from None
    if mask is not None:
        if not _checks.is_array(mask) or mask.dtype != bool:
            raise TypeError(f"mask: expected a boolean array (True = attend) or None, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        scores_shape = np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2])
        try:
            np.broadcast_shapes(mask.shape, scores_shape, v.shape[:-2] + (1, 1))
        except ValueError:
            raise ValueError(f"mask: shape {mask.shape} does not broadcast to the scores' {scores_shape}") from None
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.integer | np.floating):
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")


def _forward_numpy(q, k, v, mask, scale) -> AttentionForward:
    out, probs = attention_forward_ref(q, k, v, mask, scale)
    return AttentionForward(out, probs, None)


# --- the C++ kernel: (B, L, d) arrays -------------------------------------------------------------------------------


class _Batched(NamedTuple):
    """The kernel's view of a call: q, k, v broadcast to the common batch shape and flattened to (B, L, d),
    C-contiguous; the mask as (M, Lq, Lk) matrices and each batch element's matrix index (B,), or None, None."""

    batch: tuple[int, ...]
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    mask_index: np.ndarray | None

    @staticmethod
    def of(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> _Batched:
        lq, lk = q.shape[-2], k.shape[-2]
        mask_batch = () if mask is None else mask.shape[:-2]
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], mask_batch)
        flat = [_flatten(a, batch) for a in (q, k, v)]
        if mask is None:
            return _Batched(batch, *flat, None, None)
        count = math.prod(mask_batch)
        xp = _checks.array_module(mask)
        matrices = xp.ascontiguousarray(xp.broadcast_to(mask, mask_batch + (lq, lk))).reshape(count, lq, lk)
        index = np.arange(count, dtype=np.int64).reshape(mask_batch)  # the matrix of each batch element
        return _Batched(batch, *flat, matrices, np.broadcast_to(index, batch).flatten())


def _flatten(a: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """a (..., L, d) broadcast to batch + (L, d), as a C-contiguous (B, L, d) array (a copy only if needed)."""
    full = _checks.array_module(a).broadcast_to(a, batch + a.shape[-2:])
    return _checks.c_contiguous(full).reshape(math.prod(batch), *a.shape[-2:])


def _forward_cpp(q, k, v, mask, scale) -> AttentionForward:
    b = _Batched.of(q, k, v, mask)
    out = np.empty((b.q.shape[0], q.shape[-2], v.shape[-1]), q.dtype)  # (B, Lq, Dv)
    lse = np.empty(out.shape[:2], q.dtype)  # (B, Lq)
    _backend.extension().attention_forward(b.q, b.k, b.v, b.mask, b.mask_index, scale, out, lse)
    return AttentionForward(out.reshape(b.batch + out.shape[1:]), None, lse.reshape(b.batch + lse.shape[1:]))


def _backward_cpp(grad_out, q, k, v, mask, forward: AttentionForward, scale):
    b = _Batched.of(q, k, v, mask)
    grads = [np.empty_like(a) for a in (b.q, b.k, b.v)]
    _backend.extension().attention_backward(_flatten(grad_out, b.batch), b.q, b.k, b.v, b.mask, b.mask_index,
                                            _flatten(forward.out, b.batch),
                                            _checks.c_contiguous(forward.lse).reshape(b.q.shape[:2]), scale, *grads)
    return tuple(g.reshape(b.batch + g.shape[1:]) for g in grads)


# --- the CUDA kernels: the same (B, L, d) arrays ---------------------------------------------------------------------

_WARPS_PER_BLOCK = 4


def _warp_per_row_launch(rows: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for kernels that give each of `rows` rows a warp."""
    return (min(_cuda.MAX_BLOCKS, max(1, -(-rows // _WARPS_PER_BLOCK))),), (32 * _WARPS_PER_BLOCK,)


def _staged_bytes(q: np.ndarray, v: np.ndarray) -> int:
    """Version 2's dynamic shared memory: 32 rows of D numbers (keys or queries) and of Dv (values or dO)."""
    return 32 * (q.shape[-1] + v.shape[-1]) * q.itemsize


def _launch(version: int, batch: int, rows: int, q: np.ndarray, v: np.ndarray) -> dict:
    """grid, block and shared_mem of a version's kernel that owns `rows` rows of each of `batch` elements: a warp
    per row; in version 2 a block per tile of _TILE_ROWS rows, with its staged blocks in shared memory."""
    if version == 1:
        grid, block = _warp_per_row_launch(batch * rows)
        return {"grid": grid, "block": block}
    tiles = batch * -(-rows // _TILE_ROWS)
    return {"grid": (min(tiles, _cuda.MAX_BLOCKS),), "block": (32 * _TILE_ROWS,), "shared_mem": _staged_bytes(q, v)}


def _cuda_inputs(backend: str, b: _Batched, scale: float) -> tuple:
    """The arguments MD_ATTENTION_INPUTS of csrc/cuda/attention.cu stands for, on the device; without a mask, q
    stands in for the arrays the kernels then never read."""
    q, k, v = (_cuda.to_device(backend, a) for a in (b.q, b.k, b.v))
    if b.mask is None:
        mask, index = q, q
    else:
        mask, index = _cuda.to_device(backend, b.mask.view(np.uint8)), _cuda.to_device(backend, b.mask_index)
    return q, k, v, mask, index, np.int32(b.mask is not None), b.q.dtype.type(scale)


def _sizes(b: _Batched) -> tuple[np.int64, ...]:
    (batch, lq, d), (lk, dv) = b.q.shape, b.v.shape[1:]
    return tuple(np.int64(n) for n in (batch, lq, lk, d, dv))


def _forward_cuda(q, k, v, mask, scale, version) -> AttentionForward:
    backend, xp = _backend.get_backend(), _checks.array_module(q)
    b = _Batched.of(q, k, v, mask)
    out = xp.empty((b.q.shape[0], q.shape[-2], v.shape[-1]), q.dtype)  # (B, Lq, Dv)
    lse = xp.empty(out.shape[:2], q.dtype)  # (B, Lq)
    if lse.size:
        out_dev, lse_dev = _cuda.to_device(backend, out), _cuda.to_device(backend, lse)
        _cuda.launch(backend, "attention.cu", f"attention_forward_v{version}_kernel<{_cuda.ctype(q.dtype)}>",
                     args=(*_cuda_inputs(backend, b, scale), out_dev, lse_dev, *_sizes(b)), writes=(7, 8),
                     **_launch(version, *lse.shape, q, v))
        _cuda.to_host(out_dev, out)
        _cuda.to_host(lse_dev, lse)
    return AttentionForward(out.reshape(b.batch + out.shape[1:]), None, lse.reshape(b.batch + lse.shape[1:]))


def _backward_cuda(grad_out, q, k, v, mask, forward: AttentionForward, scale, version):
    """D = rowsum(dO * O) first (attention_delta_kernel), then the query-major pass (dQ) and the key-major one
    (dK, dV) of `version`."""
    backend, xp = _backend.get_backend(), _checks.array_module(q)
    b = _Batched.of(q, k, v, mask)
    grads = [xp.empty(a.shape, a.dtype) for a in (b.q, b.k, b.v)]  # (B, Lq, D), (B, Lk, D), (B, Lk, Dv)
    grads_dev = [_cuda.to_device(backend, g) for g in grads]
    inputs, sizes, t = _cuda_inputs(backend, b, scale), _sizes(b), _cuda.ctype(q.dtype)
    rows, dv = b.q.shape[0] * b.q.shape[1], b.v.shape[2]
    grad_out, out = (_cuda.to_device(backend, _flatten(a, b.batch)) for a in (grad_out, forward.out))
    lse = _cuda.to_device(backend, _checks.c_contiguous(forward.lse).reshape(b.q.shape[:2]))
    delta = _cuda.to_device(backend, xp.empty(b.q.shape[:2], q.dtype))  # (B, Lq)
    if rows:
        _cuda.launch(backend, "attention.cu", f"attention_delta_kernel<{t}>", *_warp_per_row_launch(rows),
                     (grad_out.reshape(rows, dv), out.reshape(rows, dv), delta.reshape(rows), np.int64(rows),
                      np.int64(dv)), writes=(2,))
        _cuda.launch(backend, "attention.cu", f"attention_grad_q_v{version}_kernel<{t}>",
                     args=(*inputs, grad_out, lse, delta, grads_dev[0], *sizes), writes=(10,),
                     **_launch(version, *b.q.shape[:2], q, v))
    if b.k.shape[0] * b.k.shape[1]:
        _cuda.launch(backend, "attention.cu", f"attention_grad_kv_v{version}_kernel<{t}>",
                     args=(*inputs, grad_out, lse, delta, grads_dev[1], grads_dev[2], *sizes), writes=(10, 11),
                     **_launch(version, *b.k.shape[:2], q, v))
    for g, g_dev in zip(grads, grads_dev, strict=True):
        _cuda.to_host(g_dev, g)
    return tuple(g.reshape(b.batch + g.shape[1:]) for g in grads)
