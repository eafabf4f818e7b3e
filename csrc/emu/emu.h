// The test-only backend cuda-emu: the .cu kernels compiled as C++ under cuda_emu.h, exposed to Python
// with the same launch signature CuPy uses: kernel(grid, block, *args).
#pragma once

#include <pybind11/pybind11.h>

namespace md::emu {

void register_sampler_step(pybind11::module_& m);
void register_block_reduce(pybind11::module_& m);
void register_gemm(pybind11::module_& m);
void register_conv2d(pybind11::module_& m);
void register_attention(pybind11::module_& m);
void register_group_norm(pybind11::module_& m);
void register_selftest(pybind11::module_& m);

}  // namespace md::emu
