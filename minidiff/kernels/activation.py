"""Activations that kernels fuse into their epilogue (group norm's SiLU), as NumPy twins: the forward and the
gradient through it, from the pre-activation z.

    sigmoid(z) = 1 / (1 + e^-z),   silu(z) = z sigmoid(z),   silu'(z) = s (1 + z (1 - s)),  s = sigmoid(z)
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = (None, "silu")  # None: the identity


def stable_sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow. With e = e^-|x| in (0, 1] and r = 1 / (1 + e) = sigmoid(|x|):
    sigmoid(x) = r for x >= 0 and e r (= 1 - r) for x < 0, i.e. r * max(e, [x >= 0])."""
    e = np.exp(-np.abs(x))  # never overflows
    r = 1 / (1 + e)
    return r * np.maximum(e, x >= 0)


def activation_ref(z: np.ndarray, activation: str | None) -> np.ndarray:
    """act(z): z itself (None) or silu(z)."""
    return z if activation is None else z * stable_sigmoid(z)


def activation_backward_ref(grad: np.ndarray, z: np.ndarray, activation: str | None) -> np.ndarray:
    """The gradient of z from the gradient of act(z)."""
    if activation is None:
        return grad
    s = stable_sigmoid(z)
    return grad * s * (1 + z * (1 - s))
