// Scaled dot-product attention on the GPU, forward and backward (the mathematics: csrc/cpu/attention.h):
//     S = scale Q K^T (masked entries -inf),   P = softmax(S) row by row,   out = P V,   lse_i = log sum_j exp(S_ij)
// and, from out, lse and dO, with D_i = sum_c dO_ic O_ic:
//     dV = P^T dO,   dS = P * (dO V^T - D),   dQ = scale dS K,   dK = scale dS^T Q,   P recomputed as exp(S - lse).
//
//   v1  one warp per row. Forward: a warp owns query row i and walks the keys 32 at a time, one key per lane: each
//       lane computes its score s_ij, the warp's max and sum of exp(s - m) come from warp shuffles (warp_max,
//       warp_sum of minidiff/device.h), and the online softmax of minidiff/online_softmax.h (the same as the CPU
//       kernel's) folds the block into the row's state and rescales the output row, which the lanes accumulate
//       column by column (out_i += sum_j p_j v_j, each p_j handed round by __shfl_sync).
//       Backward: attention_delta_kernel first (D_i, a warp sum per row); then two passes that each own what they
//       write, so no two threads add into one number and no atomics are needed (the result is the same on every
//       launch): query-major (a warp per query row i, lanes over keys: dQ_i = scale sum_j dS_ij K_j) and key-major
//       (a warp per key row j, lanes over queries: dV_j = sum_i P_ij dO_i, dK_j = scale sum_i dS_ij Q_i). Each
//       recomputes P_ij and dS_ij (Attention::score_grad); the price of owning is computing dS twice.
//   v2  the forward flash style: a block per tile of kTileRows query rows (still a warp per row), each block of 32
//       keys and their values staged in shared memory once for the whole tile, so K and V are read from global
//       memory once per tile rather than once per row. Its backward is v1's.
//
// Arguments: q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv), C-contiguous; mask (M, Lq, Lk) bytes (nonzero = may attend)
// with mask_index (B,) int64, the matrix of each batch element, each in [0, M): both read only when has_mask != 0
// (else any pointers); scale; then the kernel's own arrays; then the sizes B, Lq, Lk, D, Dv. Semantics as the CPU
// kernel's: a row with no key to attend to gets out = NaN (0 / 0) and lse = -inf, and NaN gradients wherever P
// enters; Lk = 0 gives out = 0 (a sum over no keys), lse = -inf.
// Launch: blocks of (32 w,) threads (whole warps), any 1-d grid: the warps stride over the rows. v2's forward: blocks
// of exactly (32 kTileRows,), 32 (D + Dv) sizeof(T) bytes of dynamic shared memory; the blocks stride over the tiles.
// Compiled by nvcc (sm_80, sm_90), NVRTC (the instances of INSTANCES in minidiff/kernels/_cuda.py), g++ (cuda_emu.h).
#include "minidiff/device.h"
#include "minidiff/online_softmax.h"

#define MD_ATTENTION_INPUTS(T)                                                                                   \
  const T *q, const T *k, const T *v, const unsigned char *mask, const md::index_t *mask_index, int has_mask, \
      T scale
#define MD_ATTENTION_SIZES md::index_t batch, md::index_t lq, md::index_t lk, md::index_t d, md::index_t dv
#define MD_ATTENTION_PROBLEM \
  const Attention<T> a { q, k, v, has_mask ? mask : nullptr, mask_index, scale, batch, lq, lk, d, dv }

namespace {

using md::index_t;
using md::cuda::kFullWarp;
using md::cuda::kWarpSize;

constexpr int kTileRows = 4;  // v2: query rows per block, one per warp
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

// P_ij and dS_ij = P_ij (dP_ij - D_i), dP_ij = dO_i . V_j.
template <typename T>
struct ScoreGrad {
  T p, ds;
};

// One call's inputs and sizes (mask == nullptr: no mask).
template <typename T>
struct Attention {
  const T *q, *k, *v;
  const unsigned char* mask;
  const index_t* mask_index;
  T scale;
  index_t batch, lq, lk, d, dv;

  // s_ij = scale q_i . k_j of batch element b, with k_j read from `keys` (its rows of D numbers, in global or shared
  // memory); -inf where the mask says no, and for a key j >= Lk (a lane with no key: nothing to a max or a sum).
  MD_HD T score(index_t b, index_t i, index_t j, const T* keys) const {
    if (j >= lk || (mask != nullptr && !mask[(mask_index[b] * lq + i) * lk + j])) return md::negative_infinity<T>();
    return dot(q + (b * lq + i) * d, keys, d) * scale;
  }
  MD_HD T score(index_t b, index_t i, index_t j) const { return score(b, i, j, k + (b * lk + j) * d); }

  // The backward's P_ij = exp(s_ij - lse_i) and dS_ij; both 0 for a pair outside the problem (an idle lane). A row
  // with no key (lse_i = -inf) gets NaN, as the forward's 0 / 0 did.
  MD_HD ScoreGrad<T> score_grad(index_t b, index_t i, index_t j, const T* grad_out, const T* lse,
                                const T* delta) const {
    if (i >= lq || j >= lk) return {T(0), T(0)};
    const index_t row = b * lq + i;
    const T p = exp(score(b, i, j) - lse[row]);
    return {p, p * (dot(grad_out + row * dv, v + (b * lk + j) * dv, dv) - delta[row])};
  }
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

// The forward of query row `row` = b Lq + i by one warp, a key block of 32 at a time: begin, a step per block
// (its K, 32 rows of D, and V, 32 rows of Dv, read from global memory in v1, from shared memory in v2), then end.
template <typename T>
struct RowForward {
  const Attention<T>& a;
  index_t row, b, i;
  T* o;  // the accumulator sum_j exp(s_j - m) v_j, at the end the output
  md::SoftmaxState<T> state;

  __device__ RowForward(const Attention<T>& a_, index_t row_, T* out)
      : a(a_), row(row_), b(row_ / a_.lq), i(row_ % a_.lq), o(out + row_ * a_.dv),
        state(md::softmax_state_empty<T>()) {}

  __device__ void begin() { zero_columns(o, a.dv); }  // also the output of Lk = 0: a sum over no keys

  __device__ void step(index_t j0, const T* keys, const T* values) {
    const unsigned int lane = lane_index();
    const T s = a.score(b, i, j0 + lane, keys + lane * a.d);
    const T m_new = md::max(state.m, md::cuda::warp_max(s));
    const T p = exp(s - md::exp_origin(m_new));  // 0 for a masked key or an idle lane
    scale_columns(o, a.dv, md::rescale_factor(state.m, m_new));
    state = md::merge(state, md::SoftmaxState<T>{m_new, md::cuda::warp_sum(p)});
    add_weighted_rows(p, md::min<index_t>(kWarpSize, a.lk - j0), values, a.dv, o);  // o += P V
  }

  __device__ void end(T* lse) {
    if (a.lk > 0) scale_columns(o, a.dv, T(1) / state.l);  // l = 0 (no key attended): 0 * inf = NaN
    if (lane_index() == 0) lse[row] = md::log_sum_exp(state);
  }
};

__device__ __forceinline__ index_t first_warp() {
  return (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
}
__device__ __forceinline__ index_t warp_stride() { return index_t(gridDim.x) * blockDim.x / kWarpSize; }

}  // namespace

// --- v1: one warp per row ----------------------------------------------------------------------------------------

template <typename T>
__global__ void attention_forward_v1_kernel(MD_ATTENTION_INPUTS(T), T* out, T* lse, MD_ATTENTION_SIZES) {
  MD_ATTENTION_PROBLEM;
  for (index_t row = first_warp(); row < a.batch * a.lq; row += warp_stride()) {  // the same row in every lane
    RowForward<T> f(a, row, out);
    f.begin();
    for (index_t j0 = 0; j0 < a.lk; j0 += kWarpSize)
      f.step(j0, a.k + (f.b * a.lk + j0) * a.d, a.v + (f.b * a.lk + j0) * a.dv);
    f.end(lse);
  }
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

// grad_q (B, Lq, D): dQ_i = scale sum_j dS_ij K_j, a warp per query row, its lanes over 32 keys at a time.
template <typename T>
__global__ void attention_grad_q_v1_kernel(MD_ATTENTION_INPUTS(T), const T* grad_out, const T* lse, const T* delta,
                                           T* grad_q, MD_ATTENTION_SIZES) {
  MD_ATTENTION_PROBLEM;
  for (index_t row = first_warp(); row < a.batch * a.lq; row += warp_stride()) {
    const index_t b = row / a.lq, i = row % a.lq;
    T* dq = grad_q + row * a.d;
    zero_columns(dq, a.d);
    for (index_t j0 = 0; j0 < a.lk; j0 += kWarpSize) {
      const ScoreGrad<T> g = a.score_grad(b, i, j0 + lane_index(), grad_out, lse, delta);
      add_weighted_rows(g.ds, md::min<index_t>(kWarpSize, a.lk - j0), a.k + (b * a.lk + j0) * a.d, a.d, dq);
    }
    scale_columns(dq, a.d, a.scale);
  }
}

// grad_k (B, Lk, D), grad_v (B, Lk, Dv): dV_j = sum_i P_ij dO_i and dK_j = scale sum_i dS_ij Q_i, a warp per key
// row, its lanes over 32 queries at a time.
template <typename T>
__global__ void attention_grad_kv_v1_kernel(MD_ATTENTION_INPUTS(T), const T* grad_out, const T* lse, const T* delta,
                                            T* grad_k, T* grad_v, MD_ATTENTION_SIZES) {
  MD_ATTENTION_PROBLEM;
  for (index_t row = first_warp(); row < a.batch * a.lk; row += warp_stride()) {
    const index_t b = row / a.lk, j = row % a.lk;
    T *dk = grad_k + row * a.d, *dv_row = grad_v + row * a.dv;
    zero_columns(dk, a.d);
    zero_columns(dv_row, a.dv);
    for (index_t i0 = 0; i0 < a.lq; i0 += kWarpSize) {
      const ScoreGrad<T> g = a.score_grad(b, i0 + lane_index(), j, grad_out, lse, delta);
      const index_t count = md::min<index_t>(kWarpSize, a.lq - i0);
      add_weighted_rows(g.p, count, grad_out + (b * a.lq + i0) * a.dv, a.dv, dv_row);
      add_weighted_rows(g.ds, count, a.q + (b * a.lq + i0) * a.d, a.d, dk);
    }
    scale_columns(dk, a.d, a.scale);
  }
}

// --- v2: a block per tile of query rows, each key block staged in shared memory once for all of them ------------

// rows x cols numbers from src (global memory) to dst (shared memory), by the whole block.
template <typename T>
__device__ void stage(const T* src, index_t rows, index_t cols, T* dst) {
  for (index_t e = threadIdx.x; e < rows * cols; e += blockDim.x) dst[e] = src[e];
}

// Blocks of exactly kTileRows warps, (32 kTileRows,), with 32 (D + Dv) sizeof(T) bytes of dynamic shared memory.
template <typename T>
__global__ void __launch_bounds__(kTileRows * kWarpSize)
attention_forward_v2_kernel(MD_ATTENTION_INPUTS(T), T* out, T* lse, MD_ATTENTION_SIZES) {
  MD_DYNAMIC_SHARED(T, keys);  // the key block (32, D), then the value block (32, Dv)
  MD_ATTENTION_PROBLEM;
  T* values = keys + kWarpSize * a.d;
  const index_t tiles = (a.lq + kTileRows - 1) / kTileRows;
  for (index_t tile = blockIdx.x; tile < a.batch * tiles; tile += gridDim.x) {  // the same tile in every thread
    const index_t b = tile / tiles, i = tile % tiles * kTileRows + threadIdx.x / kWarpSize;
    const bool has_row = i < a.lq;  // the same in every lane of a warp; a warp without one still stages and waits
    RowForward<T> f(a, b * a.lq + md::min(i, a.lq - 1), out);
    if (has_row) f.begin();
    for (index_t j0 = 0; j0 < a.lk; j0 += kWarpSize) {
      const index_t keys_here = md::min<index_t>(kWarpSize, a.lk - j0);
      __syncthreads();  // every warp is done with the previous block
      stage(a.k + (b * a.lk + j0) * a.d, keys_here, a.d, keys);
      stage(a.v + (b * a.lk + j0) * a.dv, keys_here, a.dv, values);
      __syncthreads();
      if (has_row) f.step(j0, keys, values);
    }
    if (has_row) f.end(lse);
  }
}

#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define MD_ATTENTION_INSTANCES(T)                                                                                 \
  template __global__ void attention_forward_v1_kernel<T>(MD_ATTENTION_INPUTS(T), T*, T*, MD_ATTENTION_SIZES);   \
  template __global__ void attention_forward_v2_kernel<T>(MD_ATTENTION_INPUTS(T), T*, T*, MD_ATTENTION_SIZES);   \
  template __global__ void attention_delta_kernel<T>(const T*, const T*, T*, md::index_t, md::index_t);          \
  template __global__ void attention_grad_q_v1_kernel<T>(MD_ATTENTION_INPUTS(T), const T*, const T*, const T*,   \
                                                         T*, MD_ATTENTION_SIZES);                                \
  template __global__ void attention_grad_kv_v1_kernel<T>(MD_ATTENTION_INPUTS(T), const T*, const T*, const T*,  \
                                                          T*, T*, MD_ATTENTION_SIZES);
MD_ATTENTION_INSTANCES(float)
MD_ATTENTION_INSTANCES(double)
#undef MD_ATTENTION_INSTANCES
#endif
