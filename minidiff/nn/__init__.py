"""Neural-network building blocks: Module and Parameter, and layers with PyTorch's parameter names,
shapes and default initializations (a minidiff model and its PyTorch twin exchange state dicts)."""

from minidiff.nn.layers import (
    GELU,
    Conv2d,
    Dropout,
    GroupNorm,
    Identity,
    LayerNorm,
    Linear,
    ModuleList,
    ReLU,
    Sequential,
    SiLU,
)
from minidiff.nn.module import IncompatibleKeys, Module, Parameter

__all__ = [
    "GELU",
    "Conv2d",
    "Dropout",
    "GroupNorm",
    "Identity",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "SiLU",
]
