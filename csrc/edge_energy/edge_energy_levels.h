#pragma once
// Host-side pyramid geometry of edge_energy, shared by the CPU and CUDA launchers.
#include <cstdint>
#include <vector>

#include "edge_energy/edge_energy_math.h"

namespace advx {
namespace edge {

struct LevelShape {
  int64_t h, w;
  int64_t size() const { return h * w; }
};

// The levels that carry energy, finest first; empty when min(h, w) <= 5 from the start.
inline std::vector<LevelShape> energy_level_shapes(int64_t h, int64_t w) {
  std::vector<LevelShape> levels;
  while (has_level(h, w)) {
    levels.push_back({h, w});
    h = pooled_size(h);
    w = pooled_size(w);
  }
  return levels;
}

}  // namespace edge
}  // namespace advx
