// CPU kernel of sample_bits: rows in parallel, each row's key hashed once.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cpu_loops.h"
#include "random/sample_bits_args.h"
#include "random/sample_bits_math.h"

namespace advx {
namespace {

ADVX_CPU_CLONES void fill_row(int64_t* out, uint32_t row, int64_t count) {
  for (int64_t j = 0; j < count; ++j) out[j] = random::element_bits(row, j);
}

at::Tensor sample_bits_cpu(const at::Tensor& indices, const at::Tensor& draws, int64_t key, int64_t count) {
  random::check_args(indices, draws, key, count);
  at::Tensor out = random::empty_bits(indices, count);
  const at::Tensor idx = indices.contiguous(), drw = draws.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* dp = drw.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const uint32_t k = static_cast<uint32_t>(key);
  const int64_t rows = indices.size(0);
  const int64_t grain = std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(count, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      fill_row(op + b * count, random::row_hash(k, ip[b], dp[b]), count);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CPU, m) { m.impl("sample_bits", &sample_bits_cpu); }

}  // namespace advx
