// minidiff._C: the only pybind11 module. Every kernel entry point checks its arguments (check.h),
// releases the GIL, and calls a plain C++ function of csrc/cpu/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <thread>

#include "check.h"
#include "cpu/runtime.h"
#include "cpu/sampler.h"
#ifdef MINIDIFF_WITH_CUDA_EMU
#include "emu/emu.h"
#endif

namespace py = pybind11;

namespace {

template <typename T>
void sampler_step(const py::array& x, const py::array& eps, const py::object& z, py::array& out, double c_x,
                  double c_eps, double c_z, double c_x0, double r_x, double r_eps, double clip, bool has_clip) {
  using namespace md;
  const T* px = check::data<T>(x, "x");
  const T* pe = check::data<T>(eps, "eps");
  T* po = check::mutable_data<T>(out, "out");
  check::same_shape(eps, "eps", x, "x");
  check::same_shape(out, "out", x, "x");
  const T* pz = nullptr;
  if (!z.is_none()) {
    if (!py::isinstance<py::array>(z)) throw py::type_error("z: expected an array or None");
    const auto za = z.cast<py::array>();
    pz = check::data<T>(za, "z");
    check::same_shape(za, "z", x, "x");
  }
  const StepCoefs<T> c{T(c_x), T(c_eps), T(c_z), T(c_x0), T(r_x), T(r_eps), T(clip), has_clip};
  py::gil_scoped_release release;
  cpu::sampler_step<T>(px, pe, pz, po, static_cast<index_t>(x.size()), c);
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = MINIDIFF_COMPILER;
  info["cxx_flags"] = MINIDIFF_CXX_FLAGS;
  info["march_native"] = static_cast<bool>(MINIDIFF_MARCH_NATIVE);
#ifdef _OPENMP
  info["openmp"] = _OPENMP;
#else
  info["openmp"] = py::none();
#endif
#ifdef __AVX2__
  info["avx2"] = true;
#else
  info["avx2"] = false;
#endif
#ifdef __FMA__
  info["fma"] = true;
#else
  info["fma"] = false;
#endif
#ifdef __AVX512F__
  info["avx512f"] = true;
#else
  info["avx512f"] = false;
#endif
#ifdef MINIDIFF_WITH_CUDA_EMU
  info["cuda_emu"] = true;
#else
  info["cuda_emu"] = false;
#endif
  info["hardware_threads"] = std::thread::hardware_concurrency();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "minidiff C++ kernels (see minidiff.kernels for the documented, checked entry points)";
  m.def("build_info", &build_info, "How this extension was built: compiler, flags, OpenMP, SIMD.");
  m.def("get_num_threads", &md::cpu::num_threads);
  m.def("set_num_threads", &md::cpu::set_num_threads, py::arg("n"));

  m.def(
      "sampler_step",
      [](const py::array& x, const py::array& eps, const py::object& z, py::array& out, double c_x,
         double c_eps, double c_z, double c_x0, double r_x, double r_eps, double clip, bool has_clip) {
        md::check::dispatch_float(x, "x", [&](auto tag) {
          sampler_step<decltype(tag)>(x, eps, z, out, c_x, c_eps, c_z, c_x0, r_x, r_eps, clip, has_clip);
        });
      },
      py::arg("x"), py::arg("eps"), py::arg("z"), py::arg("out"), py::arg("c_x"), py::arg("c_eps"),
      py::arg("c_z"), py::arg("c_x0"), py::arg("r_x"), py::arg("r_eps"), py::arg("clip"), py::arg("has_clip"),
      "out = c_x x + c_eps eps + c_z z [+ c_x0 clamp(r_x x + r_eps eps, -clip, clip)]; see sampler.h.");

#ifdef MINIDIFF_WITH_CUDA_EMU
  auto emu = m.def_submodule("cuda_emu", "CUDA kernels run on the CPU by cuda_emu.h (tests only).");
  md::emu::register_sampler_step(emu);
  md::emu::register_block_reduce(emu);
#endif
}
