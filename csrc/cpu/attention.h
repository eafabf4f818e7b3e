// Scaled dot-product attention, forward and backward, flash-attention style (Dao et al. 2022, 2023):
//
//     S = scale Q K^T (masked entries -inf),   P = softmax(S) row by row,   out = P V
//
// over tiles of queries x tiles of keys, so that no Lq x Lk matrix exists: the forward folds each tile of scores
// into an online softmax (minidiff/online_softmax.h) and keeps, besides out, only the log-sum-exp of each row,
// lse_i = log sum_j exp(S_ij). The backward recomputes P = exp(S - lse) tile by tile and, with
// D_i = sum_c dO_ic O_ic (= sum_j P_ij dP_ij), forms
//     dV = P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dQ = scale dS K,   dK = scale dS^T Q
// (FlashAttention-2's backward; the softmax Jacobian diag(p) - p p^T applied row by row is P * (dP - D)).
#pragma once

#include <cstdint>

#include "minidiff/common.h"

namespace md::cpu {

// The sizes, validated (every size >= 0, no product of sizes past 64-bit indexing; else std::invalid_argument).
struct AttentionShape {
  index_t batch;  // batch elements (batch x heads, flattened)
  index_t lq, lk;  // queries, keys
  index_t d, dv;  // features of queries and keys, of values

  static AttentionShape make(index_t batch, index_t lq, index_t lk, index_t d, index_t dv);
};

// A boolean mask, one (Lq, Lk) matrix per batch element: element (i, j) of batch element b is
// data[(index[b] Lq + i) Lk + j], nonzero where query i may attend to key j. data == nullptr: no mask.
struct AttentionMask {
  const std::uint8_t* data = nullptr;
  const std::int64_t* index = nullptr;  // (batch,), each in [0, matrices): checked by the caller
};

// q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv) -> out (B, Lq, Dv) and lse (B, Lq); all C-contiguous, the outputs
// disjoint from the inputs. A query with no key to attend to gets out = NaN (0 / 0) and lse = -inf; with Lk = 0
// there is nothing to normalize: out = 0 (a sum over no keys), lse = -inf.
template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, AttentionMask mask, T scale,
                       T* out, T* lse, int threads);

// grad_q (B, Lq, D), grad_k (B, Lk, D), grad_v (B, Lk, Dv) from grad_out (B, Lq, Dv) and the forward's out and
// lse; all overwritten. The result does not depend on `threads` (bit for bit).
template <typename T>
void attention_backward(const AttentionShape& s, const T* grad_out, const T* q, const T* k, const T* v,
                        AttentionMask mask, const T* out, const T* lse, T scale, T* grad_q, T* grad_k, T* grad_v,
                        int threads);

}  // namespace md::cpu
