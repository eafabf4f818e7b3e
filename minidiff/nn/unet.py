"""The U-Net [E46] of DDPM, in diffusers UNet2DModel's configuration vocabulary, order of operations and
parameter names, so weights move between the two by state dict: `down_blocks.0.resnets.0.norm1.weight`,
`mid_block.attentions.0.to_q.weight`, `time_embedding.linear_1.bias`, `conv_norm_out.weight`, ...

    x (B, in_channels, H, W), t (B,) -> conv_in -> down blocks (residual blocks, attention at chosen levels,
    a stride-2 conv between levels; every output kept as a skip) -> mid block (res, attention, res) -> up
    blocks (each residual block takes the last skip concatenated to its input; nearest x2 + conv between
    levels) -> group norm, SiLU, conv_out -> (B, out_channels, H, W).

Every residual block receives the time embedding (E43, plus the class embedding when num_class_embeds is
set), added to its features ("default") or as adaptive group norm scale and shift ("scale_shift", E44).

The timestep is embedded as given: minidiff passes its t = 1..T; diffusers' k = t - 1, so an importer of
diffusers weights calls the model with t - 1 (see minidiff.nn.embedding).

Beyond UNet2DModel: `cross_attention_dim` adds a CrossAttention after every self-attention (registered as
`cross_attentions.i` beside `attentions.i`), attending to `context` (B, L, cross_attention_dim); those keys
have no diffusers counterpart. Differences: diffusers passes no dropout to AttnUpBlock2D's residual blocks;
here every residual block gets `dropout`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor
from minidiff.backend import to_host
from minidiff.exercise_tools import exercise
from minidiff.nn.attention import CrossAttention, SelfAttention2d
from minidiff.nn.embedding import Embedding, SinusoidalTimestepEmbedding, TimestepEmbedding, batch_timesteps
from minidiff.nn.layers import (
    Conv2d,
    Dropout,
    GroupNorm,
    Linear,
    ModuleList,
    _float_dtype,
    _generator,
    _positive_int,
)
from minidiff.nn.module import Module

TIME_SCALE_SHIFTS = ("default", "scale_shift")
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")


class ResBlock(Module):
    """[E44] diffusers' ResnetBlock2D: x (B, in_channels, H, W), temb (B, temb_channels) -> (B, out_channels, H, W).

    h = conv1(SiLU(norm1(x))); e = time_emb_proj(SiLU(temb));
    "default": h = norm2(h + e);  "scale_shift" [E44]: scale, shift = e split in two, h = norm2(h) (1 + scale) + shift;
    h = conv2(dropout(SiLU(h))); out = (shortcut(x) + h) / output_scale_factor, shortcut a 1x1 conv when the
    channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, groups: int = 32,
                 eps: float = 1e-5, dropout: float = 0.0, time_scale_shift: str = "default",
                 output_scale_factor: float = 1.0, rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        if time_scale_shift not in TIME_SCALE_SHIFTS:
            raise ValueError(f"time_scale_shift: expected one of {TIME_SCALE_SHIFTS}, got {time_scale_shift!r}")
        rng = _generator(rng)
        self.time_scale_shift, self.output_scale_factor = time_scale_shift, float(output_scale_factor)
        temb_out = 2 * out_channels if time_scale_shift == "scale_shift" else out_channels
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, dtype=dtype)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rng=rng, dtype=dtype)
        self.time_emb_proj = Linear(temb_channels, temb_out, rng=rng, dtype=dtype)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps, dtype=dtype)
        self.dropout = Dropout(dropout, rng=rng)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rng=rng, dtype=dtype)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1, rng=rng, dtype=dtype) \
            if in_channels != out_channels else None

    @exercise("ex07.2")
    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # norm1, SiLU, conv1; SiLU(temb) through time_emb_proj as (B, O or 2 O, 1, 1); "default": add it
        # before norm2; "scale_shift": split it into scale and shift for AdaGN [E44] after norm2; SiLU,
        # dropout, conv2; add the shortcut (conv_shortcut if any), divide by output_scale_factor: out.
        # A GroupNorm module applies what follows it in the same kernel call: norm(h, activation="silu") is
        # SiLU(norm(h)), and norm(h, scale=s, shift=t, activation="silu") is SiLU(norm(h) * (1 + s) + t).
        # BEGIN SOLUTION ex07.2: conv1 path, time projection, norm2 with the embedding, conv2, shortcut
        h = self.conv1(self.norm1(x, activation="silu"))  # conv1(SiLU(norm1(x))): (B, O, H, W)
        e = self.time_emb_proj(F.silu(temb)).reshape(*temb.shape[:1], -1, 1, 1)  # (B, O or 2 O, 1, 1)
        if self.time_scale_shift == "scale_shift":
            out_channels = h.shape[1]
            scale, shift = e[:, :out_channels], e[:, out_channels:]  # (B, O, 1, 1) each
            h = self.norm2(h, scale=scale, shift=shift, activation="silu")  # SiLU(AdaGN(h)) [E44]
        else:
            h = self.norm2(h + e, activation="silu")  # SiLU(norm2(h + e))
        h = self.conv2(self.dropout(h))  # (B, O, H, W)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = (shortcut + h) / self.output_scale_factor
        # END SOLUTION
        return out


def adaptive_group_norm(normed: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """[E44] AdaGN(h, t) = GroupNorm(h) (1 + scale(t)) + shift(t): normed (B, C, H, W), scale and shift (B, C, 1, 1)."""
    return normed * (1 + scale) + shift


class Downsample2D(Module):
    """3x3 conv with stride 2: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)). padding 1, or padding 0
    after padding the right and bottom by one (diffusers' downsample_padding=0)."""

    def __init__(self, channels: int, padding: int = 1, *, rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"padding: expected 0 or 1, got {padding!r}")
        self.padding = padding
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding, rng=rng, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))  # (B, C, H + 1, W + 1)
        return self.conv(x)


class Upsample2D(Module):
    """Nearest-neighbour x2, then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int, *, rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1, rng=rng, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.upsample_nearest2d(x, 2))


class _Attentions(Module):
    """What a block applies after each residual block: self-attention (`attentions.i`) and, with a context
    dimension, cross-attention (`cross_attentions.i`). Holds no modules when the block does not attend."""

    def _add_attention(self, count: int, channels: int, attend: bool, cfg: dict[str, Any], rng: np.random.Generator,
                       dtype: Any, groups: int | None, rescale: float = 1.0) -> None:
        head_dim, eps, context_dim = cfg["attention_head_dim"], cfg["norm_eps"], cfg["cross_attention_dim"]
        self.attentions = ModuleList(
            SelfAttention2d(channels, head_dim, groups, eps, rescale, rng=rng, dtype=dtype) for _ in range(count)
        ) if attend else None
        self.cross_attentions = ModuleList(
            CrossAttention(channels, context_dim, head_dim, groups, eps, rescale, rng=rng, dtype=dtype)
            for _ in range(count)
        ) if attend and context_dim is not None else None

    def _attend(self, i: int, h: Tensor, context: Tensor | None) -> Tensor:
        if self.attentions is not None:
            h = self.attentions[i](h)
        if self.cross_attentions is not None:
            h = self.cross_attentions[i](h, context)
        return h


class DownBlock(_Attentions):
    """diffusers' DownBlock2D / AttnDownBlock2D: num_layers residual blocks (each followed by attention in
    an Attn block), then a Downsample2D unless it is the last level. Every output is pushed onto `skips`."""

    def __init__(self, block_type: str, in_channels: int, out_channels: int, temb_channels: int, num_layers: int,
                 add_downsample: bool, cfg: dict[str, Any], rng: np.random.Generator, dtype: Any) -> None:
        super().__init__()
        self._add_attention(num_layers, out_channels, block_type == "AttnDownBlock2D", cfg, rng, dtype,
                            cfg["norm_num_groups"])
        self.resnets = ModuleList(
            _resblock(in_channels if i == 0 else out_channels, out_channels, temb_channels, cfg, rng, dtype)
            for i in range(num_layers)
        )
        self.downsamplers = ModuleList([Downsample2D(out_channels, cfg["downsample_padding"], rng=rng, dtype=dtype)]) \
            if add_downsample else None

    def forward(self, h: Tensor, temb: Tensor, context: Tensor | None, skips: list[Tensor]) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = self._attend(i, resnet(h, temb), context)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h


class MidBlock(_Attentions):
    """diffusers' UNetMidBlock2D: resnet, attention, resnet. Its attention has a group norm only with
    resnet_time_scale_shift "default" (diffusers' rule when attn_norm_num_groups is None)."""

    def __init__(self, channels: int, temb_channels: int, cfg: dict[str, Any], rng: np.random.Generator,
                 dtype: Any) -> None:
        super().__init__()
        groups = cfg["norm_num_groups"] if cfg["resnet_time_scale_shift"] == "default" else None
        scale = cfg["mid_block_scale_factor"]
        self._add_attention(1, channels, True, cfg, rng, dtype, groups, scale)
        self.resnets = ModuleList(_resblock(channels, channels, temb_channels, cfg, rng, dtype, scale)
                                  for _ in range(2))

    def forward(self, h: Tensor, temb: Tensor, context: Tensor | None) -> Tensor:
        h = self.resnets[0](h, temb)
        return self.resnets[1](self._attend(0, h, context), temb)


class UpBlock(_Attentions):
    """diffusers' UpBlock2D / AttnUpBlock2D: num_layers residual blocks, each on its input concatenated with
    the last skip (popped: last in, first out), each followed by attention in an Attn block; then an
    Upsample2D unless it is the last level."""

    def __init__(self, block_type: str, skip_channels: list[int], prev_channels: int, out_channels: int,
                 temb_channels: int, add_upsample: bool, cfg: dict[str, Any], rng: np.random.Generator,
                 dtype: Any) -> None:
        super().__init__()
        self._add_attention(len(skip_channels), out_channels, block_type == "AttnUpBlock2D", cfg, rng, dtype,
                            cfg["norm_num_groups"])
        self.resnets = ModuleList(
            _resblock((prev_channels if i == 0 else out_channels) + skip, out_channels, temb_channels, cfg, rng, dtype)
            for i, skip in enumerate(skip_channels)
        )
        self.upsamplers = ModuleList([Upsample2D(out_channels, rng=rng, dtype=dtype)]) if add_upsample else None

    def forward(self, h: Tensor, temb: Tensor, context: Tensor | None, skips: list[Tensor]) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = F.concat([h, skips.pop()], axis=1)  # (B, C + C_skip, H, W)
            h = self._attend(i, resnet(h, temb), context)
        return h if self.upsamplers is None else self.upsamplers[0](h)


def _resblock(in_channels: int, out_channels: int, temb_channels: int, cfg: dict[str, Any],
              rng: np.random.Generator, dtype: Any, output_scale_factor: float = 1.0) -> ResBlock:
    return ResBlock(in_channels, out_channels, temb_channels, groups=cfg["norm_num_groups"], eps=cfg["norm_eps"],
                    dropout=cfg["dropout"], time_scale_shift=cfg["resnet_time_scale_shift"],
                    output_scale_factor=output_scale_factor, rng=rng, dtype=dtype)


class UNet(Module):
    """[E46] The U-Net of DDPM in diffusers UNet2DModel's vocabulary: unet(x, t, class_labels, context) -> (B,
    out_channels, H, W), the network's prediction (eps, x0 or v: the objective decides what it means).

    sample_size: the image size (stored in the config only). block_out_channels: channels per level (the
    first is also the timestep embedding's width; its MLP has 4x that). layers_per_block: residual blocks per
    down level (up levels have one more). down_block_types / up_block_types: per level, "DownBlock2D" or
    "AttnDownBlock2D" / "UpBlock2D" or "AttnUpBlock2D" (up blocks listed from the lowest resolution up).
    attention_head_dim: channels per head (None: one head). norm_num_groups, norm_eps: every group norm's.
    resnet_time_scale_shift: "default" (add the embedding) or "scale_shift" (AdaGN, E44). flip_sin_to_cos,
    freq_shift: of the sinusoidal embedding (E43). downsample_padding: 1, or 0 (pad right and bottom).
    num_class_embeds: class conditioning; the embedding of class_labels (B,) is added to the time embedding.
    For classifier-free guidance reserve the last index as the null label: num_class_embeds = classes + 1,
    null label = num_class_embeds - 1 (`unet.null_class_label`); the table keeps diffusers' shape.
    dropout: in every residual block (training mode). mid_block_scale_factor: the mid block's output scale.
    cross_attention_dim: when set, attention levels and the mid block also cross-attend to context
    (B, L, cross_attention_dim) (not a UNet2DModel option). rng, dtype: initialization (PyTorch's default
    inits) and float32 or float64.
    """

    def __init__(self, sample_size: int | None = None, in_channels: int = 3, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (32, 64), layers_per_block: int = 2,
                 down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim: int | None = 8, norm_num_groups: int = 32, norm_eps: float = 1e-5,
                 resnet_time_scale_shift: str = "default", flip_sin_to_cos: bool = True, freq_shift: float = 0,
                 downsample_padding: int = 1, num_class_embeds: int | None = None, dropout: float = 0.0,
                 mid_block_scale_factor: float = 1.0, cross_attention_dim: int | None = None, *,
                 rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        cfg = dict(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                   block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                   down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
                   attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups, norm_eps=norm_eps,
                   resnet_time_scale_shift=resnet_time_scale_shift, flip_sin_to_cos=flip_sin_to_cos,
                   freq_shift=freq_shift, downsample_padding=downsample_padding, num_class_embeds=num_class_embeds,
                   dropout=dropout, mid_block_scale_factor=mid_block_scale_factor,
                   cross_attention_dim=cross_attention_dim)
        _check_config(cfg)
        self.config = cfg  # the constructor's arguments (JSON-ready), for checkpoints
        rng, dtype = _generator(rng), _float_dtype(dtype)
        channels = cfg["block_out_channels"]
        temb_channels = 4 * channels[0]

        self.conv_in = Conv2d(in_channels, channels[0], 3, padding=1, rng=rng, dtype=dtype)
        self.time_proj = SinusoidalTimestepEmbedding(channels[0], flip_sin_to_cos, freq_shift, dtype=dtype)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels, rng=rng, dtype=dtype)
        self.class_embedding = None if num_class_embeds is None else \
            Embedding(num_class_embeds, temb_channels, rng=rng, dtype=dtype)

        last = len(channels) - 1
        self.down_blocks = ModuleList(
            DownBlock(kind, channels[max(i - 1, 0)], channels[i], temb_channels, layers_per_block, i < last, cfg,
                      rng, dtype)
            for i, kind in enumerate(cfg["down_block_types"])
        )
        mid_block = MidBlock(channels[-1], temb_channels, cfg, rng, dtype)
        skips = _skip_channels(channels, layers_per_block)
        up_channels = channels[::-1]
        self.up_blocks = ModuleList(
            UpBlock(kind, [skips.pop() for _ in range(layers_per_block + 1)], up_channels[max(i - 1, 0)],
                    up_channels[i], temb_channels, i < last, cfg, rng, dtype)
            for i, kind in enumerate(cfg["up_block_types"])
        )
        self.mid_block = mid_block  # registered after up_blocks, as in diffusers: state dicts list keys alike
        self.conv_norm_out = GroupNorm(norm_num_groups, channels[0], eps=norm_eps, dtype=dtype)
        self.conv_out = Conv2d(channels[0], out_channels, 3, padding=1, rng=rng, dtype=dtype)

    @property
    def null_class_label(self) -> int:
        """The class index reserved for "no class" (classifier-free guidance): num_class_embeds - 1."""
        if self.class_embedding is None:
            raise ValueError("num_class_embeds: this UNet is not class-conditional (num_class_embeds is None)")
        return self.class_embedding.num_embeddings - 1

    def forward(self, x: Tensor, t: Any, class_labels: Any = None, context: Tensor | None = None) -> Tensor:
        """x (B, in_channels, H, W), H and W divisible by 2^(levels - 1); t: a number or (B,) ints or floats;
        class_labels (B,) ints when num_class_embeds is set; context (B, L, cross_attention_dim) when
        cross_attention_dim is set. Returns (B, out_channels, H, W)."""
        self._check_input(x, context)
        emb = self.time_embedding(self.time_proj(batch_timesteps(t, x.shape[0]), like=x))  # (B, 4 C0)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(self._class_labels(class_labels, x.shape[0]))
        elif class_labels is not None:
            raise ValueError("class_labels: this UNet is not class-conditional (num_class_embeds is None)")
        h = self.conv_in(x)  # (B, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb, context, skips)
        h = self.mid_block(h, emb, context)  # (B, C_last, H / 2^(levels-1), W / 2^(levels-1))
        for block in self.up_blocks:
            h = block(h, emb, context, skips)
        return self.conv_out(self.conv_norm_out(h, activation="silu"))  # conv_out(SiLU(norm(h))): (B, out, H, W)

    def _check_input(self, x: Any, context: Any) -> None:
        factor = 2 ** (len(self.config["block_out_channels"]) - 1)
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.config["in_channels"] \
                or x.shape[2] % factor or x.shape[3] % factor:
            shape = x.shape if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a Tensor (B, {self.config['in_channels']}, H, W) with H and W divisible "
                             f"by {factor}, got {shape}")
        dim = self.config["cross_attention_dim"]
        if dim is None and context is not None:
            raise ValueError("context: this UNet has no cross-attention (cross_attention_dim is None)")
        if dim is not None and not isinstance(context, Tensor):
            raise ValueError(f"context: expected a Tensor (B, L, {dim}) (cross_attention_dim is set), "
                             f"got {type(context).__name__}")

    def _class_labels(self, class_labels: Any, batch: int) -> np.ndarray:
        labels = to_host(class_labels.data if isinstance(class_labels, Tensor) else class_labels)
        n = self.class_embedding.num_embeddings
        if class_labels is None or labels.shape != (batch,) or labels.dtype.kind not in "iu" \
                or labels.min() < 0 or labels.max() >= n:
            raise ValueError(f"class_labels: expected {batch} integer labels in [0, {n}) (num_class_embeds = {n}), "
                             f"got {class_labels if class_labels is None else labels!r}")
        return labels


def _skip_channels(channels: tuple[int, ...], layers_per_block: int) -> list[int]:
    """The channel counts of the skips the down path pushes, in push order: conv_in's, then per level
    layers_per_block residual outputs and (but at the last level) the downsampled output."""
    skips = [channels[0]]
    for i, c in enumerate(channels):
        skips += [c] * (layers_per_block + (i < len(channels) - 1))
    return skips


def _check_config(cfg: dict[str, Any]) -> None:
    channels = cfg["block_out_channels"]
    if not channels:
        raise ValueError("block_out_channels: expected at least one level, got ()")
    for c in channels:
        _positive_int(c, "block_out_channels")
    for name in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups"):
        _positive_int(cfg[name], name)
    for name, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
        kinds = cfg[name]
        if len(kinds) != len(channels) or any(k not in allowed for k in kinds):
            raise ValueError(f"{name}: expected {len(channels)} entries (one per block_out_channels) from "
                             f"{allowed}, got {kinds}")
    bad = [c for c in channels if c % cfg["norm_num_groups"]]
    if bad:
        raise ValueError(f"norm_num_groups: {cfg['norm_num_groups']} must divide every block_out_channels entry, "
                         f"not {bad}")
    if cfg["resnet_time_scale_shift"] not in TIME_SCALE_SHIFTS:
        raise ValueError(f"resnet_time_scale_shift: expected one of {TIME_SCALE_SHIFTS}, "
                         f"got {cfg['resnet_time_scale_shift']!r}")
    if cfg["downsample_padding"] not in (0, 1):
        raise ValueError(f"downsample_padding: expected 0 or 1, got {cfg['downsample_padding']!r}")
    for name in ("num_class_embeds", "cross_attention_dim"):
        if cfg[name] is not None:
            _positive_int(cfg[name], name)
