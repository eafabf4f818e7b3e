#pragma once

#include "minidiff/sampler.h"

namespace md::cpu {

// out[i] = sampler_update(x[i], eps[i], z ? z[i] : 0, c) for i < n; out may alias x or eps.
template <typename T>
void sampler_step(const T* x, const T* eps, const T* z, T* out, index_t n, const StepCoefs<T>& c);

}  // namespace md::cpu
