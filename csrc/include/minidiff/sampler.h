// Per-element math of the fused sampler update, shared by the CPU and CUDA kernels.
#pragma once
#include "minidiff/common.h"

namespace md {

// Every DDPM and DDIM step (E16, E32) is an affine combination of the current sample x, the model
// output eps and fresh noise z:
//     x_prev = c_x * x + c_eps * eps + c_z * z.
// Clipping the x0 estimate (E13) to [-clip, clip] breaks the affine form; it adds one term:
//     x0_hat = clamp(r_x * x + r_eps * eps, -clip, clip)
//     x_prev = c_x * x + c_eps * eps + c_z * z + c_x0 * x0_hat.
template <typename T>
struct StepCoefs {
  T c_x, c_eps, c_z;   // the affine part
  T c_x0, r_x, r_eps;  // the clipped x0 term: its weight and how x0_hat is read off (x, eps)
  T clip;              // bound of the clip
  bool has_clip;       // false: the x0 term is absent
};

template <typename T>
MD_HD T sampler_update(T x, T eps, T z, const StepCoefs<T>& c) {
  T out = c.c_x * x + c.c_eps * eps + c.c_z * z;
  if (c.has_clip) {
    const T x0_hat = clamp(c.r_x * x + c.r_eps * eps, -c.clip, c.clip);
    out += c.c_x0 * x0_hat;
  }
  return out;
}

}  // namespace md
