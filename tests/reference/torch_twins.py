"""minidiff functions written the way a PyTorch user would write them."""

from __future__ import annotations

import torch


def sampler_step_torch(x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None, coefs) -> torch.Tensor:
    """The fused sampler step (minidiff.kernels.sampler_step) in PyTorch eager, operator by operator."""
    out = coefs.c_x * x + coefs.c_eps * eps
    if z is not None:
        out = out + coefs.c_z * z
    if coefs.clip is not None:
        out = out + coefs.c_x0 * torch.clamp(coefs.r_x * x + coefs.r_eps * eps, -coefs.clip, coefs.clip)
    return out


def group_norm_torch(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                     activation: str | None = None) -> torch.Tensor:
    """Group norm with AdaGN's scale and shift and a SiLU (minidiff.kernels.group_norm) as a PyTorch user writes it:
    F.group_norm, then (1 + scale) and shift per sample and channel, then F.silu."""
    if weight is None and bias is not None:  # torch's group norm backward fails on a bias without a weight
        weight = torch.ones_like(bias)
    y = torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)
    per_sample_channel = x.shape[:2] + (1,) * (x.ndim - 2)
    if scale is not None:
        y = y * (1 + scale.reshape(per_sample_channel))
    if shift is not None:
        y = y + shift.reshape(per_sample_channel)
    return torch.nn.functional.silu(y) if activation == "silu" else y


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """softmax(q k^T scale, masked) v as matrix products and a softmax (PyTorch's math path before 2.5: a query
    with every key masked gets NaN, where scaled_dot_product_attention now returns zeros)."""
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
