"""Launching the CUDA kernels of csrc/cuda/ on a GPU (through CuPy) or on the CPU (cuda-emu).

Both paths take the same launch: ``launch(backend, "file.cu", "kernel<float>", grid, block, args)``.
On "cuda" CuPy compiles the file with NVRTC once per process; on "cuda-emu" the same file, compiled by
g++ under cuda_emu.h into minidiff._C.cuda_emu, runs with the same grid, block and arguments. So the
emulated run checks exactly the indexing and launch configuration the GPU would get.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minidiff import backend as _backend


def _both_types(*kernels: str) -> tuple[str, ...]:
    return tuple(f"{kernel}<{t}>" for kernel in kernels for t in ("float", "double"))


# Every CUDA source, with the template instances CuPy compiles from it (NVRTC name expressions).
INSTANCES: dict[str, tuple[str, ...]] = {
    "sampler_step.cu": _both_types("sampler_step_kernel"),
    "block_reduce.cu": _both_types("row_sum_kernel", "row_sum_warp_kernel"),
    "gemm.cu": _both_types(*(f"gemm_v{v}_kernel" for v in (1, 2, 3, 4))),
    "conv2d.cu": _both_types(*(f"conv2d_{part}_v{v}_kernel" for v in (1, 2)
                               for part in ("forward", "grad_weight", "grad_x"))),
    "attention.cu": _both_types("attention_delta_kernel", *(f"attention_{part}_v{v}_kernel" for v in (1, 2)
                                                            for part in ("forward", "grad_q", "grad_kv"))),
    "group_norm.cu": _both_types("group_norm_forward_kernel", "group_norm_backward_kernel",
                                 "group_norm_param_grad_kernel"),
}

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096  # elementwise kernels stride over the rest


def launch_config_1d(n: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a grid-stride elementwise kernel over n elements (n = 0 gives one idle block)."""
    blocks = min(MAX_BLOCKS, max(1, -(-n // THREADS_PER_BLOCK)))
    return (blocks,), (THREADS_PER_BLOCK,)


def pick_version(version: object, versions: tuple[int, ...]) -> int | None:
    """The CUDA version to run on a GPU backend (the newest of `versions` when None), or None on the others,
    where asking for a version is an error."""
    backend = _backend.get_backend()
    if backend not in ("cuda", "cuda-emu"):
        if version is not None:
            raise ValueError(f"version: only the CUDA kernels (backends 'cuda', 'cuda-emu') have numbered versions; "
                             f"the backend is {backend!r}")
        return None
    if version is None:
        return versions[-1]
    if isinstance(version, bool) or version not in versions:
        raise ValueError(f"version: expected None or one of {versions}, got {version!r}")
    return version


def ctype(dtype: np.dtype) -> str:
    return {"float32": "float", "float64": "double"}[np.dtype(dtype).name]


def csrc_dir() -> Path:
    """The CUDA sources: installed beside the package, or the repository's csrc/ (editable installs)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "cuda").is_dir() and (candidate / "include").is_dir():
            return candidate
    raise FileNotFoundError(f"csrc: no CUDA sources found beside {here}; reinstall minidiff")


def nvrtc_options() -> tuple[str, ...]:
    """The compiler options CuPy passes to NVRTC (it adds the GPU's -arch itself)."""
    return ("--std=c++17", f"-I{csrc_dir() / 'include'}")


@functools.cache
def _raw_module(cu_file: str) -> Any:
    cupy = _backend.cupy_module()
    source = (csrc_dir() / "cuda" / cu_file).read_text()
    return cupy.RawModule(code=source, options=nvrtc_options(), name_expressions=INSTANCES[cu_file])


def launch(
    backend: str,
    cu_file: str,
    kernel: str,
    grid: tuple[int, ...],
    block: tuple[int, ...],
    args: tuple[Any, ...],
    writes: tuple[int, ...],
    shared_mem: int = 0,
) -> None:
    """Run `kernel` (one of INSTANCES[cu_file], e.g. "k<float>") of csrc/cuda/`cu_file`.

    `writes` are the positions in `args` of the arrays the kernel writes, and only those are copied back where
    the kernel ran on a copy: on "cuda" NumPy arrays are copied to the device, on "cuda-emu" CuPy arrays to the
    host, so callers need not know where their arrays live. A written array missing from `writes` thus keeps its
    old values on one of the two backends (on "cuda-emu", for the CuPy arrays of tests/test_device_arrays.py).
    `shared_mem`: bytes of dynamic shared memory per block, for kernels that declare it (MD_DYNAMIC_SHARED).
    """
    if backend == "cuda-emu":
        emu_kernel = getattr(_backend.extension().cuda_emu, kernel.split("<")[0])
        host_args = tuple(_backend.to_host(a) if _backend.is_device_array(a) else a for a in args)
        emu_kernel(grid, block, *host_args, **({"shared_mem": shared_mem} if shared_mem else {}))
        for i in writes:  # the emulator ran on host copies of the CuPy arrays: copy back those it wrote
            if host_args[i] is not args[i]:
                args[i][...] = _backend.array_module(args[i]).asarray(host_args[i])
        return
    function = _raw_module(cu_file).get_function(kernel)
    device_args = tuple(to_device(backend, a) for a in args)
    function(grid, block, device_args, shared_mem=shared_mem)
    for i in writes:
        to_host(device_args[i], args[i])


EMULATOR_SCHEDULES = ("round_robin", "run_ahead")


@contextlib.contextmanager
def emulator_schedule(schedule: str) -> Iterator[None]:
    """Within the block, cuda-emu launches run with `schedule`, one of EMULATOR_SCHEDULES: where the threads a
    barrier or warp intrinsic releases rejoin the ready ones, behind them (round_robin, the default) or in front
    (run_ahead: a warp runs on to the next barrier before the other warps start; csrc/include/minidiff/cuda_emu.h)."""
    emu = _backend.extension().cuda_emu
    before = emu.set_schedule(schedule)
    try:
        yield
    finally:
        emu.set_schedule(before)


def to_device(backend: str, a: Any) -> Any:
    """`a` where the backend's kernels can read it: a CuPy copy of a NumPy array on "cuda", else `a` itself.

    Kernels take strides from the array they are handed, so compute them from what this returns: CuPy
    copies a strided NumPy array into a contiguous one.
    """
    if backend == "cuda" and isinstance(a, np.ndarray):
        return _backend.cupy_module().asarray(a)
    return a


def to_host(device: Any, a: Any) -> None:
    """Copy a kernel's result back into `a` when `device` is the copy to_device made of it."""
    if device is not a:
        a[...] = _backend.cupy_module().asnumpy(device)
