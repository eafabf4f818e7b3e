// The fused sampler update on the GPU: one thread per element, grid-stride loop.
// Compiled three ways: by nvcc (CI checks sm_80 and sm_90), by NVRTC through CuPy at run time
// (name expressions sampler_step_kernel<float> and <double>), and by g++ under cuda_emu.h.
#include "minidiff/sampler.h"

// out[i] = md::sampler_update(x[i], eps[i], z[i]); z is read only when has_z != 0 (else any valid
// pointer may be passed), the x0 clip applies only when has_clip != 0. out may alias x or eps.
template <typename T>
__global__ void sampler_step_kernel(const T* x, const T* eps, const T* z, T* out, md::index_t n,
                                    T c_x, T c_eps, T c_z, T c_x0, T r_x, T r_eps, T clip,
                                    int has_z, int has_clip) {
  const md::StepCoefs<T> c{c_x, c_eps, c_z, c_x0, r_x, r_eps, clip, has_clip != 0};
  const md::index_t stride = (md::index_t)blockDim.x * gridDim.x;
  for (md::index_t i = (md::index_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = md::sampler_update(x[i], eps[i], has_z ? z[i] : T(0), c);
  }
}

// nvcc needs explicit instantiations to emit code; NVRTC gets them from CuPy's name_expressions.
#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
template __global__ void sampler_step_kernel<float>(const float*, const float*, const float*, float*,
                                                    md::index_t, float, float, float, float, float,
                                                    float, float, int, int);
template __global__ void sampler_step_kernel<double>(const double*, const double*, const double*,
                                                     double*, md::index_t, double, double, double,
                                                     double, double, double, double, int, int);
#endif
