"""Samplers: from noise to data with a trained (or exact) model.

The discrete-schedule samplers speak diffusers' vocabulary: each is built from a NoiseSchedule plus
options, or from a diffusers scheduler config (`XSampler.from_config(dict)`, or `from_config(dict)`,
which reads `_class_name`), and has `set_timesteps`, `step`, `scale_model_input`, `add_noise` and a
`sample` loop. minidiff's timesteps are t = 1..T, diffusers' k = t - 1 (see base.py).

  DDPMSampler                ancestral sampling (E16), any spaced sub-sequence     DDPMScheduler
  DDIMSampler                DDIM (E32), inversion (E33); slerp                  DDIMScheduler
  DPMSolverMultistepSampler  DPM-Solver++ 1M/2M/3M (E35)                         DPMSolverMultistepScheduler
  EulerSampler, HeunSampler, EulerAncestralSampler   sigma-space ODE/SDE steps   Euler*/HeunDiscreteScheduler
  EDMHeunSampler             Karras et al.'s Heun sampler on a denoiser (E36)
  FlowMatchEulerSampler, FlowMatchHeunSampler        flow matching (E38)         FlowMatch*DiscreteScheduler
  LangevinSampler, AnnealedLangevinSampler           Langevin (E25), NCSN (E28), on a score function
  EulerMaruyamaSampler, PredictorCorrectorSampler, ProbabilityFlowODE   the SDEs of minidiff.sde (E30, E31)
"""

from minidiff.samplers.base import Sampler, SamplerOutput, spaced_timesteps
from minidiff.samplers.ddim import DDIMSampler, slerp
from minidiff.samplers.ddpm import DDPMSampler
from minidiff.samplers.dpm_solver import DPMSolverMultistepSampler
from minidiff.samplers.edm import EDMHeunSampler, EulerAncestralSampler, EulerSampler, HeunSampler
from minidiff.samplers.flow import FlowMatchEulerSampler, FlowMatchHeunSampler
from minidiff.samplers.langevin import AnnealedLangevinSampler, LangevinSampler, geometric_sigmas, langevin_dynamics
from minidiff.samplers.registry import from_config
from minidiff.samplers.sde import (
    EulerMaruyamaSampler,
    PredictorCorrectorSampler,
    ProbabilityFlowODE,
    simulate_forward_sde,
)
from minidiff.samplers.sigmas import edm_denoiser, edm_preconditioning, edm_sigmas, karras_sigmas

__all__ = [
    "AnnealedLangevinSampler",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverMultistepSampler",
    "EDMHeunSampler",
    "EulerAncestralSampler",
    "EulerMaruyamaSampler",
    "EulerSampler",
    "FlowMatchEulerSampler",
    "FlowMatchHeunSampler",
    "HeunSampler",
    "LangevinSampler",
    "PredictorCorrectorSampler",
    "ProbabilityFlowODE",
    "Sampler",
    "SamplerOutput",
    "edm_denoiser",
    "edm_preconditioning",
    "edm_sigmas",
    "from_config",
    "geometric_sigmas",
    "karras_sigmas",
    "langevin_dynamics",
    "simulate_forward_sde",
    "slerp",
    "spaced_timesteps",
]
