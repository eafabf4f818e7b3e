// exp(x) written so that GCC vectorizes a loop calling it: no library call, no branch. std::exp is a call the
// compiler vectorizes only under -ffast-math (which would also break the infinities softmax relies on), and
// attention and softmax take one exponential per score, group norm's SiLU one per element. The CPU kernels' exp
// (and cuda-emu's, which runs the CUDA sources as C++); on a GPU the kernels call the math library's, so
// group_norm.h includes this header only outside nvcc and NVRTC.
//
// Cody and Waite's range reduction: with n = round(x / ln 2) and r = x - n ln 2 (|r| <= ln 2 / 2),
//     exp(x) = 2^n exp(r),
// 2^n written straight into the exponent bits and exp(r) by its Taylor polynomial, degree 7 for float (the first
// term left out, r^8 / 8!, is below 6e-9 relative) and 13 for double (below 5e-18). ln 2 is split into a short
// high part, whose products with n are exact, and the rest, so r keeps its low bits. n is rounded by adding and
// subtracting 1.5 * 2^(mantissa bits): the sum's last bits then hold n itself, read without a conversion.
//
// x is first clamped to [x_lo, x_hi], where n runs from -bias (2^n's bits all zero: the result is 0) to bias + 1
// (exponent bits all ones: +inf), so the ends need no test: exp(-inf) = 0, exp(+inf) = +inf, and NaN stays NaN
// through the clamp and the arithmetic. Measured within 1 ulp of the correctly rounded exp wherever the result
// is a normal number below 2^(bias + 1/2): for float, x in [-87.3, 88.37], then +inf (the true value overflows
// from 88.72 on); below, the result is 0 or a subnormal (a softmax term 1e-38 times its row's largest is gone
// anyway). Softmax and sigmoid only ever ask for x <= 0.
#pragma once

#include <cstdint>
#include <cstring>

#include "minidiff/common.h"

namespace md {

template <typename T>
struct ExpTraits;

template <>
struct ExpTraits<float> {
  using Bits = std::uint32_t;
  static constexpr int mantissa_bits = 23, exponent_bias = 127, degree = 7;
  static constexpr float x_lo = -88.0f, x_hi = 89.0f;                     // n = -127 and 128
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;  // ln2_hi: 9 significant bits
};

template <>
struct ExpTraits<double> {
  using Bits = std::uint64_t;
  static constexpr int mantissa_bits = 52, exponent_bias = 1023, degree = 13;
  static constexpr double x_lo = -709.0, x_hi = 710.0;  // n = -1023 and 1024
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;  // 32 bits, the rest
};

template <typename To, typename From>
inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// c[k] = 1 / k!, the Taylor coefficients of exp up to degree N, computed in double at compile time.
template <typename T, int N>
struct TaylorCoefficients {
  T c[N + 1] = {};
  constexpr TaylorCoefficients() {
    double inverse = 1.0;
    for (int k = 0; k <= N; ++k) {
      inverse /= k > 0 ? k : 1;
      c[k] = T(inverse);
    }
  }
};
template <typename T>
inline constexpr TaylorCoefficients<T, ExpTraits<T>::degree> kExpTaylor{};

// sum_{k >= K} r^(k - K) / k! up to the degree by Horner's rule, c_K + r (c_{K+1} + r (...)): a recursion the
// compiler unrolls (GCC does not vectorize a loop with an inner loop over k).
template <typename T, int K = 0>
inline T taylor_exp(T r) {
  if constexpr (K == ExpTraits<T>::degree) {
    return kExpTaylor<T>.c[K];
  } else {
    return kExpTaylor<T>.c[K] + r * taylor_exp<T, K + 1>(r);
  }
}

template <typename T>
inline T vec_exp(T x) {
  using E = ExpTraits<T>;
  using Bits = typename E::Bits;  // unsigned: the integer arithmetic wraps (n < 0, and NaN's garbage) as defined
  const T xc = clamp(x, E::x_lo, E::x_hi);  // NaN goes through
  constexpr T shifter = T(1.5) * T(Bits(1) << E::mantissa_bits);
  const T t = xc * T(1.4426950408889634) + shifter;  // x / ln 2, rounded to the nearest integer in t's last bits
  const T n = t - shifter;
  const Bits n_bits = bit_cast<Bits>(t) - bit_cast<Bits>(shifter);  // n modulo 2^(bits)
  const T r = (xc - n * E::ln2_hi) - n * E::ln2_lo;
  const T two_n = bit_cast<T>(static_cast<Bits>((n_bits + E::exponent_bias) << E::mantissa_bits));
  return taylor_exp(r) * two_n;
}

}  // namespace md
