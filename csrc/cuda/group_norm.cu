// Group normalization with the U-Net's fused epilogue (AdaGN scale and shift [E44], SiLU) on the GPU, forward and
// backward: the loops of csrc/cpu/group_norm.cpp as one block per (sample, group), the per-element math the CPU's,
// minidiff/group_norm.h. x (N, C, S) is C-contiguous, S the product of the spatial sizes; a group's M = (C / G) S
// numbers are contiguous.
//   forward   the statistics by two block reductions (block_sum of minidiff/device.h) in double, as the CPU's
//             two passes: mean0 = sum(x) / M, then sum(d) and sum(d^2) of d = x - mean0 (group_stats); then
//             y = act(d a + c) channel by channel, the threads over the channel's positions.
//   backward  per channel: dz = grad_y act'(z) into grad_x and the channel's sums S1 = sum(dz), S2 = sum(dz d) by two
//             block reductions, from which thread 0 writes grad_shift, grad_scale and the sample's terms of
//             grad_weight and grad_bias; the group's sums accumulate in every thread; then grad_x = dz p + d q + r.
//             A thread reads back only the dz it wrote itself. grad_weight and grad_bias are sums over the samples:
//             group_norm_param_grad_kernel adds the terms afterwards in sample order (no atomics: the same result on
//             every launch, as on the CPU).
// Arguments: the inputs; weight, bias (C,), scale, shift (N, C) and `present`, which of them are given (kWeight |
// kBias | kScale | kShift; the others are read nowhere and may be any pointers); `act` (0 identity, 1 SiLU); the
// forward's eps; the outputs; the sizes N, C, G, S (G >= 1 dividing C). mean and rstd (N, G) are double, and so are
// weight_terms and bias_terms (N, C), the backward's scratch. Launch: blocks of (32 w,) threads (whole warps), w doubles of dynamic shared memory, any 1-d grid (the
// blocks stride over the (sample, group) tasks).
// Compiled by nvcc (sm_80, sm_90), NVRTC (the instances of INSTANCES in minidiff/kernels/_cuda.py), g++ (cuda_emu.h).
#include "minidiff/device.h"
#include "minidiff/group_norm.h"

#define MD_GROUP_NORM_PARAMS(T) const T *weight, const T *bias, const T *scale, const T *shift, int present, int act
#define MD_GROUP_NORM_SIZES md::index_t n, md::index_t c, md::index_t g, md::index_t s
#define MD_GROUP_NORM_PROBLEM                                                                                   \
  const GroupNorm<T> p {                                                                                         \
    present & kWeight ? weight : nullptr, present & kBias ? bias : nullptr, present & kScale ? scale : nullptr, \
        present & kShift ? shift : nullptr, static_cast<md::Activation>(act), n, c, g, s                         \
  }

enum GroupNormInputs : int { kWeight = 1, kBias = 2, kScale = 4, kShift = 8 };

namespace {

using md::index_t;

template <typename T>
struct GroupNorm {
  const T *weight, *bias, *scale, *shift;  // nullptr where absent
  md::Activation act;
  index_t n, c, g, s;

  MD_HD index_t channels_per_group() const { return c / g; }
  MD_HD md::ChannelParams<T> params(index_t sample, index_t ch) const {
    return md::channel_params(weight, bias, scale, shift, sample * c + ch, ch);
  }
};

// The statistics of the m numbers at xs, in every thread of the block: two passes, three block sums.
template <typename T>
__device__ md::GroupStats statistics(const T* xs, index_t m, double eps, double* scratch) {
  double sum = 0.0;
  for (index_t e = threadIdx.x; e < m; e += blockDim.x) sum += static_cast<double>(xs[e]);
  sum = md::cuda::block_sum(sum, scratch);
  const double mean0 = m > 0 ? sum / static_cast<double>(m) : 0.0;
  double d = 0.0, d2 = 0.0;
  for (index_t e = threadIdx.x; e < m; e += blockDim.x) {
    const double v = static_cast<double>(xs[e]) - mean0;
    d += v;
    d2 += v * v;
  }
  d = md::cuda::block_sum(d, scratch);
  d2 = md::cuda::block_sum(d2, scratch);
  return md::group_stats(mean0, md::CenteredSums{d, d2}, m, eps);
}

}  // namespace

template <typename T>
__global__ void group_norm_forward_kernel(const T* x, MD_GROUP_NORM_PARAMS(T), double eps, T* y, double* mean,
                                          double* rstd, MD_GROUP_NORM_SIZES) {
  MD_DYNAMIC_SHARED(double, scratch);  // one partial sum per warp
  MD_GROUP_NORM_PROBLEM;
  const index_t cg = p.channels_per_group();
  for (index_t task = blockIdx.x; task < p.n * p.g; task += gridDim.x) {  // the same task in every thread
    const index_t sample = task / p.g, c0 = task % p.g * cg;
    const md::GroupStats stats = statistics(x + (sample * p.c + c0) * p.s, cg * p.s, eps, scratch);
    if (threadIdx.x == 0) {
      mean[task] = stats.mean;
      rstd[task] = stats.rstd;
    }
    const md::SplitMean<T> mu = md::split_mean<T>(stats.mean);
    for (index_t ch = c0; ch < c0 + cg; ++ch) {
      const md::ChannelAffine<T> k = md::channel_affine(stats.rstd, p.params(sample, ch));
      const index_t at = (sample * p.c + ch) * p.s;
      for (index_t i = threadIdx.x; i < p.s; i += blockDim.x)
        y[at + i] = md::group_norm_output(md::centered(x[at + i], mu), k, p.act);
    }
  }
}

template <typename T>
__global__ void group_norm_backward_kernel(const T* grad_y, const T* x, const double* mean, const double* rstd,
                                           MD_GROUP_NORM_PARAMS(T), T* grad_x, double* weight_terms,
                                           double* bias_terms, T* grad_scale, T* grad_shift, MD_GROUP_NORM_SIZES) {
  MD_DYNAMIC_SHARED(double, scratch);
  MD_GROUP_NORM_PROBLEM;
  const index_t cg = p.channels_per_group();
  for (index_t task = blockIdx.x; task < p.n * p.g; task += gridDim.x) {
    const index_t sample = task / p.g, c0 = task % p.g * cg;
    const md::SplitMean<T> mu = md::split_mean<T>(mean[task]);
    const double r = rstd[task];
    md::GroupGradSums group{0.0, 0.0};
    for (index_t ch = c0; ch < c0 + cg; ++ch) {
      const md::ChannelParams<T> cp = p.params(sample, ch);
      const md::ChannelAffine<T> k = md::channel_affine(r, cp);
      const index_t nc = sample * p.c + ch, at = nc * p.s;
      double s1 = 0.0, s2 = 0.0;
      for (index_t i = threadIdx.x; i < p.s; i += blockDim.x) {
        const T d = md::centered(x[at + i], mu);
        const T dz = grad_y[at + i] * md::activation_grad(d * k.a + k.c, p.act);
        grad_x[at + i] = dz;
        s1 += static_cast<double>(dz);
        s2 += static_cast<double>(dz) * static_cast<double>(d);
      }
      s1 = md::cuda::block_sum(s1, scratch);
      s2 = md::cuda::block_sum(s2, scratch);
      const md::ChannelGradSums sums{s1, s2};
      group = md::add_channel(group, md::x_hat_gain(cp), sums);
      if (threadIdx.x == 0) {
        if (p.shift) grad_shift[nc] = static_cast<T>(sums.s1);
        if (p.scale) grad_scale[nc] = static_cast<T>(md::grad_scale_of(sums, r, cp));
        weight_terms[nc] = md::grad_weight_term(sums, r, cp);
        bias_terms[nc] = md::grad_bias_term(sums, cp);
      }
    }
    for (index_t ch = c0; ch < c0 + cg; ++ch) {
      const md::InputGradCoefs<T> k = md::input_grad_coefs<T>(r, md::x_hat_gain(p.params(sample, ch)), group, cg * p.s);
      const index_t at = (sample * p.c + ch) * p.s;
      for (index_t i = threadIdx.x; i < p.s; i += blockDim.x)  // the positions this thread wrote dz to above
        grad_x[at + i] = md::group_norm_input_grad(grad_x[at + i], md::centered(x[at + i], mu), k);
    }
  }
}

// grad_weight[ch] = sum_n weight_terms[n, ch] and grad_bias[ch] = sum_n bias_terms[n, ch], in sample order: one
// thread per channel, any 1-d grid and block.
template <typename T>
__global__ void group_norm_param_grad_kernel(const double* weight_terms, const double* bias_terms, T* grad_weight,
                                             T* grad_bias, md::index_t n, md::index_t c) {
  for (index_t ch = index_t(blockIdx.x) * blockDim.x + threadIdx.x; ch < c; ch += index_t(gridDim.x) * blockDim.x) {
    double w = 0.0, b = 0.0;
    for (index_t sample = 0; sample < n; ++sample) {
      w += weight_terms[sample * c + ch];
      b += bias_terms[sample * c + ch];
    }
    grad_weight[ch] = static_cast<T>(w);
    grad_bias[ch] = static_cast<T>(b);
  }
}

#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define MD_GROUP_NORM_INSTANCES(T)                                                                                \
  template __global__ void group_norm_forward_kernel<T>(const T*, MD_GROUP_NORM_PARAMS(T), double, T*, double*,   \
                                                        double*, MD_GROUP_NORM_SIZES);                            \
  template __global__ void group_norm_backward_kernel<T>(const T*, const T*, const double*, const double*,        \
                                                         MD_GROUP_NORM_PARAMS(T), T*, double*, double*, T*, T*,   \
                                                         MD_GROUP_NORM_SIZES);                                    \
  template __global__ void group_norm_param_grad_kernel<T>(const double*, const double*, T*, T*, md::index_t,     \
                                                           md::index_t);
MD_GROUP_NORM_INSTANCES(float)
MD_GROUP_NORM_INSTANCES(double)
#undef MD_GROUP_NORM_INSTANCES
#endif
