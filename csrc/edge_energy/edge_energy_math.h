#pragma once
// The per-pixel rules of the multiscale edge energy, shared by the CPU loops
// (edge_energy_cpu.cpp) and the CUDA kernels (edge_energy_cuda.cu). T is the math type.
//
// energy(u) = sum over levels l of ||R u_l||^2, R = I - G (G: 5x5 Gaussian, sigma 1,
// zero padding 2), u_{l+1} = avg_pool2d(u_l, 2, padding=1), while min(h, w) > 5.
// G is the outer product of a normalized 1-D kernel, so G u is a row pass then a column
// pass of blur5. G is symmetric under zero padding, hence R^T = R and
// d energy / d u_l = 2 R (R u_l) + unpool(d energy / d u_{l+1}).
#include <cstdint>

#include "common/macros.h"

namespace advx {
namespace edge {

// exp(-k^2 / 2) / sum_k exp(-k^2 / 2) for k = +-2, +-1, 0.
constexpr double kTapOuter = 0.05448868454964294;
constexpr double kTapInner = 0.24420134200323332;
constexpr double kTapCenter = 0.4026199468942474;
constexpr int kRadius = 2;
// A level contributes only while both sides exceed this.
constexpr int64_t kMinSide = 5;

// One 1-D pass of the Gaussian over five consecutive samples (zero outside the image).
template <typename T>
ADVX_HD T blur5(T a, T b, T c, T d, T e) {
  return T(kTapCenter) * c + T(kTapInner) * (b + d) + T(kTapOuter) * (a + e);
}

// The high-pass residual of one pixel: u - (G u).
template <typename T>
ADVX_HD T residual(T value, T blurred) {
  return value - blurred;
}

ADVX_HD bool has_level(int64_t h, int64_t w) {
  return (h < w ? h : w) > kMinSide;
}

// avg_pool2d(kernel 2, stride 2, padding 1) output size along one side.
ADVX_HD int64_t pooled_size(int64_t n) {
  return n / 2 + 1;
}

// Pooled output i reads inputs 2i-1 and 2i; input i feeds output (i+1)/2.
ADVX_HD int64_t pool_first_input(int64_t i) {
  return 2 * i - 1;
}
ADVX_HD int64_t pool_parent(int64_t i) {
  return (i + 1) / 2;
}

// One pooled pixel from its 2x2 window (out-of-bounds inputs passed as 0): the padding
// counts in the divisor (count_include_pad=True), and the sum runs in avg_pool2d's order.
template <typename T>
ADVX_HD T pool4(T top_left, T top_right, T bottom_left, T bottom_right) {
  return (((top_left + top_right) + bottom_left) + bottom_right) * T(0.25);
}

// Gradient of one pixel of level l: 2 * grad_energy * R(R u)(pixel) plus the 1/4 share
// of the gradient of the pooled pixel it fed (0 at the coarsest level).
template <typename T>
ADVX_HD T pixel_grad(T two_grad_energy, T residual_of_residual, T parent_grad) {
  return two_grad_energy * residual_of_residual + parent_grad * T(0.25);
}

}  // namespace edge
}  // namespace advx
