"""Attention blocks over the pixels of a feature map [E45], as diffusers' Attention in UNet2DModel:
group norm, one head per attention_head_dim channels, to_q / to_k / to_v / to_out.0 (with bias), the
residual added and the sum divided by rescale_output_factor.

SelfAttention2d: queries, keys and values all from the (normalized) pixels.
CrossAttention: queries from the pixels, keys and values from a context sequence (B, L, context_dim), as
diffusers' Attention(cross_attention_dim=context_dim); the context is not normalized.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor
from minidiff.exercise_tools import exercise
from minidiff.nn.layers import GroupNorm, Linear, ModuleList, _generator, _positive_int
from minidiff.nn.module import Module


class _PixelAttention(Module):
    """The shared body: x (B, C, H, W) attends to itself (context_dim None) or to a context sequence."""

    def __init__(self, channels: int, context_dim: int | None, attention_head_dim: int | None,
                 norm_num_groups: int | None, eps: float, rescale_output_factor: float,
                 rng: np.random.Generator | None, dtype: Any) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        head_dim = self.channels if attention_head_dim is None else _positive_int(attention_head_dim,
                                                                                   "attention_head_dim")
        if head_dim > self.channels:
            raise ValueError(f"attention_head_dim: expected at most channels = {channels}, got {head_dim}")
        self.heads = self.channels // head_dim  # diffusers: heads = channels // head_dim, inner = heads * head_dim
        self.rescale_output_factor = float(rescale_output_factor)
        inner, kv_in = self.heads * head_dim, self.channels if context_dim is None else context_dim
        rng = _generator(rng)
        self.group_norm = None if norm_num_groups is None else GroupNorm(norm_num_groups, channels, eps=eps,
                                                                        dtype=dtype)
        self.to_q = Linear(channels, inner, rng=rng, dtype=dtype)
        self.to_k = Linear(kv_in, inner, rng=rng, dtype=dtype)
        self.to_v = Linear(kv_in, inner, rng=rng, dtype=dtype)
        self.to_out = ModuleList([Linear(inner, channels, rng=rng, dtype=dtype)])  # diffusers' to_out.1 is a Dropout

    def _split_heads(self, x: Tensor) -> Tensor:
        b, length, inner = x.shape
        return x.reshape(b, length, self.heads, inner // self.heads).transpose(1, 2)  # (B, heads, L, d)

    @exercise("ex07.3")
    def _attend(self, x: Tensor, context: Tensor | None) -> Tensor:
        """[E45] x + to_out(softmax(Q K^T / sqrt(d)) V), divided by rescale_output_factor."""
        b, c, h, w = x.shape
        # group norm (if any); pixels to tokens (B, HW, C); q from the tokens, k and v from the tokens or
        # the context; _split_heads; F.scaled_dot_product_attention; merge the heads; to_out[0]; back to
        # (B, C, H, W); add x and divide by rescale_output_factor: result.
        # BEGIN SOLUTION ex07.3: tokens, q/k/v in heads, attention, merge, project, residual
        normed = x if self.group_norm is None else self.group_norm(x)
        tokens = normed.reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        source = tokens if context is None else context  # (B, L, C or context_dim)
        q, k, v = (self._split_heads(p(s)) for p, s in ((self.to_q, tokens), (self.to_k, source),
                                                         (self.to_v, source)))
        heads = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        merged = heads.transpose(1, 2).reshape(b, h * w, -1)  # (B, HW, inner)
        out = self.to_out[0](merged).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        result = (out + x) / self.rescale_output_factor
        # END SOLUTION
        return result

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}"


def _image(x: Any, channels: int) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != channels:
        shape = x.shape if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected a Tensor (B, {channels}, H, W), got {shape}")
    return x


class SelfAttention2d(_PixelAttention):
    """[E45] Self-attention over the H W pixels of x (B, C, H, W) -> (B, C, H, W), residual included.

    attention_head_dim: channels per head (None: one head of all channels). norm_num_groups: groups of
    the input group norm (None: no norm, as diffusers' mid block with resnet_time_scale_shift "scale_shift").
    """

    def __init__(self, channels: int, attention_head_dim: int | None = None, norm_num_groups: int | None = 32,
                 eps: float = 1e-5, rescale_output_factor: float = 1.0, *, rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__(channels, None, attention_head_dim, norm_num_groups, eps, rescale_output_factor, rng, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._attend(_image(x, self.channels), None)


class CrossAttention(_PixelAttention):
    """[E45] Cross-attention: queries from the pixels of x (B, C, H, W), keys and values from
    context (B, L, context_dim) -> (B, C, H, W), residual included. Names and order of operations of
    diffusers' Attention(channels, cross_attention_dim=context_dim, norm_num_groups=..., residual_connection=True).
    """

    def __init__(self, channels: int, context_dim: int, attention_head_dim: int | None = None,
                 norm_num_groups: int | None = 32, eps: float = 1e-5, rescale_output_factor: float = 1.0, *,
                 rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        super().__init__(channels, _positive_int(context_dim, "context_dim"), attention_head_dim, norm_num_groups,
                         eps, rescale_output_factor, rng, dtype)

    @property
    def context_dim(self) -> int:
        return self.to_k.in_features

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = _image(x, self.channels)
        expected = (x.shape[0], self.context_dim)
        if not isinstance(context, Tensor) or context.ndim != 3 or (context.shape[0], context.shape[2]) != expected:
            shape = context.shape if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"context: expected a Tensor (B={x.shape[0]}, L, {self.context_dim}), got {shape}")
        return self._attend(x, context)
