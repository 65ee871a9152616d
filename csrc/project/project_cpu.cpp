// CPU kernels of project_ and pgd_step_: the loops over common/ball.h and project_math.h;
// project_'s L2 ball is the one CPU L2 projection (common/ball_cpu.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/ball_cpu.h"
#include "common/checks.h"
#include "common/cpu_loops.h"
#include "common/exact.h"
#include "project/project_args.h"
#include "project/project_math.h"
#include "project/project_onto_math.h"

namespace advx {
namespace {

using cpu::for_each_sample_piece;
using cpu::per_sample_sum;

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void linf_project_range(scalar_t* d, int64_t n, T eps) {
  for (int64_t i = 0; i < n; ++i) d[i] = linf_store<scalar_t>(linf_clamp<T>(static_cast<T>(d[i]), eps), T(0), eps);
}

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void pgd_linf_range(scalar_t* x, const scalar_t* g, const scalar_t* xo, int64_t n,
                                    T eps, T alpha, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    const T c = static_cast<T>(xo[i]);
    x[i] = linf_store<scalar_t>(
        project::pgd_linf<T>(static_cast<T>(x[i]), static_cast<T>(g[i]), c, eps, alpha, lo, hi), c, eps);
  }
}

template <typename scalar_t, typename T>
double pgd_l2_delta_sumsq(const scalar_t* x, const scalar_t* g, const scalar_t* xo, int64_t n,
                          T alpha, T gnorm) {
  return cpu::lane_sum_squares(n, [=](int64_t i) {
    return static_cast<double>(project::pgd_l2_delta<T>(
        static_cast<T>(x[i]), static_cast<T>(g[i]), static_cast<T>(xo[i]), alpha, gnorm));
  });
}

template <typename scalar_t, typename T>
ADVX_CPU_CLONES void pgd_l2_finish_range(scalar_t* x, const scalar_t* g, const scalar_t* xo,
                                         int64_t n, T alpha, T gnorm, T scale, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<scalar_t>(project::pgd_l2_finish<T>(
        static_cast<T>(x[i]), static_cast<T>(g[i]), static_cast<T>(xo[i]), alpha, gnorm, scale, lo, hi));
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
      cpu::l2_project<scalar_t>(dp, nullptr, ep, batch, n, -INFINITY, INFINITY);
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
    const T tlo = box_lo<scalar_t>(lo), thi = box_hi<scalar_t>(hi);
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
    for (int64_t b = 0; b < batch; ++b) gnorm[b] = project::pgd_l2_gnorm<T>(gsq[b]);
    const auto dsq = per_sample_sum(batch, n, [&](int64_t b, int64_t s, int64_t t) {
      return pgd_l2_delta_sumsq<scalar_t, T>(xp + s, gp + s, op + s, t - s, ap[b], gnorm[b]);
    });
    std::vector<T> scale(batch);
    for (int64_t b = 0; b < batch; ++b) scale[b] = l2_scale_of_sumsq<T>(dsq[b], ep[b]);
    for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
      pgd_l2_finish_range<scalar_t, T>(xp + s, gp + s, op + s, t - s, ap[b], gnorm[b], scale[b], tlo, thi);
    });
    cpu::lp_fit<scalar_t>(xp, op, ep, batch, n);
  });
  project::write_back(x_adv, x);
}

// One sample of the exact projection onto the l1 / l2 ball (p) and the box: the smallest
// multiplier whose point is inside, by bisection in double, then the write.
template <typename scalar_t>
void project_onto_sample(scalar_t* x, const scalar_t* c, int64_t n, int p, double eps, double lo,
                         double hi) {
  const auto measure = [&](double m) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double ci = to_double(c[i]);
      sum += project::onto_measure(p, project::onto_coord(p, to_double(x[i]), ci, m, lo, hi), ci);
    }
    return sum;
  };
  const double m = project::onto_multiplier(measure, project::onto_limit(p, eps));
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<scalar_t>(project::onto_coord(p, to_double(x[i]), to_double(c[i]), m, lo, hi));
  }
}

void project_onto_cpu(at::Tensor x, const at::Tensor& center, const at::Tensor& eps, std::string norm,
                      double lo, double hi) {
  const project::ProjectOntoArgs args = project::project_onto_args(x, center, eps, norm, lo, hi);
  if (args.x.numel() == 0) return;
  const int64_t batch = args.batch, n = args.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "project_onto_", [&] {
    using T = opmath_t<scalar_t>;
    scalar_t* xp = args.x.data_ptr<scalar_t>();
    const scalar_t* cp = args.center.data_ptr<scalar_t>();
    const T* ep = args.eps.data_ptr<T>();
    const T tlo = box_lo<scalar_t>(lo), thi = box_hi<scalar_t>(hi);
    if (args.p == 0) {  // the ball is a box too: one clamp per element
      for_each_sample_piece(batch, n, [&](int64_t b, int64_t s, int64_t t) {
        for (int64_t i = s; i < t; ++i) {
          const T ci = static_cast<T>(cp[i]);
          xp[i] = linf_store<scalar_t>(linf_ball_box(static_cast<T>(xp[i]), ci, ep[b], tlo, thi), ci, ep[b]);
        }
      });
      return;
    }
    // the box bounds as values of scalar_t, so the rounded write stays inside
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        project_onto_sample<scalar_t>(xp + b * n, cp + b * n, n, args.p, static_cast<double>(ep[b]),
                                      static_cast<double>(tlo), static_cast<double>(thi));
      }
    });
    cpu::lp_fit<scalar_t>(xp, cp, ep, batch, n, args.p);
  });
  project::write_back(x, args.x);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CPU, m) {
  m.impl("project_", &project_cpu);
  m.impl("pgd_step_", &pgd_step_cpu);
  m.impl("project_onto_", &project_onto_cpu);
}

}  // namespace advx
