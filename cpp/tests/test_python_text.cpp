// Paths, numbers and values printed as Python prints them (str(pathlib.Path), "{:,}", repr()), and sha256.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "python_text.hpp"
#include "sha256.hpp"
#include "textcam/textcam.hpp"

using namespace textcam::detail;

TEST(PythonText, PythonPath) {
  // Expected values printed by Python 3.11: str(pathlib.Path(p)).
  const std::pair<const char*, const char*> cases[] = {
      {"", "."},        {".", "."},    {"./", "."},      {"//a", "//a"},       {"///a", "/a"},   {"//", "//"},
      {"///", "/"},     {"/", "/"},    {"a//b/", "a/b"}, {"./a/./b/.", "a/b"}, {"a/..", "a/.."}, {"/./a", "/a"},
      {"//./a", "//a"}, {".//a", "a"}, {"a/.", "a"},     {"/.", "/"},          {"a", "a"},       {"../a/", "../a"},
  };
  for (const auto& [input, expected] : cases) EXPECT_EQ(python_path(input), expected) << input;
}

TEST(PythonText, JoinPath) {
  EXPECT_EQ(join_path(".", "manifest.json"), "manifest.json");
  EXPECT_EQ(join_path("", "manifest.json"), "manifest.json");
  EXPECT_EQ(join_path("a/b/", "manifest.json"), "a/b/manifest.json");
  EXPECT_EQ(join_path("/", "manifest.json"), "/manifest.json");
  EXPECT_EQ(join_path("//", "manifest.json"), "//manifest.json");
  EXPECT_EQ(join_path("//a", "x"), "//a/x");
  EXPECT_EQ(join_path("a", "engines/x.plan"), "a/engines/x.plan");
  EXPECT_EQ(join_path("a", "/abs"), "/abs");
}

TEST(PythonText, WithCommas) {
  EXPECT_EQ(with_commas(0), "0");
  EXPECT_EQ(with_commas(999), "999");
  EXPECT_EQ(with_commas(1000), "1,000");
  EXPECT_EQ(with_commas(1234567), "1,234,567");
  EXPECT_EQ(with_commas(-100), "-100");
  EXPECT_EQ(with_commas(-1234567), "-1,234,567");
  EXPECT_EQ(with_commas(16777216), "16,777,216");
  EXPECT_EQ(with_commas(68719476736LL), "68,719,476,736");
  EXPECT_EQ(with_commas(-9223372036854775807LL - 1), "-9,223,372,036,854,775,808");
}

TEST(PythonText, Sha256) {
  // a name of its own: /tmp is shared with other runs (the sanitizer build's, another user's)
  const std::string name = "textcam_sha256_test_" + std::to_string(std::random_device()()) + ".bin";
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  {
    std::ofstream out(path, std::ios::binary);
    out << "abc";
  }
  EXPECT_EQ(sha256_file(path, 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_file(path, 100), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_file(path, 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_file(path, 2), "fb8e20fc2e4c3f248c60c39bd652f3c1347298bb977b8b4d5903b85055620603");  // "ab"
  std::remove(path.c_str());
  EXPECT_THROW(sha256_file(path, 10), textcam::Error);
}

TEST(PythonText, Repr) {
  // Expected values printed by Python 3.11: repr(x).
  EXPECT_EQ(python_str_repr("a"), "'a'");
  EXPECT_EQ(python_str_repr("it's"), "\"it's\"");
  EXPECT_EQ(python_str_repr("both ' and \""), "'both \\' and \"'");
  EXPECT_EQ(python_str_repr("tab\tnew\nline\x01"), "'tab\\tnew\\nline\\x01'");
  EXPECT_EQ(python_str_repr("caf\xc3\xa9"), "'caf\xc3\xa9'");  // printable: kept
  EXPECT_EQ(python_str_repr("\xc2\xa0"), "'\\xa0'");           // no-break space: escaped
  EXPECT_EQ(python_str_repr("\xe2\x80\x8b"), "'\\u200b'");     // zero-width space
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1e-5), "1e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(123456789012345.0), "123456789012345.0");
  EXPECT_EQ(python_float_repr(-0.0), "-0.0");
  EXPECT_EQ(python_float_repr(2.5), "2.5");
  EXPECT_EQ(python_repr(nlohmann::json::parse(R"({"b": [1, 2.0, null, true], "a": "x"})")),
            "{'a': 'x', 'b': [1, 2.0, None, True]}");  // nlohmann::json sorts keys
  EXPECT_EQ(python_repr(nlohmann::ordered_json::parse(R"({"b": 1, "a": false})")), "{'b': 1, 'a': False}");
  EXPECT_EQ(python_len("caf\xc3\xa9"), 4U);
}
