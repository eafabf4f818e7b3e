// C = alpha A B + beta C for the small tiles of attention (a few hundred rows and columns at most, in L1 or L2),
// read in place: no packing.
//
// GEMM v4 (gemm.h) packs A and B into the order its micro-kernel reads, which pays for itself when each packed
// number serves hundreds of multiply-adds. In attention's products each serves few (one side is the head
// dimension, 32 or 64), and with v4 packing took a third of the backward's time. Here the micro-kernel reads the
// operands where they are: a row of B is NV vectors loaded from its contiguous row, and each A(i, p) is broadcast
// from memory, so A may be any strided view, a row-major tile or its transpose (P^T, dS^T), at no cost. On the
// attention products (64-128 rows, 32-128 columns, depth 32-128, float32, AVX2) it measured faster than v4.
//
// The register tile is MR x NV vectors (6 x 16 floats: 12 accumulators, 2 rows of B and 1 broadcast of A in the
// 16 registers of AVX2), written with GCC's vector extensions: the compiler picks the instructions (AVX2 with
// FMA here, SSE or NEON elsewhere). Edges: fewer rows by the same kernel with MR = 1..5, a column tail of one
// vector, then plain loops for the last few columns. Every element of C is one sum over p in order: the same
// operations however the calls are spread over threads.
#pragma once

#include <algorithm>
#include <cstring>

#include "minidiff/common.h"

namespace md::cpu {

namespace tile {

constexpr int kVectorBytes = 32;
constexpr int MR = 6, NV = 2;

template <typename T>
struct Vector;
template <>
struct Vector<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct Vector<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
};

template <typename T>
using V = typename Vector<T>::type;
template <typename T>
constexpr int kLanes = kVectorBytes / sizeof(T);

template <typename T>
inline V<T> load(const T* p) {
  V<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, V<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Rows x (Nv vectors) of C from A(i, p) = a[i a_rs + p a_cs] and the rows of B.
template <typename T, int Rows, int Nv>
inline void block(index_t k, T alpha, const T* a, index_t a_rs, index_t a_cs, const T* b, index_t ldb, T beta, T* c,
                  index_t ldc) {
  V<T> acc[Rows][Nv];
  for (int i = 0; i < Rows; ++i) {
    for (int v = 0; v < Nv; ++v) acc[i][v] = V<T>{};
  }
  for (index_t p = 0; p < k; ++p) {
    V<T> bp[Nv];
    for (int v = 0; v < Nv; ++v) bp[v] = load(b + p * ldb + v * kLanes<T>);
    for (int i = 0; i < Rows; ++i) {
      const T a_ip = a[i * a_rs + p * a_cs];
      for (int v = 0; v < Nv; ++v) acc[i][v] += a_ip * bp[v];
    }
  }
  for (int i = 0; i < Rows; ++i) {
    for (int v = 0; v < Nv; ++v) {
      T* out = c + i * ldc + v * kLanes<T>;
      store(out, beta == T(0) ? alpha * acc[i][v] : alpha * acc[i][v] + beta * load(out));
    }
  }
}

template <typename T, int Nv>
inline void rows_block(index_t rows, index_t k, T alpha, const T* a, index_t a_rs, index_t a_cs, const T* b,
                       index_t ldb, T beta, T* c, index_t ldc) {
  switch (rows) {
    case 6: return block<T, 6, Nv>(k, alpha, a, a_rs, a_cs, b, ldb, beta, c, ldc);
    case 5: return block<T, 5, Nv>(k, alpha, a, a_rs, a_cs, b, ldb, beta, c, ldc);
    case 4: return block<T, 4, Nv>(k, alpha, a, a_rs, a_cs, b, ldb, beta, c, ldc);
    case 3: return block<T, 3, Nv>(k, alpha, a, a_rs, a_cs, b, ldb, beta, c, ldc);
    case 2: return block<T, 2, Nv>(k, alpha, a, a_rs, a_cs, b, ldb, beta, c, ldc);
    default: return block<T, 1, Nv>(k, alpha, a, a_rs, a_cs, b, ldb, beta, c, ldc);
  }
}

}  // namespace tile

template <typename T>
void tile_gemm(index_t m, index_t n, index_t k, T alpha, const T* a, index_t a_rs, index_t a_cs, const T* b,
               index_t ldb, T beta, T* c, index_t ldc) {
  static_assert(tile::MR == 6, "rows_block dispatches 1..6 rows");
  constexpr index_t lanes = tile::kLanes<T>;
  for (index_t i0 = 0; i0 < m; i0 += tile::MR) {
    const index_t rows = std::min<index_t>(tile::MR, m - i0);
    const T* a_rows = a + i0 * a_rs;
    T* c_rows = c + i0 * ldc;
    index_t j = 0;
    for (; j + tile::NV * lanes <= n; j += tile::NV * lanes)
      tile::rows_block<T, tile::NV>(rows, k, alpha, a_rows, a_rs, a_cs, b + j, ldb, beta, c_rows + j, ldc);
    for (; j + lanes <= n; j += lanes)
      tile::rows_block<T, 1>(rows, k, alpha, a_rows, a_rs, a_cs, b + j, ldb, beta, c_rows + j, ldc);
    for (; j < n; ++j) {  // the last columns, fewer than a vector
      for (index_t i = 0; i < rows; ++i) {
        T sum = 0;
        for (index_t p = 0; p < k; ++p) sum += a_rows[i * a_rs + p * a_cs] * b[p * ldb + j];
        T& out = c_rows[i * ldc + j];
        out = beta == T(0) ? alpha * sum : alpha * sum + beta * out;
      }
    }
  }
}

}  // namespace md::cpu
