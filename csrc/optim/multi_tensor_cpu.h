#pragma once
// The CPU multi-tensor apply of the optim ops (optim_cpu.cpp): ONE parallel region per
// call walks fixed-size chunks of the concatenation of all tensors, with the L-inf ball
// and the box fused into the update loop and the L2 ball as a deterministic per-sample
// norm pass plus a scale pass.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_loops.h"
#include "common/macros.h"
#include "optim/optim_lists.h"
#include "optim/optim_math.h"

namespace advx {
namespace optim {
namespace cpu_apply {

// ------------------------------------------------------------------ the walk

// Elements per chunk of the one parallel region: big enough to amortize the hand-out,
// small enough that a ResNet-sized list spreads over every core.
constexpr int64_t kChunk = 1 << 15;

// Calls body(i, begin, end) for every piece [begin, end) of tensor i's flat index that
// falls into one chunk of the concatenated index space. Chunks are handed out one at a
// time inside ONE at::parallel_for region (dynamic scheduling: on a shared machine a
// thread that loses its core for a while does not hold the others back); which thread
// updates which chunk does not change any result.
template <typename F>
void for_each_chunk_piece(const std::vector<int64_t>& offsets, const F& body) {
  const int64_t total = offsets.back();
  if (total == 0) return;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, chunks, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      int64_t begin = c * kChunk;
      const int64_t end = std::min(total, begin + kChunk);
      // the tensor holding `begin`: the last i with offsets[i] <= begin < offsets[i + 1]
      size_t i = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
      while (begin < end) {
        const int64_t stop = std::min(end, offsets[i + 1]);
        if (stop > begin) body(i, begin - offsets[i], stop - offsets[i]);
        begin = stop;
        ++i;
      }
    }
  });
}

// What the update loop does to p after the rule (optim_math.h constrain_linf).
enum Fuse : int { kPlain = 0, kLinfAtZero = 1, kLinfAtCenter = 2 };

template <typename T>
struct LinfBox {
  T eps, lo, hi;
};

template <int kFuse, typename T, typename scalar_t>
inline T fused_constraint(T p, const scalar_t* center, int64_t i, const LinfBox<T>& k) {
  if constexpr (kFuse == kLinfAtCenter) {
    return constrain_linf(p, static_cast<T>(center[i]), k.eps, k.lo, k.hi);
  } else if constexpr (kFuse == kLinfAtZero) {
    return constrain_linf(p, T(0), k.eps, k.lo, k.hi);
  } else {
    return p;
  }
}

// Runs the update of tensor i over [begin, end) with the constraint fused in:
// range(fuse_tag, begin, end, linf_box) with fuse_tag an integral_constant<int, Fuse>.
// An L-inf ball has one radius per sample, so its pieces are cut at sample borders.
template <typename T, typename Range>
void fused_piece(const Constraint& k, const at::Tensor& param, const at::Tensor* radius,
                 int64_t begin, int64_t end, const Range& range) {
  const T lo = static_cast<T>(k.lo), hi = static_cast<T>(k.hi);
  if (k.ball == Ball::kLinf) {
    const T* eps = radius->const_data_ptr<T>();
    const int64_t per_sample = param.numel() / batch_of(param);
    int64_t b = begin / per_sample;
    while (begin < end) {
      const int64_t stop = std::min(end, (b + 1) * per_sample);
      const LinfBox<T> box{eps[b], lo, hi};
      if (k.has_center()) {
        range(std::integral_constant<int, kLinfAtCenter>{}, begin, stop, box);
      } else {
        range(std::integral_constant<int, kLinfAtZero>{}, begin, stop, box);
      }
      begin = stop;
      ++b;
    }
  } else if (k.ball == Ball::kNone && k.box) {
    const LinfBox<T> box{std::numeric_limits<T>::infinity(), lo, hi};
    range(std::integral_constant<int, kLinfAtZero>{}, begin, end, box);
  } else {
    range(std::integral_constant<int, kPlain>{}, begin, end, LinfBox<T>{T(0), lo, hi});
  }
}

// ------------------------------------------------------------------ L2 ball

// sum((p - c)^2) over n elements in double with independent lanes (vectorizes and is
// deterministic: the caller fixes the blocks).
template <typename scalar_t>
ADVX_CPU_CLONES double diff_sum_squares(const scalar_t* __restrict__ p,
                                        const scalar_t* __restrict__ c, int64_t n) {
  using T = opmath_t<scalar_t>;
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(static_cast<T>(p[i + l]) - static_cast<T>(c[i + l]));
      acc[l] += d * d;
    }
  }
  double tail = 0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(static_cast<T>(p[i]) - static_cast<T>(c[i]));
    tail += d * d;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

template <typename scalar_t, bool kCenter>
ADVX_CPU_CLONES void l2_finish_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ c,
                                     int64_t n, opmath_t<scalar_t> scale, opmath_t<scalar_t> lo,
                                     opmath_t<scalar_t> hi) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const T center = kCenter ? static_cast<T>(c[i]) : T(0);
    p[i] = static_cast<scalar_t>(constrain_l2(static_cast<T>(p[i]), center, scale, lo, hi));
  }
}

// p = clamp(c + (p - c) * min(1, eps / ||p - c||), lo, hi) per sample.
template <typename scalar_t>
void l2_project(const at::Tensor& param, const at::Tensor* center, const at::Tensor& radius,
                double lo, double hi) {
  using T = opmath_t<scalar_t>;
  if (param.numel() == 0) return;
  const int64_t batch = batch_of(param), n = param.numel() / batch;
  scalar_t* p = param.data_ptr<scalar_t>();
  const scalar_t* c = center ? center->const_data_ptr<scalar_t>() : nullptr;
  const T* eps = radius.const_data_ptr<T>();
  const auto sq = cpu::per_sample_sum(batch, n, [&](int64_t, int64_t s, int64_t t) {
    return c ? diff_sum_squares(p + s, c + s, t - s) : cpu::sum_squares(p + s, t - s);
  });
  std::vector<T> scale(batch);
  for (int64_t b = 0; b < batch; ++b) {
    scale[b] = project::l2_scale<T>(static_cast<T>(std::sqrt(sq[b])), eps[b]);
  }
  const T tlo = static_cast<T>(lo), thi = static_cast<T>(hi);
  cpu::for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
    if (c) {
      l2_finish_range<scalar_t, true>(p + s, c + s, t - s, scale[b], tlo, thi);
    } else {
      l2_finish_range<scalar_t, false>(p + s, nullptr, t - s, scale[b], tlo, thi);
    }
  });
}

// ------------------------------------------------------------------ one call

// Scalars every op reads the same way. found_inf != 0 skips the whole step.
struct CallScalars {
  bool skip = false;
  double lr = 0;
  double grad_scale = 1;
};

inline CallScalars read_call_scalars(at::TensorList params, double lr,
                              const std::optional<at::Tensor>& lr_tensor,
                              const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf) {
  const at::Device cpu(at::kCPU);
  check_scalar_tensor(lr_tensor, "lr_tensor", cpu);
  check_scalar_tensor(grad_scale, "grad_scale", cpu);
  check_scalar_tensor(found_inf, "found_inf", cpu);
  CallScalars s;
  s.skip = found_inf.has_value() && found_inf->item<double>() != 0.0;
  s.lr = lr_tensor.has_value() ? lr_tensor->item<double>() : lr;
  s.grad_scale = grad_scale.has_value() ? grad_scale->item<double>() : 1.0;
  return s;
}

inline void check_on_cpu(at::TensorList params) {
  if (!params.empty()) {
    TORCH_CHECK(params[0].is_cpu(), "params must be on the CPU for the CPU kernel, got ",
                params[0].device());
  }
}

// step += 1 in the counter's own dtype (as torch's `step_t += 1`); returns the new values.
inline std::vector<double> advance_steps(at::TensorList steps) {
  std::vector<double> out(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].scalar_type() == at::kFloat) {
      float* s = steps[i].data_ptr<float>();
      *s = *s + 1.0f;
      out[i] = *s;
    } else {
      double* s = steps[i].data_ptr<double>();
      *s = *s + 1.0;
      out[i] = *s;
    }
  }
  return out;
}

inline std::vector<int64_t> flat_offsets(const std::vector<at::Tensor>& params) {
  std::vector<int64_t> offsets(params.size() + 1, 0);
  for (size_t i = 0; i < params.size(); ++i) offsets[i + 1] = offsets[i] + params[i].numel();
  return offsets;
}

template <typename scalar_t>
std::vector<scalar_t*> pointers(const std::vector<at::Tensor>& list) {
  std::vector<scalar_t*> out(list.size());
  for (size_t i = 0; i < list.size(); ++i) out[i] = list[i].data_ptr<scalar_t>();
  return out;
}

// Walks every tensor with `range_of(i)` (a callable like fused_piece's `range`), then
// applies the L2 ball where there is one and writes copies back.
template <typename scalar_t, typename RangeOf>
void run_update(WorkingLists& work, const Constraint& k, size_t center_list,
                const RangeOf& range_of) {
  using T = opmath_t<scalar_t>;
  const auto& params = work.get(0);
  const auto offsets = flat_offsets(params);
  for_each_chunk_piece(offsets, [&](size_t i, int64_t begin, int64_t end) {
    const at::Tensor* radius = k.ball == Ball::kNone ? nullptr : &k.radii[i];
    fused_piece<T>(k, params[i], radius, begin, end, range_of(i));
  });
  if (k.ball == Ball::kL2) {
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor* center = k.has_center() ? &work.get(center_list)[i] : nullptr;
      l2_project<scalar_t>(params[i], center, k.radii[i], k.lo, k.hi);
    }
  }
  work.finish();
}

// The center list's working tensors, or nullptrs when the ball sits at the origin.
template <typename scalar_t>
std::vector<const scalar_t*> center_pointers(const WorkingLists& work, const Constraint& k,
                                             size_t center_list, size_t n) {
  std::vector<const scalar_t*> out(n, nullptr);
  if (k.has_center()) {
    const auto& centers = work.get(center_list);
    for (size_t i = 0; i < n; ++i) out[i] = centers[i].const_data_ptr<scalar_t>();
  }
  return out;
}

}  // namespace cpu_apply
}  // namespace optim
}  // namespace advx
