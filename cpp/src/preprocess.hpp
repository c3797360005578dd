// The preprocessing the manifest records (input.preprocessing, textcam.runtime.preprocessing_spec):
// crop box -> Pillow BILINEAR resize (22-bit fixed point, two 8-bit passes, Pillow 13's pass
// order) -> float32 (v * scale - mean) / std -> CHW.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "image_decode.hpp"
#include "manifest.hpp"

namespace textcam::detail {

struct Geometry {
  int width = 0;  // the original (upright) image
  int height = 0;
  std::array<double, 4> box{};  // left, top, right, bottom in source pixels
};

std::array<double, 4> crop_box(int width, int height, const InputSection& input);

// Per output pixel of one axis: first source index and the normalized weights (double), padded to
// `taps` per output (unused taps weigh 0). As preprocessing_spec.filter_weights.
struct FilterWeights {
  int taps = 0;
  std::vector<int> starts;
  std::vector<double> weights;  // [out, taps]
};
FilterWeights filter_weights(int in_size, double in0, double in1, int out_size);

// Pillow 13's pass order.
bool vertical_first(int width, int height, int out_w, int out_h);

// uint8 HxWx3 -> uint8 out_h x out_w x 3 through the box (PREPROCESSING["resize"]).
std::vector<uint8_t> resize_rgb(const RgbImage& image, int out_w, int out_h, const std::array<double, 4>& box);

// Writes float32 [3, H, W] to `out` and returns where it came from.
Geometry preprocess(const RgbImage& image, const InputSection& input, float* out);

}  // namespace textcam::detail
