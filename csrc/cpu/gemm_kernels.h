// The micro-kernels of GEMM v4 (gemm.cpp), and the FMA-throughput probe each instruction set is measured by.
//
// A micro-kernel computes one MR x NR tile of C from a packed sliver of A and a packed sliver of B:
//
//     C[i][j] = alpha * sum_p a[p * MR + i] * b[p * NR + j] + beta * C[i][j]      (i < MR, j < NR, p < kc)
//
// Packed A is column by column (MR consecutive values per step p), packed B row by row (NR consecutive values
// per step p), so each step reads MR + NR numbers and does MR * NR multiply-adds: the MR x NR accumulators
// live in registers for the whole loop over p, and C is touched once, at the end.
//
// The SIMD kernels keep a row of the tile in NV vector registers (NR = NV * lanes): per step p they load NV
// vectors of B, broadcast each of the MR values of A, and issue MR * NV independent FMAs. The tile is as big
// as the register file allows: MR * NV accumulators + NV B vectors + 1 broadcast must fit (16 registers for
// AVX2, 32 for AVX-512), and MR * NV must exceed FMA latency x FMA units (4 x 2 on current x86 cores) so the
// FMA pipes never wait for a result.
#pragma once

#include "minidiff/common.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace md::cpu::kernels {

// Cache blocking of the five loops around a micro-kernel (gemm.cpp), in elements:
//   kc  depth of the packed slivers: the KC x NR sliver of B stays in L1 while A's slivers stream past it
//   mc  rows of the packed MC x KC block of A, sized to stay in L2
//   nc  columns of the packed KC x NC panel of B, sized for L3 (all threads share it)
struct Blocking {
  index_t mc, kc, nc;
};

// --- portable: plain C++ the compiler vectorizes as it can ---------------------------------------------------

template <typename T, int MR, int NR>
struct PortableKernel {
  static constexpr int mr = MR, nr = NR;

  static void run(index_t kc, T alpha, const T* __restrict a, const T* __restrict b, T beta, T* __restrict c,
                  index_t ldc) {
    T acc[MR][NR] = {};
    for (index_t p = 0; p < kc; ++p, a += MR, b += NR) {
      for (int i = 0; i < MR; ++i) {
        const T ai = a[i];
#pragma omp simd  // along the row: without it GCC vectorizes across rows and drowns in shuffles
        for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
      }
    }
    for (int i = 0; i < MR; ++i) {
      T* row = c + i * ldc;
      for (int j = 0; j < NR; ++j) row[j] = beta == T(0) ? alpha * acc[i][j] : alpha * acc[i][j] + beta * row[j];
    }
  }
};

// --- SIMD: MR x (NV vectors) register tiles over a thin wrapper of the intrinsics -------------------------------

template <class Simd, int MR, int NV>
struct SimdKernel {
  using T = typename Simd::T;
  using V = typename Simd::V;
  static constexpr int mr = MR, nr = NV * Simd::lanes;

  // Not inlined: inlined into the loops around it, GCC hoisted the broadcasts of alpha and beta out of them and
  // kept them in two of the 16 ymm registers the tile needs, spilling an accumulator to the stack: a store and a
  // load in every step's chain of FMAs (conv2d's forward took twice as long on AVX2). A call per tile costs
  // nothing against its kc steps.
  __attribute__((noinline)) static void run(index_t kc, T alpha, const T* __restrict a, const T* __restrict b,
                                            T beta, T* __restrict c, index_t ldc) {
    // C's tile is read and written only after the loop over p: ask for its lines now, so their misses (C is
    // rarely in L1 or L2) overlap the kc steps of FMAs instead of stalling the stores at the end (~10% on 512^3).
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      __builtin_prefetch(c + i * ldc, 1);
      __builtin_prefetch(c + i * ldc + nr - 1, 1);
    }
    V acc[MR][NV];
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = Simd::zero();
    }
#pragma GCC unroll 2
    for (index_t p = 0; p < kc; ++p, a += MR, b += nr) {
      V bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = Simd::loadu(b + v * Simd::lanes);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const V ai = Simd::set1(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = Simd::fma(ai, bv[v], acc[i][v]);
      }
    }
    const V va = Simd::set1(alpha), vb = Simd::set1(beta);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* out = c + i * ldc + v * Simd::lanes;
        const V scaled = Simd::mul(va, acc[i][v]);
        Simd::storeu(out, beta == T(0) ? scaled : Simd::fma(vb, Simd::loadu(out), scaled));
      }
    }
  }
};

#if defined(__AVX2__) && defined(__FMA__)
#define MINIDIFF_HAS_AVX2_KERNEL 1
struct F32x8 {
  using T = float;
  using V = __m256;
  static constexpr int lanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(T x) { return _mm256_set1_ps(x); }
  static V load(const T* p) { return _mm256_load_ps(p); }
  static V loadu(const T* p) { return _mm256_loadu_ps(p); }
  static void storeu(T* p, V x) { _mm256_storeu_ps(p, x); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
struct F64x4 {
  using T = double;
  using V = __m256d;
  static constexpr int lanes = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V set1(T x) { return _mm256_set1_pd(x); }
  static V load(const T* p) { return _mm256_load_pd(p); }
  static V loadu(const T* p) { return _mm256_loadu_pd(p); }
  static void storeu(T* p, V x) { _mm256_storeu_pd(p, x); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};
#endif

#if defined(__AVX512F__)
#define MINIDIFF_HAS_AVX512_KERNEL 1
struct F32x16 {
  using T = float;
  using V = __m512;
  static constexpr int lanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(T x) { return _mm512_set1_ps(x); }
  static V load(const T* p) { return _mm512_load_ps(p); }
  static V loadu(const T* p) { return _mm512_loadu_ps(p); }
  static void storeu(T* p, V x) { _mm512_storeu_ps(p, x); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};
struct F64x8 {
  using T = double;
  using V = __m512d;
  static constexpr int lanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V set1(T x) { return _mm512_set1_pd(x); }
  static V load(const T* p) { return _mm512_load_pd(p); }
  static V loadu(const T* p) { return _mm512_loadu_pd(p); }
  static void storeu(T* p, V x) { _mm512_storeu_pd(p, x); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};
#endif

// --- packing: an 8 x 8 block of floats transposed in registers -------------------------------------------------

#if defined(__AVX2__)
#define MINIDIFF_HAS_TRANSPOSE_8X8 1
// r[i] = rows[i][0..8) -> r[p] = (rows[0][p], ..., rows[7][p]): an 8 x 8 block of floats transposed in three
// rounds of shuffles.
inline void transpose_8x8_in_registers(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs: (r0 r1) -> a0 b0 a1 b1 | a4 b4 a5 b5, ...
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs: 4 rows' values of one column per 128-bit lane
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int p = 0; p < 4; ++p) {  // and the 128-bit halves of rows 0-3 and 4-7 joined
    t[p] = _mm256_permute2f128_ps(r[p], r[p + 4], 0x20);
    t[p + 4] = _mm256_permute2f128_ps(r[p], r[p + 4], 0x31);
  }
  for (int p = 0; p < 8; ++p) r[p] = t[p];
}

// dst[p * ldd + i] = rows[i][p] for i, p < 8: packing 8 rows of A into an 8-row sliver (ldd = 8), or 8 columns
// of B^T into a sliver of B (ldd = NR), 8 steps of p at a time (a scalar loop would store one number per
// instruction).
inline void transpose_8x8(const float* const* rows, float* dst, index_t ldd) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[i]);
  transpose_8x8_in_registers(r);
  for (int p = 0; p < 8; ++p) _mm256_storeu_ps(dst + p * ldd, r[p]);
}

// dst[p * 4 + i] = rows[i][p] for i < 4, p < 8: 8 steps of a 4-row sliver of A (the AVX2 and portable float
// tiles' rows): the 8 x 8 transpose with four zero rows, of which each column's first half is stored.
inline void transpose_4x8(const float* const* rows, float* dst) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = i < 4 ? _mm256_loadu_ps(rows[i]) : _mm256_setzero_ps();
  transpose_8x8_in_registers(r);
  for (int p = 0; p < 8; ++p) _mm_storeu_ps(dst + p * 4, _mm256_castps256_ps128(r[p]));
}
#endif

// --- the FMA probe: ACC independent accumulators, each a chain of FMAs; no loads or stores in the loop ---------

// Returns the accumulators' sum so the compiler cannot drop the loop; ACC chains hide the FMA latency.
template <class Simd, int ACC>
typename Simd::T fma_chains(index_t iterations) {
  using V = typename Simd::V;
  using T = typename Simd::T;
  V acc[ACC];
#pragma GCC unroll 32
  for (int i = 0; i < ACC; ++i) acc[i] = Simd::set1(T(i) * T(1e-3));
  const V x = Simd::set1(T(0.999999)), y = Simd::set1(T(1e-6));
  for (index_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < ACC; ++i) acc[i] = Simd::fma(acc[i], x, y);
  }
  T lanes[Simd::lanes];
  T total = 0;
  for (int i = 0; i < ACC; ++i) {
    Simd::storeu(lanes, acc[i]);
    for (int l = 0; l < Simd::lanes; ++l) total += lanes[l];
  }
  return total;
}

// The portable probe's "vector" is one scalar: std::fma-free, so it measures what plain C++ gets.
template <typename Scalar>
struct Scalar1 {
  using T = Scalar;
  using V = Scalar;
  static constexpr int lanes = 1;
  static V set1(T x) { return x; }
  static void storeu(T* p, V x) { *p = x; }
  static V fma(V a, V b, V c) { return a * b + c; }
};

}  // namespace md::cpu::kernels
