// The one place where advx's operator schemas live. Kernels register themselves
// next to their code (TORCH_LIBRARY_IMPL in each family's *_cpu.cpp / *_cuda.cu);
// fake kernels and autograd are registered from python/advx/ops/. Sparse inputs get
// the error below instead of a kernel.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef ADVX_CUDA_ARCHS
#define ADVX_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(advx, m) {
  // project/: eps is a [B] tensor in the math type (float64 for float64 data, else float32).
  m.def("project_(Tensor(a!) delta, Tensor eps, str norm) -> ()");
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_orig, Tensor eps, Tensor alpha, "
      "str norm, float lo, float hi) -> ()");
  // the exact Euclidean projection of each sample of x onto {z : ||z - center|| <= eps[b]}
  // ∩ [lo, hi]^d, norm 'linf' | 'l2' | 'l1'.
  m.def("project_onto_(Tensor(a!) x, Tensor center, Tensor eps, str norm, float lo, float hi) -> ()");

  // apgd/: one APGD iteration, in place on x_adv and x_prev (the previous iterate, for the
  // momentum); eps and step_size [B] tensors in the math type, alpha the paper's weight of
  // the new step, norm 'linf' | 'l2' | 'l1'.
  m.def(
      "apgd_step_(Tensor(a!) x_adv, Tensor(b!) x_prev, Tensor grad, Tensor x_orig, Tensor eps, "
      "Tensor step_size, float alpha, str norm, float lo, float hi) -> ()");

  // random/: the [B, count] int64 hashes in [0, 2**32) behind advx._rng's per-sample random
  // numbers: element (b, j) depends only on (key, indices[b], draws[b], j).
  m.def("sample_bits(Tensor indices, Tensor draws, int key, int count) -> Tensor");

  // edge_energy/: [B, C, H, W] -> [B]; the backward is its own fused op.
  m.def("edge_energy(Tensor x) -> Tensor");
  m.def("edge_energy_backward(Tensor grad_energy, Tensor x) -> Tensor");

  // optim/: multi-tensor optimizer steps, in place (torch.optim's update rules). Per param i:
  // grads[i] is divided by grad_scale; found_inf != 0 skips the step (counters too);
  // lr_tensor, when given, replaces lr; then the constraint: p = clamp(center +
  // project(p - center, radii[i], constraint_norm), lo, hi) per sample (dim 0), with
  // centers empty for the origin, radii[i] a [B_i] tensor in the math dtype, and
  // constraint_norm 'none' (box only) | 'linf' | 'l2'.
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "bool[] init_momentum, *, float lr, float momentum, float dampening, float weight_decay, "
      "bool nesterov, bool maximize, Tensor? lr_tensor, Tensor? grad_scale, Tensor? found_inf, "
      "Tensor[] centers, Tensor[] radii, str constraint_norm, float lo, float hi) -> ()");
  m.def(
      "adagrad_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, "
      "Tensor(c!)[] steps, *, float lr, float lr_decay, float weight_decay, float eps, "
      "bool maximize, Tensor? lr_tensor, Tensor? grad_scale, Tensor? found_inf, "
      "Tensor[] centers, Tensor[] radii, str constraint_norm, float lo, float hi) -> ()");
  m.def(
      "rmsprop_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, "
      "Tensor(c!)[] grad_avgs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, *, float lr, "
      "float alpha, float eps, float weight_decay, float momentum, bool centered, bool maximize, "
      "Tensor? lr_tensor, Tensor? grad_scale, Tensor? found_inf, Tensor[] centers, "
      "Tensor[] radii, str constraint_norm, float lo, float hi) -> ()");
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, *, float lr, "
      "float beta1, float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, "
      "bool decoupled_weight_decay, Tensor? lr_tensor, Tensor? grad_scale, Tensor? found_inf, "
      "Tensor[] centers, Tensor[] radii, str constraint_norm, float lo, float hi) -> ()");
}

namespace {

// Every op defined above (tests/test_boundaries.py checks that none is missing).
constexpr const char* kOps[] = {"project_",    "pgd_step_",   "project_onto_", "apgd_step_",
                                "sample_bits", "edge_energy", "edge_energy_backward",
                                "sgd_step_",   "adagrad_step_", "rmsprop_step_", "adam_step_"};

void throw_if_sparse(const at::Tensor& t, const std::string& name) {
  TORCH_CHECK_TYPE(!t.defined() || t.layout() == at::kStrided, name, " has layout ", t.layout(),
                   ": advx's kernels take dense tensors, not sparse ones");
}

// The kernel of every op for sparse inputs. Without it the dispatcher's error names a
// backend ("Could not run 'advx::adam_step_' with arguments from the 'SparseCPU'
// backend"); this one names the argument, as a TypeError.
void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const auto inputs = torch::jit::last(*stack, arguments.size());
  for (size_t a = 0; a < arguments.size(); ++a) {
    const c10::IValue& value = inputs[a];
    if (value.isTensor()) {
      throw_if_sparse(value.toTensor(), arguments[a].name());
    } else if (value.isTensorList()) {
      const auto list = value.toTensorList();
      for (size_t i = 0; i < list.size(); ++i) {
        throw_if_sparse(list.get(i), arguments[a].name() + "[" + std::to_string(i) + "]");
      }
    }
  }
  TORCH_CHECK_TYPE(false, op.schema().name(), ": advx's kernels take dense tensors");
}

void reject_sparse_inputs(torch::Library& m) {
  for (const char* name : kOps) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&reject_sparse>());
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, SparseCPU, m) { reject_sparse_inputs(m); }
TORCH_LIBRARY_IMPL(advx, SparseCUDA, m) { reject_sparse_inputs(m); }
TORCH_LIBRARY_IMPL(advx, SparseCsrCPU, m) { reject_sparse_inputs(m); }
TORCH_LIBRARY_IMPL(advx, SparseCsrCUDA, m) { reject_sparse_inputs(m); }

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "advx compiled kernels; the operators live in torch.ops.advx";
  m.def("build_info", []() {
    py::dict info;
    info["torch_version"] = ADVX_TORCH_VERSION;
#ifdef ADVX_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = std::string(ADVX_CUDA_ARCHS);
#else
    info["cuda"] = false;
    info["cuda_archs"] = std::string("");
#endif
#ifdef ADVX_WITH_OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    info["cpu_clones"] = std::string("avx2,default");
#else
    info["cpu_clones"] = std::string("");
#endif
    return info;
  }, "How this build of advx was compiled: torch version, CUDA and its archs, OpenMP.");
}
