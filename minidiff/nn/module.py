"""Module and Parameter: the containers that hold a model's weights, as in PyTorch.

A Module registers whatever is assigned to it: a Parameter becomes a trainable weight, a Module a
child, and `register_buffer` adds arrays that are state but not trained. From these registries come
`parameters()` (for the optimizer), `state_dict()` (for checkpoints) and `load_state_dict()`. Names
are dotted paths, the same as PyTorch's: a minidiff model and its PyTorch twin exchange weights by
state dict.

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(2, 3)          # child module "fc": parameters fc.weight, fc.bias
            self.scale = Parameter(np.ones(3, np.float32))

        def forward(self, x):
            return self.fc(x) * self.scale
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from minidiff import backend as _backend
from minidiff.autodiff.tensor import FLOAT_DTYPES, Tensor


class Parameter(Tensor):
    """A trainable weight: a leaf Tensor with requires_grad=True, registered by the Module it is assigned to.

    Like torch.nn.Parameter it shares memory with the array (or Tensor) it is made from.
    """

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"data: a Parameter holds float32 or float64 values, got dtype {self.dtype}")

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict(..., strict=False)` skipped: keys the module has but the state dict lacks,
    and keys the state dict has but the module does not."""

    missing_keys: list[str]
    unexpected_keys: list[str]


Spec = tuple[tuple[int, ...], np.dtype]  # the (shape, dtype) an entry of a state dict must have


def check_state_dict(owner: str, given: Mapping[str, Any], expected: Mapping[str, Spec], strict: bool = True,
                     optional: Collection[str] = ()) -> tuple[dict[str, np.ndarray], IncompatibleKeys]:
    """Validate a state dict against the (shape, dtype) of each expected key; raise one ValueError
    listing every problem, or return the given values as arrays with the missing and unexpected keys.

    owner: who loads (named in the error). strict: a missing key (unless listed in `optional`) or an
    unexpected key is an error; a wrong shape or dtype always is.
    """
    if not isinstance(given, Mapping):
        raise TypeError(f"state_dict: expected a mapping of names to arrays, got {type(given).__name__}")
    missing = [k for k in expected if k not in given]
    unexpected = [str(k) for k in given if k not in expected]
    required_missing = [k for k in missing if k not in optional]
    problems = []
    if strict and required_missing:
        problems.append(f"missing keys: {', '.join(required_missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    arrays = {}
    for key, (shape, dtype) in expected.items():
        if key not in given:
            continue
        value = given[key]
        array = value.data if isinstance(value, Tensor) else _backend.as_array(value)
        if array.shape != shape:
            problems.append(f"{key}: expected shape {shape}, got {array.shape}")
        elif array.dtype != dtype:
            problems.append(f"{key}: expected dtype {dtype}, got {array.dtype}")
        arrays[key] = array
    if problems:
        raise ValueError(f"load_state_dict: cannot load into {owner}:\n  " + "\n  ".join(problems))
    return arrays, IncompatibleKeys(missing, unexpected)


class Module:
    """Base class of every layer and model: subclasses call `super().__init__()` first, assign their
    parameters and child modules as attributes, and define `forward`; `module(x)` calls `forward(x)`."""

    training: bool

    def __init__(self) -> None:
        # Registries, in assignment order. Values also live in __dict__, so attribute reads are plain.
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- registration ------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r}: call super().__init__() in {type(self).__name__}.__init__ "
                                 "before assigning attributes")
        if isinstance(value, Parameter):
            self._unregister(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._unregister(name)
            self._modules[name] = value
        elif name in self._parameters or name in self._modules:
            kind = "Parameter" if name in self._parameters else "Module"
            if value is not None:
                raise TypeError(f"{name}: is a registered {kind}; cannot assign a {type(value).__name__} "
                                f"(expected a {kind} or None)")
            self._unregister(name)
        elif name in self._buffers:
            self._buffers[name] = _buffer(name, value)
            value = self._buffers[name]
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._unregister(name)
        object.__delattr__(self, name)

    def _unregister(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._non_persistent.discard(name)
        self._modules.pop(name, None)

    def register_buffer(self, name: str, value: Tensor | np.ndarray | None, persistent: bool = True) -> None:
        """Add state that is not trained (a running statistic, a constant table) as `self.<name>`, a
        Tensor without gradient. A persistent buffer is part of the state dict."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"name: expected an identifier, got {name!r}")
        if name in self.__dict__ and name not in self._buffers:
            raise ValueError(f"name: {name!r} is already an attribute of {type(self).__name__}")
        self._buffers[name] = _buffer(name, value)
        if not persistent:
            self._non_persistent.add(name)
        object.__setattr__(self, name, self._buffers[name])

    # -- traversal ---------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, each once, parents before children: (dotted name, module)."""
        yield from _walk(self, prefix, seen=set())

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct children: (attribute name, module)."""
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Every parameter once (a parameter shared by two modules is listed under its first name)."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def num_parameters(self) -> int:
        """The number of scalars in the parameters (each shared parameter counted once)."""
        return sum(p.size for p in self.parameters())

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def _named_members(self, registry: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for module_name, module in modules:
            for name, value in getattr(module, registry).items():
                if value is not None and id(value) not in seen:
                    seen.add(id(value))
                    yield _join(module_name, name), value

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self, keep_vars: bool = False) -> dict[str, Any]:
        """Every parameter and persistent buffer by dotted name, in PyTorch's order (a module's own
        parameters, then its buffers, then its children). The values are copies of the arrays, a
        snapshot that later training does not change; keep_vars=True gives the Tensors themselves.
        A module reachable under two names appears under both, as in PyTorch. The copies are NumPy arrays,
        also for a module on the GPU."""
        tensors = dict(_state_tensors(self, ""))
        return tensors if keep_vars else {name: _backend.to_host(t.data).copy() for name, t in tensors.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy the values of `state_dict` (arrays or Tensors; PyTorch tensors work through NumPy)
        into this module's parameters and buffers.

        Every shape and dtype must match exactly (values are not cast). strict=True: the keys must
        be exactly those of `state_dict()`. All problems are reported in one ValueError and nothing
        is changed unless everything matches. Returns the missing and unexpected keys.
        """
        targets = self.state_dict(keep_vars=True)
        expected = {name: (t.shape, t.dtype) for name, t in targets.items()}
        arrays, incompatible = check_state_dict(type(self).__name__, state_dict, expected, strict=strict)
        for name, array in arrays.items():
            target = targets[name].data
            target[...] = _backend.array_module(target).asarray(array)  # to the GPU when the module is there
        return incompatible

    def to(self, device: str) -> Module:
        """Move every parameter and buffer (and gradient) to `device`, in place; returns self.

        "cpu": NumPy arrays; "cuda": CuPy arrays on the current GPU (see minidiff.backend.array_module for
        training there). The Parameters stay the same objects, but create the optimizer after moving: its state
        is made where the parameters are at its first step.
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        move = _backend.to_host if device == "cpu" else _backend.cupy_module().asarray
        for t in (*self.parameters(), *self.buffers()):
            t.data = move(t.data)
            if t.grad is not None:
                t.grad = move(t.grad)
        return self

    # -- modes and gradients --------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (Dropout drops) on this module and all descendants; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode: expected a bool, got {type(mode).__name__}")
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode: the same as train(False)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget the accumulated gradients: every parameter's .grad becomes None."""
        for p in self.parameters():
            p.grad = None

    # -- printing ----------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The arguments shown between the parentheses of repr (override in layers)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = [extra] if extra else []
        lines += [f"({name}): {textwrap.indent(repr(child), '  ').lstrip()}" for name, child in self._modules.items()]
        if not self._modules:
            return f"{type(self).__name__}({''.join(lines)})"
        return f"{type(self).__name__}(\n" + "\n".join(f"  {line}" for line in lines) + "\n)"


def _buffer(name: str, value: Any) -> Tensor | None:
    if value is None:
        return None
    if not isinstance(value, Tensor | np.ndarray) and not _backend.is_device_array(value):
        raise TypeError(f"{name}: a buffer is a Tensor, an array or None, got {type(value).__name__}")
    if isinstance(value, Tensor) and value.requires_grad:
        raise ValueError(f"{name}: a buffer is not trained; pass a tensor without requires_grad (a Parameter?)")
    return value if isinstance(value, Tensor) else Tensor(value)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(module: Module, prefix: str, seen: set[int]) -> Iterator[tuple[str, Module]]:
    if id(module) in seen:
        return
    seen.add(id(module))
    yield prefix, module
    for name, child in module._modules.items():
        yield from _walk(child, _join(prefix, name), seen)


def _state_tensors(module: Module, prefix: str) -> Iterator[tuple[str, Tensor]]:
    """(dotted name, tensor) of the state dict: own parameters, persistent buffers, then children,
    without removing modules or tensors reachable twice (PyTorch's state_dict does not)."""
    for name, p in module._parameters.items():
        yield _join(prefix, name), p
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent:
            yield _join(prefix, name), b
    for name, child in module._modules.items():
        yield from _state_tensors(child, _join(prefix, name))
