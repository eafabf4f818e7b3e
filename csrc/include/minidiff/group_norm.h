// The math of group normalization with the U-Net's fused epilogue, shared by the CPU and CUDA kernels.
//
// For sample n and a group of C / G channels holding M = (C / G) * spatial numbers (x_hat is per group):
//     x_hat = (x - mean) rstd,  rstd = 1 / sqrt(var + eps)       (biased variance over the M numbers)
//     u     = x_hat w[c] + b[c]                                   (the per-channel affine)
//     z     = u (1 + scale[n, c]) + shift[n, c]                   (AdaGN [E44]; scale = shift = 0 without it)
//     y     = act(z),  act = identity or SiLU(z) = z sigmoid(z)
// Per channel this is z = (x - mean) a + c, with a = rstd w (1 + scale) and c = b (1 + scale) + shift: one
// multiply-add per element after the statistics.
//
// Statistics, in double for float32 and float64 alike, by the corrected two-pass algorithm (Chan, Golub &
// LeVeque 1983): a first pass gives mean0 = sum(x) / M; a second sums d = x - mean0 and d^2, and
//     mean = mean0 + sum(d) / M,   var = (sum(d^2) - sum(d)^2 / M) / M.
// Why not the one-pass E[x^2] - E[x]^2: it cancels. At mean 1e4 and std 1, E[x^2] ~ 1e8 and the variance is 1e-8
// of it: float32 keeps no digit of it, double about 8, which is not enough for float64. The second pass sums
// squares of centred numbers instead, with no cancellation, and sum(d) corrects the rounding of mean0 (it makes
// the mean of a constant group exactly that constant, so its x_hat is 0). Why not Welford's one-pass update: it
// divides at every element and chains each update on the previous one, so it does not vectorize; a group is a
// few thousand numbers, still in L1 or L2 for the second pass, so the second pass costs little. Why double for
// float32: a float32 sum of M numbers rounds at each of M additions (up to M 2^-24 relative); in double the sum
// of a few million float32 numbers is exact to far below float32's resolution. A CUDA block runs the same two
// passes as two block reductions.
//
// The mean is handed to the elementwise passes split in two, mean = hi + lo with hi the T nearest to it: for x
// within a factor 2 of hi, x - hi is exact (Sterbenz), so (x - hi) - lo rounds once. With a float32 mean alone,
// x - mean would be off by up to half an ulp of the mean (5e-4 at 1e4), for every x_hat of the group.
#pragma once

#include "minidiff/common.h"

#if !defined(__CUDACC_RTC__)
#include <math.h>  // exp, expf, sqrt (NVRTC has them built in)
#endif
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "minidiff/vec_exp.h"  // CPU only: see exp_nonpositive
#endif

namespace md {

enum class Activation : int { identity = 0, silu = 1 };

// e^v for v <= 0, all that sigmoid needs. On a GPU: the math library's exp (hardware-assisted). On the CPU:
// vec_exp (minidiff/vec_exp.h), the exp attention and softmax use, in a form the compiler vectorizes; glibc's exp
// and expf are calls it vectorizes only under -ffast-math, which made the SiLU epilogue cost five times the rest of
// the kernel. Its clamp (and sigmoid's selects) become vector blends because CMakeLists.txt compiles the kernels
// with -fno-trapping-math.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
MD_HD double exp_nonpositive(double v) { return exp(v); }
MD_HD float exp_nonpositive(float v) { return expf(v); }
#else
template <typename T>
inline T exp_nonpositive(T v) {
  return vec_exp(v);
}
#endif

// sigmoid(z) = 1 / (1 + e^-z) without overflow: with e = e^-|z| in (0, 1] and r = 1 / (1 + e) = sigmoid(|z|),
// sigmoid(z) = r for z >= 0 and e r (= 1 - r) for z < 0 (as minidiff.kernels.activation.stable_sigmoid).
template <typename T>
MD_HD T sigmoid(T z) {
  const T e = exp_nonpositive(z < T(0) ? z : -z);
  const T r = T(1) / (T(1) + e);
  return z < T(0) ? e * r : r;
}

template <typename T>
MD_HD T activate(T z, Activation act) {
  return act == Activation::silu ? z * sigmoid(z) : z;
}

// dy/dz: 1, or SiLU'(z) = s (1 + z (1 - s)) with s = sigmoid(z).
template <typename T>
MD_HD T activation_grad(T z, Activation act) {
  if (act != Activation::silu) return T(1);
  const T s = sigmoid(z);
  return s * (T(1) + z * (T(1) - s));
}

// --- statistics of one group -------------------------------------------------------------------------------------

// The second pass's sums over the M numbers of a group, d = x - mean0.
struct CenteredSums {
  double d, d2;  // sum(d), sum(d^2)
};

struct GroupStats {
  double mean, rstd;
};

// From mean0 (the first pass's sum / M) and the second pass's sums. An empty group (M = 0) gets mean 0 and
// rstd 1 / sqrt(eps): it has no numbers to normalize.
MD_HD GroupStats group_stats(double mean0, CenteredSums sums, index_t count, double eps) {
  if (count == 0) return {0.0, 1.0 / sqrt(eps)};
  const double m = static_cast<double>(count);
  const double var = max((sums.d2 - sums.d * sums.d / m) / m, 0.0);  // >= 0 in exact arithmetic
  return {mean0 + sums.d / m, 1.0 / sqrt(var + eps)};
}

// The mean as hi + lo (hi the T nearest to it), and x - mean from it with one rounding (see the top).
template <typename T>
struct SplitMean {
  T hi, lo;
};

template <typename T>
MD_HD SplitMean<T> split_mean(double mean) {
  const T hi = static_cast<T>(mean);
  return {hi, static_cast<T>(mean - static_cast<double>(hi))};
}

template <typename T>
MD_HD T centered(T x, SplitMean<T> mean) {
  return (x - mean.hi) - mean.lo;
}

// --- forward -----------------------------------------------------------------------------------------------------

// The optional per-channel and per-sample factors of one (n, c): 1, 0, 0, 0 where absent.
template <typename T>
struct ChannelParams {
  T w, b, scale, shift;
};

// Channel ch of sample n from the optional inputs, nullptr where absent: weight and bias (C,), scale and shift (N, C),
// C-contiguous (nc = n C + ch).
template <typename T>
MD_HD ChannelParams<T> channel_params(const T* weight, const T* bias, const T* scale, const T* shift, index_t nc,
                                      index_t ch) {
  return {weight ? weight[ch] : T(1), bias ? bias[ch] : T(0), scale ? scale[nc] : T(0), shift ? shift[nc] : T(0)};
}

// z = d a + c for d = x - mean of this channel of this sample.
template <typename T>
struct ChannelAffine {
  T a, c;
};

template <typename T>
MD_HD ChannelAffine<T> channel_affine(double rstd, ChannelParams<T> p) {
  const double gain = 1.0 + static_cast<double>(p.scale);  // AdaGN's (1 + scale)
  return {static_cast<T>(rstd * static_cast<double>(p.w) * gain),
          static_cast<T>(static_cast<double>(p.b) * gain + static_cast<double>(p.shift))};
}

template <typename T>
MD_HD T group_norm_output(T d, ChannelAffine<T> k, Activation act) {
  return activate(d * k.a + k.c, act);
}

// --- backward ----------------------------------------------------------------------------------------------------
//
// With dz = dy act'(z) and, over one channel's positions of one sample,
//     S1 = sum(dz),  S2 = sum(dz d)   (d = x - mean, so sum(dz x_hat) = rstd S2):
//     grad_shift[n, c] = S1 (as it is),   grad_scale[n, c] = sum(dz u) = w rstd S2 + b S1,
//     grad_w[c] = sum_n (1 + scale) rstd S2,   grad_b[c] = sum_n (1 + scale) S1.
// The gradient of x_hat is g = dz w (1 + scale); through x_hat = (x - mean) rstd over the group's M numbers,
//     grad_x = rstd (g - mean(g) - x_hat mean(g x_hat))
//            = dz [rstd w (1 + scale)] + d [-rstd^3 sum_c(w (1 + scale) S2) / M] + [-rstd sum_c(w (1 + scale) S1) / M],
// one multiply and two multiply-adds per element: grad_x = dz p + d q + r.

struct ChannelGradSums {
  double s1, s2;  // sum(dz), sum(dz d) over one channel's positions of one sample
};

// w (1 + scale): the factor from dz to the gradient of x_hat.
template <typename T>
MD_HD double x_hat_gain(ChannelParams<T> p) {
  return static_cast<double>(p.w) * (1.0 + static_cast<double>(p.scale));
}

template <typename T>
MD_HD double grad_scale_of(ChannelGradSums s, double rstd, ChannelParams<T> p) {
  return static_cast<double>(p.w) * rstd * s.s2 + static_cast<double>(p.b) * s.s1;
}

// This sample's terms of grad_w[c] and grad_b[c] (summed over n by the caller, in a fixed order).
template <typename T>
MD_HD double grad_weight_term(ChannelGradSums s, double rstd, ChannelParams<T> p) {
  return (1.0 + static_cast<double>(p.scale)) * rstd * s.s2;
}

template <typename T>
MD_HD double grad_bias_term(ChannelGradSums s, ChannelParams<T> p) {
  return (1.0 + static_cast<double>(p.scale)) * s.s1;
}

// The group's sums sum_c(w (1 + scale) S1) and sum_c(w (1 + scale) S2), accumulated channel by channel.
struct GroupGradSums {
  double g, gd;
};

MD_HD GroupGradSums add_channel(GroupGradSums acc, double gain, ChannelGradSums s) {
  return {acc.g + gain * s.s1, acc.gd + gain * s.s2};
}

template <typename T>
struct InputGradCoefs {
  T p, q, r;  // grad_x = dz p + d q + r
};

template <typename T>
MD_HD InputGradCoefs<T> input_grad_coefs(double rstd, double gain, GroupGradSums sums, index_t count) {
  const double m = static_cast<double>(count);
  return {static_cast<T>(rstd * gain), static_cast<T>(-rstd * rstd * rstd * sums.gd / m),
          static_cast<T>(-rstd * sums.g / m)};
}

template <typename T>
MD_HD T group_norm_input_grad(T dz, T d, InputGradCoefs<T> k) {
  return dz * k.p + (d * k.q + k.r);
}

}  // namespace md
