// The C API and the C++ Explainer end to end on the committed shapes-world bundles: the bundle's
// self-test through both APIs, threads against serial, and the status codes of bad calls.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "textcam/textcam.h"
#include "textcam/textcam.hpp"

namespace {

const std::string kBundle = std::string(TEXTCAM_SOURCE_DIR) + "/shapes_world/artifacts/color.textcam";
const std::string kSpurious = std::string(TEXTCAM_SOURCE_DIR) + "/shapes_world/artifacts/spurious.textcam";

bool onnxruntime_configured() {
  const char* env = std::getenv("TEXTCAM_ONNXRUNTIME_LIBRARY");
  return (env != nullptr && *env != '\0') || std::string(TEXTCAM_DEFAULT_ONNXRUNTIME_LIBRARY_FOR_TESTS) != "";
}

#define REQUIRE_ONNXRUNTIME()                                                                         \
  if (!onnxruntime_configured())                                                                      \
  GTEST_SKIP() << "no libonnxruntime configured: configure with -DPython3_EXECUTABLE=<a python with " \
                  "onnxruntime> or set TEXTCAM_ONNXRUNTIME_LIBRARY"

// A smooth colour field with a disc: something for the model to look at.
std::vector<uint8_t> scene(int height, int width, int seed) {
  std::vector<uint8_t> pixels(static_cast<size_t>(height) * static_cast<size_t>(width) * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const bool disc = (x - width / 2) * (x - width / 2) + (y - height / 3) * (y - height / 3) < height * width / 16;
      for (int c = 0; c < 3; ++c) {
        const int value = disc ? (seed * 71 + c * 97) % 256 : (x * (c + 1) + y * (3 - c) + seed * 13) % 256;
        pixels[(static_cast<size_t>(y) * static_cast<size_t>(width) + static_cast<size_t>(x)) * 3 +
               static_cast<size_t>(c)] = static_cast<uint8_t>(value);
      }
    }
  }
  return pixels;
}

TEST(CApi, SelftestPassesOnBothBundles) {
  REQUIRE_ONNXRUNTIME();
  for (const auto& bundle : {kBundle, kSpurious}) {
    TextcamExplainer* explainer = nullptr;
    ASSERT_EQ(textcam_explainer_create(bundle.c_str(), nullptr, &explainer), TEXTCAM_OK) << textcam_last_error();
    int passed = -1;
    char* table = nullptr;
    ASSERT_EQ(textcam_selftest(explainer, &passed, &table), TEXTCAM_OK) << textcam_last_error();
    EXPECT_EQ(passed, 1) << table;
    EXPECT_NE(std::string(table).find("end-to-end"), std::string::npos);
    textcam_string_destroy(table);
    textcam_explainer_destroy(explainer);
  }
}

TEST(CApi, ExplainsPixelsWithConceptsAndAHeatmapAtTheImageSize) {
  REQUIRE_ONNXRUNTIME();
  TextcamOptions* options = nullptr;
  ASSERT_EQ(textcam_options_create(&options), TEXTCAM_OK);
  ASSERT_EQ(textcam_options_set(options, "top_k", "3"), TEXTCAM_OK);
  ASSERT_EQ(textcam_options_set(options, "allow_spinning", "false"), TEXTCAM_OK);
  TextcamExplainer* explainer = nullptr;
  ASSERT_EQ(textcam_explainer_create(kBundle.c_str(), options, &explainer), TEXTCAM_OK) << textcam_last_error();
  const auto pixels = scene(57, 91, 1);
  TextcamExplanation* result = nullptr;
  ASSERT_EQ(textcam_explain_pixels(explainer, pixels.data(), 57, 91, 3, -1, &result), TEXTCAM_OK)
      << textcam_last_error();
  int height = 0;
  int width = 0;
  const float* heat = textcam_explanation_heatmap(result, &height, &width);
  EXPECT_EQ(height, 57);
  EXPECT_EQ(width, 91);
  float low = 1;
  float high = 0;
  for (int i = 0; i < height * width; ++i) {
    low = std::min(low, heat[i]);
    high = std::max(high, heat[i]);
  }
  EXPECT_GE(low, 0.0F);
  EXPECT_LE(high, 1.0F);
  size_t classes = 0;
  const float* logits = textcam_explanation_logits(result, &classes);
  ASSERT_GT(classes, 1U);
  const int64_t predicted = textcam_explanation_class_index(result);
  for (size_t i = 0; i < classes; ++i) EXPECT_LE(logits[i], logits[predicted]);  // the predicted class
  EXPECT_GT(textcam_explanation_score(result), 1.0 / static_cast<double>(classes));
  ASSERT_EQ(textcam_explanation_concept_count(result), 3U);
  double total = 0;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NE(textcam_explanation_concept_phrase(result, i), nullptr);
    total += textcam_explanation_concept_weight(result, i);
  }
  EXPECT_LE(total, 1.0 + 1e-9);
  EXPECT_EQ(textcam_explanation_concept_phrase(result, 3), nullptr);
  char* json = textcam_explanation_json(result);
  ASSERT_NE(json, nullptr);
  EXPECT_NE(std::string(json).find("\"label\":\"" + std::string(textcam_explanation_label(result)) + "\""),
            std::string::npos);
  textcam_string_destroy(json);
  // an explicit class is explained as asked
  TextcamExplanation* other = nullptr;
  const int64_t wanted = (predicted + 1) % static_cast<int64_t>(classes);
  ASSERT_EQ(textcam_explain_pixels(explainer, pixels.data(), 57, 91, 3, wanted, &other), TEXTCAM_OK);
  EXPECT_EQ(textcam_explanation_class_index(other), wanted);
  textcam_explanation_destroy(other);
  textcam_explanation_destroy(result);
  textcam_explainer_destroy(explainer);
  textcam_options_destroy(options);
}

TEST(CApi, BadCallsGiveStatusCodesAndOneLine) {
  REQUIRE_ONNXRUNTIME();
  TextcamExplainer* explainer = nullptr;
  EXPECT_EQ(textcam_explainer_create("/nonexistent/x.textcam", nullptr, &explainer), TEXTCAM_ERROR);
  EXPECT_EQ(explainer, nullptr);
  EXPECT_EQ(std::string(textcam_last_error()),
            "/nonexistent/x.textcam: not a directory; a bundle is a directory made "
            "by `textcam export`");
  EXPECT_EQ(textcam_explainer_create(nullptr, nullptr, &explainer), TEXTCAM_ERROR_INVALID_ARGUMENT);
  TextcamOptions* options = nullptr;
  ASSERT_EQ(textcam_options_create(&options), TEXTCAM_OK);
  EXPECT_EQ(textcam_options_set(options, "no_such_option", "1"), TEXTCAM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(textcam_options_set(options, "batch_size", "many"), TEXTCAM_ERROR);
  EXPECT_EQ(std::string(textcam_last_error()), "batch_size=many: expected an integer");
  ASSERT_EQ(textcam_options_set(options, "top_k", "0"), TEXTCAM_OK);  // checked when the explainer is built
  EXPECT_EQ(textcam_explainer_create(kBundle.c_str(), options, &explainer), TEXTCAM_ERROR);
  EXPECT_EQ(std::string(textcam_last_error()), "top_k=0: expected an integer from 1 to 256");
  textcam_options_destroy(options);

  ASSERT_EQ(textcam_explainer_create(kBundle.c_str(), nullptr, &explainer), TEXTCAM_OK);
  TextcamExplanation* result = nullptr;
  const auto pixels = scene(8, 8, 2);
  EXPECT_EQ(textcam_explain_pixels(explainer, pixels.data(), 8, 8, 3, 99, &result), TEXTCAM_ERROR);
  EXPECT_NE(std::string(textcam_last_error()).find("class_index 99 out of range"), std::string::npos);
  EXPECT_EQ(textcam_explain_pixels(explainer, pixels.data(), 0, 8, 3, -1, &result), TEXTCAM_ERROR);
  EXPECT_EQ(textcam_explain_file(explainer, "/nonexistent.png", -1, &result), TEXTCAM_ERROR);
  EXPECT_EQ(std::string(textcam_last_error()), "/nonexistent.png: no such file");
  EXPECT_EQ(textcam_explain_file(explainer, nullptr, -1, &result), TEXTCAM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(result, nullptr);
  textcam_explainer_destroy(explainer);
  textcam_explanation_destroy(nullptr);  // NULL is a no-op, as free()
}

TEST(Explainer, EightThreadsAgreeWithSerial) {
  REQUIRE_ONNXRUNTIME();
  textcam::Options options;
  options.intra_op_threads = 1;
  const textcam::Explainer explainer(kBundle, options);
  std::vector<std::vector<uint8_t>> images;
  for (int i = 0; i < 24; ++i) images.push_back(scene(20 + 7 * i, 90 - 2 * i, i));
  std::vector<textcam::Explanation> serial;
  for (size_t i = 0; i < images.size(); ++i) {
    const int h = 20 + 7 * static_cast<int>(i);
    const int w = 90 - 2 * static_cast<int>(i);
    serial.push_back(explainer.explain_image({images[i].data(), h, w, 3}));
  }
  std::vector<textcam::Explanation> threaded(images.size());
  std::vector<std::thread> workers;
  for (int t = 0; t < 8; ++t) {
    workers.emplace_back([&, t] {
      for (size_t i = static_cast<size_t>(t); i < images.size(); i += 8) {
        const int h = 20 + 7 * static_cast<int>(i);
        const int w = 90 - 2 * static_cast<int>(i);
        threaded[i] = explainer.explain_image({images[i].data(), h, w, 3});
      }
    });
  }
  for (auto& worker : workers) worker.join();
  for (size_t i = 0; i < images.size(); ++i) {
    EXPECT_EQ(threaded[i].class_index, serial[i].class_index);
    EXPECT_EQ(threaded[i].heatmap, serial[i].heatmap);
    ASSERT_EQ(threaded[i].concepts.size(), serial[i].concepts.size());
    for (size_t k = 0; k < serial[i].concepts.size(); ++k) {
      EXPECT_EQ(threaded[i].concepts[k].phrase_id, serial[i].concepts[k].phrase_id);
    }
  }
}

TEST(Explainer, BatchesAndSingleImagesAgree) {
  REQUIRE_ONNXRUNTIME();
  textcam::Options options;
  options.batch_size = 3;
  const textcam::Explainer batched(kBundle, options);
  const textcam::Explainer single(kBundle);
  std::vector<std::vector<uint8_t>> images;
  std::vector<textcam::ImageView> views;
  for (int i = 0; i < 7; ++i) images.push_back(scene(40, 30 + i, i));
  for (int i = 0; i < 7; ++i) views.push_back({images[static_cast<size_t>(i)].data(), 40, 30 + i, 3});
  const auto all = batched.explain_images(views);
  ASSERT_EQ(all.size(), 7U);
  for (size_t i = 0; i < all.size(); ++i) {
    const auto one = single.explain_image(views[i]);
    EXPECT_EQ(all[i].class_index, one.class_index);
    for (size_t j = 0; j < one.heatmap.size(); ++j) ASSERT_NEAR(all[i].heatmap[j], one.heatmap[j], 1e-5);
  }
  EXPECT_THROW(batched.explain_images(views, {0, 1}), textcam::Error);  // 2 classes for 7 images
}

}  // namespace
