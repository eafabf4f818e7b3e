"""GEMM (minidiff.kernels.gemm): every C++ version and micro-kernel, and every CUDA version under the emulator
(cuda-emu), against the NumPy twin (matmul) on shapes that break tiling (0, 1, primes, one off a register tile or a
cache block), on transposed, strided and reversed views; the result's independence of the thread count; 64-bit
indexing; bad input at the Python, C++ and emulated-launch boundaries."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import assert_clear_error, bad_calls, same_on_every_thread_count
from strategies import float_dtypes, in_layout, layouts
from tolerances import assert_close

import minidiff as md
from minidiff.kernels.gemm import VERSIONS, gemm, gemm_ref, micro_kernels

MICRO_KERNELS = ("portable", "avx2", "avx512")
# (version, micro-kernel): the teaching versions and version 4 with each micro-kernel
VARIANTS = [(1, None), (2, None), (3, None)] + [(4, k) for k in MICRO_KERNELS]
# (backend, version, micro-kernel): the C++ variants, and the CUDA versions (csrc/cuda/gemm.cu) under the emulator
BACKEND_VARIANTS = [("cpp", *v) for v in VARIANTS] + [("cuda-emu", v, None) for v in VERSIONS]


def require_variant(version: int, micro_kernel: str | None) -> None:
    """Skip a micro-kernel this build lacks, unless its instruction set is in the build flags (then it must exist)."""
    require_backend("cpp")
    if micro_kernel is None or micro_kernel in micro_kernels():
        return
    info = md.backend.extension().build_info()
    expected = {"portable": True, "avx2": info["avx2"] and info["fma"], "avx512": info["avx512f"]}[micro_kernel]
    assert not expected, f"the build has the {micro_kernel} instruction set but not its micro-kernel"
    pytest.skip(f"micro-kernel {micro_kernel} not compiled into this build")


def rounding_scale(a, b, c, alpha, beta):
    """The size of the rounding error of alpha a b + beta c: the sum of the magnitudes of the terms."""
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    scale = abs(alpha) * (a @ b)
    return scale if beta == 0 else scale + abs(beta) * np.abs(np.asarray(c, np.float64))


# Sides that break tilings: 0, 1, primes, and one off the register tiles (4, 6, 8, 12, 16, 32) of the micro-kernels.
sides = st.sampled_from([0, 1, 2, 3, 5, 7, 11, 13, 15, 17, 31, 33, 37]) | st.integers(0, 40)


@st.composite
def gemm_problems(draw):
    dtype = draw(float_dtypes)
    m, n, k = draw(sides), draw(sides), draw(sides)
    # Values from a seeded generator, not hypothesis's arrays (often constant: a transposed index would not show)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a, b, c = (rng.standard_normal(shape).astype(dtype) for shape in ((m, k), (k, n), (m, n)))
    alpha = draw(st.sampled_from([1.0, -0.5, 2.0]))
    beta = draw(st.sampled_from([0.0, 1.0, 0.75]))
    return a, b, c, alpha, beta


@pytest.mark.parametrize(("backend", "version", "micro_kernel"), BACKEND_VARIANTS)
@given(problem=gemm_problems(), layout_a=layouts, layout_b=layouts, transposed=st.booleans())
def test_every_version_equals_numpy(backend, version, micro_kernel, problem, layout_a, layout_b, transposed):
    """On any strides: Fortran order, every other element, negative strides, and transposed views of a stored
    transpose (what conv2d's backward passes). The CUDA versions run under the emulator with the launch a GPU would
    get; sides up to 40 cross the edges of their 16 x 16 and 64 x 64 tiles, in one to three 16-deep slabs (odd and
    even counts for v4's double buffer)."""
    require_variant(version, micro_kernel)
    require_backend(backend)
    a, b, c, alpha, beta = problem
    expected = gemm_ref(a.astype(np.float64), b.astype(np.float64), c, alpha, beta)
    a_in, b_in = in_layout(a, layout_a), in_layout(b, layout_b)
    if transposed:
        a_in, b_in = a_in.T.copy().T, b_in.T.copy().T
    out = c.copy()
    with md.use_backend(backend):
        got = gemm(a_in, b_in, out, alpha=alpha, beta=beta, version=version, micro_kernel=micro_kernel)
    assert got is out and got.dtype == a.dtype
    what = f"{backend} v{version} {micro_kernel}:"
    assert_close(got, expected, scale=rounding_scale(a, b, c, alpha, beta), what=what)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_versions_across_many_tiles_into_a_block_of_c(version, dtype):
    """Several tiles of C each way (64 x 64 tiles: 3 x 2; 16 x 16: 9 x 5) and six slabs of depth, written into a block
    of a wider C (leading dimension > n) whose other columns stay untouched."""
    require_backend("cuda-emu")
    rng = np.random.default_rng(4)
    m, n, k = 131, 67, 93
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    wide = rng.standard_normal((m, n + 7)).astype(dtype)
    c = wide[:, 3 : 3 + n]
    expected = gemm_ref(a.astype(np.float64), b.astype(np.float64), c, 0.5, -1.0)
    scale = rounding_scale(a, b, c, 0.5, -1.0)
    untouched = wide[:, [0, 1, 2, -4, -3, -2, -1]].copy()
    with md.use_backend("cuda-emu"):
        gemm(a, b, c, alpha=0.5, beta=-1.0, version=version)
    assert_close(c, expected, scale=scale)
    np.testing.assert_array_equal(wide[:, [0, 1, 2, -4, -3, -2, -1]], untouched)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("grid", [1, 2, 7])
def test_cuda_blocks_stride_over_the_tiles(version, grid):
    """Any grid computes every tile: fewer blocks than tiles take several each."""
    require_backend("cuda-emu")
    emu = md.backend.extension().cuda_emu
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((70, 20)), rng.standard_normal((20, 150))
    c = np.full((70, 150), np.nan)
    getattr(emu, f"gemm_v{version}_kernel")((grid,), (16, 16), 70, 150, 20, 1.0, a, 20, 1, b, 150, 1, 0.0, c, 150)
    assert_close(c, a @ b, scale=np.abs(a) @ np.abs(b))


@pytest.mark.parametrize(("version", "micro_kernel"), [(3, None)] + [(4, k) for k in MICRO_KERNELS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crossing_every_cache_block(version, micro_kernel, dtype):
    """Sizes past two MC blocks of rows, two KC blocks of depth and one NC block of columns (v3's blocks are
    smaller), into a block of a wider output, so every loop of the blocking runs its first, middle and edge
    blocks; the depth blocks must add to, not overwrite, what the first one wrote."""
    require_variant(version, micro_kernel)
    info = {k["name"]: k for k in md.backend.extension().gemm_micro_kernels()}
    mc, kc, nc = info[micro_kernel]["blocking"] if micro_kernel else (64, 128, 512)
    if dtype == np.float64:
        kc //= 2
    m, k, n = 2 * mc + 5, 2 * kc + 3, nc + 37
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype).T  # b transposed
    wide = rng.standard_normal((m, n + 9)).astype(dtype)
    c = wide[:, 4 : 4 + n]  # (m, n), leading dimension n + 9
    expected = gemm_ref(a.astype(np.float64), b.astype(np.float64), c, -1.5, 0.5)
    scale = rounding_scale(a, b, c, -1.5, 0.5)
    untouched = wide[:, [0, 1, 2, 3, -5, -4, -3, -2, -1]].copy()
    gemm(a, b, c, alpha=-1.5, beta=0.5, version=version, micro_kernel=micro_kernel)
    assert_close(c, expected, scale=scale)
    np.testing.assert_array_equal(wide[:, [0, 1, 2, 3, -5, -4, -3, -2, -1]], untouched)


@pytest.mark.parametrize(("backend", "version", "micro_kernel"), BACKEND_VARIANTS)
def test_beta_zero_never_reads_out(backend, version, micro_kernel):
    """As in BLAS: with beta = 0 whatever out held (NaN, inf) does not reach the result; k = 0 gives beta out."""
    require_variant(version, micro_kernel)
    require_backend(backend)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((13, 7)), rng.standard_normal((7, 35))
    out = np.full((13, 35), np.nan)
    out[0, 0] = np.inf
    with md.use_backend(backend):
        gemm(a, b, out, version=version, micro_kernel=micro_kernel)
        assert_close(out, a @ b, scale=np.abs(a) @ np.abs(b))
        empty_k = np.full((5, 4), 3.0)
        gemm(np.ones((5, 0)), np.ones((0, 4)), empty_k, beta=0.5, version=version, micro_kernel=micro_kernel)
        np.testing.assert_array_equal(empty_k, 1.5)
        gemm(np.ones((5, 0)), np.ones((0, 4)), empty_k, beta=0.0, version=version, micro_kernel=micro_kernel)
        np.testing.assert_array_equal(empty_k, 0.0)


@pytest.mark.parametrize("version", [3, 4])
def test_result_does_not_depend_on_the_thread_count(version):
    """Each element is computed by one thread with the same operations in the same order: bit for bit equal,
    whether C is cut into slabs of columns (wide) or of rows (tall)."""
    require_backend("cpp")
    rng = np.random.default_rng(2)
    problems = [(rng.standard_normal((67, 301)).astype(np.float32), rng.standard_normal((301, 517)).astype(np.float32)),
                (rng.standard_normal((517, 301)), rng.standard_normal((301, 67)))]
    same_on_every_thread_count(lambda: [gemm(a, b, version=version) for a, b in problems], ("wide", "tall"))


@pytest.mark.parametrize(("version", "micro_kernel"), VARIANTS)
def test_offsets_past_32_bit_indexing(version, micro_kernel):
    """Rows 2^31 + 1 elements apart (lazily allocated zero pages: only the touched ones cost memory), read
    and written through 64-bit offsets; a 32-bit index would wrap and read or write the wrong place."""
    require_variant(version, micro_kernel)
    row = 2**31 + 1
    a_buf, c_buf = np.zeros(row + 16, np.float32), np.zeros(row + 16, np.float32)
    a = np.lib.stride_tricks.as_strided(a_buf, (2, 3), (row * 4, 4))
    a[0], a[1] = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    c = np.lib.stride_tricks.as_strided(c_buf, (2, 2), (row * 4, 4))
    b = np.array([[1.0, 0.5], [-1.0, 2.0], [0.25, 1.0]], np.float32)
    gemm(a, b, c, version=version, micro_kernel=micro_kernel)
    np.testing.assert_array_equal(c, np.array([[1 - 2 + 0.75, 0.5 + 4 + 3], [4 - 5 + 1.5, 2 + 10 + 6]], np.float32))
    assert c_buf[2] == 0 and c_buf[row - 1] == 0 and c_buf[row + 2] == 0


def test_the_build_uses_the_best_micro_kernel_its_flags_allow():
    require_backend("cpp")
    info = md.backend.extension().build_info()
    kernels = micro_kernels()
    expected = ["portable"] + (["avx2"] if info["avx2"] and info["fma"] else [])
    expected += ["avx512"] if info["avx512f"] else []
    assert kernels == expected
    assert info["gemm_micro_kernel"] == kernels[-1]


def test_numpy_backend_runs_the_twin():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    with md.use_backend("numpy"):
        np.testing.assert_array_equal(gemm(a, b, alpha=2.0), 2.0 * (a @ b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_autodiff_matmul_runs_on_the_gemm_from_its_threshold(dtype, monkeypatch):
    """The autodiff's matrix product (minidiff.kernels.gemm.matmul) on "cpp": a stack of rows (..., k) times a
    transposed matrix, forward and both gradients, from MATMUL_MIN_FMAS multiply-adds on minidiff's GEMM, below it on
    NumPy's matmul; every result equals the float64 product."""
    require_backend("cpp")
    gemm_module = importlib.import_module("minidiff.kernels.gemm")  # (minidiff.kernels.gemm is also the function)
    calls = []
    monkeypatch.setattr(gemm_module, "gemm", lambda a, b: calls.append(a.shape) or gemm(a, b))
    rng = np.random.default_rng(8)
    k, n = 24, 40
    for rows, routed in ((gemm_module.MATMUL_MIN_FMAS // (k * n) + 1, True), (4, False)):
        calls.clear()
        x = md.tensor(rng.standard_normal((2, rows, k)).astype(dtype), requires_grad=True)
        w = md.tensor(rng.standard_normal((n, k)).astype(dtype), requires_grad=True)
        g = rng.standard_normal((2, rows, n)).astype(dtype)
        with md.use_backend("cpp"):
            out = x @ w.T  # (2, rows, n)
            out.backward(md.tensor(g))
        x64, w64, g = x.data.astype(np.float64), w.data.astype(np.float64), g.astype(np.float64)
        assert_close(out.data, x64 @ w64.T, scale=np.abs(x64) @ np.abs(w64.T), what="a @ b")
        assert_close(x.grad, g @ w64, scale=np.abs(g) @ np.abs(w64), what="grad a")
        assert_close(w.grad, np.einsum("brn,brk->nk", g, x64), scale=np.einsum("brn,brk->nk", np.abs(g), np.abs(x64)),
                     what="grad b")
        assert bool(calls) == routed, f"{rows} rows: expected GEMM calls {routed}, got {calls}"


# --- bad input -----------------------------------------------------------------------------------------------------


def bad_cases():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    ro = np.ones((2, 4), np.float32)
    ro.flags.writeable = False
    buf = np.ones(20, np.float32)
    yield "a list", ([[1.0]], b), {}, TypeError, "a: expected a numpy.ndarray"
    yield "int a", (np.ones((2, 3), np.int64), b), {}, TypeError, "a: expected dtype float32 or float64"
    yield "float16 a", (a.astype(np.float16), b), {}, TypeError, "a: expected dtype float32 or float64"
    yield "mixed dtypes", (a, b.astype(np.float64)), {}, TypeError, "b: expected dtype float32"
    yield "1-d a", (np.ones(3, np.float32), b), {}, ValueError, "a: expected 2 dimensions"
    yield "inner sizes", (a, np.ones((4, 4), np.float32)), {}, ValueError, r"b: expected shape \(3, n\)"
    yield "3-d b", (a, np.ones((3, 4, 1), np.float32)), {}, ValueError, r"b: expected shape \(3, n\)"
    yield "beta without out", (a, b), {"beta": 1.0}, ValueError, "out: required when beta != 0"
    yield "alpha nan", (a, b), {"alpha": float("nan")}, ValueError, "alpha: expected a finite number"
    yield "out dtype", (a, b), {"out": np.ones((2, 4))}, TypeError, "out: expected dtype float32"
    yield "out shape", (a, b), {"out": np.ones((4, 2), np.float32)}, ValueError, r"out: expected shape \(2, 4\)"
    yield "out read-only", (a, b), {"out": ro}, ValueError, "out: expected a writeable"
    yield "out Fortran", (a, b), {"out": np.ones((2, 4), np.float32, order="F")}, ValueError, \
        "out: expected unit column stride"
    yield "out overlaps a", (buf[:6].reshape(2, 3), b), {"out": buf[4:12].reshape(2, 4)}, ValueError, \
        "out: shares memory with a"
    yield "version 5", (a, b), {"version": 5}, ValueError, "version: expected None or one of"
    yield "version True", (a, b), {"version": True}, ValueError, "version: expected None or one of"
    yield "micro-kernel of v3", (a, b), {"version": 3, "micro_kernel": "portable"}, ValueError, \
        "micro_kernel: only (the C\\+\\+ )?version 4"
    yield "unknown micro-kernel", (a, b), {"micro_kernel": "neon"}, ValueError, \
        "micro_kernel: (expected one of|only the C\\+\\+ version 4)"


@pytest.mark.parametrize("backend", ["numpy", "cpp", "cuda-emu"])
@pytest.mark.parametrize(("args", "kwargs", "error", "message"), bad_calls(bad_cases()))
def test_bad_input_gets_a_clear_error(backend, args, kwargs, error, message):
    if backend == "numpy" and "micro_kernel" in kwargs:
        require_backend("cpp")  # naming a micro-kernel asks for the C++ versions
    assert_clear_error(backend, gemm, args, error, message, kwargs)


def test_emulated_launch_rechecks_what_the_kernels_rely_on():
    """The CUDA kernels trust their sizes, strides and launch; the emulated launch checks them against the arrays."""
    require_backend("cuda-emu")
    emu = md.backend.extension().cuda_emu
    a, b, c = np.ones((2, 3)), np.ones((3, 4)), np.empty((2, 4))
    good = (2, 4, 3, 1.0, a, 3, 1, b, 4, 1, 0.0, c, 4)
    emu.gemm_v2_kernel((1,), (16, 16), *good)
    np.testing.assert_array_equal(c, 3.0)

    def with_(i, v):
        return good[:i] + (v,) + good[i + 1 :]

    cases = [
        ((1,), (32, 8), good, ValueError, r"block: the GEMM kernels need \(16, 16\)"),
        ((1,), (16, 16), with_(0, 3), ValueError, r"a: expected shape \(3, 3\)"),
        ((1,), (16, 16), with_(2, -1), ValueError, "m, n, k: expected sizes >= 0"),
        ((1,), (16, 16), with_(5, 1), ValueError, r"a: the strides passed \(1, 1\) elements are not the array's"),
        ((1,), (16, 16), with_(9, 2), ValueError, "b: the strides passed"),
        ((1,), (16, 16), with_(12, 8), ValueError, "c: the strides passed"),
        ((1,), (16, 16), with_(11, c.astype(np.float32)), TypeError, "c: expected a float64 array"),
        ((1,), (16, 16), with_(4, a.astype(np.float16)), TypeError, "a: expected dtype float32 or float64"),
    ]
    for grid, block, args, error, message in cases:
        with pytest.raises(error, match=message):
            emu.gemm_v4_kernel(grid, block, *args)
    ro = np.empty((2, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="c: expected a writeable array"):
        emu.gemm_v1_kernel((1,), (16, 16), *with_(11, ro))


def test_strides_of_partial_elements_are_copied_in_python_and_refused_in_cpp():
    """A float32 view whose strides are not whole elements (possible through a byte buffer)."""
    require_backend("cpp")
    raw = np.arange(64, dtype=np.uint8)
    a = np.ndarray((2, 3), np.float32, buffer=raw, strides=(14, 6))
    b = np.ones((3, 2), np.float32)
    with md.use_backend("cpp"):
        np.testing.assert_array_equal(gemm(a, b), a.copy() @ b)
    with pytest.raises(ValueError, match="a: expected strides that are whole elements"):
        md.backend.extension().gemm(a, b, np.empty((2, 2), np.float32), 1.0, 0.0, 4, "")


def test_cpp_boundary_rechecks_what_it_relies_on():
    """Called directly, bypassing the Python checks: errors, never a crash or an out-of-bounds access."""
    require_backend("cpp")
    C = md.backend.extension()
    a, b, c = np.ones((2, 3)), np.ones((3, 4)), np.empty((2, 4))
    cases = [
        ((a.astype(np.float16), b, c), TypeError, "a: expected dtype float32 or float64"),
        ((a, b.astype(np.float32), c), TypeError, "b: expected a float64 array"),
        ((a, b, c.astype(np.float32)), TypeError, "c: expected a float64 array"),
        ((np.ones(3), b, c), ValueError, "a: expected 2 dimensions"),
        ((a, np.ones((4, 4)), c), ValueError, r"b: expected 3 rows"),
        ((a, b, np.empty((2, 5))), ValueError, r"c: expected shape \(2, 4\)"),
        ((a, b, np.empty((4, 2)).T), ValueError, "c: expected rows with unit column stride"),
        ((a, b, np.empty((2, 4))[::-1]), ValueError, "c: expected rows with unit column stride"),
        ((a, b, np.lib.stride_tricks.as_strided(np.empty(8), (2, 4), (16, 8))), ValueError,
         "c: expected rows with unit column stride"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            C.gemm(*args, 1.0, 0.0, 4, "")
    shared = np.ones(20)
    with pytest.raises(ValueError, match="c: overlaps b"):
        C.gemm(a, shared[:12].reshape(3, 4), shared[10:18].reshape(2, 4), 1.0, 0.0, 4, "")
    ro = np.empty((2, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="c: expected a writeable"):
        C.gemm(a, b, ro, 1.0, 0.0, 4, "")
    with pytest.raises(ValueError, match="version: expected 1, 2, 3 or 4"):
        C.gemm(a, b, c, 1.0, 0.0, 0, "")
    with pytest.raises(ValueError, match="micro_kernel: only version 4"):
        C.gemm(a, b, c, 1.0, 0.0, 2, "portable")
    with pytest.raises(ValueError, match="micro_kernel: expected one of the micro-kernels of this build"):
        C.gemm(a, b, c, 1.0, 0.0, 4, "sse9")
    with pytest.raises(ValueError, match="dtype: expected 'float32' or 'float64'"):
        C.fma_peak("portable", "float16", 10, 1)
    with pytest.raises(ValueError, match="threads: expected 1"):
        C.fma_peak("portable", "float32", 10, 0)
    with pytest.raises(ValueError, match="iterations: expected >= 1"):
        C.fma_peak("portable", "float32", 0, 1)
