// Softmax and log-softmax rows (see softmax.h): three passes over each row (max; exp and sum; normalize), all
// vectorized (vec_exp for the exponentials, OpenMP simd reductions for the max and the sums). Threads take
// blocks of whole rows, so each row is computed by the same operations on any number of threads.
#include "cpu/softmax.h"

#include <algorithm>

#include "cpu/parallel.h"
#include "cpu/runtime.h"
#include "minidiff/online_softmax.h"
#include "minidiff/vec_exp.h"

namespace md::cpu {

namespace {

// f(first, last) over blocks of rows of about kParallelGrain elements, spread over the threads.
template <typename F>
void over_row_blocks(index_t rows, index_t n, int threads, F&& f) {
  const index_t per_block = std::max<index_t>(1, kParallelGrain / std::max<index_t>(n, 1));
  const index_t blocks = ceil_div(rows, per_block);
  parallel_for(static_cast<int>(std::min<index_t>(threads, blocks)), blocks, [&](index_t block) {
    f(block * per_block, std::min(rows, (block + 1) * per_block));
  });
}

template <typename T>
T row_sum(const T* __restrict x, index_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (index_t j = 0; j < n; ++j) sum += x[j];
  return sum;
}

template <typename T>
void forward_row(const T* __restrict x, T* __restrict y, index_t n, bool log_softmax) {
  T m = negative_infinity<T>();
#pragma omp simd reduction(max : m)
  for (index_t j = 0; j < n; ++j) m = md::max(m, x[j]);
  const T origin = exp_origin(m);
  T l = 0;
#pragma omp simd reduction(+ : l)
  for (index_t j = 0; j < n; ++j) {
    y[j] = vec_exp(x[j] - origin);
    l += y[j];
  }
  if (log_softmax) {  // (x - m) - log l, as the NumPy twin: x - lse would round x near the max at the scale of m
    const T log_l = log(l);
#pragma omp simd
    for (index_t j = 0; j < n; ++j) y[j] = (x[j] - origin) - log_l;
  } else {
    const T inverse = T(1) / l;  // l = 0 (a row of -inf): 0 * inf = NaN
#pragma omp simd
    for (index_t j = 0; j < n; ++j) y[j] *= inverse;
  }
}

}  // namespace

template <typename T>
void softmax_forward(const T* x, T* y, index_t rows, index_t n, bool log_softmax, int threads) {
  over_row_blocks(rows, n, threads, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) forward_row(x + r * n, y + r * n, n, log_softmax);
  });
}

template <typename T>
void softmax_backward(const T* grad_y, const T* y, T* grad_x, index_t rows, index_t n, bool log_softmax,
                      int threads) {
  over_row_blocks(rows, n, threads, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* __restrict g = grad_y + r * n;
      const T* __restrict yr = y + r * n;
      T* __restrict gx = grad_x + r * n;
      if (log_softmax) {  // grad_x = g - softmax * sum(g), softmax = exp(y)
        const T total = row_sum(g, n);
#pragma omp simd
        for (index_t j = 0; j < n; ++j) gx[j] = g[j] - vec_exp(yr[j]) * total;
      } else {  // grad_x = y * (g - sum(g * y))
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (index_t j = 0; j < n; ++j) dot += g[j] * yr[j];
#pragma omp simd
        for (index_t j = 0; j < n; ++j) gx[j] = yr[j] * (g[j] - dot);
      }
    }
  });
}

template void softmax_forward<float>(const float*, float*, index_t, index_t, bool, int);
template void softmax_forward<double>(const double*, double*, index_t, index_t, bool, int);
template void softmax_backward<float>(const float*, const float*, float*, index_t, index_t, bool, int);
template void softmax_backward<double>(const double*, const double*, double*, index_t, index_t, bool, int);

}  // namespace md::cpu
