"""The CPU emulation of CUDA (csrc/include/minidiff/cuda_emu.h): blocks, threads, __shared__ and
__syncthreads() behave as on a GPU, shown on the shared-memory tree reduction of block_reduce.cu."""

from __future__ import annotations

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import float_arrays, float_dtypes
from tolerances import assert_close

import minidiff as md


@pytest.fixture(scope="module")
def emu():
    require_backend("cuda-emu")
    return md.backend.extension().cuda_emu


@settings(max_examples=30)  # every example starts up to 1024 OS threads
@given(
    dtype=float_dtypes,
    rows=st.integers(0, 9),
    cols=st.integers(0, 300),
    block=st.sampled_from([1, 2, 4, 32, 64, 256, 1024]),
    grid=st.integers(1, 12),
    data=st.data(),
)
def test_row_sum_tree_reduction_matches_numpy(emu, dtype, rows, cols, block, grid, data):
    x = data.draw(float_arrays(dtype, (rows, cols)))
    out = np.full(rows, np.nan, dtype)
    emu.row_sum_kernel((grid,), (block,), x, out, rows, cols)
    assert_close(out, x.astype(np.float64).sum(axis=1), dtype=dtype, scale=np.abs(x).sum(axis=1) + 1.0)


def test_barriers_make_the_reduction_exact(emu):
    """Integers in float64 sum exactly in any order: any race in the tree (a missing or broken
    barrier, shared memory not per block) shows as a wrong count, here repeated to shake out timing."""
    x = np.ones((6, 1000))
    for block in (128, 512, 1024):
        for _ in range(3):
            out = np.zeros(6)
            emu.row_sum_kernel((4,), (block,), x, out, 6, 1000)
            np.testing.assert_array_equal(out, 1000.0)


def test_row_sum_checks_its_launch_and_sizes(emu):
    x, out = np.ones((3, 4)), np.zeros(3)
    with pytest.raises(ValueError, match=r"block: row_sum_kernel needs \(2\^k,\)"):
        emu.row_sum_kernel((1,), (48,), x, out, 3, 4)
    with pytest.raises(ValueError, match="x: expected at least 15 elements"):
        emu.row_sum_kernel((1,), (32,), x, out, 3, 5)
    with pytest.raises(ValueError, match="out: expected at least 4 elements"):
        emu.row_sum_kernel((1,), (32,), np.ones(8), out, 4, 2)
    with pytest.raises(ValueError, match="rows, cols: expected non-negative sizes"):
        emu.row_sum_kernel((1,), (32,), x, out, 2**40, 2**40)
    with pytest.raises(TypeError, match="out: expected a float64 array"):
        emu.row_sum_kernel((1,), (32,), x, out.astype(np.float32), 3, 4)
    with pytest.raises(ValueError, match="grid: expected a tuple of 1 to 3 sizes"):
        emu.row_sum_kernel((1, 1, 1, 1), (32,), x, out, 3, 4)
