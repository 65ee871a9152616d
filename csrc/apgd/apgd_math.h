#pragma once
// One APGD iteration (Croce & Hein, ICML 2020), written once for g++ (apgd_cpu.cpp) and
// nvcc (apgd_cuda.cu). Per sample, with eta its step size and a the paper's alpha:
//   u = sign(g) (linf) | g / (||g||_2 + 1e-12) (l2) | g / (||g||_1 + 1e-12) (l1)
//   z = P(x + eta u)                      (z rounded to the data's dtype, as if stored)
//   x_prev, x = x, P(x + a (z - x) + (1 - a) (x - x_prev))
// P: linf and l2 the published projection (the ball around x_orig, then the box: what
// pgd_step_ does); l1 the exact projection onto the L1 ball ∩ box (project_onto_'s).
#include <cmath>
#include <cstdint>

#include "common/ball.h"
#include "common/exact.h"
#include "common/macros.h"
#include "project/project_math.h"
#include "project/project_onto_math.h"

namespace advx {
namespace apgd {

// AutoAttack's guard against a zero gradient in the l2 and l1 directions.
constexpr double kGradTiny = 1e-12;

// The momentum combination, in the reference's order of operations:
// x + a * (z - x) + (1 - a) * (x - x_prev), with keep = (1 - a) rounded from double once.
template <typename T>
ADVX_HD T combine(T x, T z, T x_prev, T a, T keep) {
  return x + a * (z - x) + keep * (x - x_prev);
}

// The L-inf iteration of one element; returns the new x (inside the ball in scalar_t).
template <typename scalar_t, typename T>
ADVX_HD scalar_t linf_element(T x, T x_prev, T g, T c, T eps, T eta, T a, T keep, T lo, T hi) {
  const T z = static_cast<T>(linf_store<scalar_t>(project::pgd_linf<T>(x, g, c, eps, eta, lo, hi), c, eps));
  return linf_store<scalar_t>(linf_ball_box(combine(x, z, x_prev, a, keep), c, eps, lo, hi), c, eps);
}

// The l2 (p = 2) or l1 (p = 1) iteration of one sample of n elements. `sum(f)` is the
// sample's sum of f(i) in double (a loop on the CPU, a block reduction on CUDA, where
// every thread gets the same value) and `each(f)` calls f(i) for each of the sample's
// elements; both are the device's. x and x_prev are written by the last pass only, so
// every pass before reads the inputs as they came; each write touches element i alone.
// The caller fits the written samples into the ball in their dtype (lp_fit) afterwards.
template <typename scalar_t, typename Sum, typename Each>
ADVX_HD void lp_sample(int p, scalar_t* x, scalar_t* x_prev, const scalar_t* g, const scalar_t* c,
                       opmath_t<scalar_t> eps, opmath_t<scalar_t> eta, opmath_t<scalar_t> a,
                       opmath_t<scalar_t> keep, opmath_t<scalar_t> lo, opmath_t<scalar_t> hi,
                       const Sum& sum, const Each& each) {
  using T = opmath_t<scalar_t>;
  using std::sqrt;
  const double gsum = sum([&](int64_t i) {
    const double v = to_double(g[i]);
    return p == 1 ? (v < 0 ? -v : v) : v * v;
  });
  const T gnorm = static_cast<T>(p == 1 ? gsum : sqrt(gsum)) + static_cast<T>(kGradTiny);
  // the stepped point x + eta * g / gnorm (pgd_step_'s L2 delta plus the center)
  const auto stepped = [&](int64_t i) { return static_cast<T>(x[i]) + eta * (static_cast<T>(g[i]) / gnorm); };
  if (p == 2) {
    const auto sq = [&](T d) {
      const double v = static_cast<double>(d);
      return v * v;
    };
    const T scale1 = l2_scale_of_sumsq<T>(sum([&](int64_t i) { return sq(stepped(i) - static_cast<T>(c[i])); }), eps);
    const auto moved = [&](int64_t i) {
      const T ci = static_cast<T>(c[i]);
      const T z = static_cast<T>(static_cast<scalar_t>(l2_ball_box(stepped(i) - ci, ci, scale1, lo, hi)));
      return combine(static_cast<T>(x[i]), z, static_cast<T>(x_prev[i]), a, keep);
    };
    const T scale2 = l2_scale_of_sumsq<T>(sum([&](int64_t i) { return sq(moved(i) - static_cast<T>(c[i])); }), eps);
    each([&](int64_t i) {
      const T ci = static_cast<T>(c[i]);
      const T w = moved(i);
      x_prev[i] = x[i];
      x[i] = static_cast<scalar_t>(l2_ball_box(w - ci, ci, scale2, lo, hi));
    });
    return;
  }
  // l1: the exact projection twice, each a bisection on the soft threshold
  const double dlo = static_cast<double>(lo), dhi = static_cast<double>(hi), limit = static_cast<double>(eps);
  const auto onto = [&](double y, int64_t i, double tau) { return project::onto_l1(y, to_double(c[i]), tau, dlo, dhi); };
  const auto distance = [&](const auto& point, double tau) {  // ||onto(point, tau) - c||_1
    return sum([&](int64_t i) {
      const double d = onto(static_cast<double>(point(i)), i, tau) - to_double(c[i]);
      return d < 0 ? -d : d;
    });
  };
  const double tau1 = project::onto_multiplier([&](double tau) { return distance(stepped, tau); }, limit);
  const auto moved = [&](int64_t i) {
    const T z = static_cast<T>(static_cast<scalar_t>(onto(static_cast<double>(stepped(i)), i, tau1)));
    return combine(static_cast<T>(x[i]), z, static_cast<T>(x_prev[i]), a, keep);
  };
  const double tau2 = project::onto_multiplier([&](double tau) { return distance(moved, tau); }, limit);
  each([&](int64_t i) {
    const T w = moved(i);
    x_prev[i] = x[i];
    x[i] = static_cast<scalar_t>(onto(static_cast<double>(w), i, tau2));
  });
}

}  // namespace apgd
}  // namespace advx
