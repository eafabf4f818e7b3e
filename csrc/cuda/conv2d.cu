// 2-D convolution on the GPU (cross-correlation, NCHW), forward and backward, two versions of each:
//   v1 direct          one thread per element of the result (out, grad_x or grad_weight), its whole sum in a
//                      loop over the index arithmetic of minidiff/conv2d.h
//   v2 implicit GEMM   the same sums as matrix products, run by GEMM v4's double-buffered tiles
//                      (minidiff/gemm_tile.h) on views that read the images in place: the matrix of image
//                      patches (im2col) is never stored
// The three products, for x (N, C, H, W), weight (O, C, KH, KW), out and grad_out (N, O, HO, WO):
//   out          (O x N HO WO)     = weight   (O x C KH KW)   cols    (C KH KW x N HO WO)
//   grad_weight  (O x C KH KW)     = grad_out (O x N HO WO)   cols^T  (N HO WO x C KH KW)
//   grad_x       (C x N H W)       = weight^T (C x O KH KW)   gcols   (O KH KW x N H W)
// where cols[(c, i, j), (n, y, x)] = x_pad[n, c, y sh + i, x sw + j] (Conv2dGeometry::tap) and
// gcols[(o, i, j), (n, h, w)] = grad_out[n, o, y, x] for the output position (y, x) whose tap (i, j) reads
// pixel (h, w), 0 if none does (Conv2dGeometry::grad_tap). grad_x is thus a gather: every element is written
// by one thread, once, without atomics, and the result does not depend on the launch.
// Arguments: the arrays (C-contiguous), then the sizes N, C, H, W, O, KH, KW, stride (sh, sw) and padding
// (ph, pw), valid as conv2d.py checks them. Launch: v1 any 1-d grid and block (grid-stride over the result);
// v2 blocks of 16 x 16 threads, any 1-d grid (blocks stride over the tiles of the product).
// Compiled by nvcc (sm_80, sm_90), NVRTC (the instances of INSTANCES in minidiff/kernels/_cuda.py), g++.
#include "minidiff/conv2d.h"
#include "minidiff/gemm_tile.h"

#define MD_CONV2D_SIZES                                                                                          \
  md::index_t n, md::index_t c, md::index_t h, md::index_t w, md::index_t o, md::index_t kh, md::index_t kw, \
      md::index_t sh, md::index_t sw, md::index_t ph, md::index_t pw
#define MD_CONV2D_GEOMETRY const md::Conv2dGeometry g(n, c, h, w, o, kh, kw, sh, sw, ph, pw)

namespace {

using md::index_t;

// --- views for the implicit GEMMs ----------------------------------------------------------------------------

// cols (C KH KW x N HO WO) of x, element by element: row (c, i, j), column (n, y, x).
template <typename T>
struct PatchColumns {
  const T* x;
  md::Conv2dGeometry g;

  MD_HD T operator()(index_t row, index_t col) const {
    const index_t j = row % g.kw, i = row / g.kw % g.kh, ch = row / (g.kw * g.kh);
    const index_t xo = col % g.wo, y = col / g.wo % g.ho, img = col / (g.wo * g.ho);
    return g.tap(x, img, ch, y, xo, i, j);
  }
};

// A batch of images (N, R, P) (P pixels per channel) as the matrix (R x N P): row r, column (n, p).
template <typename T>
struct ImageColumns {
  T* data;
  index_t channels, pixels;

  MD_HD T* ptr(index_t r, index_t col) const { return data + (col / pixels * channels + r) * pixels + col % pixels; }
  MD_HD T operator()(index_t r, index_t col) const { return *ptr(r, col); }
};

// The transpose of a view, without a copy.
template <class View>
struct Transposed {
  View v;

  MD_HD auto operator()(index_t i, index_t j) const { return v(j, i); }
};

// weight^T (C x O KH KW): row c, column (o, i, j) is weight[o, c, i, j].
template <typename T>
struct WeightByInputChannel {
  const T* weight;
  md::Conv2dGeometry g;

  MD_HD T operator()(index_t ch, index_t col) const {
    const index_t ij = col % (g.kh * g.kw), oc = col / (g.kh * g.kw);
    return weight[(oc * g.c + ch) * g.kh * g.kw + ij];
  }
};

// gcols (O KH KW x N H W) of grad_out: row (o, i, j), column (n, h, w).
template <typename T>
struct GradientColumns {
  const T* grad_out;
  md::Conv2dGeometry g;

  MD_HD T operator()(index_t row, index_t col) const {
    const index_t j = row % g.kw, i = row / g.kw % g.kh, oc = row / (g.kw * g.kh);
    const index_t xi = col % g.w, yi = col / g.w % g.h, img = col / (g.w * g.h);
    return g.grad_tap(grad_out, img, oc, yi, xi, i, j);
  }
};

template <typename T, class View>
MD_HD md::cuda::Epilogue<T, View> overwrite(View v) {
  return {v, T(1), T(0)};
}

// The index (i0, i1, i2, i3) of element e of a C-ordered array of shape (d0, d1, d2, d3), i3 fastest.
struct Index4 {
  index_t i0, i1, i2, i3;
};

MD_HD Index4 unravel(index_t e, index_t d1, index_t d2, index_t d3) {
  return {e / (d1 * d2 * d3), e / (d2 * d3) % d1, e / d3 % d2, e % d3};
}

__device__ __forceinline__ index_t first_element() { return index_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ index_t grid_stride() { return index_t(blockDim.x) * gridDim.x; }

}  // namespace

// --- v1: one thread per element of the result --------------------------------------------------------------

// out[img, oc, y, xo] = sum_{ch, i, j} weight[oc, ch, i, j] x_pad[img, ch, y sh + i, xo sw + j]
template <typename T>
__global__ void conv2d_forward_v1_kernel(const T* x, const T* weight, T* out, MD_CONV2D_SIZES) {
  MD_CONV2D_GEOMETRY;
  for (index_t e = first_element(); e < g.n * g.o * g.ho * g.wo; e += grid_stride()) {
    const auto [img, oc, y, xo] = unravel(e, g.o, g.ho, g.wo);
    T acc = T(0);
    for (index_t ch = 0; ch < g.c; ++ch)
      for (index_t i = 0; i < g.kh; ++i)
        for (index_t j = 0; j < g.kw; ++j)
          acc += weight[((oc * g.c + ch) * g.kh + i) * g.kw + j] * g.tap(x, img, ch, y, xo, i, j);
    out[e] = acc;
  }
}

// grad_weight[oc, ch, i, j] = sum_{img, y, xo} grad_out[img, oc, y, xo] x_pad[img, ch, y sh + i, xo sw + j]
template <typename T>
__global__ void conv2d_grad_weight_v1_kernel(const T* grad_out, const T* x, T* grad_weight, MD_CONV2D_SIZES) {
  MD_CONV2D_GEOMETRY;
  for (index_t e = first_element(); e < g.o * g.c * g.kh * g.kw; e += grid_stride()) {
    const auto [oc, ch, i, j] = unravel(e, g.c, g.kh, g.kw);
    T acc = T(0);
    for (index_t img = 0; img < g.n; ++img)
      for (index_t y = 0; y < g.ho; ++y)
        for (index_t xo = 0; xo < g.wo; ++xo)
          acc += grad_out[((img * g.o + oc) * g.ho + y) * g.wo + xo] * g.tap(x, img, ch, y, xo, i, j);
    grad_weight[e] = acc;
  }
}

// grad_x[img, ch, yi, xi] = sum_{oc, i, j} weight[oc, ch, i, j] grad_out[img, oc, y, xo] over the output
// positions (y, xo) whose tap (i, j) reads pixel (yi, xi)
template <typename T>
__global__ void conv2d_grad_x_v1_kernel(const T* grad_out, const T* weight, T* grad_x, MD_CONV2D_SIZES) {
  MD_CONV2D_GEOMETRY;
  for (index_t e = first_element(); e < g.n * g.c * g.h * g.w; e += grid_stride()) {
    const auto [img, ch, yi, xi] = unravel(e, g.c, g.h, g.w);
    T acc = T(0);
    for (index_t oc = 0; oc < g.o; ++oc)
      for (index_t i = 0; i < g.kh; ++i)
        for (index_t j = 0; j < g.kw; ++j)
          acc += weight[((oc * g.c + ch) * g.kh + i) * g.kw + j] * g.grad_tap(grad_out, img, oc, yi, xi, i, j);
    grad_x[e] = acc;
  }
}

// --- v2: implicit GEMM -------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(256)
conv2d_forward_v2_kernel(const T* x, const T* weight, T* out, MD_CONV2D_SIZES) {
  MD_CONV2D_GEOMETRY;
  const index_t taps = g.c * g.kh * g.kw;
  const md::StridedMatrix<const T> a{weight, taps, 1};  // (O x C KH KW)
  const PatchColumns<T> b{x, g};                         // (C KH KW x N HO WO)
  md::cuda::gemm_double_buffered<T>(g.o, g.n * g.ho * g.wo, taps, a, b,
                                    overwrite<T>(ImageColumns<T>{out, g.o, g.ho * g.wo}));
}

template <typename T>
__global__ void __launch_bounds__(256)
conv2d_grad_weight_v2_kernel(const T* grad_out, const T* x, T* grad_weight, MD_CONV2D_SIZES) {
  MD_CONV2D_GEOMETRY;
  const index_t taps = g.c * g.kh * g.kw;
  const ImageColumns<const T> a{grad_out, g.o, g.ho * g.wo};  // (O x N HO WO)
  const Transposed<PatchColumns<T>> b{{x, g}};                // (N HO WO x C KH KW)
  md::cuda::gemm_double_buffered<T>(g.o, taps, g.n * g.ho * g.wo, a, b,
                                    overwrite<T>(md::StridedMatrix<T>{grad_weight, taps, 1}));
}

template <typename T>
__global__ void __launch_bounds__(256)
conv2d_grad_x_v2_kernel(const T* grad_out, const T* weight, T* grad_x, MD_CONV2D_SIZES) {
  MD_CONV2D_GEOMETRY;
  const WeightByInputChannel<T> a{weight, g};  // (C x O KH KW)
  const GradientColumns<T> b{grad_out, g};     // (O KH KW x N H W)
  md::cuda::gemm_double_buffered<T>(g.c, g.n * g.h * g.w, g.o * g.kh * g.kw, a, b,
                                    overwrite<T>(ImageColumns<T>{grad_x, g.c, g.h * g.w}));
}

#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define MD_CONV2D_INSTANCE(kernel, T) \
  template __global__ void kernel<T>(const T*, const T*, T*, MD_CONV2D_SIZES);
MD_CONV2D_INSTANCE(conv2d_forward_v1_kernel, float)
MD_CONV2D_INSTANCE(conv2d_forward_v1_kernel, double)
MD_CONV2D_INSTANCE(conv2d_grad_weight_v1_kernel, float)
MD_CONV2D_INSTANCE(conv2d_grad_weight_v1_kernel, double)
MD_CONV2D_INSTANCE(conv2d_grad_x_v1_kernel, float)
MD_CONV2D_INSTANCE(conv2d_grad_x_v1_kernel, double)
MD_CONV2D_INSTANCE(conv2d_forward_v2_kernel, float)
MD_CONV2D_INSTANCE(conv2d_forward_v2_kernel, double)
MD_CONV2D_INSTANCE(conv2d_grad_weight_v2_kernel, float)
MD_CONV2D_INSTANCE(conv2d_grad_weight_v2_kernel, double)
MD_CONV2D_INSTANCE(conv2d_grad_x_v2_kernel, float)
MD_CONV2D_INSTANCE(conv2d_grad_x_v2_kernel, double)
#undef MD_CONV2D_INSTANCE
#endif
