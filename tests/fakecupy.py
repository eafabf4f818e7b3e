"""A test double for CuPy: arrays "on a device" that refuse every implicit copy to the host.

This is NOT CuPy and computes nothing on a GPU: each `ndarray` wraps a NumPy array and runs NumPy on it. It
exists to check, on a machine without a GPU, that minidiff keeps CuPy arrays where they are: it behaves as CuPy
does where that decides whether code is right on a GPU:
- `np.asarray(x)` / `np.array(x)` raise TypeError (CuPy's `__array__` does): no silent host round trips;
- a NumPy array mixed into a device computation (ufunc, NumPy function, indexing, assignment) raises TypeError,
  as CuPy's "Unsupported type <class 'numpy.ndarray'>"; NumPy and Python scalars are fine;
- NumPy functions and ufuncs called on device arrays run on the device (`__array_function__`,
  `__array_ufunc__`) and return device arrays, 0-d arrays rather than scalars;
- the host is reached only explicitly: `x.get()`, `cupy.asnumpy(x)`, and float(), int(), bool(), item() of one
  element; `cupy.asarray` / `cupy.array` copy a host array to the device.
What CuPy itself computes (its kernels, NVRTC, cupyx's scatter_add and erf) is not tested by it.

    install(monkeypatch)   # sys.modules["cupy"], ["cupyx"], ... become these stand-ins for one test
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np


class ndarray:  # (CuPy's name)
    """A "device" array: a NumPy array that only this module's functions may touch."""

    __module__ = "cupy"  # minidiff's kernel checks recognise CuPy arrays by their module
    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if "out" in kwargs:  # in place: the device arrays written
            return kwargs["out"][0] if len(kwargs["out"]) == 1 else kwargs["out"]
        return _wrap(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name: str) -> Any:  # shape, dtype, strides, flags, sum(), reshape(), astype(), ...
        if name.startswith("__"):  # never __array_interface__ and the like: they would let NumPy read us
            raise AttributeError(name)
        return _on_device(getattr(self._a, name))

    def __getitem__(self, index: Any) -> ndarray:
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index: Any, value: Any) -> None:
        self._a[_unwrap(index)] = _unwrap(value)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        return (_wrap(row) for row in self._a)

    def __repr__(self) -> str:
        return f"fakecupy.{self._a!r}"

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def get(self) -> np.ndarray:
        """A NumPy copy (the explicit way to the host)."""
        return self._a.copy()


def _binary(ufunc: np.ufunc, reflected: bool) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        if getattr(type(other), "__array_ufunc__", 0) is None:  # as CuPy: let e.g. a minidiff Tensor answer
            return NotImplemented
        return ufunc(other, self) if reflected else ufunc(self, other)

    return op


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide, "pow": np.power,
           "matmul": np.matmul, "floordiv": np.floor_divide, "mod": np.remainder, "and": np.bitwise_and,
           "or": np.bitwise_or, "xor": np.bitwise_xor}
for _name, _ufunc in _BINARY.items():
    setattr(ndarray, f"__{_name}__", _binary(_ufunc, False))
    setattr(ndarray, f"__r{_name}__", _binary(_ufunc, True))
    setattr(ndarray, f"__i{_name}__", lambda self, other, ufunc=_ufunc: ufunc(self, other, out=(self,)))
for _name, _ufunc in {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                      "eq": np.equal, "ne": np.not_equal}.items():
    setattr(ndarray, f"__{_name}__", _binary(_ufunc, False))
for _name, _ufunc in {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}.items():
    setattr(ndarray, f"__{_name}__", lambda self, ufunc=_ufunc: ufunc(self))
ndarray.__hash__ = None  # type: ignore[assignment] (as numpy's and CuPy's arrays: == is elementwise)


def _unwrap(x: Any) -> Any:
    """The NumPy arrays inside device arrays, through tuples, lists and dicts; a host array is refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)} (a host array in a device computation: copy it with "
                        "cupy.asarray first)")
    if isinstance(x, tuple | list):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    """NumPy results as device arrays (a NumPy scalar as a 0-d array, as CuPy returns), through tuples and lists."""
    if isinstance(x, np.ndarray | np.generic):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple | list):
        return type(x)(_wrap(v) for v in x)
    return x


def _on_device(value: Any) -> Any:
    """A NumPy function or method made to take and return device arrays; other values wrapped."""
    if callable(value) and not isinstance(value, type):
        return lambda *args, **kwargs: _wrap(value(*_unwrap(args), **_unwrap(kwargs)))
    return _wrap(value)


class _Module(types.ModuleType):
    """cupy: NumPy's functions of the same names, on device arrays (zeros, ones, stack, linalg.norm, ...)."""

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        return value if isinstance(value, types.ModuleType) else _on_device(value)


def asarray(a: Any, dtype: Any = None) -> ndarray:
    """A device array: `a` itself (cast if dtype differs), or a copy of host data on the device."""
    if isinstance(a, ndarray):
        return a if dtype is None else ndarray(a._a.astype(dtype, copy=False))
    return ndarray(np.array(a, dtype))


def array(a: Any, dtype: Any = None) -> ndarray:
    """A new device array with a copy of `a` (device or host data)."""
    return ndarray(np.array(a._a if isinstance(a, ndarray) else a, dtype))


def asnumpy(a: Any) -> np.ndarray:
    """A NumPy copy of a device array (host data as it is)."""
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def scatter_add(a: ndarray, slices: Any, value: Any) -> None:
    """cupyx.scatter_add: a[slices] += value, adding once per occurrence of a repeated index."""
    np.add.at(a._a, _unwrap(slices), _unwrap(value))


def erf(x: ndarray) -> ndarray:
    """cupyx.scipy.special.erf, elementwise in x's dtype."""
    return ndarray(np.asarray(np.frompyfunc(math.erf, 1, 1)(x._a), dtype=x.dtype))


def modules() -> dict[str, types.ModuleType]:
    """The stand-ins by import name: cupy, cupyx, cupyx.scipy, cupyx.scipy.special."""
    cupy = _Module("cupy", __doc__)
    cupy.__dict__.update(ndarray=ndarray, asarray=asarray, array=array, asnumpy=asnumpy,
                         cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = erf
    scipy = types.ModuleType("cupyx.scipy")
    scipy.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add, cupyx.scipy = scatter_add, scipy
    return {"cupy": cupy, "cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special}


def install(monkeypatch: Any) -> types.ModuleType:
    """Make `import cupy` (and cupyx) give the stand-ins for one test; returns the fake cupy."""
    fakes = modules()
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fakes["cupy"]
