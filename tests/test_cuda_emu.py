"""The CPU emulation of CUDA (csrc/include/minidiff/cuda_emu.h): blocks, threads, __shared__, __syncthreads(),
warp shuffles and votes, __syncwarp(), atomicAdd and dynamic shared memory behave as their definitions say (the
CUDA C++ Programming Guide's), shown on the row sums of block_reduce.cu and on the small kernels of
csrc/emu/selftest_emu.cpp; and the bugs the emulator promises to report (a missing barrier, a barrier some threads
skip, a deadlock, a bad mask or width) are reported."""

from __future__ import annotations

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given
from hypothesis import strategies as st
from strategies import float_arrays, float_dtypes
from tolerances import assert_close

import minidiff as md
from minidiff.kernels._cuda import EMULATOR_SCHEDULES, emulator_schedule


@pytest.fixture(scope="module")
def emu():
    require_backend("cuda-emu")
    return md.backend.extension().cuda_emu


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


# --- warp shuffles: the row sums by shuffles, and each shuffle against its definition ---------------------------


@pytest.mark.parametrize("schedule", EMULATOR_SCHEDULES)
@given(
    dtype=float_dtypes,
    rows=st.integers(0, 9),
    cols=st.integers(0, 300),
    warps=st.sampled_from([1, 2, 3, 8, 32]),
    grid=st.integers(1, 12),
    data=st.data(),
)
def test_row_sum_by_warp_shuffles_matches_numpy(emu, schedule, dtype, rows, cols, warps, grid, data):
    """block_sum of minidiff/device.h: butterflies of __shfl_xor_sync within warps, one partial per warp through
    dynamic shared memory sized by the launch (shared_mem), on whole warps only. A block sums a row after another
    into the same partials: under run_ahead, they would be overwritten early without block_sum's last barrier."""
    x = data.draw(float_arrays(dtype, (rows, cols)))
    out = np.full(rows, np.nan, dtype)
    with emulator_schedule(schedule):
        emu.row_sum_warp_kernel((grid,), (32 * warps,), x, out, rows, cols, shared_mem=warps * x.itemsize)
    assert_close(out, x.astype(np.float64).sum(axis=1), dtype=dtype, scale=np.abs(x).sum(axis=1) + 1.0)


def test_row_sum_by_warp_shuffles_checks_its_launch(emu):
    x, out = np.ones((3, 4)), np.zeros(3)
    with pytest.raises(ValueError, match=r"block: row_sum_warp_kernel needs \(32 k,\)"):
        emu.row_sum_warp_kernel((1,), (48,), x, out, 3, 4, shared_mem=16)
    with pytest.raises(ValueError, match="shared_mem: row_sum_warp_kernel needs one partial per warp, 16 bytes"):
        emu.row_sum_warp_kernel((1,), (64,), x, out, 3, 4, shared_mem=8)
    with pytest.raises(ValueError, match="at most 49152 bytes of dynamic shared memory"):
        emu.row_sum_warp_kernel((1,), (64,), x, out, 3, 4, shared_mem=49153)


MODES = ("idx", "up", "down", "xor")


def shuffle_reference(mode, x, param, width, mask, threads_per_block):
    """What each lane of each warp receives, by the CUDA C++ Programming Guide ("Warp Shuffle Functions"): lanes
    form segments of `width`; __shfl_sync reads lane param mod width of its segment, __shfl_up_sync the lane param
    before it, __shfl_down_sync the lane param after it, __shfl_xor_sync lane (lane xor param); a lane whose up/down
    source leaves its segment, or whose xor source lies in a later segment, keeps its own value. Reading a lane that
    does not take part (outside mask, or past the end of the block) is undefined: NaN here (the emulator's
    poison). Lanes outside mask do not call: None."""
    out = []
    for t in range(len(x)):
        block_start = t - t % threads_per_block
        lane, warp_start = (t - block_start) % 32, t - (t - block_start) % 32
        lanes_here = min(32, block_start + threads_per_block - warp_start)
        if not (mask >> lane) & 1:
            out.append(None)
            continue
        first, b = lane - lane % width, int(param[t])
        source = {"idx": first + b % width, "up": lane - b, "down": lane + b, "xor": lane ^ b}[mode]
        if (mode == "up" and source < first) or (mode in ("down", "xor") and source >= first + width):
            source = lane
        taking_part = source < lanes_here and (mask >> source) & 1
        out.append(x[warp_start + source] if taking_part else np.nan)
    return out


@given(
    dtype=float_dtypes,
    mode=st.sampled_from(MODES),
    width=st.sampled_from([1, 2, 4, 8, 16, 32]),
    mask=st.integers(0, 2**32 - 1) | st.just(2**32 - 1),
    threads=st.integers(1, 96),
    grid=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_shuffles_follow_their_definition(emu, dtype, mode, width, mask, threads, grid, seed):
    """Masks with holes, partial warps, segments of every width, a different source lane or delta in each lane."""
    rng = np.random.default_rng(seed)
    n = grid * threads
    x = (np.arange(n) + 1).astype(dtype)  # distinct values: a wrong source lane shows
    param = rng.integers(0, 32, n).astype(np.int32)
    out = np.full(n, -7, dtype)
    emu.shuffle_kernel((grid,), (threads,), MODES.index(mode), x, param, width, mask, out)
    expected = [-7 if e is None else e for e in shuffle_reference(mode, x, param, width, mask, threads)]
    np.testing.assert_array_equal(out, np.array(expected, dtype))


def test_xor_butterfly_leaves_the_warp_sum_in_every_lane(emu):
    """Five steps v += __shfl_xor_sync(v, s) for s = 16, 8, 4, 2, 1 (warp_sum of minidiff/device.h): after the
    step with s, lane l holds the sum over the 32 / s lanes of its warp congruent to l modulo s."""
    x = np.random.default_rng(0).integers(-50, 50, 64).astype(np.float64)  # two warps, exact sums
    v = x.copy()
    for s in (16, 8, 4, 2, 1):
        shifted = np.empty_like(v)
        emu.shuffle_kernel((1,), (64,), MODES.index("xor"), v, np.full(64, s, np.int32), 32, 2**32 - 1, shifted)
        v = v + shifted
        by_residue = x.reshape(2, 32 // s, s).sum(axis=1)  # (warp, lane mod s)
        np.testing.assert_array_equal(v, np.tile(by_residue, (1, 32 // s)).ravel())
    np.testing.assert_array_equal(v, np.repeat(x.reshape(2, 32).sum(axis=1), 32))


@given(mask=st.integers(0, 2**32 - 1), threads=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_ballot_sets_the_bits_of_the_lanes_whose_predicate_holds(emu, mask, threads, seed):
    pred = np.random.default_rng(seed).integers(0, 3, threads).astype(np.int32)  # 0, 1, 2: any nonzero is true
    out = np.full(threads, 7, np.uint32)
    emu.ballot_kernel((1,), (threads,), pred, mask, out)
    for t in range(threads):
        warp = range(t - t % 32, min(threads, t - t % 32 + 32))
        expected = sum(1 << (u % 32) for u in warp if pred[u] and (mask >> (u % 32)) & 1)
        assert out[t] == (expected if (mask >> (t % 32)) & 1 else 7)


def test_syncwarp_is_needed_by_warp_synchronous_code(emu):
    """A tree sum through shared memory within one warp: right with __syncwarp() between the reads and writes of
    each level; without, it relied on lanes running in lockstep (pre-Volta folklore), and here they do not."""
    rng = np.random.default_rng(1)
    x = rng.integers(-100, 100, 4 * 32).astype(np.float64)  # integers: the sums are exact in any order
    with_sync, without = np.zeros(4), np.zeros(4)
    emu.warp_tree_sum_kernel((4,), x, with_sync, 1)
    np.testing.assert_array_equal(with_sync, x.reshape(4, 32).sum(axis=1))
    emu.warp_tree_sum_kernel((4,), rng.permutation(x), without, 0)
    assert not np.array_equal(without, x.reshape(4, 32).sum(axis=1))


# --- atomics, dynamic shared memory ----------------------------------------------------------------------------


def test_atomic_add_counts_exactly(emu):
    """Every thread adds 5 times, its warp meeting in between (the threads interleave): nothing is lost, and the
    values atomicAdd returns are distinct, as an atomic fetch-and-add's must be."""
    grid, block, repeats = 3, 80, 5
    n = grid * block
    value = np.random.default_rng(2).integers(-1000, 1000, n).astype(np.float64)
    count, ucount = np.zeros(1, np.int32), np.zeros(1, np.uint64)
    fsum, dsum, first = np.zeros(1, np.float32), np.zeros(1), np.full(n, -1, np.int32)
    emu.atomic_kernel((grid,), (block,), repeats, value, count, ucount, fsum, dsum, first)
    assert count[0] == ucount[0] == n * repeats
    assert fsum[0] == 0.5 * n * repeats  # halves of integers below 2^24: exact in float32
    assert dsum[0] == repeats * value.sum()
    assert len(set(first.tolist())) == n and first.min() >= 0 and first.max() < n * repeats


@pytest.mark.parametrize("n", [1, 33, 12288])  # up to the 48 KiB a GPU gives without opting in
def test_dynamic_shared_memory_is_sized_by_the_launch_and_undefined_at_first(emu, n):
    """n ints per block: each block finds all-ones bytes (-1) where the previous block left its values, and reads
    the values other threads wrote after the barrier."""
    grid, block = 3, 64
    before, after = np.zeros(grid * n, np.int32), np.zeros(grid * n, np.int32)
    emu.dynamic_shared_kernel((grid,), (block,), n, before, after, shared_mem=4 * n)
    np.testing.assert_array_equal(before, -1)
    expected = np.arange(grid * n).reshape(grid, n)[:, ::-1].ravel()
    np.testing.assert_array_equal(after, expected)
    with pytest.raises(ValueError, match="shared_mem: dynamic_shared_kernel needs n ints"):
        emu.dynamic_shared_kernel((grid,), (block,), n, before, after, shared_mem=4 * n - 1)


# --- what the emulator reports -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1, -1, 5])
def test_a_missing_barrier_gives_a_wrong_result(emu, shift):
    """Each thread reads what the thread `shift` places on wrote to shared memory. Between barriers the threads run
    one after another, in increasing order in one block and decreasing in the next, so without the barrier a
    reader ahead of its writer reads a stale value, whichever side the writer is on."""
    rng = np.random.default_rng(3)
    grid, block = 2, 128
    expected_of = lambda x: np.roll(x.reshape(grid, block), -shift, axis=1).ravel()  # noqa: E731
    x = rng.permutation(grid * block).astype(np.int32)
    out = np.zeros_like(x)
    emu.neighbour_kernel((grid,), (block,), x, shift, 1, out)
    np.testing.assert_array_equal(out, expected_of(x))
    x = rng.permutation(grid * block).astype(np.int32) + grid * block  # values no earlier launch left behind
    emu.neighbour_kernel((grid,), (block,), x, shift, 0, out)
    assert not np.array_equal(out, expected_of(x))


@pytest.mark.parametrize("warps", [2, 3, 32])
def test_run_ahead_catches_a_warp_overwriting_what_another_has_yet_to_read(emu, warps):
    """Warps hand values on through shared memory twice. Without a barrier between the reads of the first round and
    the writes of the second, a GPU may let one warp overwrite its slot before the warp before it has read it. In
    round_robin every thread reads before any warp gets past its shuffle, so only run_ahead shows the bug."""
    grid, block = 2, 32 * warps
    x = np.arange(grid * block, dtype=np.int32)
    warp_first = x.reshape(grid, warps, 32)[:, :, :1]  # (grid, warps, 1): lane 0's value of each warp
    expected = np.broadcast_to(np.roll(warp_first, -2, axis=1), (grid, warps, 32)).ravel()  # two warps on
    for schedule in EMULATOR_SCHEDULES:
        for sync in (1, 0):
            out = np.zeros_like(x)
            with emulator_schedule(schedule):
                emu.handoff_kernel((grid,), (block,), x, sync, out)
            right = np.array_equal(out, expected)
            assert right == (sync or schedule == "round_robin"), f"{schedule}, sync={sync}: right={right}"


def test_the_schedule_is_checked_and_restored(emu):
    with emulator_schedule("run_ahead"):
        with pytest.raises(ValueError, match="schedule: expected 'round_robin' or 'run_ahead', got 'random'"):
            emu.set_schedule("random")
        assert emu.set_schedule("run_ahead") == "run_ahead"
    assert emu.set_schedule("round_robin") == "round_robin"  # the default, back


MISUSES = [
    (0, r"__syncthreads\(\) after 1 threads of its block returned"),
    (1, r"threads meet at different __syncthreads\(\) \(line \d+ and line \d+\)"),
    (2, r"deadlocks: 32 threads wait at __syncthreads\(\), 32 at a warp intrinsic"),
    (3, "__shfl_sync: mask 0xfffffffe does not name the calling lane 0"),
    (4, "__shfl_xor_sync: width must be 1, 2, 4, 8, 16 or 32, got 3"),
    (5, "__syncwarp with mask 0x0000ffff meets another warp intrinsic of mask 0xffffffff"),
]


@pytest.mark.parametrize(("mode", "message"), MISUSES, ids=[str(m) for m, _ in MISUSES])
def test_misused_barriers_and_warp_intrinsics_are_reported(emu, mode, message):
    """On a GPU these hang or are undefined; the emulator stops the launch and says what went wrong, and where."""
    with pytest.raises(RuntimeError, match=r"cuda_emu: block \(\d, 0, 0\)(, thread \(\d+, 0, 0\))?:? .*" + message):
        emu.misuse_kernel((2,), (64,), mode, np.zeros(64, np.float32))


def test_launch_limits_are_checked(emu):
    def ballot(grid, block):
        n = grid * block
        emu.ballot_kernel((grid,), (block,), np.ones(n, np.int32), 2**32 - 1, np.zeros(n, np.uint32))

    with pytest.raises(ValueError, match=r"block must have 1\.\.1024 threads, got 2048"):
        ballot(1, 2048)
    with pytest.raises(ValueError, match=r"grid: sizes must be in \[1, 2\^31\)"):
        ballot(0, 32)
    with pytest.raises(ValueError, match="at most 1048576 blocks per launch"):
        ballot(2**20 + 1, 1)
