"""The hot kernels: one module per kernel, each with its NumPy reference twin (`*_ref`) and the dispatch
to the C++ or CUDA version of the same function (see minidiff.backend)."""

from minidiff.kernels.gemm import gemm, gemm_ref, micro_kernels
from minidiff.kernels.sampler_step import StepCoefs, sampler_step, sampler_step_ref

__all__ = ["StepCoefs", "gemm", "gemm_ref", "micro_kernels", "sampler_step", "sampler_step_ref"]
