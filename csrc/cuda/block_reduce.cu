// Row sums by a shared-memory tree reduction: the pattern of every normalization kernel (group norm
// statistics, softmax denominators), and the test that cuda_emu.h honours __shared__ and
// __syncthreads(). Compiled by nvcc (sm_80, sm_90), NVRTC (row_sum_kernel<float>, <double>) and g++.
#include "minidiff/common.h"

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

#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
template __global__ void row_sum_kernel<float>(const float*, float*, md::index_t, md::index_t);
template __global__ void row_sum_kernel<double>(const double*, double*, md::index_t, md::index_t);
#endif
