"""gradcheck: compare a backward pass with float64 central differences.

For a function f of tensors, pick a random direction v of the output's shape and compare, for every
input element x_i, the analytic d(v . f)/dx_i from backward with the central difference
(v . f(x + h e_i) - v . f(x - h e_i)) / 2h, whose error is O(h^2). A wrong Jacobian J' != J gives
v^T J' != v^T J for almost every v, so one random direction checks the whole Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minidiff.autodiff.tensor import Tensor, no_grad


@dataclass
class InputReport:
    index: int
    shape: tuple[int, ...]
    worst_abs: float
    worst_rel: float
    worst_at: tuple[int, ...] | None
    ok: bool


@dataclass
class GradcheckReport:
    ok: bool
    inputs: list[InputReport] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"gradcheck {'passed' if self.ok else 'FAILED'}"]
        for r in self.inputs:
            where = f" at {r.worst_at}" if r.worst_at is not None else ""
            lines.append(f"  input {r.index} {r.shape}: worst |error| {r.worst_abs:.3g}, "
                         f"worst relative {r.worst_rel:.3g}{where}{'' if r.ok else '  <- fails'}")
        return "\n".join(lines)


def _scalar(out: Any, v: np.ndarray) -> float:
    data = out.data if isinstance(out, Tensor) else np.asarray(out)
    return float(np.sum(data * v))


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Any], h: float = 1e-6, atol: float = 1e-7,
              rtol: float = 1e-5, seed: int = 0, raise_on_failure: bool = True) -> GradcheckReport:
    """Check the gradients of fn(*inputs) for every input tensor with requires_grad=True.

    inputs: tensors (float64 when they require grad) or other arguments passed through unchanged.
    Passes when |analytic - numeric| <= atol + rtol * |numeric| for every element. Returns the report
    (worst absolute and relative error per input), or raises AssertionError with it on failure.
    """
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("inputs: no tensor has requires_grad=True, nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"inputs[{i}]: gradcheck needs float64 tensors (central differences in float32 "
                            f"are too coarse), got {inputs[i].dtype}")
        inputs[i].grad = None
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"fn: expected it to return a Tensor, got {type(out).__name__}")
    v = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(v)
    report = GradcheckReport(ok=True)
    for i in checked:
        x = inputs[i]
        analytic = np.zeros(x.shape) if x.grad is None else x.grad
        numeric = np.zeros(x.shape)
        flat = x.data.reshape(-1)  # a view: perturbs x in place
        with no_grad():
            for j in range(flat.size):
                keep = flat[j]
                flat[j] = keep + h
                plus = _scalar(fn(*inputs), v)
                flat[j] = keep - h
                minus = _scalar(fn(*inputs), v)
                flat[j] = keep
                numeric.reshape(-1)[j] = (plus - minus) / (2 * h)
        err = np.abs(analytic - numeric)
        rel = err / np.maximum(np.abs(numeric), 1e-300)
        bad = ~(err <= atol + rtol * np.abs(numeric))
        worst = np.unravel_index(np.argmax(err), err.shape) if err.size else None
        ok = not bad.any()
        report.inputs.append(InputReport(i, x.shape, float(err.max(initial=0.0)), float(rel.max(initial=0.0)),
                                         tuple(int(k) for k in worst) if worst is not None else None, ok))
        report.ok &= ok
    if raise_on_failure and not report.ok:
        raise AssertionError(str(report))
    return report
