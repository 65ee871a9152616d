// CUDA kernels of project_ and pgd_step_: the same ball.h / project_math.h rules as the CPU
// loops, with 16-byte vector loads and deterministic per-sample L2 norms: squares are
// summed in double over fixed chunks of each sample (the layout depends only on the
// sample size and dtype, never on the launch or the alignment), the chunk sums of a
// sample are added by one group in a fixed order, and the norm is turned into the
// per-sample factor in the math type as the CPU does (static_cast<T>(sqrt(double))).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/ball.h"
#include "common/ball_cuda.cuh"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/exact.h"
#include "project/project_args.h"
#include "project/project_math.h"
#include "project/project_onto_math.h"

namespace advx {
namespace {

using cuda::AlignedVec;
using cuda::kThreads;

// ---- per-element rules as functors: f(sample, v0, v1, v2) over the data tensors ----

// The L-inf functors return the stored value itself, inside the ball in scalar_t
// (common/exact.h); the others return the math type, which the map rounds to nearest.
template <typename scalar_t, typename T>
struct PgdLinf {
  const T* eps;
  const T* alpha;
  T lo, hi;
  __device__ scalar_t operator()(int64_t b, T x, T g, T xo) const {
    return linf_store<scalar_t>(project::pgd_linf<T>(x, g, xo, eps[b], alpha[b], lo, hi), xo, eps[b]);
  }
};

template <typename T>
struct PgdL2Delta {
  const T* alpha;
  const T* gnorm;
  __device__ T operator()(int64_t b, T x, T g, T xo) const {
    return project::pgd_l2_delta<T>(x, g, xo, alpha[b], gnorm[b]);
  }
};

template <typename T>
struct PgdL2Finish {
  const T* alpha;
  const T* gnorm;
  const T* scale;
  T lo, hi;
  __device__ T operator()(int64_t b, T x, T g, T xo) const {
    return project::pgd_l2_finish<T>(x, g, xo, alpha[b], gnorm[b], scale[b], lo, hi);
  }
};

template <typename scalar_t, typename T>
struct LinfProject {
  const T* eps;
  __device__ scalar_t operator()(int64_t b, T d, T, T) const {
    return linf_store<scalar_t>(linf_clamp<T>(d, eps[b]), T(0), eps[b]);
  }
};

template <typename T>
struct Scale {
  const T* scale;
  __device__ T operator()(int64_t b, T d, T, T) const { return d * scale[b]; }
};

template <typename T>
struct Identity {
  __device__ T operator()(int64_t, T v, T, T) const { return v; }
};

// ---- what a per-sample sum of squares becomes (as project_cpu.cpp computes it) ----

// gnorm = ||g|| + 1e-10
template <typename T>
struct GradNormOut {
  T* out;
  __device__ void operator()(int64_t b, double sq) const {
    out[b] = project::pgd_l2_gnorm<T>(sq);
  }
};

// scale = min(1, eps / ||d||)
template <typename T>
struct L2ScaleOut {
  const T* eps;
  T* out;
  __device__ void operator()(int64_t b, double sq) const {
    out[b] = l2_scale_of_sumsq<T>(sq, eps[b]);
  }
};

// Loads VEC elements of up to three tensors (NIN of them non-null) at flat index i.
template <typename scalar_t, typename T, int VEC, int NIN>
__device__ __forceinline__ void load(const scalar_t* p0, const scalar_t* p1, const scalar_t* p2,
                                     int64_t i, T (&v0)[VEC], T (&v1)[VEC], T (&v2)[VEC]) {
  using V = AlignedVec<scalar_t, VEC>;
  const V a = *reinterpret_cast<const V*>(p0 + i);
  V b{}, c{};
  if (NIN > 1) b = *reinterpret_cast<const V*>(p1 + i);
  if (NIN > 2) c = *reinterpret_cast<const V*>(p2 + i);
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    v0[k] = static_cast<T>(a.val[k]);
    v1[k] = NIN > 1 ? static_cast<T>(b.val[k]) : T(0);
    v2[k] = NIN > 2 ? static_cast<T>(c.val[k]) : T(0);
  }
}

// The same elements one by one, the first m < VEC only (unaligned data, or a tail).
template <typename scalar_t, typename T, int VEC, int NIN>
__device__ __forceinline__ void load_scalar(const scalar_t* p0, const scalar_t* p1,
                                            const scalar_t* p2, int64_t i, int m, T (&v0)[VEC],
                                            T (&v1)[VEC], T (&v2)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const bool in = k < m;
    v0[k] = in ? static_cast<T>(p0[i + k]) : T(0);
    v1[k] = NIN > 1 && in ? static_cast<T>(p1[i + k]) : T(0);
    v2[k] = NIN > 2 && in ? static_cast<T>(p2[i + k]) : T(0);
  }
}

// out[i] = op(sample(i), in0[i], in1[i], in2[i]) over [B, n] data; out may be in0.
// With VEC > 1, n % VEC == 0 and every pointer is 16-byte aligned, so a vector never
// straddles two samples. The grid-stride step (gridDim.x * kThreads * VEC elements) is
// step_b samples plus step_r elements, from the host: the sample is tracked, not divided.
template <typename scalar_t, typename T, int VEC, int NIN, typename Op>
__global__ void __launch_bounds__(kThreads)
    map_kernel(scalar_t* out, const scalar_t* in0, const scalar_t* in1, const scalar_t* in2,
               int64_t numel, int64_t n, int64_t step_b, int64_t step_r, Op op) {
  const int64_t items = numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t v = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (v >= items) return;
  cuda::SampleCursor sample;
  sample.init(v * VEC, n);
  for (; v < items; v += stride, sample.advance(n, step_b, step_r)) {
    const int64_t i = v * VEC;
    T a[VEC], g[VEC], o[VEC];
    load<scalar_t, T, VEC, NIN>(in0, in1, in2, i, a, g, o);
    AlignedVec<scalar_t, VEC> r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) r.val[k] = static_cast<scalar_t>(op(sample.b, a[k], g[k], o[k]));
    *reinterpret_cast<AlignedVec<scalar_t, VEC>*>(out + i) = r;
  }
}

// Sum of op(...)^2 in double over item t = chunk (t % chunks) of sample (t / chunks),
// by a group of G threads (G == kThreads: the block; 32: a warp; 1: a thread). Thread
// `lane` of the group adds elements start + (k * G + lane) * VEC + l in order of (k, l),
// whether `vec` loads are possible or not, then the group adds the lanes in a fixed
// tree: the bits depend on (n, dtype) only. partial[t] gets the sum, or with
// partial == nullptr (one chunk per sample) fin(sample, sum) is called directly.
template <typename scalar_t, typename T, int VEC, int NIN, int G, typename Op, typename Fin>
__global__ void __launch_bounds__(kThreads)
    sumsq_kernel(const scalar_t* in0, const scalar_t* in1, const scalar_t* in2, int64_t batch,
                 int64_t n, int64_t chunks, int64_t chunk, bool vec, Op op, double* partial,
                 Fin fin) {
  constexpr int kGroups = kThreads / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int64_t items = batch * chunks;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(kGroups) + threadIdx.x / G; t < items;
       t += static_cast<int64_t>(gridDim.x) * kGroups) {
    const int64_t b = chunks == 1 ? t : t / chunks;
    const int64_t start = b * n + (t - b * chunks) * chunk;
    const int64_t stop = min(start + chunk, (b + 1) * n);
    double acc = 0.0;
    for (int64_t i = start + static_cast<int64_t>(lane) * VEC; i < stop;
         i += static_cast<int64_t>(G) * VEC) {
      T a[VEC], g[VEC], o[VEC];
      const int m = static_cast<int>(min(static_cast<int64_t>(VEC), stop - i));
      if (vec) {
        load<scalar_t, T, VEC, NIN>(in0, in1, in2, i, a, g, o);
      } else {
        load_scalar<scalar_t, T, VEC, NIN>(in0, in1, in2, i, m, a, g, o);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if (k < m) {
          const double d = static_cast<double>(op(b, a[k], g[k], o[k]));
          acc += d * d;
        }
      }
    }
    acc = cuda::group_reduce_sum<G>(acc);
    if (lane == 0) {
      if (partial != nullptr) {
        partial[t] = acc;
      } else {
        fin(b, acc);
      }
    }
  }
}

// fin(b, sum of partial[b * chunks .. (b + 1) * chunks)), added by a group of G threads:
// lane j takes chunks j, j + G, ... in order, then a fixed tree.
template <int G, typename Fin>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const double* partial, int64_t batch, int64_t chunks, Fin fin) {
  constexpr int kGroups = kThreads / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(kGroups) + threadIdx.x / G; b < batch;
       b += static_cast<int64_t>(gridDim.x) * kGroups) {
    double acc = 0.0;
    for (int64_t j = lane; j < chunks; j += G) acc += partial[b * chunks + j];
    acc = cuda::group_reduce_sum<G>(acc);
    if (lane == 0) fin(b, acc);
  }
}

template <typename scalar_t>
struct Launcher {
  using T = opmath_t<scalar_t>;
  static constexpr int kVec = cuda::vec_size<scalar_t>();
  // Reduction layout by sample size: a thread per sample up to kThreadMax elements, a
  // warp per sample up to kWarpMax, else blocks over chunks of kBlockChunk elements.
  static constexpr int64_t kThreadMax = 4 * kVec;
  static constexpr int64_t kWarpMax = 32 * 8 * kVec;
  static constexpr int64_t kBlockChunk = static_cast<int64_t>(kThreads) * 4 * kVec;
  // Chunk sums per sample up to which a warp (not the block) adds them.
  static constexpr int64_t kWarpFinalizeMax = 32 * 8;

  int64_t batch, n, numel;
  cudaStream_t stream;
  bool vec;  // every pointer aligned and n % kVec == 0
  int group;
  int64_t chunk, chunks;

  Launcher(int64_t batch_, int64_t n_, std::initializer_list<const void*> ptrs)
      : batch(batch_), n(n_), numel(batch_ * n_), stream(c10::cuda::getCurrentCUDAStream()) {
    vec = n % kVec == 0;
    for (const void* p : ptrs) vec = vec && reinterpret_cast<uintptr_t>(p) % 16 == 0;
    group = n <= kThreadMax ? 1 : (n <= kWarpMax ? 32 : kThreads);
    chunk = group == kThreads ? kBlockChunk : n;
    chunks = (n + chunk - 1) / chunk;
  }

  // Scratch doubles sumsq() needs for its chunk sums.
  int64_t partials() const { return chunks > 1 ? batch * chunks : 0; }

  template <int NIN, typename Op>
  void map(scalar_t* out, const scalar_t* a, const scalar_t* b, const scalar_t* c, Op op) const {
    const int vec_elems = vec ? kVec : 1;
    const int64_t grid = cuda::grid_for(numel / vec_elems);
    const int64_t step = grid * kThreads * vec_elems;
    const int64_t step_b = step / n, step_r = step % n;
    if (vec) {
      map_kernel<scalar_t, T, kVec, NIN><<<grid, kThreads, 0, stream>>>(out, a, b, c, numel, n,
                                                                        step_b, step_r, op);
    } else {
      map_kernel<scalar_t, T, 1, NIN><<<grid, kThreads, 0, stream>>>(out, a, b, c, numel, n,
                                                                     step_b, step_r, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // fin(b, sum over sample b of op(...)^2) for every sample; `partial` holds partials().
  template <int NIN, typename Op, typename Fin>
  void sumsq(const scalar_t* a, const scalar_t* b, const scalar_t* c, Op op, Fin fin,
             double* partial) const {
    double* out = chunks > 1 ? partial : nullptr;
    const int64_t items = batch * chunks;
    if (group == 1) {
      sumsq_kernel<scalar_t, T, kVec, NIN, 1>
          <<<groups_grid(items, kThreads), kThreads, 0, stream>>>(a, b, c, batch, n, chunks, chunk,
                                                                  vec, op, out, fin);
    } else if (group == 32) {
      sumsq_kernel<scalar_t, T, kVec, NIN, 32>
          <<<groups_grid(items, kThreads / 32), kThreads, 0, stream>>>(a, b, c, batch, n, chunks,
                                                                       chunk, vec, op, out, fin);
    } else {
      sumsq_kernel<scalar_t, T, kVec, NIN, kThreads>
          <<<groups_grid(items, 1), kThreads, 0, stream>>>(a, b, c, batch, n, chunks, chunk, vec,
                                                           op, out, fin);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (out == nullptr) return;
    if (chunks <= kWarpFinalizeMax) {
      finalize_kernel<32><<<groups_grid(batch, kThreads / 32), kThreads, 0, stream>>>(
          out, batch, chunks, fin);
    } else {
      finalize_kernel<kThreads><<<groups_grid(batch, 1), kThreads, 0, stream>>>(out, batch,
                                                                                 chunks, fin);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Grid for `items` group tasks at `per_block` groups per block (grid-stride beyond).
  static unsigned int groups_grid(int64_t items, int per_block) {
    return cuda::capped_grid((items + per_block - 1) / per_block, "project/pgd_step L2 norm");
  }
};

// Scratch: `doubles` chunk sums, then `outs` arrays of `batch` values of T.
template <typename T>
struct Scratch {
  at::Tensor storage;
  double* partial;
  T* out[2];
  Scratch(int64_t doubles, int outs, int64_t batch, const at::TensorOptions& options) {
    const int64_t out_doubles = (outs * batch * static_cast<int64_t>(sizeof(T)) + 7) / 8;
    storage = at::empty({doubles + out_doubles}, options.dtype(at::kDouble));
    partial = storage.data_ptr<double>();
    out[0] = reinterpret_cast<T*>(partial + doubles);
    out[1] = outs > 1 ? out[0] + batch : nullptr;
  }
};

void project_cuda(at::Tensor delta, const at::Tensor& eps, std::string norm) {
  const project::ProjectArgs args = project::project_args(delta, eps, norm);
  if (args.d.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(delta.device());
  const at::Tensor &d = args.d, &e = args.eps;
  const int64_t batch = args.batch, n = args.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "project_", [&] {
    using L = Launcher<scalar_t>;
    using T = typename L::T;
    scalar_t* dp = d.data_ptr<scalar_t>();
    const T* ep = e.data_ptr<T>();
    const L launch(batch, n, {dp});
    if (norm == "linf") {
      launch.template map<1>(dp, dp, nullptr, nullptr, LinfProject<scalar_t, T>{ep});
      return;
    }
    Scratch<T> scratch(launch.partials(), 1, batch, e.options());
    T* scale = scratch.out[0];
    launch.template sumsq<1>(dp, nullptr, nullptr, Identity<T>{}, L2ScaleOut<T>{ep, scale},
                             scratch.partial);
    launch.template map<1>(dp, dp, nullptr, nullptr, Scale<T>{scale});
    cuda::lp_fit<scalar_t>(dp, nullptr, ep, batch, n, c10::cuda::getCurrentCUDAStream());
  });
  project::write_back(delta, d);
}

void pgd_step_cuda(at::Tensor x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                   const at::Tensor& eps, const at::Tensor& alpha, std::string norm, double lo,
                   double hi) {
  const project::PgdStepArgs args = project::pgd_step_args(x_adv, grad, x_orig, eps, alpha, norm, lo, hi);
  if (args.x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  const at::Tensor &x = args.x, &g = args.g, &xo = args.xo, &e = args.eps, &a = args.alpha;
  const int64_t batch = args.batch, n = args.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pgd_step_", [&] {
    using L = Launcher<scalar_t>;
    using T = typename L::T;
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* op = xo.data_ptr<scalar_t>();
    const T* ep = e.data_ptr<T>();
    const T* ap = a.data_ptr<T>();
    const T tlo = box_lo<scalar_t>(lo), thi = box_hi<scalar_t>(hi);
    const L launch(batch, n, {xp, gp, op});
    if (norm == "linf") {
      launch.template map<3>(xp, xp, gp, op, PgdLinf<scalar_t, T>{ep, ap, tlo, thi});
      return;
    }
    // L2: ||g|| per sample, ||delta|| of the stepped point, then the write. Both norms
    // use the same chunk scratch, one after the other on the stream.
    Scratch<T> scratch(launch.partials(), 2, batch, e.options());
    T* gnorm = scratch.out[0];
    T* scale = scratch.out[1];
    launch.template sumsq<1>(gp, nullptr, nullptr, Identity<T>{}, GradNormOut<T>{gnorm},
                             scratch.partial);
    launch.template sumsq<3>(xp, gp, op, PgdL2Delta<T>{ap, gnorm}, L2ScaleOut<T>{ep, scale},
                             scratch.partial);
    launch.template map<3>(xp, xp, gp, op, PgdL2Finish<T>{ap, gnorm, scale, tlo, thi});
    cuda::lp_fit<scalar_t>(xp, op, ep, batch, n, c10::cuda::getCurrentCUDAStream());
  });
  project::write_back(x_adv, x);
}

// The exact projection onto the l1 / l2 ball (p) and the box: block b bisects sample b's
// multiplier in double (every evaluation one pass over the sample and a fixed-order block
// sum), then writes. lo, hi are values of scalar_t (box_lo / box_hi).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    project_onto_kernel(scalar_t* x, const scalar_t* c, const opmath_t<scalar_t>* eps, int64_t n,
                        int p, double lo, double hi) {
  const int64_t b = blockIdx.x;
  scalar_t* xs = x + b * n;
  const scalar_t* cs = c + b * n;
  const auto measure = [&](double m) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const double ci = to_double(cs[i]);
      acc += project::onto_measure(p, project::onto_coord(p, to_double(xs[i]), ci, m, lo, hi), ci);
    }
    return cuda::block_sum_to_all(acc);
  };
  // every thread gets the same sums, so all take the same branches
  const double m = project::onto_multiplier(measure, project::onto_limit(p, static_cast<double>(eps[b])));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    xs[i] = static_cast<scalar_t>(project::onto_coord(p, to_double(xs[i]), to_double(cs[i]), m, lo, hi));
  }
}

template <typename scalar_t, typename T>
struct LinfOnto {
  const T* eps;
  T lo, hi;
  __device__ scalar_t operator()(int64_t b, T x, T c, T) const {
    return linf_store<scalar_t>(linf_ball_box(x, c, eps[b], lo, hi), c, eps[b]);
  }
};

void project_onto_cuda(at::Tensor x, const at::Tensor& center, const at::Tensor& eps, std::string norm,
                       double lo, double hi) {
  const project::ProjectOntoArgs args = project::project_onto_args(x, center, eps, norm, lo, hi);
  if (args.x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = args.batch, n = args.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "project_onto_", [&] {
    using L = Launcher<scalar_t>;
    using T = typename L::T;
    scalar_t* xp = args.x.data_ptr<scalar_t>();
    const scalar_t* cp = args.center.data_ptr<scalar_t>();
    const T* ep = args.eps.data_ptr<T>();
    const T tlo = box_lo<scalar_t>(lo), thi = box_hi<scalar_t>(hi);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    if (args.p == 0) {
      const L launch(batch, n, {xp, cp});
      launch.template map<2>(xp, xp, cp, nullptr, LinfOnto<scalar_t, T>{ep, tlo, thi});
      return;
    }
    project_onto_kernel<scalar_t><<<cuda::checked_grid(batch, "project_onto_"), kThreads, 0, stream>>>(
        xp, cp, ep, n, args.p, static_cast<double>(tlo), static_cast<double>(thi));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda::lp_fit<scalar_t>(xp, cp, ep, batch, n, stream, cuda::NeverSkip{}, args.p);
  });
  project::write_back(x, args.x);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CUDA, m) {
  m.impl("project_", &project_cuda);
  m.impl("pgd_step_", &pgd_step_cuda);
  m.impl("project_onto_", &project_onto_cuda);
}

}  // namespace advx
