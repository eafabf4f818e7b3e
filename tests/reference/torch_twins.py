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
