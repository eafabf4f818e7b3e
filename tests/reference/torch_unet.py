"""PyTorch twins of minidiff.nn.unet, minidiff.nn.attention and minidiff.nn.mlp.

The UNet's twin is diffusers' own UNet2DModel built from the same configuration: the same parameter
names are the key-mapping promise. One change: diffusers always computes the sinusoidal timestep
embedding in float32 (its get_timestep_embedding casts t with .float()), which would cap a float64
comparison at float32 accuracy; the twin's time_proj computes diffusers' formula in the model's dtype
instead. tests/test_unet.py checks that formula against get_timestep_embedding itself.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

# minidiff-only options that UNet2DModel does not know (they must be at their "off" value for a twin).
MINIDIFF_ONLY = {"cross_attention_dim": None}


class TimestepsInDtype(nn.Module):
    """diffusers' Timesteps (get_timestep_embedding: exponent = -ln(max_period) i / (half - shift),
    [sin, cos] or [cos, sin], odd dim zero-padded), computed in `dtype` rather than float32."""

    def __init__(self, dim: int, flip_sin_to_cos: bool, freq_shift: float, dtype: torch.dtype,
                 max_period: float = 10000) -> None:
        super().__init__()
        self.dim, self.flip, self.shift, self.dtype = dim, flip_sin_to_cos, freq_shift, dtype
        self.max_period = max_period

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = -math.log(self.max_period) * torch.arange(half, dtype=self.dtype) / (half - self.shift)
        angles = timesteps.to(self.dtype)[:, None] * torch.exp(exponent)[None, :]  # (B, half)
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        if self.flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return nn.functional.pad(emb, (0, self.dim % 2))  # (B, dim)


def unet_twin(config: dict, dtype: torch.dtype = torch.float64) -> UNet2DModel:
    """diffusers' UNet2DModel for a minidiff UNet config (its weights come from load_state_dict)."""
    for key, off in MINIDIFF_ONLY.items():
        if config.get(key, off) != off:
            raise ValueError(f"{key}: UNet2DModel has no such option; a twin needs {key}={off}")
    kwargs = {k: v for k, v in config.items() if k not in MINIDIFF_ONLY}
    model = UNet2DModel(**kwargs).to(dtype)
    model.time_proj = TimestepsInDtype(config["block_out_channels"][0], config["flip_sin_to_cos"],
                                       config["freq_shift"], dtype)
    return model


def attention_twin(channels: int, head_dim: int | None, groups: int | None, eps: float, rescale: float,
                   context_dim: int | None = None, dtype: torch.dtype = torch.float64) -> Attention:
    """diffusers' Attention as UNet2DModel's blocks build it (residual, bias, group norm), optionally
    cross-attending to an encoder_hidden_states sequence of context_dim features."""
    head_dim = channels if head_dim is None else head_dim
    return Attention(channels, cross_attention_dim=context_dim, heads=channels // head_dim, dim_head=head_dim,
                     rescale_output_factor=rescale, eps=eps, norm_num_groups=groups, residual_connection=True,
                     bias=True, upcast_softmax=True, _from_deprecated_attn_block=True).to(dtype)


class MLPDenoiserTwin(nn.Module):
    """Twin of minidiff.nn.MLPDenoiser: emb = linear_2(SiLU(linear_1(sinusoidal(t)))) [+ class row];
    h = input_proj(x) + emb; h = h + block(SiLU(h + emb)) per block; out = output_proj(SiLU(h))."""

    def __init__(self, dim: int, hidden: int, layers: int, time_embed_dim: int, num_classes: int | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.time_proj = TimestepsInDtype(time_embed_dim, flip_sin_to_cos=True, freq_shift=0, dtype=dtype)
        self.time_embedding = TimestepEmbedding(time_embed_dim, hidden).to(dtype)
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes, hidden, dtype=dtype)
        self.input_proj = nn.Linear(dim, hidden, dtype=dtype)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden, dtype=dtype) for _ in range(layers))
        self.output_proj = nn.Linear(hidden, dim, dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embedding(self.time_proj(t))  # (B, hidden)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels)
        h = self.input_proj(x) + emb
        for block in self.blocks:
            h = h + block(nn.functional.silu(h + emb))
        return self.output_proj(nn.functional.silu(h))  # (B, dim)
