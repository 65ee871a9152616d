#pragma once
// The CPU multi-tensor driver of the optim ops (optim_ops.h, registered in optim_cpu.cpp):
// cpu_apply::Driver::run<Rule> takes a rule of optim_rules.h, as the CUDA driver does. ONE
// parallel region per call walks fixed-size chunks of the concatenation of all tensors
// (rather than one region per tensor, which is what costs torch's per-tensor kernels time
// on lists of many small tensors), with the L-inf ball and the box fused into the update
// loop and the L2 ball as the common CPU L2 projection (common/ball_cpu.h) after it. The
// update loop is instantiated per rule variant and constraint kind, so it vectorizes.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/ball.h"
#include "common/ball_cpu.h"
#include "common/macros.h"
#include "optim/optim_lists.h"
#include "optim/optim_ops.h"
#include "optim/optim_rules.h"

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

// What the update loop does to p after the rule (common/ball.h linf_ball_box).
enum Fuse : int { kPlain = 0, kLinfAtZero = 1, kLinfAtCenter = 2 };

template <typename T>
struct LinfBox {
  T eps, lo, hi;
};

// The updated p stored: with the ball and box fused in, inside both in scalar_t
// (common/exact.h; the box bounds arrive rounded inward).
template <int kFuse, typename T, typename scalar_t>
inline scalar_t fused_store(T p, const scalar_t* center, int64_t i, const LinfBox<T>& k) {
  if constexpr (kFuse == kLinfAtCenter) {
    const T c = static_cast<T>(center[i]);
    return linf_store<scalar_t>(linf_ball_box(p, c, k.eps, k.lo, k.hi), c, k.eps);
  } else if constexpr (kFuse == kLinfAtZero) {
    return linf_store<scalar_t>(linf_ball_box(p, T(0), k.eps, k.lo, k.hi), T(0), k.eps);
  } else {
    return static_cast<scalar_t>(p);
  }
}

// Runs the update of tensor i over [begin, end) with the constraint fused in:
// range(fuse_tag, begin, end, linf_box) with fuse_tag an integral_constant<int, Fuse>.
// An L-inf ball has one radius per sample, so its pieces are cut at sample borders.
template <typename scalar_t, typename Range>
void fused_piece(const Constraint& k, const at::Tensor& param, const at::Tensor* radius,
                 int64_t begin, int64_t end, const Range& range) {
  using T = opmath_t<scalar_t>;
  const T lo = box_lo<scalar_t>(k.lo), hi = box_hi<scalar_t>(k.hi);
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

// ------------------------------------------------------------------ the update loop

// State slot J of element i into and out of registers, where variant V uses it.
template <typename Rule, int V, int J, typename T, typename scalar_t>
inline void load_slot(T (&s)[Rule::kStates], const scalar_t* slot, int64_t i) {
  if constexpr (J < Rule::kStates) {
    if constexpr (Rule::uses(V, J)) {
      s[J] = static_cast<T>(slot[i]);
    } else {
      s[J] = T(0);
    }
  }
}

template <typename Rule, int V, int J, typename T, typename scalar_t>
inline void store_slot(const T (&s)[Rule::kStates], scalar_t* slot, int64_t i) {
  if constexpr (J < Rule::kStates) {
    if constexpr (Rule::uses(V, J)) slot[i] = static_cast<scalar_t>(s[J]);
  }
}

// Rule variant V over n elements of one tensor, the constraint kFuse fused in; s0..s2 are
// the state slots (nullptr where V does not use one).
template <typename Rule, int V, int kFuse, typename scalar_t>
ADVX_CPU_CLONES void update_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ g,
                                  scalar_t* __restrict__ s0, scalar_t* __restrict__ s1,
                                  scalar_t* __restrict__ s2, const scalar_t* __restrict__ center,
                                  int64_t n, bool first,
                                  typename Rule::template Coeffs<opmath_t<scalar_t>> c,
                                  LinfBox<opmath_t<scalar_t>> k) {
  using T = opmath_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    T pi = static_cast<T>(p[i]);
    T s[Rule::kStates];
    load_slot<Rule, V, 0>(s, s0, i);
    load_slot<Rule, V, 1>(s, s1, i);
    load_slot<Rule, V, 2>(s, s2, i);
    Rule::template update<V>(pi, static_cast<T>(g[i]), s, first, c);
    p[i] = fused_store<kFuse>(pi, center, i, k);
    store_slot<Rule, V, 0>(s, s0, i);
    store_slot<Rule, V, 1>(s, s1, i);
    store_slot<Rule, V, 2>(s, s2, i);
  }
}

// ------------------------------------------------------------------ one call

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

// The data pointers of a list; empty when the list is.
template <typename scalar_t>
std::vector<scalar_t*> pointers(const std::vector<at::Tensor>& list) {
  std::vector<scalar_t*> out(list.size());
  for (size_t i = 0; i < list.size(); ++i) out[i] = list[i].data_ptr<scalar_t>();
  return out;
}

// f(std::integral_constant<int, v>) for a v in [0, N) known at run time only.
template <int N, int V = 0, typename F>
void with_variant(int v, const F& f) {
  if constexpr (V + 1 < N) {
    if (v != V) {
      with_variant<N, V + 1>(v, f);
      return;
    }
  }
  f(std::integral_constant<int, V>{});
}

// The working lists of one call, by role: lists[0] params, [1] grads, [2 + j] state slot j,
// [2 + kStates] centers (empty for the origin).
template <typename Rule>
struct ListIndex {
  static constexpr size_t kGrad = 1, kState = 2, kCenter = 2 + Rule::kStates;
  std::array<size_t, 3 + Rule::kStates> index;
};

// Walks every tensor of the call with rule variant V in ONE parallel region.
template <typename Rule, int V, typename scalar_t>
void update_all(const WorkingLists& work, const ListIndex<Rule>& lists, const Constraint& k,
                const std::vector<bool>& first,
                const std::vector<typename Rule::template Coeffs<opmath_t<scalar_t>>>& coeffs) {
  using T = opmath_t<scalar_t>;
  using L = ListIndex<Rule>;
  const auto& params = work.get(0);
  const auto p = pointers<scalar_t>(params);
  const auto g = pointers<scalar_t>(work.get(lists.index[L::kGrad]));
  std::array<std::vector<scalar_t*>, 3> s;  // empty: no such slot, or V does not use it
  for (int j = 0; j < Rule::kStates; ++j) {
    if (Rule::uses(V, j)) s[j] = pointers<scalar_t>(work.get(lists.index[L::kState + j]));
  }
  const auto c = pointers<scalar_t>(work.get(lists.index[L::kCenter]));
  const auto at_piece = [](const auto& ptrs, size_t i, int64_t b) {
    return ptrs.empty() ? nullptr : ptrs[i] + b;
  };
  for_each_chunk_piece(flat_offsets(params), [&](size_t i, int64_t begin, int64_t end) {
    const at::Tensor* radius = k.ball == Ball::kNone ? nullptr : &k.radii[i];
    const bool first_i = !first.empty() && first[i];
    fused_piece<scalar_t>(k, params[i], radius, begin, end,
                   [&](auto fuse, int64_t b, int64_t e, LinfBox<T> box) {
                     update_range<Rule, V, decltype(fuse)::value>(
                         p[i] + b, g[i] + b, at_piece(s[0], i, b), at_piece(s[1], i, b),
                         at_piece(s[2], i, b), at_piece(c, i, b), e - b, first_i, coeffs[i], box);
                   });
  });
}

// The L2 ball of the constraint, per param, after the update.
template <typename scalar_t>
void l2_constrain(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& centers,
                  const Constraint& k) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const int64_t batch = batch_of(p);
    cpu::l2_project<scalar_t>(p.data_ptr<scalar_t>(),
                              centers.empty() ? nullptr : centers[i].const_data_ptr<scalar_t>(),
                              k.radii[i].const_data_ptr<opmath_t<scalar_t>>(), batch,
                              p.numel() / batch, k.lo, k.hi);
  }
}

// A one-element tensor's value, or `absent`.
inline double read_scalar(const std::optional<at::Tensor>& t, double absent) {
  return t.has_value() ? t->item<double>() : absent;
}

struct Driver {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

  // lr, grad_scale and found_inf are read on the host; found_inf != 0 skips the whole
  // step, counters included.
  template <typename Rule>
  static void run(const StepCall<Rule>& call) {
    if (read_scalar(call.found_inf, 0.0) != 0.0) return;
    const double lr = read_scalar(call.lr_tensor, call.lr);
    const double grad_scale = read_scalar(call.grad_scale, 1.0);
    const std::vector<double> step = advance_steps(call.steps);
    const Constraint& k = call.constraint;
    WorkingLists work(call.params, k.ball != Ball::kNone);
    ListIndex<Rule> lists;
    lists.index[0] = 0;
    lists.index[lists.kGrad] = work.add(call.grads, false);
    for (int j = 0; j < Rule::kStates; ++j) lists.index[lists.kState + j] = work.add(call.states[j], true);
    lists.index[lists.kCenter] = work.add(k.centers, false);
    const int variant = variant_of<Rule>(call.args);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.params[0].scalar_type(), Rule::kName, [&] {
      using T = opmath_t<scalar_t>;
      std::vector<typename Rule::template Coeffs<T>> coeffs;
      coeffs.reserve(call.params.size());
      for (size_t i = 0; i < call.params.size(); ++i) {
        const double t = step.empty() ? 0.0 : step[i];
        coeffs.push_back(Rule::template coeffs<T>(call.args, lr, grad_scale, t));
      }
      with_variant<kVariants<Rule>>(variant, [&](auto v) {
        update_all<Rule, decltype(v)::value, scalar_t>(work, lists, k, call.first, coeffs);
      });
      if (k.ball == Ball::kL2) l2_constrain<scalar_t>(work.get(0), work.get(lists.index[lists.kCenter]), k);
    });
    work.finish();
  }
};

}  // namespace cpu_apply
}  // namespace optim
}  // namespace advx
