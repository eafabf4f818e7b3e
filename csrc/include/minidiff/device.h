// Building blocks of the CUDA kernels (csrc/cuda/): dynamic shared memory and warp- and block-wide reductions.
// CUDA only: compiled by nvcc, by NVRTC (CuPy) and by g++ under cuda_emu.h, never by the OpenMP kernels.
#pragma once

#include "minidiff/common.h"

// `T* name` = the launch's dynamic shared memory (its size is the launch's shared_mem argument, in bytes).
// On a GPU, `extern __shared__` of one byte type reinterpreted as T: templated kernels cannot each declare
// `extern __shared__ T name[]`, as the declarations of different T would clash.
#ifdef MD_CUDA_EMU
#define MD_DYNAMIC_SHARED(T, name) T* name = ::md_emu::dynamic_shared<T>()
#else
#define MD_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char md_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(md_dynamic_shared_)
#endif

namespace md::cuda {

constexpr unsigned int kFullWarp = 0xffffffffu;
constexpr int kWarpSize = 32;

// The sum of v over the 32 lanes of a full warp, in every lane: a butterfly of five __shfl_xor_sync. Lane l
// adds the value of lane l xor s; after the step with offset s, it holds the sum over the 32 / s lanes congruent
// to it modulo s: with s = 16, 8, 4, 2, 1, in the end all 32. Every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// The max of v over the 32 lanes of a full warp, in every lane: the same butterfly as warp_sum. -inf is its
// identity (lanes with nothing to offer pass -inf). With a NaN in the warp the lanes may disagree (md::max keeps
// its first argument when a comparison fails): a NaN input gives NaN results either way.
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = md::max(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// The thread's index in its block, x fastest: lanes of a warp are 32 consecutive ones.
__device__ __forceinline__ unsigned int linear_thread_index() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// The sum of v over the whole block, in every thread. Every thread of the block must call it, the block must
// be whole warps (a multiple of 32 threads), and scratch must hold one T per warp (shared memory). Each warp
// sums its lanes; lane 0 of each warp leaves the sum in scratch; then every warp sums those partials itself,
// which saves a second round through shared memory to hand the total out. The last barrier lets the caller
// reuse scratch at once.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const unsigned int t = linear_thread_index(), lane = t % kWarpSize;
  const unsigned int warps = blockDim.x * blockDim.y * blockDim.z / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) scratch[t / kWarpSize] = v;
  __syncthreads();
  v = warp_sum(lane < warps ? scratch[lane] : T(0));
  __syncthreads();
  return v;
}

}  // namespace md::cuda
