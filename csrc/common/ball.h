#pragma once
// The two balls of advx per element, written once for g++ and nvcc: the L-inf clamp, the
// L2 scale factor, and both followed by the box [lo, hi] around a center. project/
// (project_, pgd_step_) and optim/ (the optimizers' constraint) are built on these; the
// CPU L2 projection of whole samples is ball_cpu.h.
#include <cmath>

#include "common/macros.h"

namespace advx {

// L-inf ball of radius eps around 0: clamp(delta, -eps, eps).
template <typename T>
ADVX_HD T linf_clamp(T delta, T eps) {
  return clamp_value(delta, -eps, eps);
}

// x onto the L-inf ball of radius eps around `center`, then into the box:
// clamp(center + clamp(x - center, -eps, eps), lo, hi), in this order of operations (the
// eager reference's, so float32 matches bit for bit).
template <typename T>
ADVX_HD T linf_ball_box(T x, T center, T eps, T lo, T hi) {
  return clamp_value(center + linf_clamp(x - center, eps), lo, hi);
}

// L2 ball: the factor min(1, eps / norm) that moves a delta of L2 norm `norm` into the
// ball of radius eps; a zero delta stays zero.
template <typename T>
ADVX_HD T l2_scale(T norm, T eps) {
  const T s = eps / norm;  // +inf for a zero norm: min() then picks 1
  return s < T(1) ? s : T(1);
}

// The same factor from a sum of squares reduced in double: the norm is rounded to the
// math type once (static_cast<T>(sqrt(double))), on every device alike.
template <typename T>
ADVX_HD T l2_scale_of_sumsq(double sumsq, T eps) {
  using std::sqrt;
  return l2_scale<T>(static_cast<T>(sqrt(sumsq)), eps);
}

// The write of an L2 projection: center + delta * scale, into the box [lo, hi]
// (delta = x - center, scale from l2_scale).
template <typename T>
ADVX_HD T l2_ball_box(T delta, T center, T scale, T lo, T hi) {
  return clamp_value(center + delta * scale, lo, hi);
}

}  // namespace advx
