"""conv2d's C++ kernel (csrc/cpu/conv2d.cpp: per-image im2col into the packed GEMM) and CUDA kernels
(csrc/cuda/conv2d.cu, direct and implicit GEMM, run by the emulator cuda-emu) against their NumPy twin on shapes that
break them (size 0, batch 1, odd sizes, channels not a multiple of the vector width or the tile, stride and padding
pairs that differ, non-contiguous inputs), against PyTorch's conv2d and autograd, through gradcheck, on any number of
threads; and bad input at the Python, C++ and emulated-launch boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from backends import require_backend
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import assert_clear_error, autodiff_tests, bad_calls, ones, same_on_every_thread_count
from op_cases import Case
from strategies import float_dtypes, in_layout, layouts
from tolerances import assert_close

import minidiff as md
import minidiff.functional as F
from minidiff.autodiff import Tensor
from minidiff.kernels.conv2d import (
    CUDA_VERSIONS,
    conv2d_backward,
    conv2d_backward_ref,
    conv2d_forward,
    conv2d_forward_ref,
)


@st.composite
def conv_problems(draw, same: bool = False, many_images: bool = False):
    """(x, weight, grad_out, stride, padding): sizes from 0, kernels up to 4 x 4, stride and padding pairs drawn
    per axis; same=True: odd kernels with stride 1 and padding (k - 1) / 2 (output size = input size, the
    kernel's shifted-copy path); many_images=True: batches of 9 to 21."""
    dtype = draw(float_dtypes)
    n, c, o = (draw(st.integers(0, hi)) for hi in (3, 11, 11))
    if many_images:  # more images than grad_weight has groups (8): small images go through GEMMs several at once
        n, c, o = draw(st.integers(9, 21)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if same:
        kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
        stride, padding = (1, 1), ((kh - 1) // 2, (kw - 1) // 2)
    else:
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h = draw(st.integers(max(0, kh - 2 * padding[0]), 11))
    w = draw(st.integers(max(0, kw - 2 * padding[1]), 11))
    # Values from a seeded generator, not hypothesis's arrays (often constant: a symmetric kernel hides a flip)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, weight = rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((o, c, kh, kw)).astype(dtype)
    grad_out = rng.standard_normal(conv2d_forward_ref(x, weight, stride, padding).shape).astype(dtype)
    return x, weight, grad_out, stride, padding


def twin_and_scale(x, weight, grad_out, stride, padding):
    """The float64 twin's (out, grad_x, grad_weight) on the very inputs, and each one's rounding scale: the same
    sums over the magnitudes of the terms."""
    x64, w64, g64 = (a.astype(np.float64) for a in (x, weight, grad_out))
    expected = (conv2d_forward_ref(x64, w64, stride, padding), *conv2d_backward_ref(g64, x64, w64, stride, padding))
    ax, aw, ag = np.abs(x64), np.abs(w64), np.abs(g64)
    scale = (conv2d_forward_ref(ax, aw, stride, padding), *conv2d_backward_ref(ag, ax, aw, stride, padding))
    return expected, scale


def run(backend, x, weight, grad_out, stride, padding):
    with md.use_backend(backend):
        return conv2d_forward(x, weight, stride, padding), *conv2d_backward(grad_out, x, weight, stride, padding)


NAMES = ("out", "grad_x", "grad_weight")


@given(problem=st.one_of(conv_problems(), conv_problems(same=True), conv_problems(many_images=True),
                         conv_problems(same=True, many_images=True)), layout=layouts)
def test_cpp_equals_the_twin(problem, layout):
    require_backend("cpp")
    x, weight, grad_out, stride, padding = problem
    expected, scale = twin_and_scale(x, weight, grad_out, stride, padding)
    got = run("cpp", *(in_layout(a, layout) for a in (x, weight, grad_out)), stride, padding)
    for name, g, e, s in zip(NAMES, got, expected, scale, strict=True):
        assert g.dtype == x.dtype
        assert_close(g, e, dtype=x.dtype, scale=s, what=f"{name}:")


@pytest.mark.parametrize("version", CUDA_VERSIONS)
@given(problem=st.one_of(conv_problems(), conv_problems(same=True), conv_problems(many_images=True)), layout=layouts)
def test_cuda_versions_equal_the_twin_under_emulation(version, problem, layout):
    """Both versions of the forward, grad_x and grad_weight, with the launch a GPU would get; the implicit GEMMs'
    products (up to 11 x 2541 by 176 deep here) cross the edges of their 64 x 64 tiles and 16-deep slabs."""
    require_backend("cuda-emu")
    x, weight, grad_out, stride, padding = problem
    expected, scale = twin_and_scale(x, weight, grad_out, stride, padding)
    x, weight, grad_out = (in_layout(a, layout) for a in (x, weight, grad_out))
    with md.use_backend("cuda-emu"):
        got = (conv2d_forward(x, weight, stride, padding, version=version),
               *conv2d_backward(grad_out, x, weight, stride, padding, version=version))
    for name, g, e, sc in zip(NAMES, got, expected, scale, strict=True):
        assert g.dtype == x.dtype
        assert_close(g, e, dtype=x.dtype, scale=sc, what=f"v{version} {name}:")


def test_cuda_implicit_gemm_over_many_tiles():
    """A product of 3 x 4 tiles of 64 x 64 (O = 150 rows, N HO WO = 2 x 13 x 9 columns) and 10 slabs of 16 (C KH KW =
    153), with stride and padding that differ per axis."""
    require_backend("cuda-emu")
    rng = np.random.default_rng(6)
    x, weight = rng.standard_normal((2, 17, 27, 19)), rng.standard_normal((150, 17, 3, 3))
    stride, padding = (2, 2), (0, 1)
    grad_out = rng.standard_normal(conv2d_forward_ref(x, weight, stride, padding).shape)
    expected, scale = twin_and_scale(x, weight, grad_out, stride, padding)
    with md.use_backend("cuda-emu"):
        got = (conv2d_forward(x, weight, stride, padding), *conv2d_backward(grad_out, x, weight, stride, padding))
    for name, g, e, sc in zip(NAMES, got, expected, scale, strict=True):
        assert_close(g, e, scale=sc, what=f"{name}:")


# (x shape, weight shape, stride, padding), each above 2^20 multiply-adds per thread (below, the kernels stay on one)
THREAD_SHAPES = [
    ((5, 16, 40, 40), (6, 16, 3, 3), (1, 1), (1, 1)),  # "same": shifted copies of the image, no im2col
    ((2, 32, 48, 48), (16, 32, 3, 3), (1, 1), (0, 0)),  # im2col in 3 chunks of rows per image
    ((9, 16, 33, 31), (24, 16, 3, 2), (2, 1), (0, 2)),  # 8 weight groups of uneven size
    ((1, 12, 63, 65), (24, 12, 3, 3), (1, 2), (2, 1)),  # batch 1: threads inside the GEMMs
    ((3, 64, 24, 24), (48, 64, 1, 1), (1, 1), (0, 0)),  # pointwise: no im2col
    ((20, 16, 28, 28), (8, 16, 3, 3), (1, 1), (1, 1)),  # groups of 2-3 images in blocks of 2 side by side
    ((2, 8, 50, 50), (8, 8, 3, 3), (1, 1), (1, 1)),  # 2500 positions: two of the GEMM's NC column blocks
]


@pytest.mark.parametrize(("x_shape", "w_shape", "stride", "padding"), THREAD_SHAPES)
def test_result_does_not_depend_on_the_thread_count(x_shape, w_shape, stride, padding):
    """Bit for bit on 1, 2 and 3 threads (grad_weight sums images in groups fixed by the sizes), and right."""
    require_backend("cpp")
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    grad_out = rng.standard_normal(conv2d_forward_ref(x, weight, stride, padding).shape).astype(np.float32)
    one_thread = same_on_every_thread_count(lambda: run("cpp", x, weight, grad_out, stride, padding), NAMES)
    expected, scale = twin_and_scale(x, weight, grad_out, stride, padding)
    for name, got, e, s in zip(NAMES, one_thread, expected, scale, strict=True):
        assert_close(got, e, scale=s, what=f"{name}:")


# One of each way the C++ backward goes through its GEMMs (conv2d.cpp), and a small case for every backend
SKIP_SHAPES = {
    "shifted": ((5, 16, 40, 40), (6, 16, 3, 3), (1, 1), (1, 1)),
    "im2col chunks": ((2, 32, 48, 48), (16, 32, 3, 3), (1, 1), (0, 0)),
    "pointwise": ((3, 64, 24, 24), (48, 64, 1, 1), (1, 1), (0, 0)),
    "images side by side": ((20, 16, 28, 28), (8, 16, 3, 3), (1, 1), (1, 1)),
    "small": ((3, 4, 7, 6), (5, 4, 3, 2), (2, 1), (1, 0)),
}
SKIP_CASES = [("cpp", name) for name in SKIP_SHAPES] + [(b, "small") for b in ("numpy", "cuda-emu")]


@pytest.mark.parametrize(("backend", "shape"), SKIP_CASES)
@pytest.mark.parametrize("needs", [(False, True), (True, False), (False, False)])
def test_backward_computes_only_the_gradients_asked_for(backend, shape, needs):
    """needs_input_grad=(False, True), a first layer (the image needs no gradient): grad_x comes back None, and
    grad_weight is bit for bit the full backward's; the other way round for a frozen weight."""
    require_backend(backend)
    x_shape, w_shape, stride, padding = SKIP_SHAPES[shape]
    rng = np.random.default_rng(5)
    x, weight = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    grad_out = rng.standard_normal(conv2d_forward_ref(x, weight, stride, padding).shape).astype(np.float32)
    with md.use_backend(backend):
        full = conv2d_backward(grad_out, x, weight, stride, padding)
        part = conv2d_backward(grad_out, x, weight, stride, padding, needs_input_grad=needs)
    for name, wanted, got, ref in zip(NAMES[1:], needs, part, full, strict=True):
        if wanted:
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} alone")
        else:
            assert got is None, f"{name}: not asked for, yet computed"


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_the_autodiff_asks_only_for_the_gradients_it_needs(backend, monkeypatch):
    """F.conv2d on an image without requires_grad: its backward asks the kernel for grad_weight only, and the
    weight's and bias's gradients are those of the image with requires_grad."""
    require_backend(backend)
    import minidiff.kernels.conv2d as conv_module

    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("needs_input_grad"))
        return conv2d_backward(*args, **kwargs)

    monkeypatch.setattr(conv_module, "conv2d_backward", spy)
    rng = np.random.default_rng(6)
    image, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    grads = []
    with md.use_backend(backend):
        for image_needs_grad in (False, True):
            x, weight, bias = Tensor(image, requires_grad=image_needs_grad), Tensor(w, True), Tensor(b, True)
            F.conv2d(x, weight, bias, padding=1).sum().backward()
            grads.append((x.grad, weight.grad, bias.grad))
    assert asked == [(False, True), (True, True)]
    assert grads[0][0] is None and grads[1][0] is not None
    for name, got, ref in zip(("grad_weight", "grad_bias"), grads[0][1:], grads[1][1:], strict=True):
        np.testing.assert_array_equal(got, ref, err_msg=name)


@st.composite
def functional_cases(draw):
    """F.conv2d with a bias, sizes >= 1, stride and padding pairs per axis."""
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h, w = draw(st.integers(max(1, kh - 2 * padding[0]), 9)), draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, kh, kw)), rng.standard_normal(o))
    return "conv2d", Case(arrays, lambda x, wt, b: F.conv2d(x, wt, b, stride=stride, padding=padding),
                          lambda t, x, wt, b: t.nn.functional.conv2d(x, wt, b, stride=stride, padding=padding))


test_cpp_path_matches_pytorch_autograd, test_cpp_path_passes_gradcheck = autodiff_tests(functional_cases(), "cpp")
# gradcheck's examples run the emulated kernels a few hundred times each
test_cuda_emu_path_matches_pytorch_autograd, test_cuda_emu_path_passes_gradcheck = autodiff_tests(
    functional_cases(), "cuda-emu", dtypes=(np.float64,), max_examples=(20, 10))


# --- bad input -----------------------------------------------------------------------------------------------------


def bad_cases():
    x, w = ones(2, 3, 5, 5), ones(4, 3, 3, 3)
    g = ones(2, 4, 3, 3)
    yield "x a list", ([[1.0]], w, 1, 0), TypeError, "x: expected a numpy.ndarray"
    yield "float16 x", (x.astype(np.float16), w, 1, 0), TypeError, "x: expected dtype float32 or float64"
    yield "int x", (x.astype(np.int32), w, 1, 0), TypeError, "x: expected dtype float32 or float64"
    yield "weight dtype", (x, w.astype(np.float64), 1, 0), TypeError, "weight: expected dtype float32"
    yield "3-d x", (ones(3, 5, 5), w, 1, 0), ValueError, "x: expected 4 dimensions"
    yield "channels", (x, ones(4, 2, 3, 3), 1, 0), ValueError, r"weight: expected shape \(O, 3, KH, KW\)"
    yield "negative padding", (x, w, 1, (0, -1)), ValueError, "padding: expected an int >= 0"
    yield "zero stride", (x, w, (1, 0), 0), ValueError, "stride: expected an int >= 1"
    yield "float stride", (x, w, 1.5, 0), ValueError, "stride: expected an int >= 1"
    yield "kernel too large", (ones(2, 3, 4, 9), ones(4, 3, 7, 3), 1, (1, 0)), ValueError, \
        "x: padded height 6 is smaller than the kernel"
    yield "empty kernel", (x, ones(4, 3, 0, 3), 1, 0), ValueError, "weight: expected a kernel of at least 1 x 1"
    yield "huge padding", (x, w, 1, 2**40), ValueError, "padding: the output"
    yield "grad_out shape", (g[:, :3], x, w, 1, 0), ValueError, r"grad_out: expected shape \(2, 4, 3, 3\)"
    yield "grad_out dtype", (g.astype(np.float64), x, w, 1, 0), TypeError, "grad_out: expected dtype float32"


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
@pytest.mark.parametrize(("args", "error", "message"), bad_calls(bad_cases()))
def test_bad_input_gets_a_clear_error(backend, args, error, message):
    assert_clear_error(backend, conv2d_backward if len(args) == 5 else conv2d_forward, args, error, message)


def test_versions_belong_to_the_cuda_kernels():
    x, w = ones(1, 2, 4, 4), ones(3, 2, 3, 3)
    g = ones(1, 3, 2, 2)
    with md.use_backend("numpy"), pytest.raises(ValueError, match="version: only the CUDA kernels"):
        conv2d_forward(x, w, 1, 0, version=1)
    require_backend("cuda-emu")
    with md.use_backend("cuda-emu"):
        for bad in (0, 3, True, "2"):
            with pytest.raises(ValueError, match=r"version: expected None or one of \(1, 2\)"):
                conv2d_forward(x, w, 1, 0, version=bad)
            with pytest.raises(ValueError, match=r"version: expected None or one of \(1, 2\)"):
                conv2d_backward(g, x, w, 1, 0, version=bad)


def test_emulated_launch_rechecks_what_the_kernels_rely_on():
    """The CUDA kernels trust their sizes and launch; the emulated launch checks them against the arrays."""
    require_backend("cuda-emu")
    emu = md.backend.extension().cuda_emu
    x, w, out = ones(2, 3, 5, 5, dtype=np.float64), ones(4, 3, 3, 3, dtype=np.float64), np.empty((2, 4, 3, 3))
    sizes = (2, 3, 5, 5, 4, 3, 3, 1, 1, 0, 0)
    emu.conv2d_forward_v2_kernel((1,), (16, 16), x, w, out, *sizes)
    np.testing.assert_array_equal(out, 27.0)

    def sizes_with(i, v):
        return sizes[:i] + (v,) + sizes[i + 1 :]

    forward = "conv2d_forward_v1_kernel"
    cases = [
        ("conv2d_forward_v2_kernel", (64,), (x, w, out, *sizes), r"block: the implicit-GEMM kernels need \(16, 16\)"),
        (forward, (16, 16), (x, w, out, *sizes), r"block: the direct kernels need \(x,\)"),
        (forward, (64,), (x, w, out, *sizes_with(9, -1)), r"padding\[0\]: expected >= 0"),
        (forward, (64,), (x, w, out, *sizes_with(3, 6)), r"x: expected shape \(2, 3, 5, 6\)"),
        (forward, (64,), (x, w, out[:1], *sizes), r"out: expected shape \(2, 4, 3, 3\)"),
        ("conv2d_grad_x_v1_kernel", (64,), (out, w, x[:, :2].copy(), *sizes), r"grad_x: expected shape \(2, 3, 5, 5\)"),
        ("conv2d_grad_weight_v2_kernel", (16, 16), (x, x, w, *sizes), r"grad_out: expected shape \(2, 4, 3, 3\)"),
        (forward, (64,), (x.transpose(0, 1, 3, 2), w, out, *sizes), "x: expected a C-contiguous"),
        (forward, (64,), (x, w, out, *sizes[:9], 2**40, 2**40), "overflow"),
    ]
    for kernel, block, args, message in cases:
        with pytest.raises(ValueError, match=message):
            getattr(emu, kernel)((1,), block, *args)
    with pytest.raises(TypeError, match="weight: expected a float64 array"):
        emu.conv2d_forward_v1_kernel((1,), (64,), x, w.astype(np.float32), out, *sizes)


def test_cpp_boundary_rechecks_what_it_relies_on():
    """Called directly, bypassing the Python checks: errors, never a crash or an out-of-bounds access."""
    require_backend("cpp")
    C = md.backend.extension()
    x, w, out = ones(2, 3, 5, 5, dtype=np.float64), ones(4, 3, 3, 3, dtype=np.float64), np.empty((2, 4, 3, 3))
    forward_cases = [
        ((x.astype(np.float16), w, out, (1, 1), (0, 0)), TypeError, "x: expected dtype float32 or float64"),
        ((x, w.astype(np.float32), out, (1, 1), (0, 0)), TypeError, "weight: expected a float64 array"),
        ((x.transpose(0, 1, 3, 2), w, out, (1, 1), (0, 0)), ValueError, "x: expected a C-contiguous"),
        ((x[0], w, out, (1, 1), (0, 0)), ValueError, "x: expected 4 dimensions"),
        ((x, w[:, :2].copy(), out, (1, 1), (0, 0)), ValueError, "weight: expected 3 input channels"),
        ((x, w, out, (1, 1), (-1, 0)), ValueError, r"padding\[0\]: expected >= 0"),
        ((x, w, out, (1, 0), (0, 0)), ValueError, "stride: expected >= 1"),
        ((x, np.ones((4, 3, 6, 3)), out, (1, 1), (0, 0)), ValueError, "weight: kernel 6 x 3 is larger than the padded"),
        ((x, w, out, (1, 1), (2**62, 0)), ValueError, "padding: the padded size overflows 64-bit indexing"),
        ((x, w, out, (1, 1), (2**40, 2**40)), ValueError, "the sizes overflow 64-bit indexing"),
        ((x, w, np.empty((2, 4, 3, 4)), (1, 1), (0, 0)), ValueError, r"out: expected shape \(2, 4, 3, 3\)"),
    ]
    for args, error, message in forward_cases:
        with pytest.raises(error, match=message):
            C.conv2d_forward(*args)
    ro = np.empty((2, 4, 3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        C.conv2d_forward(x, w, ro, (1, 1), (0, 0))
    buf = np.ones(200)
    with pytest.raises(ValueError, match="out: overlaps x"):
        C.conv2d_forward(buf[:150].reshape(2, 3, 5, 5), w, buf[100:172].reshape(2, 4, 3, 3), (1, 1), (0, 0))

    g, gx, gw = np.ones((2, 4, 3, 3)), np.empty_like(x), np.empty_like(w)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(2, 4, 3, 3\)"):
        C.conv2d_backward(g[:1], x, w, gx, gw, (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"grad_x: expected shape \(2, 3, 5, 5\)"):
        C.conv2d_backward(g, x, w, gx[:1], gw, (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"grad_weight: expected shape \(4, 3, 3, 3\)"):
        C.conv2d_backward(g, x, w, gx, gw[:2], (1, 1), (0, 0))
    with pytest.raises(ValueError, match="grad_x: overlaps grad_out"):
        C.conv2d_backward(buf[50:122].reshape(2, 4, 3, 3), x, w, buf[:150].reshape(2, 3, 5, 5), gw, (1, 1), (0, 0))
    both = np.empty(150 + 108)
    with pytest.raises(ValueError, match="grad_x: overlaps grad_weight"):
        C.conv2d_backward(g, x, w, both[:150].reshape(2, 3, 5, 5), both[100:208].reshape(4, 3, 3, 3), (1, 1), (0, 0))
    with pytest.raises(TypeError, match="grad_x: expected an array or None"):
        C.conv2d_backward(g, x, w, [0.0], gw, (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"grad_weight: expected shape \(4, 3, 3, 3\)"):
        C.conv2d_backward(g, x, w, None, gw[:2], (1, 1), (0, 0))
    C.conv2d_backward(g, x, w, None, None, (1, 1), (0, 0))  # nothing asked for: nothing computed
