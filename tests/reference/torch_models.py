"""PyTorch twins of the small models in tests/models.py: the same layers under the same names, so the
two exchange weights by state dict."""

from __future__ import annotations

import torch
from torch import nn


def mlp_torch(dtype=torch.float64, sizes=(2, 32, 32, 2)) -> nn.Sequential:
    """Twin of models.mlp (its weights come from load_state_dict)."""
    d_in, h1, h2, d_out = sizes
    return nn.Sequential(
        nn.Linear(d_in, h1, dtype=dtype), nn.SiLU(),
        nn.Linear(h1, h2, dtype=dtype), nn.LayerNorm(h2, dtype=dtype), nn.GELU(),
        nn.Linear(h2, d_out, dtype=dtype),
    )


class SmallCNNTorch(nn.Module):
    """Twin of models.SmallCNN."""

    def __init__(self, dtype=torch.float64, in_channels: int = 3, channels: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1, dtype=dtype)
        self.norm = nn.GroupNorm(2, channels, dtype=dtype)
        self.qkv = nn.Linear(channels, 3 * channels, dtype=dtype)
        self.proj = nn.Linear(channels, channels, dtype=dtype)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1, dtype=dtype)
        self.head = nn.Linear(channels, classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm(self.conv_in(x)))  # (N, C, H, W)
        n, c, height, width = h.shape
        tokens = h.reshape(n, c, height * width).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(tokens).split(c, dim=-1)  # (N, HW, C) each
        tokens = tokens + self.proj(nn.functional.scaled_dot_product_attention(q, k, v))
        h = tokens.transpose(1, 2).reshape(n, c, height, width)  # (N, C, H, W)
        h = nn.functional.silu(self.down(h))  # (N, C, H/2, W/2)
        return self.head(h.mean(dim=(2, 3)))  # (N, classes)
