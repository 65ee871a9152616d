#pragma once
// Results that are inside the budget in their own dtype. The balls are computed in the
// math type and rounded to the storage type S once, to nearest; that rounding (and the
// math type's own) can leave the ball by an ulp: bfloat16 0.03 is 0.030029..., float32
// c + 0.03 can be one float ulp past c + 0.03. What advx promises is the comparison a
// user makes: in float64, |r - c| <= eps (L-inf) and ||r - c||_2 <= eps (L2), lo <= r <= hi.
// These helpers restore it by moving a rounded result one representable step toward
// the center (never past it) and by rounding box bounds inward, written once for g++
// and nvcc. The budgets themselves arrive rounded toward zero into the math type
// (advx._validate.into_math_dtype), so a math-type eps is never above the user's.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace advx {

namespace detail {

// The neighbour of an IEEE value, on its sign-magnitude bit pattern: away from zero is
// +1, toward zero -1; from +-0 the smallest subnormal of the direction's sign.
template <typename U>
ADVX_HD U neighbour_bits(U bits, bool up) {
  constexpr U kSign = U(U(1) << (sizeof(U) * 8 - 1));
  const bool negative = (bits & kSign) != 0;
  if ((bits & U(~kSign)) == 0) return up ? U(1) : U(kSign | U(1));
  return up != negative ? U(bits + 1) : U(bits - 1);
}

template <typename To, typename From>
ADVX_HD To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To out;
  memcpy(&out, &v, sizeof(To));
  return out;
}

}  // namespace detail

// The next representable value of S above (up) or below r. Not for NaN or +-inf inputs
// (callers only step finite values that compared outside a finite range).
ADVX_HD float neighbour(float r, bool up) {
  return detail::bit_cast<float>(detail::neighbour_bits(detail::bit_cast<uint32_t>(r), up));
}
ADVX_HD double neighbour(double r, bool up) {
  return detail::bit_cast<double>(detail::neighbour_bits(detail::bit_cast<uint64_t>(r), up));
}
ADVX_HD c10::Half neighbour(c10::Half r, bool up) {
  return c10::Half(detail::neighbour_bits<uint16_t>(r.x, up), c10::Half::from_bits());
}
ADVX_HD c10::BFloat16 neighbour(c10::BFloat16 r, bool up) {
  return c10::BFloat16(detail::neighbour_bits<uint16_t>(r.x, up), c10::BFloat16::from_bits());
}

template <typename S>
ADVX_HD double to_double(S v) {
  return static_cast<double>(static_cast<opmath_t<S>>(v));
}

// The box bounds as the math type will clamp with them: the smallest S >= lo and the
// largest S <= hi (infinite bounds stay infinite). A value clamped to them and rounded to
// S then stays inside [lo, hi], since rounding to nearest is monotone and both bounds are
// values of S.
template <typename S>
inline opmath_t<S> box_lo(double lo) {
  S s = static_cast<S>(lo);
  if (!std::isinf(lo) && to_double(s) < lo) s = neighbour(s, true);
  return static_cast<opmath_t<S>>(s);
}
template <typename S>
inline opmath_t<S> box_hi(double hi) {
  S s = static_cast<S>(hi);
  if (!std::isinf(hi) && to_double(s) > hi) s = neighbour(s, false);
  return static_cast<opmath_t<S>>(s);
}

namespace detail {

// r moved by `dir` representable steps of its type (-1, 0 or +1), with selects only, so
// the CPU loops that store through it still vectorize (a branch per element did not).
template <typename U>
ADVX_HD U step_bits(U bits, int dir) {
  constexpr U kSign = U(U(1) << (sizeof(U) * 8 - 1));
  const bool negative = (bits & kSign) != 0;
  const bool zero = (bits & U(~kSign)) == 0;
  const U away = U(bits + 1), toward = U(bits - 1);
  // up (dir > 0): away from zero when positive, toward it when negative; down: the reverse
  const U moved = (dir > 0) != negative ? away : toward;
  const U from_zero = dir > 0 ? U(1) : U(kSign | U(1));
  return dir == 0 ? bits : (zero ? from_zero : moved);
}

template <typename S>
ADVX_HD S step(S r, int dir);
template <>
ADVX_HD float step<float>(float r, int dir) {
  return bit_cast<float>(step_bits(bit_cast<uint32_t>(r), dir));
}
template <>
ADVX_HD double step<double>(double r, int dir) {
  return bit_cast<double>(step_bits(bit_cast<uint64_t>(r), dir));
}
template <>
ADVX_HD c10::Half step<c10::Half>(c10::Half r, int dir) {
  return c10::Half(step_bits<uint16_t>(r.x, dir), c10::Half::from_bits());
}
template <>
ADVX_HD c10::BFloat16 step<c10::BFloat16>(c10::BFloat16 r, int dir) {
  return c10::BFloat16(step_bits<uint16_t>(r.x, dir), c10::BFloat16::from_bits());
}

}  // namespace detail

// v (math type, already in the L-inf ball of radius eps around center and in the box)
// rounded to S, then one step toward the center where the rounding left the ball as
// compared in double. One step is enough: v is within half a math-type ulp of the ball,
// and the step is at least that. A center inside the box keeps the result in the box.
template <typename S, typename T>
ADVX_HD S linf_store(T v, T center, T eps) {
  const S r = static_cast<S>(v);
  const double d = to_double(r) - static_cast<double>(center);
  const double e = static_cast<double>(eps);
  const int dir = d > e ? -1 : (d < -e ? 1 : 0);
  return detail::step(r, dir);
}

// The L2 repair of one sample whose rounded result r is outside the ball (||r - c|| >
// eps in double): r_i moves toward c_i by the factor `shrink` (computed in double) and
// then by one step of S, so each |r_i - c_i| shrinks by at least that factor whatever the
// rounding. Elements equal to their center stay.
template <typename S>
ADVX_HD S l2_shrink_toward(S r, double c, double shrink) {
  const double d = to_double(r) - c;
  if (d == 0.0) return r;
  const S moved = static_cast<S>(c + d * shrink);
  const double md = to_double(moved) - c;
  // never past the center, never farther than before
  if (md > 0.0 && d > 0.0) return neighbour(moved, false);
  if (md < 0.0 && d < 0.0) return neighbour(moved, true);
  return static_cast<S>(c);
}

// Whether a sample with sum of squared differences `sumsq` (in double) lies in the L2
// ball of radius eps as a user's float64 norm would see it. The margin (a relative 2^-40
// of eps^2) covers the difference between our fixed-order sum and another summation order.
ADVX_HD bool l2_inside(double sumsq, double eps) {
  return sumsq <= eps * eps * (1.0 - 0x1p-40);
}

// The factor a repair round scales an outside sample by: toward eps * (1 - 2^-30) from
// the norm, so the next check passes after one round in practice; a second round (the
// callers loop) only follows extreme cancellation.
ADVX_HD double l2_shrink_factor(double sumsq, double eps) {
  using std::sqrt;
  return eps / sqrt(sumsq) * (1.0 - 0x1p-30);
}

// The same for the L1 ball (p = 1: `sum` is the sum of |r - c|) and L2 (p = 2: the sum
// of squares), for the fits that serve both (the exact projection).
ADVX_HD double lp_term(int p, double d) { return p == 1 ? (d < 0 ? -d : d) : d * d; }
ADVX_HD bool lp_inside(int p, double sum, double eps) {
  return p == 1 ? sum <= eps * (1.0 - 0x1p-40) : l2_inside(sum, eps);
}
ADVX_HD double lp_shrink_factor(int p, double sum, double eps) {
  return p == 1 ? eps / sum * (1.0 - 0x1p-30) : l2_shrink_factor(sum, eps);
}

}  // namespace advx
