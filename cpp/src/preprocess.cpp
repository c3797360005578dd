// PREPROCESSING of textcam.runtime.preprocessing_spec, as its numpy reference computes it:
// crop box, Pillow's BILINEAR resize in 22-bit fixed point (two 8-bit passes), float32 normalize.
#include "preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace textcam::detail {

namespace {

constexpr int kPrecisionBits = 22;

double clamp_edge(double value, double size) { return std::min(std::max(value, 0.0), size); }

// One 8-bit pass along columns (horizontal) of an RGB image: [rows, in_w, 3] -> [rows, out_w, 3].
void pass_horizontal(const uint8_t* in, int rows, int in_w, uint8_t* out, int out_w, const FilterWeights& fw,
                     const std::vector<int32_t>& k) {
  const int taps = fw.taps;
  for (int y = 0; y < rows; ++y) {
    const uint8_t* row = in + static_cast<size_t>(y) * static_cast<size_t>(in_w) * 3;
    uint8_t* dst = out + static_cast<size_t>(y) * static_cast<size_t>(out_w) * 3;
    for (int x = 0; x < out_w; ++x) {
      const int start = fw.starts[static_cast<size_t>(x)];
      const int32_t* kx = k.data() + static_cast<size_t>(x) * static_cast<size_t>(taps);
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      const int n = std::min(taps, in_w - start);
      for (int t = 0; t < n; ++t) {
        const uint8_t* p = row + static_cast<size_t>(start + t) * 3;
        s0 += p[0] * kx[t];
        s1 += p[1] * kx[t];
        s2 += p[2] * kx[t];
      }
      dst[3 * x + 0] = static_cast<uint8_t>(std::clamp(s0 >> kPrecisionBits, 0, 255));
      dst[3 * x + 1] = static_cast<uint8_t>(std::clamp(s1 >> kPrecisionBits, 0, 255));
      dst[3 * x + 2] = static_cast<uint8_t>(std::clamp(s2 >> kPrecisionBits, 0, 255));
    }
  }
}

// One 8-bit pass along rows (vertical): [in_h, cols, 3] -> [out_h, cols, 3].
void pass_vertical(const uint8_t* in, int in_h, int cols, uint8_t* out, int out_h, const FilterWeights& fw,
                   const std::vector<int32_t>& k) {
  const int taps = fw.taps;
  const size_t stride = static_cast<size_t>(cols) * 3;
  std::vector<int32_t> sums(stride);
  for (int y = 0; y < out_h; ++y) {
    const int start = fw.starts[static_cast<size_t>(y)];
    const int32_t* ky = k.data() + static_cast<size_t>(y) * static_cast<size_t>(taps);
    std::fill(sums.begin(), sums.end(), 1 << (kPrecisionBits - 1));
    const int n = std::min(taps, in_h - start);
    for (int t = 0; t < n; ++t) {
      const uint8_t* row = in + static_cast<size_t>(start + t) * stride;
      const int32_t weight = ky[t];
      for (size_t i = 0; i < stride; ++i) sums[i] += row[i] * weight;
    }
    uint8_t* dst = out + static_cast<size_t>(y) * stride;
    for (size_t i = 0; i < stride; ++i) dst[i] = static_cast<uint8_t>(std::clamp(sums[i] >> kPrecisionBits, 0, 255));
  }
}

std::vector<int32_t> fixed_point(const FilterWeights& fw) {
  std::vector<int32_t> k(fw.weights.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<int32_t>(std::trunc(0.5 + fw.weights[i] * static_cast<double>(1 << kPrecisionBits)));
  }
  return k;
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

std::vector<uint8_t> resize_rgb(const RgbImage& image, int out_w, int out_h, const std::array<double, 4>& box) {
  const int width = image.width, height = image.height;
  const auto f_left = static_cast<float>(box[0]), f_top = static_cast<float>(box[1]);
  const auto f_right = static_cast<float>(box[2]), f_bottom = static_cast<float>(box[3]);
  const bool need_horizontal = out_w != width || f_left != 0.0F || f_right != static_cast<float>(out_w);
  const bool need_vertical = out_h != height || f_top != 0.0F || f_bottom != static_cast<float>(out_h);
  if (!need_horizontal && !need_vertical) return image.pixels;

  auto horizontal = [&](const std::vector<uint8_t>& in, int rows) {
    const FilterWeights fw = filter_weights(width, box[0], box[2], out_w);
    std::vector<uint8_t> out(static_cast<size_t>(rows) * static_cast<size_t>(out_w) * 3);
    pass_horizontal(in.data(), rows, width, out.data(), out_w, fw, fixed_point(fw));
    return out;
  };
  auto vertical = [&](const std::vector<uint8_t>& in, int cols) {
    const FilterWeights fw = filter_weights(height, box[1], box[3], out_h);
    std::vector<uint8_t> out(static_cast<size_t>(out_h) * static_cast<size_t>(cols) * 3);
    pass_vertical(in.data(), height, cols, out.data(), out_h, fw, fixed_point(fw));
    return out;
  };
  if (!need_vertical) return horizontal(image.pixels, height);
  if (!need_horizontal) return vertical(image.pixels, width);
  if (vertical_first(width, height, out_w, out_h)) return horizontal(vertical(image.pixels, width), out_h);
  return vertical(horizontal(image.pixels, height), out_w);
}

Geometry preprocess(const RgbImage& image, const InputSection& input, float* out) {
  if (image.width < 1 || image.height < 1) {
    throw Error("image " + std::to_string(image.width) + "x" + std::to_string(image.height) + ": has no pixels");
  }
  Geometry geometry;
  geometry.width = image.width;
  geometry.height = image.height;
  geometry.box = crop_box(image.width, image.height, input);
  const std::vector<uint8_t> resized = resize_rgb(image, input.width, input.height, geometry.box);
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
  for (size_t i = 0; i < plane; ++i) {
    for (size_t c = 0; c < 3; ++c) out[c * plane + i] = table[c][resized[3 * i + c]];
  }
  return geometry;
}

}  // namespace textcam::detail
