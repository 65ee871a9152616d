#pragma once
// Shared CPU iteration for ops over [B, n] data laid out sample after sample.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/macros.h"

namespace advx {
namespace cpu {

// Elements per parallel task: large enough to amortize the OpenMP fork, small
// enough that 4M elements spread over every core.
constexpr int64_t kGrain = 1 << 15;

// Calls f(b, begin, end) for pieces [begin, end) of the flat index space that lie
// inside sample b (which spans [b*n, (b+1)*n)), splitting the work across threads.
template <typename F>
void for_each_sample_piece(int64_t batch, int64_t n, const F& f) {
  if (batch == 0 || n == 0) return;
  at::parallel_for(0, batch * n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t b = begin / n;
    while (begin < end) {
      const int64_t piece_end = std::min(end, (b + 1) * n);
      f(b, begin, piece_end);
      begin = piece_end;
      ++b;
    }
  });
}

// sum over i in [0, n) of value(i)^2, value(i) a double: 8 independent lanes (vectorizes,
// and is more accurate than the reference's float32 sum) added in a fixed order, so the
// bits depend on n only. Every CPU L2 norm is one of these.
template <typename F>
ADVX_CPU_CLONES double lane_sum_squares(int64_t n, const F& value) {
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double x = value(i + k);
      acc[k] += x * x;
    }
  }
  double tail = 0;
  for (; i < n; ++i) {
    const double x = value(i);
    tail += x * x;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

template <typename scalar_t>
double sum_squares(const scalar_t* v, int64_t n) {
  return lane_sum_squares(n, [v](int64_t i) { return static_cast<double>(v[i]); });
}

// Per-sample reduction that is deterministic whatever the thread count: each sample
// is cut into fixed blocks, blocks are reduced in parallel by `block_sum(b, begin,
// end)` (flat indices), and the block partials of a sample are added in order.
template <typename F>
std::vector<double> per_sample_sum(int64_t batch, int64_t n, const F& block_sum) {
  constexpr int64_t kBlock = 1 << 14;
  std::vector<double> out(static_cast<size_t>(batch), 0.0);
  if (batch == 0 || n == 0) return out;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(batch * blocks));
  const int64_t grain = std::max<int64_t>(1, kGrain / std::min(n, kBlock));
  at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks;
      const int64_t start = b * n + (t % blocks) * kBlock;
      const int64_t stop = std::min(start + kBlock, (b + 1) * n);
      partial[t] = block_sum(b, start, stop);
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0;
    for (int64_t j = 0; j < blocks; ++j) s += partial[b * blocks + j];
    out[b] = s;
  }
  return out;
}

}  // namespace cpu
}  // namespace advx
