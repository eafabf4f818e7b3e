"""The hand-written reverse-mode autodiff: Tensor, Function, the primitive ops, gradcheck, and the
scalar Value class that opens chapter 01."""

from minidiff.autodiff.function import Context, Function, sum_to_shape
from minidiff.autodiff.gradcheck import GradcheckReport, gradcheck
from minidiff.autodiff.tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor
from minidiff.autodiff.value import Value

__all__ = [
    "Context",
    "Function",
    "GradcheckReport",
    "Tensor",
    "Value",
    "enable_grad",
    "gradcheck",
    "is_grad_enabled",
    "no_grad",
    "sum_to_shape",
    "tensor",
]
