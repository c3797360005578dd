// PREPROCESSING of textcam.runtime.preprocessing_spec, as its numpy reference computes it:
// crop box, Pillow's BILINEAR resize in 22-bit fixed point (two 8-bit passes), float32 normalize.
#include "preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace textcam::detail {

namespace {

constexpr int kPrecisionBits = 22;
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

double clamp_edge(double value, double size) { return std::min(std::max(value, 0.0), size); }

uint8_t clip8(int32_t sum) { return static_cast<uint8_t>(std::clamp(sum >> kPrecisionBits, 0, 255)); }

// The fixed-point taps of one axis, trimmed per output to the span of nonzero coefficients inside
// the image (integer sums: a zero coefficient adds nothing, so the sums are those of all taps).
struct FixedTaps {
  int taps = 0;
  std::vector<int> starts, counts;
  std::vector<int32_t> k;  // [out, taps], the first counts[i] used
  int lo = 0, hi = 0;      // the source range [lo, hi) the outputs read
  // for the horizontal pass: the outputs [0, x_safe) do not read the last pixel of a row, and
  // their coefficients as pair_coefficients lays them out (SSE2 only)
  size_t x_safe = 0;
  std::vector<int32_t> pairs;
};

FixedTaps fixed_taps(const FilterWeights& fw, int in_size) {
  FixedTaps ft;
  ft.taps = fw.taps;
  const auto taps = static_cast<size_t>(fw.taps);
  const size_t out_size = fw.starts.size();
  ft.starts.resize(out_size);
  ft.counts.resize(out_size);
  ft.k.assign(out_size * taps, 0);
  ft.lo = in_size;
  std::vector<int32_t> row(taps);
  for (size_t i = 0; i < out_size; ++i) {
    const int start = fw.starts[i];
    const int n = std::max(0, std::min(fw.taps, in_size - start));
    int first = n, last = -1;
    for (int t = 0; t < n; ++t) {
      const double w = fw.weights[i * taps + static_cast<size_t>(t)];
      const auto value = static_cast<int32_t>(std::trunc(0.5 + w * static_cast<double>(1 << kPrecisionBits)));
      row[static_cast<size_t>(t)] = value;
      if (value != 0) {
        first = std::min(first, t);
        last = t;
      }
    }
    const int count = last < first ? 0 : last - first + 1;
    ft.starts[i] = count == 0 ? 0 : start + first;
    ft.counts[i] = count;
    for (int t = 0; t < count; ++t)
      ft.k[i * taps + static_cast<size_t>(t)] = row[static_cast<size_t>(first) + static_cast<size_t>(t)];
    if (count > 0) {
      ft.lo = std::min(ft.lo, start + first);
      ft.hi = std::max(ft.hi, start + first + count);
    }
  }
  if (ft.hi <= ft.lo) ft.lo = ft.hi = 0;
  return ft;
}

// One 8-bit pass along columns (horizontal) of RGB rows: [rows, in_w, 3] -> [rows, out_w, 3].
// `in` and `out` point at the first row; `in_stride` is the source row length in bytes.
void horizontal_scalar(const uint8_t* row, uint8_t* dst, const FixedTaps& ft, size_t x0, size_t x1) {
  const auto taps = static_cast<size_t>(ft.taps);
  for (size_t x = x0; x < x1; ++x) {
    const uint8_t* p = row + static_cast<size_t>(ft.starts[x]) * 3;
    const int32_t* kx = ft.k.data() + x * taps;
    const int n = ft.counts[x];
    int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
    for (int t = 0; t < n; ++t, p += 3) {
      const int32_t weight = kx[t];
      s0 += p[0] * weight;
      s1 += p[1] * weight;
      s2 += p[2] * weight;
    }
    dst[3 * x + 0] = clip8(s0);
    dst[3 * x + 1] = clip8(s1);
    dst[3 * x + 2] = clip8(s2);
  }
}

#if defined(__SSE2__)
// Per output and pair of taps, the coefficients as _mm_madd_epi16 takes them: 15-bit low halves
// and 7-bit high halves (k = low + high << 15), each pair (k_t, k_t+1) repeated over the register.
std::vector<int32_t> pair_coefficients(const FixedTaps& ft) {
  const auto taps = static_cast<size_t>(ft.taps);
  const size_t pairs = (taps + 1) / 2;
  std::vector<int32_t> table(ft.starts.size() * pairs * 8);
  for (size_t x = 0; x < ft.starts.size(); ++x) {
    const int32_t* kx = ft.k.data() + x * taps;
    for (size_t j = 0; j < pairs; ++j) {
      const int32_t k0 = kx[2 * j], k1 = 2 * j + 1 < taps ? kx[2 * j + 1] : 0;
      const int32_t lo = (k0 & 0x7FFF) | ((k1 & 0x7FFF) << 16), hi = (k0 >> 15) | ((k1 >> 15) << 16);
      int32_t* dst = table.data() + (x * pairs + j) * 8;
      std::fill(dst, dst + 4, lo);
      std::fill(dst + 4, dst + 8, hi);
    }
  }
  return table;
}

__m128i load4(const uint8_t* p) {
  int32_t value = 0;
  std::memcpy(&value, p, 4);
  return _mm_cvtsi32_si128(value);
}

// Sums to bytes: + 1/2, >> 22, clamp to [0, 255] (signed then unsigned saturation); low 4 bytes.
int32_t finish4(__m128i lo, __m128i hi) {
  const __m128i sum = _mm_add_epi32(_mm_add_epi32(lo, _mm_slli_epi32(hi, 15)), _mm_set1_epi32(kHalf));
  const __m128i shifted = _mm_srai_epi32(sum, kPrecisionBits);
  const __m128i words = _mm_packs_epi32(shifted, shifted);
  return _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
}
#endif

// Readies `ft` for pass_horizontal over rows of `in_w` pixels.
void prepare_horizontal(FixedTaps& ft, int in_w) {
#if defined(__SSE2__)
  // Pixels are read 4 bytes at a time (R, G, B and a byte whose sums are dropped): the outputs
  // that read the last pixel of a row go the scalar way, so nothing past the image is read.
  const size_t out_w = ft.starts.size();
  ft.x_safe = 0;
  while (ft.x_safe < out_w && ft.starts[ft.x_safe] + ft.counts[ft.x_safe] < in_w) ++ft.x_safe;
  ft.pairs = pair_coefficients(ft);
#else
  (void)ft;
  (void)in_w;
#endif
}

void pass_horizontal(const uint8_t* in, size_t in_stride, int rows, uint8_t* out, const FixedTaps& ft) {
  const size_t out_w = ft.starts.size();
  const size_t x_safe = ft.x_safe;
#if defined(__SSE2__)
  const size_t pairs = (static_cast<size_t>(ft.taps) + 1) / 2;
  const __m128i zero = _mm_setzero_si128();
#endif
  for (int y = 0; y < rows; ++y) {
    const uint8_t* row = in + static_cast<size_t>(y) * in_stride;
    uint8_t* dst = out + static_cast<size_t>(y) * out_w * 3;
#if defined(__SSE2__)
    for (size_t x = 0; x < x_safe; ++x) {
      const uint8_t* p = row + static_cast<size_t>(ft.starts[x]) * 3;
      const int n = ft.counts[x];
      const auto* w = reinterpret_cast<const __m128i*>(ft.pairs.data() + x * pairs * 8);
      __m128i lo = zero, hi = zero;
      for (int t = 0; t < n; t += 2, p += 6, w += 2) {
        const __m128i b = t + 1 < n ? load4(p + 3) : zero;
        const __m128i ab = _mm_unpacklo_epi8(_mm_unpacklo_epi8(load4(p), b), zero);  // r r' g g' b b' . .
        lo = _mm_add_epi32(lo, _mm_madd_epi16(ab, _mm_loadu_si128(w)));
        hi = _mm_add_epi32(hi, _mm_madd_epi16(ab, _mm_loadu_si128(w + 1)));
      }
      const int32_t rgb = finish4(lo, hi);
      std::memcpy(dst + 3 * x, &rgb, 3);
    }
#endif
    horizontal_scalar(row, dst, ft, x_safe, out_w);
  }
}

#if defined(__SSE2__)
// 16 outputs of one vertical pass row: the 22-bit coefficients split into 15-bit low and 7-bit
// high halves so that _mm_madd_epi16 multiplies exactly; sum = low + (high << 15) (all below 2^31).
void vertical_simd16(const uint8_t* const* rows, const int32_t* k, int n, size_t i, uint8_t* dst) {
  const __m128i zero = _mm_setzero_si128();
  __m128i lo[4] = {zero, zero, zero, zero}, hi[4] = {zero, zero, zero, zero};
  for (int t = 0; t < n; t += 2) {
    const bool pair = t + 1 < n;
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t] + i));
    const __m128i b = pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t + 1] + i)) : zero;
    const int32_t k0 = k[t], k1 = pair ? k[t + 1] : 0;
    const __m128i w_lo = _mm_set1_epi32((k0 & 0x7FFF) | ((k1 & 0x7FFF) << 16));
    const __m128i w_hi = _mm_set1_epi32((k0 >> 15) | ((k1 >> 15) << 16));
    const __m128i a16[2] = {_mm_unpacklo_epi8(a, zero), _mm_unpackhi_epi8(a, zero)};
    const __m128i b16[2] = {_mm_unpacklo_epi8(b, zero), _mm_unpackhi_epi8(b, zero)};
    for (size_t h = 0; h < 2; ++h) {
      const __m128i ab0 = _mm_unpacklo_epi16(a16[h], b16[h]);
      const __m128i ab1 = _mm_unpackhi_epi16(a16[h], b16[h]);
      lo[2 * h] = _mm_add_epi32(lo[2 * h], _mm_madd_epi16(ab0, w_lo));
      hi[2 * h] = _mm_add_epi32(hi[2 * h], _mm_madd_epi16(ab0, w_hi));
      lo[2 * h + 1] = _mm_add_epi32(lo[2 * h + 1], _mm_madd_epi16(ab1, w_lo));
      hi[2 * h + 1] = _mm_add_epi32(hi[2 * h + 1], _mm_madd_epi16(ab1, w_hi));
    }
  }
  const __m128i half = _mm_set1_epi32(kHalf);
  __m128i s[4];
  for (int j = 0; j < 4; ++j) {
    s[j] = _mm_srai_epi32(_mm_add_epi32(_mm_add_epi32(lo[j], _mm_slli_epi32(hi[j], 15)), half), kPrecisionBits);
  }
  // signed saturation to int16, then unsigned saturation to uint8: clamp to [0, 255]
  const __m128i packed = _mm_packus_epi16(_mm_packs_epi32(s[0], s[1]), _mm_packs_epi32(s[2], s[3]));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), packed);
}
#endif

// One output row `y` of an 8-bit pass along rows (vertical): `width` bytes of each source row.
void vertical_row(const uint8_t* const* rows, const int32_t* ky, int n, size_t width, uint8_t* dst) {
  size_t i = 0;
#if defined(__SSE2__)
  for (; i + 16 <= width; i += 16) vertical_simd16(rows, ky, n, i, dst + i);
#endif
  for (; i < width; ++i) {
    int32_t sum = kHalf;
    for (int t = 0; t < n; ++t) sum += rows[t][i] * ky[t];
    dst[i] = clip8(sum);
  }
}

// Source rows [in_h, width] with stride `in_stride` -> output row `y`.
void pass_vertical(const uint8_t* in, size_t in_stride, size_t width, uint8_t* dst, const FixedTaps& ft, size_t y,
                   std::vector<const uint8_t*>& rows) {
  const auto taps = static_cast<size_t>(ft.taps);
  const int n = ft.counts[y];
  rows.resize(taps);
  for (int t = 0; t < n; ++t) rows[static_cast<size_t>(t)] = in + static_cast<size_t>(ft.starts[y] + t) * in_stride;
  vertical_row(rows.data(), ft.k.data() + y * taps, n, width, dst);
}

// As pass_vertical, the source row r being in slot r % slots of a ring.
void pass_vertical_ring(const uint8_t* ring, size_t slots, size_t width, uint8_t* dst, const FixedTaps& ft, size_t y,
                        std::vector<const uint8_t*>& rows) {
  const auto taps = static_cast<size_t>(ft.taps);
  const int n = ft.counts[y];
  rows.resize(taps);
  for (int t = 0; t < n; ++t) {
    rows[static_cast<size_t>(t)] = ring + static_cast<size_t>(ft.starts[y] + t) % slots * width;
  }
  vertical_row(rows.data(), ft.k.data() + y * taps, n, width, dst);
}

}  // namespace

std::array<double, 4> crop_box(int width, int height, const InputSection& input) {
  if (input.resize == "center_crop") {
    const double w = width, h = height;
    const double scale = std::max(static_cast<double>(input.width) / w, static_cast<double>(input.height) / h);
    const double box_w = input.width / scale, box_h = input.height / scale;
    const double left = (w - box_w) / 2, top = (h - box_h) / 2;
    return {clamp_edge(left, w), clamp_edge(top, h), clamp_edge(left + box_w, w), clamp_edge(top + box_h, h)};
  }
  if (input.resize != "stretch") {
    // repr() of the policy, as Python's {!r} writes a plain string
    const char quote =
        input.resize.find('\'') != std::string::npos && input.resize.find('"') == std::string::npos ? '"' : '\'';
    throw Error("bundle input resize " + std::string(1, quote) + input.resize + std::string(1, quote) +
                ": this runtime knows 'stretch' and 'center_crop'; upgrade textcam or re-export the bundle");
  }
  return {0.0, 0.0, static_cast<double>(width), static_cast<double>(height)};
}

FilterWeights filter_weights(int in_size, double in0, double in1, int out_size) {
  const auto in0_f = static_cast<float>(in0), in1_f = static_cast<float>(in1);
  const double scale = static_cast<double>(in1_f - in0_f) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  FilterWeights fw;
  fw.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  const auto taps = static_cast<size_t>(fw.taps);
  fw.starts.resize(static_cast<size_t>(out_size));
  fw.weights.assign(static_cast<size_t>(out_size) * taps, 0.0);
  const double inverse = 1.0 / filterscale;
  for (int i = 0; i < out_size; ++i) {
    const double center = static_cast<double>(in0_f) + (i + 0.5) * scale;
    const double lo = std::trunc(center - support + 0.5);
    const double hi = std::trunc(center + support + 0.5);
    const int start = lo < 0 ? 0 : static_cast<int>(lo);
    const double stop = std::min(hi, static_cast<double>(in_size));
    double* w = fw.weights.data() + static_cast<size_t>(i) * taps;
    double total = 0.0;
    for (size_t t = 0; t < taps; ++t) {
      const double position = static_cast<double>(start) + static_cast<double>(t);
      double weight = 0.0;
      if (position < stop) {
        const double x = std::fabs(((position - center) + 0.5) * inverse);
        weight = x < 1.0 ? 1.0 - x : 0.0;
      }
      w[t] = weight;
      total += weight;
    }
    if (total != 0.0) {
      for (size_t t = 0; t < taps; ++t) w[t] /= total;
    }
    fw.starts[static_cast<size_t>(i)] = start;
  }
  return fw;
}

bool vertical_first(int width, int height, int out_w, int out_h) {
  return height > out_h && (height - out_h) > 2 * (width - out_w);
}

namespace {

// The resize, row by row: sink(y, row) gets each output row (out_w * 3 bytes) in order.
template <class Sink>
void resize_rows(const RgbImage& image, int out_w, int out_h, const std::array<double, 4>& box, Sink&& sink) {
  const int width = image.width, height = image.height;
  const auto f_left = static_cast<float>(box[0]), f_top = static_cast<float>(box[1]);
  const auto f_right = static_cast<float>(box[2]), f_bottom = static_cast<float>(box[3]);
  const bool need_horizontal = out_w != width || f_left != 0.0F || f_right != static_cast<float>(out_w);
  const bool need_vertical = out_h != height || f_top != 0.0F || f_bottom != static_cast<float>(out_h);
  const size_t in_stride = static_cast<size_t>(width) * 3, out_stride = static_cast<size_t>(out_w) * 3;
  const uint8_t* pixels = image.pixels.data();
  if (!need_horizontal && !need_vertical) {
    for (int y = 0; y < height; ++y) sink(y, pixels + static_cast<size_t>(y) * in_stride);
    return;
  }
  std::vector<uint8_t> line(out_stride);
  std::vector<const uint8_t*> rows;
  if (!need_vertical) {
    FixedTaps ht = fixed_taps(filter_weights(width, box[0], box[2], out_w), width);
    prepare_horizontal(ht, width);
    for (int y = 0; y < height; ++y) {
      pass_horizontal(pixels + static_cast<size_t>(y) * in_stride, in_stride, 1, line.data(), ht);
      sink(y, line.data());
    }
    return;
  }
  const FixedTaps vt = fixed_taps(filter_weights(height, box[1], box[3], out_h), height);
  if (!need_horizontal) {
    for (int y = 0; y < out_h; ++y) {
      pass_vertical(pixels, in_stride, in_stride, line.data(), vt, static_cast<size_t>(y), rows);
      sink(y, line.data());
    }
    return;
  }
  FixedTaps ht = fixed_taps(filter_weights(width, box[0], box[2], out_w), width);
  if (vertical_first(width, height, out_w, out_h)) {
    // only the columns the horizontal pass reads
    const size_t col0 = static_cast<size_t>(ht.lo) * 3, cols = static_cast<size_t>(ht.hi - ht.lo) * 3;
    std::vector<uint8_t> tall(cols);
    FixedTaps shifted = ht;
    for (int& s : shifted.starts) s = std::max(s - ht.lo, 0);
    prepare_horizontal(shifted, ht.hi - ht.lo);
    for (int y = 0; y < out_h; ++y) {
      pass_vertical(pixels + col0, in_stride, cols, tall.data(), vt, static_cast<size_t>(y), rows);
      pass_horizontal(tall.data(), cols, 1, line.data(), shifted);
      sink(y, line.data());
    }
    return;
  }
  // horizontal first: the horizontal rows are made as the vertical pass first needs them, kept in a
  // ring of `taps` rows (an output reads at most `taps` consecutive rows, in rising order)
  prepare_horizontal(ht, width);
  const auto slots = static_cast<size_t>(vt.taps);
  std::vector<uint8_t> ring(slots * out_stride);
  const uint8_t* ring_rows = ring.data();
  int next = 0;
  for (int y = 0; y < out_h; ++y) {
    const auto i = static_cast<size_t>(y);
    const int start = vt.starts[i], n = vt.counts[i];
    for (int r = std::max(next, start); r < start + n; ++r) {
      pass_horizontal(pixels + static_cast<size_t>(r) * in_stride, in_stride, 1,
                      ring.data() + static_cast<size_t>(r) % slots * out_stride, ht);
    }
    next = std::max(next, start + n);
    pass_vertical_ring(ring_rows, slots, out_stride, line.data(), vt, i, rows);
    sink(y, line.data());
  }
}

}  // namespace

std::vector<uint8_t> resize_rgb(const RgbImage& image, int out_w, int out_h, const std::array<double, 4>& box) {
  const size_t out_stride = static_cast<size_t>(out_w) * 3;
  std::vector<uint8_t> out(static_cast<size_t>(out_h) * out_stride);
  resize_rows(image, out_w, out_h, box, [&](int y, const uint8_t* row) {
    std::copy_n(row, out_stride, out.data() + static_cast<size_t>(y) * out_stride);
  });
  return out;
}

Geometry preprocess(const RgbImage& image, const InputSection& input, float* out) {
  if (image.width < 1 || image.height < 1) {
    throw Error("image " + std::to_string(image.width) + "x" + std::to_string(image.height) + ": has no pixels");
  }
  Geometry geometry;
  geometry.width = image.width;
  geometry.height = image.height;
  geometry.box = crop_box(image.width, image.height, input);
  // float32, each operation rounded: x = v * scale; x = (x - mean) / std
  float table[3][256];
  const auto scale = static_cast<float>(input.scale);
  for (int c = 0; c < 3; ++c) {
    const auto mean = static_cast<float>(input.mean[static_cast<size_t>(c)]);
    const auto std_dev = static_cast<float>(input.std[static_cast<size_t>(c)]);
    for (int v = 0; v < 256; ++v) {
      volatile float x = static_cast<float>(v) * scale;  // no contraction into a fused multiply-add
      table[c][v] = (x - mean) / std_dev;
    }
  }
  const size_t plane = static_cast<size_t>(input.width) * static_cast<size_t>(input.height);
  const auto out_w = static_cast<size_t>(input.width);
  resize_rows(image, input.width, input.height, geometry.box, [&](int y, const uint8_t* row) {
    for (size_t c = 0; c < 3; ++c) {
      float* dst = out + c * plane + static_cast<size_t>(y) * out_w;
      const float* lut = table[c];
      for (size_t x = 0; x < out_w; ++x) dst[x] = lut[row[3 * x + c]];
    }
  });
  return geometry;
}

}  // namespace textcam::detail
