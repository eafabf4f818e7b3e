// cuda-emu twin of csrc/cuda/block_reduce.cu.
#include "minidiff/cuda_emu.h"
// clang-format off
#include "cuda/block_reduce.cu"
// clang-format on

#include "check.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace md::emu {

namespace py = pybind11;

namespace {

template <typename T>
void launch(const dim3& grid, const dim3& block, const py::array& x, py::array& out, index_t rows, index_t cols) {
  const unsigned int b = block.x;
  if (block.y != 1 || block.z != 1 || b > kMaxReduceThreads || (b & (b - 1)) != 0)
    throw py::value_error("block: row_sum_kernel needs (2^k,) with 2^k <= " + std::to_string(kMaxReduceThreads));
  if (rows < 0 || cols < 0 || (cols > 0 && rows > (index_t(1) << 62) / cols))
    throw py::value_error("rows, cols: expected non-negative sizes whose product fits in 64 bits");
  const T* px = check::data<T>(x, "x");
  T* po = check::mutable_data<T>(out, "out");
  check::holds(x, "x", rows * cols);
  check::holds(out, "out", rows);
  py::gil_scoped_release release;
  md_emu::launch(grid, block, row_sum_kernel<T>, px, po, rows, cols);
}

}  // namespace

void register_block_reduce(py::module_& m) {
  m.def(
      "row_sum_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& x, py::array& out, index_t rows,
         index_t cols) {
        const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        check::dispatch_float(x, "x", [&](auto tag) { launch<decltype(tag)>(g, b, x, out, rows, cols); });
      },
      "row_sum_kernel<T> of csrc/cuda/block_reduce.cu, run on the CPU. T follows x.dtype.");
}

}  // namespace md::emu
