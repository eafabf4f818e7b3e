"""NVRTC, the CUDA run-time compiler CuPy uses, called directly through ctypes.

Compiling needs no GPU, so this checks on any machine that CuPy will accept the CUDA sources with the
options and template instances minidiff.kernels._cuda gives it. The library comes from the PyPI
package nvidia-cuda-nvrtc-cu12 (the one cupy-cuda12x loads).
"""

from __future__ import annotations

import ctypes
from pathlib import Path


def find_library() -> Path | None:
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    for folder in nvidia.cuda_nvrtc.__path__:
        hits = sorted(Path(folder, "lib").glob("libnvrtc.so.*"))
        if hits:
            return hits[0]
    return None


class NVRTC:
    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _check(self, status: int, what: str, log: str = "") -> None:
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}\n{log}")

    def compile(self, source: str, name: str, options: list[str], name_expressions: list[str]) -> dict[str, str]:
        """Compile `source`; returns each name expression's lowered (mangled) kernel name."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
                    "nvrtcCreateProgram")
        try:
            for expr in name_expressions:
                self._check(self.lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, log)
            self._check(status, f"nvrtcCompileProgram({name})", log.value.decode(errors="replace"))
            lowered = {}
            for expr in name_expressions:
                out = ctypes.c_char_p()
                self._check(self.lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)),
                            f"nvrtcGetLoweredName({expr})")
                lowered[expr] = out.value.decode()
            return lowered
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
