// The tiled GEMM main loops of the GPU, C = A B through operand views: versions 3 and 4 of csrc/cuda/gemm.cu,
// and the implicit GEMMs of csrc/cuda/conv2d.cu, whose operands are views of images that are never copied.
// CUDA only (nvcc, NVRTC, cuda_emu.h).
//
// A view is a small struct: a(i, p) and b(p, j) return one element (called only with indices in range), and
// out.store(i, j, acc) writes one element of C from its dot product.
//
// The tile scheme. A block of 16 x 16 threads computes a 64 x 64 tile of C; thread (tx, ty) computes the
// 4 x 4 elements in rows ty + 16 r and columns tx + 16 s (r, s < 4), accumulating them in registers. The
// shared dimension goes by in slabs of 16: the block copies the 64 x 16 slab of A and the 16 x 64 slab of B
// into shared memory (zeros past the matrices' edges), then each thread adds its 4 x 4 outer products, one
// per column of the slab. Each number read from global memory thus serves 64 multiply-adds, each read from
// shared memory 4. Consecutive threads (tx) read consecutive columns of the B slab (distinct banks) and store
// consecutive columns of C (coalesced).
#pragma once

#include "minidiff/gemm.h"

namespace md::cuda {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16;  // the tile of C, and the depth of a slab
constexpr int kThreadM = 4, kThreadN = 4;              // each thread's block of C
constexpr int kTileThreadsX = kTileN / kThreadN, kTileThreadsY = kTileM / kThreadM;  // 16 x 16
constexpr int kTileThreads = kTileThreadsX * kTileThreadsY;
constexpr int kLoadsA = kTileM * kTileK / kTileThreads;  // elements of a slab each thread copies: 4 of A
constexpr int kLoadsB = kTileK * kTileN / kTileThreads;  // and 4 of B
static_assert(kLoadsA * kTileThreads == kTileM * kTileK && kLoadsB * kTileThreads == kTileK * kTileN,
              "the threads copy a slab in whole rounds");

MD_HD index_t tiles(index_t size, index_t tile) { return (size + tile - 1) / tile; }

// Writes alpha acc + beta C[i, j] (md::gemm_epilogue) through a view with ptr(i, j).
template <typename T, class View>
struct Epilogue {
  View c;
  T alpha, beta;

  MD_HD void store(index_t i, index_t j, T acc) const {
    T* p = c.ptr(i, j);
    *p = gemm_epilogue(acc, alpha, beta, p);
  }
};

__device__ __forceinline__ int tile_thread() { return threadIdx.x + kTileThreadsX * threadIdx.y; }

// This thread's share of a slab, read from global memory into registers: element e of the slab (row-major,
// `Cols` wide: 64 x 16 of A at (i0, p0), or 16 x 64 of B at (p0, j0)) goes to thread e % 256, so consecutive
// threads read along a row of the matrix. Past its edges (rows x cols) the slab is zeros.
template <int Cols, typename T, int Loads, class View>
__device__ void load_slab(const View& v, index_t rows, index_t cols, index_t r0, index_t c0, T (&reg)[Loads]) {
  for (int r = 0; r < Loads; ++r) {
    const int e = tile_thread() + r * kTileThreads;
    const index_t i = r0 + e / Cols, j = c0 + e % Cols;
    reg[r] = (i < rows && j < cols) ? v(i, j) : T(0);
  }
}

// The registers into shared memory. A's slab is stored transposed, as[p][i], so that the multiply reads a
// column of it (4 values of A for one p) along a row.
template <typename T>
__device__ void store_slabs(const T (&ra)[kLoadsA], const T (&rb)[kLoadsB], T (*as)[kTileM], T (*bs)[kTileN]) {
  for (int r = 0; r < kLoadsA; ++r) {
    const int e = tile_thread() + r * kTileThreads;
    as[e % kTileK][e / kTileK] = ra[r];
  }
  for (int r = 0; r < kLoadsB; ++r) {
    const int e = tile_thread() + r * kTileThreads;
    bs[e / kTileN][e % kTileN] = rb[r];
  }
}

// acc += this thread's 4 x 4 block of (slab of A) (slab of B), from shared memory.
template <typename T>
__device__ void multiply_slabs(const T (*as)[kTileM], const T (*bs)[kTileN], T (&acc)[kThreadM][kThreadN]) {
  for (int p = 0; p < kTileK; ++p) {
    T a[kThreadM], b[kThreadN];
    for (int r = 0; r < kThreadM; ++r) a[r] = as[p][threadIdx.y + r * kTileThreadsY];
    for (int s = 0; s < kThreadN; ++s) b[s] = bs[p][threadIdx.x + s * kTileThreadsX];
    for (int r = 0; r < kThreadM; ++r)
      for (int s = 0; s < kThreadN; ++s) acc[r][s] += a[r] * b[s];
  }
}

template <typename T, class Out>
__device__ void store_tile(const Out& out, index_t m, index_t n, index_t i0, index_t j0,
                           const T (&acc)[kThreadM][kThreadN]) {
  for (int r = 0; r < kThreadM; ++r)
    for (int s = 0; s < kThreadN; ++s) {
      const index_t i = i0 + threadIdx.y + r * kTileThreadsY, j = j0 + threadIdx.x + s * kTileThreadsX;
      if (i < m && j < n) out.store(i, j, acc[r][s]);
    }
}

// GEMM v3, register blocking: C (m x n) = A (m x k) B (k x n) by the tile scheme above. Blocks of 16 x 16
// threads; a 1-d grid of any size, whose blocks stride over the tiles of C.
template <typename T, class A, class B, class Out>
__device__ void gemm_register_tiles(index_t m, index_t n, index_t k, const A& a, const B& b, const Out& out) {
  __shared__ T as[kTileK][kTileM];
  __shared__ T bs[kTileK][kTileN];
  const index_t tiles_n = tiles(n, kTileN), all = tiles(m, kTileM) * tiles_n;
  for (index_t tile = blockIdx.x; tile < all; tile += gridDim.x) {
    const index_t i0 = tile / tiles_n * kTileM, j0 = tile % tiles_n * kTileN;
    T acc[kThreadM][kThreadN] = {};
    for (index_t p0 = 0; p0 < k; p0 += kTileK) {
      T ra[kLoadsA], rb[kLoadsB];
      load_slab<kTileK>(a, m, k, i0, p0, ra);
      load_slab<kTileN>(b, k, n, p0, j0, rb);
      store_slabs(ra, rb, as, bs);
      __syncthreads();  // the slabs are complete before anyone multiplies them
      multiply_slabs<T>(as, bs, acc);
      __syncthreads();  // and everyone is done with them before the next ones overwrite them
    }
    store_tile(out, m, n, i0, j0, acc);
  }
}

// GEMM v4, double buffering: v3 with two pairs of slabs in shared memory. While the block multiplies one
// pair, the next slabs are already on their way from global memory into registers (the loads are issued
// before the multiply and waited for only after it), then go to the other pair; one barrier per slab instead
// of two. The barrier ending step s is what makes both safe: the pair written in step s was last read in
// step s - 1, and the pair read in step s + 1 was written in step s.
template <typename T, class A, class B, class Out>
__device__ void gemm_double_buffered(index_t m, index_t n, index_t k, const A& a, const B& b, const Out& out) {
  __shared__ T as[2][kTileK][kTileM];
  __shared__ T bs[2][kTileK][kTileN];
  const index_t tiles_n = tiles(n, kTileN), all = tiles(m, kTileM) * tiles_n, slabs = tiles(k, kTileK);
  for (index_t tile = blockIdx.x; tile < all; tile += gridDim.x) {
    const index_t i0 = tile / tiles_n * kTileM, j0 = tile % tiles_n * kTileN;
    T acc[kThreadM][kThreadN] = {};
    T ra[kLoadsA], rb[kLoadsB];
    if (slabs > 0) {
      load_slab<kTileK>(a, m, k, i0, 0, ra);
      load_slab<kTileN>(b, k, n, 0, j0, rb);
      store_slabs(ra, rb, as[0], bs[0]);
    }
    __syncthreads();
    for (index_t s = 0; s < slabs; ++s) {
      const int now = static_cast<int>(s % 2);
      const bool more = s + 1 < slabs;
      if (more) {
        load_slab<kTileK>(a, m, k, i0, (s + 1) * kTileK, ra);
        load_slab<kTileN>(b, k, n, (s + 1) * kTileK, j0, rb);
      }
      multiply_slabs<T>(as[now], bs[now], acc);
      if (more) store_slabs(ra, rb, as[1 - now], bs[1 - now]);
      __syncthreads();
    }
    store_tile(out, m, n, i0, j0, acc);
  }
}

}  // namespace md::cuda
