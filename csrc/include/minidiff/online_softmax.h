// The online softmax (Milakov and Gimelshein 2018), as FlashAttention uses it (Dao et al. 2022, 2023): the
// softmax of a row of scores read block by block, in one pass, with two numbers of state per row. Shared by the
// CPU kernels (csrc/cpu/attention.cpp, softmax.cpp) and the CUDA ones.
//
// After the scores s_1..s_n of a row, the state is
//     m = max_j s_j                       the running max
//     l = sum_j exp(s_j - m)              the running sum, relative to it
// and attention also keeps an accumulator a = sum_j exp(s_j - m) v_j, a row of the output before normalization.
// A new block of scores with max m_b raises the max to m' = max(m, m_b). The sums so far were taken relative to
// m, and exp(s - m') = exp(s - m) exp(m - m'), so one factor moves each of them onto m':
//     l' = l exp(m - m') + sum_{j in block} exp(s_j - m')
//     a' = a exp(m - m') + sum_{j in block} exp(s_j - m') v_j
// exactly, whatever the blocks; and with every exponent <= 0 nothing overflows. At the end
//     softmax_j = exp(s_j - m) / l,   output = a / l,   log sum_j exp(s_j) = m + log l   (the log-sum-exp, lse)
// and any probability can be recomputed later from the lse alone: p_j = exp(s_j - lse). That is all that
// FlashAttention's backward keeps of the forward's L x L probabilities.
//
// Two states over disjoint parts of a row merge the same way (merge below): any split of a row, summed apart
// (by threads, or by a block and everything before it) and merged in any order, gives the same m and l.
//
// A masked score is -inf. While every score seen is -inf, m = -inf, and exp(s - m) would be exp(-inf + inf) =
// NaN: the terms are then taken relative to 0 instead (exp_origin), where each is exp(-inf) = 0, and a sum so
// far (l = 0, a = 0) is rescaled by 0, never by exp(-inf - m'). A row with no finite score at all ends with
// l = 0: output 0 / 0 = NaN (the NumPy twin's exp(-inf + inf) = NaN), lse = -inf.
//
// Host and device code alike: on the host <cmath> and <limits>; CUDA has exp, log and the bits of infinity built in.
#pragma once

#include "minidiff/common.h"

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <cmath>
#endif
#if !defined(__CUDACC_RTC__)
#include <limits>
#endif

namespace md {

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
using std::exp;
using std::log;
#endif

template <typename T>
MD_HD T negative_infinity() {
#if defined(__CUDA_ARCH__)
  return sizeof(T) == 4 ? T(-__int_as_float(0x7f800000)) : T(-__longlong_as_double(0x7ff0000000000000LL));
#else
  return -std::numeric_limits<T>::infinity();
#endif
}

template <typename T>
struct SoftmaxState {
  T m;  // the running max (-inf before the first finite score)
  T l;  // the running sum of exp(s - exp_origin(m))
};

template <typename T>
MD_HD SoftmaxState<T> softmax_state_empty() {
  return {negative_infinity<T>(), T(0)};
}

// The point the terms exp(s - origin) are taken relative to: the running max, or 0 while it is -inf.
template <typename T>
MD_HD T exp_origin(T m) {
  return m == negative_infinity<T>() ? T(0) : m;
}

// exp(m_old - m_new), the factor that moves sums relative to m_old onto m_new >= m_old; 0 for a sum of nothing
// yet (m_old = -inf), whatever m_new is.
template <typename T>
MD_HD T rescale_factor(T m_old, T m_new) {
  return m_old == negative_infinity<T>() ? T(0) : exp(m_old - m_new);
}

// The state of the union of two disjoint parts of a row.
template <typename T>
MD_HD SoftmaxState<T> merge(SoftmaxState<T> a, SoftmaxState<T> b) {
  const T m = max(a.m, b.m);
  return {m, a.l * rescale_factor(a.m, m) + b.l * rescale_factor(b.m, m)};
}

// log sum_j exp(s_j) of the scores a state has seen (-inf for none, or only -inf).
template <typename T>
MD_HD T log_sum_exp(SoftmaxState<T> st) {
  return exp_origin(st.m) + log(st.l);
}

}  // namespace md
