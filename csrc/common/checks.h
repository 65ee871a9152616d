#pragma once
#include <ATen/MemoryOverlap.h>
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

// A tensor an op writes must not have two elements in one memory location (an expanded,
// stride-0 tensor): it cannot hold a different result in each. Checked before anything is
// written, so a refused call changes nothing.
inline void check_writable(const at::Tensor& t, const char* name, int64_t index = -1) {
  if (at::has_internal_overlap(t) != at::MemOverlap::Yes) return;
  if (index < 0) {
    TORCH_CHECK_VALUE(false, name, " has elements that share memory (an expanded tensor?) and "
                      "cannot be updated in place; pass a clone()");
  }
  TORCH_CHECK_VALUE(false, name, "[", index, "] has elements that share memory (an expanded "
                    "tensor?) and cannot be updated in place; pass a clone()");
}

// Whether `input` shares memory with `target` other than as the very same elements in the
// same layout (full aliasing, which elementwise kernels handle: each element is read before
// it is written).
inline bool overlaps_partially(const at::Tensor& input, const at::Tensor& target) {
  switch (at::get_overlap_status(input, target)) {
    case at::MemOverlapStatus::Partial:
      return true;
    case at::MemOverlapStatus::TooHard:  // a strided tensor: same storage is enough to copy
      return input.storage().is_alias_of(target.storage());
    default:
      return false;
  }
}

// Whether two tensors may share any memory at all (full aliasing included; a strided
// pair torch cannot compare: when they are views of one storage).
inline bool shares_memory(const at::Tensor& a, const at::Tensor& b) {
  switch (at::get_overlap_status(a, b)) {
    case at::MemOverlapStatus::No:
      return false;
    case at::MemOverlapStatus::TooHard:
      return a.storage().is_alias_of(b.storage());
    default:
      return true;
  }
}

// An input read while `target` is written: when the two overlap partially (views of one
// buffer shifted against each other), the input is read from a copy taken before the
// write, so the result is what it would be with separate tensors.
inline at::Tensor readable_beside(const at::Tensor& input, const at::Tensor& target) {
  return overlaps_partially(input, target) ? input.clone() : input;
}

// In-place updates bump the version counter of what they wrote, as torch's in-place ops do:
// autograd then refuses a backward through a value saved before the update.
inline void bump_version(const at::Tensor& t) {
  if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
}

inline void check_norm(const std::string& norm) {
  TORCH_CHECK(norm == "linf" || norm == "l2", "norm must be 'linf' or 'l2', got '", norm, "'");
}

}  // namespace advx
