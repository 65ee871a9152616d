#pragma once
// Argument checks of edge_energy and its backward, shared by the CPU and CUDA ops.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace advx {

inline void check_image_batch(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "x must have shape [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be a floating point tensor, got ",
              x.scalar_type());
}

inline void check_grad_energy(const at::Tensor& grad_energy, const at::Tensor& x) {
  TORCH_CHECK(grad_energy.dim() == 1 && grad_energy.size(0) == x.size(0),
              "grad_energy must have shape [", x.size(0), "] (one per sample), got ",
              grad_energy.sizes());
  TORCH_CHECK(grad_energy.device() == x.device(), "grad_energy is on ", grad_energy.device(),
              " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(grad_energy.scalar_type()),
              "grad_energy must be a floating point tensor, got ", grad_energy.scalar_type());
}

}  // namespace advx
