"""Function: one differentiable operation, its forward and its backward side by side.

A Function works on plain arrays. `forward(ctx, *inputs, **options)` computes the output and saves on
`ctx` what the backward needs; `backward(ctx, grad_out)` maps the gradient of the loss with respect to
the output to the gradients with respect to each positional input (None for an input that is not a
tensor or needs no gradient). `Function.apply` does the bookkeeping: it unwraps Tensors, runs the
forward, and, when gradients are wanted, records a graph Node so that Tensor.backward can call the
backward later.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidiff.autodiff.tensor import Node, Tensor, is_grad_enabled
from minidiff.exercise_tools import exercise


class Context:
    """Scratch space shared by one forward call and its backward."""

    def __init__(self) -> None:
        self.saved: tuple[Any, ...] = ()
        self.needs_input_grad: tuple[bool, ...] = ()

    def save(self, *values: Any) -> None:
        self.saved = values


class Function:
    """Subclass with two static methods, forward(ctx, *inputs, **options) and backward(ctx, grad_out)."""

    @staticmethod
    def forward(ctx: Context, *inputs: Any, **options: Any) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad_out: np.ndarray) -> tuple[np.ndarray | None, ...]:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Any, **options: Any) -> Tensor:
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        needs = tuple([isinstance(x, Tensor) and x.requires_grad for x in inputs])
        ctx = Context()
        ctx.needs_input_grad = needs
        out = cls.forward(ctx, *arrays, **options)
        if True in needs and is_grad_enabled():
            parents = tuple([x if need else None for x, need in zip(inputs, needs, strict=True)])
            return Tensor._from_op(out, Node(cls, ctx, parents))
        return Tensor._from_op(out, None)


@exercise("ex01.1")
def sum_to_shape(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo broadcasting in the backward pass: sum `grad` over the axes along which an input of
    `shape` was broadcast, so that the gradient has the input's shape.

    Broadcasting first prepends size-1 axes to the shorter shape, then stretches size-1 axes. Each
    copy of an input element receives its own gradient, and the element's gradient is their sum.
    """
    if grad.shape == shape:
        return grad
    # BEGIN SOLUTION ex01.1: sum away the prepended axes, then the stretched size-1 axes (keepdims)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    # END SOLUTION
    return grad.reshape(shape)
