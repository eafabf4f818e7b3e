// 2-D convolution (cross-correlation), NCHW, forward and backward, by per-image im2col into the packed GEMM.
//
//     out[n, o, y, x] = sum_{c, i, j} x_pad[n, c, y * sh + i, x * sw + j] * weight[o, c, i, j]
//
// For one image the sum is a matrix product: with cols[(c, i, j), (y, x)] = x_pad[c, y sh + i, x sw + j]
// (im2col: C KH KW rows, HO WO columns), out_n (O x HO WO) = W (O x C KH KW) cols. The backward is two more:
// grad_W += grad_out_n cols^T, and grad_cols = W^T grad_out_n, which col2im adds back onto the pixels each
// column was read from (the adjoint of im2col). conv2d.cpp explains the memory and thread layout.
#pragma once

#include "minidiff/common.h"

namespace md::cpu {

// The sizes of one convolution, validated: every size >= 0, kernel and stride >= 1, padding >= 0, the kernel
// no larger than the padded input, and no size or product of sizes past 64-bit indexing (else
// std::invalid_argument naming the argument).
struct Conv2dShape {
  index_t n, c, h, w;      // x (N, C, H, W)
  index_t o, kh, kw;       // weight (O, C, KH, KW)
  index_t sh, sw, ph, pw;  // stride and padding, (height, width)
  index_t ho, wo;          // out (N, O, HO, WO)

  static Conv2dShape make(index_t n, index_t c, index_t h, index_t w, index_t o, index_t kh, index_t kw,
                          index_t sh, index_t sw, index_t ph, index_t pw);
};

// out (N, O, HO, WO) = x (N, C, H, W) (*) weight (O, C, KH, KW); all C-contiguous, out disjoint from the inputs.
template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* weight, T* out, int threads);

// grad_x (N, C, H, W) and grad_weight (O, C, KH, KW) from grad_out (N, O, HO, WO); both outputs overwritten.
// Either may be nullptr: that gradient is not computed (a first layer's input, a frozen weight), and the other
// comes out the same. The result does not depend on `threads` (bit for bit): grad_weight sums images in fixed
// groups.
template <typename T>
void conv2d_backward(const Conv2dShape& s, const T* grad_out, const T* x, const T* weight, T* grad_x,
                     T* grad_weight, int threads);

}  // namespace md::cpu
