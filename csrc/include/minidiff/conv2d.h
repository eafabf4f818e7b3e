// The index arithmetic of a 2-D convolution (cross-correlation), NCHW, for the CUDA kernels of
// csrc/cuda/conv2d.cu:
//
//     out[n, o, y, x] = sum_{c, i, j} x_pad[n, c, y sh + i, x sw + j] weight[o, c, i, j]
//
// x_pad is x with ph rows and pw columns of zeros on each side. It is never stored: tap() reads x, or returns
// 0 in the padding.
#pragma once

#include "minidiff/common.h"

namespace md {

struct Conv2dGeometry {
  index_t n, c, h, w;      // x (N, C, H, W)
  index_t o, kh, kw;       // weight (O, C, KH, KW)
  index_t sh, sw, ph, pw;  // stride and padding, (height, width)
  index_t ho, wo;          // out (N, O, HO, WO)

  MD_HD Conv2dGeometry(index_t n_, index_t c_, index_t h_, index_t w_, index_t o_, index_t kh_, index_t kw_,
                       index_t sh_, index_t sw_, index_t ph_, index_t pw_)
      : n(n_), c(c_), h(h_), w(w_), o(o_), kh(kh_), kw(kw_), sh(sh_), sw(sw_), ph(ph_), pw(pw_),
        ho((h_ + 2 * ph_ - kh_) / sh_ + 1), wo((w_ + 2 * pw_ - kw_) / sw_ + 1) {}

  // x_pad[img, ch, y sh + i, xo sw + j]: the pixel that tap (i, j) of output position (y, xo) reads.
  template <typename T>
  MD_HD T tap(const T* x, index_t img, index_t ch, index_t y, index_t xo, index_t i, index_t j) const {
    const index_t yi = y * sh + i - ph, xi = xo * sw + j - pw;
    return (0 <= yi && yi < h && 0 <= xi && xi < w) ? x[((img * c + ch) * h + yi) * w + xi] : T(0);
  }

  // Along one axis: the output index whose tap k reads input index `in`, i.e. the solution 0 <= out < size of
  // in = out s + k - p, or -1 when there is none (the stride steps over `in`, or it lies past the edge).
  static MD_HD index_t reader(index_t in, index_t k, index_t s, index_t p, index_t size) {
    const index_t t = in + p - k;
    return (t < 0 || t % s != 0 || t / s >= size) ? -1 : t / s;
  }

  // The gradient that pixel (yi, xi) of channel ch receives through tap (i, j) of output channel oc:
  // grad_out[img, oc, y, xo] for the output position (y, xo) whose tap (i, j) reads it, or 0 when none does.
  template <typename T>
  MD_HD T grad_tap(const T* grad_out, index_t img, index_t oc, index_t yi, index_t xi, index_t i, index_t j) const {
    const index_t y = reader(yi, i, sh, ph, ho), xo = reader(xi, j, sw, pw, wo);
    return (y < 0 || xo < 0) ? T(0) : grad_out[((img * o + oc) * ho + y) * wo + xo];
  }
};

}  // namespace md
