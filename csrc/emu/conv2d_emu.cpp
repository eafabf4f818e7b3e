// cuda-emu twin of csrc/cuda/conv2d.cu: both versions of the forward and of the two gradients, on the CPU.
#include "minidiff/cuda_emu.h"
// clang-format off
#include "cuda/conv2d.cu"
// clang-format on

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "check.h"
#include "cpu/conv2d.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace md::emu {

namespace py = pybind11;

namespace {

template <typename T>
using ConvKernel = void (*)(const T*, const T*, T*, index_t, index_t, index_t, index_t, index_t, index_t, index_t,
                            index_t, index_t, index_t, index_t);

// The three kernels of each version share one signature, (in0, in1, out, sizes...); which arrays those are
// depends on the kernel.
enum class Role { forward, grad_weight, grad_x };

template <typename T>
void launch(Role role, ConvKernel<T> kernel, bool tiled, const dim3& grid, const dim3& block, const py::array& in0,
            const py::array& in1, py::array& out, const cpu::Conv2dShape& s) {
  if (tiled && (block.x != 16 || block.y != 16 || block.z != 1))
    throw py::value_error("block: the implicit-GEMM kernels need (16, 16)");
  if (!tiled && (block.y != 1 || block.z != 1)) throw py::value_error("block: the direct kernels need (x,)");
  const std::vector<index_t> x{s.n, s.c, s.h, s.w}, weight{s.o, s.c, s.kh, s.kw}, y{s.n, s.o, s.ho, s.wo};
  struct Array {
    const char* name;
    const std::vector<index_t>& shape;
  };
  const Array arrays[3][3] = {{{"x", x}, {"weight", weight}, {"out", y}},                 // forward
                              {{"grad_out", y}, {"x", x}, {"grad_weight", weight}},       // grad_weight
                              {{"grad_out", y}, {"weight", weight}, {"grad_x", x}}};      // grad_x
  const Array* a = arrays[static_cast<int>(role)];
  check_shape<T>(in0, a[0].name, a[0].shape);
  check_shape<T>(in1, a[1].name, a[1].shape);
  check_shape<T>(out, a[2].name, a[2].shape);
  const T* p0 = static_cast<const T*>(in0.data());
  const T* p1 = static_cast<const T*>(in1.data());
  T* po = check::mutable_data<T>(out, a[2].name);
  py::gil_scoped_release release;
  md_emu::launch(grid, block, kernel, p0, p1, po, s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw);
}

void def(py::module_& m, const char* name, Role role, bool tiled, ConvKernel<float> f32, ConvKernel<double> f64) {
  m.def(
      name,
      [role, tiled, f32, f64](const py::tuple& grid, const py::tuple& block, const py::array& in0,
                              const py::array& in1, py::array& out, index_t n, index_t c, index_t h, index_t w,
                              index_t o, index_t kh, index_t kw, index_t sh, index_t sw, index_t ph, index_t pw) {
        const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        cpu::Conv2dShape s;
        try {
          s = cpu::Conv2dShape::make(n, c, h, w, o, kh, kw, sh, sw, ph, pw);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
        check::dispatch_float(in0, "in0", [&](auto tag) {
          using T = decltype(tag);
          if constexpr (std::is_same<T, float>::value) {
            launch<T>(role, f32, tiled, g, b, in0, in1, out, s);
          } else {
            launch<T>(role, f64, tiled, g, b, in0, in1, out, s);
          }
        });
      },
      (std::string(name) + "<T> of csrc/cuda/conv2d.cu, run on the CPU. T follows the first array's dtype.")
          .c_str());
}

}  // namespace

void register_conv2d(py::module_& m) {
#define MD_DEF(kernel, role, tiled) def(m, #kernel, role, tiled, kernel<float>, kernel<double>)
  MD_DEF(conv2d_forward_v1_kernel, Role::forward, false);
  MD_DEF(conv2d_grad_weight_v1_kernel, Role::grad_weight, false);
  MD_DEF(conv2d_grad_x_v1_kernel, Role::grad_x, false);
  MD_DEF(conv2d_forward_v2_kernel, Role::forward, true);
  MD_DEF(conv2d_grad_weight_v2_kernel, Role::grad_weight, true);
  MD_DEF(conv2d_grad_x_v2_kernel, Role::grad_x, true);
#undef MD_DEF
}

}  // namespace md::emu
