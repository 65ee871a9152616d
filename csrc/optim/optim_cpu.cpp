// CPU kernels of sgd_step_, adagrad_step_, rmsprop_step_ and adam_step_: the vectorized
// loops over optim_math.h's rules, driven by the multi-tensor apply of
// multi_tensor_cpu.h. All tensors of a call are cut into fixed-size chunks of their
// concatenation and walked in ONE at::parallel_for (one parallel region per call rather
// than one per tensor, which is what costs torch's per-tensor kernels time on lists of
// many small tensors). The constraint is fused: L-inf and the box in the same loop, L2 as
// a deterministic per-sample norm pass plus a scale pass after it.
// Built with -fno-math-errno (CMakeLists.txt): sqrt without errno is what lets gcc
// vectorize the Adam, Adagrad and RMSprop loops; results are unchanged.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "optim/multi_tensor_cpu.h"

namespace advx {
namespace optim {
namespace {

using at::TensorList;
using namespace cpu_apply;  // the multi-tensor apply: multi_tensor_cpu.h

// ------------------------------------------------------------------ SGD

template <typename scalar_t, bool kMomentum, int kFuse>
ADVX_CPU_CLONES void sgd_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ g,
                               scalar_t* __restrict__ buf, const scalar_t* __restrict__ center,
                               int64_t n, bool first, SgdCoeffs<opmath_t<scalar_t>> c,
                               LinfBox<opmath_t<scalar_t>> k) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    T pi = static_cast<T>(p[i]);
    T bi = kMomentum ? static_cast<T>(buf[i]) : T(0);
    sgd_update<T, kMomentum>(pi, static_cast<T>(g[i]), bi, first, c);
    p[i] = static_cast<scalar_t>(fused_constraint<kFuse>(pi, center, i, k));
    if (kMomentum) buf[i] = static_cast<scalar_t>(bi);
  }
}

void sgd_step_cpu(TensorList params, TensorList grads, TensorList momentum_buffers,
                  c10::List<bool> init_momentum, double lr, double momentum, double dampening,
                  double weight_decay, bool nesterov, bool maximize,
                  const std::optional<at::Tensor>& lr_tensor,
                  const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf, TensorList centers,
                  TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cpu(params);
  check_sgd_lists(params, grads, momentum_buffers, init_momentum, momentum);
  const bool has_momentum = momentum != 0.0;
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  const CallScalars s = read_call_scalars(params, lr, lr_tensor, grad_scale, found_inf);
  if (s.skip || params.empty()) return;

  WorkingLists work(params, k.ball != Ball::kNone);
  const size_t grad_list = work.add(grads, false);
  const size_t buf_list = work.add(momentum_buffers, true);
  const size_t center_list = work.add(centers, false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "sgd_step_", [&] {
    using T = opmath_t<scalar_t>;
    const auto coeffs =
        sgd_coeffs<T>(s.lr, momentum, dampening, weight_decay, nesterov, maximize, s.grad_scale);
    const auto p = pointers<scalar_t>(work.get(0));
    const auto g = pointers<scalar_t>(work.get(grad_list));
    const auto buf = pointers<scalar_t>(work.get(buf_list));
    const auto ctr = center_pointers<scalar_t>(work, k, center_list, params.size());
    run_update<scalar_t>(work, k, center_list, [&](size_t i) {
      return [&, i](auto fuse, int64_t b, int64_t e, LinfBox<T> box) {
        constexpr int kFuse = decltype(fuse)::value;
        const scalar_t* c = ctr[i] ? ctr[i] + b : nullptr;
        if (has_momentum) {
          sgd_range<scalar_t, true, kFuse>(p[i] + b, g[i] + b, buf[i] + b, c, e - b,
                                           init_momentum.get(i), coeffs, box);
        } else {
          sgd_range<scalar_t, false, kFuse>(p[i] + b, g[i] + b, nullptr, c, e - b, false,
                                            coeffs, box);
        }
      };
    });
  });
}

// ------------------------------------------------------------------ Adagrad

template <typename scalar_t, int kFuse>
ADVX_CPU_CLONES void adagrad_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ g,
                                   scalar_t* __restrict__ sum,
                                   const scalar_t* __restrict__ center, int64_t n,
                                   AdagradCoeffs<opmath_t<scalar_t>> c,
                                   LinfBox<opmath_t<scalar_t>> k) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    T pi = static_cast<T>(p[i]);
    T si = static_cast<T>(sum[i]);
    adagrad_update<T>(pi, static_cast<T>(g[i]), si, c);
    p[i] = static_cast<scalar_t>(fused_constraint<kFuse>(pi, center, i, k));
    sum[i] = static_cast<scalar_t>(si);
  }
}

void adagrad_step_cpu(TensorList params, TensorList grads, TensorList state_sums,
                      TensorList steps, double lr, double lr_decay, double weight_decay,
                      double eps, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, TensorList centers,
                      TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cpu(params);
  check_adagrad_lists(params, grads, state_sums);
  check_steps(params, steps, at::Device(at::kCPU));
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  const CallScalars s = read_call_scalars(params, lr, lr_tensor, grad_scale, found_inf);
  if (s.skip || params.empty()) return;

  const auto step = advance_steps(steps);
  WorkingLists work(params, k.ball != Ball::kNone);
  const size_t grad_list = work.add(grads, false);
  const size_t sum_list = work.add(state_sums, true);
  const size_t center_list = work.add(centers, false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adagrad_step_", [&] {
    using T = opmath_t<scalar_t>;
    std::vector<AdagradCoeffs<T>> coeffs;
    coeffs.reserve(step.size());
    for (double t : step) {
      coeffs.push_back(adagrad_coeffs<T>(s.lr, lr_decay, weight_decay, eps, maximize,
                                         s.grad_scale, t));
    }
    const auto p = pointers<scalar_t>(work.get(0));
    const auto g = pointers<scalar_t>(work.get(grad_list));
    const auto sum = pointers<scalar_t>(work.get(sum_list));
    const auto ctr = center_pointers<scalar_t>(work, k, center_list, params.size());
    run_update<scalar_t>(work, k, center_list, [&](size_t i) {
      return [&, i](auto fuse, int64_t b, int64_t e, LinfBox<T> box) {
        const scalar_t* c = ctr[i] ? ctr[i] + b : nullptr;
        adagrad_range<scalar_t, decltype(fuse)::value>(p[i] + b, g[i] + b, sum[i] + b, c, e - b,
                                                       coeffs[i], box);
      };
    });
  });
}

// ------------------------------------------------------------------ RMSprop

template <typename scalar_t, bool kCentered, bool kMomentum, int kFuse>
ADVX_CPU_CLONES void rmsprop_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ g,
                                   scalar_t* __restrict__ sq, scalar_t* __restrict__ ga,
                                   scalar_t* __restrict__ buf,
                                   const scalar_t* __restrict__ center, int64_t n,
                                   RmspropCoeffs<opmath_t<scalar_t>> c,
                                   LinfBox<opmath_t<scalar_t>> k) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    T pi = static_cast<T>(p[i]);
    T si = static_cast<T>(sq[i]);
    T gai = kCentered ? static_cast<T>(ga[i]) : T(0);
    T bi = kMomentum ? static_cast<T>(buf[i]) : T(0);
    rmsprop_update<T, kCentered, kMomentum>(pi, static_cast<T>(g[i]), si, gai, bi, c);
    p[i] = static_cast<scalar_t>(fused_constraint<kFuse>(pi, center, i, k));
    sq[i] = static_cast<scalar_t>(si);
    if (kCentered) ga[i] = static_cast<scalar_t>(gai);
    if (kMomentum) buf[i] = static_cast<scalar_t>(bi);
  }
}

void rmsprop_step_cpu(TensorList params, TensorList grads, TensorList square_avgs,
                      TensorList grad_avgs, TensorList momentum_buffers, TensorList steps,
                      double lr, double alpha, double eps, double weight_decay, double momentum,
                      bool centered, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, TensorList centers,
                      TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cpu(params);
  check_rmsprop_lists(params, grads, square_avgs, grad_avgs, momentum_buffers, momentum, centered);
  const bool has_momentum = momentum > 0.0;
  check_steps(params, steps, at::Device(at::kCPU));
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  const CallScalars s = read_call_scalars(params, lr, lr_tensor, grad_scale, found_inf);
  if (s.skip || params.empty()) return;

  advance_steps(steps);
  WorkingLists work(params, k.ball != Ball::kNone);
  const size_t grad_list = work.add(grads, false);
  const size_t sq_list = work.add(square_avgs, true);
  const size_t ga_list = work.add(grad_avgs, true);
  const size_t buf_list = work.add(momentum_buffers, true);
  const size_t center_list = work.add(centers, false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "rmsprop_step_", [&] {
    using T = opmath_t<scalar_t>;
    const auto coeffs = rmsprop_coeffs<T>(s.lr, alpha, eps, weight_decay, momentum, maximize,
                                          s.grad_scale);
    const auto p = pointers<scalar_t>(work.get(0));
    const auto g = pointers<scalar_t>(work.get(grad_list));
    const auto sq = pointers<scalar_t>(work.get(sq_list));
    const auto ga = pointers<scalar_t>(work.get(ga_list));
    const auto buf = pointers<scalar_t>(work.get(buf_list));
    const auto ctr = center_pointers<scalar_t>(work, k, center_list, params.size());
    run_update<scalar_t>(work, k, center_list, [&](size_t i) {
      return [&, i](auto fuse, int64_t b, int64_t e, LinfBox<T> box) {
        constexpr int kFuse = decltype(fuse)::value;
        const scalar_t* c = ctr[i] ? ctr[i] + b : nullptr;
        scalar_t* gai = centered ? ga[i] + b : nullptr;
        scalar_t* bufi = has_momentum ? buf[i] + b : nullptr;
        if (centered && has_momentum) {
          rmsprop_range<scalar_t, true, true, kFuse>(p[i] + b, g[i] + b, sq[i] + b, gai, bufi, c, e - b, coeffs, box);
        } else if (centered) {
          rmsprop_range<scalar_t, true, false, kFuse>(p[i] + b, g[i] + b, sq[i] + b, gai, bufi, c, e - b, coeffs, box);
        } else if (has_momentum) {
          rmsprop_range<scalar_t, false, true, kFuse>(p[i] + b, g[i] + b, sq[i] + b, gai, bufi, c, e - b, coeffs, box);
        } else {
          rmsprop_range<scalar_t, false, false, kFuse>(p[i] + b, g[i] + b, sq[i] + b, gai, bufi, c, e - b, coeffs, box);
        }
      };
    });
  });
}

// ------------------------------------------------------------------ Adam / AdamW

template <typename scalar_t, bool kAmsgrad, int kFuse>
ADVX_CPU_CLONES void adam_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ g,
                                scalar_t* __restrict__ m, scalar_t* __restrict__ v,
                                scalar_t* __restrict__ vmax, const scalar_t* __restrict__ center,
                                int64_t n, AdamCoeffs<opmath_t<scalar_t>> c,
                                LinfBox<opmath_t<scalar_t>> k) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    T pi = static_cast<T>(p[i]);
    T mi = static_cast<T>(m[i]);
    T vi = static_cast<T>(v[i]);
    T vmi = kAmsgrad ? static_cast<T>(vmax[i]) : T(0);
    adam_update<T, kAmsgrad>(pi, static_cast<T>(g[i]), mi, vi, vmi, c);
    p[i] = static_cast<scalar_t>(fused_constraint<kFuse>(pi, center, i, k));
    m[i] = static_cast<scalar_t>(mi);
    v[i] = static_cast<scalar_t>(vi);
    if (kAmsgrad) vmax[i] = static_cast<scalar_t>(vmi);
  }
}

void adam_step_cpu(TensorList params, TensorList grads, TensorList exp_avgs,
                   TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList steps,
                   double lr, double beta1, double beta2, double weight_decay, double eps,
                   bool amsgrad, bool maximize, bool decoupled_weight_decay,
                   const std::optional<at::Tensor>& lr_tensor,
                   const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, TensorList centers,
                   TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cpu(params);
  check_adam_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad);
  check_steps(params, steps, at::Device(at::kCPU));
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  const CallScalars s = read_call_scalars(params, lr, lr_tensor, grad_scale, found_inf);
  if (s.skip || params.empty()) return;

  const auto step = advance_steps(steps);
  WorkingLists work(params, k.ball != Ball::kNone);
  const size_t grad_list = work.add(grads, false);
  const size_t m_list = work.add(exp_avgs, true);
  const size_t v_list = work.add(exp_avg_sqs, true);
  const size_t vmax_list = work.add(max_exp_avg_sqs, true);
  const size_t center_list = work.add(centers, false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adam_step_", [&] {
    using T = opmath_t<scalar_t>;
    std::vector<AdamCoeffs<T>> coeffs;
    coeffs.reserve(step.size());
    for (double t : step) {
      coeffs.push_back(adam_coeffs<T>(s.lr, beta1, beta2, weight_decay, eps, maximize,
                                      decoupled_weight_decay, s.grad_scale, t));
    }
    const auto p = pointers<scalar_t>(work.get(0));
    const auto g = pointers<scalar_t>(work.get(grad_list));
    const auto m = pointers<scalar_t>(work.get(m_list));
    const auto v = pointers<scalar_t>(work.get(v_list));
    const auto vmax = pointers<scalar_t>(work.get(vmax_list));
    const auto ctr = center_pointers<scalar_t>(work, k, center_list, params.size());
    run_update<scalar_t>(work, k, center_list, [&](size_t i) {
      return [&, i](auto fuse, int64_t b, int64_t e, LinfBox<T> box) {
        constexpr int kFuse = decltype(fuse)::value;
        const scalar_t* c = ctr[i] ? ctr[i] + b : nullptr;
        if (amsgrad) {
          adam_range<scalar_t, true, kFuse>(p[i] + b, g[i] + b, m[i] + b, v[i] + b,
                                            vmax[i] + b, c, e - b, coeffs[i], box);
        } else {
          adam_range<scalar_t, false, kFuse>(p[i] + b, g[i] + b, m[i] + b, v[i] + b, nullptr,
                                             c, e - b, coeffs[i], box);
        }
      };
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CPU, m) {
  m.impl("sgd_step_", &sgd_step_cpu);
  m.impl("adagrad_step_", &adagrad_step_cpu);
  m.impl("rmsprop_step_", &rmsprop_step_cpu);
  m.impl("adam_step_", &adam_step_cpu);
}

}  // namespace optim
}  // namespace advx
