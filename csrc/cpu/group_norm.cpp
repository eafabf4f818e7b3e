// Group normalization with the fused epilogue: the loops around minidiff/group_norm.h (see group_norm.h).
//
// Forward, per (sample, group): two passes for the statistics (the sum, then the centred sums), one that writes
// y channel by channel from each channel's z = d a + c. Backward, per (sample, group): one pass per channel that
// writes dz = grad_y act'(z) into grad_x and sums S1 = sum(dz), S2 = sum(dz d); then the group's coefficients;
// then one pass that turns grad_x's dz into grad_x = dz p + d q + r. The group's numbers are read three times
// each way, from L1 or L2 after the first (a U-Net group is 2-16 KiB). Sums are in double.
#include "cpu/group_norm.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/runtime.h"

namespace md::cpu {

GroupNormShape GroupNormShape::make(index_t n, index_t c, index_t g, index_t s) {
  if (n < 0 || c < 0 || s < 0) throw std::invalid_argument("x: expected sizes >= 0");
  if (g < 1 || c % g != 0)
    throw std::invalid_argument("num_groups: expected a positive divisor of the " + std::to_string(c) +
                                " channels of x, got " + std::to_string(g));
  const index_t limit = std::numeric_limits<index_t>::max();
  if ((n != 0 && c > limit / n) || (n * c != 0 && s > limit / (n * c)))
    throw std::invalid_argument("x: the sizes overflow 64-bit indexing");
  return {n, c, g, s};
}

namespace {

template <typename T>
ChannelParams<T> params_of(const GroupNormParams<T>& p, index_t n, index_t c, index_t channels) {
  return channel_params(p.weight, p.bias, p.scale, p.shift, n * channels + c, c);
}

template <typename T>
GroupStats statistics(const T* xs, index_t m, double eps) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (index_t i = 0; i < m; ++i) sum += static_cast<double>(xs[i]);
  const double mean0 = m > 0 ? sum / static_cast<double>(m) : 0.0;
  double d = 0.0, d2 = 0.0;
#pragma omp simd reduction(+ : d, d2)
  for (index_t i = 0; i < m; ++i) {
    const double v = static_cast<double>(xs[i]) - mean0;
    d += v;
    d2 += v * v;
  }
  return group_stats(mean0, CenteredSums{d, d2}, m, eps);
}

// y = act(d a + c) over one channel's positions; the activation a template argument, so the loop has no branch.
template <Activation A, typename T>
void output_channel(const T* x, T* y, index_t count, SplitMean<T> mean, ChannelAffine<T> k) {
#pragma omp simd
  for (index_t i = 0; i < count; ++i) y[i] = group_norm_output(centered(x[i], mean), k, A);
}

// dz = grad_y act'(z) into dz[], and the channel's sums S1, S2.
template <Activation A, typename T>
ChannelGradSums dz_channel(const T* grad_y, const T* x, T* dz, index_t count, SplitMean<T> mean,
                           ChannelAffine<T> k) {
  double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
  for (index_t i = 0; i < count; ++i) {
    const T d = centered(x[i], mean);
    const T g = grad_y[i] * activation_grad(d * k.a + k.c, A);
    dz[i] = g;
    s1 += static_cast<double>(g);
    s2 += static_cast<double>(g) * static_cast<double>(d);
  }
  return {s1, s2};
}

template <typename T>
void input_grad_channel(const T* x, T* grad_x, index_t count, SplitMean<T> mean, InputGradCoefs<T> k) {
#pragma omp simd
  for (index_t i = 0; i < count; ++i) grad_x[i] = group_norm_input_grad(grad_x[i], centered(x[i], mean), k);
}

// Threads worth waking: one per kParallelGrain numbers, at most one per task.
int threads_for(const GroupNormShape& s, int threads) {
  const index_t useful = std::max<index_t>(1, s.n * s.c * s.s / kParallelGrain);
  return static_cast<int>(std::min<index_t>({static_cast<index_t>(threads), useful, std::max<index_t>(1, s.n * s.g)}));
}

}  // namespace

template <typename T>
void group_norm_forward(const GroupNormShape& s, const GroupNormParams<T>& p, const T* x, T* y, double* mean,
                        double* rstd, int threads) {
  const index_t cg = s.channels_per_group(), m = s.group_size();
  parallel_for(threads_for(s, threads), s.n * s.g, [&](index_t task) {
    const index_t n = task / s.g, c0 = task % s.g * cg, first = (n * s.c + c0) * s.s;
    const GroupStats stats = statistics(x + first, m, p.eps);
    mean[task] = stats.mean;
    rstd[task] = stats.rstd;
    const SplitMean<T> mu = split_mean<T>(stats.mean);
    for (index_t c = c0; c < c0 + cg; ++c) {
      const ChannelAffine<T> k = channel_affine(stats.rstd, params_of(p, n, c, s.c));
      const index_t at = (n * s.c + c) * s.s;
      if (p.act == Activation::silu) {
        output_channel<Activation::silu>(x + at, y + at, s.s, mu, k);
      } else {
        output_channel<Activation::identity>(x + at, y + at, s.s, mu, k);
      }
    }
  });
}

template <typename T>
void group_norm_backward(const GroupNormShape& s, const GroupNormParams<T>& p, const T* grad_y, const T* x,
                         const double* mean, const double* rstd, T* grad_x, T* grad_weight, T* grad_bias,
                         T* grad_scale, T* grad_shift, int threads) {
  const index_t cg = s.channels_per_group(), m = s.group_size();
  // Each (n, c)'s terms of grad_weight and grad_bias, summed over n below in sample order.
  std::vector<double> weight_terms(grad_weight ? s.n * s.c : 0), bias_terms(grad_bias ? s.n * s.c : 0);
  parallel_for(threads_for(s, threads), s.n * s.g, [&](index_t task) {
    const index_t n = task / s.g, c0 = task % s.g * cg;
    const SplitMean<T> mu = split_mean<T>(mean[task]);
    const double r = rstd[task];
    GroupGradSums group{0.0, 0.0};
    for (index_t c = c0; c < c0 + cg; ++c) {
      const ChannelParams<T> cp = params_of(p, n, c, s.c);
      const ChannelAffine<T> k = channel_affine(r, cp);
      const index_t nc = n * s.c + c, at = nc * s.s;
      const ChannelGradSums sums =
          p.act == Activation::silu ? dz_channel<Activation::silu>(grad_y + at, x + at, grad_x + at, s.s, mu, k)
                                    : dz_channel<Activation::identity>(grad_y + at, x + at, grad_x + at, s.s, mu, k);
      group = add_channel(group, x_hat_gain(cp), sums);
      if (grad_shift) grad_shift[nc] = static_cast<T>(sums.s1);
      if (grad_scale) grad_scale[nc] = static_cast<T>(grad_scale_of(sums, r, cp));
      if (grad_weight) weight_terms[nc] = grad_weight_term(sums, r, cp);
      if (grad_bias) bias_terms[nc] = grad_bias_term(sums, cp);
    }
    for (index_t c = c0; c < c0 + cg; ++c) {
      const index_t at = (n * s.c + c) * s.s;
      const InputGradCoefs<T> k = input_grad_coefs<T>(r, x_hat_gain(params_of(p, n, c, s.c)), group, m);
      input_grad_channel(x + at, grad_x + at, s.s, mu, k);
    }
  });
  for (auto [out, terms] : {std::pair{grad_weight, &weight_terms}, std::pair{grad_bias, &bias_terms}}) {
    if (!out) continue;
    for (index_t c = 0; c < s.c; ++c) {
      double sum = 0.0;
      for (index_t n = 0; n < s.n; ++n) sum += (*terms)[n * s.c + c];
      out[c] = static_cast<T>(sum);
    }
  }
}

template void group_norm_forward<float>(const GroupNormShape&, const GroupNormParams<float>&, const float*, float*,
                                        double*, double*, int);
template void group_norm_forward<double>(const GroupNormShape&, const GroupNormParams<double>&, const double*,
                                         double*, double*, double*, int);
template void group_norm_backward<float>(const GroupNormShape&, const GroupNormParams<float>&, const float*,
                                         const float*, const double*, const double*, float*, float*, float*, float*,
                                         float*, int);
template void group_norm_backward<double>(const GroupNormShape&, const GroupNormParams<double>&, const double*,
                                          const double*, const double*, const double*, double*, double*, double*,
                                          double*, double*, int);

}  // namespace md::cpu
