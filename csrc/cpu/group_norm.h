// Group normalization with the U-Net's fused epilogue (AdaGN scale and shift [E44], SiLU), forward and backward,
// on x (N, C, S): C-contiguous, S the product of the spatial sizes (any number of them, S = 1 for x (N, C)).
//
//     y = act(((x - mean) rstd w[c] + b[c]) (1 + scale[n, c]) + shift[n, c])   per group of C / G channels
//
// The math (statistics, per-element forward and backward) is minidiff/group_norm.h, shared with CUDA; here are
// the loops. One task per (sample, group): its (C / G) S numbers are contiguous, its statistics and its share of
// grad_x need no other group's. The tasks spread over OpenMP threads; grad_weight and grad_bias, sums over the
// samples, add per-sample terms afterwards in sample order, so every result is the same on any thread count.
#pragma once

#include "minidiff/group_norm.h"

namespace md::cpu {

struct GroupNormShape {
  index_t n, c, g, s;  // x (N, C, S) in G groups of C / G channels

  // Checked: n, c, s >= 0, g >= 1 dividing c, n c s within 64-bit indexing (else std::invalid_argument).
  static GroupNormShape make(index_t n, index_t c, index_t g, index_t s);
  index_t channels_per_group() const { return c / g; }
  index_t group_size() const { return c / g * s; }  // M, the numbers one mean and variance are taken over
};

// The optional inputs, nullptr where absent (weight 1, bias 0, scale 0, shift 0): weight and bias (C,), scale and
// shift (N, C), all C-contiguous.
template <typename T>
struct GroupNormParams {
  const T* weight;
  const T* bias;
  const T* scale;
  const T* shift;
  double eps;
  Activation act;
};

// y (N, C, S); mean and rstd (N, G), in double (the backward recomputes x_hat from them, see group_norm.h).
template <typename T>
void group_norm_forward(const GroupNormShape& s, const GroupNormParams<T>& p, const T* x, T* y, double* mean,
                        double* rstd, int threads);

// From grad_y (N, C, S), x, and the forward's mean and rstd: grad_x (N, C, S), grad_weight and grad_bias (C,),
// grad_scale and grad_shift (N, C), all overwritten; any but grad_x may be nullptr (not wanted). grad_x must not
// overlap an input: it holds dz = grad_y act'(z) between the two passes over a group.
template <typename T>
void group_norm_backward(const GroupNormShape& s, const GroupNormParams<T>& p, const T* grad_y, const T* x,
                         const double* mean, const double* rstd, T* grad_x, T* grad_weight, T* grad_bias,
                         T* grad_scale, T* grad_shift, int threads);

}  // namespace md::cpu
