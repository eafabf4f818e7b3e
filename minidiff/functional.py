"""The differentiable operations users call, with PyTorch's names and argument order
(torch.nn.functional). Each checks its arguments, then applies a Function whose forward and backward
sit side by side; the heavy ones (conv2d, attention, group_norm) call minidiff.kernels, so compiled
kernels plug in there without touching the autodiff.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from minidiff.autodiff import ops
from minidiff.autodiff.function import Context, Function, sum_to_shape
from minidiff.autodiff.tensor import Tensor
from minidiff.backend import array_module, as_array
from minidiff.kernels import attention as _attention
from minidiff.kernels import conv2d as _conv2d
from minidiff.kernels import group_norm as _group_norm
from minidiff.kernels import softmax as _softmax

# --- argument checks --------------------------------------------------------------------------------


def _tensor(x: Any, name: str, ndim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a minidiff Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    return x


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int | np.integer) else tuple(v)
    if len(pair) != 2 or any(not isinstance(p, int | np.integer) or p < minimum for p in pair):
        raise ValueError(f"{name}: expected an int >= {minimum} or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


# --- activations ------------------------------------------------------------------------------------


def relu(x: Tensor) -> Tensor:
    return ops.Relu.apply(x)


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (also called swish)."""
    return ops.Silu.apply(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x); approximate="tanh" uses the tanh formula, as torch.nn.functional.gelu."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return ops.Gelu.apply(x, approximate=approximate)


def sigmoid(x: Tensor) -> Tensor:
    return ops.Sigmoid.apply(x)


def tanh(x: Tensor) -> Tensor:
    return ops.Tanh.apply(x)


# --- softmax and losses -------------------------------------------------------------------------------


class Softmax(Function):
    """s = exp(x - max x) / sum exp(x - max x) along an axis;  d/dx: grad_x = s (g - sum(g s))."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: int = -1) -> np.ndarray:
        s = _softmax.softmax(x, axis)
        ctx.save(s, axis)
        return s

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        s, axis = ctx.saved
        return _softmax.softmax_backward(grad, s, axis)


class LogSoftmax(Function):
    """l = x - logsumexp(x) along an axis;  d/dx: grad_x = g - softmax(x) sum(g)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: int = -1) -> np.ndarray:
        out = _softmax.log_softmax(x, axis)
        ctx.save(out, axis)
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        out, axis = ctx.saved
        return _softmax.log_softmax_backward(grad, out, axis)


def _along_axis(op: type[Function], x: Tensor, axis: int) -> Tensor:
    """op along `axis`; a 0-d x (axis 0 or -1, as in PyTorch) is normalized as a vector of one element."""
    _tensor(x, "x")
    if x.ndim == 0 and not isinstance(axis, bool) and axis in (0, -1):
        return op.apply(x.reshape(1), axis=0).reshape(())
    return op.apply(x, axis=axis)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return _along_axis(Softmax, x, axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    return _along_axis(LogSoftmax, x, axis)


REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """-log softmax(logits)[target] per row. logits (N, C), target (N,) integer class indices."""
    _tensor(logits, "logits", ndim=2)
    _check_reduction(reduction)
    target = as_array(target.data if isinstance(target, Tensor) else target)
    if target.dtype.kind not in "iu" or target.shape != logits.shape[:1]:
        raise ValueError(f"target: expected integer class indices of shape {logits.shape[:1]}, "
                         f"got dtype {target.dtype} shape {target.shape}")
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"target: class indices must be in [0, {logits.shape[1]}), got {target.min()}..{target.max()}")
    xp = array_module(logits.data)  # the indices go where the logits are
    picked = log_softmax(logits, axis=1)[xp.arange(len(target)), xp.asarray(target)]  # (N,)
    return _reduce(-picked, reduction)


def mse_loss(prediction: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """(prediction - target)^2, averaged (or summed) over every element."""
    _check_reduction(reduction)
    if np.shape(target.data if isinstance(target, Tensor) else target) != prediction.shape:
        raise ValueError(f"target: expected shape {prediction.shape} (the prediction's), got {np.shape(target)}")
    if not isinstance(target, Tensor):
        target = as_array(target, prediction.dtype)  # a constant takes the prediction's dtype
    diff = prediction - target
    return _reduce(diff * diff, reduction)


# --- linear layers and convolution --------------------------------------------------------------------


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight^T + bias. x (..., in), weight (out, in), bias (out,)."""
    _tensor(weight, "weight", ndim=2)
    if x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"x: expected last axis {weight.shape[1]} (weight is {weight.shape}), got shape {x.shape}")
    out = x @ weight.T
    return out if bias is None else out + bias


class Conv2d(Function):
    """out = x (*) weight + bias, NCHW. The gradients come from the kernel module's backward twin;
    grad_bias = sum of grad over N, H, W."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
        ctx.save(x, weight, stride, padding)
        out = _conv2d.conv2d_forward(x, weight, stride, padding)  # (N, O, HO, WO), a new array
        if bias is None:
            return out
        bias = bias.reshape(1, -1, 1, 1)
        if np.result_type(out.dtype, bias.dtype) != out.dtype:
            return out + bias  # promoted to bias's dtype
        out += bias  # in place: a second (N, O, HO, WO) array cost a pass and its page faults
        return out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, ...]:
        x, weight, stride, padding = ctx.saved
        grad_x, grad_weight = _conv2d.conv2d_backward(grad, x, weight, stride, padding,
                                                      needs_input_grad=ctx.needs_input_grad[:2])
        grad_bias = grad.sum(axis=(0, 2, 3)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0) -> Tensor:
    """2-D cross-correlation. x (N, C, H, W), weight (O, C, KH, KW), bias (O,) -> (N, O, HO, WO),
    HO = (H + 2 padding - KH) // stride + 1."""
    _tensor(x, "x", ndim=4)
    _tensor(weight, "weight", ndim=4)
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected {x.shape[1]} input channels (x has {x.shape[1]}), got shape {weight.shape}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias: expected shape {weight.shape[:1]}, got {bias.shape}")
    for size, k, p, name in zip(x.shape[2:], weight.shape[2:], padding, ("height", "width"), strict=True):
        if size + 2 * p < k:
            raise ValueError(f"x: padded {name} {size + 2 * p} is smaller than the kernel ({k})")
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding)


class AvgPool2d(Function):
    """out = mean of each kernel window (no padding);  every pixel of a window gets grad / (kh kw)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
        ctx.save(x.shape, kernel, stride)
        return _conv2d.windows(x, kernel, stride, (0, 0)).mean(axis=(4, 5))

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        shape, (kh, kw), stride = ctx.saved
        grad_windows = np.broadcast_to((grad / (kh * kw))[..., None, None], (*grad.shape, kh, kw))
        return _conv2d.scatter_windows(grad_windows, shape, stride, (0, 0))


def avg_pool2d(x: Tensor, kernel_size: Any, stride: Any = None) -> Tensor:
    """Average over kernel_size windows, stride defaulting to kernel_size (x (N, C, H, W))."""
    _tensor(x, "x", ndim=4)
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    if x.shape[2] < kernel[0] or x.shape[3] < kernel[1]:
        raise ValueError(f"x: spatial size {x.shape[2:]} is smaller than the kernel {kernel}")
    return AvgPool2d.apply(x, kernel=kernel, stride=stride)


class UpsampleNearest2d(Function):
    """out[n, c, y, x] = x[n, c, y // s, x // s];  each input pixel gets the sum of its s*s copies."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, scale: int) -> np.ndarray:
        ctx.save(scale)
        return x.repeat(scale, axis=2).repeat(scale, axis=3)

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray:
        (s,) = ctx.saved
        n, c, h, w = grad.shape
        return grad.reshape(n, c, h // s, s, w // s, s).sum(axis=(3, 5))


def upsample_nearest2d(x: Tensor, scale_factor: int = 2) -> Tensor:
    _tensor(x, "x", ndim=4)
    if not isinstance(scale_factor, int | np.integer) or scale_factor < 1:
        raise ValueError(f"scale_factor: expected a positive int, got {scale_factor!r}")
    return UpsampleNearest2d.apply(x, scale=int(scale_factor))


# --- normalization ------------------------------------------------------------------------------------


class GroupNorm(Function):
    """y = act((x_hat * weight + bias) (1 + scale) + shift), x_hat normalized over each group of channels (AdaGN
    [E44] with scale and shift). The kernel keeps each group's mean and rstd; its backward recomputes x_hat from x."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
                scale: np.ndarray | None, shift: np.ndarray | None, num_groups: int, eps: float,
                activation: str | None) -> np.ndarray:
        y, mean, rstd = _group_norm.group_norm_forward(x, num_groups, weight, bias, eps, scale, shift, activation)
        ctx.save(x, mean, rstd, weight, bias, scale, shift, num_groups, activation)
        return y

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, ...]:
        x, mean, rstd, weight, bias, scale, shift, num_groups, activation = ctx.saved
        # (grad_x, grad_weight, grad_bias, grad_scale, grad_shift)
        return _group_norm.group_norm_backward(grad, x, mean, rstd, num_groups, weight, bias, scale, shift, activation)


def group_norm(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5, *, scale: Tensor | None = None, shift: Tensor | None = None,
               activation: str | None = None) -> Tensor:
    """Group normalization (Wu & He 2018): x (N, C, *), C divisible by num_groups; weight, bias (C,).

    With the U-Net's epilogue fused in, one kernel call: scale and shift (N, C) or (N, C, 1, ...) make it AdaGN
    [E44], (x_hat * weight + bias) (1 + scale) + shift; activation="silu" applies SiLU to the result. So
    group_norm(x, G, w, b, scale=s, shift=t, activation="silu") is silu(adaptive_group_norm(group_norm(x, G, w, b),
    s, t)) (minidiff.nn.unet.adaptive_group_norm) without the intermediate arrays."""
    _tensor(x, "x")
    return GroupNorm.apply(x, weight, bias, scale, shift, num_groups=num_groups, eps=eps, activation=activation)


class LayerNorm(Function):
    """y = x_hat * weight + bias elementwise, x_hat normalized over the trailing normalized_shape."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, m: int,
                eps: float) -> np.ndarray:
        x_hat, _, rstd = _group_norm.normalize_rows_ref(x.reshape(-1, m), eps)
        x_hat = x_hat.reshape(x.shape)
        ctx.save(x_hat, rstd, weight, m, None if bias is None else bias.shape)
        y = x_hat if weight is None else x_hat * weight
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, ...]:
        x_hat, rstd, weight, m, bias_shape = ctx.saved
        grad_x_hat = grad if weight is None else grad * weight
        grad_x = _group_norm.normalize_rows_backward_ref(grad_x_hat.reshape(-1, m), x_hat.reshape(-1, m), rstd)
        grad_weight = sum_to_shape(grad * x_hat, weight.shape) if weight is not None else None
        grad_bias = sum_to_shape(grad, bias_shape) if bias_shape is not None else None
        return grad_x.reshape(grad.shape), grad_weight, grad_bias


def layer_norm(x: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Layer normalization (Ba et al. 2016) over the trailing axes normalized_shape; weight, bias of that shape."""
    _tensor(x, "x")
    shape = (normalized_shape,) if isinstance(normalized_shape, int | np.integer) else tuple(normalized_shape)
    if not shape or x.shape[-len(shape):] != shape:
        raise ValueError(f"normalized_shape: expected the trailing axes of x {x.shape}, got {shape}")
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None and p.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {p.shape}")
    return LayerNorm.apply(x, weight, bias, m=math.prod(shape), eps=float(eps))


# --- attention ---------------------------------------------------------------------------------------


class ScaledDotProductAttention(Function):
    """out = softmax(Q K^T scale, masked) V. The backward runs on what the forward's kernel kept: the probabilities
    (NumPy) or each row's log-sum-exp (C++, flash-attention style)."""

    @staticmethod
    def forward(ctx: Context, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                scale: float) -> np.ndarray:
        result = _attention.attention_forward(q, k, v, mask, scale)
        ctx.save(q, k, v, mask, result, scale)
        return result.out

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> tuple[Any, ...]:
        q, k, v, mask, result, scale = ctx.saved
        grad_q, grad_k, grad_v = _attention.attention_backward(grad, q, k, v, mask, result, scale)
        return (sum_to_shape(grad_q, q.shape), sum_to_shape(grad_k, k.shape), sum_to_shape(grad_v, v.shape), None)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Any = None,
                                 scale: float | None = None) -> Tensor:
    """[E45] Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V over the last two axes.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); leading axes broadcast. mask: boolean,
    broadcastable to (..., Lq, Lk), True where a query may attend to a key. scale defaults to 1/sqrt(d).
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _tensor(t, name)
        if t.ndim < 2:
            raise ValueError(f"{name}: expected (..., L, d), got shape {t.shape}")
    if mask is not None:  # its dtype and shape, and the sizes of q, k, v, are checked by the kernel
        mask = as_array(mask.data if isinstance(mask, Tensor) else mask)
    if scale is None and q.shape[-1] == 0:
        raise ValueError(f"scale: q has feature size 0 (shape {q.shape}), so there is no default 1/sqrt(d); pass one")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return ScaledDotProductAttention.apply(q, k, v, mask, scale=scale)


# --- indexing, randomness, shapes ----------------------------------------------------------------------


def embedding(indices: Any, weight: Tensor) -> Tensor:
    """weight[indices]: rows of a (num_embeddings, dim) table; repeated indices add their gradients."""
    _tensor(weight, "weight", ndim=2)
    idx = as_array(indices.data if isinstance(indices, Tensor) else indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices: expected integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        raise ValueError(f"indices: expected values in [0, {weight.shape[0]}), got {idx.min()}..{idx.max()}")
    return weight[array_module(weight.data).asarray(idx)]  # the indices go where the table is


def dropout(x: Tensor, p: float, training: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p); identity when not training."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a probability in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng: dropout draws random numbers; pass a numpy.random.Generator")
    keep = rng.random(x.shape) >= p  # drawn on the host (explicit randomness), then moved to x's device
    return x * array_module(x.data).asarray((keep / (1.0 - p)).astype(x.dtype))


def pad(x: Tensor, widths: Sequence[tuple[int, int]], value: float = 0.0) -> Tensor:
    """Constant padding: widths has one (before, after) pair per axis of x."""
    return ops.Pad.apply(x, widths=tuple((int(a), int(b)) for a, b in widths), value=value)


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    if not tensors:
        raise ValueError("tensors: expected at least one tensor")
    return ops.Concat.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    if not tensors:
        raise ValueError("tensors: expected at least one tensor")
    return ops.Stack.apply(*tensors, axis=axis)


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """a where condition (a boolean array) else b; gradients flow to the chosen side."""
    return ops.Where.apply(as_array(condition.data if isinstance(condition, Tensor) else condition), a, b)


def clip(x: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    return ops.Clip.apply(x, low=low, high=high)
