"""Argument checks for the diffusion math.

Each check raises TypeError (wrong kind or dtype) or ValueError (wrong shape or value) with a message
that names the argument and says what was expected. Array checks for data the library creates
(x0, noise) are strict (a float32 or float64 numpy array); checks on what a model returns only look
at the shape, so that an autodiff Tensor passes too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff.backend import array_module
from minidiff.kernels._checks import FLOAT_DTYPES, finite, float_array, like

__all__ = ["broadcasts_to", "choice", "finite", "float_array", "float_dtype", "like", "noise_for", "same_shape",
           "shape_of", "timesteps"]


def shape_of(a: Any) -> tuple[int, ...]:
    """The shape of a numpy array, an autodiff Tensor or anything with a `.shape`."""
    shape = getattr(a, "shape", None)
    if shape is None:
        raise TypeError(f"expected an array with a shape, got {type(a).__name__}")
    return tuple(shape)


def float_dtype(a: Any) -> np.dtype:
    """The dtype coefficients are cast to for `a`: its own when float32/float64, else float64."""
    dtype = np.dtype(getattr(a, "dtype", np.float64))
    return dtype if dtype in FLOAT_DTYPES else np.dtype(np.float64)


def same_shape(a: Any, name: str, ref: Any, ref_name: str) -> Any:
    """`a` has the shape of `ref` (any array type with a .shape)."""
    try:
        shape = shape_of(a)
    except TypeError:
        raise TypeError(f"{name}: expected an array of the shape of {ref_name}, got {type(a).__name__}") from None
    if shape != shape_of(ref):
        raise ValueError(f"{name}: expected shape {shape_of(ref)} (the shape of {ref_name}), got {shape}")
    return a


def broadcasts_to(value: Any, name: str, shape: tuple[int, ...], what: str) -> None:
    """`value` (an array or a number) broadcasts to `shape` without changing it."""
    try:
        ok = np.broadcast_shapes(np.shape(value), shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected a shape that broadcasts to {what} {tuple(shape)}, got {np.shape(value)}")


def timesteps(t: Any, T: int, name: str = "t") -> np.ndarray:
    """`t` as an int64 array, 0-d (one timestep for all) or 1-d (one per example), every value in 1..T."""
    if isinstance(t, (bool, np.bool_)):
        raise TypeError(f"{name}: expected integer timesteps in 1..{T}, got a bool")
    if isinstance(t, (int, np.integer)):
        arr = np.asarray(t, dtype=np.int64)
    elif isinstance(t, np.ndarray):
        if t.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer timesteps in 1..{T}, got dtype {t.dtype}")
        if t.ndim > 1:
            raise ValueError(f"{name}: expected an int or a 1-d array (one timestep per example), got shape {t.shape}")
        arr = t.astype(np.int64)
    else:
        raise TypeError(f"{name}: expected an int or an integer numpy array of timesteps in 1..{T}, "
                        f"got {type(t).__name__}")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        bad = arr[(arr < 1) | (arr > T)].ravel()[0]
        raise ValueError(f"{name}: expected timesteps in 1..{T} (t = 0 is the data itself), got {bad}")
    return arr


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def noise_for(x: np.ndarray, x_name: str, noise: Any, rng: Any, noise_name: str = "noise") -> np.ndarray:
    """The standard normal noise of a draw: `noise` itself (checked like x), or fresh from `rng`.

    Exactly one of the two must be given: every random draw in minidiff is explicit.
    """
    if noise is not None and rng is not None:
        raise ValueError(f"{noise_name}: pass either {noise_name} or rng, not both")
    if noise is not None:
        return like(noise, noise_name, x, x_name)
    if rng is None:
        raise ValueError(f"rng: pass a numpy.random.Generator (or the {noise_name} itself); "
                         "minidiff never draws from a hidden global generator")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return array_module(x).asarray(rng.standard_normal(x.shape, dtype=x.dtype))  # where x lives (host or GPU)
