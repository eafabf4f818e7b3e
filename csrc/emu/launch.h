// Shared by the emu translation units (not by bindings.cpp, which must not see cuda_emu.h's macros).
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "check.h"
#include "minidiff/cuda_emu.h"

namespace md::emu {

// A launch dimension from Python's (x[, y[, z]]) tuple; the launcher checks the limits.
inline dim3 to_dim3(const pybind11::tuple& t, const char* name) {
  if (t.size() < 1 || t.size() > 3)
    throw pybind11::value_error(std::string(name) + ": expected a tuple of 1 to 3 sizes");
  unsigned int d[3] = {1, 1, 1};
  for (size_t i = 0; i < t.size(); ++i) {
    const long long v = t[i].cast<long long>();
    if (v < 1 || v > 0x7fffffffLL) throw pybind11::value_error(std::string(name) + ": sizes must be in [1, 2^31)");
    d[i] = static_cast<unsigned int>(v);
  }
  return dim3(d[0], d[1], d[2]);
}

// A C-contiguous T array of exactly this shape.
template <typename T>
void check_shape(const pybind11::array& a, const char* name, const std::vector<index_t>& shape) {
  check::data<T>(a, name);
  bool same = a.ndim() == static_cast<pybind11::ssize_t>(shape.size());
  for (size_t d = 0; same && d < shape.size(); ++d) same = a.shape(static_cast<pybind11::ssize_t>(d)) == shape[d];
  if (!same) {
    std::string want = "(";
    for (index_t s : shape) want += (want.size() > 1 ? ", " : "") + std::to_string(s);
    throw pybind11::value_error(std::string(name) + ": expected shape " + want + "), got " + check::shape_str(a));
  }
}

// check_shape, and writeable: the array a kernel writes.
template <typename T>
T* check_output(pybind11::array& a, const char* name, const std::vector<index_t>& shape) {
  check_shape<T>(a, name, shape);
  return check::mutable_data<T>(a, name);
}

// Blocks of whole warps along x, (32 w,): the warp-level kernels assume it.
inline void check_warp_block(const dim3& block, const char* kernel) {
  if (block.y != 1 || block.z != 1 || block.x % 32 != 0)
    throw pybind11::value_error(std::string("block: ") + kernel + " needs (32 w,), whole warps in x");
}

}  // namespace md::emu
