// Loading ONNX Runtime at run time: a missing library and one older than the headers each fail in
// one line that says what is needed and where it looked. libtextcam loads the library once per
// process, so each case runs in a fresh process (a "threadsafe" death test re-executes the binary).
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "textcam/textcam.hpp"

namespace {

const std::string kBundle = std::string(TEXTCAM_SOURCE_DIR) + "/shapes_world/artifacts/color.textcam";

// Prints the error line to stderr and exits 3, or exits 0 if the explainer was built.
void open_with(const std::string& library) {
  textcam::Options options;
  options.onnxruntime_library = library;
  try {
    textcam::Explainer explainer(kBundle, options);
  } catch (const textcam::Error& error) {
    std::cerr << error.what() << std::endl;
    std::exit(3);
  }
  std::exit(0);
}

TEST(OnnxRuntimeLoadingDeathTest, MissingLibraryNamesWhereItLooked) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(open_with("/nonexistent/libonnxruntime.so.1"), testing::ExitedWithCode(3),
              "ONNX Runtime: no libonnxruntime could be loaded \\(needs 1\\.21 or newer\\); looked at "
              "/nonexistent/libonnxruntime\\.so\\.1 .*pip install onnxruntime");
}

TEST(OnnxRuntimeLoadingDeathTest, TooOldLibrarySaysWhichVersionItNeeds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string fake = TEXTCAM_FAKE_OLD_ONNXRUNTIME;
  EXPECT_EXIT(open_with(fake), testing::ExitedWithCode(3),
              "ONNX Runtime 1\\.10\\.0 at .*fake_old_onnxruntime.* is older than the 1\\.21 textcam's native core "
              "needs; pip install 'onnxruntime>=1\\.21'");
}

TEST(OnnxRuntimeLoadingDeathTest, NotOnnxRuntimeAtAll) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(open_with(TEXTCAM_NOT_ONNXRUNTIME), testing::ExitedWithCode(3),
              "no libonnxruntime could be loaded .*no OrtGetApiBase: not ONNX Runtime");
}

}  // namespace
