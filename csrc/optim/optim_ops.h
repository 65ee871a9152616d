#pragma once
// The four optimizer ops (sgd_step_, adagrad_step_, rmsprop_step_, adam_step_), written
// once for both devices: each checks its arguments, then hands a StepCall to the device's
// driver with its rule (optim_rules.h). optim_cpu.cpp registers op<cpu_apply::Driver>,
// optim_cuda.cu op<cuda_apply::Driver>. A Driver provides kDevice (the kernel's device
// type) and run<Rule>(const StepCall<Rule>&).
#include <ATen/core/List.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "optim/optim_lists.h"
#include "optim/optim_rules.h"

namespace advx {
namespace optim {

// One checked call with at least one param.
template <typename Rule>
struct StepCall {
  at::TensorList params, grads;
  std::array<at::TensorList, Rule::kStates> states;  // a list the variant does not use is empty
  at::TensorList steps;                              // empty: no step counters (SGD)
  std::vector<bool> first;                           // SGD: momentum buffer i is new
  Constraint constraint;
  typename Rule::Args args;
  double lr;
  std::optional<at::Tensor> lr_tensor, grad_scale, found_inf;
};

// params: valid (check_params) and on the kernel's device type. Returns the device every
// other tensor of the call must be on.
inline at::Device check_params_on(at::TensorList params, c10::DeviceType kernel) {
  check_params(params);
  if (params.empty()) return at::Device(kernel);
  const at::Device device = params[0].device();
  if (kernel == c10::DeviceType::CUDA) {
    TORCH_CHECK(device.is_cuda(), "params must be on a CUDA device for the CUDA kernel, got ",
                device);
  } else {
    TORCH_CHECK(device.is_cpu(), "params must be on the CPU for the CPU kernel, got ", device);
  }
  return device;
}

// The checks after the op's own lists: the constraint, then (with params: without any, the
// call does nothing) the one-element scalar tensors. nullopt: nothing to do.
inline std::optional<Constraint> check_rest(at::TensorList params, const at::Device& device,
                                            at::TensorList centers, at::TensorList radii,
                                            const std::string& norm, double lo, double hi,
                                            const std::optional<at::Tensor>& lr_tensor,
                                            const std::optional<at::Tensor>& grad_scale,
                                            const std::optional<at::Tensor>& found_inf) {
  Constraint k = check_constraint(params, centers, radii, norm, lo, hi);
  if (params.empty()) return std::nullopt;
  check_scalar_tensor(lr_tensor, "lr_tensor", device);
  check_scalar_tensor(grad_scale, "grad_scale", device);
  check_scalar_tensor(found_inf, "found_inf", device);
  return k;
}

// The exact projection of every param onto its ball ∩ box (Ball::kOnto), by the
// project_onto_ op on the param's device. A step skipped by found_inf leaves the params
// as they were: the projection's result is then discarded on the device (no host read).
inline void project_onto_each(const Constraint& k, at::TensorList params, const std::vector<at::Tensor>& before,
                              const std::optional<at::Tensor>& found_inf) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("advx::project_onto_", "")
                             // the signature of the project_onto_ kernels (project/)
                             .typed<void(at::Tensor, const at::Tensor&, const at::Tensor&, std::string, double,
                                         double)>();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const at::Tensor center = k.has_center() ? k.centers[i] : at::zeros_like(p);
    op.call(p, center, k.radii[i], k.onto_norm, k.lo, k.hi);
    if (found_inf) p.copy_(at::where(found_inf->ne(0), before[i], p));
  }
}

// The driver's update, then the version counter of every tensor it wrote (params, states,
// step counters) bumped, as torch.optim's in-place updates do.
template <typename Driver, typename Rule>
void run(const StepCall<Rule>& call) {
  if (call.constraint.ball == Ball::kOnto) {
    // the update without constraint (no box either), then the exact projection
    std::vector<at::Tensor> before;
    if (call.found_inf) {
      for (const at::Tensor& p : call.params) before.push_back(p.clone());
    }
    StepCall<Rule> free = call;
    free.constraint = Constraint{};
    Driver::template run<Rule>(free);
    project_onto_each(call.constraint, call.params, before, call.found_inf);
  } else {
    Driver::template run<Rule>(call);
  }
  for (const at::Tensor& p : call.params) bump_version(p);
  for (const at::TensorList& list : call.states) {
    for (const at::Tensor& t : list) bump_version(t);
  }
  for (const at::Tensor& s : call.steps) bump_version(s);
}

using at::TensorList;
using OptTensor = std::optional<at::Tensor>;

template <typename Driver>
void sgd_step(TensorList params, TensorList grads, TensorList momentum_buffers,
              c10::List<bool> init_momentum, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool maximize, const OptTensor& lr_tensor,
              const OptTensor& grad_scale, const OptTensor& found_inf, TensorList centers,
              TensorList radii, std::string constraint_norm, double lo, double hi) {
  const at::Device device = check_params_on(params, Driver::kDevice);
  check_sgd_lists(params, grads, momentum_buffers, init_momentum, momentum);
  const auto k = check_rest(params, device, centers, radii, constraint_norm, lo, hi, lr_tensor,
                            grad_scale, found_inf);
  if (!k) return;
  run<Driver, SgdRule>(StepCall<SgdRule>
      {params, grads, {momentum_buffers}, {},
       std::vector<bool>(init_momentum.begin(), init_momentum.end()), *k,
       {momentum, dampening, weight_decay, nesterov, maximize}, lr, lr_tensor, grad_scale,
       found_inf});
}

template <typename Driver>
void adagrad_step(TensorList params, TensorList grads, TensorList state_sums, TensorList steps,
                  double lr, double lr_decay, double weight_decay, double eps, bool maximize,
                  const OptTensor& lr_tensor, const OptTensor& grad_scale,
                  const OptTensor& found_inf, TensorList centers, TensorList radii,
                  std::string constraint_norm, double lo, double hi) {
  const at::Device device = check_params_on(params, Driver::kDevice);
  check_adagrad_lists(params, grads, state_sums);
  check_steps(params, steps, device);
  const auto k = check_rest(params, device, centers, radii, constraint_norm, lo, hi, lr_tensor,
                            grad_scale, found_inf);
  if (!k) return;
  run<Driver, AdagradRule>(StepCall<AdagradRule>{params, grads, {state_sums}, steps, {}, *k,
                                     {lr_decay, weight_decay, eps, maximize}, lr, lr_tensor,
                                     grad_scale, found_inf});
}

template <typename Driver>
void rmsprop_step(TensorList params, TensorList grads, TensorList square_avgs,
                  TensorList grad_avgs, TensorList momentum_buffers, TensorList steps, double lr,
                  double alpha, double eps, double weight_decay, double momentum, bool centered,
                  bool maximize, const OptTensor& lr_tensor, const OptTensor& grad_scale,
                  const OptTensor& found_inf, TensorList centers, TensorList radii,
                  std::string constraint_norm, double lo, double hi) {
  const at::Device device = check_params_on(params, Driver::kDevice);
  check_rmsprop_lists(params, grads, square_avgs, grad_avgs, momentum_buffers, momentum, centered);
  check_steps(params, steps, device);
  const auto k = check_rest(params, device, centers, radii, constraint_norm, lo, hi, lr_tensor,
                            grad_scale, found_inf);
  if (!k) return;
  run<Driver, RmspropRule>(StepCall<RmspropRule>{params, grads, {square_avgs, grad_avgs, momentum_buffers},
                                     steps, {}, *k,
                                     {alpha, eps, weight_decay, momentum, centered, maximize}, lr,
                                     lr_tensor, grad_scale, found_inf});
}

template <typename Driver>
void adam_step(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList max_exp_avg_sqs, TensorList steps, double lr, double beta1,
               double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
               bool decoupled_weight_decay, const OptTensor& lr_tensor,
               const OptTensor& grad_scale, const OptTensor& found_inf, TensorList centers,
               TensorList radii, std::string constraint_norm, double lo, double hi) {
  const at::Device device = check_params_on(params, Driver::kDevice);
  check_adam_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad);
  check_steps(params, steps, device);
  const auto k = check_rest(params, device, centers, radii, constraint_norm, lo, hi, lr_tensor,
                            grad_scale, found_inf);
  if (!k) return;
  run<Driver, AdamRule>(StepCall<AdamRule>{params, grads, {exp_avgs, exp_avg_sqs, max_exp_avg_sqs}, steps,
                                  {}, *k,
                                  {beta1, beta2, weight_decay, eps, amsgrad, maximize,
                                   decoupled_weight_decay},
                                  lr, lr_tensor, grad_scale, found_inf});
}

}  // namespace optim
}  // namespace advx
