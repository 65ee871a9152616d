#pragma once
// Per-element math is written once and compiled by both g++ (CPU loops) and nvcc
// (CUDA kernels): ADVX_HD marks those functions.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define ADVX_HD __host__ __device__ __forceinline__
#else
#define ADVX_HD inline
#endif

// CPU hot loops are cloned for AVX2 and dispatched at load time, like ATen's own
// CPU_CAPABILITY kernels: the baseline x86-64 build would otherwise run SSE2 only.
#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ADVX_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ADVX_CPU_CLONES
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace advx {

// Math type for a storage type: half types compute in float, like at::opmath_type.
template <typename T> struct OpMath { using type = T; };
template <> struct OpMath<c10::Half> { using type = float; };
template <> struct OpMath<c10::BFloat16> { using type = float; };
template <typename T> using opmath_t = typename OpMath<T>::type;

// NaN-propagating clamp with the same comparisons as at::clamp (v < lo, v > hi).
template <typename T>
ADVX_HD T clamp_value(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

template <typename T>
ADVX_HD T sign_value(T v) {
  return static_cast<T>((T(0) < v) - (v < T(0)));
}

}  // namespace advx
