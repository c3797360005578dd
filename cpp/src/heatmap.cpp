// The heatmap math of textcam.runtime.heatmap: Pillow's float BILINEAR resize (double sums in
// tap order, float32 after each pass), the map back onto the original image, and the graph's
// map finish (ReLU, min-max, half-pixel bilinear resize, ReLU, min-max).
#include "heatmap.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace textcam::detail {

namespace {

constexpr double kNormalizeEps = 1e-7;

// One float pass along columns: [rows, in_w] -> [rows, out_w].
void taps_horizontal(const float* in, int rows, int in_w, float* out, int out_w, const FilterWeights& fw) {
  const auto taps = static_cast<size_t>(fw.taps);
  for (int y = 0; y < rows; ++y) {
    const float* row = in + static_cast<size_t>(y) * static_cast<size_t>(in_w);
    float* dst = out + static_cast<size_t>(y) * static_cast<size_t>(out_w);
    for (int x = 0; x < out_w; ++x) {
      const int start = fw.starts[static_cast<size_t>(x)];
      const double* w = fw.weights.data() + static_cast<size_t>(x) * taps;
      double total = 0.0;
      for (size_t t = 0; t < taps; ++t) {
        const int index = std::min(start + static_cast<int>(t), in_w - 1);  // past the edge: weight 0
        total += static_cast<double>(row[index]) * w[t];
      }
      dst[x] = static_cast<float>(total);
    }
  }
}

// One float pass along rows: [in_h, cols] -> [out_h, cols].
void taps_vertical(const float* in, int in_h, int cols, float* out, int out_h, const FilterWeights& fw) {
  const auto taps = static_cast<size_t>(fw.taps);
  const auto width = static_cast<size_t>(cols);
  std::vector<double> total(width);
  for (int y = 0; y < out_h; ++y) {
    const int start = fw.starts[static_cast<size_t>(y)];
    const double* w = fw.weights.data() + static_cast<size_t>(y) * taps;
    std::fill(total.begin(), total.end(), 0.0);
    for (size_t t = 0; t < taps; ++t) {
      const int index = std::min(start + static_cast<int>(t), in_h - 1);
      const float* row = in + static_cast<size_t>(index) * width;
      const double weight = w[t];
      for (size_t x = 0; x < width; ++x) total[x] += static_cast<double>(row[x]) * weight;
    }
    float* dst = out + static_cast<size_t>(y) * width;
    for (size_t x = 0; x < width; ++x) dst[x] = static_cast<float>(total[x]);
  }
}

// Writes the resized map into `out` with row stride `stride` (a window of a larger map).
void resize_into(const float* map, int in_h, int in_w, int height, int width, float* out, size_t stride) {
  const size_t row_bytes = static_cast<size_t>(width);
  auto store = [&](const std::vector<float>& values) {
    for (int y = 0; y < height; ++y) {
      std::copy_n(values.data() + static_cast<size_t>(y) * row_bytes, row_bytes, out + static_cast<size_t>(y) * stride);
    }
  };
  if (in_h == height && in_w == width) {
    for (int y = 0; y < height; ++y) {
      std::copy_n(map + static_cast<size_t>(y) * static_cast<size_t>(in_w), row_bytes,
                  out + static_cast<size_t>(y) * stride);
    }
    return;
  }
  const bool need_vertical = height != in_h;
  const bool need_horizontal = width != in_w;
  std::vector<float> first, second;
  if (need_vertical && vertical_first(in_w, in_h, width, height)) {
    first.resize(static_cast<size_t>(height) * static_cast<size_t>(in_w));
    taps_vertical(map, in_h, in_w, first.data(), height, filter_weights(in_h, 0.0, in_h, height));
    if (!need_horizontal) return store(first);
    second.resize(static_cast<size_t>(height) * row_bytes);
    taps_horizontal(first.data(), height, in_w, second.data(), width, filter_weights(in_w, 0.0, in_w, width));
    return store(second);
  }
  const float* source = map;
  if (need_horizontal) {
    first.resize(static_cast<size_t>(in_h) * row_bytes);
    taps_horizontal(map, in_h, in_w, first.data(), width, filter_weights(in_w, 0.0, in_w, width));
    source = first.data();
  }
  if (!need_vertical) {
    return store(first);
  }
  second.resize(static_cast<size_t>(height) * row_bytes);
  taps_vertical(source, in_h, width, second.data(), height, filter_weights(in_h, 0.0, in_h, height));
  store(second);
}

// The fast path for finite maps. A tap whose weight is exactly 0 adds a product of +-0 to a sum
// that starts at +0 and so is never -0: the sum is unchanged, and such taps (those past the edge
// among them) are dropped from the ends of each output's span. Each output still sums its taps in
// order in double and is stored as float32 after each pass, as taps_horizontal/taps_vertical.
struct Taps {
  size_t taps = 0;
  std::vector<int> starts, counts;
  std::vector<double> weights;  // [out, taps], the first counts[i] used
};

Taps trimmed_taps(int in_size, int out_size) {
  const FilterWeights fw = filter_weights(in_size, 0.0, in_size, out_size);
  Taps result;
  result.taps = static_cast<size_t>(fw.taps);
  result.starts.resize(static_cast<size_t>(out_size));
  result.counts.resize(static_cast<size_t>(out_size));
  result.weights.assign(fw.weights.size(), 0.0);
  for (size_t i = 0; i < static_cast<size_t>(out_size); ++i) {
    const int start = fw.starts[i];
    const int n = std::max(0, std::min(fw.taps, in_size - start));
    const double* w = fw.weights.data() + i * result.taps;
    int first = 0, last = n - 1;
    while (first < n && w[first] == 0.0) ++first;
    while (last >= first && w[last] == 0.0) --last;
    const int count = last < first ? 0 : last - first + 1;
    result.starts[i] = count == 0 ? 0 : start + first;
    result.counts[i] = count;
    std::copy_n(w + first, count, result.weights.data() + i * result.taps);
  }
  return result;
}

float clamp_unit(float v) { return v < 0.0F ? 0.0F : (v > 1.0F ? 1.0F : v); }  // NaN stays, as np.clip

void row_horizontal(const float* src, float* dst, const Taps& taps, bool clamp) {
  const size_t out_w = taps.starts.size();
  for (size_t x = 0; x < out_w; ++x) {
    const float* p = src + taps.starts[x];
    const double* w = taps.weights.data() + x * taps.taps;
    const int n = taps.counts[x];
    double total = 0.0;
    for (int t = 0; t < n; ++t) total += static_cast<double>(p[t]) * w[t];
    const auto v = static_cast<float>(total);
    dst[x] = clamp ? clamp_unit(v) : v;
  }
}

template <bool kClamp>
void row_vertical_impl(const float* const* rows, const double* w, int n, size_t width, float* dst) {
  auto put = [&](size_t x, double total) {
    const auto v = static_cast<float>(total);
    dst[x] = kClamp ? clamp_unit(v) : v;
  };
  if (n == 1) {
    const float* a = rows[0];
    const double wa = w[0];
    for (size_t x = 0; x < width; ++x) {
      double total = 0.0;
      total += static_cast<double>(a[x]) * wa;
      put(x, total);
    }
  } else if (n == 2) {
    const float *a = rows[0], *b = rows[1];
    const double wa = w[0], wb = w[1];
    for (size_t x = 0; x < width; ++x) {
      double total = 0.0;
      total += static_cast<double>(a[x]) * wa;
      total += static_cast<double>(b[x]) * wb;
      put(x, total);
    }
  } else {
    constexpr size_t kChunk = 128;
    double total[kChunk];
    for (size_t x0 = 0; x0 < width; x0 += kChunk) {
      const size_t m = std::min(kChunk, width - x0);
      std::fill_n(total, m, 0.0);
      for (int t = 0; t < n; ++t) {
        const float* row = rows[t] + x0;
        const double weight = w[t];
        for (size_t j = 0; j < m; ++j) total[j] += static_cast<double>(row[j]) * weight;
      }
      for (size_t j = 0; j < m; ++j) put(x0 + j, total[j]);
    }
  }
}

void row_vertical(const float* const* rows, const double* w, int n, size_t width, float* dst, bool clamp) {
  if (clamp) {
    row_vertical_impl<true>(rows, w, n, width, dst);
  } else {
    row_vertical_impl<false>(rows, w, n, width, dst);
  }
}

bool all_finite(const float* map, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits = 0;
    std::memcpy(&bits, map + i, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7F800000U) == 0x7F800000U);
  }
  return bad == 0;
}

// resize_into for a finite map, row by row, optionally clamped to [0, 1] as it is stored.
void resize_finite(const float* map, int in_h, int in_w, int height, int width, float* out, size_t stride, bool clamp) {
  const auto w_in = static_cast<size_t>(in_w), w_out = static_cast<size_t>(width);
  auto out_row = [&](int y) { return out + static_cast<size_t>(y) * stride; };
  auto in_row = [&](int y) { return map + static_cast<size_t>(y) * w_in; };
  if (in_h == height && in_w == width) {
    for (int y = 0; y < height; ++y) {
      const float* src = in_row(y);
      float* dst = out_row(y);
      for (size_t x = 0; x < w_out; ++x) dst[x] = clamp ? clamp_unit(src[x]) : src[x];
    }
    return;
  }
  const bool need_vertical = height != in_h;
  const bool need_horizontal = width != in_w;
  if (!need_vertical) {
    const Taps h = trimmed_taps(in_w, width);
    for (int y = 0; y < height; ++y) row_horizontal(in_row(y), out_row(y), h, clamp);
    return;
  }
  const Taps v = trimmed_taps(in_h, height);
  std::vector<const float*> rows(v.taps);
  if (!need_horizontal || vertical_first(in_w, in_h, width, height)) {
    const Taps h = need_horizontal ? trimmed_taps(in_w, width) : Taps{};
    std::vector<float> tall(need_horizontal ? w_in : 0);
    for (int y = 0; y < height; ++y) {
      const auto i = static_cast<size_t>(y);
      for (int t = 0; t < v.counts[i]; ++t) rows[static_cast<size_t>(t)] = in_row(v.starts[i] + t);
      const double* w = v.weights.data() + i * v.taps;
      if (!need_horizontal) {
        row_vertical(rows.data(), w, v.counts[i], w_in, out_row(y), clamp);
      } else {
        row_vertical(rows.data(), w, v.counts[i], w_in, tall.data(), false);
        row_horizontal(tall.data(), out_row(y), h, clamp);
      }
    }
    return;
  }
  // horizontal first: the horizontal rows are made as the vertical pass first needs them, kept in
  // a ring of v.taps rows (an output reads fewer than v.taps consecutive rows, in rising order)
  const Taps h = trimmed_taps(in_w, width);
  std::vector<float> ring(v.taps * w_out);
  int next = 0;
  for (int y = 0; y < height; ++y) {
    const auto i = static_cast<size_t>(y);
    const int start = v.starts[i], n = v.counts[i];
    for (int r = std::max(next, start); r < start + n; ++r) {
      row_horizontal(in_row(r), ring.data() + static_cast<size_t>(r) % v.taps * w_out, h, false);
    }
    next = std::max(next, start + n);
    for (int t = 0; t < n; ++t) {
      rows[static_cast<size_t>(t)] = ring.data() + static_cast<size_t>(start + t) % v.taps * w_out;
    }
    row_vertical(rows.data(), v.weights.data() + i * v.taps, n, w_out, out_row(y), clamp);
  }
}

// heatmap.linear_resize_matrix, kept sparse: per output the two source indices and weights.
struct LinearResize {
  std::vector<int> left, right;
  std::vector<double> w_left, w_right;
};

LinearResize linear_resize(int in_size, int out_size) {
  LinearResize r;
  const auto n = static_cast<size_t>(out_size);
  r.left.resize(n);
  r.right.resize(n);
  r.w_left.resize(n);
  r.w_right.resize(n);
  const double ratio = static_cast<double>(in_size) / static_cast<double>(out_size);
  for (int i = 0; i < out_size; ++i) {
    const double src = (i + 0.5) * ratio - 0.5;
    const double floor_src = std::floor(src);
    double frac = src - floor_src;
    int left = static_cast<int>(floor_src);
    const bool low = left < 0, high = left >= in_size - 1;
    if (low) left = 0;
    if (high) left = in_size - 1;
    if (low || high) frac = 0.0;
    const auto k = static_cast<size_t>(i);
    r.left[k] = left;
    r.right[k] = std::min(left + 1, in_size - 1);
    r.w_left[k] = 1.0 - frac;
    r.w_right[k] = frac;
  }
  return r;
}

// ReLU then (x - min) / (eps + max(x - min)), in place.
void relu_normalize(std::vector<double>& x) {
  if (x.empty()) return;
  for (double& v : x) v = std::max(v, 0.0);
  const double low = *std::min_element(x.begin(), x.end());
  double top = 0.0;
  for (double& v : x) {
    v -= low;
    top = std::max(top, v);
  }
  const double denominator = kNormalizeEps + top;
  for (double& v : x) v /= denominator;
}

}  // namespace

std::vector<float> resize_map(const float* map, int in_h, int in_w, int height, int width) {
  std::vector<float> out(static_cast<size_t>(height) * static_cast<size_t>(width));
  if (all_finite(map, static_cast<size_t>(in_h) * static_cast<size_t>(in_w))) {
    resize_finite(map, in_h, in_w, height, width, out.data(), static_cast<size_t>(width), false);
    return out;
  }
  resize_into(map, in_h, in_w, height, width, out.data(), static_cast<size_t>(width));
  return out;
}

std::vector<float> map_to_original(const float* cam, int H, int W, const Geometry& geometry) {
  const int width = geometry.width, height = geometry.height;
  const auto& box = geometry.box;
  const bool finite = all_finite(cam, static_cast<size_t>(H) * static_cast<size_t>(W));
  std::vector<float> full(static_cast<size_t>(width) * static_cast<size_t>(height), 0.0F);
  if (box[0] == 0.0 && box[1] == 0.0 && box[2] == static_cast<double>(width) && box[3] == static_cast<double>(height)) {
    if (finite) {
      resize_finite(cam, H, W, height, width, full.data(), static_cast<size_t>(width), true);
      return full;
    }
    resize_into(cam, H, W, height, width, full.data(), static_cast<size_t>(width));
  } else {
    // centre crop: the map covers the box (edges rounded half up, at least one pixel), zero outside
    const int x0 = std::min(static_cast<int>(std::floor(box[0] + 0.5)), width - 1);
    const int y0 = std::min(static_cast<int>(std::floor(box[1] + 0.5)), height - 1);
    const int x1 = std::min(std::max(static_cast<int>(std::floor(box[2] + 0.5)), x0 + 1), width);
    const int y1 = std::min(std::max(static_cast<int>(std::floor(box[3] + 0.5)), y0 + 1), height);
    float* window = full.data() + static_cast<size_t>(y0) * static_cast<size_t>(width) + static_cast<size_t>(x0);
    if (finite) {
      resize_finite(cam, H, W, y1 - y0, x1 - x0, window, static_cast<size_t>(width), true);
      return full;
    }
    resize_into(cam, H, W, y1 - y0, x1 - x0, window, static_cast<size_t>(width));
  }
  for (float& v : full) v = clamp_unit(v);
  return full;
}

std::vector<float> finish_map(const std::vector<double>& saliency, int h, int w, int H, int W) {
  std::vector<double> heat(saliency.begin(), saliency.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(h) *
                                                                                            static_cast<size_t>(w)));
  relu_normalize(heat);
  const LinearResize rows = linear_resize(h, H), cols = linear_resize(w, W);
  // rows first: [H, w], then columns: [H, W]
  std::vector<double> tall(static_cast<size_t>(H) * static_cast<size_t>(w));
  for (size_t y = 0; y < static_cast<size_t>(H); ++y) {
    const double* a = heat.data() + static_cast<size_t>(rows.left[y]) * static_cast<size_t>(w);
    const double* b = heat.data() + static_cast<size_t>(rows.right[y]) * static_cast<size_t>(w);
    for (size_t x = 0; x < static_cast<size_t>(w); ++x) {
      tall[y * static_cast<size_t>(w) + x] = rows.w_left[y] * a[x] + rows.w_right[y] * b[x];
    }
  }
  std::vector<double> full(static_cast<size_t>(H) * static_cast<size_t>(W));
  for (size_t y = 0; y < static_cast<size_t>(H); ++y) {
    const double* row = tall.data() + y * static_cast<size_t>(w);
    for (size_t x = 0; x < static_cast<size_t>(W); ++x) {
      full[y * static_cast<size_t>(W) + x] = cols.w_left[x] * row[cols.left[x]] + cols.w_right[x] * row[cols.right[x]];
    }
  }
  relu_normalize(full);
  std::vector<float> out(full.size());
  for (size_t i = 0; i < full.size(); ++i) out[i] = static_cast<float>(full[i]);
  return out;
}

}  // namespace textcam::detail
