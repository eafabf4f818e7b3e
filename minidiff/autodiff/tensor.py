"""Tensor: an array that remembers how it was computed, so that gradients can flow back through it.

    x = md.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum()
    y.backward()          # x.grad == 2 * x

Only leaves (tensors made by the user, not by an operation) receive `.grad`; gradients accumulate
there across backward calls until `zero_grad`. The backward pass visits the graph in reverse
topological order, found iteratively (a chain of 100,000 operations is fine), and frees each node's
saved arrays as it goes.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from minidiff.backend import array_module, as_array, is_device_array, to_host

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DEFAULT_DTYPE = np.dtype(np.float32)  # for Python numbers and lists, as in PyTorch

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled: bool) -> Iterator[None]:
    before = is_grad_enabled()
    _state.grad_enabled = enabled
    try:
        yield
    finally:
        _state.grad_enabled = before


def no_grad() -> contextlib.AbstractContextManager[None]:
    """Within this block (or decorated function) operations record no graph."""
    return _grad_mode(False)


def enable_grad() -> contextlib.AbstractContextManager[None]:
    return _grad_mode(True)


def _as_array(data: Any, dtype: Any) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None or isinstance(data, np.ndarray | np.generic) or is_device_array(data):
        return as_array(data, dtype)  # a CuPy array stays on its GPU
    array = np.asarray(data)
    return array.astype(DEFAULT_DTYPE) if array.dtype.kind == "f" else array


class Node:
    """Where a tensor came from: the Function, its context and its tensor inputs (None for constants)."""

    __slots__ = ("ctx", "fn", "freed", "parents")

    def __init__(self, fn: type, ctx: Any, parents: tuple[Any, ...]) -> None:
        self.fn, self.ctx, self.parents, self.freed = fn, ctx, parents, False

    def free(self) -> None:
        """Drop the saved arrays and the links to the inputs once the backward has run."""
        self.ctx, self.parents, self.freed = None, (), True


class Tensor:
    """An n-dimensional array (NumPy, or CuPy on a GPU) with an optional gradient and the graph that produced it."""

    __slots__ = ("__weakref__", "_node", "data", "grad", "requires_grad")
    __array_ufunc__ = None  # numpy_array + tensor defers to Tensor.__radd__

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        self.data: np.ndarray = _as_array(data, dtype)
        if requires_grad and self.data.dtype not in FLOAT_DTYPES:
            raise TypeError(f"requires_grad: only float32 and float64 tensors can have gradients, "
                            f"got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad: np.ndarray | None = None
        self._node: Node | None = None

    @classmethod
    def _from_op(cls, data: Any, node: Node | None) -> Tensor:
        """The output of an operation (no checks: the Function made it): tracked when node is given."""
        out = cls.__new__(cls)
        out.data = data if type(data) is np.ndarray else as_array(data)
        out.requires_grad = node is not None
        out.grad = None
        out._node = node
        return out

    # -- array facts ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(to_host(self.data), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad})"

    def numpy(self) -> np.ndarray:
        """The data (not a copy; a host copy of a CuPy array); refuses when gradients are tracked, as a reminder
        to detach."""
        if self.requires_grad:
            raise RuntimeError("numpy: this tensor requires grad; call .detach().numpy()")
        return to_host(self.data)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item: expected a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if not self.is_leaf:
            raise RuntimeError("requires_grad_: only leaf tensors can change requires_grad")
        if requires_grad and self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"requires_grad: only float32 and float64 tensors can have gradients, got {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def astype(self, dtype: Any) -> Tensor:
        from minidiff.autodiff import ops

        return ops.Cast.apply(self, dtype=np.dtype(dtype))

    # -- the backward pass ------------------------------------------------------------------------
    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf), weighted by `gradient`, into every leaf's .grad.

        gradient: d(loss)/d(self), of self's shape; may be omitted for a one-element tensor (then 1).
        retain_graph: keep the saved arrays, to call backward through the same graph again.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input had requires_grad=True, "
                               "or it was computed under no_grad)")
        if gradient is None:
            if self.size != 1:
                raise RuntimeError(f"backward: gradient must be given for a tensor of shape {self.shape}; "
                                   "only a one-element output has the implicit gradient 1")
            seed = array_module(self.data).ones(self.shape, self.dtype)
        else:
            seed = _as_array(gradient, self.dtype)
            if seed.shape != self.shape:
                raise ValueError(f"gradient: expected shape {self.shape}, got {seed.shape}")
        grads: dict[int, np.ndarray] = {id(self): seed}
        for tensor in reversed(_topological_order(self)):
            grad = grads.pop(id(tensor), None)
            if grad is None:
                continue
            node = tensor._node
            if node is None:  # a leaf: accumulate
                tensor.grad = as_array(grad).copy() if tensor.grad is None else as_array(tensor.grad + grad)
                continue
            if node.freed:
                raise RuntimeError("backward: this graph was already freed by an earlier backward; "
                                   "pass retain_graph=True to the first call to go through it twice")
            input_grads = node.fn.backward(node.ctx, grad)
            if type(input_grads) is not tuple:
                input_grads = (input_grads,)
            for parent, g in zip(node.parents, input_grads, strict=True):
                if parent is None or g is None:
                    continue
                data = parent.data
                if g.shape != data.shape:
                    raise RuntimeError(f"{node.fn.__name__}.backward returned a gradient of shape {g.shape} "
                                       f"for an input of shape {data.shape}")
                if g.dtype != data.dtype:
                    g = g.astype(data.dtype)
                key = id(parent)
                grads[key] = grads[key] + g if key in grads else g
            if not retain_graph:
                node.free()

    def zero_grad(self) -> None:
        self.grad = None

    # -- operators: each is one Function of minidiff.autodiff.ops ------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return _ops().Add.apply(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops().Add.apply(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops().Sub.apply(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops().Sub.apply(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops().Mul.apply(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops().Mul.apply(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops().Div.apply(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops().Div.apply(other, self)

    def __neg__(self) -> Tensor:
        return _ops().Neg.apply(self)

    def __pow__(self, exponent: Any) -> Tensor:
        return _ops().Pow.apply(self, exponent)

    def __rpow__(self, base: Any) -> Tensor:
        return _ops().Pow.apply(base, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops().MatMul.apply(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops().MatMul.apply(other, self)

    def __getitem__(self, index: Any) -> Tensor:
        return _ops().GetItem.apply(self, index=_plain_index(index))

    # Comparisons give plain boolean arrays: they have no gradient.
    def __lt__(self, other: Any) -> np.ndarray:
        return self.data < _data(other)

    def __le__(self, other: Any) -> np.ndarray:
        return self.data <= _data(other)

    def __gt__(self, other: Any) -> np.ndarray:
        return self.data > _data(other)

    def __ge__(self, other: Any) -> np.ndarray:
        return self.data >= _data(other)

    __hash__ = object.__hash__

    # -- methods -----------------------------------------------------------------------------------
    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops().Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops().Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return _ops().Max.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis: Any = None, keepdims: bool = False, correction: int = 0) -> Tensor:
        return _ops().Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def reshape(self, *shape: Any) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        return _ops().Reshape.apply(self, shape=tuple(shape))

    def transpose(self, axis0: int = -2, axis1: int = -1) -> Tensor:
        axes = list(range(self.ndim))
        axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
        return self.permute(*axes)

    def permute(self, *axes: Any) -> Tensor:
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], tuple | list) else axes
        return _ops().Permute.apply(self, axes=tuple(axes))

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    def exp(self) -> Tensor:
        return _ops().Exp.apply(self)

    def log(self) -> Tensor:
        return _ops().Log.apply(self)

    def sqrt(self) -> Tensor:
        return _ops().Sqrt.apply(self)

    def abs(self) -> Tensor:
        return _ops().Abs.apply(self)

    def tanh(self) -> Tensor:
        return _ops().Tanh.apply(self)

    def sigmoid(self) -> Tensor:
        return _ops().Sigmoid.apply(self)

    def relu(self) -> Tensor:
        return _ops().Relu.apply(self)

    def clip(self, low: float | None = None, high: float | None = None) -> Tensor:
        return _ops().Clip.apply(self, low=low, high=high)


@functools.cache
def _ops() -> Any:
    from minidiff.autodiff import ops

    return ops


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _plain_index(index: Any) -> Any:
    """An index with any Tensor inside replaced by its array (indices carry no gradient)."""
    if isinstance(index, tuple):
        return tuple(_data(i) for i in index)
    return _data(index)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Every tensor that `root` depends on through tracked operations, each after all its inputs.

    Iterative depth-first search (no recursion limit): a tensor is appended once all its inputs are.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            for parent in tensor._node.parents:
                if parent is not None and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new leaf tensor. Python numbers and lists become float32 (as in PyTorch) unless `dtype` says
    otherwise; NumPy arrays keep their dtype."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)
