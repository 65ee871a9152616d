// CPU kernels of edge_energy and edge_energy_backward over edge_energy_math.h.
//
// One pyramid level at a time, all images of the batch in one parallel pass over
// (image, row band) tasks. A task streams its rows through a ring of five row-blurred
// rows, so the column pass, the residual and its use (square-sum, pooling, the
// backward's second residual) read rows that are still in cache. Sums are kept per
// row in double and added in row order, so the result does not depend on the
// thread count or on how rows were split into bands.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_loops.h"
#include "common/macros.h"
#include "edge_energy/edge_energy_math.h"

namespace advx {
namespace {

// ---------------------------------------------------------------- row loops

template <typename S, typename T>
ADVX_CPU_CLONES void load_padded_row(const S* __restrict__ src, int64_t w, T* __restrict__ padded) {
  padded[0] = padded[1] = T(0);
  for (int64_t x = 0; x < w; ++x) padded[x + 2] = static_cast<T>(src[x]);
  padded[w + 2] = padded[w + 3] = T(0);
}

template <typename T>
ADVX_CPU_CLONES void blur_row(const T* __restrict__ p, int64_t w, T* __restrict__ out) {
  for (int64_t x = 0; x < w; ++x) out[x] = edge::blur5(p[x], p[x + 1], p[x + 2], p[x + 3], p[x + 4]);
}

// out = src - (column pass over the five row-blurred rows around it).
template <typename S, typename T>
ADVX_CPU_CLONES void residual_row(const S* __restrict__ src, const T* __restrict__ b0,
                                  const T* __restrict__ b1, const T* __restrict__ b2,
                                  const T* __restrict__ b3, const T* __restrict__ b4, int64_t w,
                                  T* __restrict__ out) {
  for (int64_t x = 0; x < w; ++x) {
    out[x] = edge::residual(static_cast<T>(src[x]), edge::blur5(b0[x], b1[x], b2[x], b3[x], b4[x]));
  }
}

// One pooled row from input rows `top` (2i-1) and `bottom` (2i); a row outside the
// image is passed as a row of zeros.
template <typename S, typename T>
ADVX_CPU_CLONES void pool_row(const S* __restrict__ top, const S* __restrict__ bottom, int64_t w,
                              T* __restrict__ out) {
  out[0] = edge::pool4(T(0), static_cast<T>(top[0]), T(0), static_cast<T>(bottom[0]));
  const int64_t full = (w - 1) / 2;  // outputs 1..full have both columns inside
  for (int64_t j = 1; j <= full; ++j) {
    out[j] = edge::pool4(static_cast<T>(top[2 * j - 1]), static_cast<T>(top[2 * j]),
                         static_cast<T>(bottom[2 * j - 1]), static_cast<T>(bottom[2 * j]));
  }
  if (w % 2 == 0) {
    out[w / 2] = edge::pool4(static_cast<T>(top[w - 1]), T(0), static_cast<T>(bottom[w - 1]), T(0));
  }
}

// dst = gradient of one row of a level: from its residual-of-residual and the row of
// the pooled level's gradient it fed (nullptr at the coarsest level).
template <typename T, typename D>
ADVX_CPU_CLONES void grad_row(const T* __restrict__ rr, const T* __restrict__ parent, T two_ge,
                              int64_t w, D* __restrict__ dst) {
  if (parent == nullptr) {
    for (int64_t x = 0; x < w; ++x) dst[x] = static_cast<D>(edge::pixel_grad(two_ge, rr[x], T(0)));
    return;
  }
  dst[0] = static_cast<D>(edge::pixel_grad(two_ge, rr[0], parent[0]));
  // Inputs 2j-1 and 2j both fed pooled pixel j.
  const int64_t full = (w - 1) / 2;
  for (int64_t j = 1; j <= full; ++j) {
    const T p = parent[j];
    dst[2 * j - 1] = static_cast<D>(edge::pixel_grad(two_ge, rr[2 * j - 1], p));
    dst[2 * j] = static_cast<D>(edge::pixel_grad(two_ge, rr[2 * j], p));
  }
  if (w % 2 == 0) dst[w - 1] = static_cast<D>(edge::pixel_grad(two_ge, rr[w - 1], parent[w / 2]));
}

// ---------------------------------------------------------------- row streaming

// Per-thread buffers for rows of width w: the zero-padded input row, the ring of five
// row-blurred rows, a zero row (rows above/below the image) and one output row.
template <typename T>
struct RowScratch {
  std::vector<T> buf;
  T* padded;
  T* ring[5];
  T* zeros;
  T* out;
  explicit RowScratch(int64_t w) : buf(static_cast<size_t>((w + 4) + 7 * w), T(0)) {
    padded = buf.data();
    for (int k = 0; k < 5; ++k) ring[k] = padded + (w + 4) + k * w;
    zeros = ring[4] + w;
    out = zeros + w;
  }
};

// Computes R u = u - G u for rows [y0, y1) of an h x w image and calls
// emit(y, residual_row_ptr). Row y of u is at rows + (y - row0) * w, and must be
// available for every y in [y0 - 2, y1 + 2) inside the image. out_row(y) says where
// the residual row goes.
template <typename T, typename S, typename OutRow, typename Emit>
void residual_rows(const S* rows, int64_t row0, int64_t h, int64_t w, int64_t y0, int64_t y1,
                   RowScratch<T>& s, const OutRow& out_row, const Emit& emit) {
  auto row = [&](int64_t y) { return rows + (y - row0) * w; };
  auto ring = [&](int64_t y) { return s.ring[y % 5]; };
  auto blur_into_ring = [&](int64_t y) {
    load_padded_row(row(y), w, s.padded);
    blur_row(s.padded, w, ring(y));
  };
  for (int64_t y = std::max<int64_t>(0, y0 - edge::kRadius); y < std::min(h, y0 + edge::kRadius); ++y) {
    blur_into_ring(y);
  }
  for (int64_t y = y0; y < y1; ++y) {
    if (y + edge::kRadius < h) blur_into_ring(y + edge::kRadius);
    const T* b[5];
    for (int k = 0; k < 5; ++k) {
      const int64_t yy = y - edge::kRadius + k;
      b[k] = (yy >= 0 && yy < h) ? ring(yy) : s.zeros;
    }
    T* out = out_row(y);
    residual_row(row(y), b[0], b[1], b[2], b[3], b[4], w, out);
    emit(y, static_cast<const T*>(out));
  }
}

// ---------------------------------------------------------------- pyramid geometry

struct Level {
  int64_t h, w;
  int64_t offset;  // of image 0 in the pyramid buffer (levels >= 1), images back to back
  int64_t size() const { return h * w; }
};

std::vector<Level> energy_levels(int64_t h, int64_t w, int64_t images) {
  std::vector<Level> levels;
  int64_t offset = 0;
  while (edge::has_level(h, w)) {
    levels.push_back({h, w, offset});
    if (levels.size() > 1) offset += images * h * w;  // level 0 is the input itself
    h = edge::pooled_size(h);
    w = edge::pooled_size(w);
  }
  return levels;
}

// Elements of pyramid storage (levels 1..L-1).
int64_t pyramid_elements(const std::vector<Level>& levels, int64_t images) {
  int64_t n = 0;
  for (size_t l = 1; l < levels.size(); ++l) n += images * levels[l].size();
  return n;
}

// Pooled rows [i0, i1) of the next level that a band [y0, y1) of an h-row level owns:
// those whose lower input row 2i lies in the band, plus the last one at the bottom edge.
std::pair<int64_t, int64_t> pooled_rows_of_band(int64_t h, int64_t y0, int64_t y1) {
  const int64_t i0 = (y0 + 1) / 2;
  const int64_t i1 = y1 == h ? edge::pooled_size(h) : (y1 + 1) / 2;
  return {i0, i1};
}

// Below this many pixels a level runs on the calling thread (an OpenMP fork costs more).
constexpr int64_t kSerialPixels = 1 << 14;
// Bands are at least this many rows: each band re-blurs 4 halo rows.
constexpr int64_t kMinBandRows = 32;

// Calls f(image, y0, y1, scratch) for row bands of every image of an h x w level, in
// parallel, with one RowScratch per thread chunk.
template <typename T, typename F>
void for_each_band(int64_t images, int64_t h, int64_t w, const F& f) {
  const int64_t threads = at::get_num_threads();
  const int64_t wanted = (4 * threads + images - 1) / images;
  const int64_t most = std::max<int64_t>(1, h / kMinBandRows);
  const int64_t bands0 = std::min(std::max<int64_t>(1, wanted), most);
  const int64_t rows = (h + bands0 - 1) / bands0;
  const int64_t bands = (h + rows - 1) / rows;
  const int64_t tasks = images * bands;
  const int64_t grain = images * h * w < kSerialPixels ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    RowScratch<T> scratch(w);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t image = t / bands, y0 = (t % bands) * rows;
      f(image, y0, std::min(h, y0 + rows), scratch);
    }
  });
}

// ---------------------------------------------------------------- forward

template <typename scalar_t>
void edge_energy_forward_typed(const at::Tensor& x, at::Tensor& out) {
  using T = opmath_t<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), images = batch * channels;
  const auto levels = energy_levels(x.size(2), x.size(3), images);
  const int64_t depth = static_cast<int64_t>(levels.size());
  std::vector<T> pyramid(static_cast<size_t>(pyramid_elements(levels, images)));
  std::vector<std::vector<double>> row_sums(levels.size());

  for (int64_t l = 0; l < depth; ++l) {
    const Level lv = levels[l];
    row_sums[l].assign(static_cast<size_t>(images * lv.h), 0.0);
    double* sums = row_sums[l].data();
    T* next = l + 1 < depth ? pyramid.data() + levels[l + 1].offset : nullptr;
    const int64_t next_w = edge::pooled_size(lv.w), next_size = edge::pooled_size(lv.h) * next_w;
    auto run = [&](const auto* src) {
      using S = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
      for_each_band<T>(images, lv.h, lv.w, [&](int64_t img, int64_t y0, int64_t y1, RowScratch<T>& s) {
        const S* plane = src + img * lv.size();
        double* plane_sums = sums + img * lv.h;
        residual_rows(plane, 0, lv.h, lv.w, y0, y1, s, [&](int64_t) { return s.out; },
                      [&](int64_t y, const T* r) { plane_sums[y] = cpu::sum_squares(r, lv.w); });
        if (next == nullptr) return;
        std::vector<S> zeros(static_cast<size_t>(lv.w), S(0));
        const auto pooled = pooled_rows_of_band(lv.h, y0, y1);
        for (int64_t i = pooled.first; i < pooled.second; ++i) {
          const int64_t top = edge::pool_first_input(i), bottom = top + 1;
          pool_row(top >= 0 ? plane + top * lv.w : zeros.data(),
                   bottom < lv.h ? plane + bottom * lv.w : zeros.data(), lv.w,
                   next + img * next_size + i * next_w);
        }
      });
    };
    if (l == 0) {
      run(x.const_data_ptr<scalar_t>());
    } else {
      run(static_cast<const T*>(pyramid.data() + lv.offset));
    }
  }

  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  for (int64_t b = 0; b < batch; ++b) {
    double energy = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t img = b * channels + c;
      for (int64_t l = 0; l < depth; ++l) {
        const double* sums = row_sums[l].data() + img * levels[l].h;
        for (int64_t y = 0; y < levels[l].h; ++y) energy += sums[y];
      }
    }
    o[b] = static_cast<scalar_t>(energy);
  }
}

// ---------------------------------------------------------------- backward

template <typename scalar_t>
void edge_energy_backward_typed(const at::Tensor& grad_energy, const at::Tensor& x, at::Tensor& grad) {
  using T = opmath_t<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1), images = batch * channels;
  const auto levels = energy_levels(x.size(2), x.size(3), images);
  const int64_t depth = static_cast<int64_t>(levels.size());
  const scalar_t* x0 = x.const_data_ptr<scalar_t>();
  scalar_t* g0 = grad.mutable_data_ptr<scalar_t>();

  std::vector<T> two_ge(static_cast<size_t>(batch));
  const at::Tensor ge = grad_energy.to(at::kDouble).contiguous();
  for (int64_t b = 0; b < batch; ++b) two_ge[b] = static_cast<T>(2.0 * ge.const_data_ptr<double>()[b]);

  // The pyramid u_1..u_{L-1} again (nothing was saved), then level gradients g_1..g_{L-1}.
  const int64_t stored = pyramid_elements(levels, images);
  std::vector<T> pyramid(static_cast<size_t>(stored)), level_grads(static_cast<size_t>(stored));
  for (int64_t l = 0; l + 1 < depth; ++l) {
    const Level lv = levels[l], nx = levels[l + 1];
    T* next = pyramid.data() + nx.offset;
    auto run = [&](const auto* src) {
      using S = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
      for_each_band<T>(images, nx.h, nx.w, [&](int64_t img, int64_t i0, int64_t i1, RowScratch<T>&) {
        const S* plane = src + img * lv.size();
        std::vector<S> zeros(static_cast<size_t>(lv.w), S(0));
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t top = edge::pool_first_input(i), bottom = top + 1;
          pool_row(top >= 0 ? plane + top * lv.w : zeros.data(),
                   bottom < lv.h ? plane + bottom * lv.w : zeros.data(), lv.w,
                   next + img * nx.size() + i * nx.w);
        }
      });
    };
    if (l == 0) {
      run(x0);
    } else {
      run(static_cast<const T*>(pyramid.data() + lv.offset));
    }
  }

  // Coarse to fine: g_l = 2 ge R(R u_l) + unpool(g_{l+1}). A band computes R u_l on its
  // rows plus a 2-row halo (into a band-local buffer), then R of that on its rows.
  for (int64_t l = depth - 1; l >= 0; --l) {
    const Level lv = levels[l];
    const int64_t parent_w = edge::pooled_size(lv.w), parent_size = edge::pooled_size(lv.h) * parent_w;
    const T* parent = l + 1 < depth ? level_grads.data() + levels[l + 1].offset : nullptr;
    auto run = [&](const auto* src, auto* dst) {
      using S = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
      for_each_band<T>(images, lv.h, lv.w, [&](int64_t img, int64_t y0, int64_t y1, RowScratch<T>& s) {
        const S* plane = src + img * lv.size();
        auto* dst_plane = dst + img * lv.size();
        const T* parent_plane = parent ? parent + img * parent_size : nullptr;
        const T scale = two_ge[img / channels];
        const int64_t a = std::max<int64_t>(0, y0 - edge::kRadius);
        const int64_t b = std::min(lv.h, y1 + edge::kRadius);
        std::vector<T> r(static_cast<size_t>((b - a) * lv.w));
        residual_rows(plane, 0, lv.h, lv.w, a, b, s, [&](int64_t y) { return r.data() + (y - a) * lv.w; },
                      [](int64_t, const T*) {});
        residual_rows(r.data(), a, lv.h, lv.w, y0, y1, s, [&](int64_t) { return s.out; },
                      [&](int64_t y, const T* rr) {
                        const T* parent_row =
                            parent_plane ? parent_plane + edge::pool_parent(y) * parent_w : nullptr;
                        grad_row(rr, parent_row, scale, lv.w, dst_plane + y * lv.w);
                      });
      });
    };
    if (l == 0) {
      run(x0, g0);
    } else {
      run(static_cast<const T*>(pyramid.data() + lv.offset), level_grads.data() + lv.offset);
    }
  }
}

// ---------------------------------------------------------------- ops

void check_image_batch(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "x must have shape [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be a floating point tensor, got ",
              x.scalar_type());
}

at::Tensor edge_energy_cpu(const at::Tensor& x_in) {
  check_image_batch(x_in);
  at::Tensor out = at::zeros({x_in.size(0)}, x_in.options());
  if (x_in.numel() == 0 || !edge::has_level(x_in.size(2), x_in.size(3))) return out;
  const at::Tensor x = x_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "edge_energy", [&] {
    edge_energy_forward_typed<scalar_t>(x, out);
  });
  return out;
}

at::Tensor edge_energy_backward_cpu(const at::Tensor& grad_energy, const at::Tensor& x_in) {
  check_image_batch(x_in);
  TORCH_CHECK(grad_energy.dim() == 1 && grad_energy.size(0) == x_in.size(0),
              "grad_energy must have shape [", x_in.size(0), "] (one per sample), got ",
              grad_energy.sizes());
  TORCH_CHECK(grad_energy.device() == x_in.device(), "grad_energy is on ", grad_energy.device(),
              " but x is on ", x_in.device());
  TORCH_CHECK(at::isFloatingType(grad_energy.scalar_type()),
              "grad_energy must be a floating point tensor, got ", grad_energy.scalar_type());
  if (x_in.numel() == 0 || !edge::has_level(x_in.size(2), x_in.size(3))) {
    return at::zeros(x_in.sizes(), x_in.options());
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor grad = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "edge_energy_backward", [&] {
    edge_energy_backward_typed<scalar_t>(grad_energy, x, grad);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(advx, CPU, m) {
  m.impl("edge_energy", &edge_energy_cpu);
  m.impl("edge_energy_backward", &edge_energy_backward_cpu);
}

}  // namespace advx
