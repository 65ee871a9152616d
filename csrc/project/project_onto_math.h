#pragma once
// The exact Euclidean projection of a sample y onto {z : ||z - c|| <= eps} ∩ [lo, hi]^d, per
// coordinate for a given multiplier, written once for g++ and nvcc (project_cpu.cpp,
// project_cuda.cu). With the ball's multiplier fixed the problem separates per coordinate,
// and each one-dimensional problem is solved by clamping its unconstrained minimizer:
//   l2: z_i = clamp((y_i + lam c_i) / (1 + lam), lo, hi)
//   l1: z_i = clamp(c_i + soft_threshold(y_i - c_i, tau), lo, hi)
// The distance of z to c falls as the multiplier grows; the op finds the smallest
// multiplier whose z is in the ball by bisection in double (lam = 0 / tau = 0 when the
// clamped point is inside already). L-inf needs no multiplier: the ball is a box too.
#include <cmath>

#include "common/macros.h"

namespace advx {
namespace project {

ADVX_HD double clamp_d(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

ADVX_HD double onto_l2(double y, double c, double lam, double lo, double hi) {
  return clamp_d((y + lam * c) / (1.0 + lam), lo, hi);
}

ADVX_HD double onto_l1(double y, double c, double tau, double lo, double hi) {
  const double d = y - c;
  const double shrunk = d > tau ? d - tau : (d < -tau ? d + tau : 0.0);
  return clamp_d(c + shrunk, lo, hi);
}

// The coordinate for multiplier m under `norm` (1: l1, 2: l2), and its contribution to the
// distance to c (|z - c| for l1, (z - c)^2 for l2).
ADVX_HD double onto_coord(int norm, double y, double c, double m, double lo, double hi) {
  return norm == 1 ? onto_l1(y, c, m, lo, hi) : onto_l2(y, c, m, lo, hi);
}

ADVX_HD double onto_measure(int norm, double z, double c) {
  const double d = z - c;
  return norm == 1 ? (d < 0 ? -d : d) : d * d;
}

// The ball in the measure's units (eps for l1, eps^2 for l2).
ADVX_HD double onto_limit(int norm, double eps) { return norm == 1 ? eps : eps * eps; }

// Bisection steps: the bracket [0, hi] shrinks 2^-60 relative, below double resolution.
// The upper end starts at 1 and doubles at most kOntoDoublings times (a center outside the
// box leaves the intersection empty: the point then ends next to the clamped center).
constexpr int kOntoBisections = 60;
constexpr int kOntoDoublings = 200;

// The smallest multiplier m >= 0 with measure(m) <= limit (0 when the clamped point is
// inside already): doubling from 1, then bisection, keeping the feasible end. `measure`
// is the sample's sum for a multiplier (a loop on the CPU, a block sum on CUDA, where
// every thread gets the same value and so takes the same branches).
template <typename Measure>
ADVX_HD double onto_multiplier(const Measure& measure, double limit) {
  if (measure(0.0) <= limit) return 0.0;
  double m_lo = 0.0, m_hi = 1.0;
  for (int k = 0; k < kOntoDoublings && measure(m_hi) > limit; ++k) {
    m_lo = m_hi;
    m_hi *= 2.0;
  }
  for (int k = 0; k < kOntoBisections; ++k) {
    const double mid = 0.5 * (m_lo + m_hi);
    if (measure(mid) <= limit) {
      m_hi = mid;
    } else {
      m_lo = mid;
    }
  }
  return m_hi;
}

}  // namespace project
}  // namespace advx
