// Bundle::open / Bundle::file / parse_manifest / read_store on the committed bundles and on
// damaged copies of them; messages are the Python runtime's, word for word.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bundle.hpp"
#include "manifest.hpp"
#include "semantics.hpp"
#include "sha256.hpp"
#include "textcam/textcam.hpp"

namespace fs = std::filesystem;
using namespace textcam::detail;
using OJson = nlohmann::ordered_json;

namespace {

const std::string kArtifacts = std::string(TEXTCAM_SOURCE_DIR) + "/shapes_world/artifacts";
const std::string kColor = kArtifacts + "/color.textcam";
const std::string kAgain = "; re-run the textcam stage that wrote it";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string repeat(const std::string& text, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) out += text;
  return out;
}

// The error message of fn(), or "OK".
std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const textcam::Error& error) {
    return error.what();
  }
  return "OK";
}

class BundleDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device device;
    root_ = fs::temp_directory_path() / ("textcam_bundle_test_" + std::to_string(device()));
    fs::create_directories(root_);
    dir_ = (root_ / "b.textcam").string();
    fs::copy(kColor, dir_, fs::copy_options::recursive);
    manifest_ = dir_ + "/manifest.json";
    original_ = OJson::parse(read_text(manifest_));
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  // Writes the manifest with `change` applied to a copy of the original.
  void edit(const std::function<void(OJson&)>& change) {
    OJson data = original_;
    change(data);
    write_text(manifest_, data.dump(1));
  }
  std::string open_message() const {
    return message_of([&] { Bundle::open(dir_); });
  }
  std::string open_all_message() const {
    return message_of([&] {
      Bundle bundle = Bundle::open(dir_);
      const Manifest& info = bundle.info();
      if (info.semantics) {
        const std::string path = bundle.file(info.semantics->store, FileKind::kSemantics);
        read_store(path, info.model.sha256, info.target_layer.channels);
      }
      if (info.fused_graph) bundle.file(info.fused_graph->graph, FileKind::kFusedGraph);
      if (info.selftest) bundle.file(info.selftest->data, FileKind::kSelftest);
    });
  }
  std::string semantics_file() const { return original_["semantics"]["file"].get<std::string>(); }

  fs::path root_;
  std::string dir_;
  std::string manifest_;
  OJson original_;
};

}  // namespace

TEST(BundleOpen, CommittedBundlesOpen) {
  for (const char* name : {"color.textcam", "spurious.textcam"}) {
    const std::string dir = kArtifacts + "/" + name;
    Bundle bundle = Bundle::open(dir + "/");
    EXPECT_EQ(bundle.path(), dir);
    const Manifest& info = bundle.info();
    EXPECT_EQ(info.format_version, 2);
    EXPECT_EQ(info.num_classes, static_cast<int>(info.classes.size()));
    EXPECT_EQ(info.input.height, 64);
    EXPECT_EQ(info.input.width, 64);
    EXPECT_EQ(info.method, "gradcam");
    EXPECT_EQ(info.target_layer.channels, 128);
    ASSERT_TRUE(info.semantics.has_value());
    ASSERT_TRUE(info.fused_graph.has_value());
    ASSERT_TRUE(info.selftest.has_value());
    EXPECT_EQ(bundle.model_path(), dir + "/model.onnx");
    EXPECT_EQ(bundle.file(info.selftest->data, FileKind::kSelftest), dir + "/" + info.selftest->data.file);
    const SemanticsStore store =
        read_store(bundle.file(info.semantics->store, FileKind::kSemantics), info.model.sha256, 128);
    EXPECT_EQ(store.channels, 128);
    EXPECT_EQ(store.dim, info.semantics->dim);
    EXPECT_EQ(store.vocabulary(), info.semantics->vocabulary_size);
    EXPECT_EQ(store.channel_semantics.size(), static_cast<size_t>(128 * store.dim));
    double norm = 0;
    for (int d = 0; d < store.dim; ++d) norm += double(store.channel_semantics[d]) * store.channel_semantics[d];
    EXPECT_NEAR(norm, 1.0, 1e-2);  // unit rows, stored as fp16
  }
  const Bundle color = Bundle::open(kColor);
  EXPECT_EQ(color.info().classes.front(), "red");
  EXPECT_NEAR(color.info().input.mean[0], 0.485, 1e-12);
  EXPECT_EQ(color.info().graph.inputs, (std::vector<std::string>{"image", "target_class"}));
}

TEST(BundleOpen, FileIsThreadSafeAndCached) {
  const Bundle bundle = Bundle::open(kColor, false);
  std::vector<std::thread> threads;
  std::vector<std::string> results(8);
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = bundle.file(bundle.info().fused_graph->graph, FileKind::kFusedGraph); });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_EQ(result, results.front());
}

TEST(BundleOpen, NotADirectory) {
  EXPECT_EQ(message_of([] { Bundle::open("/nonexistent/x.textcam/"); }),
            "/nonexistent/x.textcam: not a directory; a bundle is a directory made by `textcam export`");
}

TEST_F(BundleDamage, MissingManifest) {
  fs::remove(manifest_);
  EXPECT_EQ(open_message(), manifest_ + ": missing; is " + dir_ + " a bundle made by `textcam export`?");
}

TEST_F(BundleDamage, ManifestIsAFifo) {
  fs::remove(manifest_);
  ASSERT_EQ(::mkfifo(manifest_.c_str(), 0600), 0);
  EXPECT_EQ(open_message(), manifest_ + ": not a regular file; a bundle's manifest is a JSON file");
}

TEST_F(BundleDamage, OversizeManifest) {
  fs::resize_file(manifest_, (16 << 20) + 1);
  EXPECT_EQ(open_message(),
            manifest_ + ": 16,777,217 bytes, over the 16,777,216-byte limit for a manifest; re-export the bundle");
}

TEST_F(BundleDamage, NotJson) {
  const std::string prefix = manifest_ + ": unreadable or not JSON (";
  const std::string suffix = "); re-export the bundle";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "Expecting value: line 1 column 1 (char 0)"},
      {"hello", "Expecting value: line 1 column 1 (char 0)"},
      {"{\"a\": 1,}", "Expecting property name enclosed in double quotes: line 1 column 9 (char 8)"},
      {"[1 2]", "Expecting ',' delimiter: line 1 column 4 (char 3)"},
      {"{}\n  {}", "Extra data: line 2 column 3 (char 5)"},
      {"\"abc", "Unterminated string starting at: line 1 column 1 (char 0)"},
      {"\"\\q\"", "Invalid \\escape: line 1 column 2 (char 1)"},
      {"\xef\xbb\xbf{}", "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"},
      {"{\"a\": \"\xff\"}", "'utf-8' codec can't decode byte 0xff in position 7: invalid start byte"},
      {"{\"format\": NaN}", "NaN is not valid JSON"},
      {"[-Infinity]", "-Infinity is not valid JSON"},
      {std::string(5000, '[') + std::string(5000, ']'), "nested too deeply"},
      {std::string(100000, '{'), "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
      {repeat("{\"a\":", 3000) + "1" + std::string(3000, '}'), "nested too deeply"},
  };
  for (const auto& [text, detail] : cases) {
    write_text(manifest_, text);
    EXPECT_EQ(open_message(), prefix + detail + suffix) << text.substr(0, 40);
  }
}

TEST_F(BundleDamage, ShallowerNestingIsAManifestError) {
  write_text(manifest_, std::string(100, '[') + std::string(100, ']'));
  EXPECT_EQ(open_message(), manifest_ + ": manifest must be an object" + kAgain);
}

TEST_F(BundleDamage, FormatAndVersion) {
  edit([](OJson& m) { m["format"] = "other"; });
  EXPECT_EQ(open_message(), manifest_ + ": not a textcam manifest (format is not 'textcam-bundle')");
  edit([](OJson& m) { m["format_version"] = 3; });
  EXPECT_EQ(open_message(),
            manifest_ + ": bundle format version 3 is newer than this textcam supports (2); upgrade textcam");
  edit([](OJson& m) { m["format_version"] = 2.0; });
  EXPECT_EQ(open_message(), manifest_ + ": 'format_version' must be a positive integer" + kAgain);
  edit([](OJson& m) { m["format_version"] = true; });
  EXPECT_EQ(open_message(), manifest_ + ": 'format_version' must be a positive integer" + kAgain);
}

TEST_F(BundleDamage, MissingKeysAndWrongTypes) {
  edit([](OJson& m) { m.erase("method"); });
  EXPECT_EQ(open_message(), manifest_ + ": 'method' is missing" + kAgain);
  edit([](OJson& m) { m["model"]["file"] = nullptr; });
  EXPECT_EQ(open_message(), manifest_ + ": 'model.file' is missing" + kAgain);
  edit([](OJson& m) { m["model"] = OJson::array({1}); });
  EXPECT_EQ(open_message(), manifest_ + ": 'model' model must be an object" + kAgain);
  edit([](OJson& m) { m["input"]["height"] = 64.0; });
  EXPECT_EQ(open_message(), manifest_ + ": 'input.height' must be an integer between 1 and 16384" + kAgain);
  edit([](OJson& m) { m["input"]["height"] = 0; });
  EXPECT_EQ(open_message(), manifest_ + ": 'input.height' is 0; expected an integer between 1 and 16384" + kAgain);
  edit([](OJson& m) { m["input"]["std"] = OJson::array({0.0, 1, 1}); });
  EXPECT_EQ(open_message(), manifest_ + ": 'input.std' is 0.0; expected a positive number" + kAgain);
  edit([](OJson& m) { m["input"]["std"] = OJson::array({1, -1e-7, 1}); });
  EXPECT_EQ(open_message(), manifest_ + ": 'input.std' is -1e-07; expected a positive number" + kAgain);
  edit([](OJson& m) { m["input"]["resize"] = "crop"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'input.resize' is 'crop'; expected one of stretch, center_crop" + kAgain);
  edit([](OJson& m) { m["graph"]["has_activations"] = "yes"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'graph.has_activations' must be true or false" + kAgain);
  edit([](OJson& m) { m["model"]["sha256"] = "ABC"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'model.sha256' must be 64 lowercase hexadecimal digits" + kAgain);
  edit([](OJson& m) {
    OJson inputs = m["graph"]["inputs"];
    m["graph"]["inputs"] = OJson::array({inputs[1], inputs[0]});
  });
  EXPECT_EQ(open_message(), manifest_ +
                                ": 'graph.inputs' are ['target_class', 'image']; expected ['image', "
                                "'target_class']" +
                                kAgain);
  edit([](OJson& m) { m["semantics"]["channels"] = 64; });
  EXPECT_EQ(open_message(), manifest_ + ": 'semantics.channels' has 64 channels, the layer 128" + kAgain);
  edit([](OJson& m) { m["semantics"] = nullptr; });
  EXPECT_EQ(open_message(), manifest_ + ": 'fused_graph' is present without semantics" + kAgain);
  edit([](OJson& m) { m["selftest"]["tolerances"]["logits"] = "x"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'selftest.tolerances.logits' must be a finite number" + kAgain);
}

TEST_F(BundleDamage, DeepExtrasAndDuplicateClasses) {
  // _check_plain_json: the value is at depth 0, so 18 nested lists put the innermost at 17.
  edit([](OJson& m) { m["model"]["weights"] = OJson::parse(std::string(18, '[') + std::string(18, ']')); });
  EXPECT_EQ(open_message(), manifest_ + ": 'model.weights' is nested deeper than 16 levels" + kAgain);
  edit([](OJson& m) { m["model"]["weights"] = OJson::parse(std::string(17, '[') + std::string(17, ']')); });
  EXPECT_EQ(open_message(), "OK");
  edit([](OJson& m) { m["classes"][3] = "green"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'classes' name 'green' more than once; class names must be unique" + kAgain);
  edit([](OJson& m) {
    m["classes"][0] = "it's";
    m["classes"][5] = "it's";
  });
  EXPECT_EQ(open_message(),
            manifest_ + ": 'classes' name \"it's\" more than once; class names must be unique" + kAgain);
}

TEST_F(BundleDamage, FileNamesOutsideTheBundle) {
  const std::string expected = "; expected a plain relative file name inside the bundle (no '..', no absolute path)";
  edit([](OJson& m) { m["model"]["file"] = "../color.textcam/model.onnx"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'model.file' is '../color.textcam/model.onnx'" + expected + kAgain);
  edit([](OJson& m) { m["model"]["file"] = "/etc/passwd"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'model.file' is '/etc/passwd'" + expected + kAgain);
  edit([](OJson& m) { m["model"]["file"] = "manifest.json"; });
  EXPECT_EQ(open_message(), manifest_ + ": 'model.file' is 'manifest.json'" + expected + kAgain);
}

TEST_F(BundleDamage, SymlinkOutsideTheBundle) {
  const std::string model = dir_ + "/model.onnx";
  fs::remove(model);
  fs::create_symlink(kColor + "/model.onnx", model);
  EXPECT_EQ(open_message(),
            model + ": the graph named in the manifest lies outside the bundle; re-run `textcam export`");
}

TEST_F(BundleDamage, SymlinkInsideTheBundleIsFine) {
  const std::string model = dir_ + "/model.onnx";
  fs::rename(model, dir_ + "/real.onnx");
  fs::create_symlink("real.onnx", model);
  EXPECT_EQ(open_message(), "OK");
}

TEST_F(BundleDamage, MissingFifoDirectoryAndLoop) {
  const std::string model = dir_ + "/model.onnx";
  fs::remove(model);
  EXPECT_EQ(open_message(), model + ": the graph named in the manifest is missing; re-run `textcam export`");
  ASSERT_EQ(::mkfifo(model.c_str(), 0600), 0);
  EXPECT_EQ(open_message(), model + ": the graph is not a regular file; re-run `textcam export`");
  fs::remove(model);
  fs::create_directory(model);
  EXPECT_EQ(open_message(), model + ": the graph is not a regular file; re-run `textcam export`");
  fs::remove(model);
  fs::create_symlink("model.onnx", model);
  EXPECT_EQ(open_message(), model + ": cannot read the graph (Too many levels of symbolic links)");
}

TEST_F(BundleDamage, SizeAndChecksum) {
  const std::string model = dir_ + "/model.onnx";
  fs::resize_file(model, 1000);
  EXPECT_EQ(open_message(),
            model + ": 1,000 bytes, the manifest says 1,024,018 (truncated or replaced); re-run `textcam export`");
  fs::copy_file(kColor + "/model.onnx", model, fs::copy_options::overwrite_existing);
  {
    std::fstream file(model, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(100);
    file.put('\x7f');
  }
  EXPECT_EQ(open_message(), model + ": checksum differs from the manifest (file changed); re-run `textcam export`");
  // without verify no sha256 is computed (a caller that checked the files), but the size still is
  const Bundle unverified = Bundle::open(dir_, false);
  EXPECT_EQ(message_of([&] { unverified.model_path(); }), "OK");
  fs::resize_file(model, 1000);
  EXPECT_EQ(message_of([&] { Bundle::open(dir_, false).model_path(); }),
            model + ": 1,000 bytes, the manifest says 1,024,018 (truncated or replaced); re-run `textcam export`");
}

TEST_F(BundleDamage, SemanticsStoreChecks) {
  const std::string store = dir_ + "/" + semantics_file();
  // A store whose content is wrong while its size and sha256 match the manifest.
  auto replace_store = [&](const std::string& bytes) {
    write_text(store, bytes);
    edit([&](OJson& m) {
      m["semantics"]["size_bytes"] = bytes.size();
      m["semantics"]["sha256"] = sha256_file(store, static_cast<int64_t>(bytes.size()));
    });
  };
  const std::string hint = "; re-run `textcam semantics`";
  replace_store("\x01\x02");
  EXPECT_EQ(open_all_message(), store +
                                    ": not a readable safetensors file (Error while deserializing header: "
                                    "header too small)" +
                                    hint);
  std::string header = "{\"__metadata__\": {\"format\": \"other\"}}";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  replace_store(bytes + header);
  EXPECT_EQ(open_all_message(), store + ": not a textcam semantics store");
}

TEST(ManifestParse, TypedJsonOverloadAndReprs) {
  const nlohmann::json data = read_manifest_text(kColor);
  const Manifest manifest = parse_manifest(data, "m.json");
  EXPECT_EQ(manifest.classes.size(), 8U);
  EXPECT_EQ(manifest.semantics->defaults.is_object(), true);
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(0.00001), "1e-05");
  EXPECT_EQ(python_float_repr(-2.5), "-2.5");
  EXPECT_EQ(python_float_repr(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(python_repr(OJson::parse(R"({"min": 1, "x": [true, null, "a'b", 1.5]})")),
            R"({'min': 1, 'x': [True, None, "a'b", 1.5]})");
  EXPECT_EQ(python_repr(OJson("tab\there")), "'tab\\there'");
}

TEST(ManifestParse, PythonJsonValues) {
  const OJson value = python_json_loads(R"({"a": 1, "b": 1.0, "c": 1e400, "d": "\ud83d\ude00", "a": 2})");
  EXPECT_TRUE(value["a"].is_number_integer());
  EXPECT_EQ(value["a"].get<int>(), 2);
  EXPECT_EQ(value.begin().key(), "a");  // first position, last value (as a Python dict)
  EXPECT_TRUE(value["b"].is_number_float());
  EXPECT_TRUE(std::isinf(value["c"].get<double>()));
  EXPECT_EQ(value["d"].get<std::string>(), "\xf0\x9f\x98\x80");
  EXPECT_TRUE(std::isnan(python_json_loads("NaN", true).get<double>()));
  EXPECT_THROW(python_json_loads("NaN", false), JsonError);
}

TEST(ManifestParse, EngineEntries) {
  OJson data = OJson::parse(read_text(kColor + "/manifest.json"));
  OJson engine = {{"file", "model.onnx"},
                  {"sha256", data["model"]["sha256"]},
                  {"size_bytes", data["model"]["size_bytes"]},
                  {"precision", "fp16"},
                  {"tensorrt", "10.8"},
                  {"compute_capability", "9.0"},
                  {"profile", {{"min", 1}, {"opt", 8}, {"max", 32}}}};
  data["engines"] = OJson::array({engine});
  const Manifest manifest = parse_manifest(data, "m.json");
  ASSERT_EQ(manifest.engines.size(), 1U);
  EXPECT_EQ(manifest.engines[0].opt_batch, 8);
  EXPECT_EQ(manifest.engines[0].concurrency, 1);
  data["engines"][0]["profile"] = {{"min", 1}, {"opt", 8}};
  EXPECT_EQ(message_of([&] { parse_manifest(data, "m.json"); }),
            "batch profile {'min': 1, 'opt': 8}: expected {min, opt, max} ('max')");
  data["engines"][0]["profile"] = {{"min", 9}, {"opt", 8}, {"max", 32}};
  EXPECT_EQ(message_of([&] { parse_manifest(data, "m.json"); }),
            "--min-batch 9 --opt-batch 8 --max-batch 32: expected min <= opt <= max");
  data["engines"][0].erase("precision");
  EXPECT_EQ(message_of([&] { parse_manifest(data, "m.json"); }),
            "m.json: engine entry lacks precision; rebuild the engine");
}
