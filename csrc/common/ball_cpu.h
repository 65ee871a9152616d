#pragma once
// The CPU L2 ball projection of [B, n] data (sample b at [b*n, (b+1)*n)), used by project_
// (project_cpu.cpp) and by the optimizers' constraint (optim/multi_tensor_cpu.h): the
// per-sample norm in double by a reduction whose bits do not depend on the thread count,
// the factor in the math type (ball.h), then one pass that scales and clamps.
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/ball.h"
#include "common/cpu_loops.h"
#include "common/exact.h"
#include "common/macros.h"

namespace advx {
namespace cpu {

// x = clamp(c + (x - c) * scale, lo, hi) over n elements; without a center x * scale, and
// without a box no clamp.
template <typename scalar_t, bool kCenter, bool kBox>
ADVX_CPU_CLONES void l2_ball_range(scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                   int64_t n, opmath_t<scalar_t> scale, opmath_t<scalar_t> lo,
                                   opmath_t<scalar_t> hi) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const T xi = static_cast<T>(x[i]);
    T out;
    if constexpr (kCenter) {
      const T ci = static_cast<T>(c[i]);
      out = l2_ball_box(xi - ci, ci, scale, lo, hi);
    } else {
      out = kBox ? clamp_value(xi * scale, lo, hi) : xi * scale;
    }
    x[i] = static_cast<scalar_t>(out);
  }
}

// After an L2 write: every sample of x (center c, nullptr for the origin) inside the ball
// of radius eps[b] as a float64 norm sees it (common/exact.h). A sample outside (by the
// roundings of the write) is shrunk toward its center; one round is enough in practice,
// the loop is a guard. Moving toward the center keeps a sample in a box that holds it.
// p = 1 fits the L1 ball the same way (the exact projection's l1).
template <typename scalar_t>
void lp_fit(scalar_t* x, const scalar_t* c, const opmath_t<scalar_t>* eps, int64_t batch, int64_t n,
            int p = 2) {
  if (batch == 0 || n == 0) return;
  for (int round = 0; round < 8; ++round) {
    const auto sq = per_sample_sum(batch, n, [&](int64_t, int64_t s, int64_t t) {
      const scalar_t* xs = x + s;
      const scalar_t* cs = c == nullptr ? nullptr : c + s;
      const auto d = [=](int64_t i) { return to_double(xs[i]) - (cs == nullptr ? 0.0 : to_double(cs[i])); };
      if (p == 2) return lane_sum_squares(t - s, d);
      double sum = 0.0;  // L1: in index order (bits depend on n only)
      for (int64_t i = 0; i < t - s; ++i) sum += lp_term(1, d(i));
      return sum;
    });
    std::vector<double> shrink(batch, -1.0);
    bool any = false;
    for (int64_t b = 0; b < batch; ++b) {
      const double e = static_cast<double>(eps[b]);
      if (!lp_inside(p, sq[b], e)) {
        shrink[b] = lp_shrink_factor(p, sq[b], e);
        any = true;
      }
    }
    if (!any) return;
    for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
      if (shrink[b] < 0) return;
      for (int64_t i = s; i < t; ++i) {
        x[i] = l2_shrink_toward(x[i], c == nullptr ? 0.0 : to_double(c[i]), shrink[b]);
      }
    });
  }
}

// Per sample b: x = clamp(c + (x - c) * min(1, eps[b] / ||x - c||_2), lo, hi), with
// `center` nullptr for the origin and lo = -inf, hi = +inf for no box. A sample already
// inside the ball is not written when there is neither a center nor a box.
template <typename scalar_t>
void l2_project(scalar_t* x, const scalar_t* center, const opmath_t<scalar_t>* eps,
                int64_t batch, int64_t n, double lo, double hi) {
  using T = opmath_t<scalar_t>;
  if (batch == 0 || n == 0) return;
  const scalar_t* c = center;
  const auto sq = per_sample_sum(batch, n, [&](int64_t, int64_t s, int64_t t) {
    if (c == nullptr) return sum_squares(x + s, t - s);
    return lane_sum_squares(t - s, [xs = x + s, cs = c + s](int64_t i) {
      return static_cast<double>(static_cast<T>(xs[i]) - static_cast<T>(cs[i]));
    });
  });
  std::vector<T> scale(batch);
  for (int64_t b = 0; b < batch; ++b) scale[b] = l2_scale_of_sumsq<T>(sq[b], eps[b]);
  const bool box = !(std::isinf(lo) && lo < 0 && std::isinf(hi) && hi > 0);
  const T tlo = box_lo<scalar_t>(lo), thi = box_hi<scalar_t>(hi);
  for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
    if (c != nullptr) {
      l2_ball_range<scalar_t, true, true>(x + s, c + s, t - s, scale[b], tlo, thi);
    } else if (box) {
      l2_ball_range<scalar_t, false, true>(x + s, nullptr, t - s, scale[b], tlo, thi);
    } else if (scale[b] != T(1)) {
      l2_ball_range<scalar_t, false, false>(x + s, nullptr, t - s, scale[b], tlo, thi);
    }
  });
  lp_fit<scalar_t>(x, center, eps, batch, n);
}

}  // namespace cpu
}  // namespace advx
