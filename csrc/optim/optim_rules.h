#pragma once
// One rule per optimizer, as the multi-tensor drivers of both devices take it
// (multi_tensor_cpu.h, multi_tensor_cuda.cuh), compiled by g++ and nvcc alike:
//   kName                    the op, for dispatch errors
//   kStates                  state slots per element: the op's state lists, in order
//   kFlags, flag(args, f)    the options that change the update's code (momentum on or
//                            off, ...); variant v of the update has flag f iff bit f of v
//   Args                     the op's hyper-parameters, from the host
//   uses(v, j)               whether variant v reads and writes state slot j
//   Coeffs<T>, coeffs<T>(args, lr, grad_scale, step)
//                            per tensor (step: its counter after the increment, 0 for SGD),
//                            computed in double as torch does in Python, then rounded to T
//   update<V>(p, g, s, first, coeffs)
//                            one element on registers: p, g, s[kStates]; `first`: SGD's
//                            momentum buffer is new
// The CPU driver instantiates a loop per variant (variant_of); the CUDA kernel picks the
// variant per element with update_variant() (uniform over a launch, tested on the flags).
// The math is optim_math.h's.
#include <cmath>

#include "common/macros.h"
#include "optim/optim_math.h"

namespace advx {
namespace optim {

struct SgdRule {
  static constexpr const char* kName = "sgd_step_";
  static constexpr int kStates = 1;  // momentum_buffers
  static constexpr int kFlags = 1;   // momentum
  struct Args {
    double momentum, dampening, weight_decay;
    bool nesterov, maximize;
  };
  static ADVX_HD bool flag(const Args& a, int) { return a.momentum != 0.0; }
  static constexpr bool uses(int v, int) { return v == 1; }
  template <typename T>
  using Coeffs = SgdCoeffs<T>;
  template <typename T>
  static ADVX_HD Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double) {
    return {make_grad_transform<T>(grad_scale, a.maximize, a.weight_decay),
            static_cast<T>(a.momentum), static_cast<T>(1.0 - a.dampening), static_cast<T>(-lr),
            a.nesterov};
  }
  template <int V, typename T>
  static ADVX_HD void update(T& p, T g, T (&s)[kStates], bool first, const Coeffs<T>& c) {
    sgd_update<T, V == 1>(p, g, s[0], first, c);
  }
};

struct AdagradRule {
  static constexpr const char* kName = "adagrad_step_";
  static constexpr int kStates = 1;  // state_sums
  static constexpr int kFlags = 0;
  struct Args {
    double lr_decay, weight_decay, eps;
    bool maximize;
  };
  static ADVX_HD bool flag(const Args&, int) { return false; }
  static constexpr bool uses(int, int) { return true; }
  template <typename T>
  using Coeffs = AdagradCoeffs<T>;
  template <typename T>
  static ADVX_HD Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double step) {
    const double clr = lr / (1.0 + (step - 1.0) * a.lr_decay);
    return {make_grad_transform<T>(grad_scale, a.maximize, a.weight_decay), static_cast<T>(-clr),
            static_cast<T>(a.eps)};
  }
  template <int V, typename T>
  static ADVX_HD void update(T& p, T g, T (&s)[kStates], bool, const Coeffs<T>& c) {
    adagrad_update<T>(p, g, s[0], c);
  }
};

struct RmspropRule {
  static constexpr const char* kName = "rmsprop_step_";
  static constexpr int kStates = 3;  // square_avgs, grad_avgs, momentum_buffers
  static constexpr int kFlags = 2;   // momentum, centered
  static constexpr int kMomentum = 1, kCentered = 2;  // their bits in a variant
  struct Args {
    double alpha, eps, weight_decay, momentum;
    bool centered, maximize;
  };
  static ADVX_HD bool flag(const Args& a, int f) { return f == 0 ? a.momentum > 0.0 : a.centered; }
  static constexpr bool uses(int v, int j) {
    return j == 0 || (j == 1 && (v & kCentered)) || (j == 2 && (v & kMomentum));
  }
  template <typename T>
  using Coeffs = RmspropCoeffs<T>;
  template <typename T>
  static ADVX_HD Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double) {
    return {make_grad_transform<T>(grad_scale, a.maximize, a.weight_decay),
            static_cast<T>(a.alpha), static_cast<T>(1.0 - a.alpha), static_cast<T>(a.eps),
            static_cast<T>(a.momentum), static_cast<T>(-lr)};
  }
  template <int V, typename T>
  static ADVX_HD void update(T& p, T g, T (&s)[kStates], bool, const Coeffs<T>& c) {
    rmsprop_update<T, (V & kCentered) != 0, (V & kMomentum) != 0>(p, g, s[0], s[1], s[2], c);
  }
};

struct AdamRule {
  static constexpr const char* kName = "adam_step_";
  static constexpr int kStates = 3;  // exp_avgs, exp_avg_sqs, max_exp_avg_sqs
  static constexpr int kFlags = 1;   // amsgrad
  struct Args {
    double beta1, beta2, weight_decay, eps;
    bool amsgrad, maximize, decoupled;
  };
  static ADVX_HD bool flag(const Args& a, int) { return a.amsgrad; }
  static constexpr bool uses(int v, int j) { return j < 2 || v == 1; }
  template <typename T>
  using Coeffs = AdamCoeffs<T>;
  template <typename T>
  static ADVX_HD Coeffs<T> coeffs(const Args& a, double lr, double grad_scale, double step) {
    using std::pow;
    using std::sqrt;
    const double bias_correction1 = 1.0 - pow(a.beta1, step);
    const double bias_correction2 = 1.0 - pow(a.beta2, step);
    return {make_grad_transform<T>(grad_scale, a.maximize, a.decoupled ? 0.0 : a.weight_decay),
            static_cast<T>(a.decoupled ? 1.0 - lr * a.weight_decay : 1.0),
            static_cast<T>(1.0 - a.beta1),
            static_cast<T>(a.beta2),
            static_cast<T>(1.0 - a.beta2),
            static_cast<T>(-(lr / bias_correction1)),
            static_cast<T>(sqrt(bias_correction2)),
            static_cast<T>(a.eps)};
  }
  template <int V, typename T>
  static ADVX_HD void update(T& p, T g, T (&s)[kStates], bool, const Coeffs<T>& c) {
    adam_update<T, V == 1>(p, g, s[0], s[1], s[2], c);
  }
};

template <typename Rule>
constexpr int kVariants = 1 << Rule::kFlags;

// The variant of a call: bit f set iff flag f.
template <typename Rule>
int variant_of(const typename Rule::Args& a) {
  int v = 0;
  for (int f = 0; f < Rule::kFlags; ++f) v |= Rule::flag(a, f) ? 1 << f : 0;
  return v;
}

// Rule::update of the call's variant, tested on the flags from the last variant down to 0
// (on CUDA these tests stay predicates, uniform over a launch).
template <typename Rule, int V = kVariants<Rule> - 1, typename T>
ADVX_HD void update_variant(const typename Rule::Args& a, T& p, T g, T (&s)[Rule::kStates],
                            bool first, const typename Rule::template Coeffs<T>& c) {
  if constexpr (V > 0) {
    bool match = true;
    for (int f = 0; f < Rule::kFlags; ++f) match = match && Rule::flag(a, f) == (((V >> f) & 1) != 0);
    if (!match) {
      update_variant<Rule, V - 1>(a, p, g, s, first, c);
      return;
    }
  }
  Rule::template update<V>(p, g, s, first, c);
}

}  // namespace optim
}  // namespace advx
