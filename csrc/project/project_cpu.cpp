// CPU kernels of project_ and pgd_step_: the loops over project_math.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_loops.h"
#include "project/project_args.h"
#include "project/project_math.h"

namespace advx {
namespace {

using cpu::for_each_sample_piece;
using cpu::per_sample_sum;

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void linf_project_range(scalar_t* d, int64_t n, T eps) {
  for (int64_t i = 0; i < n; ++i) {
    d[i] = static_cast<scalar_t>(project::linf_project<T>(static_cast<T>(d[i]), eps));
  }
}

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void scale_range(scalar_t* d, int64_t n, T s) {
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<scalar_t>(static_cast<T>(d[i]) * s);
}

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void pgd_linf_range(scalar_t* x, const scalar_t* g, const scalar_t* xo, int64_t n,
                                    T eps, T alpha, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<scalar_t>(project::pgd_linf<T>(
        static_cast<T>(x[i]), static_cast<T>(g[i]), static_cast<T>(xo[i]), eps, alpha, lo, hi));
  }
}

template <typename scalar_t, typename T>
ADVX_CPU_CLONES double pgd_l2_delta_sumsq(const scalar_t* x, const scalar_t* g,
                                          const scalar_t* xo, int64_t n, T alpha, T gnorm) {
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double d = static_cast<double>(project::pgd_l2_delta<T>(
          static_cast<T>(x[i + k]), static_cast<T>(g[i + k]), static_cast<T>(xo[i + k]), alpha, gnorm));
      acc[k] += d * d;
    }
  }
  double tail = 0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(project::pgd_l2_delta<T>(
        static_cast<T>(x[i]), static_cast<T>(g[i]), static_cast<T>(xo[i]), alpha, gnorm));
    tail += d * d;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void pgd_l2_finish_range(scalar_t* x, const scalar_t* g, const scalar_t* xo,
                                         int64_t n, T alpha, T gnorm, T scale, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    const T xi = static_cast<T>(xo[i]);
    const T d = project::pgd_l2_delta<T>(static_cast<T>(x[i]), static_cast<T>(g[i]), xi, alpha, gnorm);
    x[i] = static_cast<scalar_t>(project::pgd_l2_finish<T>(d, xi, scale, lo, hi));
  }
}

void project_cpu(at::Tensor delta, const at::Tensor& eps, std::string norm) {
  const project::ProjectArgs args = project::project_args(delta, eps, norm);
  if (args.d.numel() == 0) return;
  const at::Tensor &d = args.d, &e = args.eps;
  const int64_t batch = args.batch, n = args.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "project_", [&] {
    using T = opmath_t<scalar_t>;
    scalar_t* dp = d.data_ptr<scalar_t>();
    const T* ep = e.data_ptr<T>();
    if (norm == "linf") {
      for_each_sample_piece(batch, n, [&](int64_t b, int64_t lo, int64_t hi) {
        linf_project_range<scalar_t, T>(dp + lo, hi - lo, ep[b]);
      });
    } else {
      const auto sq = per_sample_sum(batch, n, [&](int64_t, int64_t lo, int64_t hi) {
        return cpu::sum_squares(dp + lo, hi - lo);
      });
      std::vector<T> scale(batch);
      for (int64_t b = 0; b < batch; ++b) {
        scale[b] = project::l2_scale<T>(static_cast<T>(std::sqrt(sq[b])), ep[b]);
      }
      for_each_sample_piece(batch, n, [&](int64_t b, int64_t lo, int64_t hi) {
        if (scale[b] != T(1)) scale_range<scalar_t, T>(dp + lo, hi - lo, scale[b]);
      });
    }
  });
  project::write_back(delta, d);
}

void pgd_step_cpu(at::Tensor x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                  const at::Tensor& eps, const at::Tensor& alpha, std::string norm, double lo,
                  double hi) {
  const project::PgdStepArgs args = project::pgd_step_args(x_adv, grad, x_orig, eps, alpha, norm, lo, hi);
  if (args.x.numel() == 0) return;
  const at::Tensor &x = args.x, &g = args.g, &xo = args.xo, &e = args.eps, &a = args.alpha;
  const int64_t batch = args.batch, n = args.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pgd_step_", [&] {
    using T = opmath_t<scalar_t>;
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* op = xo.data_ptr<scalar_t>();
    const T* ep = e.data_ptr<T>();
    const T* ap = a.data_ptr<T>();
    const T tlo = static_cast<T>(lo), thi = static_cast<T>(hi);
    if (norm == "linf") {
      for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
        pgd_linf_range<scalar_t, T>(xp + s, gp + s, op + s, t - s, ep[b], ap[b], tlo, thi);
      });
      return;
    }
    // L2: ||g|| per sample, then ||delta|| of the stepped point, then the write.
    const auto gsq = per_sample_sum(batch, n, [&](int64_t, int64_t s, int64_t t) {
      return cpu::sum_squares(gp + s, t - s);
    });
    std::vector<T> gnorm(batch);
    for (int64_t b = 0; b < batch; ++b) {
      gnorm[b] = static_cast<T>(std::sqrt(gsq[b])) + static_cast<T>(project::kGradNormTiny);
    }
    const auto dsq = per_sample_sum(batch, n, [&](int64_t b, int64_t s, int64_t t) {
      return pgd_l2_delta_sumsq<scalar_t, T>(xp + s, gp + s, op + s, t - s, ap[b], gnorm[b]);
    });
    std::vector<T> scale(batch);
    for (int64_t b = 0; b < batch; ++b) {
      scale[b] = project::l2_scale<T>(static_cast<T>(std::sqrt(dsq[b])), ep[b]);
    }
    for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
      pgd_l2_finish_range<scalar_t, T>(xp + s, gp + s, op + s, t - s, ap[b], gnorm[b], scale[b], tlo, thi);
    });
  });
  project::write_back(x_adv, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CPU, m) {
  m.impl("project_", &project_cpu);
  m.impl("pgd_step_", &pgd_step_cpu);
}

}  // namespace advx
