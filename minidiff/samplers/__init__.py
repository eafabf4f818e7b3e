"""Samplers: from noise to data with a trained (or exact) model, in diffusers' vocabulary."""

from minidiff.samplers.base import Sampler, SamplerOutput, spaced_timesteps
from minidiff.samplers.registry import from_config

__all__ = ["Sampler", "SamplerOutput", "from_config", "spaced_timesteps"]
