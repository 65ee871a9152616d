#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
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

// Errors name the argument. TORCH_CHECK_TYPE raises TypeError in Python and
// TORCH_CHECK_VALUE ValueError: what advx.ops' callers get for the tensors they hand over
// (advx.ops passes them on unchecked). A plain TORCH_CHECK (RuntimeError) is kept where
// torch.ops.advx callers have relied on that type, and for what advx.ops itself builds
// (budget tensors, the constraint's radii), where a mistake is not the caller's.

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must be a floating point tensor, got ", t.scalar_type());
}

// `t` must match `ref` in device, dtype and shape. The shape check stays a RuntimeError;
// advx.ops.pgd_step_ compares shapes before the call and raises ValueError.
inline void check_same_like(const at::Tensor& ref, const char* ref_name,
                            const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but ", ref_name, " has dtype ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " has shape ", t.sizes(), " but ", ref_name,
              " has shape ", ref.sizes());
}

template <typename T>
inline void check_positive_finite(const at::Tensor& budget, const char* name) {
  const auto values = budget.accessor<T, 1>();
  for (int64_t b = 0; b < values.size(0); ++b) {
    const T v = values[b];
    TORCH_CHECK_VALUE(v > T(0) && std::isfinite(v), name, " must be positive and finite, got ", v,
                      " for sample ", b);
  }
}

// Per-sample budget tensors (eps, alpha) arrive from advx.ops as [B] tensors in the math
// type (float64 for float64 data, float32 otherwise) on the data's device. Their values
// are checked on the CPU only: on a GPU that read would be a device-to-host sync per call
// (advx.attacks and advx.LpBall check a tensor budget once, when they are made).
inline void check_budget(const at::Tensor& budget, const char* name, const at::Tensor& x) {
  const int64_t b = x.dim() == 0 ? 1 : x.size(0);
  TORCH_CHECK(budget.dim() == 1 && budget.size(0) == b, name, " must have shape [", b,
              "] (one value per sample), got ", budget.sizes());
  TORCH_CHECK_VALUE(budget.device() == x.device(), name, " is on ", budget.device(),
                    " but the data is on ", x.device());
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(budget.scalar_type() == want, name, " must have dtype ", want, " for data of dtype ",
              x.scalar_type(), ", got ", budget.scalar_type());
  if (budget.is_cpu()) {
    if (want == at::kDouble) {
      check_positive_finite<double>(budget, name);
    } else {
      check_positive_finite<float>(budget, name);
    }
  }
}

inline void check_norm(const std::string& norm) {
  TORCH_CHECK(norm == "linf" || norm == "l2", "norm must be 'linf' or 'l2', got '", norm, "'");
}

}  // namespace advx
