#pragma once
// Checked arguments of project_ and pgd_step_ as dense batch-major tensors, shared by
// the CPU and CUDA ops. A strided input is worked on through a contiguous copy that
// write_back() returns to the caller's tensor.
#include <ATen/core/Tensor.h>

#include <string>

#include "common/checks.h"

namespace advx {
namespace project {

struct ProjectArgs {
  at::Tensor d, eps;
  int64_t batch, n;
};

struct PgdStepArgs {
  at::Tensor x, g, xo, eps, alpha;
  int64_t batch, n;
};

inline int64_t batch_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }

inline ProjectArgs project_args(const at::Tensor& delta, const at::Tensor& eps, const std::string& norm) {
  check_norm(norm);
  check_floating(delta, "delta");
  check_budget(eps, "eps", delta);
  check_writable(delta, "delta");
  at::Tensor d = is_batch_major_dense(delta) ? delta : delta.contiguous();
  const int64_t batch = batch_of(d);
  return {d, eps.contiguous(), batch, batch == 0 ? 0 : d.numel() / batch};
}

inline PgdStepArgs pgd_step_args(const at::Tensor& x_adv, const at::Tensor& grad,
                                 const at::Tensor& x_orig, const at::Tensor& eps,
                                 const at::Tensor& alpha, const std::string& norm, double lo,
                                 double hi) {
  check_norm(norm);
  check_floating(x_adv, "x_adv");
  check_same_like(x_adv, "x_adv", grad, "grad");
  check_same_like(x_adv, "x_adv", x_orig, "x_orig");
  check_budget(eps, "eps", x_adv);
  check_budget(alpha, "alpha", x_adv);
  TORCH_CHECK(!(lo > hi), "bounds must satisfy lo <= hi, got (", lo, ", ", hi, ")");
  check_writable(x_adv, "x_adv");
  const at::Tensor g = readable_beside(grad, x_adv), xo = readable_beside(x_orig, x_adv);
  const bool direct = same_flat_layout(x_adv, g) && same_flat_layout(x_adv, xo);
  at::Tensor x = direct ? x_adv : x_adv.contiguous();
  const int64_t batch = batch_of(x);
  return {x,
          direct ? g : g.contiguous(),
          direct ? xo : xo.contiguous(),
          eps.contiguous(),
          alpha.contiguous(),
          batch,
          batch == 0 ? 0 : x.numel() / batch};
}

// The result into the caller's tensor (when it was worked on through a copy), whose
// version counter the update bumps either way.
struct ProjectOntoArgs {
  at::Tensor x, center, eps;
  int64_t batch, n;
  int p;  // 0: linf, 1: l1, 2: l2
};

inline ProjectOntoArgs project_onto_args(const at::Tensor& x, const at::Tensor& center,
                                         const at::Tensor& eps, const std::string& norm, double lo,
                                         double hi) {
  TORCH_CHECK(norm == "linf" || norm == "l2" || norm == "l1",
              "norm must be 'linf', 'l2' or 'l1', got '", norm, "'");
  check_floating(x, "x");
  check_same_like(x, "x", center, "center");
  check_budget(eps, "eps", x);
  TORCH_CHECK(!(lo > hi), "bounds must satisfy lo <= hi, got (", lo, ", ", hi, ")");
  check_writable(x, "x");
  const at::Tensor c = readable_beside(center, x);
  const bool direct = same_flat_layout(x, c);
  at::Tensor work = direct ? x : x.contiguous();
  const int64_t batch = batch_of(work);
  return {work, direct ? c : c.contiguous(), eps.contiguous(), batch,
          batch == 0 ? 0 : work.numel() / batch, norm == "linf" ? 0 : (norm == "l1" ? 1 : 2)};
}

inline void write_back(at::Tensor& target, const at::Tensor& worked) {
  if (!worked.is_same(target)) target.copy_(worked);
  bump_version(target);
}

}  // namespace project
}  // namespace advx
