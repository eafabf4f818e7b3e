// Argument checks at the C++ boundary. Python checks first and explains; this side re-checks what
// the kernels rely on (dtype, contiguity, sizes, writability), so that no input Python can hand it
// makes a kernel read or write out of bounds.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "minidiff/common.h"

namespace md::check {

namespace py = pybind11;

template <typename T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// The array as a T buffer: dtype T, C-contiguous, else TypeError / ValueError naming `name`.
template <typename T>
const T* data(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a) || a.itemsize() != static_cast<py::ssize_t>(sizeof(T)))
    throw py::type_error(std::string(name) + ": expected a " + dtype_name<T>() + " array, got dtype " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  return static_cast<const T*>(a.data());
}

template <typename T>
T* mutable_data(py::array& a, const char* name) {
  data<T>(a, name);
  if (!a.writeable()) throw py::value_error(std::string(name) + ": expected a writeable array");
  return static_cast<T*>(a.mutable_data());
}

inline void same_shape(const py::array& a, const char* a_name, const py::array& ref, const char* ref_name) {
  bool same = a.ndim() == ref.ndim();
  for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == ref.shape(d);
  if (!same)
    throw py::value_error(std::string(a_name) + ": expected shape " + shape_str(ref) + " (the shape of " +
                          ref_name + "), got " + shape_str(a));
}

// At least n elements, for kernels that are handed a count separately from the buffer.
inline void holds(const py::array& a, const char* name, index_t n) {
  if (n < 0 || a.size() < n)
    throw py::value_error(std::string(name) + ": expected at least " + std::to_string(n) +
                          " elements, got " + std::to_string(a.size()));
}

// Calls f(T{}) with T = float or double following a's dtype; any other dtype is a TypeError.
template <typename F>
decltype(auto) dispatch_float(const py::array& a, const char* name, F&& f) {
  if (py::isinstance<py::array_t<float>>(a)) return f(float{});
  if (py::isinstance<py::array_t<double>>(a)) return f(double{});
  throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " +
                       std::string(py::str(a.dtype())));
}

}  // namespace md::check
