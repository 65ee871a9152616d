// CUDA kernel of sample_bits: one thread per element (grid-stride). The row's key is
// recomputed per element (a few integer ops) rather than staged through memory.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "random/sample_bits_args.h"
#include "random/sample_bits_math.h"

namespace advx {
namespace {

using cuda::kThreads;

__global__ void __launch_bounds__(kThreads)
    sample_bits_kernel(const int64_t* indices, const int64_t* draws, uint32_t key, int64_t count, int64_t numel,
                       int64_t* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < numel; i += stride) {
    const int64_t b = i / count, j = i - b * count;
    out[i] = random::element_bits(random::row_hash(key, indices[b], draws[b]), j);
  }
}

at::Tensor sample_bits_cuda(const at::Tensor& indices, const at::Tensor& draws, int64_t key, int64_t count) {
  random::check_args(indices, draws, key, count);
  const c10::cuda::CUDAGuard guard(indices.device());
  at::Tensor out = random::empty_bits(indices, count);
  const int64_t numel = out.numel();
  if (numel != 0) {
    const at::Tensor idx = indices.contiguous(), drw = draws.contiguous();
    sample_bits_kernel<<<cuda::grid_for(numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        idx.data_ptr<int64_t>(), drw.data_ptr<int64_t>(), static_cast<uint32_t>(key), count, numel,
        out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CUDA, m) { m.impl("sample_bits", &sample_bits_cuda); }

}  // namespace advx
