// GEMM's per-element math, C = alpha A B + beta C, shared by the CPU (csrc/cpu/gemm.cpp) and the GPU
// (csrc/cuda/gemm.cu, csrc/include/minidiff/gemm_tile.h).
#pragma once

#include "minidiff/common.h"

namespace md {

// One element of C from its dot product acc = sum_p A[i, p] B[p, j]: alpha acc + beta C[i, j]. As in BLAS,
// beta == 0 means C is not read: whatever it held (NaN included) does not reach the result.
template <typename T>
MD_HD T gemm_epilogue(T acc, T alpha, T beta, const T* c) {
  return beta == T(0) ? alpha * acc : alpha * acc + beta * *c;
}

// A matrix with arbitrary strides, in elements: element (i, j) is data[i rs + j cs]. T may be const.
template <typename T>
struct StridedMatrix {
  T* data;
  index_t rs, cs;

  MD_HD T* ptr(index_t i, index_t j) const { return data + i * rs + j * cs; }
  MD_HD T& operator()(index_t i, index_t j) const { return *ptr(i, j); }
};

}  // namespace md
