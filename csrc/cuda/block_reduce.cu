// Row sums, the pattern of every normalization kernel (group norm statistics, softmax denominators), two ways:
//   v1 row_sum_kernel       a tree in shared memory, halving the active threads with a barrier per level
//   v2 row_sum_warp_kernel  warp shuffles: each warp sums in registers, only one partial per warp goes
//                           through (dynamic) shared memory (md::cuda::block_sum of minidiff/device.h)
// They are also the tests that cuda_emu.h honours __shared__, __syncthreads(), warp shuffles and dynamic
// shared memory. Compiled by nvcc (sm_80, sm_90), NVRTC (the instances of INSTANCES) and g++ (cuda_emu.h).
#include "minidiff/device.h"

constexpr int kMaxReduceThreads = 1024;

// out[r] = sum_j x[r, j] for a C-contiguous (rows, cols) x. One block per row (grid-stride over
// rows); blockDim.x must be a power of two, at most kMaxReduceThreads.
template <typename T>
__global__ void row_sum_kernel(const T* x, T* out, md::index_t rows, md::index_t cols) {
  __shared__ T partial[kMaxReduceThreads];
  const unsigned int tid = threadIdx.x;
  for (md::index_t row = blockIdx.x; row < rows; row += gridDim.x) {
    T acc = T(0);
    for (md::index_t j = tid; j < cols; j += blockDim.x) acc += x[row * cols + j];
    partial[tid] = acc;
    __syncthreads();
    for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {  // pairwise: log2(blockDim.x) levels
      if (tid < half) partial[tid] += partial[tid + half];
      __syncthreads();
    }
    if (tid == 0) out[row] = partial[0];
    __syncthreads();  // partial is overwritten for the next row only after thread 0 has read it
  }
}

// The same sums by warp shuffles. blockDim.x must be a multiple of 32, at most kMaxReduceThreads, and the
// launch must give blockDim.x / 32 elements of T of dynamic shared memory (one partial per warp).
template <typename T>
__global__ void row_sum_warp_kernel(const T* x, T* out, md::index_t rows, md::index_t cols) {
  MD_DYNAMIC_SHARED(T, partials);
  for (md::index_t row = blockIdx.x; row < rows; row += gridDim.x) {
    T acc = T(0);
    for (md::index_t j = threadIdx.x; j < cols; j += blockDim.x) acc += x[row * cols + j];
    acc = md::cuda::block_sum(acc, partials);
    if (threadIdx.x == 0) out[row] = acc;
  }
}

#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
template __global__ void row_sum_kernel<float>(const float*, float*, md::index_t, md::index_t);
template __global__ void row_sum_kernel<double>(const double*, double*, md::index_t, md::index_t);
template __global__ void row_sum_warp_kernel<float>(const float*, float*, md::index_t, md::index_t);
template __global__ void row_sum_warp_kernel<double>(const double*, double*, md::index_t, md::index_t);
#endif
