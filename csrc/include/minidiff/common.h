// Shared definitions for code that compiles three ways: as CUDA (nvcc or NVRTC through CuPy), as
// plain C++ for the OpenMP kernels, and as C++ under cuda_emu.h (the CPU emulation of CUDA).
// No standard-library headers here: NVRTC compiles these files without them.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MD_HD __host__ __device__ __forceinline__
#else
#define MD_HD inline
#endif

namespace md {

using index_t = long long;  // element counts and offsets; 64-bit everywhere

template <typename T>
MD_HD T min(T a, T b) { return b < a ? b : a; }

template <typename T>
MD_HD T max(T a, T b) { return a < b ? b : a; }

// clamp(v, lo, hi); NaN stays NaN, as numpy.clip leaves it.
template <typename T>
MD_HD T clamp(T v, T lo, T hi) { return v < lo ? lo : (hi < v ? hi : v); }

}  // namespace md
