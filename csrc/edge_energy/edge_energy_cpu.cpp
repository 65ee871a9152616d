// CPU kernels of edge_energy and edge_energy_backward over edge_energy_math.h.
//
// Work is cut into (image, level, row band) pieces. A piece streams its rows through a
// ring of five row-blurred rows, so the column pass, the residual and its use
// (square-sum and pooling forward, the second residual backward) read rows that are
// still in cache. Large batches give each thread whole images through every level;
// small ones split each level of each image into row bands (see whole_images).
// Sums are kept per row in double and added in row order, so results do not depend on
// the thread count or on how rows were split.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_loops.h"
#include "common/macros.h"
#include "edge_energy/edge_energy_checks.h"
#include "edge_energy/edge_energy_levels.h"
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

// Per-thread buffers, reused across images and levels: for rows of width w the
// zero-padded input row, the ring of five row-blurred rows, a zero row (rows above and
// below the image) and one output row; plus the backward's band of residual rows.
template <typename T>
struct RowScratch {
  std::vector<T> rows;
  std::vector<T> band;
  T* padded = nullptr;
  T* ring[5] = {};
  T* zeros = nullptr;
  T* out = nullptr;

  void prepare(int64_t w) {
    const size_t need = static_cast<size_t>((w + 4) + 7 * w);
    if (rows.size() < need) rows.resize(need);
    padded = rows.data();
    for (int k = 0; k < 5; ++k) ring[k] = padded + (w + 4) + k * w;
    zeros = ring[4] + w;
    std::fill(zeros, zeros + w, T(0));
    out = zeros + w;
  }
  T* band_rows(int64_t elements) {
    if (band.size() < static_cast<size_t>(elements)) band.resize(static_cast<size_t>(elements));
    return band.data();
  }
};

// Computes R u = u - G u for rows [y0, y1) of an h x w image and calls
// emit(y, residual_row_ptr). Row y of u is at rows + (y - row0) * w, and must be
// available for every y in [y0 - 2, y1 + 2) inside the image. out_row(y) says where
// the residual row goes. s must be prepared for width w.
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

// ---------------------------------------------------------------- pyramid

struct Level {
  int64_t h, w;
  int64_t offset;  // of image 0 in the pyramid storage (levels >= 1), images back to back
  int64_t size() const { return h * w; }
};

// The levels that carry energy; levels 1.. are stored for all images, level 0 is x.
template <typename scalar_t>
class Pyramid {
 public:
  using T = opmath_t<scalar_t>;

  Pyramid(const scalar_t* x, int64_t images, int64_t h, int64_t w) : x_(x) {
    for (const auto& shape : edge::energy_level_shapes(h, w)) {
      levels_.push_back({shape.h, shape.w, stored_});
      if (levels_.size() > 1) stored_ += images * shape.size();  // level 0 is x itself
    }
    storage_.reset(new T[static_cast<size_t>(stored_)]);  // uninitialized: every pixel is written
  }

  int64_t depth() const { return static_cast<int64_t>(levels_.size()); }
  const Level& level(int64_t l) const { return levels_[l]; }
  int64_t stored_elements() const { return stored_; }

  // f(image_ptr) for image img of level l: const scalar_t* at level 0, const T* above.
  template <typename F>
  void visit(int64_t l, int64_t img, const F& f) const {
    if (l == 0) {
      f(x_ + img * levels_[0].size());
    } else {
      f(static_cast<const T*>(storage_.get() + levels_[l].offset + img * levels_[l].size()));
    }
  }

  // Rows [i0, i1) of image img of level l + 1, pooled from level l.
  void pool(int64_t l, int64_t img, int64_t i0, int64_t i1) {
    const Level& lv = levels_[l];
    const Level& nx = levels_[l + 1];
    T* next = storage_.get() + nx.offset + img * nx.size();
    visit(l, img, [&](const auto* image) {
      using S = std::remove_const_t<std::remove_pointer_t<decltype(image)>>;
      std::vector<S> zeros(static_cast<size_t>(lv.w), S(0));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t top = edge::pool_first_input(i), bottom = top + 1;
        pool_row(top >= 0 ? image + top * lv.w : zeros.data(),
                 bottom < lv.h ? image + bottom * lv.w : zeros.data(), lv.w, next + i * nx.w);
      }
    });
  }

 private:
  const scalar_t* x_;
  std::vector<Level> levels_;
  int64_t stored_ = 0;
  std::unique_ptr<T[]> storage_;
};

// Pooled rows [i0, i1) of the next level that a band [y0, y1) of an h-row level owns:
// those whose lower input row 2i lies in the band, plus the last one at the bottom edge.
std::pair<int64_t, int64_t> pooled_rows_of_band(int64_t h, int64_t y0, int64_t y1) {
  const int64_t i0 = (y0 + 1) / 2;
  const int64_t i1 = y1 == h ? edge::pooled_size(h) : (y1 + 1) / 2;
  return {i0, i1};
}

// ---------------------------------------------------------------- scheduling

// Below this many pixels a pass runs on the calling thread (an OpenMP fork costs more).
constexpr int64_t kSerialPixels = 1 << 14;
// Bands are at least this many rows: each band re-blurs 4 halo rows.
constexpr int64_t kMinBandRows = 32;
// With at least one image per thread, a task takes whole images through every level:
// one fork-join for the whole op (each join waits for the slowest thread, which on a
// busy machine can be a scheduler time slice) and the image's pyramid stays in cache.
// With fewer images, each level is split into row bands so that every thread gets work.
bool whole_images(int64_t images) {
  return images >= at::get_num_threads();
}

// f(image, scratch) for every image, in parallel, one RowScratch per thread chunk.
template <typename T, typename F>
void for_each_image(int64_t images, int64_t pixels, const F& f) {
  const int64_t grain = images * pixels < kSerialPixels ? images : 1;
  at::parallel_for(0, images, grain, [&](int64_t begin, int64_t end) {
    RowScratch<T> scratch;
    for (int64_t img = begin; img < end; ++img) f(img, scratch);
  });
}

// f(image, y0, y1, scratch) for row bands of every image of an h x w level, in
// parallel, with one RowScratch (prepared for width w) per thread chunk.
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
    RowScratch<T> scratch;
    scratch.prepare(w);
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
  Pyramid<scalar_t> pyramid(x.const_data_ptr<scalar_t>(), images, x.size(2), x.size(3));
  const int64_t depth = pyramid.depth();
  std::vector<std::vector<double>> row_sums(static_cast<size_t>(depth));
  for (int64_t l = 0; l < depth; ++l) row_sums[l].resize(static_cast<size_t>(images * pyramid.level(l).h));

  // Residual square-sums of rows [y0, y1), and the pooled rows of the next level they own.
  auto band = [&](int64_t l, int64_t img, int64_t y0, int64_t y1, RowScratch<T>& s) {
    const Level& lv = pyramid.level(l);
    double* sums = row_sums[l].data() + img * lv.h;
    pyramid.visit(l, img, [&](const auto* image) {
      residual_rows(image, 0, lv.h, lv.w, y0, y1, s, [&](int64_t) { return s.out; },
                    [&](int64_t y, const T* r) { sums[y] = cpu::sum_squares(r, lv.w); });
    });
    if (l + 1 < depth) {
      const auto pooled = pooled_rows_of_band(lv.h, y0, y1);
      pyramid.pool(l, img, pooled.first, pooled.second);
    }
  };
  if (whole_images(images)) {
    for_each_image<T>(images, pyramid.level(0).size(), [&](int64_t img, RowScratch<T>& s) {
      for (int64_t l = 0; l < depth; ++l) {
        s.prepare(pyramid.level(l).w);
        band(l, img, 0, pyramid.level(l).h, s);
      }
    });
  } else {
    for (int64_t l = 0; l < depth; ++l) {
      const Level& lv = pyramid.level(l);
      for_each_band<T>(images, lv.h, lv.w, [&](int64_t img, int64_t y0, int64_t y1, RowScratch<T>& s) {
        band(l, img, y0, y1, s);
      });
    }
  }

  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  for (int64_t b = 0; b < batch; ++b) {
    double energy = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t img = b * channels + c;
      for (int64_t l = 0; l < depth; ++l) {
        const int64_t h = pyramid.level(l).h;
        const double* sums = row_sums[l].data() + img * h;
        for (int64_t y = 0; y < h; ++y) energy += sums[y];
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
  Pyramid<scalar_t> pyramid(x.const_data_ptr<scalar_t>(), images, x.size(2), x.size(3));
  const int64_t depth = pyramid.depth();
  scalar_t* grad0 = grad.mutable_data_ptr<scalar_t>();
  // Gradients of levels 1.., laid out like the pyramid storage.
  std::unique_ptr<T[]> level_grads(new T[static_cast<size_t>(pyramid.stored_elements())]);

  std::vector<T> two_ge(static_cast<size_t>(batch));
  const at::Tensor ge = grad_energy.to(at::kDouble).contiguous();
  for (int64_t b = 0; b < batch; ++b) two_ge[b] = static_cast<T>(2.0 * ge.const_data_ptr<double>()[b]);

  // g_l = 2 ge R(R u_l) + unpool(g_{l+1}) on rows [y0, y1): R u_l on those rows plus a
  // 2-row halo into the scratch band, then R of that on the band's rows.
  auto band = [&](int64_t l, int64_t img, int64_t y0, int64_t y1, RowScratch<T>& s) {
    const Level& lv = pyramid.level(l);
    const int64_t parent_w = edge::pooled_size(lv.w);
    const T* parent = l + 1 < depth
        ? level_grads.get() + pyramid.level(l + 1).offset + img * pyramid.level(l + 1).size()
        : nullptr;
    const T scale = two_ge[img / channels];
    const int64_t a = std::max<int64_t>(0, y0 - edge::kRadius);
    const int64_t b = std::min(lv.h, y1 + edge::kRadius);
    T* r = s.band_rows((b - a) * lv.w);
    pyramid.visit(l, img, [&](const auto* image) {
      residual_rows(image, 0, lv.h, lv.w, a, b, s, [&](int64_t y) { return r + (y - a) * lv.w; },
                    [](int64_t, const T*) {});
    });
    auto write = [&](auto* dst) {
      residual_rows(r, a, lv.h, lv.w, y0, y1, s, [&](int64_t) { return s.out; },
                    [&](int64_t y, const T* rr) {
                      const T* parent_row = parent ? parent + edge::pool_parent(y) * parent_w : nullptr;
                      grad_row(rr, parent_row, scale, lv.w, dst + y * lv.w);
                    });
    };
    if (l == 0) {
      write(grad0 + img * lv.size());
    } else {
      write(level_grads.get() + lv.offset + img * lv.size());
    }
  };

  if (whole_images(images)) {
    for_each_image<T>(images, pyramid.level(0).size(), [&](int64_t img, RowScratch<T>& s) {
      for (int64_t l = 0; l + 1 < depth; ++l) pyramid.pool(l, img, 0, pyramid.level(l + 1).h);
      for (int64_t l = depth - 1; l >= 0; --l) {
        s.prepare(pyramid.level(l).w);
        band(l, img, 0, pyramid.level(l).h, s);
      }
    });
  } else {
    for (int64_t l = 0; l + 1 < depth; ++l) {
      const Level& nx = pyramid.level(l + 1);
      for_each_band<T>(images, nx.h, nx.w, [&](int64_t img, int64_t i0, int64_t i1, RowScratch<T>&) {
        pyramid.pool(l, img, i0, i1);
      });
    }
    for (int64_t l = depth - 1; l >= 0; --l) {
      const Level& lv = pyramid.level(l);
      for_each_band<T>(images, lv.h, lv.w, [&](int64_t img, int64_t y0, int64_t y1, RowScratch<T>& s) {
        band(l, img, y0, y1, s);
      });
    }
  }
}

// ---------------------------------------------------------------- ops

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
  check_grad_energy(grad_energy, x_in);
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
