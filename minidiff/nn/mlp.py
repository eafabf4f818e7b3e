"""MLPDenoiser: the network for 2-D (or any flat) data, x (B, dim) and t (B,) -> (B, dim).

    emb = time_embedding(sinusoidal(t))  [+ class_embedding(labels)]          (B, hidden)   [E43]
    h = input_proj(x) + emb                                                     (B, hidden)
    h = h + blocks[i](SiLU(h + emb))     for i < layers (residual, the embedding re-enters every block)
    out = output_proj(SiLU(h))                                                   (B, dim)

What the output means (eps, x0, v or a flow velocity) is the objective's choice, not the network's.
t is embedded as given (minidiff's t = 1..T, or a flow time in [0, 1] scaled by the caller).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor
from minidiff.nn.embedding import Embedding, SinusoidalTimestepEmbedding, TimestepEmbedding, batch_timesteps
from minidiff.nn.layers import Linear, ModuleList, _float_dtype, _generator, _positive_int
from minidiff.nn.module import Module


class MLPDenoiser(Module):
    """x (B, dim), t (B,) or a number, class_labels (B,) ints when num_classes is set -> (B, dim).

    hidden: the width; layers: residual blocks; time_embed_dim: the sinusoidal embedding's width (default
    hidden). num_classes: class conditioning (a table of num_classes rows added to the embedding; for
    classifier-free guidance count the null label among them, e.g. its last index).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_embed_dim: int | None = None,
                 num_classes: int | None = None, *, rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        self.dim, hidden, layers = _positive_int(dim, "dim"), _positive_int(hidden, "hidden"), \
            _positive_int(layers, "layers")
        time_embed_dim = hidden if time_embed_dim is None else _positive_int(time_embed_dim, "time_embed_dim")
        self.config = dict(dim=dim, hidden=hidden, layers=layers, time_embed_dim=time_embed_dim,
                           num_classes=num_classes)
        rng, dtype = _generator(rng), _float_dtype(dtype)
        self.time_proj = SinusoidalTimestepEmbedding(time_embed_dim, flip_sin_to_cos=True, freq_shift=0, dtype=dtype)
        self.time_embedding = TimestepEmbedding(time_embed_dim, hidden, rng=rng, dtype=dtype)
        self.class_embedding = None if num_classes is None else \
            Embedding(_positive_int(num_classes, "num_classes"), hidden, rng=rng, dtype=dtype)
        self.input_proj = Linear(self.dim, hidden, rng=rng, dtype=dtype)
        self.blocks = ModuleList(Linear(hidden, hidden, rng=rng, dtype=dtype) for _ in range(layers))
        self.output_proj = Linear(hidden, self.dim, rng=rng, dtype=dtype)

    def forward(self, x: Tensor, t: Any, class_labels: Any = None) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = x.shape if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a Tensor (B, {self.dim}), got {shape}")
        emb = self.time_embedding(self.time_proj(batch_timesteps(t, x.shape[0]), like=x))  # (B, hidden)
        if (self.class_embedding is None) != (class_labels is None):
            raise ValueError("class_labels: expected labels exactly when num_classes is set "
                             f"(num_classes = {self.config['num_classes']})")
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels)
        h = self.input_proj(x) + emb  # (B, hidden)
        for block in self.blocks:
            h = h + block(F.silu(h + emb))
        return self.output_proj(F.silu(h))  # (B, dim)
