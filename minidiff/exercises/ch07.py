"""Chapter 07 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch07
"""

from __future__ import annotations

import math
import numpy as np
from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor
from minidiff.nn.layers import _positive_int
from minidiff.nn.unet import adaptive_group_norm
from minidiff.optim import clip_grad_norm_
from typing import Any


# Exercise 7.1 (reference: minidiff.nn.embedding.timestep_embedding)
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
    raise NotImplementedError("Exercise 7.1: frequencies (h,), angles (B, h), [sin, cos] (or flipped), emb (B, dim)")
    return emb


class ResBlock:
    # Exercise 7.2 (reference: minidiff.nn.unet.ResBlock.forward)
    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # norm1, SiLU, conv1; SiLU(temb) through time_emb_proj as (B, O or 2 O, 1, 1); "default": add it
        # before norm2; "scale_shift": split it into scale and shift for adaptive_group_norm after norm2;
        # SiLU, dropout, conv2; add the shortcut (conv_shortcut if any), divide by output_scale_factor: out.
        raise NotImplementedError("Exercise 7.2: conv1 path, time projection, norm2 with the embedding, conv2, shortcut")
        return out


class _PixelAttention:
    # Exercise 7.3 (reference: minidiff.nn.attention._PixelAttention._attend)
    def _attend(self, x: Tensor, context: Tensor | None) -> Tensor:
        """[E45] x + to_out(softmax(Q K^T / sqrt(d)) V), divided by rescale_output_factor."""
        b, c, h, w = x.shape
        # group norm (if any); pixels to tokens (B, HW, C); q from the tokens, k and v from the tokens or
        # the context; _split_heads; F.scaled_dot_product_attention; merge the heads; to_out[0]; back to
        # (B, C, H, W); add x and divide by rescale_output_factor: result.
        raise NotImplementedError("Exercise 7.3: tokens, q/k/v in heads, attention, merge, project, residual")
        return result


class Trainer:
    # Exercise 7.4 (reference: minidiff.train.Trainer.train_step)
    def train_step(self, batch: Any) -> float:
        """One optimization step on a batch x or (x, labels): draw t and the noise, the loss, its gradient,
        clip, AdamW, advance the LR schedule and the EMA. Returns the loss (before the update)."""
        x0, labels = self._split(batch)
        # Zero the gradients; loss = the objective's loss of self._denoiser(labels) on x0 with self.rng (it
        # draws t and the noise, builds x_t and the target); backpropagate; clip the gradient norm to
        # config.grad_clip (None: no limit), keeping the norm in self.grad_norm; take the optimizer step.
        raise NotImplementedError("Exercise 7.4: zero grads, loss, backward, clip into self.grad_norm, optimizer step")
        self.lr_scheduler.step()
        self.ema.update(self.model)
        return float(loss.item())
