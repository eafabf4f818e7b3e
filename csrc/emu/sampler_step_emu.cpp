// cuda-emu twin of csrc/cuda/sampler_step.cu: the very same source, compiled by g++.
#include "minidiff/cuda_emu.h"
// clang-format off
#include "cuda/sampler_step.cu"
// clang-format on

#include "check.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace md::emu {

namespace py = pybind11;

namespace {

template <typename T>
void launch(const dim3& grid, const dim3& block, const py::array& x, const py::array& eps, const py::array& z,
            py::array& out, index_t n, double c_x, double c_eps, double c_z, double c_x0, double r_x,
            double r_eps, double clip, int has_z, int has_clip) {
  // The kernel reads n elements of x, eps (and z) and writes n of out: make sure they are there.
  const T* px = check::data<T>(x, "x");
  const T* pe = check::data<T>(eps, "eps");
  const T* pz = check::data<T>(z, "z");
  T* po = check::mutable_data<T>(out, "out");
  check::holds(x, "x", n);
  check::holds(eps, "eps", n);
  check::holds(out, "out", n);
  if (has_z) check::holds(z, "z", n);
  py::gil_scoped_release release;
  md_emu::launch(grid, block, sampler_step_kernel<T>, px, pe, pz, po, n, T(c_x), T(c_eps), T(c_z), T(c_x0),
                 T(r_x), T(r_eps), T(clip), has_z, has_clip);
}

}  // namespace

void register_sampler_step(py::module_& m) {
  m.def(
      "sampler_step_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& x, const py::array& eps,
         const py::array& z, py::array& out, index_t n, double c_x, double c_eps, double c_z, double c_x0,
         double r_x, double r_eps, double clip, int has_z, int has_clip) {
        const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        check::dispatch_float(x, "x", [&](auto tag) {
          launch<decltype(tag)>(g, b, x, eps, z, out, n, c_x, c_eps, c_z, c_x0, r_x, r_eps, clip, has_z,
                                has_clip);
        });
      },
      "sampler_step_kernel<T> of csrc/cuda/sampler_step.cu, run on the CPU. T follows x.dtype.");
}

}  // namespace md::emu
