"""What a student pastes when asking for help: versions, backends and why not, how _C was built."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

from minidiff import backend

CPU_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)  # without importing it
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu() -> dict[str, str]:
    """CPU model and the SIMD features the kernels care about (Linux /proc/cpuinfo; else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    present = [f for f in CPU_FLAGS_OF_INTEREST if f in flags]
    return {"model": model, "cores": str(os.cpu_count()), "features": " ".join(present) or "unknown"}


def collect() -> dict[str, dict[str, str]]:
    import minidiff

    sections: dict[str, dict[str, str]] = {
        "versions": {
            "minidiff": minidiff.__version__,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "torch (tests and benchmarks only)": _version("torch"),
            "cupy": _version("cupy-cuda12x") if _version("cupy") == "not installed" else _version("cupy"),
            "platform": platform.platform(),
        },
        "backends": {},
        "extension minidiff._C": {},
        "cpu": cpu(),
    }
    for name in backend.BACKENDS + backend.TEST_BACKENDS:
        why = backend.why_unavailable(name)
        sections["backends"][name] = "available" if not why else f"unavailable: {why}"
    try:
        current = backend.get_backend()
    except RuntimeError as err:
        current = f"error: {err}"
    sections["backends"]["current"] = current
    sections["backends"]["MINIDIFF_BACKEND"] = os.environ.get("MINIDIFF_BACKEND", "(unset)")
    ext, why = backend._extension()
    if ext is None:
        sections["extension minidiff._C"]["status"] = why
    else:
        build = ext.build_info()
        sections["extension minidiff._C"] = {
            "file": Path(ext.__file__).name,
            "compiler": build["compiler"],
            "flags": build["cxx_flags"].strip(),
            "-march=native": str(build["march_native"]),
            "OpenMP": f"yes ({build['openmp']})" if build["openmp"] else "no: kernels run on one thread",
            "threads": f"{ext.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
            "compiled SIMD": ", ".join(k for k in ("avx2", "fma", "avx512f") if build[k]) or "none",
            "cuda-emu": "built" if build["cuda_emu"] else "not built",
        }
    nvcc = shutil.which("nvcc")
    sections["extension minidiff._C"]["nvcc"] = nvcc or "not found (CUDA sources are compiled by CuPy at run time)"
    return sections


def report() -> str:
    lines = []
    for title, entries in collect().items():
        lines.append(f"{title}:")
        width = max((len(k) for k in entries), default=0)
        lines += [f"  {k:<{width}}  {v}" for k, v in entries.items()]
    return "\n".join(lines)
