"""Launching the CUDA kernels of csrc/cuda/ on a GPU (through CuPy) or on the CPU (cuda-emu).

Both paths take the same launch: ``launch(backend, "file.cu", "kernel<float>", grid, block, args)``.
On "cuda" CuPy compiles the file with NVRTC once per process; on "cuda-emu" the same file, compiled by
g++ under cuda_emu.h into minidiff._C.cuda_emu, runs with the same grid, block and arguments. So the
emulated run checks exactly the indexing and launch configuration the GPU would get.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from minidiff import backend as _backend

# Every CUDA source, with the template instances CuPy compiles from it (NVRTC name expressions).
INSTANCES: dict[str, tuple[str, ...]] = {
    "sampler_step.cu": ("sampler_step_kernel<float>", "sampler_step_kernel<double>"),
    "block_reduce.cu": ("row_sum_kernel<float>", "row_sum_kernel<double>"),
}

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096  # elementwise kernels stride over the rest


def launch_config_1d(n: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a grid-stride elementwise kernel over n elements (n = 0 gives one idle block)."""
    blocks = min(MAX_BLOCKS, max(1, -(-n // THREADS_PER_BLOCK)))
    return (blocks,), (THREADS_PER_BLOCK,)


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
) -> None:
    """Run `kernel` (one of INSTANCES[cu_file], e.g. "k<float>") of csrc/cuda/`cu_file`.

    `writes` are the positions in `args` of the arrays the kernel writes. On "cuda", NumPy arrays are
    copied to the device and those written are copied back, so NumPy callers need not know.
    """
    if backend == "cuda-emu":
        emu = _backend.extension().cuda_emu
        getattr(emu, kernel.split("<")[0])(grid, block, *args)
        return
    cupy = _backend.cupy_module()
    function = _raw_module(cu_file).get_function(kernel)
    device_args = tuple(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    function(grid, block, device_args)
    for i in writes:
        if isinstance(args[i], np.ndarray):
            args[i][...] = cupy.asnumpy(device_args[i])
