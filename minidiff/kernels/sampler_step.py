"""The fused sampler update, the first hot kernel and the template for the others.

Every DDPM step (E16) and DDIM step (E32) is, given the timestep's scalars, one affine combination of
the current sample x, the model output eps and fresh noise z:

    x_prev = c_x * x + c_eps * eps + c_z * z

An optional clip of the x0 estimate (E13) to [-clip, clip] adds one non-affine term:

    x0_hat = clip(r_x * x + r_eps * eps, -clip, clip)
    x_prev = c_x * x + c_eps * eps + c_z * z + c_x0 * x0_hat

(With an eps model, r_x = 1 / sqrt(alpha_bar_t) and r_eps = -sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t);
a v or x0 model only changes r_x and r_eps.) Fusing it reads each input once and writes once, where
NumPy makes a temporary per operator.

Implementations, all with the arguments (x, eps, z, coefs, out):
    sampler_step_ref    NumPy, the reference twin (exercise 11.4)
    _cpp                csrc/cpu/sampler.cpp, an OpenMP loop over csrc/include/minidiff/sampler.h
    _cuda, _cuda_emu    csrc/cuda/sampler_step.cu on a GPU, or on the CPU under cuda_emu.h
and `sampler_step`, which checks its arguments and runs the one of the current backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minidiff import backend as _backend
from minidiff.exercise_tools import exercise
from minidiff.kernels import _checks, _cuda


@dataclass(frozen=True)
class StepCoefs:
    """The scalars of one step: x_prev = c_x x + c_eps eps + c_z z [+ c_x0 clip(r_x x + r_eps eps)].

    `clip` is the bound of the x0 clip, or None for the purely affine step (then c_x0, r_x and r_eps
    are unused). Mirrors md::StepCoefs in csrc/include/minidiff/sampler.h.
    """

    c_x: float
    c_eps: float
    c_z: float = 0.0
    c_x0: float = 0.0
    r_x: float = 0.0
    r_eps: float = 0.0
    clip: float | None = None

    def __post_init__(self) -> None:
        for field in ("c_x", "c_eps", "c_z", "c_x0", "r_x", "r_eps"):
            object.__setattr__(self, field, _checks.finite(getattr(self, field), f"coefs.{field}"))
        if self.clip is not None:
            bound = _checks.finite(self.clip, "coefs.clip")
            if bound <= 0:
                raise ValueError(f"coefs.clip: expected a positive bound or None, got {bound}")
            object.__setattr__(self, "clip", bound)


def sampler_step(x: Any, eps: Any, z: Any, coefs: StepCoefs, out: Any = None) -> Any:
    """x_prev = c_x x + c_eps eps + c_z z [+ c_x0 clip(r_x x + r_eps eps, -clip, clip)], elementwise.

    x, eps, z: arrays of one shape and dtype (float32 or float64); z may be None when c_z == 0.
    out: optional C-contiguous destination of that shape and dtype; it may be x or eps (in place).
    Returns out (a new array when out is None). Runs on the current backend (minidiff.get_backend()).
    """
    x = _checks.float_array(x, "x")
    _checks.like(eps, "eps", x, "x")
    if z is not None:
        _checks.like(z, "z", x, "x")
    if not isinstance(coefs, StepCoefs):
        raise TypeError(f"coefs: expected a minidiff.kernels.StepCoefs, got {type(coefs).__name__}")
    if z is None and coefs.c_z != 0.0:
        raise ValueError(f"z: is None but coefs.c_z = {coefs.c_z}; pass the noise, or c_z = 0")
    if out is None:
        out = _checks.array_module(x).empty(x.shape, x.dtype)
    else:
        _checks.out_array(out, "out", x, "x", {"x": x, "eps": eps, "z": z})
    return _IMPLEMENTATIONS[_backend.get_backend()](x, eps, z, coefs, out)


@exercise("ex11.4")
def sampler_step_ref(x: np.ndarray, eps: np.ndarray, z: np.ndarray | None, coefs: StepCoefs,
                     out: np.ndarray) -> np.ndarray:
    """NumPy reference twin: the same update, one operator at a time, written into out."""
    # BEGIN SOLUTION ex11.4: the affine part, plus the clipped x0 term when coefs.clip is set
    x_prev = coefs.c_x * x + coefs.c_eps * eps  # (...) same shape as x
    if z is not None:
        x_prev = x_prev + coefs.c_z * z
    if coefs.clip is not None:
        x0_hat = np.clip(coefs.r_x * x + coefs.r_eps * eps, -coefs.clip, coefs.clip)
        x_prev = x_prev + coefs.c_x0 * x0_hat
    # END SOLUTION
    out[...] = x_prev
    return out


def _cpp(x: np.ndarray, eps: np.ndarray, z: np.ndarray | None, coefs: StepCoefs, out: np.ndarray) -> np.ndarray:
    # The C++ loop walks flat buffers: strided inputs are copied once (out is contiguous by contract).
    x, eps = _checks.c_contiguous(x), _checks.c_contiguous(eps)
    z = None if z is None else _checks.c_contiguous(z)
    c = coefs
    _backend.extension().sampler_step(
        x, eps, z, out, c.c_x, c.c_eps, c.c_z, c.c_x0, c.r_x, c.r_eps, c.clip or 0.0, c.clip is not None
    )
    return out


def _on_cuda(backend: str) -> Any:
    def run(x: Any, eps: Any, z: Any, coefs: StepCoefs, out: Any) -> Any:
        has_z = z is not None
        x, eps = _checks.c_contiguous(x), _checks.c_contiguous(eps)
        z = _checks.c_contiguous(z) if has_z else x  # an unread placeholder when has_z = 0
        scalar = x.dtype.type
        c = coefs
        args = (x, eps, z, out, np.int64(x.size),
                *(scalar(v) for v in (c.c_x, c.c_eps, c.c_z, c.c_x0, c.r_x, c.r_eps, c.clip or 0.0)),
                np.int32(has_z), np.int32(c.clip is not None))
        grid, block = _cuda.launch_config_1d(x.size)
        kernel = f"sampler_step_kernel<{_cuda.ctype(x.dtype)}>"
        _cuda.launch(backend, "sampler_step.cu", kernel, grid, block, args, writes=(3,))
        return out

    return run


_IMPLEMENTATIONS = {
    "numpy": sampler_step_ref,
    "cpp": _cpp,
    "cuda": _on_cuda("cuda"),
    "cuda-emu": _on_cuda("cuda-emu"),
}
