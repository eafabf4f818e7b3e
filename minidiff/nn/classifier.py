"""NoisyClassifier: a classifier of noisy inputs x_t that is told the timestep t, p_phi(y | x_t, t), the network
whose input gradient classifier guidance follows [E40] (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on
Image Synthesis", use the U-Net's encoder half the same way).

Images, input_shape = (C, H, W): the U-Net's encoder half, in its vocabulary and with its pieces,

    emb = time_embedding(sinusoidal(t))                                            (B, 4 channels[0])   [E43]
    h = conv_in(x)                                                                 (B, channels[0], H, W)
    per level i: layers_per_block ResBlocks to channels[i] (emb added to every one), then a stride-2
                 Downsample2D but after the last level                            [E44]
    logits = head(flatten(SiLU(norm_out(h))))                                     (B, num_classes)

Vectors, input_shape = (D,) (2-D toy data): the residual MLP of MLPDenoiser, width channels[-1],
len(channels) * layers_per_block blocks h = h + Linear(SiLU(h + emb)), then head(SiLU(h)).

t is embedded as given (minidiff's t = 1..T; a float t in between, as the sigma samplers pass, is fine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor
from minidiff.nn.embedding import SinusoidalTimestepEmbedding, TimestepEmbedding, batch_timesteps
from minidiff.nn.layers import Conv2d, GroupNorm, Linear, ModuleList, _float_dtype, _generator, _positive_int
from minidiff.nn.module import Module
from minidiff.nn.unet import Downsample2D, ResBlock


class NoisyClassifier(Module):
    """classifier(x_t, t) -> logits (B, num_classes) of p_phi(y | x_t, t) (see the module docstring).

    input_shape: (C, H, W) for images (H and W divisible by 2^(levels - 1)), or (D,) for vectors.
    channels: per level, the conv channels (images), or, for vectors, levels of one width channels[-1].
    layers_per_block: ResBlocks (or MLP blocks) per level. norm_num_groups: of every group norm (images).
    rng, dtype: initialization (PyTorch's default inits), float32 or float64.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32),
                 layers_per_block: int = 1, norm_num_groups: int = 8, *, rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        input_shape = tuple(input_shape)
        if len(input_shape) not in (1, 3):
            raise ValueError(f"input_shape: expected (C, H, W) for images or (D,) for vectors, got {input_shape}")
        for size in input_shape:
            _positive_int(size, "input_shape")
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels: expected at least one level, got ()")
        for c in channels:
            _positive_int(c, "channels")
        self.config = dict(input_shape=input_shape, num_classes=_positive_int(num_classes, "num_classes"),
                           channels=channels, layers_per_block=_positive_int(layers_per_block, "layers_per_block"),
                           norm_num_groups=norm_num_groups)
        self.input_shape, self.num_classes = input_shape, num_classes
        rng, dtype = _generator(rng), _float_dtype(dtype)
        if len(input_shape) == 3:
            self._build_image_body(channels, layers_per_block, norm_num_groups, rng, dtype)
        else:
            self._build_vector_body(channels[-1], len(channels) * layers_per_block, rng, dtype)

    def _build_image_body(self, channels: tuple[int, ...], layers_per_block: int, groups: int,
                          rng: np.random.Generator, dtype: Any) -> None:
        c, h, w = self.input_shape
        factor = 2 ** (len(channels) - 1)
        if h % factor or w % factor:
            raise ValueError(f"input_shape: H and W must be divisible by 2^(levels - 1) = {factor}, got {h}x{w}")
        bad = [ch for ch in channels if ch % _positive_int(groups, "norm_num_groups")]
        if bad:
            raise ValueError(f"norm_num_groups: {groups} must divide every channels entry, not {bad}")
        temb = 4 * channels[0]
        self.time_proj = SinusoidalTimestepEmbedding(channels[0], flip_sin_to_cos=True, freq_shift=0, dtype=dtype)
        self.time_embedding = TimestepEmbedding(channels[0], temb, rng=rng, dtype=dtype)
        self.conv_in = Conv2d(c, channels[0], 3, padding=1, rng=rng, dtype=dtype)
        resnets, downsamplers, previous = [], [], channels[0]
        for level, out in enumerate(channels):
            for _ in range(layers_per_block):
                resnets.append(ResBlock(previous, out, temb, groups=groups, rng=rng, dtype=dtype))
                previous = out
            if level < len(channels) - 1:
                downsamplers.append(Downsample2D(out, rng=rng, dtype=dtype))
        self.resnets, self.downsamplers = ModuleList(resnets), ModuleList(downsamplers)
        self.norm_out = GroupNorm(groups, channels[-1], dtype=dtype)
        self.head = Linear(channels[-1] * (h // factor) * (w // factor), self.num_classes, rng=rng, dtype=dtype)

    def _build_vector_body(self, width: int, blocks: int, rng: np.random.Generator, dtype: Any) -> None:
        self.time_proj = SinusoidalTimestepEmbedding(width, flip_sin_to_cos=True, freq_shift=0, dtype=dtype)
        self.time_embedding = TimestepEmbedding(width, width, rng=rng, dtype=dtype)
        self.input_proj = Linear(self.input_shape[0], width, rng=rng, dtype=dtype)
        self.blocks = ModuleList(Linear(width, width, rng=rng, dtype=dtype) for _ in range(blocks))
        self.head = Linear(width, self.num_classes, rng=rng, dtype=dtype)

    def forward(self, x: Tensor, t: Any) -> Tensor:
        """x (B, *input_shape), t a number or (B,) ints or floats -> logits (B, num_classes)."""
        if not isinstance(x, Tensor) or x.shape[1:] != self.input_shape:
            shape = x.shape if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a Tensor (B, {', '.join(map(str, self.input_shape))}), got {shape}")
        emb = self.time_embedding(self.time_proj(batch_timesteps(t, x.shape[0]), like=x))  # (B, E)
        if len(self.input_shape) == 1:
            h = self.input_proj(x) + emb  # (B, width)
            for block in self.blocks:
                h = h + block(F.silu(h + emb))
            return self.head(F.silu(h))  # (B, num_classes)
        h = self.conv_in(x)  # (B, C0, H, W)
        per_level = self.config["layers_per_block"]
        for level in range(len(self.downsamplers) + 1):
            for resnet in self.resnets[level * per_level:(level + 1) * per_level]:
                h = resnet(h, emb)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)  # (B, C, H / 2, W / 2)
        h = F.silu(self.norm_out(h))  # (B, C_last, H', W')
        return self.head(h.reshape(h.shape[0], math.prod(h.shape[1:])))  # (B, num_classes)
