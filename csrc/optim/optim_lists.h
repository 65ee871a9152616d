#pragma once
// Argument checks and working views shared by the CPU and CUDA kernels of the optim
// ops: what a list of tensors must look like, what a step counter and the constraint
// arguments must look like, and how every tensor of a call is made walkable with the
// flat index of its parameter.
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/checks.h"

namespace advx {
namespace optim {

inline int64_t batch_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }

// The tensors a caller hands over (params, grads, states, steps) are checked with
// TORCH_CHECK_TYPE / TORCH_CHECK_VALUE (TypeError / ValueError in Python): advx.ops passes
// them on unchecked. What advx.ops builds itself (lr_tensor, the constraint's arguments,
// which lists an option needs) is checked with plain TORCH_CHECK (RuntimeError), which
// torch.ops.advx callers have relied on.

// Every param: a dense-or-strided floating tensor with the dtype and device of params[0].
inline void check_params(at::TensorList params) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.defined(), "params[", i, "] is undefined");
    TORCH_CHECK_TYPE(p.layout() == at::kStrided, "params[", i, "] must be a dense (strided) tensor");
    TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()), "params[", i,
                     "] must be a floating point tensor, got ", p.scalar_type());
    TORCH_CHECK_VALUE(p.device() == params[0].device(), "params[", i, "] is on ", p.device(),
                      " but params[0] is on ", params[0].device(), " (one call per device)");
    TORCH_CHECK_TYPE(p.scalar_type() == params[0].scalar_type(), "params[", i, "] has dtype ",
                     p.scalar_type(), " but params[0] has dtype ", params[0].scalar_type(),
                     " (one call per dtype)");
    check_writable(p, "params", static_cast<int64_t>(i));
  }
}

// `list` holds one tensor per param with the param's shape, dtype and device; an
// optional list may also be empty. A state list (`written`) is checked to be writable and
// apart from its params: both are written, so no copy could make a partial overlap right.
inline void check_list_like(at::TensorList params, at::TensorList list, const char* name,
                            bool may_be_empty = false, bool written = false) {
  if (may_be_empty && list.empty()) return;
  TORCH_CHECK_VALUE(list.size() == params.size(), name, " has ", list.size(),
                    " tensors but params has ", params.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& t = list[i];
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(t.defined(), name, "[", i, "] is undefined");
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, name, "[", i,
                     "] must be a dense (strided) tensor; sparse gradients are not supported");
    TORCH_CHECK_VALUE(t.device() == p.device(), name, "[", i, "] is on ", t.device(),
                      " but params[", i, "] is on ", p.device());
    TORCH_CHECK_TYPE(t.scalar_type() == p.scalar_type(), name, "[", i, "] has dtype ",
                     t.scalar_type(), " but params[", i, "] has dtype ", p.scalar_type());
    TORCH_CHECK_VALUE(t.sizes() == p.sizes(), name, "[", i, "] has shape ", t.sizes(),
                      " but params[", i, "] has shape ", p.sizes());
    if (!written) continue;
    check_writable(t, name, static_cast<int64_t>(i));
    TORCH_CHECK_VALUE(!overlaps_partially(t, p) && !t.is_same(p), name, "[", i, "] and params[", i,
                      "] share memory; an optimizer state must be a tensor of its own");
  }
}

// Step counters: one 1-element float32/float64 tensor per param on `device`, all of
// one dtype (the CUDA kernel reads them through one pointer type). A counter whose dtype
// differs from steps[0]'s is a TypeError; steps[0] itself not float32/float64 stays a
// RuntimeError, as torch.ops.advx callers have had it.
inline void check_steps(at::TensorList params, at::TensorList steps, const at::Device& device) {
  TORCH_CHECK_VALUE(steps.size() == params.size(), "steps has ", steps.size(),
                    " tensors but params has ", params.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& s = steps[i];
    TORCH_CHECK_VALUE(s.defined() && s.numel() == 1, "steps[", i,
                      "] must be a tensor with one element (the step counter)");
    TORCH_CHECK_TYPE(s.scalar_type() == steps[0].scalar_type(), "steps[", i, "] has dtype ",
                     s.scalar_type(), " but steps[0] has dtype ", steps[0].scalar_type());
    TORCH_CHECK(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, "steps[", i,
                "] must have dtype float32 or float64, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.device() == device, "steps[", i, "] is on ", s.device(),
                      " but must be on ", device);
  }
}

// lr_tensor, grad_scale, found_inf: optional one-element floating tensors on `device`.
inline void check_scalar_tensor(const std::optional<at::Tensor>& t, const char* name,
                                const at::Device& device) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->defined() && t->numel() == 1, name, " must be a tensor with one element");
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), name,
              " must be a floating point tensor, got ", t->scalar_type());
  TORCH_CHECK(t->device() == device, name, " is on ", t->device(), " but must be on ", device);
}

// kOnto: the exact Euclidean projection onto ball ∩ box (l2 or l1, `onto_norm`), which
// optim_ops.h runs after an unconstrained update as advx::project_onto_ per param.
enum class Ball { kNone, kLinf, kL2, kOnto };

// The constraint of one call. `radii[i]` is params[i]'s per-sample radius ([B_i], in the
// math dtype); `centers` is empty (center 0) or one tensor like each param.
struct Constraint {
  Ball ball = Ball::kNone;
  bool box = false;  // lo or hi finite
  double lo = 0, hi = 0;
  std::string onto_norm;  // "l2" or "l1" for Ball::kOnto
  at::TensorList centers;
  std::vector<at::Tensor> radii;  // contiguous: the kernels index radius[sample]
  bool active() const { return ball != Ball::kNone || box; }
  bool has_center() const { return !centers.empty(); }
};

inline Constraint check_constraint(at::TensorList params, at::TensorList centers,
                                   at::TensorList radii, const std::string& norm, double lo,
                                   double hi) {
  Constraint c;
  if (norm == "none") {
    c.ball = Ball::kNone;
  } else if (norm == "linf") {
    c.ball = Ball::kLinf;
  } else if (norm == "l2") {
    c.ball = Ball::kL2;
  } else if (norm == "onto_l2" || norm == "onto_l1") {
    c.ball = Ball::kOnto;
    c.onto_norm = norm.substr(5);
  } else {
    TORCH_CHECK(false, "constraint_norm must be 'none', 'linf', 'l2', 'onto_l2' or 'onto_l1', got '", norm, "'");
  }
  TORCH_CHECK(!(lo > hi) && lo == lo && hi == hi, "constraint bounds must satisfy lo <= hi, got (",
              lo, ", ", hi, ")");
  c.lo = lo;
  c.hi = hi;
  c.box = !(std::isinf(lo) && lo < 0 && std::isinf(hi) && hi > 0);
  if (c.ball == Ball::kNone) {
    TORCH_CHECK(centers.empty() && radii.empty(),
                "centers and radii must be empty when constraint_norm is 'none'");
    return c;
  }
  check_list_like(params, centers, "centers", /*may_be_empty=*/true);
  TORCH_CHECK(radii.size() == params.size(), "radii has ", radii.size(),
              " tensors but params has ", params.size(), " (one [B] radius tensor per param)");
  for (size_t i = 0; i < radii.size(); ++i) {
    const at::Tensor& r = radii[i];
    const at::Tensor& p = params[i];
    const int64_t b = batch_of(p);
    TORCH_CHECK(r.defined() && r.dim() == 1 && r.size(0) == b, "radii[", i,
                "] must have shape [", b, "] (one radius per sample of params[", i, "])");
    TORCH_CHECK(r.device() == p.device(), "radii[", i, "] is on ", r.device(), " but params[",
                i, "] is on ", p.device());
    const auto want = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(r.scalar_type() == want, "radii[", i, "] must have dtype ", want,
                " for params of dtype ", p.scalar_type(), ", got ", r.scalar_type());
  }
  c.centers = centers;
  c.radii.reserve(radii.size());
  // An expanded radius (stride 0) is legal input, and the kernels read radius[b].
  for (const at::Tensor& r : radii) c.radii.push_back(r.contiguous());
  return c;
}

// The tensors one call works on. Each tensor of each list is made walkable with the
// flat index of its param: a param that is not dense (or, under a constraint, not
// batch-major) is replaced by a contiguous copy, and any other tensor whose strides
// differ from its param's by a copy in the param's layout. Copies of tensors handed
// over for update are written back by finish().
class WorkingLists {
 public:
  WorkingLists(at::TensorList params, bool batch_major) {
    lists_.emplace_back();
    auto& work = lists_.back();
    work.reserve(params.size());
    for (const at::Tensor& p : params) {
      const bool ok = batch_major ? is_batch_major_dense(p) : p.is_non_overlapping_and_dense();
      if (ok) {
        work.push_back(p);
      } else {
        work.push_back(p.contiguous());
        copies_.emplace_back(p, work.back());
      }
    }
  }

  // Adds a list (one tensor per param, or empty); returns its index for get().
  size_t add(at::TensorList list, bool written) {
    const auto& params = lists_[0];
    std::vector<at::Tensor> work;
    work.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const at::Tensor& t = list[i];
      // an input that partially overlaps its param is read from a copy taken before the update
      if (t.strides() == params[i].strides() && (written || !overlaps_partially(t, params[i]))) {
        work.push_back(t);
      } else {
        work.push_back(at::empty_like(params[i]).copy_(t));
        if (written) copies_.emplace_back(t, work.back());
      }
    }
    lists_.push_back(std::move(work));
    return lists_.size() - 1;
  }

  const std::vector<at::Tensor>& get(size_t list) const { return lists_[list]; }

  void finish() {
    for (auto& [caller, copy] : copies_) caller.copy_(copy);
    copies_.clear();
  }

 private:
  std::vector<std::vector<at::Tensor>> lists_;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies_;
};

// A state list that exists only with an option (momentum, centered, amsgrad): one
// entry per param when the option is on, empty when it is off.
inline void check_optional_list(at::TensorList params, at::TensorList list, bool enabled,
                                const char* name, const char* when_off) {
  if (enabled) {
    TORCH_CHECK(!list.empty() || params.empty(), name, " has 0 tensors but params has ",
                params.size(), ": it is needed unless ", when_off);
    check_list_like(params, list, name, /*may_be_empty=*/false, /*written=*/true);
  } else {
    TORCH_CHECK(list.empty(), name, " must be empty when ", when_off);
  }
}

// The list arguments of each optimizer op, checked the same way on CPU and CUDA.
inline void check_sgd_lists(at::TensorList params, at::TensorList grads,
                            at::TensorList momentum_buffers, const c10::List<bool>& init_momentum,
                            double momentum) {
  check_list_like(params, grads, "grads");
  check_optional_list(params, momentum_buffers, momentum != 0.0, "momentum_buffers", "momentum is 0");
  TORCH_CHECK(init_momentum.size() == (momentum != 0.0 ? params.size() : 0), "init_momentum has ",
              init_momentum.size(), " flags but momentum_buffers has ", momentum_buffers.size());
}

inline void check_adagrad_lists(at::TensorList params, at::TensorList grads, at::TensorList state_sums) {
  check_list_like(params, grads, "grads");
  check_list_like(params, state_sums, "state_sums", /*may_be_empty=*/false, /*written=*/true);
}

inline void check_rmsprop_lists(at::TensorList params, at::TensorList grads,
                                at::TensorList square_avgs, at::TensorList grad_avgs,
                                at::TensorList momentum_buffers, double momentum, bool centered) {
  check_list_like(params, grads, "grads");
  check_list_like(params, square_avgs, "square_avgs", /*may_be_empty=*/false, /*written=*/true);
  check_optional_list(params, grad_avgs, centered, "grad_avgs", "centered is False");
  check_optional_list(params, momentum_buffers, momentum > 0.0, "momentum_buffers", "momentum is 0");
}

inline void check_adam_lists(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, bool amsgrad) {
  check_list_like(params, grads, "grads");
  check_list_like(params, exp_avgs, "exp_avgs", /*may_be_empty=*/false, /*written=*/true);
  check_list_like(params, exp_avg_sqs, "exp_avg_sqs", /*may_be_empty=*/false, /*written=*/true);
  check_optional_list(params, max_exp_avg_sqs, amsgrad, "max_exp_avg_sqs", "amsgrad is False");
}

}  // namespace optim
}  // namespace advx
