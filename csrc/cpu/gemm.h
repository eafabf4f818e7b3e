// GEMM, C = alpha A B + beta C, as BLIS and GotoBLAS compute it, and the numbered teaching versions that lead
// there (a kernel lab: each is tested against NumPy, and benchmarks/bench_kernels.py times them side by side).
//
//   v1 naive       the triple loop i-j-p over a dot product; B is read down its columns
//   v2 ikj         the loops reordered i-p-j: the inner loop streams a row of B and a row of C
//   v3 blocked     v2 over cache-sized blocks of A, B and C, the row blocks spread over threads
//   v4 packed      BLIS's five loops around a register-blocked micro-kernel, on panels of A and B packed
//                  into the order the micro-kernel reads them; threads take slabs of C (gemm.cpp explains).
//                  PackedA keeps a packed A for many products (conv2d's weight, for every image).
//
// All matrices are row-major in spirit but read through views with arbitrary strides, so a transpose or a
// sliced array costs no copy; only C must have unit column stride.
#pragma once

#include <string>
#include <vector>

#include "minidiff/common.h"

namespace md::cpu {

// A read-only matrix with arbitrary strides, in elements: element (i, j) is data[i * rs + j * cs].
template <typename T>
struct MatrixView {
  const T* data;
  index_t rs, cs;

  T operator()(index_t i, index_t j) const { return data[i * rs + j * cs]; }
  const T* ptr(index_t i, index_t j) const { return data + i * rs + j * cs; }
  MatrixView block(index_t i, index_t j) const { return {data + i * rs + j * cs, rs, cs}; }
};

// A read-only matrix given row by row: row i is the contiguous array rows[i], from column col0 on. conv2d's
// implicit im2col: each row of the columns matrix is a shifted view of an image channel, so that matrix is
// never written out.
template <typename T>
struct RowTable {
  const T* const* rows;
  index_t col0 = 0;

  T operator()(index_t i, index_t j) const { return rows[i][col0 + j]; }
  const T* ptr(index_t i, index_t j) const { return rows[i] + col0 + j; }
  RowTable block(index_t i, index_t j) const { return {rows + i, col0 + j}; }
};

// The transpose of a RowTable: column j is the contiguous array cols[j], from row row0 on. conv2d's weight
// gradient, grad_W = grad_out cols^T, reads the implicit columns matrix transposed this way.
template <typename T>
struct ColumnTable {
  const T* const* cols;
  index_t row0 = 0;

  T operator()(index_t i, index_t j) const { return cols[j][row0 + i]; }
  const T* ptr(index_t i, index_t j) const { return cols[j] + row0 + i; }
  ColumnTable block(index_t i, index_t j) const { return {cols + j, row0 + i}; }
};

// op(M) of a row-major matrix with leading dimension ld: M itself, or its transpose (no copy either way).
template <typename T>
MatrixView<T> row_major(const T* data, index_t ld, bool transposed = false) {
  return transposed ? MatrixView<T>{data, 1, ld} : MatrixView<T>{data, ld, 1};
}

// The destination: row-major with leading dimension ld >= n (it may be a block of a wider matrix).
template <typename T>
struct OutMatrix {
  T* data;
  index_t ld;

  T& operator()(index_t i, index_t j) const { return data[i * ld + j]; }
  OutMatrix block(index_t i, index_t j) const { return {data + i * ld + j, ld}; }
};

// Every version computes C = alpha A B + beta C with A (m x k), B (k x n), C (m x n). As in BLAS, beta == 0
// means C is only written: whatever it held (NaN included) does not reach the result. k == 0 gives beta C.
template <typename T>
void gemm_v1_naive(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                   OutMatrix<T> c);
template <typename T>
void gemm_v2_ikj(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                 OutMatrix<T> c);
template <typename T>
void gemm_v3_blocked(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                     OutMatrix<T> c, int threads);

// The register-blocked micro-kernels of v4. Which ones exist depends on the compiler flags of this build
// (-march=native on a machine with AVX-512 gives all three); the portable one, plain C++ loops the compiler
// vectorizes as it can, always exists.
enum class MicroKernel { portable, avx2, avx512 };

struct MicroKernelInfo {
  MicroKernel kernel;
  std::string name;              // "portable", "avx2", "avx512"
  int mr_f32, nr_f32;            // the register tile: mr rows of C by nr columns, float32
  int mr_f64, nr_f64;            // and float64
  int mc, kc, nc;                // the cache blocks of float32 (float64 halves kc: the same bytes)
};

const std::vector<MicroKernelInfo>& compiled_micro_kernels();  // best last
MicroKernel best_micro_kernel();
MicroKernel micro_kernel_by_name(const std::string& name);  // std::invalid_argument if not compiled here

template <typename T>
void gemm_v4_packed(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, MatrixView<T> b, T beta,
                    OutMatrix<T> c, int threads, MicroKernel kernel);

// The GEMM the other kernels call: v4 with the best micro-kernel; trans_a / trans_b read A or B transposed
// (BLAS's flags, for row-major A (lda) and B (ldb)).
template <typename T>
void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
          const T* b, index_t ldb, T beta, T* c, index_t ldc, int threads);

template <typename T>
class PackedA;
template <typename T, class ViewB>
void gemm_prepacked(const PackedA<T>& a, index_t n, T alpha, ViewB b, T beta, OutMatrix<T> c, int threads);

// A, packed once into the order v4's best micro-kernel reads it, for many products A B with different B (a
// convolution's weight, the same for every image of a batch).
template <typename T>
class PackedA {
 public:
  PackedA(index_t m, index_t k, MatrixView<T> a);
  index_t rows() const { return m_; }
  index_t depth() const { return k_; }

 private:
  template <typename U, class ViewB>
  friend void gemm_prepacked(const PackedA<U>& a, index_t n, U alpha, ViewB b, U beta, OutMatrix<U> c, int threads);
  index_t m_, k_;
  MicroKernel kernel_;
  std::vector<T> data_;  // m rounded up to whole tiles, times k: block (ic, pc) at pc * m_padded + ic * kc
};

// C = alpha A B + beta C for a prepacked A (m x k): B (k x n), C (m x n).
template <typename T>
void gemm(const PackedA<T>& a, index_t n, T alpha, MatrixView<T> b, T beta, OutMatrix<T> c, int threads);
template <typename T>
void gemm(const PackedA<T>& a, index_t n, T alpha, RowTable<T> b, T beta, OutMatrix<T> c, int threads);

// C = alpha A B + beta C (v4, best micro-kernel) for a B given column by column.
template <typename T>
void gemm(index_t m, index_t n, index_t k, T alpha, MatrixView<T> a, ColumnTable<T> b, T beta, OutMatrix<T> c,
          int threads);

// The floating-point peak of this core for a micro-kernel's instruction set: `iterations` rounds of
// independent fused multiply-adds on registers (no memory traffic), on `threads` threads at once.
// Returns FLOP/s summed over the threads (one FMA = 2 FLOP per lane).
double fma_peak(MicroKernel kernel, bool f64, index_t iterations, int threads);

}  // namespace md::cpu
