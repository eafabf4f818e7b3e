"""The layers: PyTorch's parameter names, shapes and default initializations, so that a minidiff model
and its PyTorch twin exchange weights by state dict.

Initialization (PyTorch's defaults): Linear and Conv2d weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
fan_in = in_features or in_channels * kh * kw; GroupNorm and LayerNorm weight 1, bias 0. Random draws
come from the `rng` argument (a numpy.random.Generator; default a fresh unseeded one), weight first,
then bias, always in float64 and then rounded to `dtype`, so a float32 and a float64 layer built
from the same seed hold the same weights up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import FLOAT_DTYPES, Tensor
from minidiff.nn.module import Module, Parameter


def _generator(rng: Any) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def _float_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _uniform(rng: np.random.Generator, bound: float, shape: tuple[int, ...], dtype: np.dtype) -> Parameter:
    """A Parameter ~ U(-bound, bound), drawn in float64 and rounded to dtype (rounding is monotone,
    so every value stays within [-dtype(bound), dtype(bound)])."""
    return Parameter(rng.uniform(-bound, bound, size=shape).astype(dtype))


def _affine(shape: tuple[int, ...], affine: bool, bias: bool, dtype: Any) -> tuple[Parameter | None, Parameter | None]:
    """A normalization layer's (weight, bias) = (1, 0), PyTorch's initialization; None where disabled."""
    dtype = _float_dtype(dtype)
    weight = Parameter(np.ones(shape, dtype)) if affine else None
    return weight, Parameter(np.zeros(shape, dtype)) if affine and bias else None


class Linear(Module):
    """y = x W^T + b.  x (..., in_features) -> y (..., out_features).

    weight (out_features, in_features), bias (out_features,), both ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        rng, dtype = _generator(rng), _float_dtype(dtype)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = _uniform(rng, bound, (self.out_features, self.in_features), dtype)  # (out, in)
        self.bias = _uniform(rng, bound, (self.out_features,), dtype) if bias else None  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D cross-correlation, NCHW: x (N, in_channels, H, W) -> (N, out_channels, HO, WO),
    HO = (H + 2 padding - kh) // stride + 1.

    weight (out_channels, in_channels, kh, kw), bias (out_channels,), both ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = in_channels * kh * kw. kernel_size, stride and padding are ints or (height, width) pairs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 bias: bool = True, *, rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = F._pair(kernel_size, "kernel_size", 1)
        self.stride = F._pair(stride, "stride", 1)
        self.padding = F._pair(padding, "padding", 0)
        rng, dtype = _generator(rng), _float_dtype(dtype)
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        shape = (self.out_channels, self.in_channels, *self.kernel_size)  # (O, C, KH, KW)
        self.weight = _uniform(rng, bound, shape, dtype)
        self.bias = _uniform(rng, bound, (self.out_channels,), dtype) if bias else None  # (O,)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        return text if self.bias is not None else text + ", bias=False"


class GroupNorm(Module):
    """Group normalization (Wu & He 2018) of x (N, C, *): each group of C / num_groups channels is
    normalized to mean 0 and variance 1 (biased), then scaled by weight (C,) = 1 and shifted by bias (C,) = 0
    (bias=False: no shift)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 bias: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups: {num_groups} does not divide num_channels {num_channels}")
        self.eps, self.affine = float(eps), bool(affine)
        self.weight, self.bias = _affine((self.num_channels,), self.affine, bias, dtype)  # (C,), (C,)

    def forward(self, x: Tensor, *, scale: Tensor | None = None, shift: Tensor | None = None,
                activation: str | None = None) -> Tensor:
        """The normalized x; scale and shift (N, C, 1, ...) make it AdaGN [E44] and activation="silu" applies SiLU
        after, in the same kernel call (see F.group_norm)."""
        return F.group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps, scale=scale, shift=shift,
                            activation=activation)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


class LayerNorm(Module):
    """Layer normalization (Ba et al. 2016) over the trailing axes `normalized_shape`, then scaled by
    weight = 1 and shifted by bias = 0 (both of shape normalized_shape)."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype: Any = np.float32) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int | np.integer) else tuple(normalized_shape)
        if not shape:
            raise ValueError("normalized_shape: expected at least one axis, got ()")
        self.normalized_shape = tuple(_positive_int(n, "normalized_shape") for n in shape)
        self.eps, self.elementwise_affine = float(eps), bool(elementwise_affine)
        self.weight, self.bias = _affine(self.normalized_shape, self.elementwise_affine, bias, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class Dropout(Module):
    """In training mode zero each element with probability p and scale the rest by 1 / (1 - p), with
    random draws from `rng`; in eval mode the identity."""

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = _generator(rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Identity(Module):
    """y = x (a placeholder where a layer is optional)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class ReLU(Module):
    """y = max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class SiLU(Module):
    """y = x sigmoid(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class GELU(Module):
    """y = x Phi(x), Phi the standard normal CDF; approximate="tanh" for the tanh formula."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ... (so their parameters are the model's).
    Indexing with an int gives a module, with a slice a new container (sharing the modules)."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int | slice) -> Any:
        members = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(members[index])
        if not isinstance(index, int | np.integer) or not -len(members) <= index < len(members):
            raise IndexError(f"index: expected an int in [-{len(members)}, {len(members)}) or a slice, got {index!r}")
        return members[index]


class Sequential(ModuleList):
    """Modules applied in order: Sequential(a, b, c)(x) = c(b(a(x))). Children are named "0", "1", ...;
    a slice is a new Sequential of the same modules, renumbered from "0" (PyTorch keeps the old names)."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def __getitem__(self, index: int | slice) -> Any:
        return Sequential(*super().__getitem__(index)) if isinstance(index, slice) else super().__getitem__(index)

    def forward(self, x: Any) -> Any:
        for module in self:
            x = module(x)
        return x
