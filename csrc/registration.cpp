// The one place where advx's operator schemas live. Kernels register themselves
// next to their code (TORCH_LIBRARY_IMPL in each family's *_cpu.cpp / *_cuda.cu);
// fake kernels and autograd are registered from python/advx/ops/.
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

  // edge_energy/: [B, C, H, W] -> [B]; the backward is its own fused op.
  m.def("edge_energy(Tensor x) -> Tensor");
  m.def("edge_energy_backward(Tensor grad_energy, Tensor x) -> Tensor");

  // optim/ schemas: BEGIN
  // optim/ schemas: END
}

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
