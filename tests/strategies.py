"""Shared hypothesis strategies: shapes with the edge cases kernels get wrong, float arrays, layouts."""

from __future__ import annotations

import functools

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


# --- diffusion schedules ---------------------------------------------------------------------------

SCHEDULE_KINDS = ("linear", "cosine", "scaled_linear", "sigmoid", "zero_terminal_snr")
# The default beta ranges are rescaled by 1000 / T, which needs beta_end * 1000 / T < 1.
MIN_T = {"linear": 21, "cosine": 1, "scaled_linear": 13, "sigmoid": 21, "zero_terminal_snr": 21}


@functools.cache
def noise_schedule(kind: str, T: int):
    """A NoiseSchedule by kind (zero_terminal_snr: the linear one rescaled), built once per (kind, T)."""
    from minidiff.diffusion import NoiseSchedule

    if kind == "zero_terminal_snr":
        return NoiseSchedule.named("linear", T, zero_terminal_snr=True)
    return NoiseSchedule.named(kind, T)


@st.composite
def schedules(draw, kinds=SCHEDULE_KINDS, max_T: int = 300):
    """NoiseSchedules of every kind, T from MIN_T[kind] to max_T."""
    kind = draw(st.sampled_from(kinds))
    min_T = MIN_T[kind]
    return noise_schedule(kind, draw(st.integers(min_T, max(min_T, max_T))))


@st.composite
def schedule_and_t(draw, kinds=SCHEDULE_KINDS, max_T: int = 300, min_t: int = 1, informative_eps: bool = False):
    """(schedule, t) with t in min_t..T; informative_eps: never t = T of a zero-terminal-SNR schedule
    (alpha_bar_T = 0 there, so eps says nothing about x0)."""
    schedule = draw(schedules(kinds, max_T).filter(lambda s: min_t <= s.T))
    top = schedule.T - 1 if informative_eps and schedule.zero_terminal_snr else schedule.T  # T >= 21 there
    return schedule, draw(st.integers(min_t, top))
