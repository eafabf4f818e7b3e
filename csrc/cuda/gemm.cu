// GEMM on the GPU, C = alpha A B + beta C: the numbered versions side by side (the GPU's kernel lab; the
// CPU's is csrc/cpu/gemm.cpp).
//   v1 naive            one thread per element of C, its dot product read straight from global memory
//   v2 shared tiles     16 x 16 tiles of A and B staged in shared memory: each number loaded serves 16
//                       multiply-adds instead of 1
//   v3 register tiles   64 x 64 tiles of C, each thread a 4 x 4 block of it in registers (minidiff/gemm_tile.h)
//   v4 double buffered  v3 loading the next slabs while it multiplies these, one barrier per slab
// Every version: A (m x k) and B (k x n) with any strides in elements (a transposed view costs nothing), C
// (m x n) with unit column stride and leading dimension ldc; m, n, k >= 0, any size. beta == 0 means C is only
// written (md::gemm_epilogue, the CPU's too). Launch: blocks of 16 x 16 threads and a 1-d grid of any size,
// whose blocks stride over the tiles of C (16 x 16 for v1 and v2, 64 x 64 for v3 and v4).
// Compiled by nvcc (sm_80, sm_90), NVRTC (gemm_v1_kernel<float> ... gemm_v4_kernel<double>) and g++ (cuda_emu.h).
#include "minidiff/gemm_tile.h"

constexpr int kSmallTile = 16;  // v1 and v2: a tile of C per block of 16 x 16 threads, one element each

template <typename T>
__global__ void __launch_bounds__(256)
gemm_v1_kernel(md::index_t m, md::index_t n, md::index_t k, T alpha, const T* a, md::index_t rsa, md::index_t csa,
               const T* b, md::index_t rsb, md::index_t csb, T beta, T* c, md::index_t ldc) {
  const md::index_t tiles_n = md::cuda::tiles(n, kSmallTile), all = md::cuda::tiles(m, kSmallTile) * tiles_n;
  for (md::index_t tile = blockIdx.x; tile < all; tile += gridDim.x) {
    const md::index_t i = tile / tiles_n * kSmallTile + threadIdx.y, j = tile % tiles_n * kSmallTile + threadIdx.x;
    if (i >= m || j >= n) continue;
    T acc = T(0);
    for (md::index_t p = 0; p < k; ++p) acc += a[i * rsa + p * csa] * b[p * rsb + j * csb];
    c[i * ldc + j] = md::gemm_epilogue(acc, alpha, beta, &c[i * ldc + j]);
  }
}

template <typename T>
__global__ void __launch_bounds__(256)
gemm_v2_kernel(md::index_t m, md::index_t n, md::index_t k, T alpha, const T* a, md::index_t rsa, md::index_t csa,
               const T* b, md::index_t rsb, md::index_t csb, T beta, T* c, md::index_t ldc) {
  __shared__ T as[kSmallTile][kSmallTile];
  __shared__ T bs[kSmallTile][kSmallTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const md::index_t tiles_n = md::cuda::tiles(n, kSmallTile), all = md::cuda::tiles(m, kSmallTile) * tiles_n;
  for (md::index_t tile = blockIdx.x; tile < all; tile += gridDim.x) {
    const md::index_t i = tile / tiles_n * kSmallTile + ty, j = tile % tiles_n * kSmallTile + tx;
    T acc = T(0);
    for (md::index_t p0 = 0; p0 < k; p0 += kSmallTile) {
      // Each thread copies one element of each tile (zero past the edges); threads out of C still copy and
      // meet at the barriers, which every thread of the block must reach.
      as[ty][tx] = (i < m && p0 + tx < k) ? a[i * rsa + (p0 + tx) * csa] : T(0);
      bs[ty][tx] = (p0 + ty < k && j < n) ? b[(p0 + ty) * rsb + j * csb] : T(0);
      __syncthreads();
      for (int q = 0; q < kSmallTile; ++q) acc += as[ty][q] * bs[q][tx];
      __syncthreads();
    }
    if (i < m && j < n) c[i * ldc + j] = md::gemm_epilogue(acc, alpha, beta, &c[i * ldc + j]);
  }
}

template <typename T>
__global__ void __launch_bounds__(256)
gemm_v3_kernel(md::index_t m, md::index_t n, md::index_t k, T alpha, const T* a, md::index_t rsa, md::index_t csa,
               const T* b, md::index_t rsb, md::index_t csb, T beta, T* c, md::index_t ldc) {
  const md::StridedMatrix<const T> av{a, rsa, csa}, bv{b, rsb, csb};
  const md::cuda::Epilogue<T, md::StridedMatrix<T>> out{{c, ldc, 1}, alpha, beta};
  md::cuda::gemm_register_tiles<T>(m, n, k, av, bv, out);
}

template <typename T>
__global__ void __launch_bounds__(256)
gemm_v4_kernel(md::index_t m, md::index_t n, md::index_t k, T alpha, const T* a, md::index_t rsa, md::index_t csa,
               const T* b, md::index_t rsb, md::index_t csb, T beta, T* c, md::index_t ldc) {
  const md::StridedMatrix<const T> av{a, rsa, csa}, bv{b, rsb, csb};
  const md::cuda::Epilogue<T, md::StridedMatrix<T>> out{{c, ldc, 1}, alpha, beta};
  md::cuda::gemm_double_buffered<T>(m, n, k, av, bv, out);
}

// nvcc needs explicit instantiations to emit code; NVRTC gets them from CuPy's name_expressions.
#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define MD_GEMM_INSTANCE(kernel, T)                                                                            \
  template __global__ void kernel<T>(md::index_t, md::index_t, md::index_t, T, const T*, md::index_t, md::index_t, \
                                     const T*, md::index_t, md::index_t, T, T*, md::index_t);
MD_GEMM_INSTANCE(gemm_v1_kernel, float)
MD_GEMM_INSTANCE(gemm_v1_kernel, double)
MD_GEMM_INSTANCE(gemm_v2_kernel, float)
MD_GEMM_INSTANCE(gemm_v2_kernel, double)
MD_GEMM_INSTANCE(gemm_v3_kernel, float)
MD_GEMM_INSTANCE(gemm_v3_kernel, double)
MD_GEMM_INSTANCE(gemm_v4_kernel, float)
MD_GEMM_INSTANCE(gemm_v4_kernel, double)
#undef MD_GEMM_INSTANCE
#endif
