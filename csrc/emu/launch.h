// Shared by the emu translation units (not by bindings.cpp, which must not see cuda_emu.h's macros).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

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

}  // namespace md::emu
