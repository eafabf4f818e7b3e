// conv2d forward and backward by per-image im2col into the packed GEMM (see conv2d.h for the mathematics).
//
// How the GEMM gets its columns matrix cols (C KH KW x positions), the fastest way that applies:
//   - "same" convolutions with stride 1 (every 3x3 of a U-Net but the downsampling ones): no im2col at all. KW
//     shifted copies of the image are read through a RowTable (the GEMM packs them block by block, as it packs
//     any B), and grad_x is the convolution of grad_out with the flipped weight, so there is no col2im either
//     (see shifted_rows);
//   - small images (a U-Net's deep levels): several side by side in one cols, so each GEMM has enough columns
//     to fill its tiles;
//   - otherwise im2col, in chunks of whole output rows of at most kColsBudget elements: never a whole batch's
//     columns, nor a whole large image's, and the chunk is still in L2 when the GEMM packs it. A 1x1
//     convolution with stride 1 and no padding needs none: the image (C x H W) is its own cols.
// The weight, the same for every image, is packed for the GEMM once per call (PackedA).
//
// Threads: images are independent in the forward and in grad_x, so threads take blocks of images, each with
// its own cols buffers and a one-thread GEMM (with fewer blocks than threads, the GEMM's own threads instead).
// grad_weight sums over images: the images are cut into a fixed number of groups (set by the sizes, never by
// the thread count), each group sums its images into its own partial grad_weight in order, and the partials
// are added in group order. Every number is thus computed by the same operations on any number of threads.
#include "cpu/conv2d.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/parallel.h"

namespace md::cpu {

namespace {

constexpr index_t kIndexMax = std::numeric_limits<index_t>::max();

index_t checked_mul(index_t a, index_t b, const char* what) {
  if (a != 0 && b > kIndexMax / a)
    throw std::invalid_argument(std::string(what) + ": the sizes overflow 64-bit indexing");
  return a * b;
}

void non_negative(index_t v, const char* what) {
  if (v < 0) throw std::invalid_argument(std::string(what) + ": expected >= 0, got " + std::to_string(v));
}

}  // namespace

Conv2dShape Conv2dShape::make(index_t n, index_t c, index_t h, index_t w, index_t o, index_t kh, index_t kw,
                              index_t sh, index_t sw, index_t ph, index_t pw) {
  for (auto [v, what] : {std::pair{n, "x.shape[0]"}, {c, "x.shape[1]"}, {h, "x.shape[2]"}, {w, "x.shape[3]"},
                         {o, "weight.shape[0]"}, {ph, "padding[0]"}, {pw, "padding[1]"}})
    non_negative(v, what);
  if (kh < 1 || kw < 1)
    throw std::invalid_argument("weight: expected a kernel of at least 1 x 1, got " + std::to_string(kh) + " x " +
                                std::to_string(kw));
  if (sh < 1 || sw < 1)
    throw std::invalid_argument("stride: expected >= 1, got (" + std::to_string(sh) + ", " + std::to_string(sw) +
                                ")");
  // h + 2 ph without overflow: ph <= (max - h) / 2.
  if (ph > (kIndexMax - h) / 2 || pw > (kIndexMax - w) / 2)
    throw std::invalid_argument("padding: the padded size overflows 64-bit indexing");
  const index_t hp = h + 2 * ph, wp = w + 2 * pw;
  if (hp < kh || wp < kw)
    throw std::invalid_argument("weight: kernel " + std::to_string(kh) + " x " + std::to_string(kw) +
                                " is larger than the padded input " + std::to_string(hp) + " x " + std::to_string(wp));
  Conv2dShape s{n, c, h, w, o, kh, kw, sh, sw, ph, pw, (hp - kh) / sh + 1, (wp - kw) / sw + 1};
  // Every buffer size the kernels form: the output, the columns of one image, the weight and its partial sums.
  const index_t ckk = checked_mul(checked_mul(c, kh, "weight"), kw, "weight");
  const index_t positions = checked_mul(s.ho, s.wo, "padding");
  checked_mul(checked_mul(n, o, "out"), positions, "out");
  checked_mul(ckk, positions, "x");
  checked_mul(checked_mul(o, ckk, "weight"), 64, "weight");
  checked_mul(checked_mul(n, c, "x"), checked_mul(h, w, "x"), "x");
  return s;
}

namespace {

bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

// An image's output rows go through im2col in chunks of `rows` rows (the last may be shorter), each at most
// kColsBudget elements of columns when one row allows it: 256 Ki elements, 1 MiB of float32, about an L2 (a
// 64-channel 3x3 convolution of a 16x16 image fits whole: halving it made each GEMM half as wide and slower).
constexpr index_t kColsBudget = index_t(1) << 18;

struct RowChunks {
  index_t rows, count;
};

RowChunks row_chunks(const Conv2dShape& s) {
  const index_t per_row = std::max<index_t>(1, s.c * s.kh * s.kw * s.wo);
  const index_t count = ceil_div(s.ho, std::max<index_t>(1, kColsBudget / per_row));
  return {ceil_div(s.ho, count), count};  // balanced: chunks differ by at most one row
}

// The output columns [lo, hi) whose tap j lands inside the input row, 0 <= x sw + j - pw < w; the others read
// padding.
struct Span {
  index_t lo, hi;
};

Span valid_columns(const Conv2dShape& s, index_t j) {
  const index_t first = s.pw - j;          // x sw >= pw - j
  const index_t last = s.w - 1 + s.pw - j;  // x sw <= w - 1 + pw - j
  const index_t lo = std::min(s.wo, first <= 0 ? index_t(0) : ceil_div(first, s.sw));
  const index_t hi = last < 0 ? index_t(0) : std::min(s.wo, last / s.sw + 1);
  return {lo, std::max(lo, hi)};
}

// A "same" convolution with stride 1 (HO = H, WO = W: 2 ph = KH - 1, 2 pw = KW - 1, as every 3x3 convolution of
// a U-Net but its downsampling ones) reads, for tap (i, j), the channel shifted by delta = (i - ph) W + (j - pw)
// elements: cols[(c, i, j)][y W + x] = x[c][y W + x + delta] wherever the tap lands inside the image. So a row
// of cols is one contiguous copy, and its adjoint one contiguous add, over the positions [begin, end) that read
// inside the channel; the few among them whose tap fell off the left or right edge (and wrapped onto the
// neighbouring row) are zeroed afterwards (im2col) or beforehand (col2im).
bool is_same_stride1(const Conv2dShape& s) { return s.sh == 1 && s.sw == 1 && s.ho == s.h && s.wo == s.w; }

struct ShiftedTap {
  index_t delta;       // source index - destination index, over the flattened channel
  index_t begin, end;  // the positions (y W + x, y0 <= y < y1) that read inside the channel: end may be < begin
  index_t y_lo, y_hi;  // the rows whose tap row lands inside the image
  Span valid;          // the columns whose tap column does
};

ShiftedTap shifted_tap(const Conv2dShape& s, index_t i, index_t j, index_t y0, index_t y1) {
  const index_t delta = (i - s.ph) * s.w + (j - s.pw);
  const index_t y_lo = std::max(y0, s.ph - i), y_hi = std::min(y1, s.h + s.ph - i);
  const index_t begin = std::max(y_lo * s.w, -delta), end = std::min(y_hi * s.w, s.h * s.w - delta);
  return {delta, begin, end, y_lo, y_hi, valid_columns(s, j)};
}

// Zero the columns of rows [y_lo, y_hi) whose tap falls off the image's left or right edge: row y of the
// chunk starting at y0 is row[(y - y0) W ...].
// Column by column: a tap misses at most KW / 2 columns per row, and row by row these would be memset calls of
// one or two numbers each.
template <typename T>
void zero_edge_columns(const Conv2dShape& s, const ShiftedTap& tap, index_t y0, T* row) {
  T* first = row + (tap.y_lo - y0) * s.wo;
  const index_t rows = tap.y_hi - tap.y_lo;
  for (index_t x = 0; x < tap.valid.lo; ++x) {
    for (index_t y = 0; y < rows; ++y) first[y * s.wo + x] = T(0);
  }
  for (index_t x = tap.valid.hi; x < s.wo; ++x) {
    for (index_t y = 0; y < rows; ++y) first[y * s.wo + x] = T(0);
  }
}

// Every tap's shift for output rows [y0, y1), in (i, j) order: the same for every channel.
std::vector<ShiftedTap> shifted_taps(const Conv2dShape& s, index_t y0, index_t y1) {
  std::vector<ShiftedTap> taps;
  taps.reserve(s.kh * s.kw);
  for (index_t i = 0; i < s.kh; ++i) {
    for (index_t j = 0; j < s.kw; ++j) taps.push_back(shifted_tap(s, i, j, y0, y1));
  }
  return taps;
}

// cols[(c KH + i) KW + j][(y - y0) WO + x] = x_pad[c, y sh + i, x sw + j] for output rows y in [y0, y1) of one
// image (C, H, W): (C KH KW) x ((y1 - y0) WO), rows ld apart (ld > (y1 - y0) WO: several images side by side).
template <typename T>
void im2col(const Conv2dShape& s, const T* image, index_t y0, index_t y1, T* cols, index_t ld) {
  const index_t q = (y1 - y0) * s.wo;
  if (is_same_stride1(s)) {
    const std::vector<ShiftedTap> taps = shifted_taps(s, y0, y1);
    const index_t first = y0 * s.w;  // the chunk's first position
    for (index_t ci = 0; ci < s.c; ++ci) {
      const T* channel = image + ci * s.h * s.w;
      for (const ShiftedTap& tap : taps) {
        const index_t begin = std::min(std::max(tap.begin, first), first + q), end = std::max(begin, tap.end);
        std::fill(cols, cols + begin - first, T(0));
        std::copy(channel + begin + tap.delta, channel + end + tap.delta, cols + begin - first);
        std::fill(cols + end - first, cols + q, T(0));
        zero_edge_columns(s, tap, y0, cols);
        cols += ld;
      }
    }
    return;
  }
  for (index_t ci = 0; ci < s.c; ++ci) {
    const T* channel = image + ci * s.h * s.w;
    for (index_t i = 0; i < s.kh; ++i) {
      for (index_t j = 0; j < s.kw; ++j, cols += ld) {
        const Span span = valid_columns(s, j);
        for (index_t y = y0; y < y1; ++y) {
          T* dst = cols + (y - y0) * s.wo;
          const index_t iy = y * s.sh + i - s.ph;
          if (iy < 0 || iy >= s.h) {
            std::fill(dst, dst + s.wo, T(0));
            continue;
          }
          const T* src = channel + iy * s.w + j - s.pw;  // src[x sw] is x_pad[c, iy + ph, x sw + j]
          std::fill(dst, dst + span.lo, T(0));
          if (s.sw == 1) {
            std::copy(src + span.lo, src + span.hi, dst + span.lo);
          } else {
            for (index_t x = span.lo; x < span.hi; ++x) dst[x] = src[x * s.sw];
          }
          std::fill(dst + span.hi, dst + s.wo, T(0));
        }
      }
    }
  }
}

// The adjoint of im2col: image_grad[c, y sh + i - ph, x sw + j - pw] += cols[(c KH + i) KW + j][(y - y0) WO + x]
// for every tap that lands inside the image (the padding's share is dropped); rows of cols ld apart. cols is
// scratch: the same-stride-1 path zeroes its taps that fell off an edge before adding whole rows.
template <typename T>
void col2im_add(const Conv2dShape& s, T* cols, index_t y0, index_t y1, index_t ld, T* __restrict image_grad) {
  if (is_same_stride1(s)) {
    const std::vector<ShiftedTap> taps = shifted_taps(s, y0, y1);
    for (index_t ci = 0; ci < s.c; ++ci) {
      T* channel = image_grad + ci * s.h * s.w;
      for (const ShiftedTap& tap : taps) {
        zero_edge_columns(s, tap, y0, cols);
        const T* __restrict src = cols - y0 * s.w;  // src[k] for positions k = y W + x of the chunk
        T* dst = channel + tap.delta;
        for (index_t k = tap.begin; k < tap.end; ++k) dst[k] += src[k];
        cols += ld;
      }
    }
    return;
  }
  for (index_t ci = 0; ci < s.c; ++ci) {
    T* channel = image_grad + ci * s.h * s.w;
    for (index_t i = 0; i < s.kh; ++i) {
      for (index_t j = 0; j < s.kw; ++j, cols += ld) {
        const Span span = valid_columns(s, j);
        for (index_t y = y0; y < y1; ++y) {
          const index_t iy = y * s.sh + i - s.ph;
          if (iy < 0 || iy >= s.h) continue;
          const T* src = cols + (y - y0) * s.wo;
          T* dst = channel + iy * s.w + j - s.pw;
          if (s.sw == 1) {
            for (index_t x = span.lo; x < span.hi; ++x) dst[x] += src[x];
          } else {
            for (index_t x = span.lo; x < span.hi; ++x) dst[x * s.sw] += src[x];
          }
        }
      }
    }
  }
}

// Each thread's scratch buffers, reused from call to call, one per role (two roles never share one): im2col's
// columns, their gradient, images gathered side by side, grad_weight's partial sums, the shifted copies of an image.
enum class Scratch { cols, grad_cols, gathered, partials, shifted };

template <typename T, Scratch role>
AlignedBuffer<T>& scratch() {
  thread_local AlignedBuffer<T> buffer;
  return buffer;
}

// --- "same" convolutions with stride 1, without im2col ---------------------------------------------------------
//
// Row (c, i, j) of cols is channel c read at an offset: cols[(c, i, j)][y W + x] = x_pad[c][y + i][x + j]. Give
// each channel PH rows of zeros above and below, and make one copy of the image per tap column j in which the
// columns that tap must not see are zeros: with dj = j - PW, columns [W + dj, W) when dj < 0 (x + dj < 0 wraps
// onto the end of the row above) and [0, dj) when dj > 0 (x + dj >= W wraps onto the start of the row below).
// Then row (c, i, j) of cols is, exactly, the contiguous array copy_j[c] + i W + dj over the H W positions, and
// the GEMM reads it through a RowTable: KW copies of the image (3 for a 3x3 kernel) are written instead of
// im2col's KH KW (9), and nothing is zeroed afterwards. The gradient of x is itself such a convolution, of
// grad_out with the flipped weight (backward_weight), so col2im is not needed either.
constexpr index_t kShiftedBudget = 4 * kColsBudget;  // elements of the copies (else im2col, in chunks of rows)

bool uses_shifted_rows(const Conv2dShape& s, index_t images_per_block) {
  const index_t copies = s.kw * std::max(s.c, s.o) * ((s.h + 2 * s.ph) * s.w + 2 * s.pw);
  return is_same_stride1(s) && !is_pointwise(s) && images_per_block == 1 && copies <= kShiftedBudget;
}

template <typename T>
std::vector<const T*>& row_table_buffer() {
  thread_local std::vector<const T*> table;
  return table;
}

// The shifted copies of one image (channels x H x W) and the table of its cols rows, in (c, i, j) order. Both
// live in this thread's buffers: the table is valid until this thread's next call.
template <typename T>
RowTable<T> shifted_rows(const Conv2dShape& s, const T* image, index_t channels) {
  const index_t guard = s.pw;  // zeros before and after each channel: the first and last taps reach pw past it
  const index_t plane = s.h * s.w, top = guard + s.ph * s.w, channel_size = (s.h + 2 * s.ph) * s.w + 2 * guard;
  T* copies = scratch<T, Scratch::shifted>().get(s.kw * channels * channel_size);
  for (index_t j = 0; j < s.kw; ++j) {
    const index_t dj = j - s.pw;
    const index_t hidden_lo = dj < 0 ? s.w + dj : 0, hidden_hi = dj < 0 ? s.w : dj;  // columns zeroed
    for (index_t c = 0; c < channels; ++c) {
      T* channel = copies + (j * channels + c) * channel_size;
      std::fill(channel, channel + top, T(0));
      std::copy(image + c * plane, image + (c + 1) * plane, channel + top);
      std::fill(channel + top + plane, channel + channel_size, T(0));
      for (index_t x = hidden_lo; x < hidden_hi; ++x) {  // column by column: one or two numbers per row
        for (index_t y = 0; y < s.h; ++y) channel[top + y * s.w + x] = T(0);
      }
    }
  }
  std::vector<const T*>& table = row_table_buffer<T>();
  table.resize(channels * s.kh * s.kw);
  for (index_t c = 0; c < channels; ++c) {
    for (index_t i = 0; i < s.kh; ++i) {
      for (index_t j = 0; j < s.kw; ++j)
        table[(c * s.kh + i) * s.kw + j] = copies + (j * channels + c) * channel_size + guard + i * s.w + j - s.pw;
    }
  }
  return {table.data(), 0};
}

// What grad_x is computed from, packed once per call: W^T (C KH KW x O) for grad_cols = W^T grad_out and col2im,
// or, for the shifted path, the flipped weight W'[c][(o KH + i) KW + j] = W[o][c][KH - 1 - i][KW - 1 - j]
// (C x O KH KW): grad_x = W' (*) grad_out, a same convolution (its padding, KH - 1 - PH, is PH again).
template <typename T>
PackedA<T> backward_weight(const Conv2dShape& s, const T* weight, bool shifted) {
  const index_t ckk = s.c * s.kh * s.kw, okk = s.o * s.kh * s.kw;
  if (!shifted) return PackedA<T>(ckk, s.o, row_major(weight, ckk, /*transposed=*/true));
  std::vector<T> flipped(s.c * okk);
  for (index_t o = 0; o < s.o; ++o) {
    for (index_t c = 0; c < s.c; ++c) {
      for (index_t i = 0; i < s.kh; ++i) {
        for (index_t j = 0; j < s.kw; ++j)
          flipped[c * okk + (o * s.kh + i) * s.kw + j] =
              weight[((o * s.c + c) * s.kh + s.kh - 1 - i) * s.kw + s.kw - 1 - j];
      }
    }
  }
  return PackedA<T>(s.c, okk, row_major<T>(flipped.data(), okk));
}

// Threads over images (outer) and inside each GEMM (inner): images first, the GEMM's threads only when there
// are fewer images than threads (nested OpenMP regions would run on one thread anyway).
struct ThreadSplit {
  int outer, inner;
};

ThreadSplit split_threads(const Conv2dShape& s, int threads, index_t items) {
  const double fmas = static_cast<double>(s.n) * s.o * s.c * s.kh * s.kw * s.ho * s.wo;
  threads = useful_threads(threads, fmas);
  const int outer = static_cast<int>(std::max<index_t>(1, std::min<index_t>(threads, items)));
  return {outer, outer > 1 ? 1 : threads};
}

// How the images go through the GEMMs: one at a time, in chunks of rows when its cols pass kColsBudget; or,
// when an image's cols are far below it (a U-Net's 8x8 and 4x4 levels: 16-64 positions, fewer than a
// micro-kernel tile has columns), in blocks of several images side by side in one cols, so each GEMM has
// hundreds of columns. Blocks never straddle two groups of grad_weight's partial sums (below), and their size
// depends on the sizes only, so the backward's order of operations does not depend on the thread count.
struct ImageBlocks {
  index_t images;  // per block (the last of a group may have fewer)
  index_t groups;  // of grad_weight's partial sums, each ceil or floor of n / groups images
};

// grad_weight's partial sums: one per group of images, as many groups as images up to kWeightGroups, fewer
// when the partials would pass kPartialsBudget bytes. 8 groups keep 2-8 threads busy on a U-Net's batches.
constexpr index_t kWeightGroups = 8;
constexpr index_t kPartialsBudget = index_t(64) << 20;

ImageBlocks image_blocks(const Conv2dShape& s, index_t bytes_per_weight) {
  const index_t weight_bytes = std::max<index_t>(1, s.o * s.c * s.kh * s.kw * bytes_per_weight);
  const index_t groups = std::max<index_t>(1, std::min({s.n, kWeightGroups, kPartialsBudget / weight_bytes}));
  const index_t image_cols = std::max<index_t>(1, s.c * s.kh * s.kw * s.ho * s.wo);
  const index_t fit = std::max<index_t>(1, kColsBudget / image_cols);
  return {std::min(fit, ceil_div(std::max<index_t>(s.n, 1), groups)), groups};
}

// The images [i0, i1) of group g's share, cut into blocks: f(first, last) for each block in order.
template <typename F>
void for_each_block(index_t i0, index_t i1, index_t per_block, F&& f) {
  for (index_t b = i0; b < i1; b += per_block) f(b, std::min(i1, b + per_block));
}

// out_n (O x HO WO) = W (O x C KH KW) cols_n for one image; W comes packed for the GEMM once for all images.
template <typename T>
void forward_image(const Conv2dShape& s, const T* image, const PackedA<T>& weight, T* out, bool shifted,
                   int threads) {
  const index_t ckk = s.c * s.kh * s.kw, positions = s.ho * s.wo;
  if (is_pointwise(s)) {
    gemm(weight, positions, T(1), row_major(image, positions), T(0), OutMatrix<T>{out, positions}, threads);
    return;
  }
  if (shifted) {
    gemm(weight, positions, T(1), shifted_rows(s, image, s.c), T(0), OutMatrix<T>{out, positions}, threads);
    return;
  }
  const RowChunks chunks = row_chunks(s);
  T* cols = scratch<T, Scratch::cols>().get(ckk * chunks.rows * s.wo);
  for (index_t y0 = 0; y0 < s.ho; y0 += chunks.rows) {
    const index_t y1 = std::min(s.ho, y0 + chunks.rows), q = (y1 - y0) * s.wo;
    im2col(s, image, y0, y1, cols, q);
    gemm(weight, q, T(1), row_major<T>(cols, q), T(0), OutMatrix<T>{out + y0 * s.wo, positions}, threads);
  }
}

// The same for images [i0, i1) side by side: cols (C KH KW x B P), out_block (O x B P) = W cols, then each
// image's columns copied to its place in out (N, O, P).
template <typename T>
void forward_block(const Conv2dShape& s, const T* x, index_t i0, index_t i1, const PackedA<T>& weight, T* out,
                   bool shifted, int threads) {
  const index_t ckk = s.c * s.kh * s.kw, positions = s.ho * s.wo, width = (i1 - i0) * positions;
  if (i1 - i0 == 1) {
    return forward_image(s, x + i0 * s.c * s.h * s.w, weight, out + i0 * s.o * positions, shifted, threads);
  }
  T* cols = scratch<T, Scratch::cols>().get(ckk * width);
  T* out_block = scratch<T, Scratch::gathered>().get(s.o * width);
  for (index_t i = i0; i < i1; ++i)
    im2col(s, x + i * s.c * s.h * s.w, 0, s.ho, cols + (i - i0) * positions, width);
  gemm(weight, width, T(1), row_major<T>(cols, width), T(0), OutMatrix<T>{out_block, width}, threads);
  for (index_t i = i0; i < i1; ++i) {
    for (index_t o = 0; o < s.o; ++o) {
      const T* src = out_block + o * width + (i - i0) * positions;
      std::copy(src, src + positions, out + (i * s.o + o) * positions);
    }
  }
}

// One image's share of the backward:
//   grad_weight (O x C KH KW) = beta grad_weight + grad_out_n cols_n^T
//   grad_x_n = col2im(W^T grad_out_n), or W' (*) grad_out_n on the shifted path   (overwritten)
// with W^T or W' packed once for all images (backward_weight). In grad_weight's product grad_out's O rows are
// GEMM's A (whole 4-row tiles for a U-Net's channel counts) and cols^T its B, packed from cols' contiguous rows
// by 8 x 8 transposes. A null image_grad (then grad_x_weight too) or grad_weight: that gradient is not computed.
template <typename T>
void backward_image(const Conv2dShape& s, const T* grad_out, const T* image, const PackedA<T>* grad_x_weight,
                    T* image_grad, T* grad_weight, T beta, bool shifted, int threads) {
  const index_t ckk = s.c * s.kh * s.kw, positions = s.ho * s.wo;
  if (shifted || is_pointwise(s)) {
    if (grad_weight && shifted) {
      const RowTable<T> cols = shifted_rows(s, image, s.c);
      gemm(s.o, ckk, positions, T(1), row_major(grad_out, positions), ColumnTable<T>{cols.rows, cols.col0}, beta,
           OutMatrix<T>{grad_weight, ckk}, threads);
    } else if (grad_weight) {
      gemm<T>(false, true, s.o, ckk, positions, T(1), grad_out, positions, image, positions, beta, grad_weight, ckk,
              threads);
    }
    if (image_grad && shifted) {
      gemm(*grad_x_weight, positions, T(1), shifted_rows(s, grad_out, s.o), T(0),
           OutMatrix<T>{image_grad, positions}, threads);
    } else if (image_grad) {
      gemm(*grad_x_weight, positions, T(1), row_major(grad_out, positions), T(0),
           OutMatrix<T>{image_grad, positions}, threads);
    }
    return;
  }
  const RowChunks chunks = row_chunks(s);
  T* cols = grad_weight ? scratch<T, Scratch::cols>().get(ckk * chunks.rows * s.wo) : nullptr;
  T* grad_cols = image_grad ? scratch<T, Scratch::grad_cols>().get(ckk * chunks.rows * s.wo) : nullptr;
  if (image_grad) std::fill(image_grad, image_grad + s.c * s.h * s.w, T(0));
  for (index_t y0 = 0; y0 < s.ho; y0 += chunks.rows) {
    const index_t y1 = std::min(s.ho, y0 + chunks.rows), q = (y1 - y0) * s.wo;
    const T* grad_out_chunk = grad_out + y0 * s.wo;  // (O x q), leading dimension HO WO
    if (grad_weight) {
      im2col(s, image, y0, y1, cols, q);
      gemm<T>(false, true, s.o, ckk, q, T(1), grad_out_chunk, positions, cols, q, beta, grad_weight, ckk, threads);
      beta = T(1);
    }
    if (image_grad) {
      gemm(*grad_x_weight, q, T(1), row_major(grad_out_chunk, positions), T(0), OutMatrix<T>{grad_cols, q},
           threads);
      col2im_add(s, grad_cols, y0, y1, q, image_grad);
    }
  }
}

// The same for images [i0, i1) side by side: grad_out's images gathered into one (O x B P), then one product
// for grad_weight, one for the block's grad_cols, and col2im image by image.
template <typename T>
void backward_block(const Conv2dShape& s, const T* grad_out, const T* x, index_t i0, index_t i1,
                    const PackedA<T>* grad_x_weight, T* grad_x, T* grad_weight, T beta, bool shifted, int threads) {
  const index_t ckk = s.c * s.kh * s.kw, positions = s.ho * s.wo, width = (i1 - i0) * positions;
  const index_t image_in = s.c * s.h * s.w;
  if (i1 - i0 == 1) {
    return backward_image(s, grad_out + i0 * s.o * positions, x + i0 * image_in, grad_x_weight,
                          grad_x ? grad_x + i0 * image_in : nullptr, grad_weight, beta, shifted, threads);
  }
  T* grad_block = scratch<T, Scratch::gathered>().get(s.o * width);
  for (index_t i = i0; i < i1; ++i) {
    for (index_t o = 0; o < s.o; ++o) {
      const T* src = grad_out + (i * s.o + o) * positions;
      std::copy(src, src + positions, grad_block + o * width + (i - i0) * positions);
    }
  }
  if (grad_weight) {
    T* cols = scratch<T, Scratch::cols>().get(ckk * width);
    for (index_t i = i0; i < i1; ++i) im2col(s, x + i * image_in, 0, s.ho, cols + (i - i0) * positions, width);
    gemm<T>(false, true, s.o, ckk, width, T(1), grad_block, width, cols, width, beta, grad_weight, ckk, threads);
  }
  if (grad_x) {
    T* grad_cols = scratch<T, Scratch::grad_cols>().get(ckk * width);
    gemm(*grad_x_weight, width, T(1), row_major<T>(grad_block, width), T(0), OutMatrix<T>{grad_cols, width},
         threads);
    std::fill(grad_x + i0 * image_in, grad_x + i1 * image_in, T(0));
    for (index_t i = i0; i < i1; ++i)
      col2im_add(s, grad_cols + (i - i0) * positions, 0, s.ho, width, grad_x + i * image_in);
  }
}

}  // namespace

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* weight, T* out, int threads) {
  const index_t ckk = s.c * s.kh * s.kw;
  const PackedA<T> packed(s.o, ckk, row_major(weight, ckk));
  const index_t per_block = image_blocks(s, sizeof(T)).images, blocks = ceil_div(s.n, per_block);
  const bool shifted = uses_shifted_rows(s, per_block);
  const ThreadSplit split = split_threads(s, threads, blocks);
  parallel_for(split.outer, blocks, [&](index_t b) {
    forward_block(s, x, b * per_block, std::min(s.n, (b + 1) * per_block), packed, out, shifted, split.inner);
  });
}

template <typename T>
void conv2d_backward(const Conv2dShape& s, const T* grad_out, const T* x, const T* weight, T* grad_x,
                     T* grad_weight, int threads) {
  const index_t ckk = s.c * s.kh * s.kw, weight_size = s.o * ckk;
  if (grad_weight && s.n == 0) std::fill(grad_weight, grad_weight + weight_size, T(0));
  if (s.n == 0 || (!grad_x && !grad_weight)) return;
  const ImageBlocks blocks = image_blocks(s, sizeof(T));
  const bool shifted = uses_shifted_rows(s, blocks.images);
  std::optional<PackedA<T>> grad_x_weight;
  if (grad_x) grad_x_weight.emplace(backward_weight(s, weight, shifted));
  // grad_weight's partial sums, each (O x C KH KW)
  T* partials = grad_weight ? scratch<T, Scratch::partials>().get(blocks.groups * weight_size) : nullptr;
  const ThreadSplit split = split_threads(s, threads, blocks.groups);
  parallel_for(split.outer, blocks.groups, [&](index_t g) {
    const index_t first = g * s.n / blocks.groups, last = (g + 1) * s.n / blocks.groups;
    for_each_block(first, last, blocks.images, [&](index_t i0, index_t i1) {
      const T beta = i0 == first ? T(0) : T(1);  // the group's first block overwrites its partial
      backward_block(s, grad_out, x, i0, i1, grad_x ? &*grad_x_weight : nullptr, grad_x,
                     partials ? partials + g * weight_size : nullptr, beta, shifted, split.inner);
    });
  });
  if (!grad_weight) return;
  // grad_weight = the sum of the partials, in group order.
  const int add_threads =
      std::min(split.outer * split.inner, useful_threads(threads, double(blocks.groups) * weight_size));
  parallel_for(add_threads, s.o, [&](index_t o) {
    T* row = grad_weight + o * ckk;
    std::copy(partials + o * ckk, partials + (o + 1) * ckk, row);
    for (index_t g = 1; g < blocks.groups; ++g) {
      const T* partial = partials + g * weight_size + o * ckk;
      for (index_t r = 0; r < ckk; ++r) row[r] += partial[r];
    }
  });
}

template void conv2d_forward<float>(const Conv2dShape&, const float*, const float*, float*, int);
template void conv2d_forward<double>(const Conv2dShape&, const double*, const double*, double*, int);
template void conv2d_backward<float>(const Conv2dShape&, const float*, const float*, const float*, float*, float*,
                                     int);
template void conv2d_backward<double>(const Conv2dShape&, const double*, const double*, const double*, double*,
                                      double*, int);

}  // namespace md::cpu
