"""The checks every kernel test file (tests/test_kernels_*.py) makes of its kernel, written once:

- the result is the same, bit for bit, on any number of threads (the kernels cut their work by the sizes,
  never by the thread count);
- a bad argument raises an error naming it (cases as generators of (id, *values) tuples);
- the differentiable op on a backend matches PyTorch's autograd and passes gradcheck (op_cases's two checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import check_against_torch, check_gradcheck

import minidiff as md

THREAD_COUNTS = (1, 2, 3)


def ones(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


def same_on_every_thread_count(compute: Callable[[], Sequence[Any]], names: Sequence[str]) -> tuple[Any, ...]:
    """compute() on 1, 2 and 3 threads (md.set_num_threads): asserts each result equals the one-thread result bit
    for bit, array by array (named by `names` in a failure), and returns the one-thread result."""
    results = {}
    before = md.get_num_threads()
    try:
        for threads in THREAD_COUNTS:
            md.set_num_threads(threads)
            results[threads] = tuple(compute())
    finally:
        md.set_num_threads(before)
    one = results[THREAD_COUNTS[0]]
    for threads in THREAD_COUNTS[1:]:
        for name, got, ref in zip(names, results[threads], one, strict=True):
            np.testing.assert_array_equal(got, ref, err_msg=f"{name}, {threads} threads")
    return one


def bad_calls(cases: Iterable[tuple]) -> list:
    """pytest.param(*values, id=case_id) for each (case_id, *values) a bad-input generator yields."""
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


def assert_clear_error(backend: str, call: Callable, args: Sequence[Any], error: type[Exception], message: str,
                       kwargs: dict | None = None) -> None:
    """call(*args, **kwargs) on `backend` raises `error` with a message matching the regex `message` (the argument's
    name and what was expected)."""
    require_backend(backend)
    with md.use_backend(backend), pytest.raises(error, match=message):
        call(*args, **(kwargs or {}))


def autodiff_tests(cases: st.SearchStrategy, backend: str, dtypes: Sequence = (np.float64, np.float32),
                   max_examples: tuple[int | None, int | None] = (None, None)) -> tuple[Callable, Callable]:
    """Two tests of an op's differentiable form on `backend`, from a strategy of (name, op_cases.Case): against
    PyTorch's autograd (forward and every input gradient, inputs rounded to each of `dtypes`), and gradcheck
    (float64 central differences for every input). max_examples: hypothesis's, per test (None: the profile's).
    Bind them to test_ names in the test module, where pytest collects them."""

    def limited(test: Callable, examples: int | None) -> Callable:
        return test if examples is None else settings(max_examples=examples)(test)

    @pytest.mark.torch
    @pytest.mark.parametrize("dtype", dtypes)
    @given(named_case=cases)
    def matches_pytorch_autograd(named_case, dtype):
        require_backend(backend)
        with md.use_backend(backend):
            check_against_torch(named_case, dtype)

    @given(named_case=cases)
    def passes_gradcheck(named_case):
        require_backend(backend)
        with md.use_backend(backend):
            check_gradcheck(named_case)

    return limited(matches_pytorch_autograd, max_examples[0]), limited(passes_gradcheck, max_examples[1])
