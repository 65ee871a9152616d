// CUDA kernels of sgd_step_, adagrad_step_, rmsprop_step_ and adam_step_: the four
// update rules of optim_math.h as rules of the multi-tensor apply in
// multi_tensor_cuda.cuh (one launch covers many tensors; step, lr, grad_scale and
// found_inf live on the device; the constraint is fused), registered for CUDA.
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "optim/multi_tensor_cuda.cuh"

namespace advx {
namespace optim {
namespace {

using at::TensorList;
using namespace cuda_apply;  // the multi-tensor apply: multi_tensor_cuda.cuh

// ------------------------------------------------------------------ update rules
// Each rule: kStates (state slots it uses: fewer registers), Args (hyper-parameters from
// the host), Coeffs<T> (per tensor, from the step on the device), and update() on
// registers: p, g, the state slots.

struct SgdRule {
  static constexpr int kStates = 1;
  struct Args {
    double momentum, dampening, weight_decay;
    bool nesterov, maximize, has_momentum;
  };
  template <typename T>
  using Coeffs = SgdCoeffs<T>;
  template <typename T>
  __device__ static Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double) {
    return sgd_coeffs<T>(lr, a.momentum, a.dampening, a.weight_decay, a.nesterov, a.maximize,
                         grad_scale);
  }
  template <typename T>
  __device__ static void update(T& p, T g, T (&s)[kStates], bool first, const Coeffs<T>& c,
                                const Args& a) {
    if (a.has_momentum) {
      sgd_update<T, true>(p, g, s[0], first, c);
    } else {
      sgd_update<T, false>(p, g, s[0], first, c);
    }
  }
};

struct AdagradRule {
  static constexpr int kStates = 1;
  struct Args {
    double lr_decay, weight_decay, eps;
    bool maximize;
  };
  template <typename T>
  using Coeffs = AdagradCoeffs<T>;
  template <typename T>
  __device__ static Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double step) {
    return adagrad_coeffs<T>(lr, a.lr_decay, a.weight_decay, a.eps, a.maximize, grad_scale, step);
  }
  template <typename T>
  __device__ static void update(T& p, T g, T (&s)[kStates], bool, const Coeffs<T>& c,
                                const Args&) {
    adagrad_update<T>(p, g, s[0], c);
  }
};

struct RmspropRule {
  static constexpr int kStates = 3;
  struct Args {
    double alpha, eps, weight_decay, momentum;
    bool centered, maximize;
  };
  template <typename T>
  using Coeffs = RmspropCoeffs<T>;
  template <typename T>
  __device__ static Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double) {
    return rmsprop_coeffs<T>(lr, a.alpha, a.eps, a.weight_decay, a.momentum, a.maximize,
                             grad_scale);
  }
  template <typename T>
  __device__ static void update(T& p, T g, T (&s)[kStates], bool, const Coeffs<T>& c,
                                const Args& a) {
    const bool momentum = a.momentum > 0.0;
    if (a.centered && momentum) {
      rmsprop_update<T, true, true>(p, g, s[0], s[1], s[2], c);
    } else if (a.centered) {
      rmsprop_update<T, true, false>(p, g, s[0], s[1], s[2], c);
    } else if (momentum) {
      rmsprop_update<T, false, true>(p, g, s[0], s[1], s[2], c);
    } else {
      rmsprop_update<T, false, false>(p, g, s[0], s[1], s[2], c);
    }
  }
};

struct AdamRule {
  static constexpr int kStates = 3;
  struct Args {
    double beta1, beta2, weight_decay, eps;
    bool amsgrad, maximize, decoupled;
  };
  template <typename T>
  using Coeffs = AdamCoeffs<T>;
  template <typename T>
  __device__ static Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double step) {
    return adam_coeffs<T>(lr, a.beta1, a.beta2, a.weight_decay, a.eps, a.maximize, a.decoupled,
                          grad_scale, step);
  }
  template <typename T>
  __device__ static void update(T& p, T g, T (&s)[kStates], bool, const Coeffs<T>& c,
                                const Args& a) {
    if (a.amsgrad) {
      adam_update<T, true>(p, g, s[0], s[1], s[2], c);
    } else {
      adam_update<T, false>(p, g, s[0], s[1], s[2], c);
    }
  }
};

// ------------------------------------------------------------------ the ops

void sgd_step_cuda(TensorList params, TensorList grads, TensorList momentum_buffers,
                   c10::List<bool> init_momentum, double lr, double momentum, double dampening,
                   double weight_decay, bool nesterov, bool maximize,
                   const std::optional<at::Tensor>& lr_tensor,
                   const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, TensorList centers,
                   TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cuda(params);
  check_sgd_lists(params, grads, momentum_buffers, init_momentum, momentum);
  const bool has_momentum = momentum != 0.0;
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  if (params.empty()) return;
  const CallScalars s = device_scalars(params, lr, lr_tensor, grad_scale, found_inf, {});
  std::vector<bool> first(init_momentum.begin(), init_momentum.end());
  run_call<SgdRule>(params, {{momentum_buffers, true}}, grads, {}, std::move(first), k,
                    {momentum, dampening, weight_decay, nesterov, maximize, has_momentum}, s);
}

void adagrad_step_cuda(TensorList params, TensorList grads, TensorList state_sums,
                       TensorList steps, double lr, double lr_decay, double weight_decay,
                       double eps, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, TensorList centers,
                       TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cuda(params);
  check_adagrad_lists(params, grads, state_sums);
  if (!params.empty()) check_steps(params, steps, params[0].device());
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  if (params.empty()) return;
  const CallScalars s = device_scalars(params, lr, lr_tensor, grad_scale, found_inf, steps);
  run_call<AdagradRule>(params, {{state_sums, true}}, grads, steps, {}, k,
                        {lr_decay, weight_decay, eps, maximize}, s);
}

void rmsprop_step_cuda(TensorList params, TensorList grads, TensorList square_avgs,
                       TensorList grad_avgs, TensorList momentum_buffers, TensorList steps,
                       double lr, double alpha, double eps, double weight_decay, double momentum,
                       bool centered, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, TensorList centers,
                       TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cuda(params);
  check_rmsprop_lists(params, grads, square_avgs, grad_avgs, momentum_buffers, momentum, centered);
  if (!params.empty()) check_steps(params, steps, params[0].device());
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  if (params.empty()) return;
  const CallScalars s = device_scalars(params, lr, lr_tensor, grad_scale, found_inf, steps);
  run_call<RmspropRule>(params, {{square_avgs, true}, {grad_avgs, true}, {momentum_buffers, true}},
                        grads, steps, {}, k, {alpha, eps, weight_decay, momentum, centered, maximize},
                        s);
}

void adam_step_cuda(TensorList params, TensorList grads, TensorList exp_avgs,
                    TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList steps,
                    double lr, double beta1, double beta2, double weight_decay, double eps,
                    bool amsgrad, bool maximize, bool decoupled_weight_decay,
                    const std::optional<at::Tensor>& lr_tensor,
                    const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, TensorList centers,
                    TensorList radii, std::string constraint_norm, double lo, double hi) {
  check_params(params);
  check_on_cuda(params);
  check_adam_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad);
  if (!params.empty()) check_steps(params, steps, params[0].device());
  const Constraint k = check_constraint(params, centers, radii, constraint_norm, lo, hi);
  if (params.empty()) return;
  const CallScalars s = device_scalars(params, lr, lr_tensor, grad_scale, found_inf, steps);
  run_call<AdamRule>(params, {{exp_avgs, true}, {exp_avg_sqs, true}, {max_exp_avg_sqs, true}},
                     grads, steps, {}, k,
                     {beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay},
                     s);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CUDA, m) {
  m.impl("sgd_step_", &sgd_step_cuda);
  m.impl("adagrad_step_", &adagrad_step_cuda);
  m.impl("rmsprop_step_", &rmsprop_step_cuda);
  m.impl("adam_step_", &adam_step_cuda);
}

}  // namespace optim
}  // namespace advx
