"""Argument checks at the Python boundary of every kernel.

Each check raises TypeError (wrong kind or dtype) or ValueError (wrong shape, layout or value) with a
message that names the argument and says what was expected.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidiff.backend import array_module  # noqa: F401 (re-exported: the kernels' xp = _checks.array_module(x))

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_array(a: object) -> bool:
    """A NumPy or CuPy ndarray (anything else is refused, not converted)."""
    return isinstance(a, np.ndarray) or type(a).__module__.startswith("cupy")


def c_contiguous(a: Any) -> Any:
    """`a` itself when C-contiguous, else a C-ordered copy (0-d stays 0-d, unlike ascontiguousarray)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def float_array(a: Any, name: str) -> Any:
    if not is_array(a):
        raise TypeError(f"{name}: expected a numpy.ndarray (float32 or float64), got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    return a


def like(a: Any, name: str, ref: Any, ref_name: str) -> Any:
    """`a` is an array with the dtype and shape of `ref`."""
    if not is_array(a):
        raise TypeError(f"{name}: expected a numpy.ndarray like {ref_name}, got {type(a).__name__}")
    if a.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {a.dtype}")
    if a.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {ref.shape} (the shape of {ref_name}), got {a.shape}")
    return a


def out_array(out: Any, name: str, ref: Any, ref_name: str, inputs: dict[str, Any]) -> Any:
    """A destination the kernel can write in place: like `ref`, C-contiguous, writeable, and either
    disjoint from each input or the very same array (elementwise kernels may run in place)."""
    like(out, name, ref, ref_name)
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (a copy would hide the result from you)")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array")
    for in_name, a in inputs.items():
        if a is None or not isinstance(a, np.ndarray) or not np.may_share_memory(out, a):
            continue
        same = a.ctypes.data == out.ctypes.data and a.strides == out.strides
        if not same:
            raise ValueError(f"{name}: overlaps {in_name} without being the same array; pass a separate out")
    return out


def finite(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    return float(v)
