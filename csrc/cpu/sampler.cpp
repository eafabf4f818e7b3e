#include "cpu/sampler.h"

#include "cpu/runtime.h"

namespace md::cpu {

template <typename T>
void sampler_step(const T* x, const T* eps, const T* z, T* out, index_t n, const StepCoefs<T>& c) {
  const int threads = n >= kParallelGrain ? num_threads() : 1;
#pragma omp parallel for simd num_threads(threads) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    out[i] = sampler_update(x[i], eps[i], z ? z[i] : T(0), c);
  }
}

template void sampler_step<float>(const float*, const float*, const float*, float*, index_t,
                                  const StepCoefs<float>&);
template void sampler_step<double>(const double*, const double*, const double*, double*, index_t,
                                   const StepCoefs<double>&);

}  // namespace md::cpu
