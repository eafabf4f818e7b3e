// Attention forward and backward over tiles (see attention.h for the mathematics).
//
// The products are tile_gemm's (tile_gemm.h: register-blocked, operands read in place); K_j and V_j are
// transposed once per tile so that every product reads its right-hand operand by rows.
//
// Forward: a unit of work is one tile of queries of one batch element; it walks the key tiles in order:
//   S = Q_i K_j^T, scaled and masked row by row;
//   each row's online-softmax state takes in the tile's scores (their max rescales what came before), and the
//   scores become P = exp(S - m) in place (vec_exp: a vectorized exp);
//   O_i = O_i exp(m_old - m_new) + P V_j, accumulated in place in `out`.
// At the end each row is divided by its sum l, and lse = m + log l is saved.
//
// Backward: a unit is a group of key tiles of one batch element; for each of its key tiles K_j, V_j, it walks
// every query tile, recomputes P from the lse, and accumulates dV_j and dK_j in place; dQ_i is summed over the
// group's key tiles into the unit's own dQ. Units of one batch element write disjoint dK, dV rows; their dQ are
// partial sums, added afterwards in group order. Groups are one per batch element unless there are fewer batch
// elements than kMinUnits; their number depends on the sizes only, so every number is computed by the same
// operations on any number of threads.
#include "cpu/attention.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "cpu/gemm_kernels.h"
#include "cpu/parallel.h"
#include "cpu/tile_gemm.h"
#include "minidiff/online_softmax.h"
#include "minidiff/vec_exp.h"

namespace md::cpu {

AttentionShape AttentionShape::make(index_t batch, index_t lq, index_t lk, index_t d, index_t dv) {
  for (auto [v, what] : {std::pair{batch, "batch"}, {lq, "Lq"}, {lk, "Lk"}, {d, "D"}, {dv, "Dv"}}) {
    if (v < 0) throw std::invalid_argument(std::string(what) + ": expected >= 0, got " + std::to_string(v));
  }
  // Every buffer the kernels index: q, k, v, out, the mask matrices, dQ's partial sums (at most kMinUnits of them
  // per batch element, see below): all below 2^63 / 64 elements.
  constexpr index_t limit = std::numeric_limits<index_t>::max() / 64;
  const index_t largest_side = std::max({lq, lk, d, dv, index_t(1)});
  const double product = static_cast<double>(std::max<index_t>(batch, 1)) * largest_side * largest_side;
  if (product >= static_cast<double>(limit))
    throw std::invalid_argument("the sizes overflow 64-bit indexing");
  return {batch, lq, lk, d, dv};
}

namespace {

constexpr index_t kQueryTile = 64;  // rows of a tile of scores
constexpr index_t kKeyTile = 128;   // columns: a float64 tile is 64 KiB, in L2 beside the tiles of Q, K, V
constexpr index_t kMinUnits = 8;    // the backward splits each batch element's keys until there are this many units

// Each thread's scratch buffers, reused from call to call: one per Scratch, for each T.
enum class Scratch { scores, grad_scores, delta, keys_t, values_t };

template <typename T, Scratch which>
AlignedBuffer<T>& scratch() {
  thread_local AlignedBuffer<T> buffer;
  return buffer;
}

// dst (cols x rows) = src^T for a C-contiguous src (rows x cols): K_j^T and V_j^T, so that the products with them
// read rows (tile_gemm reads B by rows). 8 x 8 blocks of floats are transposed in registers (a scalar loop was a
// quarter of the backward's time at L = 64).
template <typename T>
void transpose(index_t rows, index_t cols, const T* __restrict src, T* __restrict dst) {
  index_t r0 = 0;
#ifdef MINIDIFF_HAS_TRANSPOSE_8X8
  if constexpr (std::is_same_v<T, float>) {
    for (; r0 + 8 <= rows; r0 += 8) {
      const float* block_rows[8];
      for (int i = 0; i < 8; ++i) block_rows[i] = src + (r0 + i) * cols;
      index_t c = 0;
      for (; c + 8 <= cols; c += 8) {
        kernels::transpose_8x8(block_rows, dst + c * rows + r0, rows);
        for (int i = 0; i < 8; ++i) block_rows[i] += 8;
      }
      for (; c < cols; ++c) {
        for (index_t r = r0; r < r0 + 8; ++r) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
#endif
  for (index_t r = r0; r < rows; ++r) {
    for (index_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

// The mask's row for query i of batch element b from key j0 on (nullptr: no mask).
const std::uint8_t* mask_row(AttentionMask mask, const AttentionShape& s, index_t b, index_t i, index_t j0) {
  return mask.data == nullptr ? nullptr : mask.data + (mask.index[b] * s.lq + i) * s.lk + j0;
}

// A row of scores from the products q_i . k_j: s = scale (q_i . k_j), or -inf where the mask says no; returns
// the row's max (-inf for an empty or fully masked row).
template <typename T>
T scale_and_mask(T* __restrict row, index_t cols, T scale, const std::uint8_t* __restrict keep) {
  const T minus_inf = negative_infinity<T>();
  T m = minus_inf;
  if (keep == nullptr) {
#pragma omp simd reduction(max : m)
    for (index_t c = 0; c < cols; ++c) {
      row[c] *= scale;
      m = md::max(m, row[c]);
    }
  } else {
#pragma omp simd reduction(max : m)
    for (index_t c = 0; c < cols; ++c) {
      row[c] = keep[c] ? row[c] * scale : minus_inf;
      m = md::max(m, row[c]);
    }
  }
  return m;
}

// row[c] = exp(row[c] - origin); returns the sum of the new row.
template <typename T>
T exp_and_sum(T* __restrict row, index_t cols, T origin) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (index_t c = 0; c < cols; ++c) {
    row[c] = vec_exp(row[c] - origin);
    sum += row[c];
  }
  return sum;
}

template <typename T>
void scale_row(T* __restrict row, index_t cols, T factor) {
#pragma omp simd
  for (index_t c = 0; c < cols; ++c) row[c] *= factor;
}

// One tile of queries [i0, i0 + rows) of batch element b, every key tile in turn.
template <typename T>
void forward_tile(const AttentionShape& s, index_t b, index_t i0, const T* q, const T* k, const T* v,
                  AttentionMask mask, T scale, T* out, T* lse) {
  const index_t rows = std::min(kQueryTile, s.lq - i0);
  const T* q_tile = q + (b * s.lq + i0) * s.d;  // (rows, D)
  T* o = out + (b * s.lq + i0) * s.dv;          // (rows, Dv): the accumulator, then the output
  T* scores = scratch<T, Scratch::scores>().get(rows * std::min(kKeyTile, s.lk));
  T* k_t = scratch<T, Scratch::keys_t>().get(s.d * std::min(kKeyTile, s.lk));
  SoftmaxState<T> state[kQueryTile];
  for (index_t r = 0; r < rows; ++r) state[r] = softmax_state_empty<T>();
  for (index_t j0 = 0; j0 < s.lk; j0 += kKeyTile) {
    const index_t cols = std::min(kKeyTile, s.lk - j0);
    const T* k_tile = k + (b * s.lk + j0) * s.d;   // (cols, D)
    const T* v_tile = v + (b * s.lk + j0) * s.dv;  // (cols, Dv)
    transpose(cols, s.d, k_tile, k_t);                                                          // (D, cols)
    tile_gemm<T>(rows, cols, s.d, T(1), q_tile, s.d, 1, k_t, cols, T(0), scores, cols);  // Q K^T
    for (index_t r = 0; r < rows; ++r) {
      T* row = scores + r * cols;
      const T m_new = md::max(state[r].m, scale_and_mask(row, cols, scale, mask_row(mask, s, b, i0 + r, j0)));
      const T factor = rescale_factor(state[r].m, m_new);
      // The tile's terms, taken relative to the new max, are a state of their own: merging it rescales l.
      state[r] = merge(state[r], SoftmaxState<T>{m_new, exp_and_sum(row, cols, exp_origin(m_new))});
      if (j0 > 0 && factor != T(1)) scale_row(o + r * s.dv, s.dv, factor);
    }
    tile_gemm<T>(rows, s.dv, cols, T(1), scores, cols, 1, v_tile, s.dv, j0 == 0 ? T(0) : T(1), o, s.dv);  // + P V
  }
  for (index_t r = 0; r < rows; ++r) {
    scale_row(o + r * s.dv, s.dv, T(1) / state[r].l);  // l = 0 (no key): 0 * inf = NaN
    lse[b * s.lq + i0 + r] = log_sum_exp(state[r]);
  }
}

// dQ partial sums: the key tiles of each batch element in `groups` groups (one unless the batch is small).
index_t key_groups(const AttentionShape& s) {
  const index_t key_tiles = ceil_div(s.lk, kKeyTile);
  return std::max<index_t>(1, std::min(key_tiles, ceil_div(kMinUnits, std::max<index_t>(s.batch, 1))));
}

// Key tiles [t0, t1) of batch element b: grad_k, grad_v rows of those keys, and dq (Lq, D) = their share of dQ.
template <typename T>
void backward_keys(const AttentionShape& s, index_t b, index_t t0, index_t t1, const T* grad_out, const T* q,
                   const T* k, const T* v, AttentionMask mask, const T* out, const T* lse, T scale, T* dq,
                   T* grad_k, T* grad_v) {
  const T* d_o = grad_out + b * s.lq * s.dv;  // (Lq, Dv)
  const T* q_b = q + b * s.lq * s.d;          // (Lq, D)
  const T* lse_b = lse + b * s.lq;
  T* delta = scratch<T, Scratch::delta>().get(s.lq);  // D_i = sum_c dO_ic O_ic
  for (index_t i = 0; i < s.lq; ++i) {
    const T* o_row = out + (b * s.lq + i) * s.dv;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (index_t c = 0; c < s.dv; ++c) sum += d_o[i * s.dv + c] * o_row[c];
    delta[i] = sum;
  }
  const index_t tile_size = std::min(kQueryTile, s.lq) * std::min(kKeyTile, s.lk);
  T* p = scratch<T, Scratch::scores>().get(tile_size);        // S, then P
  T* dp = scratch<T, Scratch::grad_scores>().get(tile_size);  // dP, then dS
  T* k_t = scratch<T, Scratch::keys_t>().get(s.d * std::min(kKeyTile, s.lk));
  T* v_t = scratch<T, Scratch::values_t>().get(s.dv * std::min(kKeyTile, s.lk));
  for (index_t t = t0; t < t1; ++t) {
    const index_t j0 = t * kKeyTile, cols = std::min(kKeyTile, s.lk - j0);
    const T* k_tile = k + (b * s.lk + j0) * s.d;   // (cols, D)
    const T* v_tile = v + (b * s.lk + j0) * s.dv;  // (cols, Dv)
    transpose(cols, s.d, k_tile, k_t);             // (D, cols)
    transpose(cols, s.dv, v_tile, v_t);            // (Dv, cols)
    T* dk = grad_k + (b * s.lk + j0) * s.d;
    T* dv = grad_v + (b * s.lk + j0) * s.dv;
    for (index_t i0 = 0; i0 < s.lq; i0 += kQueryTile) {
      const index_t rows = std::min(kQueryTile, s.lq - i0);
      const T* q_tile = q_b + i0 * s.d;
      const T* d_o_tile = d_o + i0 * s.dv;
      const T beta_keys = i0 == 0 ? T(0) : T(1);  // dK_j, dV_j: the first query tile overwrites
      tile_gemm<T>(rows, cols, s.d, T(1), q_tile, s.d, 1, k_t, cols, T(0), p, cols);  // Q K^T
      for (index_t r = 0; r < rows; ++r) {  // P = exp(S - lse): NaN for a row with no key (lse = -inf)
        T* row = p + r * cols;
        scale_and_mask(row, cols, scale, mask_row(mask, s, b, i0 + r, j0));
        exp_and_sum(row, cols, lse_b[i0 + r]);
      }
      tile_gemm<T>(cols, s.dv, rows, T(1), p, 1, cols, d_o_tile, s.dv, beta_keys, dv, s.dv);  // dV += P^T dO
      tile_gemm<T>(rows, cols, s.dv, T(1), d_o_tile, s.dv, 1, v_t, cols, T(0), dp, cols);  // dP = dO V^T
      for (index_t r = 0; r < rows; ++r) {  // dS = P * (dP - D)
        const T* p_row = p + r * cols;
        T* ds_row = dp + r * cols;
        const T delta_r = delta[i0 + r];
#pragma omp simd
        for (index_t c = 0; c < cols; ++c) ds_row[c] = p_row[c] * (ds_row[c] - delta_r);
      }
      tile_gemm<T>(cols, s.d, rows, scale, dp, 1, cols, q_tile, s.d, beta_keys, dk, s.d);  // dK += dS^T Q
      tile_gemm<T>(rows, s.d, cols, scale, dp, cols, 1, k_tile, s.d, t == t0 ? T(0) : T(1), dq + i0 * s.d,
                   s.d);  // dQ += dS K
    }
  }
}

// Threads worth waking for `units` units of work and `fmas` multiply-adds in all.
int team_size(int threads, double fmas, index_t units) {
  return static_cast<int>(std::min<index_t>(useful_threads(threads, fmas), units));
}

}  // namespace

template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, AttentionMask mask, T scale,
                       T* out, T* lse, int threads) {
  if (s.lk == 0) {  // a sum over no keys
    std::fill(out, out + s.batch * s.lq * s.dv, T(0));
    std::fill(lse, lse + s.batch * s.lq, negative_infinity<T>());
    return;
  }
  const index_t tiles = ceil_div(s.lq, kQueryTile), units = s.batch * tiles;
  const double fmas = static_cast<double>(s.batch) * s.lq * s.lk * (s.d + s.dv);
  parallel_for(team_size(threads, fmas, units), units, [&](index_t u) {
    forward_tile(s, u / tiles, (u % tiles) * kQueryTile, q, k, v, mask, scale, out, lse);
  });
}

template <typename T>
void attention_backward(const AttentionShape& s, const T* grad_out, const T* q, const T* k, const T* v,
                        AttentionMask mask, const T* out, const T* lse, T scale, T* grad_q, T* grad_k, T* grad_v,
                        int threads) {
  if (s.lq == 0 || s.lk == 0) {  // a sum over no queries (dK, dV) or no keys (dQ)
    std::fill(grad_q, grad_q + s.batch * s.lq * s.d, T(0));
    std::fill(grad_k, grad_k + s.batch * s.lk * s.d, T(0));
    std::fill(grad_v, grad_v + s.batch * s.lk * s.dv, T(0));
    return;
  }
  const index_t key_tiles = ceil_div(s.lk, kKeyTile), groups = key_groups(s), units = s.batch * groups;
  const index_t dq_size = s.lq * s.d;
  AlignedBuffer<T> partials;  // (batch, groups, Lq, D) when groups > 1; else each unit writes grad_q directly
  T* dq = groups > 1 ? partials.get(units * dq_size) : grad_q;
  const double fmas = static_cast<double>(s.batch) * s.lq * s.lk * (3 * s.d + 2 * s.dv);
  const int team = team_size(threads, fmas, units);
  parallel_for(team, units, [&](index_t u) {
    const index_t b = u / groups, g = u % groups;
    backward_keys(s, b, g * key_tiles / groups, (g + 1) * key_tiles / groups, grad_out, q, k, v, mask, out, lse,
                  scale, dq + u * dq_size, grad_k, grad_v);
  });
  if (groups == 1) return;
  parallel_for(team, s.batch, [&](index_t b) {  // grad_q[b] = sum over groups, in group order
    T* target = grad_q + b * dq_size;
    const T* first = dq + b * groups * dq_size;
    std::copy(first, first + dq_size, target);
    for (index_t g = 1; g < groups; ++g) {
      const T* part = first + g * dq_size;
#pragma omp simd
      for (index_t e = 0; e < dq_size; ++e) target[e] += part[e];
    }
  });
}

template void attention_forward<float>(const AttentionShape&, const float*, const float*, const float*,
                                       AttentionMask, float, float*, float*, int);
template void attention_forward<double>(const AttentionShape&, const double*, const double*, const double*,
                                        AttentionMask, double, double*, double*, int);
template void attention_backward<float>(const AttentionShape&, const float*, const float*, const float*,
                                        const float*, AttentionMask, const float*, const float*, float, float*,
                                        float*, float*, int);
template void attention_backward<double>(const AttentionShape&, const double*, const double*, const double*,
                                         const double*, AttentionMask, const double*, const double*, double, double*,
                                         double*, double*, int);

}  // namespace md::cpu
