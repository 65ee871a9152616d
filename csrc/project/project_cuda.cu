// CUDA kernels of project_ and pgd_step_: the same project_math.h rules as the CPU
// loops, with 16-byte vector loads and deterministic per-sample L2 reductions
// (per-chunk block sums, then a fixed-order sum of the chunks of each sample).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "project/project_args.h"
#include "project/project_math.h"

namespace advx {
namespace {

using cuda::AlignedVec;
using cuda::kThreads;

// ---- per-element rules as functors: f(sample, v0, v1, v2) over the data tensors ----

template <typename T>
struct PgdLinf {
  const T* eps;
  const T* alpha;
  T lo, hi;
  __device__ T operator()(int64_t b, T x, T g, T xo) const {
    return project::pgd_linf<T>(x, g, xo, eps[b], alpha[b], lo, hi);
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
    return project::pgd_l2_finish<T>(project::pgd_l2_delta<T>(x, g, xo, alpha[b], gnorm[b]), xo,
                                     scale[b], lo, hi);
  }
};

template <typename T>
struct LinfProject {
  const T* eps;
  __device__ T operator()(int64_t b, T d, T, T) const { return project::linf_project<T>(d, eps[b]); }
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

// Loads VEC elements of up to three tensors (NIN of them non-null) at flat index i.
template <typename scalar_t, typename T, int VEC, int NIN>
__device__ void load(const scalar_t* p0, const scalar_t* p1, const scalar_t* p2, int64_t i,
                     T (&v0)[VEC], T (&v1)[VEC], T (&v2)[VEC]) {
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

// out[i] = op(sample(i), in0[i], in1[i], in2[i]) over [B, n] data; out may be in0.
// With VEC > 1, n % VEC == 0 and every pointer is 16-byte aligned, so a vector never
// straddles two samples.
template <typename scalar_t, typename T, int VEC, int NIN, typename Op>
__global__ void map_kernel(scalar_t* out, const scalar_t* in0, const scalar_t* in1,
                           const scalar_t* in2, int64_t numel, int64_t n, Op op) {
  const int64_t items = numel / VEC;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < items;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = v * VEC;
    const int64_t b = i / n;
    T a[VEC], g[VEC], o[VEC];
    load<scalar_t, T, VEC, NIN>(in0, in1, in2, i, a, g, o);
    AlignedVec<scalar_t, VEC> r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) r.val[k] = static_cast<scalar_t>(op(b, a[k], g[k], o[k]));
    *reinterpret_cast<AlignedVec<scalar_t, VEC>*>(out + i) = r;
  }
}

// partial[t] = sum over chunk t of op(...)^2, where block t covers chunk (t % chunks)
// of sample (t / chunks). Fixed-order block reduction: deterministic.
template <typename scalar_t, typename T, int VEC, int NIN, typename Op>
__global__ void sumsq_kernel(const scalar_t* in0, const scalar_t* in1, const scalar_t* in2,
                             int64_t n, int64_t chunks, int64_t chunk_elems, T* partial, Op op) {
  const int64_t t = blockIdx.x;
  const int64_t b = t / chunks;
  const int64_t start = b * n + (t % chunks) * chunk_elems;
  const int64_t stop = min(start + chunk_elems, (b + 1) * n);
  T acc = 0;
  for (int64_t i = start + static_cast<int64_t>(threadIdx.x) * VEC; i < stop; i += static_cast<int64_t>(blockDim.x) * VEC) {
    T a[VEC], g[VEC], o[VEC];
    load<scalar_t, T, VEC, NIN>(in0, in1, in2, i, a, g, o);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const T v = op(b, a[k], g[k], o[k]);
      acc += v * v;
    }
  }
  acc = cuda::block_reduce_sum(acc);
  if (threadIdx.x == 0) partial[t] = acc;
}

// One thread per sample adds its chunks in order: gnorm = ||.|| + 1e-10 ...
template <typename T>
__global__ void grad_norm_kernel(const T* partial, int64_t batch, int64_t chunks, T* gnorm) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  T s = 0;
  for (int64_t j = 0; j < chunks; ++j) s += partial[b * chunks + j];
  gnorm[b] = sqrt(s) + static_cast<T>(project::kGradNormTiny);
}

// ... and scale = min(1, eps / ||.||).
template <typename T>
__global__ void l2_scale_kernel(const T* partial, int64_t batch, int64_t chunks, const T* eps, T* scale) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  T s = 0;
  for (int64_t j = 0; j < chunks; ++j) s += partial[b * chunks + j];
  scale[b] = project::l2_scale<T>(sqrt(s), eps[b]);
}

template <typename scalar_t>
struct Launcher {
  using T = opmath_t<scalar_t>;
  static constexpr int kVec = cuda::vec_size<scalar_t>();
  int64_t batch, n, numel;
  cudaStream_t stream;
  bool vec;  // every pointer aligned and n % kVec == 0

  Launcher(int64_t batch_, int64_t n_, std::initializer_list<const void*> ptrs)
      : batch(batch_), n(n_), numel(batch_ * n_), stream(c10::cuda::getCurrentCUDAStream()) {
    vec = n % kVec == 0;
    for (const void* p : ptrs) vec = vec && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  }

  int64_t chunk_elems() const { return static_cast<int64_t>(kThreads) * kVec * 4; }
  int64_t chunks() const { return (n + chunk_elems() - 1) / chunk_elems(); }

  template <int NIN, typename Op>
  void map(scalar_t* out, const scalar_t* a, const scalar_t* b, const scalar_t* c, Op op) const {
    if (vec) {
      map_kernel<scalar_t, T, kVec, NIN><<<cuda::grid_for(numel / kVec), kThreads, 0, stream>>>(
          out, a, b, c, numel, n, op);
    } else {
      map_kernel<scalar_t, T, 1, NIN><<<cuda::grid_for(numel), kThreads, 0, stream>>>(
          out, a, b, c, numel, n, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <int NIN, typename Op>
  void sumsq(const scalar_t* a, const scalar_t* b, const scalar_t* c, T* partial, Op op) const {
    const int64_t blocks = batch * chunks();
    if (vec) {
      sumsq_kernel<scalar_t, T, kVec, NIN><<<blocks, kThreads, 0, stream>>>(
          a, b, c, n, chunks(), chunk_elems(), partial, op);
    } else {
      sumsq_kernel<scalar_t, T, 1, NIN><<<blocks, kThreads, 0, stream>>>(
          a, b, c, n, chunks(), chunk_elems(), partial, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  int64_t per_sample_blocks() const { return (batch + kThreads - 1) / kThreads; }
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
      launch.template map<1>(dp, dp, nullptr, nullptr, LinfProject<T>{ep});
      return;
    }
    at::Tensor scratch = at::empty({batch * launch.chunks() + batch}, e.options());
    T* partial = scratch.data_ptr<T>();
    T* scale = partial + batch * launch.chunks();
    launch.template sumsq<1>(dp, nullptr, nullptr, partial, Identity<T>{});
    l2_scale_kernel<T><<<launch.per_sample_blocks(), kThreads, 0, launch.stream>>>(
        partial, batch, launch.chunks(), ep, scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch.template map<1>(dp, dp, nullptr, nullptr, Scale<T>{scale});
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
    const T tlo = static_cast<T>(lo), thi = static_cast<T>(hi);
    const L launch(batch, n, {xp, gp, op});
    if (norm == "linf") {
      launch.template map<3>(xp, xp, gp, op, PgdLinf<T>{ep, ap, tlo, thi});
      return;
    }
    // L2: ||g|| per sample, ||delta|| of the stepped point, then the write.
    const int64_t chunks = launch.chunks();
    at::Tensor scratch = at::empty({2 * batch * chunks + 2 * batch}, e.options());
    T* gpart = scratch.data_ptr<T>();
    T* dpart = gpart + batch * chunks;
    T* gnorm = dpart + batch * chunks;
    T* scale = gnorm + batch;
    launch.template sumsq<1>(gp, nullptr, nullptr, gpart, Identity<T>{});
    grad_norm_kernel<T><<<launch.per_sample_blocks(), kThreads, 0, launch.stream>>>(gpart, batch, chunks, gnorm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch.template sumsq<3>(xp, gp, op, dpart, PgdL2Delta<T>{ap, gnorm});
    l2_scale_kernel<T><<<launch.per_sample_blocks(), kThreads, 0, launch.stream>>>(dpart, batch, chunks, ep, scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch.template map<3>(xp, xp, gp, op, PgdL2Finish<T>{ap, gnorm, scale, tlo, thi});
  });
  project::write_back(x_adv, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CUDA, m) {
  m.impl("project_", &project_cuda);
  m.impl("pgd_step_", &pgd_step_cuda);
}

}  // namespace advx
