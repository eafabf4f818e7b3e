"""Small minidiff models shared by the nn, checkpoint and training tests; their PyTorch twins, with the
same parameter names and shapes, are in reference/torch_models.py."""

from __future__ import annotations

import numpy as np

import minidiff.functional as F
from minidiff import nn
from minidiff.autodiff import Tensor


def mlp(rng: np.random.Generator, dtype=np.float64, sizes=(2, 32, 32, 2)) -> nn.Sequential:
    """Linear, SiLU, Linear, LayerNorm, GELU, Linear: (N, sizes[0]) -> (N, sizes[-1])."""
    d_in, h1, h2, d_out = sizes
    return nn.Sequential(
        nn.Linear(d_in, h1, rng=rng, dtype=dtype), nn.SiLU(),
        nn.Linear(h1, h2, rng=rng, dtype=dtype), nn.LayerNorm(h2, dtype=dtype), nn.GELU(),
        nn.Linear(h2, d_out, rng=rng, dtype=dtype),
    )


class SmallCNN(nn.Module):
    """conv -> group norm -> SiLU -> self-attention over the pixels (residual) -> strided conv -> SiLU
    -> global mean -> linear: (N, in_channels, H, W) -> (N, classes) logits."""

    def __init__(self, rng: np.random.Generator, dtype=np.float64, in_channels: int = 3, channels: int = 8,
                 classes: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1, rng=rng, dtype=dtype)
        self.norm = nn.GroupNorm(2, channels, dtype=dtype)
        self.qkv = nn.Linear(channels, 3 * channels, rng=rng, dtype=dtype)
        self.proj = nn.Linear(channels, channels, rng=rng, dtype=dtype)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1, rng=rng, dtype=dtype)
        self.head = nn.Linear(channels, classes, rng=rng, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm(self.conv_in(x)))  # (N, C, H, W)
        n, c, height, width = h.shape
        tokens = h.reshape(n, c, height * width).transpose(1, 2)  # (N, HW, C)
        qkv = self.qkv(tokens)  # (N, HW, 3C)
        attended = F.scaled_dot_product_attention(qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:])  # (N, HW, C)
        tokens = tokens + self.proj(attended)
        h = tokens.transpose(1, 2).reshape(n, c, height, width)  # (N, C, H, W)
        h = F.silu(self.down(h))  # (N, C, H/2, W/2)
        return self.head(h.mean(axis=(2, 3)))  # (N, classes)
