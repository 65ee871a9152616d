#pragma once
// The counter-based hash behind advx._rng's per-sample random numbers, written once for
// the CPU loop and the CUDA kernel: Wellons' "lowbias32" on uint32 (wrapping products),
// the same bits as advx.reference.sample_bits computes with int64 tensors.
#include <cstdint>

#include "common/macros.h"

namespace advx {
namespace random {

ADVX_HD uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Everything of element (b, j) that does not depend on j: the row's key from the
// generator's key, the row's draw and the sample's 64-bit dataset index.
ADVX_HD uint32_t row_hash(uint32_t key, int64_t index, int64_t draw) {
  const uint64_t i = static_cast<uint64_t>(index);
  const uint32_t drawn = mix(key ^ mix(static_cast<uint32_t>(static_cast<uint64_t>(draw))));
  return mix(mix(static_cast<uint32_t>(i) ^ drawn) ^ static_cast<uint32_t>(i >> 32));
}

ADVX_HD uint32_t element_bits(uint32_t row, int64_t position) {
  return mix(row ^ mix(static_cast<uint32_t>(static_cast<uint64_t>(position)) + 0x9E3779B9u));
}

}  // namespace random
}  // namespace advx
