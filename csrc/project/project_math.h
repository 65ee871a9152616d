#pragma once
// The per-element rules of project_ and pgd_step_, shared by the CPU loops
// (project_cpu.cpp) and the CUDA kernels (project_cuda.cu). T is the math type.
#include "common/macros.h"

namespace advx {
namespace project {

// The L2 step divides by ||g|| + 1e-10, as the common PGD-L2 attacks do.
constexpr double kGradNormTiny = 1e-10;

// linf ball: clamp(delta, -eps, eps).
template <typename T>
ADVX_HD T linf_project(T delta, T eps) {
  return clamp_value(delta, -eps, eps);
}

// linf PGD step, in the reference's order of operations so float32 matches bit for bit:
// clamp(x_orig + clamp(x + alpha*sign(g) - x_orig, -eps, eps), lo, hi).
template <typename T>
ADVX_HD T pgd_linf(T x, T g, T x_orig, T eps, T alpha, T lo, T hi) {
  const T stepped = x + alpha * sign_value(g);
  const T delta = clamp_value(stepped - x_orig, -eps, eps);
  return clamp_value(x_orig + delta, lo, hi);
}

// L2 ball scale for a delta of norm `norm`: min(1, eps / norm); a zero delta stays zero.
template <typename T>
ADVX_HD T l2_scale(T norm, T eps) {
  const T s = eps / norm;  // +inf for a zero norm: min() then picks 1
  return s < T(1) ? s : T(1);
}

// The delta of an L2 PGD step before projection: x + alpha * g / gnorm - x_orig, where
// gnorm = ||g|| + 1e-10 was reduced per sample beforehand.
template <typename T>
ADVX_HD T pgd_l2_delta(T x, T g, T x_orig, T alpha, T gnorm) {
  return (x + alpha * (g / gnorm)) - x_orig;
}

template <typename T>
ADVX_HD T pgd_l2_finish(T delta, T x_orig, T scale, T lo, T hi) {
  return clamp_value(x_orig + delta * scale, lo, hi);
}

}  // namespace project
}  // namespace advx
