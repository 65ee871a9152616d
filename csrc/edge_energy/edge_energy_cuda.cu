// CUDA kernels of edge_energy and edge_energy_backward over edge_energy_math.h.
//
// One launch per pyramid level. A block owns a kTile x kTile tile of one image and
// stages it with its halo in shared memory: the forward does the row pass, the column
// pass, the residual and its square-sum (plus the pooled pixels of the next level
// that the tile owns) in one kernel; the backward does R(R u) with a doubled halo and
// adds the 1/4 share of the coarser level's gradient. Energies are reduced without
// atomics: one double partial per block, then a fixed-order sum per sample, so the
// result is the same on every run.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "common/cuda_utils.cuh"
#include "common/macros.h"
#include "edge_energy/edge_energy_checks.h"
#include "edge_energy/edge_energy_levels.h"
#include "edge_energy/edge_energy_math.h"

namespace advx {
namespace {

constexpr int kTile = 32;  // even, so a tile owns whole 2x2 pooling windows
constexpr int kThreadsX = 32;
constexpr int kThreadsY = 8;
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kHalo = edge::kRadius;

// Stages rows [y0 - halo, y0 + kTile + halo) x cols [x0 - halo, x0 + kTile + halo) of an
// image into `tile` (row pitch kTile + 2 halo) in the math type, zero outside the image.
template <int kTileHalo, typename S, typename T>
__device__ void load_tile(const S* __restrict__ image, int64_t h, int64_t w, int64_t y0, int64_t x0,
                          T* tile, int tid) {
  constexpr int side = kTile + 2 * kTileHalo;
  for (int i = tid; i < side * side; i += kThreads) {
    const int64_t y = y0 - kTileHalo + i / side, x = x0 - kTileHalo + i % side;
    tile[i] = (y >= 0 && y < h && x >= 0 && x < w) ? static_cast<T>(image[y * w + x]) : T(0);
  }
}

// Row pass: out[r][c] = blur5(in[r][c .. c+4]) for `rows` rows of `cols` outputs.
template <typename T>
__device__ void blur_rows(const T* in, int in_pitch, T* out, int rows, int cols, int tid) {
  for (int i = tid; i < rows * cols; i += kThreads) {
    const int r = i / cols, c = i % cols;
    const T* p = in + r * in_pitch + c;
    out[r * cols + c] = edge::blur5(p[0], p[1], p[2], p[3], p[4]);
  }
}

// Column pass and residual at one pixel: center - blur5(column of row-blurred values).
template <typename T>
__device__ T residual_at(T center, const T* blurred, int pitch) {
  return edge::residual(center, edge::blur5(blurred[0], blurred[pitch], blurred[2 * pitch],
                                            blurred[3 * pitch], blurred[4 * pitch]));
}

struct Tiling {
  int64_t tiles_x, tiles_per_image;
};

Tiling tiling(int64_t h, int64_t w) {
  const int64_t tx = (w + kTile - 1) / kTile, ty = (h + kTile - 1) / kTile;
  return {tx, tx * ty};
}

// Tiles of the forward cover 2 * pooled_size rows/cols, so every pooled pixel (whose
// lower-right input may lie one past the image) has an owner.
Tiling forward_tiling(int64_t h, int64_t w) {
  return tiling(2 * edge::pooled_size(h), 2 * edge::pooled_size(w));
}

// Residual square-sum of a tile (one double partial per block) and, when `next` is
// given, the pooled pixels of the next level whose window starts in the tile.
template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
forward_level_kernel(const S* __restrict__ u, int64_t h, int64_t w, Tiling tiles,
                     T* __restrict__ next, double* __restrict__ partials, int64_t partial_pitch,
                     int64_t partial_offset) {
  constexpr int side = kTile + 2 * kHalo;
  __shared__ T tile[side * side];
  __shared__ T rows[side * kTile];
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const int64_t img = blockIdx.x / tiles.tiles_per_image;
  const int64_t t = blockIdx.x % tiles.tiles_per_image;
  const int64_t y0 = (t / tiles.tiles_x) * kTile, x0 = (t % tiles.tiles_x) * kTile;

  load_tile<kHalo>(u + img * h * w, h, w, y0, x0, tile, tid);
  __syncthreads();
  blur_rows(tile, side, rows, side, kTile, tid);
  __syncthreads();

  double acc = 0;
  for (int i = tid; i < kTile * kTile; i += kThreads) {
    const int r = i / kTile, c = i % kTile;
    if (y0 + r < h && x0 + c < w) {
      const T res = residual_at(tile[(r + kHalo) * side + c + kHalo], rows + r * kTile + c, kTile);
      acc += static_cast<double>(res) * static_cast<double>(res);
    }
  }
  if (next != nullptr) {
    const int64_t hn = edge::pooled_size(h), wn = edge::pooled_size(w);
    for (int i = tid; i < (kTile / 2) * (kTile / 2); i += kThreads) {
      const int64_t pi = y0 / 2 + i / (kTile / 2), pj = x0 / 2 + i % (kTile / 2);
      if (pi < hn && pj < wn) {
        // window rows 2pi-1, 2pi and cols 2pj-1, 2pj, at tile offset -(y0 - halo)
        const T* win = tile + (edge::pool_first_input(pi) - y0 + kHalo) * side +
                       (edge::pool_first_input(pj) - x0 + kHalo);
        next[(img * hn + pi) * wn + pj] = edge::pool4(win[0], win[1], win[side], win[side + 1]);
      }
    }
  }
  const double total = cuda::block_reduce_sum(acc, tid, kThreads);
  if (tid == 0) partials[img * partial_pitch + partial_offset + t] = total;
}

// out[b] = sum of the partials of sample b, in index order per thread then a fixed tree.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
sum_partials_kernel(const double* __restrict__ partials, int64_t per_sample, scalar_t* __restrict__ out) {
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const double* p = partials + static_cast<int64_t>(blockIdx.x) * per_sample;
  double acc = 0;
  for (int64_t i = tid; i < per_sample; i += kThreads) acc += p[i];
  const double total = cuda::block_reduce_sum(acc, tid, kThreads);
  if (tid == 0) out[blockIdx.x] = static_cast<scalar_t>(total);
}

// The next level of every image: next = avg_pool2d(u, 2, padding=1).
template <typename S, typename T>
__global__ void pool_kernel(const S* __restrict__ u, int64_t h, int64_t w, int64_t images,
                            T* __restrict__ next) {
  const int64_t hn = edge::pooled_size(h), wn = edge::pooled_size(w);
  const int64_t n = images * hn * wn;
  auto at = [&](const S* image, int64_t y, int64_t x) {
    return (y >= 0 && y < h && x >= 0 && x < w) ? static_cast<T>(image[y * w + x]) : T(0);
  };
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t img = k / (hn * wn), i = (k / wn) % hn, j = k % wn;
    const S* image = u + img * h * w;
    const int64_t y = edge::pool_first_input(i), x = edge::pool_first_input(j);
    next[k] = edge::pool4(at(image, y, x), at(image, y, x + 1), at(image, y + 1, x), at(image, y + 1, x + 1));
  }
}

// g = 2 ge R(R u) + unpool(parent) on a tile: R u is needed on the tile plus a 2-pixel
// ring (zero outside the image, where R u is not defined), so u is staged with a 4-pixel halo.
template <typename S, typename T, typename D>
__global__ void __launch_bounds__(kThreads)
backward_level_kernel(const S* __restrict__ u, int64_t h, int64_t w, Tiling tiles, int64_t channels,
                      const T* __restrict__ grad_energy, const T* __restrict__ parent,
                      D* __restrict__ grad) {
  constexpr int outer = kTile + 4 * kHalo;  // u with the doubled halo
  constexpr int inner = kTile + 2 * kHalo;  // R u with one halo
  __shared__ T tile[outer * outer];
  __shared__ T rows[outer * inner];          // row pass of u, then (reused) of R u
  __shared__ T res[inner * inner];
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const int64_t img = blockIdx.x / tiles.tiles_per_image;
  const int64_t t = blockIdx.x % tiles.tiles_per_image;
  const int64_t y0 = (t / tiles.tiles_x) * kTile, x0 = (t % tiles.tiles_x) * kTile;

  load_tile<2 * kHalo>(u + img * h * w, h, w, y0, x0, tile, tid);
  __syncthreads();
  blur_rows(tile, outer, rows, outer, inner, tid);
  __syncthreads();
  for (int i = tid; i < inner * inner; i += kThreads) {
    const int r = i / inner, c = i % inner;
    const int64_t y = y0 - kHalo + r, x = x0 - kHalo + c;
    res[i] = (y >= 0 && y < h && x >= 0 && x < w)
        ? residual_at(tile[(r + kHalo) * outer + c + kHalo], rows + r * inner + c, inner)
        : T(0);
  }
  __syncthreads();
  blur_rows(res, inner, rows, inner, kTile, tid);
  __syncthreads();

  const T two_ge = T(2) * grad_energy[img / channels];
  const int64_t wp = edge::pooled_size(w);
  for (int i = tid; i < kTile * kTile; i += kThreads) {
    const int r = i / kTile, c = i % kTile;
    const int64_t y = y0 + r, x = x0 + c;
    if (y < h && x < w) {
      const T rr = residual_at(res[(r + kHalo) * inner + c + kHalo], rows + r * kTile + c, kTile);
      const T from_parent = parent != nullptr
          ? parent[(img * edge::pooled_size(h) + edge::pool_parent(y)) * wp + edge::pool_parent(x)]
          : T(0);
      grad[(img * h + y) * w + x] = static_cast<D>(edge::pixel_grad(two_ge, rr, from_parent));
    }
  }
}

// ---------------------------------------------------------------- launchers

unsigned int blocks_for(int64_t images, const Tiling& t) {
  const int64_t n = images * t.tiles_per_image;
  TORCH_CHECK(n <= std::numeric_limits<int>::max(), "edge_energy: input too large for one launch (", n,
              " tiles)");
  return static_cast<unsigned int>(n);
}

template <typename T>
at::Tensor math_buffer(int64_t n, const at::Tensor& like) {
  return at::empty({n}, like.options().dtype(c10::CppTypeToScalarType<T>::value));
}

// Levels 1.. of every image, back to back, and the offset of each level in it.
template <typename T>
struct DevicePyramid {
  std::vector<edge::LevelShape> levels;
  std::vector<int64_t> offsets;
  at::Tensor storage;

  DevicePyramid(const at::Tensor& x, int64_t images) {
    levels = edge::energy_level_shapes(x.size(2), x.size(3));
    int64_t stored = 0;
    for (size_t l = 0; l < levels.size(); ++l) {
      offsets.push_back(stored);
      if (l > 0) stored += images * levels[l].size();
    }
    storage = math_buffer<T>(stored, x);
  }
  T* level(int64_t l) { return storage.data_ptr<T>() + offsets[l]; }
};

template <typename scalar_t>
void forward_cuda_typed(const at::Tensor& x, at::Tensor& out, cudaStream_t stream) {
  using T = opmath_t<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), images = batch * channels;
  DevicePyramid<T> pyramid(x, images);
  const int64_t depth = static_cast<int64_t>(pyramid.levels.size());
  std::vector<int64_t> partial_offsets;
  int64_t per_image = 0;
  for (const auto& lv : pyramid.levels) {
    partial_offsets.push_back(per_image);
    per_image += forward_tiling(lv.h, lv.w).tiles_per_image;
  }
  at::Tensor partials = at::empty({images * per_image}, x.options().dtype(at::kDouble));
  const dim3 block(kThreadsX, kThreadsY);
  for (int64_t l = 0; l < depth; ++l) {
    const auto& lv = pyramid.levels[l];
    const Tiling tiles = forward_tiling(lv.h, lv.w);
    T* next = l + 1 < depth ? pyramid.level(l + 1) : nullptr;
    if (l == 0) {
      forward_level_kernel<scalar_t, T><<<blocks_for(images, tiles), block, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), lv.h, lv.w, tiles, next, partials.data_ptr<double>(), per_image,
          partial_offsets[l]);
    } else {
      forward_level_kernel<T, T><<<blocks_for(images, tiles), block, 0, stream>>>(
          pyramid.level(l), lv.h, lv.w, tiles, next, partials.data_ptr<double>(), per_image,
          partial_offsets[l]);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  sum_partials_kernel<scalar_t><<<static_cast<unsigned int>(batch), block, 0, stream>>>(
      partials.data_ptr<double>(), channels * per_image, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void backward_cuda_typed(const at::Tensor& grad_energy, const at::Tensor& x, at::Tensor& grad,
                         cudaStream_t stream) {
  using T = opmath_t<scalar_t>;
  const int64_t channels = x.size(1), images = x.size(0) * channels;
  DevicePyramid<T> pyramid(x, images);
  const int64_t depth = static_cast<int64_t>(pyramid.levels.size());
  const at::Tensor ge = grad_energy.to(c10::CppTypeToScalarType<T>::value).contiguous();
  at::Tensor level_grads = math_buffer<T>(pyramid.storage.numel(), x);
  auto level_grad = [&](int64_t l) { return level_grads.data_ptr<T>() + pyramid.offsets[l]; };

  constexpr int kPoolThreads = 256;
  for (int64_t l = 0; l + 1 < depth; ++l) {
    const auto& lv = pyramid.levels[l];
    const int64_t n = images * pyramid.levels[l + 1].size();
    const auto grid = static_cast<unsigned int>(std::min<int64_t>((n + kPoolThreads - 1) / kPoolThreads, 1 << 16));
    if (l == 0) {
      pool_kernel<scalar_t, T><<<grid, kPoolThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(), lv.h, lv.w,
                                                                  images, pyramid.level(1));
    } else {
      pool_kernel<T, T><<<grid, kPoolThreads, 0, stream>>>(pyramid.level(l), lv.h, lv.w, images,
                                                           pyramid.level(l + 1));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  const dim3 block(kThreadsX, kThreadsY);
  for (int64_t l = depth - 1; l >= 0; --l) {
    const auto& lv = pyramid.levels[l];
    const Tiling tiles = tiling(lv.h, lv.w);
    const T* parent = l + 1 < depth ? level_grad(l + 1) : nullptr;
    if (l == 0) {
      backward_level_kernel<scalar_t, T, scalar_t><<<blocks_for(images, tiles), block, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), lv.h, lv.w, tiles, channels, ge.const_data_ptr<T>(), parent,
          grad.mutable_data_ptr<scalar_t>());
    } else {
      backward_level_kernel<T, T, T><<<blocks_for(images, tiles), block, 0, stream>>>(
          pyramid.level(l), lv.h, lv.w, tiles, channels, ge.const_data_ptr<T>(), parent, level_grad(l));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------- ops

at::Tensor edge_energy_cuda(const at::Tensor& x_in) {
  check_image_batch(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::zeros({x_in.size(0)}, x_in.options());
  if (x_in.numel() == 0 || !edge::has_level(x_in.size(2), x_in.size(3))) return out;
  const at::Tensor x = x_in.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "edge_energy", [&] {
    forward_cuda_typed<scalar_t>(x, out, stream);
  });
  return out;
}

at::Tensor edge_energy_backward_cuda(const at::Tensor& grad_energy, const at::Tensor& x_in) {
  check_image_batch(x_in);
  check_grad_energy(grad_energy, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  if (x_in.numel() == 0 || !edge::has_level(x_in.size(2), x_in.size(3))) {
    return at::zeros(x_in.sizes(), x_in.options());
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor grad = at::empty(x.sizes(), x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "edge_energy_backward", [&] {
    backward_cuda_typed<scalar_t>(grad_energy, x, grad, stream);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CUDA, m) {
  m.impl("edge_energy", &edge_energy_cuda);
  m.impl("edge_energy_backward", &edge_energy_backward_cuda);
}

}  // namespace advx
