#pragma once
// Small CUDA building blocks shared by the kernels: 16-byte vectors, fixed-order
// (deterministic) warp and block reductions, a per-sample cursor, launch sizing.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace advx {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1

// N elements of T loaded or stored as one 16-byte transaction.
template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVec {
  T val[N];
};

// Elements of T per 16-byte vector.
template <typename T>
constexpr int vec_size() {
  return 16 / sizeof(T) > 0 ? static_cast<int>(16 / sizeof(T)) : 1;
}

template <int N, typename T>
inline bool is_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// Multiprocessors of `device`, queried once per device.
inline int sm_count(int device) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];  // static storage: zero-initialized
  const bool cacheable = device >= 0 && device < kCached;
  if (cacheable) {
    const int n = cache[device].load(std::memory_order_relaxed);
    if (n > 0) return n;
  }
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (cacheable) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

// A grid size checked against the CUDA limit on gridDim.x.
inline unsigned int checked_grid(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks >= 1 && blocks <= kMaxGridX, what, ": grid of ", blocks,
              " blocks is outside the CUDA limit [1, 2^31 - 1]");
  return static_cast<unsigned int>(blocks);
}

// Blocks for a grid-stride loop that needs `blocks` blocks: enough to fill every SM
// of the current device a few times over, never more than the work needs.
inline unsigned int capped_grid(int64_t blocks, const char* what, int per_sm = 16) {
  const int64_t cap = static_cast<int64_t>(sm_count(c10::cuda::current_device())) * per_sm;
  return checked_grid(std::max<int64_t>(1, std::min<int64_t>(blocks, cap)), what);
}

// Blocks for a grid-stride loop over `work` items, one per thread.
inline int64_t grid_for(int64_t work, int threads = kThreads) {
  return capped_grid((work + threads - 1) / threads, "grid_for");
}

// Sum over a warp in a fixed order; valid in lane 0.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_reduce_sum(acc_t v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block in a fixed order (warp shuffles, then warp 0 over the warp sums):
// the same bits on every run, no atomics. `tid` is the linear thread index, `threads`
// the block size (a multiple of 32); every thread must call it. Valid in thread 0.
template <typename acc_t>
__device__ acc_t block_reduce_sum(acc_t v, int tid, int threads) {
  __shared__ acc_t warp_sums[32];
  const int lane = tid % 32, warp = tid / 32;
  v = warp_reduce_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = tid < threads / 32 ? warp_sums[tid] : acc_t(0);
  if (warp == 0) v = warp_reduce_sum(v);
  __syncthreads();  // warp_sums may be reused by a following call
  return v;
}

template <typename acc_t>
__device__ acc_t block_reduce_sum(acc_t v) {
  return block_reduce_sum(v, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
}

// Sum over the block handed to every thread (block_reduce_sum's is valid in thread 0
// only): for decisions every thread of a block must take alike. Every thread must call it.
template <typename acc_t>
__device__ acc_t block_sum_to_all(acc_t v) {
  __shared__ acc_t total;
  v = block_reduce_sum(v);
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  const acc_t out = total;
  __syncthreads();  // `total` free for the next call
  return out;
}

// Sum over aligned groups of G consecutive threads (1, a warp, or the whole block of
// kThreads); valid in the group's first thread.
template <int G, typename acc_t>
__device__ __forceinline__ acc_t group_reduce_sum(acc_t v) {
  static_assert(G == 1 || G == 32 || G == kThreads, "group: one thread, a warp or the block");
  if constexpr (G == 1) {
    return v;
  } else if constexpr (G == 32) {
    return warp_reduce_sum(v);
  } else {
    return block_reduce_sum(v);
  }
}

// Sample b and offset r of flat index i = b * n + r over [B, n] data, moved forward by a
// fixed stride (step_b samples and step_r < n elements) with one compare instead of a
// 64-bit division per step.
struct SampleCursor {
  int64_t b, r;
  __device__ __forceinline__ void init(int64_t i, int64_t n) {
    b = i / n;
    r = i - b * n;
  }
  __device__ __forceinline__ void advance(int64_t n, int64_t step_b, int64_t step_r) {
    b += step_b;
    r += step_r;
    if (r >= n) {
      r -= n;
      ++b;
    }
  }
};

}  // namespace cuda
}  // namespace advx
