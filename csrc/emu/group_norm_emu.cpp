// cuda-emu twin of csrc/cuda/group_norm.cu: the forward, the backward and the parameter gradients, on the CPU.
#include "minidiff/cuda_emu.h"
// clang-format off
#include "cuda/group_norm.cu"
// clang-format on

#include <stdexcept>
#include <string>

#include "check.h"
#include "cpu/group_norm.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace md::emu {

namespace py = pybind11;

namespace {

cpu::GroupNormShape shape_of(index_t n, index_t c, index_t g, index_t s) {
  try {
    return cpu::GroupNormShape::make(n, c, g, s);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// The optional inputs MD_GROUP_NORM_PARAMS stands for: those `present` names checked, the others nullptr (the
// kernel reads them nowhere).
template <typename T>
struct Params {
  const T *weight, *bias, *scale, *shift;
  int present, act;
};

template <typename T>
const T* optional(const py::object& a, const char* name, bool present, const std::vector<index_t>& shape) {
  if (!present) return nullptr;
  const auto array = a.cast<py::array>();
  check_shape<T>(array, name, shape);
  return static_cast<const T*>(array.data());
}

// An output written only when `present`: an array then, anything otherwise.
template <typename T>
T* optional_output(const py::object& a, const char* name, bool present, const std::vector<index_t>& shape) {
  if (!present) return nullptr;
  auto array = a.cast<py::array>();
  return check_output<T>(array, name, shape);
}

template <typename T>
Params<T> check_params(const py::object& weight, const py::object& bias, const py::object& scale,
                       const py::object& shift, int present, int act, const cpu::GroupNormShape& s) {
  if (present < 0 || present > (kWeight | kBias | kScale | kShift))
    throw py::value_error("present: expected a combination of the bits 1, 2, 4, 8, got " + std::to_string(present));
  if (act != 0 && act != 1) throw py::value_error("act: expected 0 (identity) or 1 (SiLU), got " + std::to_string(act));
  return {optional<T>(weight, "weight", present & kWeight, {s.c}), optional<T>(bias, "bias", present & kBias, {s.c}),
          optional<T>(scale, "scale", present & kScale, {s.n, s.c}),
          optional<T>(shift, "shift", present & kShift, {s.n, s.c}), present, act};
}

// The launch of the forward or the backward kernel, checked: whole warps, one double of dynamic shared memory per
// warp (block_sum's partials), and the sizes.
struct ReductionLaunch {
  dim3 grid, block;
  cpu::GroupNormShape shape;
};

ReductionLaunch reduction_launch(const py::tuple& grid, const py::tuple& block, std::size_t shared_mem,
                                 const char* kernel, index_t n, index_t c, index_t g, index_t s) {
  const dim3 gr = to_dim3(grid, "grid"), bl = to_dim3(block, "block");
  check_warp_block(bl, kernel);
  const std::size_t needed = bl.x / 32 * sizeof(double);
  if (shared_mem < needed)
    throw py::value_error(std::string("shared_mem: ") + kernel + " needs " + std::to_string(needed) + " bytes for " +
                          std::to_string(bl.x) + " threads, got " + std::to_string(shared_mem));
  return {gr, bl, shape_of(n, c, g, s)};
}

}  // namespace

void register_group_norm(py::module_& m) {
  m.def(
      "group_norm_forward_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& x, const py::object& weight,
         const py::object& bias, const py::object& scale, const py::object& shift, int present, int act, double eps,
         py::array& y, py::array& mean, py::array& rstd, index_t n, index_t c, index_t g, index_t s,
         std::size_t shared_mem) {
        const ReductionLaunch l = reduction_launch(grid, block, shared_mem, "group_norm_forward_kernel", n, c, g, s);
        check::dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          check_shape<T>(x, "x", {n, c, s});
          const Params<T> p = check_params<T>(weight, bias, scale, shift, present, act, l.shape);
          T* out = check_output<T>(y, "y", {n, c, s});
          double* pm = check_output<double>(mean, "mean", {n, g});
          double* pr = check_output<double>(rstd, "rstd", {n, g});
          const T* px = static_cast<const T*>(x.data());
          py::gil_scoped_release release;
          md_emu::launch(l.grid, l.block, shared_mem, group_norm_forward_kernel<T>, px, p.weight, p.bias, p.scale,
                         p.shift, p.present, p.act, eps, out, pm, pr, n, c, g, s);
        });
      },
      py::arg("grid"), py::arg("block"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("scale"),
      py::arg("shift"), py::arg("present"), py::arg("act"), py::arg("eps"), py::arg("y"), py::arg("mean"),
      py::arg("rstd"), py::arg("n"), py::arg("c"), py::arg("g"), py::arg("s"), py::kw_only(), py::arg("shared_mem"),
      "group_norm_forward_kernel<T> of csrc/cuda/group_norm.cu, run on the CPU. T follows x.dtype.");
  m.def(
      "group_norm_backward_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& grad_y, const py::array& x,
         const py::array& mean, const py::array& rstd, const py::object& weight, const py::object& bias,
         const py::object& scale, const py::object& shift, int present, int act, py::array& grad_x,
         py::array& weight_terms, py::array& bias_terms, const py::object& grad_scale, const py::object& grad_shift,
         index_t n, index_t c, index_t g, index_t s, std::size_t shared_mem) {
        const ReductionLaunch l = reduction_launch(grid, block, shared_mem, "group_norm_backward_kernel", n, c, g, s);
        check::dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          check_shape<T>(grad_y, "grad_y", {n, c, s});
          check_shape<T>(x, "x", {n, c, s});
          check_shape<double>(mean, "mean", {n, g});
          check_shape<double>(rstd, "rstd", {n, g});
          const Params<T> p = check_params<T>(weight, bias, scale, shift, present, act, l.shape);
          T* pgx = check_output<T>(grad_x, "grad_x", {n, c, s});
          double* pwt = check_output<double>(weight_terms, "weight_terms", {n, c});
          double* pbt = check_output<double>(bias_terms, "bias_terms", {n, c});
          T* pgs = optional_output<T>(grad_scale, "grad_scale", p.scale != nullptr, {n, c});
          T* pgh = optional_output<T>(grad_shift, "grad_shift", p.shift != nullptr, {n, c});
          const T* pgy = static_cast<const T*>(grad_y.data());
          const T* px = static_cast<const T*>(x.data());
          const double* pm = static_cast<const double*>(mean.data());
          const double* pr = static_cast<const double*>(rstd.data());
          py::gil_scoped_release release;
          md_emu::launch(l.grid, l.block, shared_mem, group_norm_backward_kernel<T>, pgy, px, pm, pr, p.weight, p.bias,
                         p.scale, p.shift, p.present, p.act, pgx, pwt, pbt, pgs, pgh, n, c, g, s);
        });
      },
      py::arg("grid"), py::arg("block"), py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("rstd"),
      py::arg("weight"), py::arg("bias"), py::arg("scale"), py::arg("shift"), py::arg("present"), py::arg("act"),
      py::arg("grad_x"), py::arg("weight_terms"), py::arg("bias_terms"), py::arg("grad_scale"),
      py::arg("grad_shift"), py::arg("n"), py::arg("c"), py::arg("g"), py::arg("s"), py::kw_only(),
      py::arg("shared_mem"),
      "group_norm_backward_kernel<T> of csrc/cuda/group_norm.cu, run on the CPU. T follows x.dtype.");
  m.def(
      "group_norm_param_grad_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& weight_terms, const py::array& bias_terms,
         py::array& grad_weight, py::array& grad_bias, index_t n, index_t c) {
        const dim3 gr = to_dim3(grid, "grid"), bl = to_dim3(block, "block");
        if (n < 0 || c < 0 || (c > 0 && n > (index_t(1) << 62) / c))
          throw py::value_error("n, c: expected sizes >= 0 whose product fits in 64 bits");
        check_shape<double>(weight_terms, "weight_terms", {n, c});
        check_shape<double>(bias_terms, "bias_terms", {n, c});
        check::dispatch_float(grad_weight, "grad_weight", [&](auto tag) {
          using T = decltype(tag);
          T* pw = check_output<T>(grad_weight, "grad_weight", {c});
          T* pb = check_output<T>(grad_bias, "grad_bias", {c});
          const double* pwt = static_cast<const double*>(weight_terms.data());
          const double* pbt = static_cast<const double*>(bias_terms.data());
          py::gil_scoped_release release;
          md_emu::launch(gr, bl, group_norm_param_grad_kernel<T>, pwt, pbt, pw, pb, n, c);
        });
      },
      "group_norm_param_grad_kernel<T> of csrc/cuda/group_norm.cu, run on the CPU. T follows grad_weight.dtype.");
}

}  // namespace md::emu
