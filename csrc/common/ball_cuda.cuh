#pragma once
// The CUDA L2 (and L1) fit (common/exact.h): after an Lp write, every sample inside the ball as a
// float64 norm sees it. One block per sample sums (r - c)^2 in double with the fixed-order
// block reduction and, for a sample outside (by the roundings of the write), shrinks it
// toward its center and checks again. Used by project_/pgd_step_ (project_cuda.cu) and
// the optimizers' L2 constraint (optim/multi_tensor_cuda.cuh), as ball_cpu.h's lp_fit.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/exact.h"
#include "common/macros.h"

namespace advx {
namespace cuda {

struct NeverSkip {
  __device__ bool operator()() const { return false; }
};

// Block b fits sample b of x ([batch, n], batch-major dense; center c alike or nullptr
// for the origin) into the ball of radius eps[b]. skip(): the whole call is a no-op
// (an optimizer step skipped by found_inf).
template <typename scalar_t, typename Skip>
__global__ void __launch_bounds__(kThreads)
    lp_fit_kernel(scalar_t* x, const scalar_t* c, const opmath_t<scalar_t>* eps, int64_t n,
                  Skip skip, int p) {
  if (skip()) return;
  const int64_t b = blockIdx.x;
  scalar_t* xs = x + b * n;
  const scalar_t* cs = c == nullptr ? nullptr : c + b * n;
  const double e = static_cast<double>(eps[b]);
  for (int round = 0; round < 4; ++round) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      acc += lp_term(p, to_double(xs[i]) - (cs == nullptr ? 0.0 : to_double(cs[i])));
    }
    const double sum = block_sum_to_all(acc);  // every thread the same: all leave together
    if (lp_inside(p, sum, e)) return;
    const double s = lp_shrink_factor(p, sum, e);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      xs[i] = l2_shrink_toward(xs[i], cs == nullptr ? 0.0 : to_double(cs[i]), s);
    }
    __syncthreads();  // the writes seen before the next round's sum
  }
}

// p = 1 fits the L1 ball the same way (the exact projection's l1).
template <typename scalar_t, typename Skip = NeverSkip>
void lp_fit(scalar_t* x, const scalar_t* c, const opmath_t<scalar_t>* eps, int64_t batch,
            int64_t n, cudaStream_t stream, Skip skip = Skip{}, int p = 2) {
  if (batch == 0 || n == 0) return;
  lp_fit_kernel<scalar_t><<<checked_grid(batch, "Lp fit"), kThreads, 0, stream>>>(x, c, eps, n, skip, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace advx
