"""Optimizers (SGD, Adam, AdamW), gradient-norm clipping, learning-rate schedules and an EMA of weights,
with PyTorch's definitions so that a training run matches torch.optim step for step.

    opt = AdamW(model.parameters(), lr=1e-3)
    sched = LRScheduler(opt, WarmupCosine(warmup_steps=100, total_steps=10_000))
    for x, y in batches:
        model.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        sched.step()
        ema.update(model)

Parameters are updated in place (`p.data`), from `p.grad`; a parameter whose grad is None is skipped
(its state does not advance), as in PyTorch. Every state dict here (optimizer, schedule, EMA) is a flat
dict of NumPy arrays, so one `minidiff.checkpoint.save` stores any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from minidiff.autodiff.tensor import Tensor
from minidiff.backend import array_module, as_array, to_host
from minidiff.nn.module import Module, Parameter, Spec, check_state_dict

# --- optimizers -----------------------------------------------------------------------------------------


class Optimizer:
    """Base class: parameter groups with their hyperparameters, per-parameter state, zero_grad, state dicts.

    params: an iterable of Parameters (leaf tensors with requires_grad), or of dicts
    {"params": [...], <hyperparameter>: value} (param groups); a hyperparameter a group does not set
    comes from the constructor. Subclasses define `_update(p, grad, group, state)` for one parameter,
    `_check_group(group)` and `_state_spec(p)` (the entries of a parameter's state).
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError("params: expected an iterable of Parameters (e.g. model.parameters()), got one Tensor")
        params = list(params)
        if not params:
            raise ValueError("params: the optimizer got an empty list of parameters")
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group {"params": [...], <hyperparameter>: value, ...} (missing hyperparameters take the defaults)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"params: a param group is a dict with a 'params' entry, got {type(group).__name__}")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"params: unknown hyperparameters {sorted(unknown)} (expected {sorted(self.defaults)})")
        group = {**self.defaults, **group, "params": list(group["params"])}
        known = {id(p) for g in self.param_groups for p in g["params"]}
        for p in group["params"]:
            if not isinstance(p, Tensor) or not p.is_leaf or not p.requires_grad:
                raise TypeError(f"params: expected leaf tensors with requires_grad=True (Parameters), got {p!r:.80}")
            if id(p) in known:
                raise ValueError("params: a parameter appears twice (in one group or in two)")
            known.add(id(p))
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_range(group["lr"], "lr", 0.0)
        _check_range(group["weight_decay"], "weight_decay", 0.0)

    def _state_spec(self, p: Tensor) -> dict[str, Spec]:
        """(shape, dtype) of each entry of a parameter's state."""
        raise NotImplementedError

    def _update(self, p: Tensor, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:  # (as_array: a 0-d gradient may arrive as a NumPy scalar)
                    self._update(p, as_array(p.grad), group, self.state.setdefault(p, {}))

    def zero_grad(self) -> None:
        """Set every parameter's .grad to None."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    # -- state dicts: flat, "param_groups.<g>.<hyperparameter>" and "state.<i>.<name>" ---------------------
    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Hyperparameters of each group g as "param_groups.<g>.<name>" and the state of parameter i
        (counting through the groups in order) as "state.<i>.<name>", all NumPy arrays (copies, also of GPU state)."""
        out = {}
        for g, group in enumerate(self.param_groups):
            for name in self.defaults:
                out[f"param_groups.{g}.{name}"] = _encode(group[name])
        for i, p in enumerate(self._params()):
            for name, value in self.state.get(p, {}).items():
                out[f"state.{i}.{name}"] = np.array(to_host(value))
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state saved by `state_dict` of an optimizer of the same kind over
        parameters of the same shapes, in the same order. Checks every key, shape, dtype and
        hyperparameter first and changes nothing on error; a parameter's state may be absent (it had
        no gradient yet)."""
        expected = {f"param_groups.{g}.{name}": _spec(_encode(group[name]))
                    for g, group in enumerate(self.param_groups) for name in self.defaults}
        params = self._params()
        optional = set()
        for i, p in enumerate(params):
            spec = {f"state.{i}.{name}": shape_dtype for name, shape_dtype in self._state_spec(p).items()}
            expected.update(spec)
            optional.update(spec)
        arrays, _ = check_state_dict(type(self).__name__, state_dict, expected, optional=optional)
        groups = [dict(group) for group in self.param_groups]
        state: dict[Tensor, dict[str, Any]] = {}
        for key, array in arrays.items():
            kind, index, name = key.split(".", 2)
            if kind == "param_groups":
                groups[int(index)][name] = _like(groups[int(index)][name], array)
            else:
                p = params[int(index)]  # the state goes where the parameter is (a copy)
                state.setdefault(p, {})[name] = int(array) if name == "step" else array_module(p.data).array(array)
        for group in groups:
            self._check_group(group)
        self.param_groups, self.state = groups, state


def _spec(array: np.ndarray) -> Spec:
    return array.shape, array.dtype


def _encode(value: Any) -> np.ndarray:
    """A hyperparameter as an array: bool, or float64 (a number, or a tuple of numbers such as betas)."""
    return np.array(value, dtype=bool if isinstance(value, bool) else np.float64)


def _like(current: Any, array: np.ndarray) -> Any:
    """A saved hyperparameter as the Python type of the current value (float, bool or a tuple of floats)."""
    if isinstance(current, tuple):
        return tuple(float(v) for v in array)
    return bool(array) if isinstance(current, bool) else float(array)


def _check_range(value: Any, name: str, low: float, high: float = math.inf, high_inclusive: bool = True) -> None:
    inside = isinstance(value, int | float) and (low <= value <= high if high_inclusive else low <= value < high)
    if isinstance(value, bool) or not inside:
        upper = f"{high}]" if high_inclusive else f"{high})"
        raise ValueError(f"{name}: expected a number in [{low}, {upper}, got {value!r}")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay
    (torch.optim.SGD). With g the gradient, mu the momentum and b the momentum buffer:

        g <- g + weight_decay * p
        b <- g on the first step, then b <- mu b + (1 - dampening) g
        g <- g + mu b (nesterov) or g <- b
        p <- p - lr g
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        _check_range(group["momentum"], "momentum", 0.0)
        _check_range(group["dampening"], "dampening", 0.0, 1.0)
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov: expected a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0 and dampening = 0")

    def _state_spec(self, p: Tensor) -> dict[str, Spec]:
        return {"momentum_buffer": (p.shape, p.dtype)}

    def _update(self, p: Tensor, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]) -> None:
        mu = group["momentum"]
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        if mu:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = array_module(p.data).array(grad)  # a copy; 0-d stays an array
            else:
                buf = state["momentum_buffer"]
                buf *= mu
                buf += (1 - group["dampening"]) * grad
            grad = grad + mu * state["momentum_buffer"] if group["nesterov"] else state["momentum_buffer"]
        p.data -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as torch.optim.Adam, with L2 weight decay added to the gradient.
    With k the parameter's step count from 1:

        g <- g + weight_decay * p
        m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
        p <- p - (lr / (1 - beta1^k)) m / (sqrt(v) / sqrt(1 - beta2^k) + eps)
    """

    decoupled_weight_decay = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        _check_range(group["eps"], "eps", 0.0)
        group["betas"] = tuple(group["betas"])
        if len(group["betas"]) != 2:
            raise ValueError(f"betas: expected two numbers, got {group['betas']!r}")
        for i, beta in enumerate(group["betas"]):
            _check_range(beta, f"betas[{i}]", 0.0, 1.0, high_inclusive=False)

    def _state_spec(self, p: Tensor) -> dict[str, Spec]:
        return {"step": ((), np.dtype(np.int64)), "exp_avg": (p.shape, p.dtype), "exp_avg_sq": (p.shape, p.dtype)}

    def _update(self, p: Tensor, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]) -> None:
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if self.decoupled_weight_decay:
            p.data *= 1 - lr * wd
        elif wd:
            grad = grad + wd * p.data
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
        state["step"] += 1
        k, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        denom = np.sqrt(v) / math.sqrt(1 - beta2**k) + group["eps"]
        p.data -= (lr / (1 - beta1**k)) * m / denom


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as torch.optim.AdamW: decoupled weight decay, the parameter is
    shrunk first, p <- p (1 - lr weight_decay), then the Adam step runs without the L2 term."""

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# --- gradient clipping ------------------------------------------------------------------------------------


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients of `parameters` in place so that their joint norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_: total = || (||g_1||, ..., ||g_n||) || (the norm of all gradients as
    one vector), and every gradient is multiplied by min(1, max_norm / (total + 1e-6)).
    Returns the total norm before clipping. Parameters without a gradient are ignored."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    norm_type = float(norm_type)
    if not (norm_type > 0):
        raise ValueError(f"norm_type: expected a positive number or inf, got {norm_type}")
    if not max_norm >= 0:
        raise ValueError(f"max_norm: expected a non-negative number, got {max_norm}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = array_module(grads[0])  # the norms are taken where the gradients are: one number comes to the host
    norms = xp.stack([xp.linalg.norm(g.ravel(), ord=norm_type) for g in grads])
    total = float(xp.linalg.norm(norms, ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total {norm_type}-norm of the gradients is {total}; "
                           "pass error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # min(1, coef), multiplied in: a NaN norm makes every gradient NaN, as in PyTorch
        with np.errstate(invalid="ignore"):  # an infinite norm: inf * 0 is NaN there too, without a warning
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad * coef
    return total


# --- learning-rate schedules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearWarmup:
    """factor(step) = min(1, (step + 1) / warmup_steps): the first step runs at lr / warmup_steps,
    step warmup_steps - 1 and later at the full lr (torch's LinearLR(start_factor=1/W, total_iters=W-1))."""

    warmup_steps: int

    def __post_init__(self) -> None:
        _check_steps(self.warmup_steps, "warmup_steps")

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps)


@dataclass(frozen=True)
class CosineDecay:
    """factor(step) = min_factor + (1 - min_factor) (1 + cos(pi min(step, T) / T)) / 2 with T = total_steps:
    1 at step 0, min_factor from step T on (the closed form of torch's CosineAnnealingLR, eta_min = min_factor lr)."""

    total_steps: int
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_steps(self.total_steps, "total_steps")
        if not 0.0 <= self.min_factor <= 1.0:
            raise ValueError(f"min_factor: expected a number in [0, 1], got {self.min_factor!r}")

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class WarmupCosine:
    """LinearWarmup(warmup_steps) for steps 0..W-1, then CosineDecay over the remaining total_steps - W
    steps: factor 1 at step W, min_factor from step total_steps on."""

    warmup_steps: int
    total_steps: int
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_steps(self.warmup_steps, "warmup_steps")
        if not isinstance(self.total_steps, int) or self.total_steps <= self.warmup_steps:
            raise ValueError(f"total_steps: expected an int > warmup_steps ({self.warmup_steps}), "
                             f"got {self.total_steps!r}")
        CosineDecay(self.total_steps - self.warmup_steps, self.min_factor)  # checks min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return LinearWarmup(self.warmup_steps)(step)
        return CosineDecay(self.total_steps - self.warmup_steps, self.min_factor)(step - self.warmup_steps)


def _check_steps(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


class LRScheduler:
    """Drive an optimizer's learning rates by a schedule: every group's lr = its base lr * factor(step).

    Construction sets the rate of step 0; call `step()` after each `optimizer.step()`, as in PyTorch.
    `schedule` is any callable step -> factor (LinearWarmup, CosineDecay, WarmupCosine or your own).
    """

    def __init__(self, optimizer: Optimizer, schedule: Callable[[int], float]) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a minidiff Optimizer, got {type(optimizer).__name__}")
        if not callable(schedule):
            raise TypeError(f"schedule: expected a callable step -> factor, got {type(schedule).__name__}")
        self.optimizer, self.schedule = optimizer, schedule
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.schedule(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"last_step": np.array(self.last_step, np.int64), "base_lrs": np.array(self.base_lrs, np.float64)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        expected = {"last_step": ((), np.dtype(np.int64)),
                    "base_lrs": ((len(self.base_lrs),), np.dtype(np.float64))}
        arrays, _ = check_state_dict(type(self).__name__, state_dict, expected)
        self.last_step = int(arrays["last_step"])
        self.base_lrs = [float(lr) for lr in arrays["base_lrs"]]
        self._apply()


# --- exponential moving average of weights --------------------------------------------------------------


class EMA:
    """An exponential moving average of a model's weights (Polyak averaging, as in DDPM's evaluation):
    after each `update(model)`, shadow <- decay * shadow + (1 - decay) * param for every parameter,
    and buffers are copied. The shadow starts as a copy of the model's state dict; `copy_to(model)`
    loads it into a model of the same architecture, and `state_dict()` is a model state dict.

    An average with decay d remembers about 1 / (1 - d) updates, the random initial weights included: a
    short run would sample from a blurred early model. warmup=True ramps the decay up instead, as diffusers'
    EMAModel does: update k (from 0) uses min(decay, (1 + k) / (10 + k)), so the average always covers
    roughly the most recent tenth of training until it reaches `decay`. `num_updates` counts the updates
    (a resumed run sets it to its step).
    """

    def __init__(self, model: Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model: expected a minidiff Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay: expected a number in [0, 1], got {decay!r}")
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.shadow = {name: t.data.copy() for name, t in model.state_dict(keep_vars=True).items()}  # on its device

    def current_decay(self) -> float:
        """The decay the next update uses: `decay`, or with warmup min(decay, (1 + k) / (10 + k))."""
        k = self.num_updates
        return min(self.decay, (1.0 + k) / (10.0 + k)) if self.warmup else self.decay

    def _tensors_of(self, model: Module) -> dict[str, Tensor]:
        tensors = model.state_dict(keep_vars=True)
        if tensors.keys() != self.shadow.keys():
            missing, extra = self.shadow.keys() - tensors.keys(), tensors.keys() - self.shadow.keys()
            raise ValueError(f"model: its state dict differs from the EMA's: missing {sorted(missing)}, "
                             f"extra {sorted(extra)}")
        return tensors

    def update(self, model: Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * param (in the parameter's dtype), decay = current_decay();
        buffers are copied."""
        decay = self.current_decay()
        for name, t in self._tensors_of(model).items():
            shadow = self.shadow[name]
            if isinstance(t, Parameter):
                shadow *= decay
                shadow += (1.0 - decay) * t.data
            else:
                shadow[...] = t.data
        self.num_updates += 1

    def copy_to(self, model: Module) -> None:
        """Load the averaged weights into `model` (for evaluation or sampling)."""
        self._tensors_of(model)
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The averaged weights, as a model state dict (NumPy copies)."""
        return {name: np.array(to_host(array)) for name, array in self.shadow.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        expected = {name: _spec(array) for name, array in self.shadow.items()}
        arrays, _ = check_state_dict(type(self).__name__, state_dict, expected)
        self.shadow = {name: array_module(self.shadow[name]).array(array) for name, array in arrays.items()}
