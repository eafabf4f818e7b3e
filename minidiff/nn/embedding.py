"""Embeddings of the conditioning signals: the sinusoidal timestep embedding [E43] and its MLP, and a
lookup table for class labels, with diffusers' parameter names (`time_embedding.linear_1`, ...).

The timestep is embedded as the number it is given: minidiff's samplers and trainer pass minidiff's
t = 1..T. diffusers' models were trained on k = t - 1, so a model imported from diffusers must be called
with t - 1 (an importer shifts by one; the network itself never does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor
from minidiff.backend import array_module, to_host
from minidiff.exercise_tools import exercise
from minidiff.nn.layers import Linear, SiLU, _float_dtype, _generator, _positive_int
from minidiff.nn.module import Module, Parameter


@exercise("ex07.1")
def timestep_embedding(t: Any, dim: int, *, flip_sin_to_cos: bool = False, freq_shift: float = 1,
                       max_period: float = 10000) -> np.ndarray:
    """[E43] emb(t) = [sin(t w_0), ..., sin(t w_{h-1}), cos(t w_0), ..., cos(t w_{h-1})],
    w_i = exp(-ln(max_period) i / (h - freq_shift)), h = dim // 2 (diffusers' get_timestep_embedding).

    t: timesteps (B,), ints or floats (fractional t is fine). flip_sin_to_cos: [cos, sin] instead of
    [sin, cos]. freq_shift 1 (DDPM's choice) makes the lowest frequency 1 / max_period; 0 stops one step short.
    An odd dim gets a zero column at the end. Returns (B, dim) float64 (the caller rounds to its dtype).
    """
    t = np.asarray(t)
    if t.ndim != 1 or t.dtype.kind not in "iuf":
        raise ValueError(f"t: expected a 1-D array of int or float timesteps (B,), got shape {t.shape} "
                         f"dtype {t.dtype}")
    dim = _positive_int(dim, "dim")
    half = dim // 2
    if half - freq_shift == 0:
        raise ValueError(f"freq_shift: must differ from dim // 2 = {half} (it divides by their difference)")
    # Frequencies w_i for i = 0..h-1, angles t w_i (B, h) in float64, sines and cosines side by side
    # (cosines first when flip_sin_to_cos), a zero column when dim is odd; name the result emb.
    # BEGIN SOLUTION ex07.1: frequencies (h,), angles (B, h), [sin, cos] (or flipped), emb (B, dim)
    freqs = np.exp(-math.log(max_period) * np.arange(half) / (half - freq_shift))  # (h,)
    angles = t.astype(np.float64)[:, None] * freqs[None, :]  # (B, h)
    parts = [np.cos(angles), np.sin(angles)] if flip_sin_to_cos else [np.sin(angles), np.cos(angles)]
    if dim % 2:
        parts.append(np.zeros((len(t), 1)))
    emb = np.concatenate(parts, axis=1)  # (B, dim)
    # END SOLUTION
    return emb


def batch_timesteps(t: Any, batch: int) -> np.ndarray:
    """t as a (B,) array: a number is broadcast over the batch (as diffusers does)."""
    t = to_host(t.data if isinstance(t, Tensor) else t)  # a few numbers: embedded on the host
    if t.ndim == 0:
        t = np.full(batch, t)
    if t.shape != (batch,) or t.dtype.kind not in "iuf":
        raise ValueError(f"t: expected a number or {batch} int or float timesteps (B,), got shape {t.shape} "
                         f"dtype {t.dtype}")
    return t


class SinusoidalTimestepEmbedding(Module):
    """[E43] t (B,) -> emb(t) (B, dim) as a constant Tensor of `dtype` (no parameters; diffusers' Timesteps)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1, max_period: float = 10000,
                 *, dtype: Any = np.float32) -> None:
        super().__init__()
        self.dim = _positive_int(dim, "dim")
        self.flip_sin_to_cos, self.freq_shift, self.max_period = bool(flip_sin_to_cos), freq_shift, max_period
        self.dtype = _float_dtype(dtype)

    def forward(self, t: Any, like: Tensor | None = None) -> Tensor:
        """like: the sample; the embedding is moved to its device (GPU or host), as diffusers moves timesteps."""
        emb = timestep_embedding(t, self.dim, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
                                 max_period=self.max_period)
        emb = emb.astype(self.dtype)  # (B, dim)
        return Tensor(emb if like is None else array_module(like.data).asarray(emb))

    def extra_repr(self) -> str:
        return f"{self.dim}, flip_sin_to_cos={self.flip_sin_to_cos}, freq_shift={self.freq_shift}"


class TimestepEmbedding(Module):
    """[E43] the embedding's MLP: linear_1 (in_dim -> time_embed_dim), SiLU, linear_2 (time_embed_dim ->
    out_dim, default time_embed_dim), as diffusers' TimestepEmbedding."""

    def __init__(self, in_dim: int, time_embed_dim: int, out_dim: int | None = None, *,
                 rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        rng = _generator(rng)
        self.linear_1 = Linear(in_dim, time_embed_dim, rng=rng, dtype=dtype)
        self.act = SiLU()
        self.linear_2 = Linear(time_embed_dim, out_dim or time_embed_dim, rng=rng, dtype=dtype)

    def forward(self, emb: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(emb)))  # (B, out_dim)


class Embedding(Module):
    """A lookup table: indices (...) -> weight[indices] (..., dim); weight (num_embeddings, dim) ~ N(0, 1),
    PyTorch's nn.Embedding initialization (drawn in float64, rounded to dtype)."""

    def __init__(self, num_embeddings: int, dim: int, *, rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings")
        self.dim = _positive_int(dim, "dim")
        weight = _generator(rng).standard_normal((self.num_embeddings, self.dim))
        self.weight = Parameter(weight.astype(_float_dtype(dtype)))  # (num_embeddings, dim)

    def forward(self, indices: Any) -> Tensor:
        return F.embedding(indices, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"
