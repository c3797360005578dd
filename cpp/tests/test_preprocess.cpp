// Preprocessing: hand-derived cases of PREPROCESSING (crop box, filter weights, the fixed-point
// passes, float32 normalization); parity with the numpy reference is checked from Python.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "preprocess.hpp"
#include "textcam/textcam.hpp"

using textcam::detail::crop_box;
using textcam::detail::filter_weights;
using textcam::detail::InputSection;
using textcam::detail::preprocess;
using textcam::detail::resize_rgb;
using textcam::detail::RgbImage;
using textcam::detail::vertical_first;

namespace {

InputSection section(int height, int width, const std::string& policy) {
  InputSection input;
  input.height = height;
  input.width = width;
  input.mean = {0.485, 0.456, 0.406};
  input.std = {0.229, 0.224, 0.225};
  input.resize = policy;
  return input;
}

RgbImage make_image(int width, int height, const std::function<uint8_t(int, int, int)>& value) {
  RgbImage image;
  image.width = width;
  image.height = height;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) image.pixels.push_back(value(x, y, c));
    }
  }
  return image;
}

float normalized(int v, const InputSection& input, int c) {
  volatile float x = static_cast<float>(v) * static_cast<float>(input.scale);
  volatile float shifted = x - static_cast<float>(input.mean[static_cast<size_t>(c)]);
  return shifted / static_cast<float>(input.std[static_cast<size_t>(c)]);
}

}  // namespace

TEST(PreprocessCropBox, StretchAndCenterCrop) {
  EXPECT_EQ(crop_box(400, 200, section(224, 224, "stretch")), (std::array<double, 4>{0, 0, 400, 200}));
  // s = max(224/400, 224/200) = 1.12: a 200 x 200 box in the middle
  const auto wide = crop_box(400, 200, section(224, 224, "center_crop"));
  // (224 / 1.12 is 200 within rounding: the edges within 1e-9)
  EXPECT_NEAR(wide[0], 100.0, 1e-9);
  EXPECT_NEAR(wide[1], 0.0, 1e-9);
  EXPECT_NEAR(wide[2], 300.0, 1e-9);
  EXPECT_NEAR(wide[3], 200.0, 1e-9);
  // tall image, wide input: s = max(40/100, 20/300) = 0.4, box 100 x 50, top 125
  const auto tall = crop_box(100, 300, section(20, 40, "center_crop"));
  EXPECT_NEAR(tall[0], 0.0, 1e-9);
  EXPECT_NEAR(tall[1], 125.0, 1e-9);
  EXPECT_NEAR(tall[2], 100.0, 1e-9);
  EXPECT_NEAR(tall[3], 175.0, 1e-9);
  for (int w = 1; w < 60; w += 7) {
    for (int h = 1; h < 60; h += 5) {
      const auto box = crop_box(w, h, section(13, 17, "center_crop"));
      EXPECT_GE(box[0], 0.0);
      EXPECT_GE(box[1], 0.0);
      EXPECT_LE(box[2], w);
      EXPECT_LE(box[3], h);
    }
  }
  try {
    crop_box(10, 10, section(4, 4, "letterbox"));
    FAIL() << "no error";
  } catch (const textcam::Error& e) {
    EXPECT_STREQ(e.what(),
                 "bundle input resize 'letterbox': this runtime knows 'stretch' and 'center_crop'; upgrade textcam or "
                 "re-export the bundle");
  }
}

TEST(PreprocessFilterWeights, IdentityAndHalving) {
  const auto same = filter_weights(5, 0.0, 5.0, 5);
  ASSERT_EQ(same.taps, 3);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(same.starts[static_cast<size_t>(i)], i);
    EXPECT_EQ(same.weights[static_cast<size_t>(3 * i)], 1.0);
    EXPECT_EQ(same.weights[static_cast<size_t>(3 * i + 1)], 0.0);
  }
  // 2 -> 1: filterscale 2, support 2, taps 5; sources 0 and 1 at 0.75 each, normalized to 0.5
  const auto half = filter_weights(2, 0.0, 2.0, 1);
  ASSERT_EQ(half.taps, 5);
  EXPECT_EQ(half.starts[0], 0);
  EXPECT_EQ(half.weights[0], 0.5);
  EXPECT_EQ(half.weights[1], 0.5);
  EXPECT_EQ(half.weights[2], 0.0);
  // upscaling 2 -> 4: centers 0.25, 0.75, 1.25, 1.75 (scale 0.5, support 1)
  const auto up = filter_weights(2, 0.0, 2.0, 4);
  ASSERT_EQ(up.taps, 3);
  EXPECT_EQ(up.starts[0], 0);
  EXPECT_EQ(up.weights[0], 1.0);  // only source 0 is inside [trunc(-0.25), trunc(1.75))
  EXPECT_EQ(up.starts[1], 0);
  EXPECT_DOUBLE_EQ(up.weights[3], 0.75 / 1.0);  // source 0: 1 - 0.25; source 1: 1 - 0.75 -> 0.75, 0.25
  EXPECT_DOUBLE_EQ(up.weights[4], 0.25);
  for (int i = 0; i < 4; ++i) {
    double total = 0.0;
    for (int t = 0; t < up.taps; ++t) total += up.weights[static_cast<size_t>(i * up.taps + t)];
    EXPECT_DOUBLE_EQ(total, 1.0);
  }
}

TEST(PreprocessVerticalFirst, Pillow13Rule) {
  EXPECT_TRUE(vertical_first(10, 100, 10, 10));    // height shrinks by 90 > 2 * 0
  EXPECT_FALSE(vertical_first(100, 100, 10, 10));  // 90 > 180 is false
  EXPECT_FALSE(vertical_first(10, 10, 10, 20));    // height grows
  EXPECT_TRUE(vertical_first(50, 300, 40, 100));   // 200 > 20
}

TEST(PreprocessResize, IdentityAndConstant) {
  const RgbImage image = make_image(7, 5, [](int x, int y, int c) { return static_cast<uint8_t>(x * 31 + y * 7 + c); });
  EXPECT_EQ(resize_rgb(image, 7, 5, {0, 0, 7, 5}), image.pixels);
  // an integer box of exactly the output size is a plain cut
  const auto cut = resize_rgb(image, 3, 2, {2, 1, 5, 3});
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 3; ++x) {
      for (int c = 0; c < 3; ++c) {
        EXPECT_EQ(cut[static_cast<size_t>((y * 3 + x) * 3 + c)],
                  image.pixels[static_cast<size_t>(((y + 1) * 7 + (x + 2)) * 3 + c)]);
      }
    }
  }
  for (int v : {0, 1, 127, 254, 255}) {
    const RgbImage flat = make_image(37, 23, [v](int, int, int) { return static_cast<uint8_t>(v); });
    for (auto size : {std::pair<int, int>{5, 3}, {100, 80}, {1, 1}, {37, 1}, {2, 60}}) {
      const auto out = resize_rgb(flat, size.first, size.second, {0, 0, 37, 23});
      EXPECT_EQ(out, std::vector<uint8_t>(static_cast<size_t>(size.first * size.second * 3), static_cast<uint8_t>(v)));
    }
  }
}

TEST(PreprocessResize, TwoByTwoToOneIsRoundedAverageOfRoundedRows) {
  // weights 0.5 each -> k = 2^21: a pass gives floor((a + b + 1) / 2); horizontal first for 2x2
  for (int seed = 0; seed < 50; ++seed) {
    const RgbImage image = make_image(2, 2, [seed](int x, int y, int c) {
      return static_cast<uint8_t>((seed * 97 + x * 61 + y * 113 + c * 29) % 256);
    });
    const auto out = resize_rgb(image, 1, 1, {0, 0, 2, 2});
    for (int c = 0; c < 3; ++c) {
      auto px = [&](int x, int y) { return static_cast<int>(image.pixels[static_cast<size_t>((y * 2 + x) * 3 + c)]); };
      const int row0 = (px(0, 0) + px(1, 0) + 1) / 2, row1 = (px(0, 1) + px(1, 1) + 1) / 2;
      EXPECT_EQ(out[static_cast<size_t>(c)], (row0 + row1 + 1) / 2);
    }
  }
}

TEST(PreprocessResize, PassOrderFollowsVerticalFirst) {
  // 3 wide, 7 tall -> 1 x 2: vertical first (7 - 2 > 2 * (3 - 1)); the order changes some pixels
  const auto v = filter_weights(7, 0.0, 7.0, 2);
  const auto h = filter_weights(3, 0.0, 3.0, 1);
  // one output of a pass by the stated fixed-point formula
  auto tap = [](const std::vector<int>& values, const textcam::detail::FilterWeights& fw, int out) {
    long long total = 1 << 21;
    const int start = fw.starts[static_cast<size_t>(out)];
    for (int t = 0; t < fw.taps && start + t < static_cast<int>(values.size()); ++t) {
      const double w = fw.weights[static_cast<size_t>(out * fw.taps + t)];
      total += values[static_cast<size_t>(start + t)] * static_cast<long long>(std::trunc(0.5 + w * (1 << 22)));
    }
    return static_cast<int>(std::min(255LL, std::max(0LL, total >> 22)));
  };
  int differing = 0;
  for (int seed = 0; seed < 200; ++seed) {
    const RgbImage image = make_image(3, 7, [seed](int x, int y, int c) {
      return static_cast<uint8_t>((seed * 131 + x * 71 + y * y * 37 + c * 11 + x * y * 5) % 256);
    });
    const auto out = resize_rgb(image, 1, 2, {0, 0, 3, 7});
    for (int c = 0; c < 3; ++c) {
      auto px = [&](int x, int y) { return static_cast<int>(image.pixels[static_cast<size_t>((y * 3 + x) * 3 + c)]); };
      for (int oy = 0; oy < 2; ++oy) {
        std::vector<int> columns, rows;
        for (int x = 0; x < 3; ++x)
          columns.push_back(tap({px(x, 0), px(x, 1), px(x, 2), px(x, 3), px(x, 4), px(x, 5), px(x, 6)}, v, oy));
        for (int y = 0; y < 7; ++y) rows.push_back(tap({px(0, y), px(1, y), px(2, y)}, h, 0));
        const int vertical_then_horizontal = tap(columns, h, 0);
        const int horizontal_then_vertical = tap(rows, v, oy);
        differing += vertical_then_horizontal != horizontal_then_vertical;
        EXPECT_EQ(out[static_cast<size_t>(oy * 3 + c)], vertical_then_horizontal);
      }
    }
  }
  EXPECT_GT(differing, 0);  // the case distinguishes the orders
}

TEST(PreprocessNormalize, LayoutAndFloat32Formula) {
  const InputSection input = section(3, 4, "stretch");
  const RgbImage image =
      make_image(4, 3, [](int x, int y, int c) { return static_cast<uint8_t>(10 * x + 50 * y + 3 * c); });
  std::vector<float> out(3 * 3 * 4);
  const auto geometry = preprocess(image, input, out.data());
  EXPECT_EQ(geometry.width, 4);
  EXPECT_EQ(geometry.height, 3);
  EXPECT_EQ(geometry.box, (std::array<double, 4>{0, 0, 4, 3}));
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 3; ++y) {
      for (int x = 0; x < 4; ++x) {
        EXPECT_EQ(out[static_cast<size_t>((c * 3 + y) * 4 + x)], normalized(10 * x + 50 * y + 3 * c, input, c));
      }
    }
  }
}

TEST(PreprocessNormalize, ConstantImageAnyPolicy) {
  for (const char* policy : {"stretch", "center_crop"}) {
    InputSection input = section(8, 6, policy);
    input.scale = 1.0 / 255.0;
    const RgbImage image = make_image(31, 9, [](int, int, int c) { return static_cast<uint8_t>(40 + 80 * c); });
    std::vector<float> out(3 * 8 * 6);
    preprocess(image, input, out.data());
    for (int c = 0; c < 3; ++c) {
      for (int i = 0; i < 48; ++i) EXPECT_EQ(out[static_cast<size_t>(c * 48 + i)], normalized(40 + 80 * c, input, c));
    }
  }
}
