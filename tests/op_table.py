"""The op table, in the manner of PyTorch's OpInfo: one entry per differentiable op of minidiff (every Function
of autodiff/ops.py, every public op of minidiff.functional and the kernels behind them), each with its own
sample inputs, so that no op depends on being drawn from a shared random pool.

An entry's samples cover the edge shapes (0-d, size 0, size 1, odd sides; the non-contiguous and negative-stride
layouts are made from every sample by tests/test_op_table.py), every option the op takes (stride and padding
pairs that differ, groups, every `reduction`, attention `scale` and masks, `eps`, the softmax `axis`, ...) and the
values that break ops (ties for max, zeros at a kink, large logits, constant groups, large offsets). Every array of
a sample is a differentiable input; options (masks, targets, indices, axes) are keywords of `ours` and `theirs`.

tests/test_op_table.py checks every (entry, sample) on every backend and dtype: forward and backward against
PyTorch, float64 central differences (gradcheck), the NumPy twin, other memory layouts and the input's dtype.
"""

from __future__ import annotations

import inspect
import operator
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import minidiff.functional as F
from minidiff.autodiff import ops


@dataclass(frozen=True)
class Sample:
    """Concrete inputs of one op: `arrays` (float64; each becomes a tensor that requires grad) and `options`
    (keywords of the entry's ours and theirs).

    skip_gradcheck: why central differences cannot judge the backward here (a tie or a kink, where the op is not
    differentiable and only PyTorch's choice of subgradient is checked; values where a step of 1e-6 is lost in
    rounding), "" when they can. condition: how many times the op amplifies its inputs' rounding error at these
    values (offset / std when normalizing values far from 0); the comparisons allow that many times the
    tolerance table's error."""

    name: str
    arrays: tuple[np.ndarray, ...]
    options: dict[str, Any] = field(default_factory=dict)
    skip_gradcheck: str = ""
    condition: float = 1.0


@dataclass(frozen=True)
class OpInfo:
    """One differentiable op. `op` is what the entry tests (a minidiff.functional function or an autodiff
    Function class); `ours(*tensors, **options)` calls it, `theirs(torch, *torch_tensors, **options)` is
    PyTorch's version; `make_samples(rng)` builds the samples; `twins` name the kernels' NumPy twins the "numpy"
    backend runs ("module.function" in minidiff.kernels; the other backends are compared with them);
    `out_dtype(dtype, options)` is the output's dtype for inputs of `dtype`."""

    name: str
    op: Any
    ours: Callable[..., Any]
    theirs: Callable[..., Any]
    make_samples: Callable[[np.random.Generator], list[Sample]]
    twins: tuple[str, ...] = ()
    notes: str = ""
    out_dtype: Callable[[Any, dict[str, Any]], Any] = lambda dtype, options: dtype

    def samples(self) -> list[Sample]:
        """The samples, from a generator seeded by the entry's name (the same numbers in every run)."""
        found = self.make_samples(np.random.default_rng(zlib.crc32(self.name.encode())))
        names = [s.name for s in found]
        assert len(set(names)) == len(names), f"{self.name}: two samples share a name in {names}"
        return found


# --- values and shapes --------------------------------------------------------------------------------------------


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


def positive(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape)


def tied(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Small integers: many equal values (ties for max) and exact zeros (kinks of relu and abs)."""
    return rng.integers(-2, 3, shape).astype(np.float64)


EDGE_SHAPES = (("0-d", ()), ("size-0", (0, 3)), ("size-1", (1,)), ("odd", (3, 5)))


def edge_samples(rng: np.random.Generator, make=normal, **options: Any) -> list[Sample]:
    """One array in each edge shape."""
    return [Sample(name, (make(rng, shape),), dict(options)) for name, shape in EDGE_SHAPES]


def with_options(samples: list[Sample], prefix: str, **options: Any) -> list[Sample]:
    """The same inputs again with more options, named prefix-name."""
    return [Sample(f"{prefix}-{s.name}", s.arrays, {**s.options, **options}, s.skip_gradcheck, s.condition)
            for s in samples]


def torch_tensor(torch: Any, a: np.ndarray) -> Any:
    """A constant option (mask, target, index array) for PyTorch."""
    return torch.from_numpy(np.array(a))  # a C-ordered copy that stays 0-d (ascontiguousarray makes it 1-d)


# --- elementwise: one input ---------------------------------------------------------------------------------------


def unary(name: str, op: Any, ours: Callable, theirs: Callable, make=normal,
          hard: Callable[[np.random.Generator], list[Sample]] = lambda rng: [], notes: str = "") -> OpInfo:
    """An elementwise op of one tensor: the edge shapes of `make`'s values, then the `hard` samples."""
    return OpInfo(name, op, ours, theirs, lambda rng: [*edge_samples(rng, make), *hard(rng)], notes=notes)


def wide(low: float, high: float, skip_gradcheck: str = "") -> Callable:
    """A sample of values spread over [low, high] (saturation, overflow-prone exponentials)."""
    return lambda rng: [Sample("large", (np.linspace(low, high, 9),), skip_gradcheck=skip_gradcheck)]


def kink_at_zero(rng: np.random.Generator) -> list[Sample]:
    return [Sample("zeros", (tied(rng, (3, 4)),), skip_gradcheck="a kink at 0")]


def gelu_samples(rng: np.random.Generator) -> list[Sample]:
    exact = [*edge_samples(rng), *wide(-12, 12)(rng)]
    return [*exact, *with_options(exact, "tanh", approximate="tanh")]


# Why central differences (f(x + h) - f(x - h)) / 2h, h = 1e-6, of gradcheck's v . f (a sum over every output)
# cannot judge some samples: they divide the rounding of f by h. A normalization of values near 1e4 rounds to
# u offset / std ~ 2e-12 (a relative error of 1e-6 after the division); outputs spread over many orders of
# magnitude round to u max |f|, which swamps the derivatives of the small ones.
LARGE_OFFSET = "an offset of 1e4"
WIDE_RANGE = "outputs over many orders of magnitude"


UNARY = [
    unary("neg", ops.Neg, lambda x: -x, lambda t, x: -x),
    unary("exp", ops.Exp, lambda x: x.exp(), lambda t, x: x.exp(), hard=wide(-30, 30, WIDE_RANGE)),
    unary("log", ops.Log, lambda x: x.log(), lambda t, x: x.log(), make=positive, hard=wide(1e-2, 1e3),
          notes="positive inputs only"),
    unary("sqrt", ops.Sqrt, lambda x: x.sqrt(), lambda t, x: x.sqrt(), make=positive, hard=wide(1e-2, 1e3),
          notes="positive inputs only (the derivative is infinite at 0)"),
    unary("abs", ops.Abs, lambda x: x.abs(), lambda t, x: x.abs(), hard=kink_at_zero,
          notes="kink at 0 (gradient 0 there, as PyTorch): gradcheck skips the zeros sample"),
    unary("tanh", F.tanh, F.tanh, lambda t, x: t.tanh(x), hard=wide(-20, 20)),
    unary("sigmoid", F.sigmoid, F.sigmoid, lambda t, x: t.sigmoid(x), hard=wide(-800, 800)),
    unary("relu", F.relu, F.relu, lambda t, x: t.relu(x), hard=kink_at_zero,
          notes="kink at 0 (gradient 0 there, as PyTorch): gradcheck skips the zeros sample"),
    unary("silu", F.silu, F.silu, lambda t, x: t.nn.functional.silu(x), hard=wide(-800, 800)),
    OpInfo("gelu", F.gelu, lambda x, **o: F.gelu(x, **o), lambda t, x, **o: t.nn.functional.gelu(x, **o),
           gelu_samples),
    OpInfo("clip", F.clip, lambda x, **o: F.clip(x, **o), lambda t, x, low=None, high=None: x.clamp(low, high),
           lambda rng: [*edge_samples(rng, low=-0.5, high=0.7),
                        Sample("low-only", (normal(rng, (4, 3)),), {"low": -0.2}),
                        Sample("high-only", (normal(rng, (4, 3)),), {"high": 0.3}),
                        Sample("at-the-bounds", (np.array([-1.0, -0.5, 0.0, 0.7, 1.0]),), {"low": -0.5, "high": 0.7},
                               skip_gradcheck="kinks at the bounds")],
           notes="gradient 1 on [low, high] including the bounds (as torch.clamp): gradcheck skips the sample there"),
    OpInfo("cast", ops.Cast, lambda x, dtype: x.astype(dtype), lambda t, x, dtype: x.to(getattr(t, dtype)),
           lambda rng: [*(Sample(s.name, s.arrays, s.options, skip_gradcheck="a float32 output")
                          for s in edge_samples(rng, dtype="float32")),
                        Sample("to-float64", (normal(rng, (2, 3)),), {"dtype": "float64"})],
           out_dtype=lambda dtype, options: options["dtype"],
           notes="the output has the option's dtype; the gradient is cast back to the input's"),
]


# --- elementwise: two inputs, broadcasting ------------------------------------------------------------------------

BROADCAST_SHAPES = (("odd", (3, 5), (3, 5)), ("broadcast", (3, 1, 5), (4, 1)), ("0-d-and-vector", (), (4,)),
                    ("size-0", (0, 3), (3,)), ("size-1", (1,), (1, 1)))


def binary(op: Callable) -> Callable:
    """op on two tensors, or on one tensor and the option `const` (a Python number; on the left with
    const_first=True, which exercises __radd__, __rsub__, ...). Works on minidiff's and PyTorch's tensors."""

    def call(*xs, const=None, const_first=False):
        if const is None:
            return op(*xs)
        return op(const, xs[0]) if const_first else op(xs[0], const)

    return call


def binary_samples(rng: np.random.Generator, make=normal, const: float = 1.5) -> list[Sample]:
    pairs = [Sample(name, (make(rng, a), make(rng, b))) for name, a, b in BROADCAST_SHAPES]
    return [*pairs, Sample("constant-right", (make(rng, (2, 3)),), {"const": const}),
            Sample("constant-left", (make(rng, (2, 3)),), {"const": const, "const_first": True})]


def binary_entry(name: str, op: Any, python_op: Callable, make=normal, notes: str = "") -> OpInfo:
    call = binary(python_op)
    return OpInfo(name, op, call, lambda t, *xs, **o: call(*xs, **o), lambda rng: binary_samples(rng, make),
                  notes=notes)


def pow_samples(rng: np.random.Generator) -> list[Sample]:
    base_zero = np.array([0.0, 0.0, 0.5, 1.5])
    return [*binary_samples(rng, positive)[:-2],
            Sample("integer-exponent", (normal(rng, (3, 4)),), {"const": 3}),
            Sample("fractional-exponent", (positive(rng, (3, 4)),), {"const": 2.5}),
            Sample("constant-base", (normal(rng, (3, 4)),), {"const": 2.0, "const_first": True}),
            Sample("base-zero", (base_zero, rng.uniform(1.5, 3.0, 4)), skip_gradcheck="a^b is undefined left of 0")]


def where_ours(a, *b, condition, const=None):
    """a where condition else b: b is the second tensor, or the option `const`."""
    return F.where(condition, a, b[0] if b else const)


def where_theirs(t, a, *b, condition, const=None):
    return t.where(torch_tensor(t, condition), a, b[0] if b else const)


def where_samples(rng: np.random.Generator) -> list[Sample]:
    def chance(*shape):
        return rng.random(shape) < 0.5

    return [Sample("broadcast", (normal(rng, (3, 4)), normal(rng, (4,))), {"condition": chance(3, 1)}),
            Sample("odd", (normal(rng, (3, 5)), normal(rng, (3, 5))), {"condition": chance(3, 5)}),
            Sample("0-d", (np.array(0.3), np.array(-1.2)), {"condition": np.array(True)}),
            Sample("size-0", (normal(rng, (0, 3)), normal(rng, (0, 3))), {"condition": chance(0, 3)}),
            Sample("constant-b", (normal(rng, (2, 3)),), {"condition": chance(2, 3), "const": 0.0})]


BINARY = [
    binary_entry("add", ops.Add, operator.add),
    binary_entry("sub", ops.Sub, operator.sub),
    binary_entry("mul", ops.Mul, operator.mul),
    binary_entry("div", ops.Div, operator.truediv, make=positive, notes="divisors kept away from 0"),
    OpInfo("pow", ops.Pow, binary(operator.pow), lambda t, *xs, **o: binary(operator.pow)(*xs, **o), pow_samples,
           notes="a tensor exponent needs a positive base; at a zero base d/db is taken as 0 (as PyTorch), and "
                 "a^b is undefined just left of 0, so gradcheck skips that sample"),
    OpInfo("where", F.where, where_ours, where_theirs, where_samples),
]


# --- reductions ---------------------------------------------------------------------------------------------------


def torch_reduction(name: str) -> Callable:
    """PyTorch's reduction `name` with minidiff's axis/keepdims convention (axis=None: every axis)."""

    def theirs(t, x, axis=None, keepdims=False, **options):
        if axis is None and not keepdims:
            return getattr(x, name)(**options)
        return getattr(x, name)(dim=tuple(range(x.ndim)) if axis is None else axis, keepdim=keepdims, **options)

    return theirs


def reduction_samples(rng: np.random.Generator) -> list[Sample]:
    """Every way to give axis and keepdims, on the edge shapes."""
    return [Sample("0-d", (normal(rng, ()),)),
            Sample("size-1", (normal(rng, (1,)),)),
            Sample("all-axes-keepdims", (normal(rng, (3, 5)),), {"keepdims": True}),
            Sample("axis-1", (normal(rng, (3, 4, 5)),), {"axis": 1}),
            Sample("axis-minus-1-keepdims", (normal(rng, (3, 5)),), {"axis": -1, "keepdims": True}),
            Sample("axes-0-2", (normal(rng, (3, 4, 5)),), {"axis": (0, 2)}),
            Sample("size-0-kept-axis", (normal(rng, (3, 0)),), {"axis": 0})]


def reduction(name: str, op: Any, theirs: Callable, more=lambda rng: [], notes: str = "") -> OpInfo:
    return OpInfo(name, op, lambda x, **o: getattr(x, name)(**o), theirs,
                  lambda rng: [*reduction_samples(rng), *more(rng)], notes=notes)


def torch_var(t, x, correction=0, **options):
    with warnings.catch_warnings():  # PyTorch warns of no degrees of freedom when reducing an empty tensor
        warnings.simplefilter("ignore", UserWarning)
        return torch_reduction("var")(t, x, correction=correction, **options)  # PyTorch's default correction is 1


REDUCTIONS = [
    reduction("sum", ops.Sum, torch_reduction("sum"),
              lambda rng: [Sample("size-0-summed-axis", (normal(rng, (0, 3)),), {"axis": 0})]),
    reduction("mean", ops.Mean, torch_reduction("mean")),
    reduction("max", ops.Max, torch_reduction("amax"),
              lambda rng: [Sample("ties", (tied(rng, (4, 5)),), {"axis": 1}, skip_gradcheck="ties"),
                           Sample("ties-all-axes", (tied(rng, (3, 4)),), skip_gradcheck="ties"),
                           Sample("large", (np.array([[1e30, -1e30, 3.0], [-1e30, -1e30, -1e29]]),), {"axis": 1},
                                  skip_gradcheck="a step of 1e-6 is lost at 1e30")],
              notes="not differentiable at ties: tied maxima share the gradient equally (as torch.amax); "
                    "gradcheck skips tied samples"),
    reduction("var", ops.Var, torch_var,
              lambda rng: [*with_options(reduction_samples(rng)[2:-1], "correction-1", correction=1),
                           Sample("constant", (np.full((3, 4), 2.5),), {"axis": 1}),
                           Sample("large-offset", (1e4 + normal(rng, (3, 4)),), {"axis": 0}, condition=1e4)],
              notes="correction=1 needs two elements per reduction"),
]


# --- shapes and indexing ------------------------------------------------------------------------------------------


def permute_ours(x, axes=None, transpose=None):
    """The three ways to reorder axes: x.permute(*axes), x.transpose(*transpose), x.T (neither given)."""
    if transpose is not None:
        return x.transpose(*transpose)
    return x.T if axes is None else x.permute(*axes)


def permute_theirs(t, x, axes=None, transpose=None):
    if transpose is not None:
        return x.transpose(*transpose)
    return x.permute(tuple(reversed(range(x.ndim))) if axes is None else axes)  # PyTorch's x.T is for 2-D only


def getitem_theirs(t, x, index):
    """x[index] in PyTorch as a gather of the flat positions NumPy picks (PyTorch has no negative steps): so
    PyTorch computes the gradient, scatter-adding repeated picks, and NumPy only says which elements."""
    picked = np.arange(x.numel()).reshape(tuple(x.shape))[index]
    return x.reshape(-1)[torch_tensor(t, np.asarray(picked))]


def getitem_samples(rng: np.random.Generator) -> list[Sample]:
    x = normal(rng, (3, 4, 5))
    indices = {
        "slices": (slice(1, None), slice(None, None, 2), -1),
        "negative-steps": (slice(None, None, -1), slice(1, 3), slice(None, None, -2)),
        "int": 1,
        "all-ints-0-d": (2, -1, 0),
        "ellipsis-and-newaxis": (Ellipsis, None, 1),
        "repeated-ints": np.array([2, 0, 2, 2]),
        "2-d-int-array": (slice(None), np.array([[0, 1], [3, 3]])),
        "bool-mask": x[..., 0] > 0,
        "all-false-mask": np.zeros((3, 4), bool),
        "empty-slice": slice(2, 1),
    }
    return [*(Sample(name, (x,), {"index": index}) for name, index in indices.items()),
            Sample("0-d-input", (np.array(1.5),), {"index": ()})]


def torch_pad(t, x, widths, value=0.0):
    pairs = [p for pair in reversed(widths) for p in pair]  # PyTorch lists the last axis first
    return t.nn.functional.pad(x, pairs, value=value) if pairs else x.clone()


SHAPES = [
    OpInfo("reshape", ops.Reshape, lambda x, shape: x.reshape(shape), lambda t, x, shape: x.reshape(shape),
           lambda rng: [Sample("odd", (normal(rng, (3, 4)),), {"shape": (2, 6)}),
                        Sample("minus-1", (normal(rng, (3, 4, 2)),), {"shape": (-1, 3)}),
                        Sample("0-d-to-1x1", (np.array(0.7),), {"shape": (1, 1)}),
                        Sample("size-1-to-0-d", (np.array([0.7]),), {"shape": ()}),
                        Sample("size-0", (normal(rng, (0, 3)),), {"shape": (3, 0)})]),
    OpInfo("permute", ops.Permute, permute_ours, permute_theirs,
           lambda rng: [Sample("odd", (normal(rng, (3, 4, 5)),), {"axes": (2, 0, 1)}),
                        Sample("negative-axes", (normal(rng, (3, 4, 5)),), {"axes": (-1, 0, -2)}),
                        Sample("T", (normal(rng, (3, 4, 5)),)),
                        Sample("transpose", (normal(rng, (3, 4, 5)),), {"transpose": (0, -1)}),
                        Sample("0-d", (np.array(0.7),), {"axes": ()}),
                        Sample("size-0", (normal(rng, (0, 3)),), {"axes": (1, 0)})]),
    OpInfo("getitem", ops.GetItem, lambda x, index: x[index], getitem_theirs, getitem_samples,
           notes="repeated integer indices add their gradients"),
    OpInfo("concat", F.concat, lambda *xs, axis: F.concat(xs, axis=axis), lambda t, *xs, axis: t.cat(xs, dim=axis),
           lambda rng: [Sample("axis-1", (normal(rng, (3, 4, 2)), normal(rng, (3, 1, 2))), {"axis": 1}),
                        Sample("axis-minus-1-three", (normal(rng, (2, 3)), normal(rng, (2, 1)), normal(rng, (2, 2))),
                               {"axis": -1}),
                        Sample("size-0-part", (normal(rng, (0, 3)), normal(rng, (2, 3))), {"axis": 0}),
                        Sample("size-1", (normal(rng, (1,)),), {"axis": 0})]),
    OpInfo("stack", F.stack, lambda *xs, axis: F.stack(xs, axis=axis), lambda t, *xs, axis: t.stack(xs, dim=axis),
           lambda rng: [Sample("middle-axis", (normal(rng, (3, 2)), normal(rng, (3, 2))), {"axis": 1}),
                        Sample("axis-minus-1", (normal(rng, (3, 5)), normal(rng, (3, 5))), {"axis": -1}),
                        Sample("0-d", (np.array(0.5), np.array(-1.0), np.array(2.0)), {"axis": 0}),
                        Sample("size-0", (normal(rng, (0, 3)), normal(rng, (0, 3))), {"axis": 0})]),
    OpInfo("pad", F.pad, lambda x, **o: F.pad(x, **o), torch_pad,
           lambda rng: [Sample("asymmetric", (normal(rng, (3, 4, 2)),), {"widths": [(0, 0), (1, 2), (2, 0)],
                                                                           "value": 0.5}),
                        Sample("1-d", (normal(rng, (5,)),), {"widths": [(3, 1)]}),
                        Sample("0-d", (np.array(0.3),), {"widths": []}),
                        Sample("size-0", (normal(rng, (0, 3)),), {"widths": [(1, 1), (0, 2)], "value": -1.0})]),
]


# --- matrix products ----------------------------------------------------------------------------------------------

MATMUL_SHAPES = (("odd", (3, 5), (5, 2)), ("vector-matrix", (5,), (5, 3)), ("matrix-vector", (3, 5), (5,)),
                 ("vector-vector", (4,), (4,)), ("batch-broadcast", (2, 1, 3, 4), (5, 4, 2)),
                 ("vector-batch", (4,), (2, 4, 3)), ("inner-size-0", (3, 0), (0, 2)), ("size-1", (1, 1), (1, 1)))


def linear_samples(rng: np.random.Generator) -> list[Sample]:
    w, b = normal(rng, (3, 5)), normal(rng, (3,))
    return [Sample("batch-odd", (normal(rng, (4, 5)), w, b)),
            Sample("1-d-input", (normal(rng, (5,)), w, b)),
            Sample("leading-axes", (normal(rng, (2, 3, 5)), w, b)),
            Sample("no-bias", (normal(rng, (4, 5)), w)),
            Sample("size-1", (normal(rng, (1, 1)), normal(rng, (1, 1)), normal(rng, (1,)))),
            Sample("batch-0", (normal(rng, (0, 5)), w, b))]


MATMUL = [
    OpInfo("matmul", ops.MatMul, operator.matmul, lambda t, a, b: a @ b,
           lambda rng: [Sample(name, (normal(rng, a), normal(rng, b))) for name, a, b in MATMUL_SHAPES],
           notes="1-D operands are a row or a column; batch axes broadcast"),
    OpInfo("linear", F.linear, F.linear, lambda t, *xs: t.nn.functional.linear(*xs), linear_samples),
]


# --- softmax and losses -------------------------------------------------------------------------------------------


def softmax_samples(rng: np.random.Generator) -> list[Sample]:
    return [Sample("odd", (normal(rng, (3, 5)),), {"axis": -1}),
            Sample("axis-0", (normal(rng, (3, 5)),), {"axis": 0}),
            Sample("axis-1-of-3-d", (normal(rng, (2, 3, 4)),), {"axis": 1}),
            Sample("0-d", (np.array(0.4),), {"axis": -1}),
            Sample("size-1-axis", (normal(rng, (4, 1)),), {"axis": -1}),
            Sample("empty-axis", (normal(rng, (3, 0)),), {"axis": -1}),
            Sample("empty-other-axis", (normal(rng, (0, 3)),), {"axis": -1}),
            Sample("ties", (np.full((2, 4), 0.5),), {"axis": -1}),
            Sample("large-logits", (np.array([[1000.0, 999.0, -1000.0], [-800.0, -805.0, -790.0]]),), {"axis": 1})]


def cross_entropy_samples(rng: np.random.Generator) -> list[Sample]:
    target = rng.integers(0, 3, 5)
    found = [Sample(f"reduction-{r}", (normal(rng, (5, 3)),), {"target": target, "reduction": r})
             for r in F.REDUCTIONS]
    return [*found,
            Sample("one-class", (normal(rng, (2, 1)),), {"target": np.zeros(2, np.int64)}),
            Sample("batch-1", (normal(rng, (1, 4)),), {"target": np.array([3])}),
            Sample("batch-0-sum", (normal(rng, (0, 3)),), {"target": np.zeros(0, np.int64), "reduction": "sum"}),
            Sample("large-logits", (np.array([[500.0, -500.0, 0.0], [300.0, 300.0, -40.0]]),),
                   {"target": np.array([1, 0])})]


def mse_ours(prediction, *tensor_target, target=None, reduction="mean"):
    """The target is the second tensor, or the option `target` (a NumPy array, a constant)."""
    return F.mse_loss(prediction, tensor_target[0] if tensor_target else target, reduction)


def mse_theirs(t, prediction, *tensor_target, target=None, reduction="mean"):
    target = tensor_target[0] if tensor_target else torch_tensor(t, target)
    return t.nn.functional.mse_loss(prediction, target, reduction=reduction)


def mse_samples(rng: np.random.Generator) -> list[Sample]:
    found = [Sample(f"reduction-{r}", (normal(rng, (3, 5)),), {"target": normal(rng, (3, 5)), "reduction": r})
             for r in F.REDUCTIONS]
    return [*found,
            Sample("target-is-a-tensor", (normal(rng, (4, 2)), normal(rng, (4, 2)))),
            Sample("0-d", (np.array(0.3),), {"target": np.array(-0.2)}),
            Sample("size-0-sum", (normal(rng, (0, 3)),), {"target": np.zeros((0, 3)), "reduction": "sum"})]


SOFTMAX_AND_LOSSES = [
    OpInfo("softmax", F.softmax, lambda x, axis: F.softmax(x, axis=axis), lambda t, x, axis: t.softmax(x, dim=axis),
           softmax_samples, twins=("softmax.softmax_ref", "softmax.softmax_backward_ref")),
    OpInfo("log_softmax", F.log_softmax, lambda x, axis: F.log_softmax(x, axis=axis),
           lambda t, x, axis: t.log_softmax(x, dim=axis), softmax_samples,
           twins=("softmax.log_softmax_ref", "softmax.log_softmax_backward_ref")),
    OpInfo("cross_entropy", F.cross_entropy, lambda x, target, **o: F.cross_entropy(x, target, **o),
           lambda t, x, target, **o: t.nn.functional.cross_entropy(x, torch_tensor(t, target), **o),
           cross_entropy_samples),
    OpInfo("mse_loss", F.mse_loss, mse_ours, mse_theirs, mse_samples,
           notes="a NumPy target takes the prediction's dtype"),
]


# --- convolution, pooling, upsampling -----------------------------------------------------------------------------


def conv2d_samples(rng: np.random.Generator) -> list[Sample]:
    def arrays(x_shape, w_shape, bias=True):
        found = (normal(rng, x_shape), normal(rng, w_shape))
        return (*found, normal(rng, w_shape[:1])) if bias else found

    return [Sample("stride-1x2-padding-0x2", arrays((1, 3, 5, 7), (2, 3, 3, 2)), {"stride": (1, 2), "padding": (0, 2)}),
            Sample("stride-2-padding-1-no-bias", arrays((2, 2, 6, 5), (3, 2, 3, 3), bias=False),
                   {"stride": 2, "padding": 1}),
            Sample("same-size", arrays((2, 3, 6, 5), (2, 3, 3, 3)), {"padding": 1}),
            Sample("kernel-1x1", arrays((2, 3, 4, 4), (4, 3, 1, 1))),
            Sample("stride-3x2-above-kernel", arrays((1, 2, 7, 6), (2, 2, 2, 1)), {"stride": (3, 2)}),
            Sample("output-1x1", arrays((1, 1, 3, 3), (1, 1, 5, 5)), {"padding": 1}),
            Sample("batch-0", arrays((0, 2, 5, 5), (2, 2, 3, 3)), {"padding": (1, 0)})]


def avg_pool_samples(rng: np.random.Generator) -> list[Sample]:
    return [Sample("kernel-2", (normal(rng, (2, 2, 6, 4)),), {"kernel_size": 2}),
            Sample("kernel-2x3-stride-1x2", (normal(rng, (1, 2, 5, 7)),), {"kernel_size": (2, 3), "stride": (1, 2)}),
            Sample("stride-above-kernel-leftovers", (normal(rng, (2, 1, 7, 5)),), {"kernel_size": 2, "stride": 3}),
            Sample("kernel-1", (normal(rng, (1, 2, 3, 3)),), {"kernel_size": 1}),
            Sample("whole-image", (normal(rng, (2, 3, 3, 5)),), {"kernel_size": (3, 5)})]


def upsample_samples(rng: np.random.Generator) -> list[Sample]:
    return [Sample("scale-2-odd", (normal(rng, (2, 2, 3, 5)),), {"scale_factor": 2}),
            Sample("scale-3", (normal(rng, (1, 1, 2, 2)),), {"scale_factor": 3}),
            Sample("scale-1", (normal(rng, (1, 2, 2, 3)),), {"scale_factor": 1}),
            Sample("size-1", (normal(rng, (1, 1, 1, 1)),), {"scale_factor": 2}),
            Sample("batch-0", (normal(rng, (0, 2, 3, 3)),), {"scale_factor": 2})]


CONVOLUTION = [
    OpInfo("conv2d", F.conv2d, lambda *xs, **o: F.conv2d(*xs, **o),
           lambda t, *xs, **o: t.nn.functional.conv2d(*xs, **o), conv2d_samples,
           twins=("conv2d.conv2d_forward_ref", "conv2d.conv2d_backward_ref")),
    OpInfo("avg_pool2d", F.avg_pool2d, lambda x, **o: F.avg_pool2d(x, **o),
           lambda t, x, **o: t.nn.functional.avg_pool2d(x, **o), avg_pool_samples),
    OpInfo("upsample_nearest2d", F.upsample_nearest2d, lambda x, **o: F.upsample_nearest2d(x, **o),
           lambda t, x, scale_factor: t.nn.functional.interpolate(x, scale_factor=scale_factor, mode="nearest"),
           upsample_samples),
]


# --- normalization ------------------------------------------------------------------------------------------------
# The arrays after x are the keyword parameters named by the option `names` (weight and bias by default).


def group_norm_ours(x, *params, num_groups, names=("weight", "bias"), **options):
    return F.group_norm(x, num_groups, **dict(zip(names, params, strict=True)), **options)


def group_norm_theirs(t, x, *params, num_groups, names=("weight", "bias"), eps=1e-5, activation=None):
    """PyTorch's group norm, then the U-Net's AdaGN scale-shift [E44] and SiLU when asked."""
    p = dict(zip(names, params, strict=True))
    y = t.nn.functional.group_norm(x, num_groups, p.get("weight"), p.get("bias"), eps)
    if "scale" in p:
        y = y * (1 + p["scale"]) + p["shift"]
    return t.nn.functional.silu(y) if activation == "silu" else y


def group_norm_samples(rng: np.random.Generator) -> list[Sample]:
    def affine(x, groups, **options):
        c = x.shape[1]
        return (x, normal(rng, (c,)), normal(rng, (c,))), {"num_groups": groups, **options}

    found = [Sample("4-d-groups-3", *affine(2 * normal(rng, (2, 6, 3, 5)) + 1, 3)),
             Sample("one-group", *affine(normal(rng, (2, 4, 3, 3)), 1)),
             Sample("group-per-channel", *affine(normal(rng, (1, 4, 3, 3)), 4)),
             Sample("2-d-input", *affine(normal(rng, (3, 8)), 2)),
             Sample("3-d-input", *affine(normal(rng, (2, 4, 5)), 2)),
             Sample("5-d-input", *affine(normal(rng, (1, 4, 2, 3, 2)), 2)),
             Sample("no-weight-no-bias", (normal(rng, (2, 6, 2, 3)),), {"num_groups": 3, "names": ()}),
             Sample("weight-only", (normal(rng, (2, 4, 3)), normal(rng, (4,))), {"num_groups": 2,
                                                                                 "names": ("weight",)}),
             Sample("eps-0.1", *affine(normal(rng, (2, 4, 3, 3)), 2, eps=0.1)),
             Sample("batch-0", *affine(normal(rng, (0, 6, 3, 5)), 3)),
             Sample("constant-groups", *affine(np.full((2, 4, 2, 2), 0.5), 2, eps=0.1)),
             Sample("large-offset", *affine(1e4 + normal(rng, (2, 4, 3, 3)), 2), condition=1e4,
                    skip_gradcheck=LARGE_OFFSET)]
    if "activation" in inspect.signature(F.group_norm).parameters:  # the U-Net's fused AdaGN + SiLU epilogue
        def fused(x, groups, **options):
            (x, w, b), o = affine(x, groups, **options)
            scale_shift = (0.5 * normal(rng, (x.shape[0], x.shape[1], 1, 1)) for _ in range(2))
            return (x, w, b, *scale_shift), {"names": ("weight", "bias", "scale", "shift"), **o}

        found += [Sample("silu", *affine(normal(rng, (2, 4, 3, 3)), 2, activation="silu")),
                  Sample("scale-shift", *fused(normal(rng, (2, 6, 3, 5)), 3)),
                  Sample("scale-shift-silu", *fused(normal(rng, (2, 4, 3, 3)), 2, activation="silu")),
                  Sample("scale-shift-silu-batch-0", *fused(normal(rng, (0, 4, 3, 3)), 2, activation="silu")),
                  Sample("scale-shift-silu-constant-groups", *fused(np.full((2, 4, 2, 2), 0.5), 2, eps=0.1,
                                                                     activation="silu"))]
    return found


def layer_norm_ours(x, *params, normalized_shape, names=("weight", "bias"), **options):
    return F.layer_norm(x, normalized_shape, **dict(zip(names, params, strict=True)), **options)


def layer_norm_theirs(t, x, *params, normalized_shape, names=("weight", "bias"), **options):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    return t.nn.functional.layer_norm(x, shape, **dict(zip(names, params, strict=True)), **options)


def layer_norm_samples(rng: np.random.Generator) -> list[Sample]:
    w, b = normal(rng, (4, 6)), normal(rng, (4, 6))
    return [Sample("two-axes", (normal(rng, (2, 4, 6)) + 3, w, b), {"normalized_shape": (4, 6)}),
            Sample("int-shape", (normal(rng, (3, 6)), w[0], b[0]), {"normalized_shape": 6}),
            Sample("1-d-input", (normal(rng, (5,)),), {"normalized_shape": 5, "names": ()}),
            Sample("no-weight-no-bias", (normal(rng, (3, 4, 6)),), {"normalized_shape": (4, 6), "names": ()}),
            Sample("bias-only-two-axes", (normal(rng, (3, 4, 6)), b), {"normalized_shape": (4, 6),
                                                                       "names": ("bias",)}),
            Sample("weight-only", (normal(rng, (3, 6)), w[0]), {"normalized_shape": 6, "names": ("weight",)}),
            Sample("eps-0.1", (normal(rng, (3, 6)), w[0], b[0]), {"normalized_shape": 6, "eps": 0.1}),
            Sample("batch-0", (normal(rng, (0, 6)), w[0], b[0]), {"normalized_shape": (6,)}),
            Sample("constant-rows", (np.full((2, 6), -1.5), w[0], b[0]), {"normalized_shape": 6, "eps": 0.1}),
            Sample("large-offset", (1e4 + normal(rng, (3, 6)), w[0], b[0]), {"normalized_shape": 6}, condition=1e4,
                   skip_gradcheck=LARGE_OFFSET)]


NORMALIZATION = [
    OpInfo("group_norm", F.group_norm, group_norm_ours, group_norm_theirs, group_norm_samples,
           twins=("group_norm.group_norm_forward_ref", "group_norm.group_norm_backward_ref",
                  "activation.activation_ref", "activation.activation_backward_ref"),
           notes="constant groups: variance 0, x_hat 0, a finite gradient (eps keeps rstd finite)"),
    OpInfo("layer_norm", F.layer_norm, layer_norm_ours, layer_norm_theirs, layer_norm_samples,
           twins=("group_norm.normalize_rows_ref", "group_norm.normalize_rows_backward_ref")),
]


# --- attention ----------------------------------------------------------------------------------------------------


def attention_samples(rng: np.random.Generator) -> list[Sample]:
    def qkv(lead_q, lead_k, lq, lk, d=4, dv=3, q_scale=1.0):
        return (q_scale * normal(rng, (*lead_q, lq, d)), normal(rng, (*lead_k, lk, d)), normal(rng, (*lead_k, lk, dv)))

    mask = rng.random((3, 5)) < 0.6
    mask[:, 0] = True  # every query keeps a key: a query with none gets NaN (see the entry's notes)
    per_batch = rng.random((2, 1, 3, 5)) < 0.6
    per_batch[..., 0] = True
    return [Sample("lq-3-lk-5-dv-3", qkv((2, 2), (2, 2), 3, 5)),
            Sample("scale-0.3", qkv((2,), (2,), 3, 5), {"scale": 0.3}),
            Sample("mask-lq-lk", qkv((2, 2), (2, 2), 3, 5), {"mask": mask}),
            Sample("mask-per-batch", qkv((2, 2), (2, 2), 3, 5), {"mask": per_batch, "scale": 2.0}),
            Sample("2-d-inputs", qkv((), (), 4, 3, d=2, dv=5)),
            Sample("one-query-one-key", qkv((1,), (1,), 1, 1)),
            Sample("leading-axes-broadcast", qkv((2, 1), (1, 3), 3, 4)),
            Sample("large-logits", qkv((2,), (2,), 3, 4, q_scale=30.0)),
            Sample("tied-keys", (normal(rng, (2, 3, 4)), np.ones((2, 4, 4)), normal(rng, (2, 4, 3)))),
            Sample("no-queries", qkv((2,), (2,), 0, 4)),
            Sample("batch-0", qkv((0, 2), (0, 2), 3, 4))]


def attention_theirs(t, q, k, v, mask=None, scale=None):
    mask = None if mask is None else torch_tensor(t, mask)
    return t.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


ATTENTION = [
    OpInfo("scaled_dot_product_attention", F.scaled_dot_product_attention,
           lambda q, k, v, **o: F.scaled_dot_product_attention(q, k, v, **o), attention_theirs, attention_samples,
           twins=("attention.attention_forward_ref", "attention.attention_backward_ref"),
           notes="[E45]; no sample masks every key of a query: minidiff gives NaN there (and NaN gradients for "
                 "every key), PyTorch 2.13 gives 0"),
]


# --- indexing and randomness --------------------------------------------------------------------------------------


def embedding_samples(rng: np.random.Generator) -> list[Sample]:
    table = normal(rng, (5, 3))
    return [Sample("repeats-2-d", (table,), {"indices": rng.integers(0, 5, (3, 4))}),
            Sample("0-d-index", (table,), {"indices": np.array(4)}),
            Sample("no-indices", (table,), {"indices": np.zeros(0, np.int64)}),
            Sample("one-row", (normal(rng, (1, 2)),), {"indices": np.zeros(3, np.int64)})]


def dropout_ours(x, p, seed, training=True):
    return F.dropout(x, p, training, rng=np.random.default_rng(seed))


def dropout_theirs(t, x, p, seed, training=True):
    """Drop each element with probability p, scale the rest by 1 / (1 - p), with the mask drawn as minidiff's."""
    if not training or p == 0.0:
        return x * 1
    keep = np.random.default_rng(seed).random(tuple(x.shape)) >= p
    return x * torch_tensor(t, keep) / (1 - p)


RANDOM_AND_INDEXING = [
    OpInfo("embedding", F.embedding, lambda w, indices: F.embedding(indices, w),
           lambda t, w, indices: t.nn.functional.embedding(torch_tensor(t, indices), w), embedding_samples,
           notes="repeated indices add their gradients"),
    OpInfo("dropout", F.dropout, dropout_ours, dropout_theirs,
           lambda rng: [*edge_samples(rng, p=0.3, seed=7),
                        Sample("p-0.9", (normal(rng, (4, 6)),), {"p": 0.9, "seed": 3}),
                        Sample("p-0", (normal(rng, (3,)),), {"p": 0.0, "seed": 0}),
                        Sample("not-training", (normal(rng, (3,)),), {"p": 0.5, "seed": 0, "training": False})],
           notes="random output: each call draws its mask from a fresh Generator seeded by the option `seed`, so "
                 "gradcheck's repeated calls see one mask; PyTorch's side applies the same mask"),
]


TABLE: list[OpInfo] = [*UNARY, *BINARY, *REDUCTIONS, *SHAPES, *MATMUL, *SOFTMAX_AND_LOSSES, *CONVOLUTION,
                       *NORMALIZATION, *ATTENTION, *RANDOM_AND_INDEXING]


def public_functional_ops() -> dict[str, Callable[..., Any]]:
    """Every public function of minidiff.functional (each is a differentiable op)."""
    return {name: f for name, f in inspect.getmembers(F, inspect.isfunction)
            if f.__module__ == F.__name__ and not name.startswith("_")}
