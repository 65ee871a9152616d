// CUDA kernel of apgd_step_: L-inf one thread per element (grid-stride), l2 / l1 one
// block per sample running apgd_math.h's passes with fixed-order block sums, then the
// fit into the ball in the data's dtype (common/ball_cuda.cuh). No host reads: the step
// sizes and budgets stay on the device, so the step can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "apgd/apgd_args.h"
#include "apgd/apgd_math.h"
#include "common/ball_cuda.cuh"
#include "common/cuda_utils.cuh"
#include "common/exact.h"

namespace advx {
namespace {

using cuda::kThreads;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) apgd_linf_kernel(apgd::StepData<scalar_t> d, int64_t numel, int64_t n) {
  using T = opmath_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < numel; i += stride) {
    const int64_t b = i / n;
    const scalar_t old = d.x[i];
    d.x[i] = apgd::linf_element<scalar_t, T>(static_cast<T>(old), static_cast<T>(d.x_prev[i]), static_cast<T>(d.g[i]),
                                             static_cast<T>(d.c[i]), d.eps[b], d.eta[b], d.a, d.keep, d.lo, d.hi);
    d.x_prev[i] = old;
  }
}

// The sample's sum over the block: every thread gets the same value.
struct BlockSum {
  int64_t n;
  template <typename F>
  __device__ double operator()(const F& f) const {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += f(i);
    return cuda::block_sum_to_all(acc);
  }
};

struct BlockEach {
  int64_t n;
  template <typename F>
  __device__ void operator()(const F& f) const {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) apgd_lp_kernel(int p, apgd::StepData<scalar_t> d, int64_t n) {
  const int64_t b = blockIdx.x, o = b * n;
  apgd::lp_sample<scalar_t>(p, d.x + o, d.x_prev + o, d.g + o, d.c + o, d.eps[b], d.eta[b], d.a, d.keep, d.lo, d.hi,
                            BlockSum{n}, BlockEach{n});
}

void apgd_step_cuda(at::Tensor x_adv, at::Tensor x_prev, const at::Tensor& grad, const at::Tensor& x_orig,
                    const at::Tensor& eps, const at::Tensor& step_size, double alpha, std::string norm, double lo,
                    double hi) {
  const apgd::StepArgs args = apgd::step_args(x_adv, x_prev, grad, x_orig, eps, step_size, alpha, norm, lo, hi);
  if (args.x.numel() != 0) {
    const c10::cuda::CUDAGuard guard(x_adv.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t batch = args.batch, n = args.n;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "apgd_step_", [&] {
      const auto d = apgd::step_data<scalar_t>(args, alpha, lo, hi);
      if (args.p == 0) {
        apgd_linf_kernel<scalar_t><<<cuda::grid_for(batch * n), kThreads, 0, stream>>>(d, batch * n, n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      apgd_lp_kernel<scalar_t><<<cuda::checked_grid(batch, "apgd_step_"), kThreads, 0, stream>>>(args.p, d, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      cuda::lp_fit<scalar_t>(d.x, d.c, d.eps, batch, n, stream, cuda::NeverSkip{}, args.p);
    });
  }
  apgd::write_back(x_adv, x_prev, args);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CUDA, m) { m.impl("apgd_step_", &apgd_step_cuda); }

}  // namespace advx
