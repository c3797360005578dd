// The bundle's manifest.json, typed and validated as textcam.runtime.manifest validates it
// (formats 1 and 2; the same one-line messages). Only what a host needs is kept typed; the rest
// is checked and dropped.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "python_text.hpp"

namespace textcam::detail {

constexpr int kFormatVersion = 2;
constexpr int64_t kMaxManifestBytes = int64_t{16} << 20;

// Largest file of each kind a bundle may name, as runtime/manifest.py FILE_CAPS.
// (bundle.cpp's kind_text table follows this order)
enum class FileKind { kModel, kSemantics, kFusedGraph, kEngine, kEngineOnnx, kSelftest };
int64_t file_cap(FileKind kind);

struct FileRef {
  std::string file;
  std::string sha256;
  std::optional<int64_t> size_bytes;  // absent only in format-1 sections
};

struct InputSection {
  int height = 0;
  int width = 0;
  std::array<double, 3> mean{};
  std::array<double, 3> std{};
  std::string resize = "stretch";
  double scale = 1.0 / 255.0;
};

struct TargetLayer {
  std::string name;
  std::string kind;
  int channels = 0;
  std::array<int, 2> grid{};
};

struct GraphSection {
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  bool has_activations = false;
};

struct SemanticsSection {
  FileRef store;
  int channels = 0;
  int dim = 0;
  int vocabulary_size = 0;
  nlohmann::json defaults = nlohmann::json::object();
};

struct FusedGraphSection {
  FileRef graph;
  int candidates = 0;
  std::string beta;
};

struct SelftestSection {
  FileRef data;
  int images = 0;
  std::map<std::string, double> tolerances;
  bool concepts = false;
};

struct EngineEntry {
  FileRef plan;
  std::string precision;
  std::string tensorrt;
  std::string compute_capability;
  int min_batch = 1, opt_batch = 1, max_batch = 1;
  int concurrency = 1;
  std::optional<std::string> model_sha256;  // the model.onnx it was built from (absent: not recorded)
};

struct Manifest {
  int format_version = kFormatVersion;
  FileRef model;
  std::optional<FileRef> model_external_data;  // the weights of a graph past protobuf's 2 GB, beside it
  int num_classes = 0;
  InputSection input;
  std::vector<std::string> classes;
  TargetLayer target_layer;
  std::string method;
  GraphSection graph;
  std::optional<SemanticsSection> semantics;
  std::optional<FusedGraphSection> fused_graph;
  std::optional<SelftestSection> selftest;
  std::vector<EngineEntry> engines;
};

// Validates a parsed manifest; `where` names it in errors (the manifest's path).
Manifest parse_manifest(const nlohmann::json& data, const std::string& where);
// The same on a manifest that keeps the file's key order (errors then name the same key Python's
// do when several keys are wrong; nlohmann::json sorts keys).
Manifest parse_manifest(const nlohmann::ordered_json& data, const std::string& where);

// Reads DIR/manifest.json: a directory, a regular file of at most 16 MB, strict JSON.
nlohmann::json read_manifest_text(const std::string& bundle_dir);
// The same, keeping the file's key order (what Bundle::open uses).
nlohmann::ordered_json read_manifest_ordered(const std::string& bundle_dir);

// ---- Python-compatible JSON (shared with safetensors.cpp and semantics.cpp) ----------------

// A JSON document that Python's json.loads refuses; what() is Python's message for it
// ("Expecting value: line 1 column 1 (char 0)", "nested too deeply", "NaN is not valid JSON", ...).
class JsonError : public std::runtime_error {
 public:
  explicit JsonError(const std::string& detail) : std::runtime_error(detail) {}
};

// Nesting deeper than this is refused as Python's json refuses it (a RecursionError near 1000;
// 991 is the deepest Bundle.open accepts when called from a shallow Python stack).
constexpr int kPythonJsonMaxDepth = 991;

// Parses UTF-8 text as Python's json.loads(bytes.decode("utf-8")) does: the same values (integers
// stay integers, 1e400 is inf, lone surrogates kept as WTF-8), the same refusals and messages.
// allow_constants: NaN/Infinity/-Infinity are values (Python's default) rather than errors
// ("NaN is not valid JSON", as read_manifest_text's parse_constant says). Never recurses deeper
// than max_depth.
nlohmann::ordered_json python_json_loads(const std::string& text, bool allow_constants = false,
                                         int max_depth = kPythonJsonMaxDepth);

// repr(), str(), len() as Python: python_text.hpp

}  // namespace textcam::detail
