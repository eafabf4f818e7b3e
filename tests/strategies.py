"""Shared hypothesis strategies: shapes with the edge cases kernels get wrong, float arrays, layouts."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
float_dtypes = st.sampled_from(FLOAT_DTYPES)


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 0, max_side: int = 9) -> st.SearchStrategy:
    """Shapes including scalars (), size 0, size 1 and odd sides."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def float_arrays(dtype, shape, bound: float = 10.0) -> st.SearchStrategy:
    """Finite floats in [-bound, bound] (subnormals excluded: they test the FPU, not our indexing)."""
    width = np.dtype(dtype).itemsize * 8
    elements = st.floats(-bound, bound, width=width, allow_nan=False, allow_subnormal=False)
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


LAYOUTS = ("c", "fortran", "strided", "reversed")


def in_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as `a` in another memory layout (most not C-contiguous)."""
    if layout == "c" or a.ndim == 0:  # a 0-d array has one layout
        return a.copy(order="C")
    if layout == "fortran":
        return a.copy(order="F")
    if layout == "strided":  # every other element of a larger buffer
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "reversed":  # negative strides
        flipped = a[tuple(slice(None, None, -1) for _ in a.shape)].copy()
        return flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


layouts = st.sampled_from(LAYOUTS)


@st.composite
def step_coefs(draw, clip: bool | None = None):
    """StepCoefs with moderate coefficients; clip=None draws both kinds."""
    from minidiff.kernels import StepCoefs

    coef = st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False)
    with_clip = draw(st.booleans()) if clip is None else clip
    bound = draw(st.floats(0.05, 5.0)) if with_clip else None
    return StepCoefs(draw(coef), draw(coef), draw(coef), draw(coef), draw(coef), draw(coef), bound)
