"""Chapter 00 exercises.

Generated from the reference code by `python -m minidiff exercises`; regenerating overwrites
this file. Replace each `raise NotImplementedError` by your solution, then grade it:
    pytest --student -m ch00
"""

from __future__ import annotations

import numpy as np
from minidiff.kernels.sampler_step import StepCoefs


# Exercise 0.1 (reference: minidiff.kernels.sampler_step.sampler_step_ref)
def sampler_step_ref(x: np.ndarray, eps: np.ndarray, z: np.ndarray | None, coefs: StepCoefs,
                     out: np.ndarray) -> np.ndarray:
    """NumPy reference twin: the same update, one operator at a time, written into out."""
    raise NotImplementedError("Exercise 0.1: the affine part, plus the clipped x0 term when coefs.clip is set")
    out[...] = x_prev
    return out
