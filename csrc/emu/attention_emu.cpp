// cuda-emu twin of csrc/cuda/attention.cu: the forward, D and the two gradient passes, on the CPU.
#include "minidiff/cuda_emu.h"
// clang-format off
#include "cuda/attention.cu"
// clang-format on

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "check.h"
#include "cpu/attention.h"
#include "emu/emu.h"
#include "emu/launch.h"

namespace md::emu {

namespace py = pybind11;

namespace {

// The arguments MD_ATTENTION_INPUTS and MD_ATTENTION_SIZES stand for, checked against each other.
template <typename T>
struct Inputs {
  const T *q, *k, *v;
  const unsigned char* mask = nullptr;
  const index_t* mask_index = nullptr;
  int has_mask;
  T scale;
};

template <typename T>
Inputs<T> check_inputs(const py::array& q, const py::array& k, const py::array& v, const py::array& mask,
                       const py::array& mask_index, int has_mask, double scale, index_t batch, index_t lq, index_t lk,
                       index_t d, index_t dv) {
  Inputs<T> in{};
  try {
    cpu::AttentionShape::make(batch, lq, lk, d, dv);  // sizes >= 0 within 64-bit indexing
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  check_shape<T>(q, "q", {batch, lq, d});
  check_shape<T>(k, "k", {batch, lk, d});
  check_shape<T>(v, "v", {batch, lk, dv});
  in.q = static_cast<const T*>(q.data());
  in.k = static_cast<const T*>(k.data());
  in.v = static_cast<const T*>(v.data());
  in.has_mask = has_mask != 0;
  in.scale = static_cast<T>(scale);
  if (!in.has_mask) return in;
  const auto* bytes = check::data<std::uint8_t>(mask, "mask");
  if (mask.ndim() != 3 || mask.shape(1) != lq || mask.shape(2) != lk)
    throw py::value_error("mask: expected shape (M, " + std::to_string(lq) + ", " + std::to_string(lk) +
                          ") of bytes, got " + check::shape_str(mask));
  check_shape<std::int64_t>(mask_index, "mask_index", {batch});
  const auto* index = static_cast<const std::int64_t*>(mask_index.data());
  for (index_t b = 0; b < batch; ++b) {
    if (index[b] < 0 || index[b] >= mask.shape(0))
      throw py::value_error("mask_index: expected values in [0, " + std::to_string(mask.shape(0)) + "), got " +
                            std::to_string(index[b]));
  }
  in.mask = bytes;
  in.mask_index = reinterpret_cast<const index_t*>(index);
  return in;
}

// The arguments every attention kernel's binding starts and ends with.
#define MD_ATTENTION_BINDING_ARGS                                                                                  \
  const py::tuple &grid, const py::tuple &block, const py::array &q, const py::array &k, const py::array &v,       \
      const py::array &mask, const py::array &mask_index, int has_mask, double scale
#define MD_ATTENTION_BINDING_SIZES index_t batch, index_t lq, index_t lk, index_t d, index_t dv

// The backward's grad_out (B, Lq, Dv), lse and delta (B, Lq), checked.
template <typename T>
struct Residuals {
  const T *grad_out, *lse, *delta;
};

template <typename T>
Residuals<T> check_residuals(const py::array& grad_out, const py::array& lse, const py::array& delta, index_t batch,
                             index_t lq, index_t dv) {
  check_shape<T>(grad_out, "grad_out", {batch, lq, dv});
  check_shape<T>(lse, "lse", {batch, lq});
  check_shape<T>(delta, "delta", {batch, lq});
  return {static_cast<const T*>(grad_out.data()), static_cast<const T*>(lse.data()),
          static_cast<const T*>(delta.data())};
}

// The kernel of dtype T of a (float, double) pair.
template <typename T, typename Kernel32, typename Kernel64>
auto of_type(Kernel32 f32, Kernel64 f64) {
  if constexpr (std::is_same<T, float>::value) {
    return f32;
  } else {
    return f64;
  }
}

// What a launch of `kernel` needs beyond whole warps: version 2, blocks of exactly kTileRows warps and 32 (D + Dv)
// numbers of dynamic shared memory (the blocks of 32 rows it stages).
template <typename T>
void check_version_launch(const std::string& kernel, int version, const dim3& block, std::size_t shared_mem,
                          index_t d, index_t dv) {
  if (version != 2) return;
  if (block.x != kTileRows * 32)
    throw py::value_error("block: " + kernel + " needs (" + std::to_string(kTileRows * 32) + ",)");
  const std::size_t needed = 32 * static_cast<std::size_t>(d + dv) * sizeof(T);
  if (shared_mem < needed)
    throw py::value_error("shared_mem: " + kernel + " needs " + std::to_string(needed) +
                          " bytes (32 rows of each array it stages), got " + std::to_string(shared_mem));
}

#define MD_ATTENTION_PY_ARGS                                                                                 \
  py::arg("grid"), py::arg("block"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"),             \
      py::arg("mask_index"), py::arg("has_mask"), py::arg("scale")
#define MD_ATTENTION_PY_SIZES \
  py::arg("batch"), py::arg("lq"), py::arg("lk"), py::arg("d"), py::arg("dv"), py::kw_only(), py::arg("shared_mem") = 0
#define MD_ATTENTION_BACKWARD_PY_ARGS MD_ATTENTION_PY_ARGS, py::arg("grad_out"), py::arg("lse"), py::arg("delta")

std::string kernel_name(const char* pass, int version) {
  return std::string("attention_") + pass + "_v" + std::to_string(version) + "_kernel";
}

std::string docstring(const std::string& kernel) {
  return kernel + "<T> of csrc/cuda/attention.cu, run on the CPU. T follows q.dtype.";
}

// run(T{}, launch), T following q.dtype, once the inputs and the launch are checked; launch(kernel, outputs...) runs
// kernel(the inputs, outputs..., the sizes) on the emulator, without the GIL.
template <class Run>
void with_inputs(const std::string& kernel, int version, std::size_t shared_mem, MD_ATTENTION_BINDING_ARGS,
                 MD_ATTENTION_BINDING_SIZES, Run run) {
  const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
  check_warp_block(b, kernel.c_str());
  check::dispatch_float(q, "q", [&](auto tag) {
    using T = decltype(tag);
    const Inputs<T> in = check_inputs<T>(q, k, v, mask, mask_index, has_mask, scale, batch, lq, lk, d, dv);
    check_version_launch<T>(kernel, version, b, shared_mem, d, dv);
    run(tag, [&](auto kernel_fn, auto... outputs) {
      py::gil_scoped_release release;
      md_emu::launch(g, b, shared_mem, kernel_fn, in.q, in.k, in.v, in.mask, in.mask_index, in.has_mask, in.scale,
                     outputs..., batch, lq, lk, d, dv);
    });
  });
}

// with_inputs' arguments before `run`, in a binding of MD_ATTENTION_BINDING_ARGS, MD_ATTENTION_BINDING_SIZES.
#define MD_ATTENTION_CHECKED \
  name, version, shared_mem, grid, block, q, k, v, mask, mask_index, has_mask, scale, batch, lq, lk, d, dv

template <typename T>
using ForwardKernel = void (*)(const T*, const T*, const T*, const unsigned char*, const index_t*, int, T, T*, T*,
                               index_t, index_t, index_t, index_t, index_t);

void def_forward(py::module_& m, int version, ForwardKernel<float> f32, ForwardKernel<double> f64) {
  const std::string name = kernel_name("forward", version);
  m.def(
      name.c_str(),
      [version, f32, f64, name](MD_ATTENTION_BINDING_ARGS, py::array& out, py::array& lse, MD_ATTENTION_BINDING_SIZES,
                                std::size_t shared_mem) {
        with_inputs(MD_ATTENTION_CHECKED, [&](auto tag, auto launch) {
          using T = decltype(tag);
          T* po = check_output<T>(out, "out", {batch, lq, dv});
          T* pl = check_output<T>(lse, "lse", {batch, lq});
          launch(of_type<T>(f32, f64), po, pl);
        });
      },
      MD_ATTENTION_PY_ARGS, py::arg("out"), py::arg("lse"), MD_ATTENTION_PY_SIZES, docstring(name).c_str());
}

template <typename T>
using GradQKernel = void (*)(const T*, const T*, const T*, const unsigned char*, const index_t*, int, T, const T*,
                             const T*, const T*, T*, index_t, index_t, index_t, index_t, index_t);

void def_grad_q(py::module_& m, int version, GradQKernel<float> f32, GradQKernel<double> f64) {
  const std::string name = kernel_name("grad_q", version);
  m.def(
      name.c_str(),
      [version, f32, f64, name](MD_ATTENTION_BINDING_ARGS, const py::array& grad_out, const py::array& lse,
                                const py::array& delta, py::array& grad_q, MD_ATTENTION_BINDING_SIZES,
                                std::size_t shared_mem) {
        with_inputs(MD_ATTENTION_CHECKED, [&](auto tag, auto launch) {
          using T = decltype(tag);
          const Residuals<T> r = check_residuals<T>(grad_out, lse, delta, batch, lq, dv);
          T* pq = check_output<T>(grad_q, "grad_q", {batch, lq, d});
          launch(of_type<T>(f32, f64), r.grad_out, r.lse, r.delta, pq);
        });
      },
      MD_ATTENTION_BACKWARD_PY_ARGS, py::arg("grad_q"), MD_ATTENTION_PY_SIZES, docstring(name).c_str());
}

template <typename T>
using GradKVKernel = void (*)(const T*, const T*, const T*, const unsigned char*, const index_t*, int, T, const T*,
                              const T*, const T*, T*, T*, index_t, index_t, index_t, index_t, index_t);

void def_grad_kv(py::module_& m, int version, GradKVKernel<float> f32, GradKVKernel<double> f64) {
  const std::string name = kernel_name("grad_kv", version);
  m.def(
      name.c_str(),
      [version, f32, f64, name](MD_ATTENTION_BINDING_ARGS, const py::array& grad_out, const py::array& lse,
                                const py::array& delta, py::array& grad_k, py::array& grad_v,
                                MD_ATTENTION_BINDING_SIZES, std::size_t shared_mem) {
        with_inputs(MD_ATTENTION_CHECKED, [&](auto tag, auto launch) {
          using T = decltype(tag);
          const Residuals<T> r = check_residuals<T>(grad_out, lse, delta, batch, lq, dv);
          T* pk = check_output<T>(grad_k, "grad_k", {batch, lk, d});
          T* pv = check_output<T>(grad_v, "grad_v", {batch, lk, dv});
          launch(of_type<T>(f32, f64), r.grad_out, r.lse, r.delta, pk, pv);
        });
      },
      MD_ATTENTION_BACKWARD_PY_ARGS, py::arg("grad_k"), py::arg("grad_v"), MD_ATTENTION_PY_SIZES,
      docstring(name).c_str());
}

#undef MD_ATTENTION_CHECKED

}  // namespace

void register_attention(py::module_& m) {
  def_forward(m, 1, attention_forward_v1_kernel<float>, attention_forward_v1_kernel<double>);
  def_forward(m, 2, attention_forward_v2_kernel<float>, attention_forward_v2_kernel<double>);
  def_grad_q(m, 1, attention_grad_q_v1_kernel<float>, attention_grad_q_v1_kernel<double>);
  def_grad_q(m, 2, attention_grad_q_v2_kernel<float>, attention_grad_q_v2_kernel<double>);
  def_grad_kv(m, 1, attention_grad_kv_v1_kernel<float>, attention_grad_kv_v1_kernel<double>);
  def_grad_kv(m, 2, attention_grad_kv_v2_kernel<float>, attention_grad_kv_v2_kernel<double>);
  m.def(
      "attention_delta_kernel",
      [](const py::tuple& grid, const py::tuple& block, const py::array& grad_out, const py::array& out,
         py::array& delta, index_t rows, index_t dv) {
        const dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        check_warp_block(b, "attention_delta_kernel");
        if (rows < 0 || dv < 0 || (dv > 0 && rows > (index_t(1) << 62) / dv))
          throw py::value_error("rows, dv: expected sizes >= 0 whose product fits in 64 bits");
        check::dispatch_float(grad_out, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          check_shape<T>(grad_out, "grad_out", {rows, dv});
          check_shape<T>(out, "out", {rows, dv});
          T* pd = check_output<T>(delta, "delta", {rows});
          const T* pg = static_cast<const T*>(grad_out.data());
          const T* po = static_cast<const T*>(out.data());
          py::gil_scoped_release release;
          md_emu::launch(g, b, attention_delta_kernel<T>, pg, po, pd, rows, dv);
        });
      },
      "attention_delta_kernel<T> of csrc/cuda/attention.cu, run on the CPU. T follows grad_out.dtype.");
}

}  // namespace md::emu
