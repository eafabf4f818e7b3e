"""Which minidiff sampler speaks which diffusers scheduler's config."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

# diffusers class name -> (module, minidiff class)
DIFFUSERS_CLASSES = {
    "DDPMScheduler": ("minidiff.samplers.ddpm", "DDPMSampler"),
    "DDIMScheduler": ("minidiff.samplers.ddim", "DDIMSampler"),
    "DPMSolverMultistepScheduler": ("minidiff.samplers.dpm_solver", "DPMSolverMultistepSampler"),
    "EulerDiscreteScheduler": ("minidiff.samplers.edm", "EulerSampler"),
    "HeunDiscreteScheduler": ("minidiff.samplers.edm", "HeunSampler"),
    "EulerAncestralDiscreteScheduler": ("minidiff.samplers.edm", "EulerAncestralSampler"),
    "FlowMatchEulerDiscreteScheduler": ("minidiff.samplers.flow", "FlowMatchEulerSampler"),
    "FlowMatchHeunDiscreteScheduler": ("minidiff.samplers.flow", "FlowMatchHeunSampler"),
}


def sampler_class(class_name: Any) -> Any:
    """The minidiff sampler class for a diffusers scheduler class name."""
    if class_name not in DIFFUSERS_CLASSES:
        raise ValueError(f"_class_name: minidiff implements {', '.join(DIFFUSERS_CLASSES)}; got {class_name!r}")
    module, name = DIFFUSERS_CLASSES[class_name]
    return getattr(importlib.import_module(module), name)


def from_config(config: Mapping[str, Any]) -> Any:
    """The sampler a diffusers `scheduler_config.json` (as a dict) names in its `_class_name`."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict of a diffusers scheduler config, got {type(config).__name__}")
    if "_class_name" not in config:
        raise ValueError("_class_name: the config does not say which scheduler it is for; use XSampler.from_config")
    return sampler_class(config["_class_name"]).from_config(config)
