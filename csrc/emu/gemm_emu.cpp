// cuda-emu twin of csrc/cuda/gemm.cu: the four versions, run on the CPU with the GPU's launch.
#include "minidiff/cuda_emu.h"
// clang-format off
#include "cuda/gemm.cu"
// clang-format on

#include <string>
#include <type_traits>

#include "check.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace md::emu {

namespace py = pybind11;

namespace {

// The kernel reads (or writes) rows x cols elements at data[i rs + j cs]: `a` must be exactly that matrix.
// A stride along a side of size 1 only ever multiplies 0, so any value is accepted there.
template <typename T>
void check_matrix(const py::array& a, const char* name, index_t rows, index_t cols, index_t rs, index_t cs) {
  if (!py::isinstance<py::array_t<T>>(a))
    throw py::type_error(std::string(name) + ": expected a " + check::dtype_name<T>() + " array");
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols)
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(rows) + ", " +
                          std::to_string(cols) + "), got " + check::shape_str(a));
  const auto item = static_cast<index_t>(sizeof(T));
  if (rows == 0 || cols == 0) return;  // nothing is read or written (and NumPy gives empty arrays any strides)
  if ((rows > 1 && a.strides(0) != rs * item) || (cols > 1 && a.strides(1) != cs * item))
    throw py::value_error(std::string(name) + ": the strides passed (" + std::to_string(rs) + ", " +
                          std::to_string(cs) + ") elements are not the array's");
}

template <typename T>
using GemmKernel = void (*)(index_t, index_t, index_t, T, const T*, index_t, index_t, const T*, index_t, index_t, T, T*,
                            index_t);

template <typename T>
void launch(GemmKernel<T> kernel, const dim3& grid, const dim3& block, index_t m, index_t n, index_t k, double alpha,
            const py::array& a, index_t rsa, index_t csa, const py::array& b, index_t rsb, index_t csb, double beta,
            py::array& c, index_t ldc) {
  if (block.x != 16 || block.y != 16 || block.z != 1)
    throw py::value_error("block: the GEMM kernels need (16, 16)");
  if (m < 0 || n < 0 || k < 0) throw py::value_error("m, n, k: expected sizes >= 0");
  check_matrix<T>(a, "a", m, k, rsa, csa);
  check_matrix<T>(b, "b", k, n, rsb, csb);
  check_matrix<T>(c, "c", m, n, ldc, 1);
  if (!c.writeable()) throw py::value_error("c: expected a writeable array");
  const T* pa = static_cast<const T*>(a.data());
  const T* pb = static_cast<const T*>(b.data());
  T* pc = static_cast<T*>(c.mutable_data());
  py::gil_scoped_release release;
  md_emu::launch(grid, block, kernel, m, n, k, T(alpha), pa, rsa, csa, pb, rsb, csb, T(beta), pc, ldc);
}

void def(py::module_& m, const char* name, GemmKernel<float> f32, GemmKernel<double> f64) {
  m.def(
      name,
      [f32, f64](const py::tuple& grid, const py::tuple& block, index_t m, index_t n, index_t k, double alpha,
                 const py::array& a, index_t rsa, index_t csa, const py::array& b, index_t rsb, index_t csb,
                 double beta, py::array& c, index_t ldc) {
        const dim3 g = to_dim3(grid, "grid"), bl = to_dim3(block, "block");
        check::dispatch_float(a, "a", [&](auto tag) {
          using T = decltype(tag);
          if constexpr (std::is_same<T, float>::value) {
            launch<T>(f32, g, bl, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc);
          } else {
            launch<T>(f64, g, bl, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc);
          }
        });
      },
      (std::string(name) + "<T> of csrc/cuda/gemm.cu, run on the CPU. T follows a.dtype.").c_str());
}

}  // namespace

void register_gemm(py::module_& m) {
#define MD_DEF(kernel) def(m, #kernel, kernel<float>, kernel<double>)
  MD_DEF(gemm_v1_kernel);
  MD_DEF(gemm_v2_kernel);
  MD_DEF(gemm_v3_kernel);
  MD_DEF(gemm_v4_kernel);
#undef MD_DEF
}

}  // namespace md::emu
