// minidiff._C: the only pybind11 module. Every kernel entry point checks its arguments (check.h),
// releases the GIL, and calls a plain C++ function of csrc/cpu/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "check.h"
#include "cpu/attention.h"
#include "cpu/conv2d.h"
#include "cpu/gemm.h"
#include "cpu/group_norm.h"
#include "cpu/runtime.h"
#include "cpu/sampler.h"
#include "cpu/softmax.h"
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

// --- GEMM and conv2d ----------------------------------------------------------------------------------------

void expect_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got shape " +
                          md::check::shape_str(a));
}

template <typename T>
void expect_dtype(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a) || a.itemsize() != static_cast<py::ssize_t>(sizeof(T)))
    throw py::type_error(std::string(name) + ": expected a " + md::check::dtype_name<T>() + " array, got dtype " +
                         std::string(py::str(a.dtype())));
}

// The bytes [first, last) an array's elements span (nothing for an empty array).
std::pair<std::uintptr_t, std::uintptr_t> byte_extent(const py::array& a) {
  if (a.size() == 0) return {0, 0};
  auto first = reinterpret_cast<std::uintptr_t>(a.data()), last = first + a.itemsize();
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t span = a.strides(d) * (a.shape(d) - 1);
    (span < 0 ? first : last) += span;
  }
  return {first, last};
}

// An output may not share memory with an input: the kernels read the inputs after writing parts of it.
void disjoint(const py::array& out, const char* out_name, const py::array& in, const char* in_name) {
  const auto [o0, o1] = byte_extent(out);
  const auto [i0, i1] = byte_extent(in);
  if (o0 < i1 && i0 < o1)
    throw py::value_error(std::string(out_name) + ": overlaps " + in_name + "; pass a separate array");
}

// A 2-D array of T read through its strides (any sign, 0 for a broadcast), which must be whole elements.
template <typename T>
md::cpu::MatrixView<T> matrix_view(const py::array& a, const char* name) {
  expect_ndim(a, name, 2);
  expect_dtype<T>(a, name);
  const auto size = static_cast<py::ssize_t>(sizeof(T));
  if (a.strides(0) % size != 0 || a.strides(1) % size != 0)
    throw py::value_error(std::string(name) + ": expected strides that are whole elements");
  return {static_cast<const T*>(a.data()), a.strides(0) / size, a.strides(1) / size};
}

// The destination: writeable, unit column stride, rows ascending and not overlapping (ld >= n).
template <typename T>
md::cpu::OutMatrix<T> out_matrix(py::array& c, const char* name) {
  expect_ndim(c, name, 2);
  expect_dtype<T>(c, name);
  if (!c.writeable()) throw py::value_error(std::string(name) + ": expected a writeable array");
  const auto size = static_cast<py::ssize_t>(sizeof(T));
  const py::ssize_t m = c.shape(0), n = c.shape(1);
  const bool empty = c.size() == 0;  // NumPy gives empty arrays any strides
  const bool unit_columns = empty || n <= 1 || c.strides(1) == size;
  const bool rows_apart = empty || m <= 1 || (c.strides(0) % size == 0 && c.strides(0) >= n * size);
  if (!unit_columns || !rows_apart)
    throw py::value_error(std::string(name) + ": expected rows with unit column stride, each after the previous "
                          "(a C-contiguous array or a block of one)");
  return {static_cast<T*>(c.mutable_data()), empty || m <= 1 ? n : c.strides(0) / size};
}

template <typename T>
void gemm(const py::array& a, const py::array& b, py::array& c, double alpha, double beta, int version,
          const std::string& micro_kernel) {
  using namespace md;
  const auto va = matrix_view<T>(a, "a");
  const auto vb = matrix_view<T>(b, "b");
  const auto vc = out_matrix<T>(c, "c");
  const index_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  if (b.shape(0) != k)
    throw py::value_error("b: expected " + std::to_string(k) + " rows (a is " + check::shape_str(a) + "), got shape " +
                          check::shape_str(b));
  if (c.shape(0) != m || c.shape(1) != n)
    throw py::value_error("c: expected shape (" + std::to_string(m) + ", " + std::to_string(n) + "), got " +
                          check::shape_str(c));
  disjoint(c, "c", a, "a");
  disjoint(c, "c", b, "b");
  if (version < 1 || version > 4)
    throw py::value_error("version: expected 1, 2, 3 or 4, got " + std::to_string(version));
  if (!micro_kernel.empty() && version != 4) throw py::value_error("micro_kernel: only version 4 has micro-kernels");
  const cpu::MicroKernel kernel =
      micro_kernel.empty() ? cpu::best_micro_kernel() : cpu::micro_kernel_by_name(micro_kernel);
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  const T ta = T(alpha), tb = T(beta);
  switch (version) {
    case 1: return cpu::gemm_v1_naive<T>(m, n, k, ta, va, vb, tb, vc);
    case 2: return cpu::gemm_v2_ikj<T>(m, n, k, ta, va, vb, tb, vc);
    case 3: return cpu::gemm_v3_blocked<T>(m, n, k, ta, va, vb, tb, vc, threads);
    default: return cpu::gemm_v4_packed<T>(m, n, k, ta, va, vb, tb, vc, threads, kernel);
  }
}

using Pair = std::pair<md::index_t, md::index_t>;

// The convolution's sizes from x (N, C, H, W) and weight (O, C, KH, KW), checked (ValueError naming the argument).
md::cpu::Conv2dShape conv_shape(const py::array& x, const py::array& weight, Pair stride, Pair padding) {
  expect_ndim(x, "x", 4);
  expect_ndim(weight, "weight", 4);
  if (weight.shape(1) != x.shape(1))
    throw py::value_error("weight: expected " + std::to_string(x.shape(1)) + " input channels (x is " +
                          md::check::shape_str(x) + "), got shape " + md::check::shape_str(weight));
  return md::cpu::Conv2dShape::make(x.shape(0), x.shape(1), x.shape(2), x.shape(3), weight.shape(0), weight.shape(2),
                                    weight.shape(3), stride.first, stride.second, padding.first, padding.second);
}

void expect_shape(const py::array& a, const char* name, std::initializer_list<md::index_t> shape) {
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t d = 0;
  std::string want = "(";
  for (md::index_t s : shape) {
    same = same && a.shape(d) == s;
    want += (d++ ? ", " : "") + std::to_string(s);
  }
  if (!same)
    throw py::value_error(std::string(name) + ": expected shape " + want + "), got " + md::check::shape_str(a));
}

// An optional array argument: None, or an array of T of the given shape, C-contiguous (and writeable for an output).
struct Optional {
  py::object object;
  const char* name;

  bool present() const { return !object.is_none(); }
  py::array array() const {
    if (!py::isinstance<py::array>(object)) throw py::type_error(std::string(name) + ": expected an array or None");
    return object.cast<py::array>();
  }
  template <typename T>
  const T* data(std::initializer_list<md::index_t> shape) const {
    if (!present()) return nullptr;
    const py::array a = array();
    const T* p = md::check::data<T>(a, name);
    expect_shape(a, name, shape);
    return p;
  }
  template <typename T>
  T* mutable_data(std::initializer_list<md::index_t> shape) const {
    if (!present()) return nullptr;
    py::array a = array();
    T* p = md::check::mutable_data<T>(a, name);
    expect_shape(a, name, shape);
    return p;
  }
};

// No output overlaps an input or another output (None ones skipped).
void all_disjoint(const std::vector<Optional>& outputs, const std::vector<Optional>& inputs) {
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].present()) continue;
    const py::array out = outputs[i].array();
    for (const Optional& in : inputs) {
      if (in.present()) disjoint(out, outputs[i].name, in.array(), in.name);
    }
    for (std::size_t j = i + 1; j < outputs.size(); ++j) {
      if (outputs[j].present()) disjoint(out, outputs[i].name, outputs[j].array(), outputs[j].name);
    }
  }
}

template <typename T>
void conv2d_forward(const py::array& x, const py::array& weight, py::array& out, Pair stride, Pair padding) {
  using namespace md;
  const T* px = check::data<T>(x, "x");
  const T* pw = check::data<T>(weight, "weight");
  T* po = check::mutable_data<T>(out, "out");
  const cpu::Conv2dShape s = conv_shape(x, weight, stride, padding);
  expect_shape(out, "out", {s.n, s.o, s.ho, s.wo});
  disjoint(out, "out", x, "x");
  disjoint(out, "out", weight, "weight");
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  cpu::conv2d_forward<T>(s, px, pw, po, threads);
}

// grad_x and grad_weight are optional: None is not computed (the first layer's image needs no gradient).
template <typename T>
void conv2d_backward(const py::array& grad_out, const py::array& x, const py::array& weight, const Optional& grad_x,
                     const Optional& grad_weight, Pair stride, Pair padding) {
  using namespace md;
  const T* pg = check::data<T>(grad_out, "grad_out");
  const T* px = check::data<T>(x, "x");
  const T* pw = check::data<T>(weight, "weight");
  const cpu::Conv2dShape s = conv_shape(x, weight, stride, padding);
  expect_shape(grad_out, "grad_out", {s.n, s.o, s.ho, s.wo});
  T* pgx = grad_x.mutable_data<T>({s.n, s.c, s.h, s.w});
  T* pgw = grad_weight.mutable_data<T>({s.o, s.c, s.kh, s.kw});
  all_disjoint({grad_x, grad_weight}, {{grad_out, "grad_out"}, {x, "x"}, {weight, "weight"}});
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  cpu::conv2d_backward<T>(s, pg, px, pw, pgx, pgw, threads);
}

// --- attention and softmax ---------------------------------------------------------------------------------------

using AttentionShape = md::cpu::AttentionShape;

// The sizes from q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv), checked (ValueError naming the argument).
AttentionShape attention_shape(const py::array& q, const py::array& k, const py::array& v) {
  expect_ndim(q, "q", 3);
  expect_ndim(k, "k", 3);
  expect_ndim(v, "v", 3);
  const md::index_t batch = q.shape(0), lq = q.shape(1), d = q.shape(2), lk = k.shape(1);
  expect_shape(k, "k", {batch, lk, d});
  expect_shape(v, "v", {batch, lk, v.shape(2)});
  return AttentionShape::make(batch, lq, lk, d, v.shape(2));
}

// mask: None, or bool (M, Lq, Lk) with mask_index int64 (B,) naming each batch element's matrix (values in [0, M)).
md::cpu::AttentionMask attention_mask(const py::object& mask, const py::object& mask_index, const AttentionShape& s) {
  if (mask.is_none() != mask_index.is_none())
    throw py::value_error("mask_index: expected an array exactly when mask is one (None with None)");
  if (mask.is_none()) return {};
  if (!py::isinstance<py::array>(mask) || !py::isinstance<py::array>(mask_index))
    throw py::type_error("mask, mask_index: expected arrays or None");
  const auto m = mask.cast<py::array>(), index = mask_index.cast<py::array>();
  if (m.dtype().kind() != 'b' || m.itemsize() != 1)
    throw py::type_error("mask: expected a bool array, got dtype " + std::string(py::str(m.dtype())));
  if (!(m.flags() & py::array::c_style)) throw py::value_error("mask: expected a C-contiguous array");
  expect_ndim(m, "mask", 3);
  expect_shape(m, "mask", {m.shape(0), s.lq, s.lk});
  if (!py::isinstance<py::array_t<std::int64_t>>(index))
    throw py::type_error("mask_index: expected an int64 array, got dtype " + std::string(py::str(index.dtype())));
  if (!(index.flags() & py::array::c_style)) throw py::value_error("mask_index: expected a C-contiguous array");
  expect_shape(index, "mask_index", {s.batch});
  const auto* pi = static_cast<const std::int64_t*>(index.data());
  for (md::index_t b = 0; b < s.batch; ++b) {
    if (pi[b] < 0 || pi[b] >= m.shape(0))
      throw py::value_error("mask_index: expected values in [0, " + std::to_string(m.shape(0)) + "), got " +
                            std::to_string(pi[b]) + " at " + std::to_string(b));
  }
  return {static_cast<const std::uint8_t*>(m.data()), pi};
}

template <typename T>
void attention_forward(const py::array& q, const py::array& k, const py::array& v, const py::object& mask,
                       const py::object& mask_index, double scale, py::array& out, py::array& lse) {
  using namespace md;
  const T* pq = check::data<T>(q, "q");
  const T* pk = check::data<T>(k, "k");
  const T* pv = check::data<T>(v, "v");
  T* po = check::mutable_data<T>(out, "out");
  T* pl = check::mutable_data<T>(lse, "lse");
  const AttentionShape s = attention_shape(q, k, v);
  expect_shape(out, "out", {s.batch, s.lq, s.dv});
  expect_shape(lse, "lse", {s.batch, s.lq});
  const cpu::AttentionMask pm = attention_mask(mask, mask_index, s);
  all_disjoint({{out, "out"}, {lse, "lse"}}, {{q, "q"}, {k, "k"}, {v, "v"}, {mask, "mask"}});
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  cpu::attention_forward<T>(s, pq, pk, pv, pm, T(scale), po, pl, threads);
}

template <typename T>
void attention_backward(const py::array& grad_out, const py::array& q, const py::array& k, const py::array& v,
                        const py::object& mask, const py::object& mask_index, const py::array& out,
                        const py::array& lse, double scale, py::array& grad_q, py::array& grad_k, py::array& grad_v) {
  using namespace md;
  const T* pg = check::data<T>(grad_out, "grad_out");
  const T* pq = check::data<T>(q, "q");
  const T* pk = check::data<T>(k, "k");
  const T* pv = check::data<T>(v, "v");
  const T* po = check::data<T>(out, "out");
  const T* pl = check::data<T>(lse, "lse");
  T* pgq = check::mutable_data<T>(grad_q, "grad_q");
  T* pgk = check::mutable_data<T>(grad_k, "grad_k");
  T* pgv = check::mutable_data<T>(grad_v, "grad_v");
  const AttentionShape s = attention_shape(q, k, v);
  expect_shape(grad_out, "grad_out", {s.batch, s.lq, s.dv});
  expect_shape(out, "out", {s.batch, s.lq, s.dv});
  expect_shape(lse, "lse", {s.batch, s.lq});
  check::same_shape(grad_q, "grad_q", q, "q");
  check::same_shape(grad_k, "grad_k", k, "k");
  check::same_shape(grad_v, "grad_v", v, "v");
  const cpu::AttentionMask pm = attention_mask(mask, mask_index, s);
  all_disjoint({{grad_q, "grad_q"}, {grad_k, "grad_k"}, {grad_v, "grad_v"}},
               {{grad_out, "grad_out"}, {q, "q"}, {k, "k"}, {v, "v"}, {mask, "mask"}, {out, "out"},
                {lse, "lse"}});
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  cpu::attention_backward<T>(s, pg, pq, pk, pv, pm, po, pl, T(scale), pgq, pgk, pgv, threads);
}

// Rows of a 2-D array: its (rows, n).
std::pair<md::index_t, md::index_t> rows_of(const py::array& a, const char* name) {
  expect_ndim(a, name, 2);
  return {a.shape(0), a.shape(1)};
}

template <typename T>
void softmax_forward(const py::array& x, py::array& y, bool log_softmax) {
  using namespace md;
  const T* px = check::data<T>(x, "x");
  T* p_y = check::mutable_data<T>(y, "y");
  const auto [rows, n] = rows_of(x, "x");
  check::same_shape(y, "y", x, "x");
  disjoint(y, "y", x, "x");
  const int threads = x.size() >= cpu::kParallelGrain ? cpu::num_threads() : 1;
  py::gil_scoped_release release;
  cpu::softmax_forward<T>(px, p_y, rows, n, log_softmax, threads);
}

template <typename T>
void softmax_backward(const py::array& grad_y, const py::array& y, py::array& grad_x, bool log_softmax) {
  using namespace md;
  const T* pg = check::data<T>(grad_y, "grad_y");
  const T* p_y = check::data<T>(y, "y");
  T* pgx = check::mutable_data<T>(grad_x, "grad_x");
  const auto [rows, n] = rows_of(y, "y");
  check::same_shape(grad_y, "grad_y", y, "y");
  check::same_shape(grad_x, "grad_x", y, "y");
  all_disjoint({{grad_x, "grad_x"}}, {{grad_y, "grad_y"}, {y, "y"}});
  const int threads = y.size() >= cpu::kParallelGrain ? cpu::num_threads() : 1;
  py::gil_scoped_release release;
  cpu::softmax_backward<T>(pg, p_y, pgx, rows, n, log_softmax, threads);
}

// --- group norm ----------------------------------------------------------------------------------------------

// x (N, C, *) read as (N, C, S), S the product of the sizes after the channels.
md::cpu::GroupNormShape group_norm_shape(const py::array& x, md::index_t num_groups) {
  if (x.ndim() < 2)
    throw py::value_error("x: expected (N, C, ...), at least 2 dimensions, got shape " + md::check::shape_str(x));
  md::index_t s = 1;
  for (py::ssize_t d = 2; d < x.ndim(); ++d) {
    if (x.shape(d) != 0 && s > std::numeric_limits<md::index_t>::max() / x.shape(d))
      throw py::value_error("x: the sizes overflow 64-bit indexing");
    s *= x.shape(d);
  }
  return md::cpu::GroupNormShape::make(x.shape(0), x.shape(1), num_groups, s);
}

md::Activation activation_of(const std::string& name) {
  if (name == "identity") return md::Activation::identity;
  if (name == "silu") return md::Activation::silu;
  throw py::value_error("activation: expected 'identity' or 'silu', got '" + name + "'");
}

template <typename T>
md::cpu::GroupNormParams<T> group_norm_params(const md::cpu::GroupNormShape& s, const Optional& weight,
                                              const Optional& bias, const Optional& scale, const Optional& shift,
                                              double eps, const std::string& activation) {
  if (!std::isfinite(eps) || eps < 0) throw py::value_error("eps: expected a finite number >= 0");
  return {weight.data<T>({s.c}), bias.data<T>({s.c}), scale.data<T>({s.n, s.c}), shift.data<T>({s.n, s.c}), eps,
          activation_of(activation)};
}

template <typename T>
void group_norm_forward(const py::array& x, const Optional& weight, const Optional& bias, const Optional& scale,
                        const Optional& shift, py::array& y, py::array& mean, py::array& rstd, md::index_t num_groups,
                        double eps, const std::string& activation) {
  using namespace md;
  const T* px = check::data<T>(x, "x");
  const cpu::GroupNormShape s = group_norm_shape(x, num_groups);
  const cpu::GroupNormParams<T> p = group_norm_params<T>(s, weight, bias, scale, shift, eps, activation);
  T* py_ = check::mutable_data<T>(y, "y");
  check::same_shape(y, "y", x, "x");
  double* pm = check::mutable_data<double>(mean, "mean");
  double* pr = check::mutable_data<double>(rstd, "rstd");
  expect_shape(mean, "mean", {s.n, s.g});
  expect_shape(rstd, "rstd", {s.n, s.g});
  all_disjoint({{y, "y"}, {mean, "mean"}, {rstd, "rstd"}}, {{x, "x"}, weight, bias, scale, shift});
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  cpu::group_norm_forward<T>(s, p, px, py_, pm, pr, threads);
}

template <typename T>
void group_norm_backward(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
                         const Optional& weight, const Optional& bias, const Optional& scale, const Optional& shift,
                         py::array& grad_x, const Optional& grad_weight, const Optional& grad_bias,
                         const Optional& grad_scale, const Optional& grad_shift, md::index_t num_groups,
                         const std::string& activation) {
  using namespace md;
  const T* px = check::data<T>(x, "x");
  const T* pg = check::data<T>(grad_y, "grad_y");
  check::same_shape(grad_y, "grad_y", x, "x");
  const cpu::GroupNormShape s = group_norm_shape(x, num_groups);
  const cpu::GroupNormParams<T> p = group_norm_params<T>(s, weight, bias, scale, shift, 0.0, activation);
  const double* pm = check::data<double>(mean, "mean");
  const double* pr = check::data<double>(rstd, "rstd");
  expect_shape(mean, "mean", {s.n, s.g});
  expect_shape(rstd, "rstd", {s.n, s.g});
  T* pgx = check::mutable_data<T>(grad_x, "grad_x");
  check::same_shape(grad_x, "grad_x", x, "x");
  T* pgw = grad_weight.mutable_data<T>({s.c});
  T* pgb = grad_bias.mutable_data<T>({s.c});
  T* pgs = grad_scale.mutable_data<T>({s.n, s.c});
  T* pgh = grad_shift.mutable_data<T>({s.n, s.c});
  all_disjoint({{grad_x, "grad_x"}, grad_weight, grad_bias, grad_scale, grad_shift},
               {{grad_y, "grad_y"}, {x, "x"}, {mean, "mean"}, {rstd, "rstd"}, weight, bias, scale, shift});
  const int threads = cpu::num_threads();
  py::gil_scoped_release release;
  cpu::group_norm_backward<T>(s, p, pg, px, pm, pr, pgx, pgw, pgb, pgs, pgh, threads);
}

py::list micro_kernels() {
  py::list out;
  for (const auto& k : md::cpu::compiled_micro_kernels()) {
    py::dict d;
    d["name"] = k.name;
    d["float32_tile"] = py::make_tuple(k.mr_f32, k.nr_f32);
    d["float64_tile"] = py::make_tuple(k.mr_f64, k.nr_f64);
    d["blocking"] = py::make_tuple(k.mc, k.kc, k.nc);
    out.append(d);
  }
  return out;
}

double fma_peak(const std::string& micro_kernel, const std::string& dtype, md::index_t iterations, int threads) {
  if (dtype != "float32" && dtype != "float64")
    throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
  if (threads < 1 || threads > md::cpu::kMaxThreads)
    throw py::value_error("threads: expected 1.." + std::to_string(md::cpu::kMaxThreads));
  const auto kernel = md::cpu::micro_kernel_by_name(micro_kernel);
  py::gil_scoped_release release;
  return md::cpu::fma_peak(kernel, dtype == "float64", iterations, threads);
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
  info["gemm_micro_kernel"] = md::cpu::compiled_micro_kernels().back().name;  // the one conv2d's GEMM uses
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

  m.def(
      "gemm",
      [](const py::array& a, const py::array& b, py::array& c, double alpha, double beta, int version,
         const std::string& micro_kernel) {
        md::check::dispatch_float(a, "a", [&](auto tag) {
          gemm<decltype(tag)>(a, b, c, alpha, beta, version, micro_kernel);
        });
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("alpha"), py::arg("beta"), py::arg("version"),
      py::arg("micro_kernel"),
      "c = alpha a b + beta c (beta == 0: c is not read) by GEMM `version` (1-4, see gemm.h); micro_kernel '' is "
      "the best of this build.");
  m.def("gemm_micro_kernels", &micro_kernels, "The micro-kernels of this build, best last: tiles and blocking.");
  m.def("fma_peak", &fma_peak, py::arg("micro_kernel"), py::arg("dtype"), py::arg("iterations"), py::arg("threads"),
        "FLOP/s of `threads` threads each running `iterations` rounds of independent FMAs in the micro-kernel's "
        "instruction set.");
  m.def(
      "conv2d_forward",
      [](const py::array& x, const py::array& weight, py::array& out, Pair stride, Pair padding) {
        md::check::dispatch_float(x, "x", [&](auto tag) {
          conv2d_forward<decltype(tag)>(x, weight, out, stride, padding);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("stride"), py::arg("padding"),
      "out (N, O, HO, WO) = x (N, C, H, W) (*) weight (O, C, KH, KW); see conv2d.h.");
  m.def(
      "conv2d_backward",
      [](const py::array& grad_out, const py::array& x, const py::array& weight, const py::object& grad_x,
         const py::object& grad_weight, Pair stride, Pair padding) {
        md::check::dispatch_float(x, "x", [&](auto tag) {
          conv2d_backward<decltype(tag)>(grad_out, x, weight, {grad_x, "grad_x"}, {grad_weight, "grad_weight"},
                                         stride, padding);
        });
      },
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("grad_x"), py::arg("grad_weight"),
      py::arg("stride"), py::arg("padding"),
      "grad_x and grad_weight of conv2d_forward from grad_out (either None: not computed).");

  m.def(
      "attention_forward",
      [](const py::array& q, const py::array& k, const py::array& v, const py::object& mask,
         const py::object& mask_index, double scale, py::array& out, py::array& lse) {
        md::check::dispatch_float(q, "q", [&](auto tag) {
          attention_forward<decltype(tag)>(q, k, v, mask, mask_index, scale, out, lse);
        });
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("mask_index"), py::arg("scale"),
      py::arg("out"), py::arg("lse"),
      "out (B, Lq, Dv) = softmax(scale q k^T, masked) v and lse (B, Lq), the log-sum-exp of each row of scores; "
      "see attention.h.");
  m.def(
      "attention_backward",
      [](const py::array& grad_out, const py::array& q, const py::array& k, const py::array& v,
         const py::object& mask, const py::object& mask_index, const py::array& out, const py::array& lse,
         double scale, py::array& grad_q, py::array& grad_k, py::array& grad_v) {
        md::check::dispatch_float(q, "q", [&](auto tag) {
          attention_backward<decltype(tag)>(grad_out, q, k, v, mask, mask_index, out, lse, scale, grad_q, grad_k,
                                            grad_v);
        });
      },
      py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("mask_index"),
      py::arg("out"), py::arg("lse"), py::arg("scale"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"),
      "grad_q, grad_k, grad_v of attention_forward from grad_out, recomputing the probabilities from lse.");
  m.def(
      "softmax_forward",
      [](const py::array& x, py::array& y, bool log_softmax) {
        md::check::dispatch_float(x, "x", [&](auto tag) { softmax_forward<decltype(tag)>(x, y, log_softmax); });
      },
      py::arg("x"), py::arg("y"), py::arg("log_softmax"),
      "y (rows, n) = softmax (or log_softmax) of each row of x; see softmax.h.");
  m.def(
      "softmax_backward",
      [](const py::array& grad_y, const py::array& y, py::array& grad_x, bool log_softmax) {
        md::check::dispatch_float(y, "y", [&](auto tag) {
          softmax_backward<decltype(tag)>(grad_y, y, grad_x, log_softmax);
        });
      },
      py::arg("grad_y"), py::arg("y"), py::arg("grad_x"), py::arg("log_softmax"),
      "grad_x of softmax_forward (or log_softmax) from grad_y and its output y.");

  m.def(
      "group_norm_forward",
      [](const py::array& x, const py::object& weight, const py::object& bias, const py::object& scale,
         const py::object& shift, py::array& y, py::array& mean, py::array& rstd, md::index_t num_groups, double eps,
         const std::string& activation) {
        md::check::dispatch_float(x, "x", [&](auto tag) {
          group_norm_forward<decltype(tag)>(x, {weight, "weight"}, {bias, "bias"}, {scale, "scale"},
                                            {shift, "shift"}, y, mean, rstd, num_groups, eps, activation);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("scale"), py::arg("shift"), py::arg("y"),
      py::arg("mean"), py::arg("rstd"), py::arg("num_groups"), py::arg("eps"), py::arg("activation"),
      "y = act(((x - mean) rstd weight + bias) (1 + scale) + shift) per group; mean, rstd (N, G) float64; see "
      "group_norm.h.");
  m.def(
      "group_norm_backward",
      [](const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
         const py::object& weight, const py::object& bias, const py::object& scale, const py::object& shift,
         py::array& grad_x, const py::object& grad_weight, const py::object& grad_bias, const py::object& grad_scale,
         const py::object& grad_shift, md::index_t num_groups, const std::string& activation) {
        md::check::dispatch_float(x, "x", [&](auto tag) {
          group_norm_backward<decltype(tag)>(grad_y, x, mean, rstd, {weight, "weight"}, {bias, "bias"},
                                             {scale, "scale"}, {shift, "shift"}, grad_x, {grad_weight, "grad_weight"},
                                             {grad_bias, "grad_bias"}, {grad_scale, "grad_scale"},
                                             {grad_shift, "grad_shift"}, num_groups, activation);
        });
      },
      py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("weight"), py::arg("bias"),
      py::arg("scale"), py::arg("shift"), py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"),
      py::arg("grad_scale"), py::arg("grad_shift"), py::arg("num_groups"), py::arg("activation"),
      "The gradients of group_norm_forward from grad_y (the optional ones None: not computed).");

#ifdef MINIDIFF_WITH_CUDA_EMU
  auto emu = m.def_submodule("cuda_emu", "CUDA kernels run on the CPU by cuda_emu.h (tests only).");
  md::emu::register_sampler_step(emu);
  md::emu::register_block_reduce(emu);
  md::emu::register_gemm(emu);
  md::emu::register_conv2d(emu);
  md::emu::register_attention(emu);
  md::emu::register_group_norm(emu);
  md::emu::register_selftest(emu);
#endif
}
