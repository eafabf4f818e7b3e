"""One op on concrete inputs, and the two checks every op gets: against PyTorch autograd and
against central differences (shared by the op table, tests/test_op_table.py, and the kernel tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from strategies import in_layout
from tolerances import assert_close

from minidiff.autodiff import Tensor, gradcheck


@dataclass(frozen=True)
class Case:
    """One op on concrete inputs: arrays (each differentiable), constant options, two implementations."""

    arrays: tuple[np.ndarray, ...]
    ours: Callable  # (*Tensors) -> Tensor
    theirs: Callable  # (torch, *torch tensors) -> torch tensor


def run_ours(case: Case, dtype, layout: str = "c"):
    """(output, input gradients, upstream gradient): the inputs rounded to `dtype` and stored in `layout` (see
    strategies.in_layout), the upstream gradient seeded, so two runs of one case see the same numbers."""
    xs = [Tensor(in_layout(a.astype(dtype), layout), requires_grad=True) for a in case.arrays]
    out = case.ours(*xs)
    upstream = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
    out.backward(upstream)
    return out.data, [np.zeros_like(x.data) if x.grad is None else x.grad for x in xs], upstream


def run_torch(case: Case, dtype, upstream):
    """PyTorch on the very inputs minidiff got (rounded to `dtype`), computed in float64."""
    import torch

    xs = [torch.tensor(a.astype(dtype).astype(np.float64), requires_grad=True) for a in case.arrays]
    out = case.theirs(torch, *xs)
    out.backward(torch.from_numpy(upstream).to(out.dtype))
    return out.detach().numpy(), [x.grad.numpy() if x.grad is not None else np.zeros_like(a)
                                  for x, a in zip(xs, case.arrays, strict=True)]


def check_against_torch(named_case, dtype, out_dtype=None, condition: float = 1.0):
    """float64: elementwise to the table. float32: against PyTorch in float64, with the error measured
    relative to the largest element of each array, since a float32 reduction (a convolution's weight
    gradient, a norm's input gradient) can cancel to an element far smaller than its terms.
    out_dtype: the output's dtype when the op changes it (a cast); the gradients keep the inputs' dtype.
    condition: how many times the op amplifies its inputs' rounding at these values (scales the allowed error)."""
    name, case = named_case
    out_dtype = np.dtype(dtype if out_dtype is None else out_dtype)
    out, grads, upstream = run_ours(case, dtype)
    ref_out, ref_grads = run_torch(case, dtype, upstream)
    assert out.dtype == out_dtype, f"{name}: output dtype {out.dtype}, expected {out_dtype}"
    for i, (got, ref) in enumerate([(out, ref_out), *zip(grads, ref_grads, strict=True)]):
        what = f"{name} forward:" if i == 0 else f"{name} grad of input {i - 1}:"
        kind = out_dtype if i == 0 else np.dtype(dtype)
        assert got.dtype == kind, f"{what} dtype {got.dtype}, expected {kind}"
        scale = np.abs(ref) if kind == np.float64 else np.full(ref.shape, np.abs(ref).max(initial=0.0))
        assert_close(got, ref, dtype=kind, scale=condition * scale, what=what)


def check_gradcheck(named_case):
    _, case = named_case
    gradcheck(case.ours, [Tensor(a.copy(), requires_grad=True) for a in case.arrays])
