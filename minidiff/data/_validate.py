"""Argument checks for the datasets and the loader: TypeError for a wrong kind, ValueError for a wrong value,
each naming the argument and what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff.diffusion._validate import choice, finite

__all__ = ["choice", "flag", "float_dtype", "generator", "non_negative", "positive_int"]


def generator(rng: Any, name: str = "rng", optional: bool = False) -> np.random.Generator | None:
    """`rng` is a numpy Generator (or None, when `optional`)."""
    if rng is None and optional:
        return None
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def non_negative(value: Any, name: str) -> float:
    value = finite(value, name)
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected a float dtype (float32 or float64), got {dtype!r}") from None
    if dtype.kind != "f":
        raise TypeError(f"{name}: expected a float dtype (float32 or float64), got {dtype}")
    return dtype
