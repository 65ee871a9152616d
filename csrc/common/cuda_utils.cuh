#pragma once
// Small CUDA building blocks shared by the kernels: 16-byte vectors, a fixed-order
// (deterministic) block reduction, launch sizing.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace advx {
namespace cuda {

constexpr int kThreads = 256;

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

// Blocks for a grid-stride loop over `work` items: enough to fill every SM a few
// times over, never more than the work needs.
inline int64_t grid_for(int64_t work, int threads = kThreads) {
  static int sms = [] {
    int dev = c10::cuda::current_device(), n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  const int64_t needed = (work + threads - 1) / threads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, static_cast<int64_t>(sms) * 16));
}

// Sum over the block in a fixed order (warp shuffles, then warp 0 over the warp
// sums): the same bits on every run, no atomics. Result valid in thread 0.
template <typename acc_t>
__device__ acc_t block_reduce_sum(acc_t v) {
  __shared__ acc_t warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? warp_sums[threadIdx.x] : acc_t(0);
  if (warp == 0) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return v;
}

}  // namespace cuda
}  // namespace advx
