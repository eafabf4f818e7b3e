"""Scaled dot-product attention [E45]: softmax(Q K^T * scale + mask) V, over the last two axes.

NumPy twins of the forward (which also returns the attention probabilities, for the backward) and the
backward. A boolean mask marks the (query, key) pairs that may attend (True = keep), as PyTorch's
boolean attn_mask; a query with no key left gets NaN, as in PyTorch.
"""

from __future__ import annotations

import numpy as np

from minidiff.kernels._dispatch import implementation


def softmax_ref(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(s - max s) / sum exp(s - max s): the shift changes nothing mathematically and avoids overflow."""
    shifted = scores - np.max(scores, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


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


def attention_forward(q, k, v, mask, scale):
    return implementation({"numpy": attention_forward_ref})(q, k, v, mask, scale)


def attention_backward(grad_out, q, k, v, probs, scale):
    return implementation({"numpy": attention_backward_ref})(grad_out, q, k, v, probs, scale)
