#pragma once
// The per-element rules of pgd_step_, shared by the CPU loops (project_cpu.cpp) and the
// CUDA kernels (project_cuda.cu); the balls themselves (project_) are common/ball.h's.
// T is the math type.
#include <cmath>

#include "common/ball.h"
#include "common/macros.h"

namespace advx {
namespace project {

// The L2 step divides by gnorm = ||g|| + 1e-10, as the common PGD-L2 attacks do; from the
// sum of squares reduced in double, the norm rounded to the math type first.
constexpr double kGradNormTiny = 1e-10;

template <typename T>
ADVX_HD T pgd_l2_gnorm(double sumsq) {
  using std::sqrt;
  return static_cast<T>(sqrt(sumsq)) + static_cast<T>(kGradNormTiny);
}

// linf PGD step, in the reference's order of operations so float32 matches bit for bit:
// clamp(x_orig + clamp(x + alpha*sign(g) - x_orig, -eps, eps), lo, hi).
template <typename T>
ADVX_HD T pgd_linf(T x, T g, T x_orig, T eps, T alpha, T lo, T hi) {
  return linf_ball_box(x + alpha * sign_value(g), x_orig, eps, lo, hi);
}

// The delta of an L2 PGD step before projection: x + alpha * g / gnorm - x_orig, where
// gnorm = ||g|| + 1e-10 was reduced per sample beforehand.
template <typename T>
ADVX_HD T pgd_l2_delta(T x, T g, T x_orig, T alpha, T gnorm) {
  return (x + alpha * (g / gnorm)) - x_orig;
}

// The L2 step's write: clamp(x_orig + delta * scale, lo, hi).
template <typename T>
ADVX_HD T pgd_l2_finish(T x, T g, T x_orig, T alpha, T gnorm, T scale, T lo, T hi) {
  return l2_ball_box(pgd_l2_delta(x, g, x_orig, alpha, gnorm), x_orig, scale, lo, hi);
}

}  // namespace project
}  // namespace advx
