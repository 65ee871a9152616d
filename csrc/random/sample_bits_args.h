#pragma once
// Checked arguments of sample_bits, shared by the CPU and CUDA ops.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

namespace advx {
namespace random {

inline void check_args(const at::Tensor& indices, const at::Tensor& draws, int64_t key, int64_t count) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "indices must have dtype torch.int64, got ",
                   indices.scalar_type());
  TORCH_CHECK_TYPE(draws.scalar_type() == at::kLong, "draws must have dtype torch.int64, got ", draws.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 1, "indices must have shape [B], got ", indices.sizes());
  TORCH_CHECK_VALUE(draws.dim() == 1 && draws.size(0) == indices.size(0), "draws must have shape [",
                    indices.size(0), "] (one per index), got ", draws.sizes());
  TORCH_CHECK_VALUE(draws.device() == indices.device(), "draws is on ", draws.device(), " but indices is on ",
                    indices.device());
  TORCH_CHECK_VALUE(key >= 0 && key <= 0xFFFFFFFFLL, "key must lie in [0, 2**32), got ", key);
  TORCH_CHECK_VALUE(count >= 0, "count must be non-negative, got ", count);
}

inline at::Tensor empty_bits(const at::Tensor& indices, int64_t count) {
  return at::empty({indices.size(0), count}, indices.options());
}

}  // namespace random
}  // namespace advx
