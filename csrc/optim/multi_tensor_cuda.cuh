#pragma once
// The CUDA multi-tensor apply of the optim ops (optim_cuda.cu), in the style of torch's
// MultiTensorApply: each launch covers up to kMaxTensors tensors and kMaxBlocks chunks
// of kChunk elements, described by a ChunkTable passed as the kernel argument (captured
// by value in a CUDA graph). Blocks whose tensors are 16-byte aligned use vector loads,
// the rest (and the tails) scalar ones; half types compute in float. Step counters, lr,
// grad_scale and found_inf are read on the device, so a step never syncs with the host.
// The L-inf ball and the box are fused into the update; the L2 ball is two more kernels
// over fixed per-sample blocks (partial sums, then scale): a deterministic norm.
//
// A rule (optim_cuda.cu) provides Args (host hyper-parameters), Coeffs<T> and
// coeffs<T>(args, lr, grad_scale, step) (per tensor, on the device), and
// update<T>(p, g, state[3], first, coeffs, args) on registers.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "common/macros.h"
#include "optim/optim_lists.h"
#include "optim/optim_math.h"

namespace advx {
namespace optim {
namespace cuda_apply {

using at::TensorList;

constexpr int kThreads = 512;
constexpr int64_t kChunk = 65536;  // elements per block
constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
constexpr int kLists = 6;  // param, grad, three states at most, center
constexpr int kParam = 0, kGrad = 1, kState = 2, kCenter = 5;

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

// Call-wide scalars, read on the device (pointers are float64 tensors or nullptr).
struct DeviceScalars {
  const double* lr;
  double lr_value;
  const double* grad_scale;
  const double* found_inf;
  bool step_is_double;
};

// The fused part of the constraint: mode 0 none, 1 L-inf/box around 0, 2 around centers.
template <typename T>
struct Fused {
  int mode;
  T lo, hi;
};

__device__ __forceinline__ bool skipped(const DeviceScalars& s) {
  return s.found_inf != nullptr && *s.found_inf != 0.0;
}

__device__ __forceinline__ double read_step(const void* step, bool is_double) {
  if (step == nullptr) return 0.0;
  return is_double ? *static_cast<const double*>(step) : *static_cast<const float*>(step);
}

template <typename scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Pack {
  scalar_t v[N];
};

// ------------------------------------------------------------------ update kernel

// Elements [begin, end) of one chunk (offsets relative to the chunk start `base`), N at
// a time; N > 1 needs every pointer 16-byte aligned and (end - begin) % N == 0.
template <int N, typename scalar_t, typename Rule, typename T>
__device__ __forceinline__ void update_range(scalar_t* const (&ptr)[kLists], int64_t base,
                                             int64_t begin, int64_t end,
                                             const typename Rule::template Coeffs<T>& c,
                                             const typename Rule::Args& args, bool first,
                                             const Fused<T>& fused, const T* radius,
                                             int64_t per_sample) {
  using P = Pack<scalar_t, N>;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * N; i < end;
       i += static_cast<int64_t>(kThreads) * N) {
    P p = *reinterpret_cast<const P*>(ptr[kParam] + i);
    const P g = *reinterpret_cast<const P*>(ptr[kGrad] + i);
    P s[3];
    for (int j = 0; j < 3; ++j) {
      if (ptr[kState + j] != nullptr) s[j] = *reinterpret_cast<const P*>(ptr[kState + j] + i);
    }
    P center;
    if (fused.mode == 2) center = *reinterpret_cast<const P*>(ptr[kCenter] + i);
#pragma unroll
    for (int l = 0; l < N; ++l) {
      T pv = static_cast<T>(p.v[l]);
      T sv[3];
      for (int j = 0; j < 3; ++j) sv[j] = ptr[kState + j] ? static_cast<T>(s[j].v[l]) : T(0);
      Rule::update(pv, static_cast<T>(g.v[l]), sv, first, c, args);
      if (fused.mode != 0) {
        const T eps = radius ? radius[(base + i + l) / per_sample] : T(INFINITY);
        const T ctr = fused.mode == 2 ? static_cast<T>(center.v[l]) : T(0);
        pv = constrain_linf(pv, ctr, eps, fused.lo, fused.hi);
      }
      p.v[l] = static_cast<scalar_t>(pv);
      for (int j = 0; j < 3; ++j) s[j].v[l] = static_cast<scalar_t>(sv[j]);
    }
    *reinterpret_cast<P*>(ptr[kParam] + i) = p;
    for (int j = 0; j < 3; ++j) {
      if (ptr[kState + j] != nullptr) *reinterpret_cast<P*>(ptr[kState + j] + i) = s[j];
    }
  }
}

template <typename scalar_t, typename Rule>
__global__ void __launch_bounds__(kThreads)
    update_kernel(ChunkTable table, DeviceScalars scalars, typename Rule::Args args,
                  Fused<opmath_t<scalar_t>> fused) {
  using T = opmath_t<scalar_t>;
  using Coeffs = typename Rule::template Coeffs<T>;
  if (skipped(scalars)) return;
  const int t = table.tensor_of_block[blockIdx.x];
  const int64_t base = static_cast<int64_t>(table.chunk_of_block[blockIdx.x]) * kChunk;
  const int64_t n = min(kChunk, table.numel[t] - base);

  __shared__ Coeffs coeffs;
  if (threadIdx.x == 0) {
    const double lr = scalars.lr ? *scalars.lr : scalars.lr_value;
    const double grad_scale = scalars.grad_scale ? *scalars.grad_scale : 1.0;
    coeffs = Rule::template coeffs<T>(args, lr, grad_scale,
                                      read_step(table.step[t], scalars.step_is_double));
  }
  __syncthreads();
  const Coeffs c = coeffs;

  scalar_t* ptr[kLists];
  bool aligned = true;
  for (int j = 0; j < kLists; ++j) {
    ptr[j] = table.ptr[j][t] ? static_cast<scalar_t*>(table.ptr[j][t]) + base : nullptr;
    aligned = aligned && reinterpret_cast<uintptr_t>(ptr[j]) % 16 == 0;
  }
  const T* radius = static_cast<const T*>(table.radius[t]);
  const int64_t per_sample = table.per_sample[t];
  const bool first = table.first[t];
  constexpr int kVec = 16 / sizeof(scalar_t);
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

static __global__ void advance_steps_kernel(StepTable table, bool is_double, const double* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0) return;
  const int i = threadIdx.x;
  if (i >= table.count) return;
  if (is_double) {
    *static_cast<double*>(table.step[i]) += 1.0;
  } else {
    *static_cast<float*>(table.step[i]) += 1.0f;  // in float32, as torch's step_t += 1
  }
}

inline void advance_steps(TensorList steps, const double* found_inf, cudaStream_t stream) {
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

constexpr int kReduceThreads = 256;
constexpr int64_t kReduceBlock = 8192;  // elements per partial sum: fixed, so the result
                                        // does not depend on the launch configuration

// The L2 kernels split every sample into the same fixed blocks: block k of sample b
// covers [b*n + k*kReduceBlock, min(b*n + (k+1)*kReduceBlock, (b+1)*n)).
struct SampleBlocks {
  int64_t per_sample, blocks_per_sample;
  __device__ void range(int64_t block, int64_t& begin, int64_t& end) const {
    const int64_t b = block / blocks_per_sample, k = block % blocks_per_sample;
    begin = b * per_sample + k * kReduceBlock;
    end = min(begin + kReduceBlock, (b + 1) * per_sample);
  }
};

// partial[block] = sum((p - c)^2) over the block, in double, in a fixed order.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    l2_partials_kernel(const scalar_t* p, const scalar_t* c, SampleBlocks blocks, double* partial,
                       const double* found_inf) {
  using T = opmath_t<scalar_t>;
  if (found_inf != nullptr && *found_inf != 0.0) return;
  int64_t begin, end;
  blocks.range(blockIdx.x, begin, end);
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) {
    const double d = static_cast<double>(static_cast<T>(p[i]) - (c ? static_cast<T>(c[i]) : T(0)));
    acc += d * d;
  }
  __shared__ double sums[kReduceThreads];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int width = kReduceThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) sums[threadIdx.x] += sums[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

// p = clamp(c + (p - c) * min(1, eps / ||p - c||), lo, hi); every block adds its
// sample's partial sums in order, so all blocks of a sample see the same norm.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    l2_scale_kernel(scalar_t* p, const scalar_t* c, const opmath_t<scalar_t>* radius,
                    SampleBlocks blocks, const double* partial, opmath_t<scalar_t> lo,
                    opmath_t<scalar_t> hi, const double* found_inf) {
  using T = opmath_t<scalar_t>;
  if (found_inf != nullptr && *found_inf != 0.0) return;
  const int64_t sample = blockIdx.x / blocks.blocks_per_sample;
  __shared__ T scale;
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int64_t k = 0; k < blocks.blocks_per_sample; ++k) {
      total += partial[sample * blocks.blocks_per_sample + k];
    }
    scale = project::l2_scale<T>(static_cast<T>(sqrt(total)), radius[sample]);
  }
  __syncthreads();
  const T s = scale;
  int64_t begin, end;
  blocks.range(blockIdx.x, begin, end);
  for (int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) {
    const T center = c ? static_cast<T>(c[i]) : T(0);
    p[i] = static_cast<scalar_t>(constrain_l2(static_cast<T>(p[i]), center, s, lo, hi));
  }
}

template <typename scalar_t>
void l2_project(const at::Tensor& param, const at::Tensor* center, const at::Tensor& radius,
                double lo, double hi, const double* found_inf, cudaStream_t stream) {
  using T = opmath_t<scalar_t>;
  if (param.numel() == 0) return;
  const int64_t batch = batch_of(param);
  SampleBlocks blocks{param.numel() / batch, 0};
  blocks.blocks_per_sample = (blocks.per_sample + kReduceBlock - 1) / kReduceBlock;
  const int64_t grid = batch * blocks.blocks_per_sample;
  TORCH_CHECK(grid <= INT32_MAX, "params too large for the L2 constraint kernel");
  at::Tensor partial = at::empty({grid}, param.options().dtype(at::kDouble));
  const scalar_t* c = center ? center->const_data_ptr<scalar_t>() : nullptr;
  l2_partials_kernel<scalar_t><<<grid, kReduceThreads, 0, stream>>>(
      param.const_data_ptr<scalar_t>(), c, blocks, partial.data_ptr<double>(), found_inf);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  l2_scale_kernel<scalar_t><<<grid, kReduceThreads, 0, stream>>>(
      param.data_ptr<scalar_t>(), c, radius.const_data_ptr<T>(), blocks,
      partial.const_data_ptr<double>(), static_cast<T>(lo), static_cast<T>(hi), found_inf);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ one call

// The device-side scalars of a call, with the float64 copies they point into kept alive.
struct CallScalars {
  DeviceScalars device{};
  at::Tensor lr, grad_scale, found_inf;
};

inline CallScalars device_scalars(TensorList params, double lr,
                           const std::optional<at::Tensor>& lr_tensor,
                           const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf, TensorList steps) {
  const at::Device device = params[0].device();
  check_scalar_tensor(lr_tensor, "lr_tensor", device);
  check_scalar_tensor(grad_scale, "grad_scale", device);
  check_scalar_tensor(found_inf, "found_inf", device);
  CallScalars s;
  // float64 copies on the device: one pointer type in the kernels, exact for float inputs
  auto as_double = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->reshape({1}).to(at::kDouble) : at::Tensor();
  };
  s.lr = as_double(lr_tensor);
  s.grad_scale = as_double(grad_scale);
  s.found_inf = as_double(found_inf);
  s.device.lr = s.lr.defined() ? s.lr.const_data_ptr<double>() : nullptr;
  s.device.lr_value = lr;
  s.device.grad_scale = s.grad_scale.defined() ? s.grad_scale.const_data_ptr<double>() : nullptr;
  s.device.found_inf = s.found_inf.defined() ? s.found_inf.const_data_ptr<double>() : nullptr;
  s.device.step_is_double = !steps.empty() && steps[0].scalar_type() == at::kDouble;
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
  Fused<T> fused{0, static_cast<T>(k.lo), static_cast<T>(k.hi)};
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
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      TORCH_CHECK(chunk <= INT32_MAX, "params[", i, "] is too large");
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

// Everything after the checks, shared by the four ops: steps, layouts, update, L2 ball.
template <typename Rule>
void run_call(TensorList params, const std::vector<std::pair<TensorList, bool>>& states,
              TensorList grads, TensorList steps, std::vector<bool> first, const Constraint& k,
              const typename Rule::Args& args, const CallScalars& scalars) {
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  advance_steps(steps, scalars.device.found_inf, stream);

  WorkingLists work(params, k.ball != Ball::kNone);
  std::array<size_t, kLists> index{};
  index[kGrad] = work.add(grads, false);
  for (size_t j = 0; j < 3; ++j) {
    index[kState + j] = j < states.size() ? work.add(states[j].first, states[j].second)
                                          : work.add(TensorList(), false);
  }
  index[kCenter] = work.add(k.centers, false);
  CallLists call;  // pointers taken after the last add(): the lists no longer move
  for (int j = 0; j < kLists; ++j) call.lists[j] = &work.get(index[j]);
  call.steps = steps;
  call.first = std::move(first);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "optim_step_cuda", [&] {
    launch_update<scalar_t, Rule>(call, k, args, scalars.device, stream);
    if (k.ball == Ball::kL2) {
      const auto& ps = *call.lists[kParam];
      for (size_t i = 0; i < ps.size(); ++i) {
        const at::Tensor* center = k.has_center() ? &(*call.lists[kCenter])[i] : nullptr;
        l2_project<scalar_t>(ps[i], center, k.radii[i], k.lo, k.hi, scalars.device.found_inf,
                             stream);
      }
    }
  });
  work.finish();
}

inline void check_on_cuda(TensorList params) {
  if (!params.empty()) {
    TORCH_CHECK(params[0].is_cuda(), "params must be on a CUDA device for the CUDA kernel, got ",
                params[0].device());
  }
}

}  // namespace cuda_apply
}  // namespace optim
}  // namespace advx
