// GEMM: the teaching versions v1-v3 and the packed BLIS-style v4 (see gemm.h for the contract).
#include "cpu/gemm.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "cpu/gemm_kernels.h"
#include "cpu/parallel.h"
#include "minidiff/gemm.h"

namespace md::cpu {

namespace {

// C = beta C over an m x n block (beta == 0 writes zeros, so NaN in C does not survive).
template <typename T>
void scale_c(index_t m, index_t n, T beta, OutMatrix<T> c) {
  for (index_t i = 0; i < m; ++i) {
    T* row = &c(i, 0);
    if (beta == T(0)) {
      std::fill(row, row + n, T(0));
    } else if (beta != T(1)) {
      for (index_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

double product_size(index_t m, index_t n, index_t k) {  // multiply-adds, in a double: no overflow
  return static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
}

// y[j] += s * x(j) for j < n, x a row of a view: the inner loop of v2 and v3 (vectorized when x is contiguous).
template <typename T>
void axpy_row(index_t n, T s, const T* x, index_t incx, T* __restrict y) {
  if (incx == 1) {
    for (index_t j = 0; j < n; ++j) y[j] += s * x[j];
  } else {
    for (index_t j = 0; j < n; ++j) y[j] += s * x[j * incx];
  }
}

}  // namespace

// --- v1: three loops, one dot product per element of C ----------------------------------------------------------

template <typename T>
void gemm_v1_naive(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                   OutMatrix<T> c) {
  for (index_t i = 0; i < m; ++i) {
    for (index_t j = 0; j < n; ++j) {
      T sum = 0;
      for (index_t p = 0; p < k; ++p) sum += a(i, p) * b(p, j);  // walks down a column of B: a cache miss each
      c(i, j) = md::gemm_epilogue(sum, alpha, beta, &c(i, j));  // shared with the GPU (minidiff/gemm.h)
    }
  }
}

// --- v2: loops i-p-j, so the innermost loop runs along rows of B and C (unit stride, vectorizable) ----------------

template <typename T>
void gemm_v2_ikj(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                 OutMatrix<T> c) {
  scale_c(m, n, beta, c);
  for (index_t i = 0; i < m; ++i) {
    for (index_t p = 0; p < k; ++p) axpy_row(n, alpha * a(i, p), b.ptr(p, 0), b.cs, &c(i, 0));
  }
}

// --- v3: v2 on blocks: a KC x NC block of B is reused by every row of an MC-row block of A while it is in cache ---

namespace {
constexpr index_t kV3RowBlock = 64;    // rows of A and C per block (one thread's unit of work)
constexpr index_t kV3DepthBlock = 128;  // KC: rows of B per block
constexpr index_t kV3ColBlock = 512;    // NC: columns of B and C per block; KC x NC floats = 256 KiB, in L2
}  // namespace

template <typename T>
void gemm_v3_blocked(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                     OutMatrix<T> c, int threads) {
  const index_t row_blocks = ceil_div(m, kV3RowBlock);
  parallel_for(static_cast<int>(std::min<index_t>(useful_threads(threads, product_size(m, n, k)), row_blocks)),
               row_blocks,
               [&](index_t block) {
    const index_t i0 = block * kV3RowBlock, i1 = std::min(m, i0 + kV3RowBlock);
    scale_c(i1 - i0, n, beta, c.block(i0, 0));
    for (index_t j0 = 0; j0 < n; j0 += kV3ColBlock) {
      const index_t nb = std::min(kV3ColBlock, n - j0);
      for (index_t p0 = 0; p0 < k; p0 += kV3DepthBlock) {
        const index_t p1 = std::min(k, p0 + kV3DepthBlock);
        for (index_t i = i0; i < i1; ++i) {
          for (index_t p = p0; p < p1; ++p) axpy_row(nb, alpha * a(i, p), b.ptr(p, j0), b.cs, &c(i, j0));
        }
      }
    }
  });
}

// --- v4: packed panels and a register-blocked micro-kernel (BLIS's five loops) ------------------------------------
//
//   for jc in steps of NC:                      columns of C and B
//     for pc in steps of KC:                    the shared dimension
//       pack B[pc:pc+KC, jc:jc+NC] -> Bp        NR-wide slivers, each KC x NR row by row       (L3)
//       for ic in steps of MC:                  rows of C and A
//         pack A[ic:ic+MC, pc:pc+KC] -> Ap      MR-tall slivers, each MR x KC column by column (L2)
//         for jr in steps of NR:                one sliver of Bp                               (L1)
//           for ir in steps of MR:              one sliver of Ap
//             micro-kernel: C[ir:ir+MR, jr:jr+NR] += Ap sliver x Bp sliver                   (registers)
//
// Packing copies each block once into the exact order the micro-kernel reads, contiguous and aligned, padded
// to whole slivers: the micro-kernel never sees a stride or an edge. (The padding's products land in the part
// of an edge tile that is thrown away; it is zeros so that no garbage, NaN or subnormal, is ever computed on.)
// Its cost, O(mk + kn), is small against the O(mnk) multiply-adds unless a side of C is thin: then each packed
// number serves few multiply-adds, so packing must run at copy speed (transpose_8x8 for row-major A), and an A
// used for many products (a convolution's weight) is packed once for all of them (PackedA). Edge tiles of C
// (m or n not a multiple of MR or NR) go through a small buffer so the micro-kernel always writes a full tile.
// Blocks are balanced: k = 576 with KC = 192 runs 3 blocks of 192, k = 600 runs 4 of 150, never a thin tail.
//
// Threads: C is cut into one slab per thread, along whichever of its sides has more tiles, on tile
// boundaries; each thread runs the five loops on its slab with its own packing buffers. Every element of C
// is computed by one thread, with the same sequence of operations whatever the number of threads, so the
// result does not depend on it (bit for bit).

namespace {

using kernels::Blocking;

// The micro-kernel of each instruction set for each type, and its cache blocking:
//   KC x NR of B within L1 (32-48 KiB on current x86 cores; AVX2's 256 x 24 floats take 24 KiB), with room for
//   the A slivers streaming past it; MC x KC of A well inside L2 (512 KiB - 1 MiB); KC x NC of B in L3.
// float64 blocks have half the depth (the same bytes); its AVX2 tile stays 6 x 8 (float64 was not measured).
// The AVX-512 tile is 8 x 32, not the 12 or 14 rows its 32 registers allow: alone in L1 all three reach the
// FMA peak, and 8 divides the channel counts of a U-Net (32, 64, 128), which are the rows of conv2d's
// products (12 rows would run 64 channels as 5 full tiles and one third-full one). Measured on Zen 5.
template <typename T>
struct Kernels;

template <>
struct Kernels<float> {
  using portable = kernels::PortableKernel<float, 4, 16>;
  static constexpr Blocking portable_blocking{128, 256, 2048};
#ifdef MINIDIFF_HAS_AVX2_KERNEL
  // 4 x 24: 12 accumulators + 3 B + 1 A = 16 of 16 ymm. Per step 3 loads of B and 4 broadcasts of A feed 12
  // FMAs (6 x 16 needs 8 for 12), and 4 rows divide a U-Net's channel counts (6-row tiles ran conv2d's 32-row
  // products as 5 full tiles and a third-full one). Measured on Zen 3: as fast on 512^3, 1.2-1.3x on those.
  using avx2 = kernels::SimdKernel<kernels::F32x8, 4, 3>;
  static constexpr Blocking avx2_blocking{144, 256, 2048};
#endif
#ifdef MINIDIFF_HAS_AVX512_KERNEL
  using avx512 = kernels::SimdKernel<kernels::F32x16, 8, 2>;  // 8 x 32: 16 accumulators + 2 B + 1 A of 32 zmm
  static constexpr Blocking avx512_blocking{96, 192, 2048};
#endif
};

template <>
struct Kernels<double> {
  using portable = kernels::PortableKernel<double, 4, 8>;
  static constexpr Blocking portable_blocking{128, 128, 2048};
#ifdef MINIDIFF_HAS_AVX2_KERNEL
  using avx2 = kernels::SimdKernel<kernels::F64x4, 6, 2>;  // 6 x 8
  static constexpr Blocking avx2_blocking{144, 128, 2048};
#endif
#ifdef MINIDIFF_HAS_AVX512_KERNEL
  using avx512 = kernels::SimdKernel<kernels::F64x8, 8, 2>;  // 8 x 16
  static constexpr Blocking avx512_blocking{96, 96, 2048};
#endif
};

// Calls f(Kernel{}, blocking) with the micro-kernel `kernel` for T.
template <typename T, typename F>
void with_kernel(MicroKernel kernel, F&& f) {
  switch (kernel) {
    case MicroKernel::portable:
      return f(typename Kernels<T>::portable{}, Kernels<T>::portable_blocking);
    case MicroKernel::avx2:
#ifdef MINIDIFF_HAS_AVX2_KERNEL
      return f(typename Kernels<T>::avx2{}, Kernels<T>::avx2_blocking);
#else
      break;
#endif
    case MicroKernel::avx512:
#ifdef MINIDIFF_HAS_AVX512_KERNEL
      return f(typename Kernels<T>::avx512{}, Kernels<T>::avx512_blocking);
#else
      break;
#endif
  }
  throw std::invalid_argument("micro_kernel: not compiled into this build");
}

// Each thread's packing buffers, reused from call to call.
template <typename T>
AlignedBuffer<T>& packed_a_buffer() {
  thread_local AlignedBuffer<T> buffer;
  return buffer;
}
template <typename T>
AlignedBuffer<T>& packed_b_buffer() {
  thread_local AlignedBuffer<T> buffer;
  return buffer;
}

// Whether a view's rows are contiguous (a RowTable's always are), or its columns (a ColumnTable's always are).
template <typename T>
bool unit_columns(const MatrixView<T>& v) { return v.cs == 1; }
template <typename T>
constexpr bool unit_columns(const RowTable<T>&) { return true; }
template <typename T>
constexpr bool unit_columns(const ColumnTable<T>&) { return false; }
template <typename T>
bool unit_rows(const MatrixView<T>& v) { return v.rs == 1; }
template <typename T>
constexpr bool unit_rows(const ColumnTable<T>&) { return true; }

// A (mc x kc, a view at the block's origin) -> slivers of MR rows: dst[s * MR * kc + p * MR + i] = A(s MR + i, p),
// zero rows past mc.
template <class K, typename T, class View>
void pack_a(View a, index_t mc, index_t kc, T* __restrict dst) {
  constexpr int MR = K::mr;
  for (index_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const index_t rows = std::min<index_t>(MR, mc - i0);
    if (unit_columns(a)) {  // rows of A are contiguous: read along each row, write with stride MR
      if (rows == MR) {  // a full sliver: p outer, so dst is written in order (with MR interleaved streams of
                         // stores packing A cost ~10% of a 512^3 product on AVX2)
        const T* src[MR];
        for (int i = 0; i < MR; ++i) src[i] = a.ptr(i0 + i, 0);
        index_t p = 0;
#ifdef MINIDIFF_HAS_TRANSPOSE_8X8
        if constexpr (std::is_same_v<T, float> && (MR == 4 || MR == 8)) {  // 8 steps at a time, in registers
          for (; p + 8 <= kc; p += 8) {
            const float* at[MR];
            for (int i = 0; i < MR; ++i) at[i] = src[i] + p;
            if constexpr (MR == 8) {
              kernels::transpose_8x8(at, dst + p * MR, MR);
            } else {
              kernels::transpose_4x8(at, dst + p * MR);
            }
          }
        }
#endif
        for (; p < kc; ++p) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) dst[p * MR + i] = src[i][p];
        }
      } else {
        for (index_t i = 0; i < rows; ++i) {
          const T* src = a.ptr(i0 + i, 0);
          for (index_t p = 0; p < kc; ++p) dst[p * MR + i] = src[p];
        }
      }
    } else if constexpr (std::is_same_v<View, MatrixView<T>>) {  // columns contiguous (A transposed), or any
      for (index_t p = 0; p < kc; ++p) {                            // strides: read down each column
        const T* src = a.ptr(i0, p);
        for (index_t i = 0; i < rows; ++i) dst[p * MR + i] = src[i * a.rs];
      }
    }
    for (index_t i = rows; i < MR; ++i) {
      for (index_t p = 0; p < kc; ++p) dst[p * MR + i] = T(0);
    }
  }
}

// B (kc x nc, a view at the block's origin) -> slivers of NR columns: dst[s * NR * kc + p * NR + j] =
// B(p, s NR + j), zero columns past nc.
template <class K, typename T, class View>
void pack_b(View b, index_t kc, index_t nc, T* __restrict dst) {
  constexpr int NR = K::nr;
  // Rows of B contiguous: walk them in order, copying NR-long pieces into each sliver. (Sliver by sliver, every
  // piece would start a new row of B: a cache miss per 64 bytes, ~7% of a 512^3 product on AVX2.)
  if (unit_columns(b)) {
    const index_t full = nc / NR, cols = nc - full * NR;
    for (index_t p = 0; p < kc; ++p) {
      const T* src = b.ptr(p, 0);
      T* d = dst + p * NR;
      for (index_t s = 0; s < full; ++s) {  // a fixed length: a few vector moves
        std::memcpy(d + s * NR * kc, src + s * NR, sizeof(T) * NR);
      }
      if (cols > 0) {  // the right edge, zero-padded
        T* edge = d + full * NR * kc;
        for (index_t j = 0; j < cols; ++j) edge[j] = src[full * NR + j];
        for (index_t j = cols; j < NR; ++j) edge[j] = T(0);
      }
    }
    return;
  }
  for (index_t j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
    const index_t cols = std::min<index_t>(NR, nc - j0);
    if constexpr (!std::is_same_v<View, RowTable<T>>) {  // columns contiguous (B transposed, a ColumnTable), or
      index_t j = 0;                                        // any strides: read down each column
#ifdef MINIDIFF_HAS_TRANSPOSE_8X8
      if constexpr (std::is_same_v<T, float> && NR % 8 == 0) {
        for (; unit_rows(b) && j + 8 <= cols; j += 8) {  // 8 contiguous columns at a time, 8 x 8 transposes
          const float* column[8];
          for (int jj = 0; jj < 8; ++jj) column[jj] = b.ptr(0, j0 + j + jj);
          index_t p = 0;
          for (; p + 8 <= kc; p += 8) {
            kernels::transpose_8x8(column, dst + p * NR + j, NR);
            for (int jj = 0; jj < 8; ++jj) column[jj] += 8;
          }
          for (; p < kc; ++p) {
            for (int jj = 0; jj < 8; ++jj) dst[p * NR + j + jj] = b(p, j0 + j + jj);
          }
        }
      }
#endif
      for (; j < cols; ++j) {
        for (index_t p = 0; p < kc; ++p) dst[p * NR + j] = b(p, j0 + j);
      }
      for (index_t j = cols; j < NR; ++j) {
        for (index_t p = 0; p < kc; ++p) dst[p * NR + j] = T(0);
      }
    }
  }
}

// An edge tile (rows < MR or cols < NR): the micro-kernel runs on a full tile in a buffer holding C's part,
// so the arithmetic is exactly that of a full tile.
template <class K, typename T>
void edge_tile(index_t kc, T alpha, const T* a, const T* b, T beta, T* c, index_t ldc, index_t rows, index_t cols) {
  alignas(64) T tile[K::mr * K::nr] = {};
  if (beta != T(0)) {
    for (index_t i = 0; i < rows; ++i) std::memcpy(tile + i * K::nr, c + i * ldc, cols * sizeof(T));
  }
  K::run(kc, alpha, a, b, beta, tile, K::nr);
  for (index_t i = 0; i < rows; ++i) std::memcpy(c + i * ldc, tile + i * K::nr, cols * sizeof(T));
}

// Loops jr, ir over one packed block of A (mc x kc) and one of B (kc x nc): C block += Ap Bp.
template <class K, typename T>
void macro_kernel(index_t mc, index_t nc, index_t kc, T alpha, const T* pa, const T* pb, T beta, OutMatrix<T> c) {
  for (index_t jr = 0; jr < nc; jr += K::nr) {
    const index_t cols = std::min<index_t>(K::nr, nc - jr);
    const T* b = pb + jr * kc;
    for (index_t ir = 0; ir < mc; ir += K::mr) {
      const index_t rows = std::min<index_t>(K::mr, mc - ir);
      const T* a = pa + ir * kc;
      if (rows == K::mr && cols == K::nr) {
        K::run(kc, alpha, a, b, beta, &c(ir, jr), c.ld);
      } else {
        edge_tile<K>(kc, alpha, a, b, beta, &c(ir, jr), c.ld, rows, cols);
      }
    }
  }
}

// The size of ceil(size / most) equal blocks covering size: the fewest blocks of at most `most` (most when
// there is nothing to cover).
index_t balanced_block(index_t size, index_t most) { return size < 1 ? most : ceil_div(size, ceil_div(size, most)); }

// The blocking of an m x n x k product: blocks of equal size (whole tiles), at most bl's. So k = 520 with
// KC = 192 runs 3 x 174, not 192 + 192 + 136: a thin last block pays the C tile's loads and stores for few
// multiply-adds.
template <class K>
Blocking balanced(Blocking bl, index_t m, index_t n, index_t k) {
  return {round_up(balanced_block(m, bl.mc), K::mr), balanced_block(k, bl.kc),
          round_up(balanced_block(n, bl.nc), K::nr)};
}

// Where the loops find each packed MC x KC block of A: packed on the spot into this thread's buffer...
template <class K, typename T, class View>
struct PackBlocksOfA {
  View a;
  T* buffer;
  const T* operator()(index_t ic, index_t pc, index_t mc, index_t kc) const {
    pack_a<K>(a.block(ic, pc), mc, kc, buffer);
    return buffer;
  }
};

// ... or packed once beforehand (PackedA): block (ic, pc) starts at pc * m_padded + ic * kc.
template <typename T>
struct PrepackedA {
  const T* data;
  index_t m_padded;
  const T* operator()(index_t ic, index_t pc, index_t, index_t kc) const { return data + pc * m_padded + ic * kc; }
};

// The five loops on one thread (m, n, k >= 1, bl balanced for this product).
template <class K, typename T, class BlocksOfA, class ViewB>
void packed_serial(index_t m, index_t n, index_t k, T alpha, const BlocksOfA& blocks_of_a, ViewB b, T beta,
                   OutMatrix<T> c, Blocking bl) {
  T* pb = packed_b_buffer<T>().get(std::min(bl.nc, round_up(n, K::nr)) * bl.kc);
  for (index_t jc = 0; jc < n; jc += bl.nc) {
    const index_t nc = std::min(bl.nc, n - jc);
    for (index_t pc = 0; pc < k; pc += bl.kc) {
      const index_t kc = std::min(bl.kc, k - pc);
      pack_b<K>(b.block(pc, jc), kc, nc, pb);
      const T beta_pc = pc == 0 ? beta : T(1);  // later depth blocks add to what the first wrote
      for (index_t ic = 0; ic < m; ic += bl.mc) {
        const index_t mc = std::min(bl.mc, m - ic);
        macro_kernel<K>(mc, nc, kc, alpha, blocks_of_a(ic, pc, mc, kc), pb, beta_pc, c.block(ic, jc));
      }
    }
  }
}

// The threads' slabs: one per useful thread, cut on tile boundaries; f(first, last) with tile indices.
template <typename F>
void over_slabs(int threads, double fmas, index_t tiles, F&& f) {
  const index_t slabs = std::min<index_t>(useful_threads(threads, fmas), tiles);
  parallel_for(static_cast<int>(slabs), slabs, [&](index_t s) { f(s * tiles / slabs, (s + 1) * tiles / slabs); });
}

// v4 on any views of A and B.
template <typename T, class ViewA, class ViewB>
void packed_gemm(index_t m, index_t n, index_t k, T alpha, ViewA a, ViewB b, T beta, OutMatrix<T> c, int threads,
                 MicroKernel kernel) {
  with_kernel<T>(kernel, [&](auto k_tag, Blocking bl) {
    using K = decltype(k_tag);
    if (m == 0 || n == 0) return;
    if (k == 0) return scale_c(m, n, beta, c);
    // One slab of C per thread, along the side with more tiles; each packs its own blocks of A and B.
    const index_t row_tiles = ceil_div(m, K::mr), col_tiles = ceil_div(n, K::nr);
    const bool by_columns = col_tiles >= row_tiles;
    over_slabs(threads, product_size(m, n, k), by_columns ? col_tiles : row_tiles, [&](index_t t0, index_t t1) {
      if (by_columns) {
        const index_t j0 = t0 * K::nr, j1 = std::min(n, t1 * K::nr);
        const Blocking slab = balanced<K>(bl, m, j1 - j0, k);
        const PackBlocksOfA<K, T, ViewA> blocks{a, packed_a_buffer<T>().get(slab.mc * slab.kc)};
        packed_serial<K>(m, j1 - j0, k, alpha, blocks, b.block(0, j0), beta, c.block(0, j0), slab);
      } else {
        const index_t i0 = t0 * K::mr, i1 = std::min(m, t1 * K::mr);
        const Blocking slab = balanced<K>(bl, i1 - i0, n, k);
        const PackBlocksOfA<K, T, ViewA> blocks{a.block(i0, 0), packed_a_buffer<T>().get(slab.mc * slab.kc)};
        packed_serial<K>(i1 - i0, n, k, alpha, blocks, b, beta, c.block(i0, 0), slab);
      }
    });
  });
}

}  // namespace

template <typename T>
void gemm_v4_packed(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                    OutMatrix<T> c, int threads, MicroKernel kernel) {
  packed_gemm(m, n, k, alpha, a, b, beta, c, threads, kernel);
}

template <typename T>
void gemm(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, ColumnTable<T> b, T beta, OutMatrix<T> c,
          int threads) {
  packed_gemm(m, n, k, alpha, a, b, beta, c, threads, best_micro_kernel());
}

template <typename T>
PackedA<T>::PackedA(index_t m, index_t k, MatrixView<T> a) : m_(m), k_(k), kernel_(best_micro_kernel()) {
  with_kernel<T>(kernel_, [&](auto k_tag, Blocking bl) {
    using K = decltype(k_tag);
    bl = balanced<K>(bl, m, 1, k);
    const index_t m_padded = round_up(m, K::mr);
    data_.resize(m_padded * k);
    for (index_t pc = 0; pc < k; pc += bl.kc) {
      const index_t kc = std::min(bl.kc, k - pc);
      for (index_t ic = 0; ic < m; ic += bl.mc)
        pack_a<K>(a.block(ic, pc), std::min(bl.mc, m - ic), kc, data_.data() + pc * m_padded + ic * kc);
    }
  });
}

template <typename T, class ViewB>
void gemm_prepacked(const PackedA<T>& a, index_t n, T alpha, ViewB b, T beta, OutMatrix<T> c, int threads) {
  with_kernel<T>(a.kernel_, [&](auto k_tag, Blocking bl) {
    using K = decltype(k_tag);
    const index_t m = a.m_, k = a.k_;
    if (m == 0 || n == 0) return;
    if (k == 0) return scale_c(m, n, beta, c);
    const PrepackedA<T> blocks{a.data_.data(), round_up(m, K::mr)};
    // Slabs of columns only: every thread reads the same packed blocks of A.
    over_slabs(threads, product_size(m, n, k), ceil_div(n, K::nr), [&](index_t t0, index_t t1) {
      const index_t j0 = t0 * K::nr, j1 = std::min(n, t1 * K::nr);
      packed_serial<K>(m, j1 - j0, k, alpha, blocks, b.block(0, j0), beta, c.block(0, j0),
                       balanced<K>(bl, m, j1 - j0, k));
    });
  });
}

template <typename T>
void gemm(const PackedA<T>& a, index_t n, T alpha, MatrixView<T> b, T beta, OutMatrix<T> c, int threads) {
  gemm_prepacked(a, n, alpha, b, beta, c, threads);
}

template <typename T>
void gemm(const PackedA<T>& a, index_t n, T alpha, RowTable<T> b, T beta, OutMatrix<T> c, int threads) {
  gemm_prepacked(a, n, alpha, b, beta, c, threads);
}

template <typename T>
void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
          const T* b, index_t ldb, T beta, T* c, index_t ldc, int threads) {
  gemm_v4_packed<T>(m, n, k, alpha, row_major(a, lda, trans_a), row_major(b, ldb, trans_b), beta, {c, ldc},
                    threads, best_micro_kernel());
}

// --- which micro-kernels this build has ----------------------------------------------------------------------------

namespace {
template <class K32, class K64>
MicroKernelInfo info(MicroKernel kernel, const char* name, Blocking bl) {
  return {kernel, name, K32::mr, K32::nr, K64::mr, K64::nr, static_cast<int>(bl.mc), static_cast<int>(bl.kc),
          static_cast<int>(bl.nc)};
}
}  // namespace

const std::vector<MicroKernelInfo>& compiled_micro_kernels() {
  static const std::vector<MicroKernelInfo> kernels = [] {
    std::vector<MicroKernelInfo> out;
    out.push_back(info<Kernels<float>::portable, Kernels<double>::portable>(MicroKernel::portable, "portable",
                                                                            Kernels<float>::portable_blocking));
#ifdef MINIDIFF_HAS_AVX2_KERNEL
    out.push_back(info<Kernels<float>::avx2, Kernels<double>::avx2>(MicroKernel::avx2, "avx2",
                                                                    Kernels<float>::avx2_blocking));
#endif
#ifdef MINIDIFF_HAS_AVX512_KERNEL
    out.push_back(info<Kernels<float>::avx512, Kernels<double>::avx512>(MicroKernel::avx512, "avx512",
                                                                        Kernels<float>::avx512_blocking));
#endif
    return out;
  }();
  return kernels;
}

MicroKernel best_micro_kernel() { return compiled_micro_kernels().back().kernel; }

MicroKernel micro_kernel_by_name(const std::string& name) {
  std::string known;
  for (const auto& k : compiled_micro_kernels()) {
    if (k.name == name) return k.kernel;
    known += (known.empty() ? "" : ", ") + k.name;
  }
  throw std::invalid_argument("micro_kernel: expected one of the micro-kernels of this build (" + known +
                              "), got '" + name + "'");
}

// --- the FMA probe ---------------------------------------------------------------------------------------------

namespace {
template <class Simd, int ACC>
double fma_rate(index_t iterations, int threads) {
  double slowest = 0;
  double sink = 0;
  std::vector<double> seconds(threads), sums(threads);
  parallel_for(threads, threads, [&](index_t t) {
    const auto start = std::chrono::steady_clock::now();
    sums[t] = static_cast<double>(kernels::fma_chains<Simd, ACC>(iterations));
    seconds[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  for (int t = 0; t < threads; ++t) {
    slowest = std::max(slowest, seconds[t]);
    sink += sums[t];
  }
  volatile double keep = sink;  // the sums are used: the loops stay
  (void)keep;
  return 2.0 * Simd::lanes * ACC * static_cast<double>(iterations) * threads / slowest;
}
}  // namespace

double fma_peak(MicroKernel kernel, bool f64, index_t iterations, int threads) {
  if (iterations < 1) throw std::invalid_argument("iterations: expected >= 1");
  if (threads < 1) throw std::invalid_argument("threads: expected >= 1");
  switch (kernel) {
    case MicroKernel::portable:
      return f64 ? fma_rate<kernels::Scalar1<double>, 16>(iterations, threads)
                 : fma_rate<kernels::Scalar1<float>, 16>(iterations, threads);
    case MicroKernel::avx2:
#ifdef MINIDIFF_HAS_AVX2_KERNEL
      return f64 ? fma_rate<kernels::F64x4, 12>(iterations, threads)
                 : fma_rate<kernels::F32x8, 12>(iterations, threads);
#else
      break;
#endif
    case MicroKernel::avx512:
#ifdef MINIDIFF_HAS_AVX512_KERNEL
      return f64 ? fma_rate<kernels::F64x8, 16>(iterations, threads)
                 : fma_rate<kernels::F32x16, 16>(iterations, threads);
#else
      break;
#endif
  }
  throw std::invalid_argument("micro_kernel: not compiled into this build");
}

// --- instances ---------------------------------------------------------------------------------------------------

#define MINIDIFF_GEMM_INSTANCES(T)                                                                            \
  template void gemm_v1_naive<T>(index_t, index_t, index_t, T, MatrixView<T>, MatrixView<T>, T, OutMatrix<T>); \
  template void gemm_v2_ikj<T>(index_t, index_t, index_t, T, MatrixView<T>, MatrixView<T>, T, OutMatrix<T>);   \
  template void gemm_v3_blocked<T>(index_t, index_t, index_t, T, MatrixView<T>, MatrixView<T>, T, OutMatrix<T>, \
                                   int);                                                                        \
  template void gemm_v4_packed<T>(index_t, index_t, index_t, T, MatrixView<T>, MatrixView<T>, T, OutMatrix<T>,  \
                                  int, MicroKernel);                                                            \
  template void gemm<T>(bool, bool, index_t, index_t, index_t, T, const T*, index_t, const T*, index_t, T, T*,  \
                        index_t, int);                                                                         \
  template class PackedA<T>;                                                                                    \
  template void gemm<T>(const PackedA<T>&, index_t, T, MatrixView<T>, T, OutMatrix<T>, int);                     \
  template void gemm<T>(const PackedA<T>&, index_t, T, RowTable<T>, T, OutMatrix<T>, int);                       \
  template void gemm<T>(index_t, index_t, index_t, T, MatrixView<T>, ColumnTable<T>, T, OutMatrix<T>, int);
MINIDIFF_GEMM_INSTANCES(float)
MINIDIFF_GEMM_INSTANCES(double)
#undef MINIDIFF_GEMM_INSTANCES

}  // namespace md::cpu
