// Softmax and log-softmax over the rows of a (rows, n) matrix, forward and backward:
//
//     softmax:      y_j = exp(x_j - m) / l                 grad_x = y * (g - sum_j g_j y_j)
//     log_softmax:  y_j = (x_j - m) - log l                grad_x = g - exp(y) * sum_j g_j
//
// with m = max_j x_j and l = sum_j exp(x_j - m) (minidiff/online_softmax.h; a row of -inf only: y = NaN, as the
// NumPy twins). Another axis is brought last by the caller.
#pragma once

#include "minidiff/common.h"

namespace md::cpu {

// y (rows, n) from x (rows, n), disjoint; log_softmax: the log-softmax instead.
template <typename T>
void softmax_forward(const T* x, T* y, index_t rows, index_t n, bool log_softmax, int threads);

// grad_x (rows, n) from grad_y and the forward's y; grad_x disjoint from both.
template <typename T>
void softmax_backward(const T* grad_y, const T* y, T* grad_x, index_t rows, index_t n, bool log_softmax,
                      int threads);

}  // namespace md::cpu
