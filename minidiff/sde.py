"""The continuous-time SDEs of Song et al. 2021 ([E29]), as `md.sde.VPSDE`, `md.sde.VESDE`, `md.sde.SubVPSDE`.

They live in minidiff.diffusion.sde with the reverse-time SDE [E30] and the probability flow ODE [E31]; the
samplers that use them are in minidiff.samplers.sde, the likelihood [E34] in minidiff.diffusion.likelihood.
"""

from minidiff.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE"]
