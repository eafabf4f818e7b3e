"""Which implementation runs the hot kernels: NumPy, the C++ extension, or CUDA.

Every kernel in `minidiff.kernels` has a NumPy reference twin and, with the same arguments, a C++
(`minidiff._C`) and a CUDA (CuPy) version. The backend picks which one runs:

- ``set_backend(name)`` for the rest of the program, ``use_backend(name)`` for a ``with`` block;
- the environment variable ``MINIDIFF_BACKEND`` chooses the starting backend;
- by default the fastest one available: ``cuda`` with a GPU and CuPy, else ``cpp``, else ``numpy``.

``numpy`` always works. ``cuda-emu`` is a test-only backend: the CUDA kernels compiled as C++ and run
on the CPU (see csrc/include/minidiff/cuda_emu.h); it checks indexing, not speed, and is never a
default.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cpp", "cuda")
TEST_BACKENDS = ("cuda-emu",)
_FASTEST_FIRST = ("cuda", "cpp", "numpy")
MAX_THREADS = 1024  # as md::cpu::kMaxThreads

_current: str | None = None  # None until first use: then MINIDIFF_BACKEND or the fastest available


@functools.cache
def _extension() -> tuple[ModuleType | None, str]:
    """(minidiff._C, "") or (None, why it could not be imported)."""
    # OpenMP threads that spin after a kernel (libgomp's default) take the cores from the NumPy/BLAS work that
    # runs next: a U-Net forward on 2 threads was slower than on 1. Sleeping threads (PASSIVE) scale. libgomp
    # reads the variable when the extension loads it; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from minidiff import _C
    except ImportError as err:
        return None, f"minidiff._C could not be imported ({err})"
    return _C, ""


@functools.cache
def _cupy() -> tuple[ModuleType | None, str]:
    """(cupy, "") when CuPy imports and sees a CUDA device, else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (pip install 'minidiff[cuda]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy raises its own runtime errors when no driver is present
        return None, f"CuPy found no usable CUDA driver ({err})"
    if count == 0:
        return None, "CuPy is installed but no CUDA device is visible"
    return cupy, ""


def extension() -> ModuleType:
    """The compiled extension minidiff._C, or an error that says why it is missing."""
    module, why = _extension()
    if module is None:
        raise RuntimeError(_unavailable_message("cpp", why))
    return module


def cupy_module() -> ModuleType:
    """CuPy, when a CUDA device is usable, or an error that says why not."""
    module, why = _cupy()
    if module is None:
        raise RuntimeError(_unavailable_message("cuda", why))
    return module


# --- where arrays live: NumPy (host) or CuPy (GPU) ------------------------------------------------------------------


def array_module(a: Any) -> ModuleType:
    """numpy, or cupy when `a` is a CuPy array: code that creates arrays writes ``xp = array_module(x)`` and
    ``xp.zeros(...)``, so that they live where x lives. CuPy is never imported here: a CuPy array exists only
    once CuPy has been imported, so sys.modules is asked.

    Training on a GPU: build the model as usual (NumPy weights), then ``model.to("cuda")`` (every Parameter and
    buffer becomes a cupy.ndarray), ``md.set_backend("cuda")`` (the CUDA kernels), create the optimizer, and move
    each batch once per step (``md.tensor(cupy.asarray(x))``). Every Tensor operation, gradient and optimizer state
    then stays on the GPU; ``Tensor.numpy()``, ``state_dict()`` and checkpoints copy to the host. No GPU runs in
    this project's CI: tests/test_device_arrays.py runs whole training steps and a sampler loop with a stand-in
    for CuPy (tests/fakecupy.py) whose arrays refuse implicit host copies, on the "cuda-emu" backend; what CuPy
    itself computes (its ufuncs, cupyx.scatter_add, erf, NVRTC) is not tested here.
    """
    if isinstance(a, np.ndarray):
        return np
    cupy = sys.modules.get("cupy")
    return cupy if cupy is not None and isinstance(a, cupy.ndarray) else np


def is_device_array(a: Any) -> bool:
    """True for a CuPy array (on a GPU), False for anything else."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(a, cupy.ndarray)


def as_array(a: Any, dtype: Any = None) -> Any:
    """`a` as an array where it lives: a NumPy or CuPy array as it is (cast when `dtype` differs), anything else
    (a Python number or list, the NumPy scalar a NumPy reduction returns) as a NumPy array."""
    if isinstance(a, np.ndarray) or is_device_array(a):
        return a if dtype is None else a.astype(dtype, copy=False)
    return np.asarray(a, dtype)


def to_host(a: Any) -> np.ndarray:
    """`a` as a NumPy array: itself when it is one (no copy), a copy from the GPU when it is a CuPy array."""
    return array_module(a).asnumpy(a) if is_device_array(a) else np.asarray(a)


def why_unavailable(name: str) -> str:
    """"" when backend `name` can run here, else the reason it cannot."""
    _check_name(name)
    if name == "numpy":
        return ""
    if name == "cpp":
        return _extension()[1]
    if name == "cuda":
        return _cupy()[1]
    module, why = _extension()  # cuda-emu lives inside the extension
    if module is None:
        return why
    if not hasattr(module, "cuda_emu"):
        return "minidiff._C was built with MINIDIFF_CUDA_EMU=OFF"
    return ""


def available_backends() -> list[str]:
    """The backends that can run here, fastest first (the test-only cuda-emu excluded)."""
    return [name for name in _FASTEST_FIRST if not why_unavailable(name)]


def get_backend() -> str:
    """The backend the kernels use now."""
    global _current
    if _current is None:
        requested = os.environ.get("MINIDIFF_BACKEND", "").strip()
        _current = _validated(requested) if requested else _fastest()
    return _current


def set_backend(name: str) -> None:
    """Use backend `name` ("numpy", "cpp", "cuda", or the test-only "cuda-emu") from now on."""
    global _current
    _current = _validated(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run a ``with`` block on backend `name`, then restore the previous one (not thread-safe)."""
    global _current
    previous = _current
    _current = _validated(name)
    try:
        yield _current
    finally:
        _current = previous


def set_num_threads(n: int) -> None:
    """Threads used by the C++ kernels (they start from OMP_NUM_THREADS, or all cores)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n: expected an int in 1..{MAX_THREADS}, got {n!r}")
    module, _ = _extension()
    if module is not None:
        module.set_num_threads(n)


def get_num_threads() -> int:
    """Threads used by the C++ kernels (1 when the extension is missing: NumPy paths are serial)."""
    module, _ = _extension()
    return module.get_num_threads() if module is not None else 1


def _check_name(name: object) -> None:
    if name not in BACKENDS + TEST_BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS + TEST_BACKENDS)}, got {name!r}")


def _validated(name: str) -> str:
    _check_name(name)
    why = why_unavailable(name)
    if why:
        raise RuntimeError(_unavailable_message(name, why))
    return name


def _unavailable_message(name: str, why: str) -> str:
    how = {
        "cpp": "reinstall with a C++17 compiler and CMake present (pip install -e .), "
        "or use set_backend('numpy')",
        "cuda": "install CuPy for your CUDA version on a machine with an NVIDIA GPU",
        "cuda-emu": "build the extension with MINIDIFF_CUDA_EMU=ON (the default)",
    }[name]
    return f"backend {name!r} is not available: {why}. To get it: {how}."


def _fastest() -> str:
    for name in _FASTEST_FIRST:
        if not why_unavailable(name):
            break
    if name == "numpy":
        _warn_numpy_fallback(_extension()[1])
    return name


@functools.cache
def _warn_numpy_fallback(why: str) -> None:
    """One line, once per process: the default fell back to NumPy because the extension is missing."""
    warnings.warn(f"minidiff: using the NumPy backend: {why}", RuntimeWarning, stacklevel=4)
