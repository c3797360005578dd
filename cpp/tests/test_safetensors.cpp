// SafetensorsFile: the format's checks (Rust crate wording), dtype conversions, and the
// semantics store reader on the committed bundle.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "safetensors.hpp"
#include "semantics.hpp"
#include "textcam/textcam.hpp"

namespace fs = std::filesystem;
using namespace textcam::detail;

namespace {

std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data, uint64_t length) {
  std::vector<uint8_t> out;
  out.reserve(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(length >> (8 * i)));
  for (char c : header) out.push_back(static_cast<uint8_t>(c));
  for (uint8_t b : data) out.push_back(b);
  return out;
}
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data = {}) {
  return make_file(header, data, header.size());
}

std::string parse_message(const std::vector<uint8_t>& bytes) {
  try {
    SafetensorsFile::parse(bytes, "x.safetensors", "; hint");
  } catch (const textcam::Error& error) {
    return error.what();
  }
  return "OK";
}

std::string refused(const std::string& why) {
  return "x.safetensors: not a readable safetensors file (Error while deserializing header: " + why + "); hint";
}

}  // namespace

TEST(Safetensors, ReadsTensorsAndMetadata) {
  std::vector<uint8_t> data(8 + 4);
  const float values[2] = {1.5F, -2.0F};
  std::memcpy(data.data(), values, 8);
  const uint16_t halves[2] = {0x3C00, 0xC000};  // 1.0, -2.0
  std::memcpy(data.data() + 8, halves, 4);
  const auto bytes =
      make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, )"
                R"("b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [8, 12]}, "__metadata__": {"k": "v"}})",
                data);
  const SafetensorsFile file = SafetensorsFile::parse(bytes, "x.safetensors", "");
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(file.metadata().at("k"), "v");
  EXPECT_EQ(file.tensor("a").to_float(), (std::vector<float>{1.5F, -2.0F}));
  EXPECT_EQ(file.tensor("b").shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(file.tensor("b").to_float(), (std::vector<float>{1.0F, -2.0F}));
  EXPECT_THROW(file.tensor("c"), textcam::Error);
}

TEST(Safetensors, HalfToFloatIsExact) {
  EXPECT_EQ(half_to_float(0x0000), 0.0F);
  EXPECT_TRUE(std::signbit(half_to_float(0x8000)));
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0F, -24));     // smallest subnormal
  EXPECT_EQ(half_to_float(0x03FF), std::ldexp(1023.0F, -24));  // largest subnormal
  EXPECT_EQ(half_to_float(0x0400), std::ldexp(1.0F, -14));     // smallest normal
  EXPECT_EQ(half_to_float(0x7BFF), 65504.0F);
  EXPECT_EQ(half_to_float(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(half_to_float(0x7E00)));
  EXPECT_EQ(half_to_float(0x3555), 0.333251953125F);
  // Every finite half round-trips through float exactly (checked against a slow reference).
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint32_t exponent = (bits >> 10) & 0x1F;
    if (exponent == 0x1F) continue;
    const double mantissa = bits & 0x3FF;
    double expected = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, int(exponent) - 25);
    if (bits & 0x8000) expected = -expected;
    ASSERT_EQ(half_to_float(static_cast<uint16_t>(bits)), static_cast<float>(expected)) << bits;
  }
}

TEST(Safetensors, OtherDtypes) {
  std::vector<uint8_t> data(16 + 8 + 8 + 2);
  const double d = 0.25;
  const int64_t i64 = -7;
  const int32_t i32[2] = {3, -4};
  std::memcpy(data.data(), &d, 8);
  std::memcpy(data.data() + 8, &i64, 8);
  std::memcpy(data.data() + 16, i32, 8);
  data[24] = 200;
  data[25] = 1;
  // data: [0,8) F64, [8,16) I64, [16,24) I32 x2, [24,26) U8 x2; 8 spare bytes removed below.
  data.resize(26);
  const auto bytes =
      make_file(R"({"d": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}, "i": {"dtype": "I64", "shape": [1], )"
                R"("data_offsets": [8, 16]}, "j": {"dtype": "I32", "shape": [2], "data_offsets": [16, 24]}, )"
                R"("u": {"dtype": "U8", "shape": [2], "data_offsets": [24, 26]}})",
                data);
  const SafetensorsFile file = SafetensorsFile::parse(bytes, "x", "");
  EXPECT_EQ(file.tensor("d").elements(), 1);
  EXPECT_EQ(file.tensor("d").to_float(), std::vector<float>{0.25F});
  EXPECT_EQ(file.tensor("i").to_int64(), std::vector<int64_t>{-7});
  EXPECT_EQ(file.tensor("j").to_int64(), (std::vector<int64_t>{3, -4}));
  EXPECT_EQ(file.tensor("u").to_float(), (std::vector<float>{200.0F, 1.0F}));
  EXPECT_THROW(file.tensor("d").to_int64(), textcam::Error);
}

TEST(Safetensors, DamagedFiles) {
  EXPECT_EQ(parse_message({}), refused("header too small"));
  EXPECT_EQ(parse_message({1, 2}), refused("header too small"));
  EXPECT_EQ(parse_message(make_file("{}", {}, 1000000000000ULL)), refused("header too large"));
  EXPECT_EQ(parse_message(make_file("{}", {}, ~0ULL)), refused("header too large"));
  EXPECT_EQ(parse_message(make_file("{}", {}, 50)), refused("invalid header length"));
  EXPECT_EQ(parse_message(make_file("xx")), refused("invalid JSON in header: expected value at line 1 column 1"));
  EXPECT_EQ(parse_message(make_file(std::string(100000, '['))).substr(0, 40), refused("").substr(0, 40));
  EXPECT_EQ(parse_message(make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                    std::vector<uint8_t>(12))),
            refused("invalid offset for tensor `a`"));
  EXPECT_EQ(parse_message(
                make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", std::vector<uint8_t>(8))),
            refused("invalid offset for tensor `a`"));
  EXPECT_EQ(parse_message(
                make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", std::vector<uint8_t>(4))),
            refused("incomplete metadata, file not fully covered"));
  EXPECT_EQ(parse_message(make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                                    std::vector<uint8_t>(12))),
            refused("incomplete metadata, file not fully covered"));
  EXPECT_EQ(parse_message(
                make_file(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", std::vector<uint8_t>(8))),
            refused("invalid shape, data type, or offset for tensor"));
  EXPECT_EQ(
      parse_message(make_file(
          R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904], "data_offsets": [0, 8]}})",
          std::vector<uint8_t>(8))),
      refused("overflow computing buffer size from shape and/or element type"));
  EXPECT_NE(parse_message(
                make_file(R"({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}})", std::vector<uint8_t>(8))),
            "OK");
  EXPECT_NE(parse_message(make_file(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})",
                                    std::vector<uint8_t>(8))),
            "OK");
  EXPECT_NE(parse_message(make_file(R"({"__metadata__": {"x": 1}})")), "OK");
  EXPECT_NE(parse_message(make_file(R"([])")), "OK");
  EXPECT_EQ(parse_message(make_file(R"({"__metadata__": {"x": "1"}})")), "OK");
}

TEST(Safetensors, ReadRefusesMissingAndOversizeFiles) {
  EXPECT_THROW(SafetensorsFile::read("/nonexistent.safetensors", ""), textcam::Error);
  const std::string path = std::string(TEXTCAM_SOURCE_DIR) + "/shapes_world/artifacts/color_cnn.safetensors";
  EXPECT_THROW(SafetensorsFile::read(path, "", 10), textcam::Error);
  const SafetensorsFile weights = SafetensorsFile::read(path, "");
  EXPECT_FALSE(weights.names().empty());
}

TEST(Semantics, ReadsTheCommittedStore) {
  const std::string dir = std::string(TEXTCAM_SOURCE_DIR) + "/shapes_world/artifacts/color.textcam";
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("semantics-", 0) != 0) continue;
    const SemanticsStore store = read_store(entry.path().string(), "", 0);
    EXPECT_EQ(store.channels, 128);
    EXPECT_EQ(store.text_embeddings.size(), static_cast<size_t>(store.vocabulary() * store.dim));
    for (const auto& phrase : store.phrases) EXPECT_FALSE(phrase.empty());
    try {
      read_store(entry.path().string(), std::string(64, '0'), 0);
      ADD_FAILURE() << "another model's checksum was accepted";
    } catch (const textcam::Error& error) {
      EXPECT_EQ(std::string(error.what()),
                entry.path().string() +
                    ": computed for another model (model.onnx checksum differs); re-run `textcam semantics`");
    }
    try {
      read_store(entry.path().string(), "", 64);
      ADD_FAILURE() << "a store for another layer was accepted";
    } catch (const textcam::Error& error) {
      EXPECT_EQ(std::string(error.what()), entry.path().string() +
                                               ": semantics were computed for a layer with 128 channels, this "
                                               "model's layer has 64: re-run `textcam semantics`");
    }
  }
  try {
    read_store(dir + "/nope.safetensors", "", 0);
    ADD_FAILURE();
  } catch (const textcam::Error& error) {
    EXPECT_EQ(std::string(error.what()), dir + "/nope.safetensors: missing; run `textcam semantics` to build it");
  }
}
