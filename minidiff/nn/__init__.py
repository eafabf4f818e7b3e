"""Neural-network building blocks: Module and Parameter, and layers with PyTorch's parameter names,
shapes and default initializations (a minidiff model and its PyTorch twin exchange state dicts)."""

from minidiff.nn.attention import CrossAttention, SelfAttention2d
from minidiff.nn.classifier import NoisyClassifier
from minidiff.nn.embedding import Embedding, SinusoidalTimestepEmbedding, TimestepEmbedding, timestep_embedding
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
from minidiff.nn.mlp import MLPDenoiser
from minidiff.nn.module import IncompatibleKeys, Module, Parameter
from minidiff.nn.unet import Downsample2D, ResBlock, UNet, Upsample2D

__all__ = [
    "GELU",
    "Conv2d",
    "CrossAttention",
    "Downsample2D",
    "Dropout",
    "Embedding",
    "GroupNorm",
    "Identity",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "MLPDenoiser",
    "Module",
    "ModuleList",
    "NoisyClassifier",
    "Parameter",
    "ReLU",
    "ResBlock",
    "SelfAttention2d",
    "Sequential",
    "SiLU",
    "SinusoidalTimestepEmbedding",
    "TimestepEmbedding",
    "UNet",
    "Upsample2D",
    "timestep_embedding",
]
