// Scaled dot-product attention on the GPU, forward and backward (the mathematics: csrc/cpu/attention.h):
//     S = scale Q K^T (masked entries -inf),   P = softmax(S) row by row,   out = P V,   lse_i = log sum_j exp(S_ij)
// and, from out, lse and dO, with D_i = sum_c dO_ic O_ic:
//     dV = P^T dO,   dS = P * (dO V^T - D),   dQ = scale dS K,   dK = scale dS^T Q,   P recomputed as exp(S - lse).
//
// Every kernel gives each row it writes to one warp, and that warp walks the other side's rows 32 at a time, one
// per lane (a sweep): the forward and the query-major pass of the backward own query rows and walk the keys with
// their values; the key-major pass owns key rows and walks the queries with their rows of dO.
//   v1  one warp per row, the blocks of 32 read from global memory. Forward: a warp owns query row i; each lane
//       computes its score s_ij, the warp's max and sum of exp(s - m) come from warp shuffles (warp_max, warp_sum
//       of minidiff/device.h), and the online softmax of minidiff/online_softmax.h (the same as the CPU kernel's)
//       folds the block into the row's state and rescales the output row, which the lanes accumulate column by
//       column (out_i += sum_j p_j v_j, each p_j handed round by __shfl_sync).
//       Backward: attention_delta_kernel first (D_i, a warp sum per row); then two passes that each own what they
//       write, so no two threads add into one number and no atomics are needed (the result is the same on every
//       launch): query-major (a warp per query row i, lanes over keys: dQ_i = scale sum_j dS_ij K_j) and key-major
//       (a warp per key row j, lanes over queries: dV_j = sum_i P_ij dO_i, dK_j = scale sum_i dS_ij Q_i). Each
//       recomputes P_ij and dS_ij (AttentionBackward::score_grad); the price of owning is computing dS twice.
//   v2  the flash style, for all three: a block per tile of kTileRows rows (still a warp per row), each block of 32
//       of the other side's rows staged in shared memory once for the whole tile (keys and values; or queries and
//       their dO), so those are read from global memory once per tile rather than once per row. Each warp does the
//       same sums as in v1, in the same order; still no atomics.
//
// Arguments: q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv), C-contiguous; mask (M, Lq, Lk) bytes (nonzero = may attend)
// with mask_index (B,) int64, the matrix of each batch element, each in [0, M): both read only when has_mask != 0
// (else any pointers); scale; then the kernel's own arrays; then the sizes B, Lq, Lk, D, Dv. Semantics as the CPU
// kernel's: a row with no key to attend to gets out = NaN (0 / 0) and lse = -inf, and NaN gradients wherever P
// enters; Lk = 0 gives out = 0 (a sum over no keys), lse = -inf.
// Launch: v1, blocks of (32 w,) threads (whole warps), any 1-d grid: the warps stride over the rows. v2: blocks of
// exactly (32 kTileRows,), 32 (D + Dv) sizeof(T) bytes of dynamic shared memory; the blocks stride over the tiles.
// Compiled by nvcc (sm_80, sm_90), NVRTC (the instances of INSTANCES in minidiff/kernels/_cuda.py), g++ (cuda_emu.h).
#include "minidiff/device.h"
#include "minidiff/online_softmax.h"

#define MD_ATTENTION_INPUTS(T)                                                                                   \
  const T *q, const T *k, const T *v, const unsigned char *mask, const md::index_t *mask_index, int has_mask, \
      T scale
#define MD_ATTENTION_SIZES md::index_t batch, md::index_t lq, md::index_t lk, md::index_t d, md::index_t dv
#define MD_ATTENTION_PROBLEM \
  const Attention<T> a { q, k, v, has_mask ? mask : nullptr, mask_index, scale, batch, lq, lk, d, dv }
#define MD_ATTENTION_BACKWARD                  \
  MD_ATTENTION_PROBLEM;                        \
  const AttentionBackward<T> g { a, grad_out, lse, delta }

namespace {

using md::index_t;
using md::cuda::kFullWarp;
using md::cuda::kWarpSize;

constexpr int kTileRows = 4;  // v2: rows per block, one per warp
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
using std::exp;  // exp(float) in float, as CUDA's overload (the C library's ::exp is double only)
#endif

__device__ __forceinline__ unsigned int lane_index() { return threadIdx.x % kWarpSize; }

template <typename T>
MD_HD T dot(const T* x, const T* y, index_t n) {
  T acc = T(0);
  for (index_t p = 0; p < n; ++p) acc += x[p] * y[p];
  return acc;
}

// What a kernel walks: `rows` rows of each of `batch` elements, a warp each (the rows it writes), against the other
// side's `others` rows of the same element, 32 at a time, from two arrays: src_a (rows of cols_a numbers) and src_b
// (rows of cols_b). The forward and the query-major pass: query rows against keys (K, D) and values (V, Dv); the
// key-major pass: key rows against queries (Q, D) and their upstream gradients (dO, Dv).
template <typename T>
struct Sweep {
  index_t batch, rows, others;
  const T* src_a;
  index_t cols_a;
  const T* src_b;
  index_t cols_b;
};

// One call's inputs and sizes (mask == nullptr: no mask).
template <typename T>
struct Attention {
  const T *q, *k, *v;
  const unsigned char* mask;
  const index_t* mask_index;
  T scale;
  index_t batch, lq, lk, d, dv;

  // s_ij = scale q_i . k_j of batch element b, q_i and k_j read from `query` and `key` (rows of D numbers, in global
  // or shared memory); -inf where the mask says no, and for a key j >= Lk (a lane with no key: nothing to a max or a
  // sum), whose row is then not read.
  MD_HD T score(index_t b, index_t i, index_t j, const T* query, const T* key) const {
    if (j >= lk || (mask != nullptr && !mask[(mask_index[b] * lq + i) * lk + j])) return md::negative_infinity<T>();
    return dot(query, key, d) * scale;
  }

  MD_HD Sweep<T> over_keys() const { return {batch, lq, lk, k, d, v, dv}; }
};

// P_ij and dS_ij = P_ij (dP_ij - D_i), dP_ij = dO_i . V_j.
template <typename T>
struct ScoreGrad {
  T p, ds;
};

// The backward's inputs: the problem, dO (B, Lq, Dv), and the rows' lse and D (B, Lq).
template <typename T>
struct AttentionBackward {
  const Attention<T>& a;
  const T *grad_out, *lse, *delta;

  // P_ij = exp(s_ij - lse_i) and dS_ij of batch element b, q_i and dO_i read from `query` and `grad_out_i`, k_j and
  // v_j from `key` and `value` (global or shared memory). Both 0 for a pair outside the problem (an idle lane), whose
  // rows are then not read. A row with no key (lse_i = -inf) gets NaN, as the forward's 0 / 0 did.
  MD_HD ScoreGrad<T> score_grad(index_t b, index_t i, index_t j, const T* query, const T* grad_out_i, const T* key,
                                const T* value) const {
    if (i >= a.lq || j >= a.lk) return {T(0), T(0)};
    const index_t row = b * a.lq + i;
    const T p = exp(a.score(b, i, j, query, key) - lse[row]);
    return {p, p * (dot(grad_out_i, value, a.dv) - delta[row])};
  }

  MD_HD Sweep<T> over_queries() const { return {a.batch, a.lk, a.lq, a.q, a.d, grad_out, a.dv}; }
};

// dst[c] += sum_{t < count} w_t src[t cols + c] for every c < cols, w_t being lane t's w: a row of W^T Src, the
// lanes over its columns, each w_t handed round by a shuffle. Every lane of the warp calls it with the same count.
template <typename T>
__device__ void add_weighted_rows(T w, index_t count, const T* src, index_t cols, T* dst) {
  for (index_t t = 0; t < count; ++t) {
    const T w_t = __shfl_sync(kFullWarp, w, static_cast<int>(t));
    for (index_t c = lane_index(); c < cols; c += kWarpSize) dst[c] += w_t * src[t * cols + c];
  }
}

template <typename T>
__device__ void scale_columns(T* row, index_t cols, T factor) {
  for (index_t c = lane_index(); c < cols; c += kWarpSize) row[c] *= factor;
}

template <typename T>
__device__ void zero_columns(T* row, index_t cols) {
  for (index_t c = lane_index(); c < cols; c += kWarpSize) row[c] = T(0);
}

// What one warp does for the row it owns, in three parts: begin(); step(t0, a, b) for each block of 32 of the other
// side's rows, t0 the first of them, a and b that block of src_a and src_b (in global memory in v1, in shared memory
// in v2), lane t's rows at a + t cols_a and b + t cols_b; end(). Forward and backward side by side.

// The forward of query row `row` = b Lq + i, a block of 32 keys (K, D) and their values (V, Dv) at a time.
template <typename T>
struct RowForward {
  const Attention<T>& a;
  index_t row, b, i;
  T* o;  // the accumulator sum_j exp(s_j - m) v_j, at the end the output
  T* lse;
  md::SoftmaxState<T> state;

  __device__ RowForward(const Attention<T>& a_, index_t row_, T* out, T* lse_)
      : a(a_), row(row_), b(row_ / a_.lq), i(row_ % a_.lq), o(out + row_ * a_.dv), lse(lse_),
        state(md::softmax_state_empty<T>()) {}

  __device__ void begin() { zero_columns(o, a.dv); }  // also the output of Lk = 0: a sum over no keys

  __device__ void step(index_t j0, const T* keys, const T* values) {
    const unsigned int lane = lane_index();
    const T s = a.score(b, i, j0 + lane, a.q + row * a.d, keys + lane * a.d);
    const T m_new = md::max(state.m, md::cuda::warp_max(s));
    const T p = exp(s - md::exp_origin(m_new));  // 0 for a masked key or an idle lane
    scale_columns(o, a.dv, md::rescale_factor(state.m, m_new));
    state = md::merge(state, md::SoftmaxState<T>{m_new, md::cuda::warp_sum(p)});
    add_weighted_rows(p, md::min<index_t>(kWarpSize, a.lk - j0), values, a.dv, o);  // o += P V
  }

  __device__ void end() {
    if (a.lk > 0) scale_columns(o, a.dv, T(1) / state.l);  // l = 0 (no key attended): 0 * inf = NaN
    if (lane_index() == 0) lse[row] = md::log_sum_exp(state);
  }
};

// The query-major pass: dQ_i = scale sum_j dS_ij K_j of query row `row` = b Lq + i, a block of 32 keys (K, D) and
// their values (V, Dv) at a time, the lanes over the keys.
template <typename T>
struct RowGradQ {
  const AttentionBackward<T>& g;
  index_t row, b, i;
  T* dq;

  __device__ RowGradQ(const AttentionBackward<T>& g_, index_t row_, T* grad_q)
      : g(g_), row(row_), b(row_ / g_.a.lq), i(row_ % g_.a.lq), dq(grad_q + row_ * g_.a.d) {}

  __device__ void begin() { zero_columns(dq, g.a.d); }

  __device__ void step(index_t j0, const T* keys, const T* values) {
    const Attention<T>& a = g.a;
    const unsigned int lane = lane_index();
    const ScoreGrad<T> s = g.score_grad(b, i, j0 + lane, a.q + row * a.d, g.grad_out + row * a.dv, keys + lane * a.d,
                                        values + lane * a.dv);
    add_weighted_rows(s.ds, md::min<index_t>(kWarpSize, a.lk - j0), keys, a.d, dq);  // dq += dS K
  }

  __device__ void end() { scale_columns(dq, g.a.d, g.a.scale); }
};

// The key-major pass: dV_j = sum_i P_ij dO_i and dK_j = scale sum_i dS_ij Q_i of key row `row` = b Lk + j, a block
// of 32 queries (Q, D) and their upstream gradients (dO, Dv) at a time, the lanes over the queries.
template <typename T>
struct RowGradKV {
  const AttentionBackward<T>& g;
  index_t row, b, j;
  T *dk, *dv;

  __device__ RowGradKV(const AttentionBackward<T>& g_, index_t row_, T* grad_k, T* grad_v)
      : g(g_), row(row_), b(row_ / g_.a.lk), j(row_ % g_.a.lk), dk(grad_k + row_ * g_.a.d),
        dv(grad_v + row_ * g_.a.dv) {}

  __device__ void begin() {
    zero_columns(dk, g.a.d);
    zero_columns(dv, g.a.dv);
  }

  __device__ void step(index_t i0, const T* queries, const T* grad_outs) {
    const Attention<T>& a = g.a;
    const unsigned int lane = lane_index();
    const ScoreGrad<T> s = g.score_grad(b, i0 + lane, j, queries + lane * a.d, grad_outs + lane * a.dv,
                                        a.k + row * a.d, a.v + row * a.dv);
    const index_t count = md::min<index_t>(kWarpSize, a.lq - i0);
    add_weighted_rows(s.p, count, grad_outs, a.dv, dv);  // dv += P^T dO
    add_weighted_rows(s.ds, count, queries, a.d, dk);    // dk += dS^T Q
  }

  __device__ void end() { scale_columns(dk, g.a.d, g.a.scale); }
};

__device__ __forceinline__ index_t first_warp() {
  return (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
}
__device__ __forceinline__ index_t warp_stride() { return index_t(gridDim.x) * blockDim.x / kWarpSize; }

// v1: the warps of the grid stride over the rows; each warp reads its blocks of 32 straight from global memory.
// Row(context, row, outputs...) is the warp's work for `row` = b rows + r.
template <class Row, typename T, class Context, class... Outputs>
__device__ void sweep_warp_per_row(const Sweep<T>& s, const Context& context, Outputs... outputs) {
  for (index_t row = first_warp(); row < s.batch * s.rows; row += warp_stride()) {  // the same row in every lane
    const index_t b = row / s.rows;
    Row work(context, row, outputs...);
    work.begin();
    for (index_t t0 = 0; t0 < s.others; t0 += kWarpSize)
      work.step(t0, s.src_a + (b * s.others + t0) * s.cols_a, s.src_b + (b * s.others + t0) * s.cols_b);
    work.end();
  }
}

// rows x cols numbers from src (global memory) to dst (shared memory), by the whole block.
template <typename T>
__device__ void stage(const T* src, index_t rows, index_t cols, T* dst) {
  for (index_t e = threadIdx.x; e < rows * cols; e += blockDim.x) dst[e] = src[e];
}

// v2: the blocks of the grid stride over tiles of kTileRows rows (a warp per row); every block of 32 of the other
// side's rows is staged in `staged` (shared memory of 32 (cols_a + cols_b) numbers) once for the whole tile. Every
// thread of the block takes every barrier: a warp without a row (the tile's last rows) still stages and waits.
template <class Row, typename T, class Context, class... Outputs>
__device__ void sweep_tiles(const Sweep<T>& s, T* staged, const Context& context, Outputs... outputs) {
  T* staged_b = staged + kWarpSize * s.cols_a;
  const index_t tiles = (s.rows + kTileRows - 1) / kTileRows;
  for (index_t tile = blockIdx.x; tile < s.batch * tiles; tile += gridDim.x) {  // the same tile in every thread
    const index_t b = tile / tiles, r = tile % tiles * kTileRows + threadIdx.x / kWarpSize;
    const bool has_row = r < s.rows;  // the same in every lane of a warp
    Row work(context, b * s.rows + md::min(r, s.rows - 1), outputs...);
    if (has_row) work.begin();
    for (index_t t0 = 0; t0 < s.others; t0 += kWarpSize) {
      const index_t here = md::min<index_t>(kWarpSize, s.others - t0);
      __syncthreads();  // every warp is done with the previous block
      stage(s.src_a + (b * s.others + t0) * s.cols_a, here, s.cols_a, staged);
      stage(s.src_b + (b * s.others + t0) * s.cols_b, here, s.cols_b, staged_b);
      __syncthreads();
      if (has_row) work.step(t0, staged, staged_b);
    }
    if (has_row) work.end();
  }
}

}  // namespace

// --- v1: one warp per row ----------------------------------------------------------------------------------------

template <typename T>
__global__ void attention_forward_v1_kernel(MD_ATTENTION_INPUTS(T), T* out, T* lse, MD_ATTENTION_SIZES) {
  MD_ATTENTION_PROBLEM;
  sweep_warp_per_row<RowForward<T>>(a.over_keys(), a, out, lse);
}

// delta[row] = D_row = sum_c grad_out[row, c] out[row, c] for the rows of (rows, Dv): a warp per row.
template <typename T>
__global__ void attention_delta_kernel(const T* grad_out, const T* out, T* delta, index_t rows, index_t dv) {
  for (index_t row = first_warp(); row < rows; row += warp_stride()) {
    T sum = T(0);
    for (index_t c = lane_index(); c < dv; c += kWarpSize) sum += grad_out[row * dv + c] * out[row * dv + c];
    sum = md::cuda::warp_sum(sum);
    if (lane_index() == 0) delta[row] = sum;
  }
}

// grad_q (B, Lq, D): a warp per query row.
template <typename T>
__global__ void attention_grad_q_v1_kernel(MD_ATTENTION_INPUTS(T), const T* grad_out, const T* lse, const T* delta,
                                           T* grad_q, MD_ATTENTION_SIZES) {
  MD_ATTENTION_BACKWARD;
  sweep_warp_per_row<RowGradQ<T>>(a.over_keys(), g, grad_q);
}

// grad_k (B, Lk, D), grad_v (B, Lk, Dv): a warp per key row.
template <typename T>
__global__ void attention_grad_kv_v1_kernel(MD_ATTENTION_INPUTS(T), const T* grad_out, const T* lse, const T* delta,
                                            T* grad_k, T* grad_v, MD_ATTENTION_SIZES) {
  MD_ATTENTION_BACKWARD;
  sweep_warp_per_row<RowGradKV<T>>(g.over_queries(), g, grad_k, grad_v);
}

// --- v2: a block per tile of rows, each block of the other side's rows staged in shared memory once for all -----
// Blocks of exactly kTileRows warps, (32 kTileRows,), with 32 (D + Dv) sizeof(T) bytes of dynamic shared memory.

template <typename T>
__global__ void __launch_bounds__(kTileRows * kWarpSize)
attention_forward_v2_kernel(MD_ATTENTION_INPUTS(T), T* out, T* lse, MD_ATTENTION_SIZES) {
  MD_DYNAMIC_SHARED(T, staged);  // the key block (32, D), then the value block (32, Dv)
  MD_ATTENTION_PROBLEM;
  sweep_tiles<RowForward<T>>(a.over_keys(), staged, a, out, lse);
}

// grad_q: a block per tile of query rows; the key block (32, D), then the value block (32, Dv) staged.
template <typename T>
__global__ void __launch_bounds__(kTileRows * kWarpSize)
attention_grad_q_v2_kernel(MD_ATTENTION_INPUTS(T), const T* grad_out, const T* lse, const T* delta, T* grad_q,
                           MD_ATTENTION_SIZES) {
  MD_DYNAMIC_SHARED(T, staged);
  MD_ATTENTION_BACKWARD;
  sweep_tiles<RowGradQ<T>>(a.over_keys(), staged, g, grad_q);
}

// grad_k, grad_v: a block per tile of key rows; the query block (32, D), then its rows of dO (32, Dv) staged.
template <typename T>
__global__ void __launch_bounds__(kTileRows * kWarpSize)
attention_grad_kv_v2_kernel(MD_ATTENTION_INPUTS(T), const T* grad_out, const T* lse, const T* delta, T* grad_k,
                            T* grad_v, MD_ATTENTION_SIZES) {
  MD_DYNAMIC_SHARED(T, staged);
  MD_ATTENTION_BACKWARD;
  sweep_tiles<RowGradKV<T>>(g.over_queries(), staged, g, grad_k, grad_v);
}

#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define MD_ATTENTION_GRAD_INSTANCES(T, v)                                                                           \
  template __global__ void attention_grad_q_##v##_kernel<T>(MD_ATTENTION_INPUTS(T), const T*, const T*, const T*,  \
                                                            T*, MD_ATTENTION_SIZES);                               \
  template __global__ void attention_grad_kv_##v##_kernel<T>(MD_ATTENTION_INPUTS(T), const T*, const T*, const T*, \
                                                             T*, T*, MD_ATTENTION_SIZES);
#define MD_ATTENTION_INSTANCES(T)                                                                               \
  template __global__ void attention_forward_v1_kernel<T>(MD_ATTENTION_INPUTS(T), T*, T*, MD_ATTENTION_SIZES); \
  template __global__ void attention_forward_v2_kernel<T>(MD_ATTENTION_INPUTS(T), T*, T*, MD_ATTENTION_SIZES); \
  template __global__ void attention_delta_kernel<T>(const T*, const T*, T*, md::index_t, md::index_t);        \
  MD_ATTENTION_GRAD_INSTANCES(T, v1)                                                                            \
  MD_ATTENTION_GRAD_INSTANCES(T, v2)
MD_ATTENTION_INSTANCES(float)
MD_ATTENTION_INSTANCES(double)
#undef MD_ATTENTION_INSTANCES
#undef MD_ATTENTION_GRAD_INSTANCES
#endif
