#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace advx {

// True when the tensor is one dense block with the batch dimension outermost, so
// sample b occupies [b*n, (b+1)*n) from data_ptr(). Holds for contiguous and for
// channels_last tensors; elementwise math then ignores the order inside a sample.
inline bool is_batch_major_dense(const at::Tensor& t) {
  if (t.dim() == 0) return t.is_contiguous();
  if (!t.is_non_overlapping_and_dense()) return false;
  const int64_t b = t.size(0);
  if (b <= 1) return true;
  return t.stride(0) * b == t.numel();
}

// Two tensors can be walked with one flat index when both are batch-major dense
// with identical strides.
inline bool same_flat_layout(const at::Tensor& a, const at::Tensor& b) {
  return is_batch_major_dense(a) && is_batch_major_dense(b) && a.strides() == b.strides();
}

inline void check_same_like(const at::Tensor& ref, const char* ref_name,
                            const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " has shape ", t.sizes(), " but ", ref_name,
              " has shape ", ref.sizes());
}

// Per-sample budget tensors (eps, alpha) arrive from Python as [B] tensors in the
// math type (float64 for float64 data, float32 otherwise) on the data's device.
inline void check_budget(const at::Tensor& budget, const char* name, const at::Tensor& x) {
  const int64_t b = x.dim() == 0 ? 1 : x.size(0);
  TORCH_CHECK(budget.dim() == 1 && budget.size(0) == b, name, " must have shape [", b,
              "] (one value per sample), got ", budget.sizes());
  TORCH_CHECK(budget.device() == x.device(), name, " is on ", budget.device(),
              " but the data is on ", x.device());
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(budget.scalar_type() == want, name, " must have dtype ", want, " for data of dtype ",
              x.scalar_type(), ", got ", budget.scalar_type());
}

inline void check_norm(const std::string& norm) {
  TORCH_CHECK(norm == "linf" || norm == "l2", "norm must be 'linf' or 'l2', got '", norm, "'");
}

}  // namespace advx
