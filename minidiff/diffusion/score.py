"""Score matching (E24, E26, E27): losses on minidiff autodiff Tensors that fit a score model
s_theta(x) ~ grad_x log p(x) without knowing p.

A score model is a callable on Tensors (a minidiff.nn module, or any function of Tensor ops) that maps
a batch x of shape (n, D) to (n, D), row by row: row i of the output depends on row i of x only. For
denoising score matching it also receives the noise level: score_model(x_t, sigma) or score_model(x_t, t).

  [E24] the score s(x) = grad_x log p(x)                             `score_from_log_prob` (by the autodiff)
  [E26] explicit score matching  1/2 E || s_theta(x) - grad log p(x) ||^2   needs the true score
        implicit score matching  E[ tr(grad_x s_theta(x)) + 1/2 || s_theta(x) ||^2 ]   (Hyvarinen 2005):
        equal to the explicit loss minus the constant 1/2 E || grad log p ||^2 (integration by parts),
        so it needs samples of p only
  [E27] denoising score matching 1/2 E || s_theta(x_t) + eps / n ||^2 with x_t = s x0 + n eps (Vincent 2011):
        equal to explicit score matching on the noised density plus a constant

What minidiff's autodiff cannot do, and why it matters here. Each Function's backward works on NumPy
arrays, not on Tensors: a backward pass records no graph, so a gradient is a plain array and nothing
computed from it can be differentiated again (no double backward). The implicit loss contains the
Jacobian trace tr(grad_x s_theta(x)), itself a derivative in x; its gradient in theta would be a second
derivative. So:
  * `score_jacobian_trace` computes tr(grad_x s_theta(x)) exactly by D backward passes (one per input
    dimension, each picking the diagonal entries d s_j / d x_j): an array, not a graph;
  * `implicit_score_matching_loss` is differentiable only when the model states its divergence as Tensor
    ops (`trace_fn`), e.g. `LinearScore.divergence` (s(x) = A x + b has tr(grad_x s) = tr A); without it
    the loss is evaluated exactly but carries no gradient (calling backward on it raises).
PyTorch differentiates through a gradient with create_graph=True, because its backward is written in
differentiable ops. Denoising score matching needs no derivative of the model at all, one reason why
diffusion models are trained with it (and with its eps form, E15).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from minidiff.autodiff.tensor import Tensor, enable_grad, no_grad
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.gmm import values_per_example
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise

ScoreModel = Callable[..., Any]
REDUCTIONS = ("mean", "none")


# ---------------------------------------------------------------------------------------------------
# Inputs and outputs


def _batch(x: Any, name: str = "x") -> Tensor:
    """x as a Tensor of shape (n, D): a float numpy array is wrapped (no gradient), a Tensor kept."""
    if not isinstance(x, Tensor):
        x = Tensor(_v.float_array(x, name))
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a batch of vectors, shape (n, D), got {x.shape}")
    return x


def _model_output(out: Any, x: Any, name: str = "score_model") -> Tensor:
    """The model's output as a Tensor of x's shape (a numpy output is wrapped: then no gradient flows)."""
    if isinstance(out, np.ndarray):
        out = Tensor(out)
    if not isinstance(out, Tensor):
        raise TypeError(f"{name}: expected it to return a Tensor (or array) of shape {x.shape}, "
                        f"got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name}: expected an output of shape {x.shape} (the shape of its input), got {out.shape}")
    return out


def _reduce(terms: Tensor, reduction: str) -> Tensor:
    """'mean': the batch mean of the per-example terms (a scalar Tensor); 'none': the terms, shape (n,)."""
    return terms.mean() if _v.choice(reduction, "reduction", REDUCTIONS) == "mean" else terms


def _half_squared_norm(r: Tensor) -> Tensor:
    """1/2 || r_i ||^2 for every example i (summed over all non-batch axes), shape (n,)."""
    return (r * r).reshape(r.shape[0], -1).sum(axis=1) * 0.5


# ---------------------------------------------------------------------------------------------------
# [E24] scores and their divergence by the autodiff


def score_from_log_prob(log_prob_fn: Callable[[Tensor], Tensor], x: Any) -> np.ndarray:
    """[E24] s(x) = grad_x log p(x), by one backward pass of sum_i log p(x_i) (Hyvarinen 2005).

    log_prob_fn maps a Tensor (n, D) to the log densities (n,) in Tensor ops. Row x_i enters only its own
    log p(x_i), so the gradient of the sum with respect to x, row by row, is the score at each x_i.
    Returns an array (n, D) of x's dtype.
    """
    x = _v.float_array(x, "x")
    leaf = Tensor(x.copy(), requires_grad=True)
    with enable_grad():
        log_p = log_prob_fn(leaf)
    if not isinstance(log_p, Tensor) or log_p.shape != (x.shape[0],):
        raise ValueError(f"log_prob_fn: expected a Tensor of shape ({x.shape[0]},) (one log density per row), got "
                         f"{getattr(log_p, 'shape', type(log_p).__name__)}")
    log_p.sum().backward()
    return np.zeros_like(x) if leaf.grad is None else leaf.grad


@contextlib.contextmanager
def _parameters_frozen(model: Any) -> Iterator[None]:
    """Switch off requires_grad of model.parameters() (if it has any) for the duration, so that backward
    passes taken with respect to the input neither track nor touch the parameters' gradients."""
    params = [p for p in getattr(model, "parameters", list)() if p.requires_grad]
    for p in params:
        p.requires_grad = False
    try:
        yield
    finally:
        for p in params:
            p.requires_grad = True


def score_jacobian_trace(score_model: ScoreModel, x: Any) -> np.ndarray:
    """tr(grad_x s_theta(x)) = sum_j d s_j(x) / d x_j for every example, shape (n,), by D backward passes.

    One forward pass, then for j = 1..D a backward pass of sum_i s_j(x_i): since row i of the output
    depends on row i of x only, column j of the gradient holds d s_j(x_i) / d x_ij. Exact (no estimator;
    Hutchinson's trace estimate would replace the D passes in high dimension). The model's parameters
    are left untouched; the result is an array, not a graph (see the module docstring).
    """
    x = _batch(x)
    leaf = Tensor(x.data.copy(), requires_grad=True)
    trace = np.zeros(x.shape[0], dtype=np.float64)  # (n,)
    with _parameters_frozen(score_model), enable_grad():
        out = _model_output(score_model(leaf), leaf)  # (n, D)
        if not out.requires_grad:  # the output does not depend on x
            return trace
        for j in range(x.shape[1]):
            leaf.grad = None
            seed = np.zeros(out.shape, out.dtype)  # (n, D), selects output column j
            seed[:, j] = 1.0
            out.backward(seed, retain_graph=j < x.shape[1] - 1)
            if leaf.grad is not None:
                trace += leaf.grad[:, j]
    return trace


class LinearScore:
    """s(x) = x A^T + b, the family that holds the exact score of every Gaussian: N(mu, Sigma) has
    A = -Sigma^{-1}, b = Sigma^{-1} mu. Its divergence tr(grad_x s) = tr A is a Tensor expression
    (`divergence`), so implicit score matching can train it despite the missing double backward.

    weight A (D, D) and bias b (D,) are leaf Tensors with requires_grad (give them to an optimizer via
    `parameters()`). Extra call arguments (a noise level or timestep) are accepted and ignored, so the
    same model serves denoising score matching at one noise level.
    """

    def __init__(self, weight: Any, bias: Any) -> None:
        weight, bias = _v.float_array(weight, "weight"), _v.float_array(bias, "bias")
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight: expected a square matrix (D, D), got shape {weight.shape}")
        if bias.shape != weight.shape[:1] or bias.dtype != weight.dtype:
            raise ValueError(f"bias: expected shape {weight.shape[:1]} and dtype {weight.dtype} (as the weight), "
                             f"got {bias.shape} {bias.dtype}")
        self.D = weight.shape[0]
        self.weight = Tensor(weight.copy(), requires_grad=True)  # (D, D)
        self.bias = Tensor(bias.copy(), requires_grad=True)  # (D,)

    @classmethod
    def zeros(cls, D: int, dtype: Any = np.float64) -> LinearScore:
        return cls(np.zeros((D, D), dtype), np.zeros(D, dtype))

    @classmethod
    def of_gaussian(cls, mean: Any, covariance: Any) -> LinearScore:
        """[E24] The exact score of N(mean, covariance): grad log p(x) = -Sigma^{-1} (x - mu)."""
        precision = np.linalg.inv(_v.float_array(covariance, "covariance"))
        return cls(-precision, precision @ _v.float_array(mean, "mean"))

    def parameters(self) -> list[Tensor]:
        return [self.weight, self.bias]

    def __call__(self, x: Any, *conditioning: Any) -> Tensor:
        x = _batch(x)
        if x.shape[1] != self.D:
            raise ValueError(f"x: expected shape (n, {self.D}), got {x.shape}")
        return x @ self.weight.T + self.bias  # (n, D)

    def divergence(self, x: Any) -> Tensor:
        """tr(grad_x s(x)) = tr A for every example, shape (n,), differentiable in A."""
        n = _batch(x).shape[0]
        return (self.weight * np.eye(self.D, dtype=self.weight.dtype)).sum() * np.ones(n, self.weight.dtype)


# ---------------------------------------------------------------------------------------------------
# [E26] score matching


def explicit_score_matching_loss(score_model: ScoreModel, x: Any, true_score: Any,
                                 reduction: str = "mean") -> Tensor:
    """[E26] J_ESM(theta) = 1/2 E_x || s_theta(x) - grad_x log p(x) ||^2 (Hyvarinen 2005).

    x (n, D) samples of p, true_score (n, D) the exact grad log p at them. Returns the batch mean
    (reduction="mean", a scalar Tensor) or the per-example terms ("none", shape (n,)).
    """
    x = _batch(x)
    _v.same_shape(true_score, "true_score", x, "x")
    residual = _model_output(score_model(x), x) - np.asarray(true_score, dtype=x.dtype)
    return _reduce(_half_squared_norm(residual), reduction)


def implicit_score_matching_loss(score_model: ScoreModel, x: Any, trace_fn: Callable[[Any], Tensor] | None = None,
                                 reduction: str = "mean") -> Tensor:
    """[E26] J_ISM(theta) = E_x[ tr(grad_x s_theta(x)) + 1/2 || s_theta(x) ||^2 ] (Hyvarinen 2005), which equals
    J_ESM(theta) - 1/2 E || grad_x log p(x) ||^2 (integrate E[s_theta . grad log p] by parts): the same
    minimizer, from samples of p alone.

    trace_fn(x) -> Tensor (n,): the divergence of the model as Tensor ops (e.g. `LinearScore.divergence`);
    then the loss is differentiable in theta. Without it the trace comes from `score_jacobian_trace`
    (D backward passes): the value is exact, but the returned Tensor has no gradient (minidiff has no
    double backward; see the module docstring).
    """
    x = _batch(x)
    if trace_fn is None:
        with no_grad():
            norm_term = _half_squared_norm(_model_output(score_model(x), x))  # (n,)
        trace: Any = score_jacobian_trace(score_model, x).astype(x.dtype)  # (n,)
    else:
        norm_term = _half_squared_norm(_model_output(score_model(x), x))  # (n,)
        trace = trace_fn(x)
        if not isinstance(trace, Tensor) or trace.shape != (x.shape[0],):
            raise ValueError(f"trace_fn: expected a Tensor of shape ({x.shape[0]},) (one divergence per example), "
                             f"got {getattr(trace, 'shape', type(trace).__name__)}")
    return _reduce(norm_term + trace, reduction)


# ---------------------------------------------------------------------------------------------------
# [E27] denoising score matching


def _noise_levels(x0: np.ndarray, sigma: Any, schedule: NoiseSchedule | None,
                  t: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, n, conditioning) of x_t = s x0 + n eps: s and n of shape (batch, 1, ...) in x0's dtype, and what the
    model receives besides x_t, shape (batch,): sigma (VE: s = 1, n = sigma) or t (VP, E3: s = sqrt(alpha_bar_t),
    n = sqrt(1 - alpha_bar_t))."""
    batch, trailing = x0.shape[0], (1,) * (x0.ndim - 1)
    if sigma is not None:  # VE: x_t = x0 + sigma eps
        if schedule is not None or t is not None:
            raise ValueError("sigma: give either sigma (x_t = x0 + sigma eps) or schedule and t, not both")
        sigma = values_per_example(sigma, "sigma", batch, low=0.0)  # (n,)
        if np.any(sigma == 0.0):
            raise ValueError("sigma: expected positive noise levels (the score of q(x_t | x0) needs sigma > 0)")
        std = sigma.astype(x0.dtype).reshape((batch,) + trailing)  # (n, 1, ...)
        return np.ones_like(std), std, sigma
    t = schedule.check_t(t, x0)
    t = np.full(batch, t) if t.ndim == 0 else t  # (n,)
    scale = schedule.at(schedule.sqrt_alpha_bars, t, x0)  # (n, 1, ...)
    std = schedule.at(schedule.sqrt_one_minus_alpha_bars, t, x0)  # (n, 1, ...)
    return scale, std, t


@exercise("ex05.2")
def denoising_score_matching_loss(score_model: ScoreModel, x0: Any, noise: Any = None, *, sigma: Any = None,
                                  schedule: NoiseSchedule | None = None, t: Any = None,
                                  rng: np.random.Generator | None = None, weighted: bool = False,
                                  reduction: str = "mean") -> Tensor:
    """[E27] J_DSM(theta) = 1/2 E || s_theta(x_t) - grad log q(x_t | x0) ||^2 = 1/2 E || s_theta(x_t) + eps / n ||^2,
    x_t = s x0 + n eps (Vincent 2011). It equals explicit score matching on the noised density plus a
    constant, so its minimizer is s_theta(x_t) = E[-eps / n | x_t] = grad log q(x_t), the noised score.

    The noise path: sigma (VE: s = 1, n = sigma; a number or one per example), the model is called as
    score_model(x_t, sigma) with sigma of shape (n,); or schedule and t (VP, E3: s = sqrt(alpha_bar_t),
    n = sqrt(1 - alpha_bar_t); t an int or (n,), drawn uniformly from rng when None), called as
    score_model(x_t, t), and the target is `score_from_eps`. noise: the eps (x0's shape and dtype), or
    drawn from rng. weighted: lambda = n^2 (Song & Ermon 2019), i.e. 1/2 || n s_theta + eps ||^2, the
    weighting under which the loss is E15's eps loss for s_theta = -eps_theta / n.
    x0: a batch (n, ...); the squared error is summed over the non-batch axes. Returns the batch mean
    ("mean") or the per-example terms ("none", shape (n,)).
    """
    x0 = _v.float_array(x0, "x0")
    if x0.ndim < 1:
        raise ValueError("x0: expected a batch, shape (n, ...), got a 0-d array")
    if not isinstance(weighted, (bool, np.bool_)):
        raise TypeError(f"weighted: expected True or False, got {weighted!r}")
    if sigma is None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: give sigma (x_t = x0 + sigma eps), or a NoiseSchedule and t; "
                            f"got schedule={type(schedule).__name__}")
        if t is None:
            if not isinstance(rng, np.random.Generator):
                raise ValueError("rng: pass a numpy.random.Generator to draw t (or pass t)")
            t = schedule.sample_timesteps(rng, x0.shape[0])  # t first, then eps (as l_simple draws them)
    eps = _v.noise_for(x0, "x0", noise, rng if noise is None else None)  # (n, ...)
    scale, std, conditioning = _noise_levels(x0, sigma, schedule, t)  # (n, 1, ...), (n, 1, ...), (n,)
    # The model is called as score_model(Tensor(x_t), conditioning); _model_output(out, x_t) checks its output
    # and makes it a Tensor (a model may return a numpy array).
    # BEGIN SOLUTION ex05.2: x_t, the target grad log q(x_t | x0), the residual (times n if weighted), 1/2 |.|^2 per row
    xt = scale * x0 + std * eps  # (n, ...)
    target = -eps / std  # grad log q(x_t | x0) = -(x_t - s x0) / n^2, (n, ...)
    residual = _model_output(score_model(Tensor(xt), conditioning), xt) - target  # Tensor (n, ...)
    if weighted:
        residual = residual * std  # lambda = n^2 on the squared error
    terms = (residual * residual).reshape(x0.shape[0], -1).sum(axis=1) * 0.5  # (n,)
    # END SOLUTION
    return _reduce(terms, reduction)
