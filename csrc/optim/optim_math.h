#pragma once
// The update rules of advx.optim, per element, shared by the CPU and CUDA multi-tensor
// drivers through the rule structs of optim_rules.h. T is the math type (float for
// float32/half/bfloat16 storage, double for float64). The constraint after the update is
// common/ball.h's.
//
// Each rule follows torch.optim's single-tensor implementation operation by operation
// (same roundings: lerp's two-branch formula, addcmul as self + (value*t1)*t2, addcdiv
// as self + (value*t1)/t2), so results agree with torch.optim to rounding, not to
// "mathematically equivalent" rewrites. The per-tensor coefficients (bias corrections,
// the Adagrad decayed lr) are computed by the rules' coeffs(), in double.
#include <cmath>

#include "common/macros.h"

namespace advx {
namespace optim {

// ---------------------------------------------------------------- shared pieces

// torch.lerp: self + w*(end-self) for small weights, end - (end-self)*(1-w) otherwise.
template <typename T>
ADVX_HD T lerp(T self, T end, T weight) {
  const T diff = end - self;
  return (weight < T(0.5) && weight > T(-0.5)) ? self + weight * diff
                                                : end - diff * (T(1) - weight);
}

// torch.maximum: NaN in either argument wins.
template <typename T>
ADVX_HD T maximum(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// What happens to a gradient before the rule sees it: GradScaler unscaling
// (g / grad_scale, 1 when absent), maximize (sign -1; g * -1 == -g exactly) and the
// coupled L2 weight decay g + wd * p (skipped when wd == 0, as torch does, so an
// infinite parameter does not turn the gradient into NaN).
template <typename T>
struct GradTransform {
  T grad_scale;
  T sign;
  T weight_decay;
};

template <typename T>
ADVX_HD GradTransform<T> make_grad_transform(double grad_scale, bool maximize,
                                             double weight_decay) {
  return {static_cast<T>(grad_scale), maximize ? T(-1) : T(1), static_cast<T>(weight_decay)};
}

template <typename T>
ADVX_HD T transform_grad(T g, T p, const GradTransform<T>& t) {
  g = (g / t.grad_scale) * t.sign;
  return t.weight_decay != T(0) ? g + t.weight_decay * p : g;
}

// ---------------------------------------------------------------- SGD

template <typename T>
struct SgdCoeffs {
  GradTransform<T> grad;
  T momentum;
  T one_minus_dampening;
  T neg_lr;
  bool nesterov;
};

// `first`: the buffer is new and becomes the gradient itself (torch's first step).
template <typename T, bool kMomentum>
ADVX_HD void sgd_update(T& p, T g, T& buf, bool first, const SgdCoeffs<T>& c) {
  g = transform_grad(g, p, c.grad);
  if (kMomentum) {
    buf = first ? g : buf * c.momentum + c.one_minus_dampening * g;
    g = c.nesterov ? g + c.momentum * buf : buf;
  }
  p = p + c.neg_lr * g;
}

// ---------------------------------------------------------------- Adagrad

template <typename T>
struct AdagradCoeffs {
  GradTransform<T> grad;
  T neg_clr;  // -lr / (1 + (step - 1) * lr_decay)
  T eps;
};

template <typename T>
ADVX_HD void adagrad_update(T& p, T g, T& sum, const AdagradCoeffs<T>& c) {
  using std::sqrt;
  g = transform_grad(g, p, c.grad);
  sum = sum + g * g;
  p = p + c.neg_clr * g / (sqrt(sum) + c.eps);
}

// ---------------------------------------------------------------- RMSprop

template <typename T>
struct RmspropCoeffs {
  GradTransform<T> grad;
  T alpha;
  T one_minus_alpha;
  T eps;
  T momentum;
  T neg_lr;
};

// square_avg tracks E[g^2]; centered also tracks E[g] (grad_avg) and divides by the
// standard deviation instead of the root mean square.
template <typename T, bool kCentered, bool kMomentum>
ADVX_HD void rmsprop_update(T& p, T g, T& square_avg, T& grad_avg, T& buf,
                            const RmspropCoeffs<T>& c) {
  using std::sqrt;
  g = transform_grad(g, p, c.grad);
  square_avg = square_avg * c.alpha + c.one_minus_alpha * g * g;
  T avg;
  if (kCentered) {
    grad_avg = lerp(grad_avg, g, c.one_minus_alpha);
    avg = sqrt(square_avg + (-grad_avg) * grad_avg);
  } else {
    avg = sqrt(square_avg);
  }
  avg = avg + c.eps;
  if (kMomentum) {
    buf = buf * c.momentum + g / avg;
    p = p + c.neg_lr * buf;
  } else {
    p = p + c.neg_lr * g / avg;
  }
}

// ---------------------------------------------------------------- Adam / AdamW

template <typename T>
struct AdamCoeffs {
  GradTransform<T> grad;  // weight_decay 0 here for AdamW
  T decay;                // AdamW: 1 - lr * weight_decay; Adam: 1
  T one_minus_beta1;
  T beta2;
  T one_minus_beta2;
  T neg_step_size;        // -lr / (1 - beta1^step)
  T bias_correction2_sqrt;
  T eps;
};

// Only one of decay (AdamW) and grad.weight_decay (Adam) is active, so decaying p
// first leaves the coupled decay reading the old p, as in torch.
template <typename T, bool kAmsgrad>
ADVX_HD void adam_update(T& p, T g, T& exp_avg, T& exp_avg_sq, T& max_exp_avg_sq,
                         const AdamCoeffs<T>& c) {
  using std::sqrt;
  p = p * c.decay;
  g = transform_grad(g, p, c.grad);
  exp_avg = lerp(exp_avg, g, c.one_minus_beta1);
  exp_avg_sq = exp_avg_sq * c.beta2 + c.one_minus_beta2 * g * g;
  T second = exp_avg_sq;
  if (kAmsgrad) {
    max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq);
    second = max_exp_avg_sq;
  }
  p = p + c.neg_step_size * exp_avg / (sqrt(second) / c.bias_correction2_sqrt + c.eps);
}

}  // namespace optim
}  // namespace advx
