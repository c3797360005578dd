// Heatmap math: hand-derived cases of Pillow's float BILINEAR resize, the map back onto the
// original image and the graph's map finish; parity with numpy is checked from Python.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "heatmap.hpp"

using textcam::detail::finish_map;
using textcam::detail::Geometry;
using textcam::detail::map_to_original;
using textcam::detail::resize_map;

TEST(HeatmapResize, IdentityConstantAndAverage) {
  const std::vector<float> map = {0.1F, 0.2F, 0.3F, 0.4F, 0.5F, 0.6F};
  EXPECT_EQ(resize_map(map.data(), 2, 3, 2, 3), map);
  const std::vector<float> flat(12, 0.375F);
  for (auto size : {std::pair<int, int>{1, 1}, {5, 9}, {40, 3}, {3, 40}}) {
    const auto out = resize_map(flat.data(), 3, 4, size.first, size.second);
    ASSERT_EQ(out.size(), static_cast<size_t>(size.first * size.second));
    for (float v : out) EXPECT_NEAR(v, 0.375F, 1e-7);
  }
  // 2x2 -> 1x1: each pass halves (weights 0.5), double sums stored as float32
  const std::vector<float> quad = {0.25F, 0.5F, 1.0F, 0.0F};
  const auto one = resize_map(quad.data(), 2, 2, 1, 1);
  const float row0 = static_cast<float>(0.5 * 0.25 + 0.5 * 0.5), row1 = static_cast<float>(0.5 * 1.0);
  EXPECT_EQ(one[0], static_cast<float>(0.5 * row0 + 0.5 * row1));
}

TEST(HeatmapResize, UpscaleOneRowKeepsColumns) {
  // 1 x 2 -> 3 x 2: the vertical pass only; every output row is the source row
  const std::vector<float> row = {0.2F, 0.9F};
  const auto out = resize_map(row.data(), 1, 2, 3, 2);
  for (int y = 0; y < 3; ++y) {
    EXPECT_FLOAT_EQ(out[static_cast<size_t>(2 * y)], 0.2F);
    EXPECT_FLOAT_EQ(out[static_cast<size_t>(2 * y + 1)], 0.9F);
  }
  // 1 x 2 -> 1 x 4: centers 0.25, 0.75, 1.25, 1.75 -> 0.2, 0.75*0.2+0.25*0.9, 0.25*0.2+0.75*0.9, 0.9
  const auto wide = resize_map(row.data(), 1, 2, 1, 4);
  EXPECT_FLOAT_EQ(wide[0], 0.2F);
  EXPECT_FLOAT_EQ(wide[1], static_cast<float>(0.75 * 0.2F + 0.25 * 0.9F));
  EXPECT_FLOAT_EQ(wide[2], static_cast<float>(0.25 * 0.2F + 0.75 * 0.9F));
  EXPECT_FLOAT_EQ(wide[3], 0.9F);
}

TEST(HeatmapMapToOriginal, StretchClampsToUnitRange) {
  const std::vector<float> cam = {1.5F, -0.5F, 0.25F, 0.75F};
  Geometry geometry;
  geometry.width = 2;
  geometry.height = 2;
  geometry.box = {0, 0, 2, 2};
  EXPECT_EQ(map_to_original(cam.data(), 2, 2, geometry), (std::vector<float>{1.0F, 0.0F, 0.25F, 0.75F}));
}

TEST(HeatmapMapToOriginal, CenterCropPlacesTheBoxZeroOutside) {
  // a 10 x 4 image, box (3, 0, 7, 4): the 4 x 4 map lands in columns 3..6 unchanged
  std::vector<float> cam(16);
  for (size_t i = 0; i < cam.size(); ++i) cam[i] = static_cast<float>(i) / 16.0F;
  Geometry geometry;
  geometry.width = 10;
  geometry.height = 4;
  geometry.box = {3, 0, 7, 4};
  const auto full = map_to_original(cam.data(), 4, 4, geometry);
  ASSERT_EQ(full.size(), 40U);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 10; ++x) {
      const float expected = (x >= 3 && x < 7) ? cam[static_cast<size_t>(y * 4 + (x - 3))] : 0.0F;
      EXPECT_EQ(full[static_cast<size_t>(y * 10 + x)], expected) << x << "," << y;
    }
  }
  // edges rounded half up: (2.5, 0, 7.4, 4) -> columns 3..6 as well
  geometry.box = {2.5, 0, 7.4, 4};
  EXPECT_EQ(map_to_original(cam.data(), 4, 4, geometry), full);
  // a box narrower than half a pixel still gets one column
  geometry.box = {4.1, 0, 4.2, 4};
  const auto thin = map_to_original(cam.data(), 4, 4, geometry);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 10; ++x) {
      if (x != 4) EXPECT_EQ(thin[static_cast<size_t>(y * 10 + x)], 0.0F);
    }
  }
}

TEST(HeatmapFinish, ReluMinMaxAndHalfPixelResize) {
  constexpr double eps = 1e-7;
  // constant saliency: everything 0 after the min shift
  EXPECT_EQ(finish_map(std::vector<double>(6, -2.0), 2, 3, 4, 5), std::vector<float>(20, 0.0F));
  EXPECT_EQ(finish_map(std::vector<double>(6, 3.0), 2, 3, 4, 5), std::vector<float>(20, 0.0F));
  // [-1, 0, 2] at the same size: ReLU [0, 0, 2] -> [0, 0, 2 / (eps + 2)] -> again min-max
  const auto same = finish_map({-1.0, 0.0, 2.0}, 1, 3, 1, 3);
  const double once = 2.0 / (eps + 2.0);
  EXPECT_EQ(same[0], 0.0F);
  EXPECT_EQ(same[1], 0.0F);
  EXPECT_NEAR(same[2], once / (eps + once), 1e-7);
  // 1 x 2 -> 1 x 4, half-pixel centers -0.25, 0.25, 0.75, 1.25: [0, 0.25, 0.75, 1] (clamped edges)
  const auto up = finish_map({0.0, 4.0}, 1, 2, 1, 4);
  const double top = 4.0 / (eps + 4.0);
  const double expected[4] = {0.0, 0.25 * top, 0.75 * top, top};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(up[static_cast<size_t>(i)], expected[i] / (eps + top), 1e-6) << i;
  // 2 rows -> 4 rows likewise
  const auto tall = finish_map({0.0, 4.0}, 2, 1, 4, 1);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(tall[static_cast<size_t>(i)], up[static_cast<size_t>(i)], 1e-7);
  // values stay in [0, 1]
  std::vector<double> noise(35);
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = std::sin(static_cast<double>(i) * 1.7) * 3.0;
  for (float v : finish_map(noise, 5, 7, 23, 17)) {
    EXPECT_GE(v, 0.0F);
    EXPECT_LE(v, 1.0F);
  }
}
