"""Chapter 08 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch08
"""

from __future__ import annotations

import numpy as np
from minidiff.diffusion import _validate as _v


# Exercise 8.1 (reference: minidiff.guidance.guided_combination)
def guided_combination(output: np.ndarray, scale: float) -> np.ndarray:
    """[E41] eps_uncond + w (eps_cond - eps_uncond) from one batched model output.

    output: (2B, ...), the model's prediction for the unconditional (or negative, E42) half first and the
    conditional half second, as in diffusers' pipelines (`torch.cat([negative, positive])`). scale: w.
    Returns (B, ...) in the dtype of output, computed as (1 - w) eps_uncond + w eps_cond, which equals the
    formula and gives eps_uncond exactly at w = 0 and eps_cond exactly at w = 1.
    """
    if output.shape[0] % 2:
        raise ValueError(f"output: expected an even batch (unconditional half, conditional half), got {output.shape}")
    raise NotImplementedError("Exercise 8.1: split the batch into its two halves (which comes first?), then the weighted sum")
    return guided.astype(output.dtype, copy=False)


# Exercise 8.2 (reference: minidiff.guidance.classifier_guided_eps)
def classifier_guided_eps(eps: np.ndarray, grad_log_prob: np.ndarray, sqrt_one_minus_alpha_bar: np.ndarray,
                          scale: float) -> np.ndarray:
    """[E40] eps_guided = eps - s sqrt(1 - alpha_bar_t) grad_{x_t} log p_phi(y | x_t, t).

    eps, grad_log_prob: (B, ...) of one shape. sqrt_one_minus_alpha_bar: (B,), one value per example (its t).
    scale: s. Returns (B, ...) in the dtype of eps.
    """
    _v.same_shape(grad_log_prob, "grad_log_prob", eps, "eps")
    if np.shape(sqrt_one_minus_alpha_bar) != eps.shape[:1]:
        raise ValueError(f"sqrt_one_minus_alpha_bar: expected one value per example, shape {eps.shape[:1]}, got "
                         f"{np.shape(sqrt_one_minus_alpha_bar)}")
    raise NotImplementedError("Exercise 8.2: broadcast the per-example sqrt(1 - alpha_bar_t) over each example's axes, then E40")
    return eps_guided.astype(eps.dtype, copy=False)
