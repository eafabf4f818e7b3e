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

// The checks both row sums rely on; `kernel` is row_sum_kernel<T> or row_sum_warp_kernel<T>.
template <typename T>
void launch(void (*kernel)(const T*, T*, index_t, index_t), const dim3& grid, const dim3& block,
            std::size_t shared_mem, const py::array& x, py::array& out, index_t rows, index_t cols) {
  if (rows < 0 || cols < 0 || (cols > 0 && rows > (index_t(1) << 62) / cols))
    throw py::value_error("rows, cols: expected non-negative sizes whose product fits in 64 bits");
  const T* px = check::data<T>(x, "x");
  T* po = check::mutable_data<T>(out, "out");
  check::holds(x, "x", rows * cols);
  check::holds(out, "out", rows);
  py::gil_scoped_release release;
  md_emu::launch(grid, block, shared_mem, kernel, px, po, rows, cols);
}

void tree_launch_shape(const dim3& block) {
  const unsigned int b = block.x;
  if (block.y != 1 || block.z != 1 || b > kMaxReduceThreads || (b & (b - 1)) != 0)
    throw py::value_error("block: row_sum_kernel needs (2^k,) with 2^k <= " + std::to_string(kMaxReduceThreads));
}

template <typename T>
void warp_launch_shape(const dim3& block, std::size_t shared_mem) {
  if (block.y != 1 || block.z != 1 || block.x % 32 != 0)
    throw py::value_error("block: row_sum_warp_kernel needs (32 k,), whole warps in x");
  const std::size_t needed = block.x / 32 * sizeof(T);
  if (shared_mem < needed)
    throw py::value_error("shared_mem: row_sum_warp_kernel needs one partial per warp, " + std::to_string(needed) +
                          " bytes for " + std::to_string(block.x) + " threads, got " + std::to_string(shared_mem));
}

}  // namespace

void register_block_reduce(py::module_& m) {
  m.def(
      "row_sum_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& x, py::array& out, index_t rows,
         index_t cols) {
        const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        tree_launch_shape(b);
        check::dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          launch<T>(row_sum_kernel<T>, g, b, 0, x, out, rows, cols);
        });
      },
      "row_sum_kernel<T> of csrc/cuda/block_reduce.cu, run on the CPU. T follows x.dtype.");
  m.def(
      "row_sum_warp_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& x, py::array& out, index_t rows,
         index_t cols, std::size_t shared_mem) {
        const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        check::dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          warp_launch_shape<T>(b, shared_mem);
          launch<T>(row_sum_warp_kernel<T>, g, b, shared_mem, x, out, rows, cols);
        });
      },
      py::arg("grid"), py::arg("block"), py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("cols"),
      py::kw_only(), py::arg("shared_mem"),
      "row_sum_warp_kernel<T> of csrc/cuda/block_reduce.cu, run on the CPU. T follows x.dtype.");
}

}  // namespace md::emu
