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


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """softmax(q k^T scale, masked) v as matrix products and a softmax (PyTorch's math path before 2.5: a query
    with every key masked gets NaN, where scaled_dot_product_attention now returns zeros)."""
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
