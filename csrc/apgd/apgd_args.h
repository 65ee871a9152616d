#pragma once
// Checked arguments of apgd_step_, shared by the CPU and CUDA ops: dense batch-major
// tensors, worked on through contiguous copies (written back after) when the caller's
// layouts differ.
#include <ATen/core/Tensor.h>

#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/exact.h"
#include "common/macros.h"

namespace advx {
namespace apgd {

struct StepArgs {
  at::Tensor x, x_prev, g, xo, eps, eta;
  int64_t batch, n;
  int p;  // 0: linf, 1: l1, 2: l2
};

// An input read while `a` and `b` are written: a copy whenever it shares memory with
// either (the l2 / l1 passes read x_orig again after x is written, in the fit).
inline at::Tensor read_apart(const at::Tensor& input, const at::Tensor& a, const at::Tensor& b) {
  return shares_memory(input, a) || shares_memory(input, b) ? input.clone() : input;
}

inline StepArgs step_args(const at::Tensor& x_adv, const at::Tensor& x_prev, const at::Tensor& grad,
                          const at::Tensor& x_orig, const at::Tensor& eps, const at::Tensor& step_size,
                          double alpha, const std::string& norm, double lo, double hi) {
  TORCH_CHECK_VALUE(norm == "linf" || norm == "l2" || norm == "l1", "norm must be 'linf', 'l2' or 'l1', got '",
                    norm, "'");
  check_floating(x_adv, "x_adv");
  check_same_like(x_adv, "x_adv", x_prev, "x_prev");
  check_same_like(x_adv, "x_adv", grad, "grad");
  check_same_like(x_adv, "x_adv", x_orig, "x_orig");
  check_budget(eps, "eps", x_adv);
  check_budget(step_size, "step_size", x_adv);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0.0 && alpha <= 1.0, "alpha must lie in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(!(lo > hi), "bounds must satisfy lo <= hi, got (", lo, ", ", hi, ")");
  check_writable(x_adv, "x_adv");
  check_writable(x_prev, "x_prev");
  TORCH_CHECK_VALUE(!shares_memory(x_adv, x_prev),
                    "x_prev shares memory with x_adv; both are written, pass separate tensors");
  const at::Tensor g = read_apart(grad, x_adv, x_prev), xo = read_apart(x_orig, x_adv, x_prev);
  const bool direct = same_flat_layout(x_adv, x_prev) && same_flat_layout(x_adv, g) && same_flat_layout(x_adv, xo);
  const int64_t batch = x_adv.dim() == 0 ? 1 : x_adv.size(0);
  return {direct ? x_adv : x_adv.contiguous(),
          direct ? x_prev : x_prev.contiguous(),
          direct ? g : g.contiguous(),
          direct ? xo : xo.contiguous(),
          eps.contiguous(),
          step_size.contiguous(),
          batch,
          batch == 0 ? 0 : x_adv.numel() / batch,
          norm == "linf" ? 0 : (norm == "l1" ? 1 : 2)};
}

// What both devices' kernels take, for one dtype: the data pointers, the per-sample
// budgets, alpha and 1 - alpha in the math type, and the box rounded inward (exact.h).
template <typename scalar_t>
struct StepData {
  using T = opmath_t<scalar_t>;
  scalar_t* x;
  scalar_t* x_prev;
  const scalar_t* g;
  const scalar_t* c;
  const T* eps;
  const T* eta;
  T a, keep, lo, hi;
};

template <typename scalar_t>
StepData<scalar_t> step_data(const StepArgs& args, double alpha, double lo, double hi) {
  using T = opmath_t<scalar_t>;
  return {args.x.data_ptr<scalar_t>(),     args.x_prev.data_ptr<scalar_t>(), args.g.data_ptr<scalar_t>(),
          args.xo.data_ptr<scalar_t>(),    args.eps.data_ptr<T>(),           args.eta.data_ptr<T>(),
          static_cast<T>(alpha),           static_cast<T>(1.0 - alpha),      box_lo<scalar_t>(lo),
          box_hi<scalar_t>(hi)};
}

// The results into the caller's tensors (when worked on through copies); both version
// counters are bumped either way.
inline void write_back(at::Tensor& x_adv, at::Tensor& x_prev, const StepArgs& args) {
  if (!args.x.is_same(x_adv)) x_adv.copy_(args.x);
  if (!args.x_prev.is_same(x_prev)) x_prev.copy_(args.x_prev);
  bump_version(x_adv);
  bump_version(x_prev);
}

}  // namespace apgd
}  // namespace advx
