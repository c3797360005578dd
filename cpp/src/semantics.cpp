// read_store: runtime/semantics_file.py's read_store, with the same checks and messages.
#include "semantics.hpp"

#include <sys/stat.h>

#include <cmath>
#include <map>
#include <utility>

#include "manifest.hpp"
#include "python_text.hpp"
#include "safetensors.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {

namespace {

constexpr const char* kStoreFormat = "textcam-semantics";
constexpr const char* kHint = "; re-run `textcam semantics`";

// numpy's name for the dtypes safetensors' numpy loader cannot build (get_tensor's TypeError).
const char* numpy_unsupported(const std::string& dtype) {
  if (dtype == "BF16") return "bfloat16";
  if (dtype.rfind("F8_", 0) == 0 || dtype == "F4" || dtype.rfind("F6_", 0) == 0) return "float8";
  return nullptr;
}

bool all_ascii_digits(const std::string& text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

SemanticsStore read_store(const std::string& path_in, const std::string& model_sha256, int channels) {
  const std::string path = python_path(path_in);
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    throw Error(path + ": missing; run `textcam semantics` to build it");
  }
  const SafetensorsFile file = SafetensorsFile::read(path, kHint, file_cap(FileKind::kSemantics));
  for (const auto& name : file.names()) {
    if (const char* numpy = numpy_unsupported(file.tensor(name).dtype)) {
      throw Error(path + ": not a readable safetensors file (data type '" + numpy + "' not understood)" + kHint);
    }
  }
  const auto& metadata = file.metadata();
  auto meta = [&](const std::string& key) -> const std::string* {
    auto found = metadata.find(key);
    return found == metadata.end() ? nullptr : &found->second;
  };
  if (meta("format") == nullptr || *meta("format") != kStoreFormat) {
    throw Error(path + ": not a textcam semantics store");
  }
  const std::string version = meta("format_version") ? *meta("format_version") : "0";
  bool newer = !all_ascii_digits(version);
  if (!newer) {
    const size_t first = version.find_first_not_of('0');
    const std::string digits = first == std::string::npos ? "0" : version.substr(first);
    newer = digits.size() > 1 || digits[0] > '1';  // STORE_VERSION 1
  }
  if (newer) throw Error(path + ": store format " + version + " is newer than this textcam; upgrade");
  if (!file.has("channel_semantics") || !file.has("text_embeddings")) {
    throw Error(path + ": lacks channel_semantics or text_embeddings" + kHint);
  }
  std::vector<std::string> phrases;
  bool phrases_ok = true;
  {
    std::string problem;
    try {
      if (meta("phrases") == nullptr) {
        problem = "'phrases'";  // str(KeyError('phrases'))
      } else {
        const nlohmann::ordered_json parsed = python_json_loads(*meta("phrases"), true);
        if (!parsed.is_array()) {
          problem = "phrases is not a list";
        } else {
          for (const auto& phrase : parsed) {
            if (!phrase.is_string() || phrase.get_ref<const std::string&>().empty()) {
              phrases_ok = false;
              phrases.emplace_back();
            } else {
              phrases.push_back(phrase.get<std::string>());
            }
          }
          for (const char* key : {"templates", "lda", "probe"}) {
            if (meta(key) != nullptr) python_json_loads(*meta(key), true);
          }
        }
      }
    } catch (const JsonError& exc) {
      problem = exc.what();
    }
    if (!problem.empty()) throw Error(path + ": damaged metadata (" + problem + ")" + kHint);
  }
  const TensorView& semantics = file.tensor("channel_semantics");
  const TensorView& text = file.tensor("text_embeddings");
  // _check_shapes
  if (semantics.shape.size() != 2 || text.shape.size() != 2) {
    throw Error(path + ": channel_semantics and text_embeddings must be 2-D arrays");
  }
  if (semantics.shape[1] != text.shape[1]) {
    throw Error(path + ": channel semantics have dimension " + std::to_string(semantics.shape[1]) +
                " but text embeddings " + std::to_string(text.shape[1]) + "; both must come from the same CLIP model");
  }
  if (text.shape[0] != static_cast<int64_t>(phrases.size())) {
    throw Error(path + ": " + std::to_string(text.shape[0]) + " text embeddings for " + std::to_string(phrases.size()) +
                " phrases");
  }
  if (!phrases_ok) throw Error(path + ": phrases must be non-empty strings" + kHint);
  SemanticsStore store;
  std::pair<const char*, const TensorView*> arrays[] = {{"channel_semantics", &semantics}, {"text_embeddings", &text}};
  for (const auto& [name, array] : arrays) {
    std::vector<float> values;
    try {
      values = array->to_float();
    } catch (const Error&) {
      throw Error(path + ": not a readable safetensors file (data type '" + array->dtype + "' not understood)" + kHint);
    }
    bool finite = !values.empty();
    for (float v : values) finite = finite && std::isfinite(v);
    if (!finite) throw Error(path + ": " + name + " is empty or holds NaN/Inf values" + kHint);
    (array == &semantics ? store.channel_semantics : store.text_embeddings) = std::move(values);
  }
  if (!model_sha256.empty()) {
    const std::string* recorded = meta("model_sha256");
    if (recorded == nullptr || *recorded != model_sha256) {
      throw Error(path + ": computed for another model (model.onnx checksum differs)" + kHint);
    }
  }
  if (channels > 0 && semantics.shape[0] != channels) {
    throw Error(path + ": semantics were computed for a layer with " + std::to_string(semantics.shape[0]) +
                " channels, this model's layer has " + std::to_string(channels) + ": re-run `textcam semantics`");
  }
  store.channels = static_cast<int>(semantics.shape[0]);
  store.dim = static_cast<int>(semantics.shape[1]);
  store.phrases = std::move(phrases);
  return store;
}

}  // namespace textcam::detail
