#pragma once
// The CUDA multi-tensor apply of the optim ops (optim_cuda.cu), in the style of torch's
// MultiTensorApply: each launch covers up to kMaxTensors tensors and kMaxBlocks chunks
// of kChunk elements, described by a ChunkTable passed as the kernel argument (captured
// by value in a CUDA graph). Blocks whose tensors are aligned use vector loads (4
// elements, 2 for double), the rest (and the tails) scalar ones; half types compute in
// float. Step counters, lr, grad_scale and found_inf are read on the device in their
// own dtype, so a step never syncs with the host nor copies them. The L-inf ball and
// the box are fused into the update; the L2 ball is three launches per L2Table of up to
// kMaxL2Tensors tensors (partial sums over fixed blocks, one total and scale per
// sample, the scale pass): a deterministic norm in double.
//
// cuda_apply::Driver::run<Rule> takes a rule of optim_rules.h (as the CPU driver does):
// coeffs<T>(args, lr, grad_scale, step) per tensor on the device, and the update of the
// call's variant on registers (update_variant: the variant is uniform over a launch).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "common/ball.h"
#include "common/ball_cuda.cuh"
#include "common/exact.h"
#include "common/cuda_utils.cuh"
#include "common/macros.h"
#include "optim/optim_lists.h"
#include "optim/optim_ops.h"
#include "optim/optim_rules.h"

namespace advx {
namespace optim {
namespace cuda_apply {

using at::TensorList;

// 256 threads with room for 4 blocks per SM (<= 64 registers, 50% occupancy).
constexpr int kThreads = 256;
constexpr int kMinBlocksPerSm = 4;
constexpr int64_t kChunk = 65536;  // elements per block
constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
constexpr int kLists = 6;  // param, grad, three states at most, center
constexpr int kParam = 0, kGrad = 1, kState = 2, kCenter = 5;
constexpr int kMaxStates = 3;

// One launch: the tensors it touches and the chunk every block works on.
struct ChunkTable {
  void* ptr[kLists][kMaxTensors];  // nullptr: the list is not used by this op/flags
  int64_t numel[kMaxTensors];
  int64_t per_sample[kMaxTensors];  // elements per sample (dim 0), for the L-inf radius
  const void* radius[kMaxTensors];  // [B] radii in the math type, or nullptr
  void* step[kMaxTensors];          // step counter, or nullptr (SGD)
  bool first[kMaxTensors];          // SGD: the momentum buffer is new
  unsigned char tensor_of_block[kMaxBlocks];
  int chunk_of_block[kMaxBlocks];
};
static_assert(sizeof(ChunkTable) <= 4000, "kernel arguments must stay under 4 KB");

// A one-element tensor read on the device in its own dtype, or absent (ptr == nullptr).
enum ScalarDtype : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };
struct ScalarRef {
  const void* ptr = nullptr;
  int dtype = kF32;
};

__device__ __forceinline__ double read_scalar(const ScalarRef& s, double absent) {
  if (s.ptr == nullptr) return absent;
  switch (s.dtype) {
    case kF64:
      return *static_cast<const double*>(s.ptr);
    case kF16:
      return static_cast<float>(*static_cast<const c10::Half*>(s.ptr));
    case kBF16:
      return static_cast<float>(*static_cast<const c10::BFloat16*>(s.ptr));
    default:
      return *static_cast<const float*>(s.ptr);
  }
}

// Call-wide scalars, read on the device.
struct DeviceScalars {
  ScalarRef lr;  // absent: lr_value
  double lr_value;
  ScalarRef grad_scale;
  ScalarRef found_inf;
  bool step_is_double;
};

// The fused part of the constraint: mode 0 none, 1 L-inf/box around 0, 2 around centers.
template <typename T>
struct Fused {
  int mode;
  T lo, hi;
};

__device__ __forceinline__ bool skipped(const ScalarRef& found_inf) {
  return read_scalar(found_inf, 0.0) != 0.0;
}

// A launch that does nothing when found_inf is set (the step was skipped).
struct FoundInfSkip {
  ScalarRef found_inf;
  __device__ bool operator()() const { return skipped(found_inf); }
};

__device__ __forceinline__ double read_step(const void* step, bool is_double) {
  if (step == nullptr) return 0.0;
  return is_double ? *static_cast<const double*>(step) : *static_cast<const float*>(step);
}

// ------------------------------------------------------------------ update kernel

// Elements [begin, end) of one chunk (offsets relative to the chunk start `base`), N at
// a time; N > 1 needs every pointer aligned to N elements and (end - begin) % N == 0.
// The sample of an element (for the L-inf radius) is tracked by compares, not divisions:
// a vector may straddle samples (per_sample % N != 0, or per_sample < N).
template <int N, typename scalar_t, typename Rule, typename T>
__device__ __forceinline__ void update_range(scalar_t* const (&ptr)[kLists], int64_t base,
                                             int64_t begin, int64_t end,
                                             const typename Rule::template Coeffs<T>& c,
                                             const typename Rule::Args& args, bool first,
                                             const Fused<T>& fused, const T* radius,
                                             int64_t per_sample) {
  constexpr int S = Rule::kStates;
  static_assert(S >= 1 && S <= kMaxStates, "a rule has one to three state slots");
  constexpr int64_t kStride = static_cast<int64_t>(kThreads) * N;
  using V = cuda::AlignedVec<scalar_t, N>;
  int64_t i = begin + static_cast<int64_t>(threadIdx.x) * N;
  if (i >= end) return;
  cuda::SampleCursor sample{0, 0};
  int64_t step_b = 0, step_r = 0;
  if (radius != nullptr) {
    sample.init(base + i, per_sample);
    step_b = kStride / per_sample;
    step_r = kStride - step_b * per_sample;
  }
  for (; i < end; i += kStride) {
    V p = *reinterpret_cast<const V*>(ptr[kParam] + i);
    const V g = *reinterpret_cast<const V*>(ptr[kGrad] + i);
    V s[S];
#pragma unroll
    for (int j = 0; j < S; ++j) {
      if (ptr[kState + j] != nullptr) s[j] = *reinterpret_cast<const V*>(ptr[kState + j] + i);
    }
    V center;
    if (fused.mode == 2) center = *reinterpret_cast<const V*>(ptr[kCenter] + i);
    int64_t b = 0, r = 0;  // sample and offset of element i + l
    if (radius != nullptr) {
      b = sample.b;
      r = sample.r;
    }
#pragma unroll
    for (int l = 0; l < N; ++l) {
      T pv = static_cast<T>(p.val[l]);
      T sv[S];
#pragma unroll
      for (int j = 0; j < S; ++j) sv[j] = ptr[kState + j] ? static_cast<T>(s[j].val[l]) : T(0);
      update_variant<Rule>(args, pv, static_cast<T>(g.val[l]), sv, first, c);
      if (fused.mode != 0) {
        const T eps = radius ? radius[b] : T(INFINITY);
        const T ctr = fused.mode == 2 ? static_cast<T>(center.val[l]) : T(0);
        p.val[l] = linf_store<scalar_t>(linf_ball_box(pv, ctr, eps, fused.lo, fused.hi), ctr, eps);
      } else {
        p.val[l] = static_cast<scalar_t>(pv);
      }
#pragma unroll
      for (int j = 0; j < S; ++j) s[j].val[l] = static_cast<scalar_t>(sv[j]);
      if (N > 1 && radius != nullptr && ++r == per_sample) {
        r = 0;
        ++b;
      }
    }
    *reinterpret_cast<V*>(ptr[kParam] + i) = p;
#pragma unroll
    for (int j = 0; j < S; ++j) {
      if (ptr[kState + j] != nullptr) *reinterpret_cast<V*>(ptr[kState + j] + i) = s[j];
    }
    if (radius != nullptr) sample.advance(per_sample, step_b, step_r);
  }
}

template <typename scalar_t, typename Rule>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    update_kernel(ChunkTable table, DeviceScalars scalars, typename Rule::Args args,
                  Fused<opmath_t<scalar_t>> fused) {
  using T = opmath_t<scalar_t>;
  using Coeffs = typename Rule::template Coeffs<T>;
  if (skipped(scalars.found_inf)) return;
  const int t = table.tensor_of_block[blockIdx.x];
  const int64_t base = static_cast<int64_t>(table.chunk_of_block[blockIdx.x]) * kChunk;
  const int64_t n = min(kChunk, table.numel[t] - base);

  __shared__ Coeffs coeffs;
  if (threadIdx.x == 0) {
    const double lr = read_scalar(scalars.lr, scalars.lr_value);
    const double grad_scale = read_scalar(scalars.grad_scale, 1.0);
    coeffs = Rule::template coeffs<T>(args, lr, grad_scale,
                                      read_step(table.step[t], scalars.step_is_double));
  }
  __syncthreads();
  const Coeffs c = coeffs;

  // At most 4 elements a vector: 8-byte accesses for half types keep every rule under
  // 64 registers (16-byte ones need up to 100), still full 256-byte warp accesses.
  constexpr int kVec = cuda::vec_size<scalar_t>() < 4 ? cuda::vec_size<scalar_t>() : 4;
  scalar_t* ptr[kLists];
  bool aligned = true;
  for (int j = 0; j < kLists; ++j) {
    ptr[j] = table.ptr[j][t] ? static_cast<scalar_t*>(table.ptr[j][t]) + base : nullptr;
    aligned = aligned && reinterpret_cast<uintptr_t>(ptr[j]) % (sizeof(scalar_t) * kVec) == 0;
  }
  const T* radius = static_cast<const T*>(table.radius[t]);
  const int64_t per_sample = table.per_sample[t];
  const bool first = table.first[t];
  const int64_t vec_end = aligned ? n - n % kVec : 0;
  update_range<kVec, scalar_t, Rule, T>(ptr, base, 0, vec_end, c, args, first, fused, radius,
                                        per_sample);
  update_range<1, scalar_t, Rule, T>(ptr, base, vec_end, n, c, args, first, fused, radius,
                                     per_sample);
}

// ------------------------------------------------------------------ step counters

constexpr int kMaxSteps = 256;

struct StepTable {
  void* step[kMaxSteps];
  int count;
};

static __global__ void advance_steps_kernel(StepTable table, bool is_double, ScalarRef found_inf) {
  if (skipped(found_inf)) return;
  const int i = threadIdx.x;
  if (i >= table.count) return;
  if (is_double) {
    *static_cast<double*>(table.step[i]) += 1.0;
  } else {
    *static_cast<float*>(table.step[i]) += 1.0f;  // in float32, as torch's step_t += 1
  }
}

inline void advance_steps(TensorList steps, const ScalarRef& found_inf, cudaStream_t stream) {
  if (steps.empty()) return;
  const bool is_double = steps[0].scalar_type() == at::kDouble;
  StepTable table{};
  for (size_t i = 0; i < steps.size(); ++i) {
    table.step[table.count++] = steps[i].data_ptr();
    if (table.count == kMaxSteps || i + 1 == steps.size()) {
      advance_steps_kernel<<<1, kMaxSteps, 0, stream>>>(table, is_double, found_inf);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      table.count = 0;
    }
  }
}

// ------------------------------------------------------------------ L2 ball

// Every sample is cut into fixed blocks of kReduceBlock elements: block k of sample b
// covers [b*n + k*kReduceBlock, min(b*n + (k+1)*kReduceBlock, (b+1)*n)). Each block's
// sum is added in a fixed order (thread tid takes elements (it * kL2Threads + tid) * VEC
// + l in order of (it, l), vector loads or not, then a fixed tree), and each sample's
// blocks by one warp in a fixed order: the result does not depend on the launch.
constexpr int kL2Threads = cuda::kThreads;
constexpr int64_t kReduceBlock = 8192;
constexpr int kMaxL2Tensors = 48;

// The tensors of one group of L2 launches. Blocks and samples are numbered across the
// whole call: partial sums and per-sample scales live in one scratch tensor.
struct L2Table {
  void* param[kMaxL2Tensors];
  const void* center[kMaxL2Tensors];  // nullptr: center 0
  const void* radius[kMaxL2Tensors];  // [B] in the math type
  int64_t per_sample[kMaxL2Tensors];
  int64_t blocks_per_sample[kMaxL2Tensors];
  int64_t block_start[kMaxL2Tensors + 1];   // first block of each tensor; [count]: the end
  int64_t sample_start[kMaxL2Tensors + 1];  // first sample of each tensor; [count]: the end
  int count;
};
static_assert(sizeof(L2Table) <= 3800, "kernel arguments must stay under 4 KB");

// The last t in [0, count) with start[t] <= x (start is strictly increasing).
__device__ __forceinline__ int find_tensor(const int64_t* start, int count, int64_t x) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (start[mid] <= x) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Reduce block g of the call: its tensor, sample and element range.
struct L2Block {
  int t;
  int64_t sample, begin, end;
  __device__ __forceinline__ L2Block(const L2Table& table, int64_t g) {
    t = find_tensor(table.block_start, table.count, g);
    const int64_t q = g - table.block_start[t], bps = table.blocks_per_sample[t];
    const int64_t n = table.per_sample[t];
    sample = q / bps;
    begin = sample * n + (q - sample * bps) * kReduceBlock;
    end = min(begin + kReduceBlock, (sample + 1) * n);
  }
};

// Loads elements [i, i + VEC) (the first m only, one by one, unless vec) in the math type.
template <int VEC, typename scalar_t, typename T>
__device__ __forceinline__ void load_l2(const scalar_t* p, int64_t i, bool vec, int m,
                                        T (&v)[VEC]) {
  if (vec) {
    const auto a = *reinterpret_cast<const cuda::AlignedVec<scalar_t, VEC>*>(p + i);
#pragma unroll
    for (int l = 0; l < VEC; ++l) v[l] = static_cast<T>(a.val[l]);
  } else {
#pragma unroll
    for (int l = 0; l < VEC; ++l) v[l] = l < m ? static_cast<T>(p[i + l]) : T(0);
  }
}

// The same for p and its center c (c == nullptr: zeros).
template <int VEC, typename scalar_t, typename T>
__device__ __forceinline__ void load_l2_pair(const scalar_t* p, const scalar_t* c, int64_t i,
                                             bool vec, int m, T (&pv)[VEC], T (&cv)[VEC]) {
  load_l2<VEC>(p, i, vec, m, pv);
  if (c != nullptr) {
    load_l2<VEC>(c, i, vec, m, cv);
  } else {
#pragma unroll
    for (int l = 0; l < VEC; ++l) cv[l] = T(0);
  }
}

__device__ __forceinline__ bool l2_vec_ok(const void* p, const void* c, int64_t n, int vec) {
  return (reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(c)) % 16 == 0 &&
         n % vec == 0;
}

// partial[g] = sum((p - c)^2) over reduce block g, in double.
template <typename scalar_t>
__global__ void __launch_bounds__(kL2Threads)
    l2_partials_kernel(L2Table table, double* partial, ScalarRef found_inf) {
  using T = opmath_t<scalar_t>;
  constexpr int VEC = cuda::vec_size<scalar_t>();
  if (skipped(found_inf)) return;
  const int64_t first = table.block_start[0], blocks = table.block_start[table.count] - first;
  for (int64_t q = blockIdx.x; q < blocks; q += gridDim.x) {
    const L2Block blk(table, first + q);
    const scalar_t* p = static_cast<const scalar_t*>(table.param[blk.t]);
    const scalar_t* c = static_cast<const scalar_t*>(table.center[blk.t]);
    const bool vec = l2_vec_ok(p, c, table.per_sample[blk.t], VEC);
    double acc = 0.0;
    for (int64_t i = blk.begin + static_cast<int64_t>(threadIdx.x) * VEC; i < blk.end;
         i += static_cast<int64_t>(kL2Threads) * VEC) {
      const int m = static_cast<int>(min(static_cast<int64_t>(VEC), blk.end - i));
      T pv[VEC], cv[VEC];
      load_l2_pair<VEC>(p, c, i, vec, m, pv, cv);
#pragma unroll
      for (int l = 0; l < VEC; ++l) {
        if (l < m) {
          const double d = static_cast<double>(pv[l] - cv[l]);
          acc += d * d;
        }
      }
    }
    acc = cuda::block_reduce_sum(acc);
    if (threadIdx.x == 0) partial[first + q] = acc;
  }
}

// scale[s] = min(1, eps / ||p - c||) of sample s (stored as double, exact for T): one
// warp per sample adds its block sums in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kL2Threads)
    l2_finalize_kernel(L2Table table, const double* partial, double* scale, ScalarRef found_inf) {
  if (skipped(found_inf)) return;
  constexpr int kWarps = kL2Threads / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t first = table.sample_start[0], samples = table.sample_start[table.count] - first;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32; q < samples;
       q += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t s = first + q;
    const int t = find_tensor(table.sample_start, table.count, s);
    const int64_t b = s - table.sample_start[t], bps = table.blocks_per_sample[t];
    const double* sums = partial + table.block_start[t] + b * bps;
    double acc = 0.0;
    for (int64_t k = lane; k < bps; k += 32) acc += sums[k];
    acc = cuda::warp_reduce_sum(acc);
    if (lane == 0) {
      const T eps = static_cast<const T*>(table.radius[t])[b];
      scale[s] = static_cast<double>(l2_scale_of_sumsq<T>(acc, eps));
    }
  }
}

// p = clamp(c + (p - c) * scale, lo, hi) over every reduce block.
template <typename scalar_t>
__global__ void __launch_bounds__(kL2Threads)
    l2_scale_kernel(L2Table table, const double* scale, opmath_t<scalar_t> lo,
                    opmath_t<scalar_t> hi, ScalarRef found_inf) {
  using T = opmath_t<scalar_t>;
  constexpr int VEC = cuda::vec_size<scalar_t>();
  using V = cuda::AlignedVec<scalar_t, VEC>;
  if (skipped(found_inf)) return;
  const int64_t first = table.block_start[0], blocks = table.block_start[table.count] - first;
  for (int64_t q = blockIdx.x; q < blocks; q += gridDim.x) {
    const L2Block blk(table, first + q);
    scalar_t* p = static_cast<scalar_t*>(table.param[blk.t]);
    const scalar_t* c = static_cast<const scalar_t*>(table.center[blk.t]);
    const T s = static_cast<T>(scale[table.sample_start[blk.t] + blk.sample]);
    const bool vec = l2_vec_ok(p, c, table.per_sample[blk.t], VEC);
    for (int64_t i = blk.begin + static_cast<int64_t>(threadIdx.x) * VEC; i < blk.end;
         i += static_cast<int64_t>(kL2Threads) * VEC) {
      const int m = static_cast<int>(min(static_cast<int64_t>(VEC), blk.end - i));
      T pv[VEC], cv[VEC];
      load_l2_pair<VEC>(p, c, i, vec, m, pv, cv);
      if (vec) {
        V out;
#pragma unroll
        for (int l = 0; l < VEC; ++l) {
          out.val[l] = static_cast<scalar_t>(l2_ball_box(pv[l] - cv[l], cv[l], s, lo, hi));
        }
        *reinterpret_cast<V*>(p + i) = out;
      } else {
#pragma unroll
        for (int l = 0; l < VEC; ++l) {
          if (l < m) p[i + l] = static_cast<scalar_t>(l2_ball_box(pv[l] - cv[l], cv[l], s, lo, hi));
        }
      }
    }
  }
}

// p = clamp(c + (p - c) * min(1, eps / ||p - c||), lo, hi) per sample of every param.
template <typename scalar_t>
void l2_project(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>* centers,
                TensorList radii, double lo, double hi, const ScalarRef& found_inf,
                cudaStream_t stream) {
  using T = opmath_t<scalar_t>;
  int64_t total_blocks = 0, total_samples = 0;
  for (const at::Tensor& p : params) {
    if (p.numel() == 0) continue;
    const int64_t batch = batch_of(p), n = p.numel() / batch;
    total_blocks += batch * ((n + kReduceBlock - 1) / kReduceBlock);
    total_samples += batch;
  }
  if (total_blocks == 0) return;
  at::Tensor scratch =
      at::empty({total_blocks + total_samples}, params[0].options().dtype(at::kDouble));
  double* partial = scratch.data_ptr<double>();
  double* scale = partial + total_blocks;
  const T tlo = box_lo<scalar_t>(lo), thi = box_hi<scalar_t>(hi);

  L2Table table{};
  int64_t block_end = 0, sample_end = 0;
  auto launch = [&]() {
    table.block_start[table.count] = block_end;
    table.sample_start[table.count] = sample_end;
    const int64_t blocks = block_end - table.block_start[0];
    const int64_t samples = sample_end - table.sample_start[0];
    const unsigned int grid = cuda::capped_grid(blocks, "L2 constraint");
    l2_partials_kernel<scalar_t><<<grid, kL2Threads, 0, stream>>>(table, partial, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t warps = kL2Threads / 32;
    l2_finalize_kernel<T><<<cuda::capped_grid((samples + warps - 1) / warps, "L2 constraint"),
                            kL2Threads, 0, stream>>>(table, partial, scale, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    l2_scale_kernel<scalar_t><<<grid, kL2Threads, 0, stream>>>(table, scale, tlo, thi, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    table = L2Table{};
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const int64_t batch = batch_of(p), n = p.numel() / batch;
    const int s = table.count++;
    table.param[s] = p.data_ptr();
    table.center[s] = centers ? (*centers)[i].const_data_ptr() : nullptr;
    table.radius[s] = radii[i].const_data_ptr();
    table.per_sample[s] = n;
    table.blocks_per_sample[s] = (n + kReduceBlock - 1) / kReduceBlock;
    table.block_start[s] = block_end;
    table.sample_start[s] = sample_end;
    block_end += batch * table.blocks_per_sample[s];
    sample_end += batch;
    if (table.count == kMaxL2Tensors) launch();
  }
  if (table.count > 0) launch();
  // then each param inside its ball in scalar_t (common/exact.h)
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const int64_t batch = batch_of(p);
    cuda::lp_fit<scalar_t>(p.data_ptr<scalar_t>(),
                           centers ? (*centers)[i].const_data_ptr<scalar_t>() : nullptr,
                           radii[i].const_data_ptr<T>(), batch, p.numel() / batch, stream,
                           FoundInfSkip{found_inf});
  }
}

// ------------------------------------------------------------------ one call

// The device-side scalars of a call. A scalar tensor is read where it lies, in its own
// dtype; only a dtype the kernels do not read (float8) is copied, kept alive here.
struct CallScalars {
  DeviceScalars device{};
  at::Tensor copies[3];
};

inline ScalarRef scalar_ref(const std::optional<at::Tensor>& t, at::Tensor& copy) {
  if (!t.has_value()) return {};
  switch (t->scalar_type()) {
    case at::kFloat:
      return {t->const_data_ptr(), kF32};
    case at::kDouble:
      return {t->const_data_ptr(), kF64};
    case at::kHalf:
      return {t->const_data_ptr(), kF16};
    case at::kBFloat16:
      return {t->const_data_ptr(), kBF16};
    default:
      copy = t->to(at::kFloat);
      return {copy.const_data_ptr(), kF32};
  }
}

template <typename Rule>
CallScalars device_scalars(const StepCall<Rule>& call) {
  CallScalars s;
  s.device.lr = scalar_ref(call.lr_tensor, s.copies[0]);
  s.device.lr_value = call.lr;
  s.device.grad_scale = scalar_ref(call.grad_scale, s.copies[1]);
  s.device.found_inf = scalar_ref(call.found_inf, s.copies[2]);
  s.device.step_is_double = !call.steps.empty() && call.steps[0].scalar_type() == at::kDouble;
  return s;
}

// The lists of one call, as working tensors: lists[kParam], lists[kGrad], states, center
// (empty when unused), plus the per-tensor step counters and SGD's new-buffer flags.
struct CallLists {
  std::array<const std::vector<at::Tensor>*, kLists> lists{};
  TensorList steps;
  std::vector<bool> first;
};

// Fills ChunkTables over every tensor of the call and launches update_kernel for each.
template <typename scalar_t, typename Rule>
void launch_update(const CallLists& call, const Constraint& k, const typename Rule::Args& args,
                   const DeviceScalars& scalars, cudaStream_t stream) {
  using T = opmath_t<scalar_t>;
  const auto& params = *call.lists[kParam];
  Fused<T> fused{0, box_lo<scalar_t>(k.lo), box_hi<scalar_t>(k.hi)};
  if (k.ball == Ball::kLinf) fused.mode = k.has_center() ? 2 : 1;
  if (k.ball == Ball::kNone && k.box) fused.mode = 1;

  ChunkTable table{};
  int slot = 0, blocks = 0;
  auto fill_slot = [&](int s, size_t i) {
    for (int j = 0; j < kLists; ++j) {
      const auto* list = call.lists[j];
      const bool used = !list->empty() && (j != kCenter || fused.mode == 2);
      table.ptr[j][s] = used ? (*list)[i].data_ptr() : nullptr;
    }
    table.numel[s] = params[i].numel();
    table.per_sample[s] = params[i].numel() / batch_of(params[i]);
    table.radius[s] = k.ball == Ball::kLinf ? k.radii[i].const_data_ptr() : nullptr;
    table.step[s] = call.steps.empty() ? nullptr : call.steps[i].data_ptr();
    table.first[s] = call.first.empty() ? false : call.first[i];
  };
  auto launch = [&]() {
    update_kernel<scalar_t, Rule><<<blocks, kThreads, 0, stream>>>(table, scalars, args, fused);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    blocks = 0;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    if (numel == 0) continue;
    fill_slot(slot, i);
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    TORCH_CHECK(chunks <= INT32_MAX, "params[", i, "] is too large (", numel, " elements)");
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      table.tensor_of_block[blocks] = static_cast<unsigned char>(slot);
      table.chunk_of_block[blocks] = static_cast<int>(chunk);
      ++blocks;
      const bool last_chunk = chunk + 1 == chunks;
      if (blocks == kMaxBlocks || (last_chunk && slot + 1 == kMaxTensors)) {
        launch();
        if (last_chunk) {
          slot = -1;  // the next tensor starts a fresh table
        } else {
          fill_slot(0, i);  // the rest of this tensor continues in slot 0
          slot = 0;
        }
      }
    }
    ++slot;
  }
  if (blocks > 0) launch();
}

struct Driver {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;

  // Everything after the checks: steps, layouts, update, L2 ball; no host sync.
  template <typename Rule>
  static void run(const StepCall<Rule>& call) {
    static_assert(Rule::kStates <= kMaxStates, "a rule has one to three state slots");
    const CallScalars scalars = device_scalars(call);
    const c10::cuda::CUDAGuard guard(call.params[0].device());
    const Constraint& k = call.constraint;  // radii are contiguous (check_constraint)
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    advance_steps(call.steps, scalars.device.found_inf, stream);

    WorkingLists work(call.params, k.ball != Ball::kNone);
    std::array<size_t, kLists> index{};
    index[kGrad] = work.add(call.grads, false);
    for (int j = 0; j < Rule::kStates; ++j) index[kState + j] = work.add(call.states[j], true);
    for (int j = Rule::kStates; j < kMaxStates; ++j) index[kState + j] = work.add(TensorList(), false);
    index[kCenter] = work.add(k.centers, false);
    CallLists lists;  // pointers taken after the last add(): the lists no longer move
    for (int j = 0; j < kLists; ++j) lists.lists[j] = &work.get(index[j]);
    lists.steps = call.steps;
    lists.first = call.first;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.params[0].scalar_type(), Rule::kName, [&] {
      launch_update<scalar_t, Rule>(lists, k, call.args, scalars.device, stream);
      if (k.ball == Ball::kL2) {
        l2_project<scalar_t>(*lists.lists[kParam], k.has_center() ? lists.lists[kCenter] : nullptr,
                             k.radii, k.lo, k.hi, scalars.device.found_inf, stream);
      }
    });
    work.finish();
  }
};

}  // namespace cuda_apply
}  // namespace optim
}  // namespace advx
