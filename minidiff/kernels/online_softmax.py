"""The online softmax (Milakov & Gimelshein 2018) and attention computed with it, block by block, as FlashAttention
does (Dao et al. 2022; Dao 2023): the readable NumPy twin of the flash-style C++ kernel.

A row of scores s_1..s_L read in blocks keeps two numbers of state:

    m = max_j s_j                  the running max of the scores seen so far
    l = sum_j exp(s_j - m)         the running sum, relative to that max

A new block raises the max to m' = max(m, max_block s). Every term of l was taken relative to m, and
exp(s - m') = exp(s - m) exp(m - m'), so one factor moves them all onto m' exactly:

    l' = l exp(m - m') + sum_{j in block} exp(s_j - m')

Every exponent is <= 0, so nothing overflows, and at the end log sum_j exp(s_j) = m + log l (the log-sum-exp, lse)
and softmax_j = exp(s_j - lse). Attention keeps one more accumulator per row, a = sum_j exp(s_j - m) v_j, rescaled
by the same factor; the output is a / l. Only Lq x block scores exist at any time, never the Lq x Lk matrix, and of
the probabilities the backward needs only the lse (P = exp(S - lse), recomputed tile by tile).

Masked scores are -inf. While a row has seen nothing but -inf, m = -inf and exp(s - m) would be exp(-inf + inf) =
NaN; the terms are then taken relative to 0 instead (each exp(-inf - 0) = 0). A row with no finite score ends with
l = 0: its output is 0 / 0 = NaN and its lse -inf, as the NumPy twin (attention.py) gives.
"""

from __future__ import annotations

import numpy as np

from minidiff.exercise_tools import exercise


def exp_origin(m: np.ndarray) -> np.ndarray:
    """The point the terms exp(s - origin) are taken relative to: the running max, or 0 where it is still -inf."""
    return np.where(np.isneginf(m), 0.0, m).astype(m.dtype)


@exercise("ex11.2")
def online_softmax_update(m: np.ndarray, l: np.ndarray,
                          scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read one block of scores (..., B) into the running state (m, l) of each row (...,).

    Returns (m_new, l_new, rescale, weights):
        m_new = max(m, max_j s_j)                              (...,)
        rescale = exp(m - m_new), the factor that moves sums relative to m onto m_new     (...,)
        weights = exp(s - m_new)                               (..., B)
        l_new = l * rescale + sum_j weights_j                  (...,)
    with m_new replaced by 0 inside the exponentials while it is -inf (a row that has seen only -inf).
    """
    # BEGIN SOLUTION ex11.2: the new max; exponentials relative to exp_origin(m_new); the old sum times exp(m - m_new)
    m_new = np.maximum(m, np.max(scores, axis=-1))  # (...,)
    origin = exp_origin(m_new)  # (...,)
    rescale = np.exp(m - origin)  # (...,) exp(-inf) = 0 for a row that had seen nothing finite
    weights = np.exp(scores - origin[..., None])  # (..., B)
    l_new = l * rescale + np.sum(weights, axis=-1)  # (...,)
    # END SOLUTION
    return m_new, l_new, rescale, weights


def _start(lead: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The state before any score: m = -inf, l = 0."""
    return np.full(lead, -np.inf, dtype), np.zeros(lead, dtype)


def _block_starts(length: int, block_size: int) -> range:
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, got {block_size!r}")
    return range(0, length, int(block_size))


def logsumexp_online(scores: np.ndarray, block_size: int) -> np.ndarray:
    """log sum_j exp(s_j) over the last axis of scores (..., L), reading block_size scores at a time: (...,).
    -inf for a row of -inf only (or L = 0)."""
    m, l = _start(scores.shape[:-1], scores.dtype)
    for start in _block_starts(scores.shape[-1], block_size):
        m, l, _, _ = online_softmax_update(m, l, scores[..., start : start + block_size])
    with np.errstate(divide="ignore"):
        return exp_origin(m) + np.log(l)


def softmax_online(scores: np.ndarray, block_size: int) -> np.ndarray:
    """softmax over the last axis of scores (..., L): one pass for the lse (logsumexp_online), a second for
    exp(s - lse). A row of -inf only gives NaN (exp(-inf + inf)), as softmax_ref."""
    lse = logsumexp_online(scores, block_size)  # (...,)
    with np.errstate(invalid="ignore"):
        return np.exp(scores - lse[..., None])


def attention_forward_tiled(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float,
                            block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """[E45] softmax(Q K^T scale + mask) V with the online softmax over blocks of block_size keys.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), mask broadcastable to (..., Lq, Lk) bool (True = attend) or
    None; leading axes broadcast. Returns (out (..., Lq, Dv), lse (..., Lq)) with lse = log sum_j exp(s_j), what
    FlashAttention keeps for the backward. Queries with no key to attend get NaN and lse = -inf.
    """
    lq, lk, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], () if mask is None else mask.shape[:-2])
    if mask is not None:
        mask = np.broadcast_to(mask, lead + (lq, lk))  # (..., Lq, Lk), a view
    m, l = _start(lead + (lq,), q.dtype)  # (..., Lq)
    acc = np.zeros(lead + (lq, dv), q.dtype)  # (..., Lq, Dv): sum_j exp(s_j - m) v_j
    for start in _block_starts(lk, block_size):
        stop = start + block_size
        s = (q @ np.swapaxes(k[..., start:stop, :], -1, -2)) * float(scale)  # (..., Lq, B): one tile of the scores
        if mask is not None:
            s = np.where(mask[..., start:stop], s, -np.inf)
        m, l, rescale, weights = online_softmax_update(m, l, s)
        acc = acc * rescale[..., None] + weights @ v[..., start:stop, :]  # (..., Lq, Dv)
    if lk == 0:  # a sum over no keys is 0, as in the twin (and PyTorch)
        return acc, np.full(lead + (lq,), -np.inf, q.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / l[..., None], exp_origin(m) + np.log(l)
