"""Scaled dot-product attention [E45]: softmax(Q K^T * scale + mask) V, over the last two axes.

Two ways to the same numbers:
- the NumPy twins keep the attention probabilities P (..., Lq, Lk) for the backward;
- the C++ kernel of the "cpp" backend (csrc/cpu/attention.cpp) works flash-attention style (Dao et al. 2022): it
  walks tiles of queries and keys with an online softmax (Milakov and Gimelshein 2018), never holds an Lq x Lk
  matrix, and keeps of each row of scores s_i only its log-sum-exp lse_i = log sum_j exp(s_ij), from which its
  backward recomputes P = exp(S - lse) tile by tile.
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
from minidiff.kernels import _checks
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


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                      scale: float) -> AttentionForward:
    """q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), mask broadcastable to (..., Lq, Lk) bool or None, on the
    current backend; leading axes broadcast."""
    _check_attention(q, k, v, mask, scale)
    return implementation({"numpy": _forward_numpy, "cpp": _forward_cpp})(q, k, v, mask, float(scale))


def attention_backward(grad_out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                       forward: AttentionForward, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grad_q, grad_k, grad_v), each of the broadcast batch shape, by the kernel that ran the forward (whatever
    the backend is now): the NumPy twin from its probs, the C++ kernel from its lse."""
    _check_attention(q, k, v, mask, scale)
    _checks.like(grad_out, "grad_out", forward.out, "the forward's out")
    if forward.lse is not None and (forward.lse.shape != forward.out.shape[:-1] or forward.lse.dtype != q.dtype):
        raise ValueError(f"forward: expected lse of shape {forward.out.shape[:-1]} and dtype {q.dtype} (out's rows), "
                         f"got {forward.lse.shape} {forward.lse.dtype}")
    if forward.lse is None:
        return attention_backward_ref(grad_out, q, k, v, forward.probs, float(scale))
    return _backward_cpp(grad_out, q, k, v, mask, forward, float(scale))


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
        matrices = np.ascontiguousarray(np.broadcast_to(mask, mask_batch + (lq, lk))).reshape(count, lq, lk)
        index = np.arange(count, dtype=np.int64).reshape(mask_batch)  # the matrix of each batch element
        return _Batched(batch, *flat, matrices, np.broadcast_to(index, batch).flatten())


def _flatten(a: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """a (..., L, d) broadcast to batch + (L, d), as a C-contiguous (B, L, d) array (a copy only if needed)."""
    full = np.broadcast_to(a, batch + a.shape[-2:])
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
