"""Value: automatic differentiation on single numbers, the smallest version of the whole idea.

Every Value remembers the Values it was computed from and how to pass a gradient back to them.
backward() orders the graph so that each node comes after everything that uses it, then applies the
chain rule once per node. minidiff.Tensor is the same machine with arrays in place of numbers.

    a, b = Value(2.0), Value(-3.0)
    c = (a * b + a).tanh()
    c.backward()   # a.grad = (b + 1)(1 - c^2), b.grad = a (1 - c^2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


class Value:
    __slots__ = ("_backward", "_parents", "data", "grad", "op")

    def __init__(self, data: float, parents: tuple[Value, ...] = (), op: str = "") -> None:
        self.data = float(data)
        self.grad = 0.0
        self._parents = parents
        self._backward: Callable[[], None] = lambda: None
        self.op = op

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    def __add__(self, other: Any) -> Value:
        other = _value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def backward() -> None:  # d(a+b)/da = d(a+b)/db = 1
            self.grad += out.grad
            other.grad += out.grad

        out._backward = backward
        return out

    def __mul__(self, other: Any) -> Value:
        other = _value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def backward() -> None:  # d(ab)/da = b, d(ab)/db = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = backward
        return out

    def __pow__(self, exponent: float) -> Value:
        if not isinstance(exponent, int | float):
            raise TypeError("exponent: Value ** takes a plain number")
        out = Value(self.data**exponent, (self,), f"**{exponent}")

        def backward() -> None:  # d(a^n)/da = n a^(n-1)
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = backward
        return out

    def _unary(self, value: float, local_derivative: float, op: str) -> Value:
        out = Value(value, (self,), op)

        def backward() -> None:
            self.grad += local_derivative * out.grad

        out._backward = backward
        return out

    def exp(self) -> Value:
        e = math.exp(self.data)
        return self._unary(e, e, "exp")

    def log(self) -> Value:
        return self._unary(math.log(self.data), 1.0 / self.data, "log")

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        return self._unary(t, 1.0 - t * t, "tanh")

    def relu(self) -> Value:
        return self._unary(max(self.data, 0.0), float(self.data > 0), "relu")

    def sigmoid(self) -> Value:
        s = 1.0 / (1.0 + math.exp(-self.data)) if self.data >= 0 else math.exp(self.data) / (1.0 + math.exp(self.data))
        return self._unary(s, s * (1.0 - s), "sigmoid")

    def __neg__(self) -> Value:
        return self * -1.0

    def __radd__(self, other: Any) -> Value:
        return self + other

    def __sub__(self, other: Any) -> Value:
        return self + (-_value(other))

    def __rsub__(self, other: Any) -> Value:
        return _value(other) - self

    def __rmul__(self, other: Any) -> Value:
        return self * other

    def __truediv__(self, other: Any) -> Value:
        return self * _value(other) ** -1

    def __rtruediv__(self, other: Any) -> Value:
        return _value(other) * self**-1

    def backward(self) -> None:
        """d(self)/d(every Value it depends on), into each one's .grad (which accumulates)."""
        order: list[Value] = []
        visited: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:  # iterative depth-first search: each node after its parents
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
            elif id(node) not in visited:
                visited.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node._parents)
        self.grad = 1.0
        for node in reversed(order):
            node._backward()


def _value(x: Any) -> Value:
    return x if isinstance(x, Value) else Value(x)
