"""Running a diffusers scheduler and a minidiff sampler side by side on the same model and noise.

The model is deterministic and nonlinear (so that an eps read as x0, or a sigma read as an alpha, is
caught) and is written once for both counts of time: diffusers calls it with its k = 0..T-1 (float
for sigma-based schedulers), minidiff with t = k + 1. `noises[i]` is the noise of step i (used only by
stochastic steps). Both runs are in float64; diffusers keeps its schedule in float32, so they agree to
float32 tolerance.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch


def model_k(x: np.ndarray, k) -> np.ndarray:
    """A smooth nonlinear function of the sample and diffusers' timestep k."""
    k = np.asarray(k, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    return x * (k + 1.0) / (k + 2.0) + 0.1 * np.sin(3.0 * x) * (1.0 + k / 1000.0)


def model_t(x: np.ndarray, t) -> np.ndarray:
    """The same model in minidiff's count of time, t = k + 1."""
    return model_k(x, np.asarray(t, dtype=np.float64) - 1.0)


def run_diffusers(scheduler, x_T: np.ndarray, noises: list[np.ndarray], learned_range: bool = False,
                  step_kwargs: dict | None = None):
    """(samples after every step, x0 estimates) of a diffusers scheduler whose timesteps are set.

    learned_range: the model returns 2C channels (prediction, then a variance value in [-1, 1]).
    step_kwargs: more arguments of `scheduler.step` (DDIM's eta, use_clipped_model_output)."""
    x = torch.from_numpy(x_T.copy())
    samples, x0s = [x_T.copy()], []
    for i, k in enumerate(scheduler.timesteps):
        inp = scheduler.scale_model_input(x, k)
        out = model_k(inp.numpy(), float(k))
        if learned_range:
            out = np.concatenate([out, np.tanh(inp.numpy())], axis=1)
        noise = torch.from_numpy(noises[i].copy())
        with fixed_noise(scheduler, noise):
            result = scheduler.step(torch.from_numpy(out), k, x, **(step_kwargs or {}))
        x = result.prev_sample
        samples.append(x.numpy().copy())
        x0 = getattr(result, "pred_original_sample", None)
        x0s.append(None if x0 is None else x0.numpy().copy())
    return samples, x0s


@contextlib.contextmanager
def fixed_noise(scheduler, noise: torch.Tensor):
    """Inside the block, the scheduler's module draws `noise` wherever it would call randn_tensor."""
    module = sys.modules[type(scheduler).__module__]
    original = getattr(module, "randn_tensor", None)
    module.randn_tensor = lambda shape, **kwargs: noise.reshape(shape).to(kwargs.get("dtype") or noise.dtype)
    try:
        yield
    finally:
        if original is not None:
            module.randn_tensor = original
