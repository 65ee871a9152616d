// CPU kernel of apgd_step_: L-inf one pass per element, l2 / l1 one task per sample
// over apgd_math.h's passes, then the fit into the ball in the data's dtype.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "apgd/apgd_args.h"
#include "apgd/apgd_math.h"
#include "common/ball_cpu.h"
#include "common/cpu_loops.h"
#include "common/exact.h"

namespace advx {
namespace {

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void linf_range(scalar_t* x, scalar_t* xp, const scalar_t* g, const scalar_t* c, int64_t n,
                                T eps, T eta, T a, T keep, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t old = x[i];
    x[i] = apgd::linf_element<scalar_t, T>(static_cast<T>(old), static_cast<T>(xp[i]), static_cast<T>(g[i]),
                                           static_cast<T>(c[i]), eps, eta, a, keep, lo, hi);
    xp[i] = old;
  }
}

// A sample's sum in double: 8 lanes added in a fixed order (the bits depend on n only).
struct LaneSum {
  int64_t n;
  template <typename F>
  double operator()(const F& f) const {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      for (int k = 0; k < 8; ++k) acc[k] += f(i + k);
    }
    double tail = 0;
    for (; i < n; ++i) tail += f(i);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
  }
};

struct Loop {
  int64_t n;
  template <typename F>
  void operator()(const F& f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
};

void apgd_step_cpu(at::Tensor x_adv, at::Tensor x_prev, const at::Tensor& grad, const at::Tensor& x_orig,
                   const at::Tensor& eps, const at::Tensor& step_size, double alpha, std::string norm, double lo,
                   double hi) {
  const apgd::StepArgs args = apgd::step_args(x_adv, x_prev, grad, x_orig, eps, step_size, alpha, norm, lo, hi);
  if (args.x.numel() != 0) {
    const int64_t batch = args.batch, n = args.n;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "apgd_step_", [&] {
      using T = opmath_t<scalar_t>;
      const auto d = apgd::step_data<scalar_t>(args, alpha, lo, hi);
      if (args.p == 0) {
        cpu::for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
          linf_range<scalar_t, T>(d.x + s, d.x_prev + s, d.g + s, d.c + s, t - s, d.eps[b], d.eta[b], d.a, d.keep,
                                  d.lo, d.hi);
        });
        return;
      }
      const int64_t grain = std::max<int64_t>(1, cpu::kGrain / n);
      at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t o = b * n;
          apgd::lp_sample<scalar_t>(args.p, d.x + o, d.x_prev + o, d.g + o, d.c + o, d.eps[b], d.eta[b], d.a, d.keep,
                                    d.lo, d.hi, LaneSum{n}, Loop{n});
        }
      });
      cpu::lp_fit<scalar_t>(d.x, d.c, d.eps, batch, n, args.p);
    });
  }
  apgd::write_back(x_adv, x_prev, args);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CPU, m) { m.impl("apgd_step_", &apgd_step_cpu); }

}  // namespace advx
