// The bundle's conformance self-test through this core (textcam.runtime.selftest.run_selftest):
// the stored input through the graph and selection ("graph" rows), the stored images through
// this core's preprocessing, graph and selection ("preprocess" and "end-to-end" rows).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <sstream>

#include "explainer_impl.hpp"
#include "image_decode.hpp"
#include "safetensors.hpp"

namespace textcam {
namespace detail {
namespace {

constexpr const char* kFormat = "textcam-selftest";
constexpr int kVersion = 1;
constexpr const char* kHint = "re-run `textcam export` (or `textcam semantics`) to rebuild the self-test";
const char* const kGraphOutputs[] = {"logits", "class_index", "cam", "channel_weights", "channel_activation"};
// Built on first use (a namespace-scope std::map could throw before main, where nothing catches it).
const std::map<std::string, std::string>& measures() {
  static const std::map<std::string, std::string> kMeasures = {
      {"input", "max abs"},           {"logits", "max rel"},
      {"class_index", "mismatches"},  {"cam", "max abs"},
      {"channel_weights", "max rel"}, {"channel_activation", "max rel"},
      {"concept_ids", "mismatches"},  {"concept_scores", "max abs"},
  };
  return kMeasures;
}

// One output for N images: floats or ints, [N, per-image values].
struct Values {
  std::vector<int64_t> shape;
  std::vector<double> data;
};

Values from_tensor(const TensorView& tensor) {
  Values values;
  values.shape = tensor.shape;
  if (tensor.dtype == "I64") {
    for (const int64_t v : tensor.to_int64()) values.data.push_back(static_cast<double>(v));
  } else {
    for (const float v : tensor.to_float()) values.data.push_back(static_cast<double>(v));
  }
  return values;
}

Values from_output(const Tensor& tensor) {
  Values values;
  values.shape = tensor.shape;
  if (tensor.is_int) {
    for (const int64_t v : tensor.ints) values.data.push_back(static_cast<double>(v));
  } else {
    for (const float v : tensor.floats) values.data.push_back(static_cast<double>(v));
  }
  return values;
}

void append(Values& into, const Values& part) {
  if (into.shape.empty()) {
    into = part;
    return;
  }
  into.shape[0] += part.shape[0];
  into.data.insert(into.data.end(), part.data.begin(), part.data.end());
}

double measure(const std::string& name, const Values& reference, const Values& candidate) {
  if (reference.shape != candidate.shape) return std::numeric_limits<double>::infinity();
  const std::string& kind = measures().at(name);
  if (kind == "mismatches") {
    double count = 0;
    for (size_t i = 0; i < reference.data.size(); ++i) count += reference.data[i] != candidate.data[i] ? 1 : 0;
    return count;
  }
  if (reference.data.empty()) return 0.0;
  const size_t rows = static_cast<size_t>(reference.shape[0]);
  const size_t per_row = reference.data.size() / std::max<size_t>(rows, 1);
  double worst = 0.0;
  for (size_t row = 0; row < rows; ++row) {
    double diff = 0.0;
    double scale = 0.0;
    for (size_t i = row * per_row; i < (row + 1) * per_row; ++i) {
      const double d = std::abs(candidate.data[i] - reference.data[i]);
      if (!std::isfinite(d)) return std::numeric_limits<double>::infinity();
      diff = std::max(diff, d);
      scale = std::max(scale, std::abs(reference.data[i]));
    }
    worst = std::max(worst, kind == "max abs" ? diff : diff / std::max(scale, 1e-30));
  }
  return worst;
}

struct SelftestData {
  std::vector<RgbImage> images;
  std::map<std::string, Values> expected;
  std::vector<float> input;  // the stored [N, 3, H, W]
  std::map<std::string, double> tolerances;
  std::optional<ConceptSettings> settings;
};

SelftestData read_selftest(const Pipeline& pipeline) {
  const Bundle& bundle = *pipeline.bundle;
  const Manifest& info = bundle.info();
  if (!info.selftest) {
    throw Error(bundle.path() +
                ": the bundle has no self-test (built by an older textcam); re-run `textcam export` "
                "to add one");
  }
  const std::string path = bundle.file(info.selftest->data, FileKind::kSelftest);
  const auto file = SafetensorsFile::read(path, std::string("; ") + kHint);
  auto fail = [&](const std::string& problem) { return Error(path + ": " + problem + "; " + kHint); };
  const auto& metadata = file.metadata();
  auto meta = [&](const char* key) {
    const auto found = metadata.find(key);
    return found == metadata.end() ? std::string() : found->second;
  };
  if (meta("format") != kFormat) throw fail(std::string("not a textcam self-test (format is not '") + kFormat + "')");
  const std::string version = meta("format_version");
  if (version.empty() || !std::all_of(version.begin(), version.end(), ::isdigit) || std::stoll(version) < 1) {
    throw fail("has no valid format_version");
  }
  if (std::stoll(version) > kVersion) {
    throw Error(path + ": self-test format " + version + " is newer than this textcam reads (" +
                std::to_string(kVersion) + "); upgrade textcam");
  }
  if (meta("model_sha256") != info.model.sha256) {
    throw fail("was computed for another graph (model_sha256 differs from " + info.model.file + "'s)");
  }
  const int count = info.selftest->images;
  const int64_t classes = static_cast<int64_t>(info.classes.size());
  const int64_t channels = info.target_layer.channels;
  auto tensor = [&](const std::string& name, const char* dtype,
                    const std::vector<int64_t>& shape) -> const TensorView& {
    if (!file.has(name)) throw fail("lacks the tensor '" + name + "'");
    const TensorView& value = file.tensor(name);
    bool fits = value.dtype == dtype && value.shape.size() == shape.size();
    for (size_t i = 0; fits && i < shape.size(); ++i) fits = shape[i] < 0 || shape[i] == value.shape[i];
    if (!fits) throw fail("tensor '" + name + "' has the wrong dtype or shape");
    if (value.dtype == "F32") {
      const auto floats = value.to_float();
      if (!std::all_of(floats.begin(), floats.end(), [](float v) { return std::isfinite(v); })) {
        throw fail("tensor '" + name + "' holds NaN or Inf");
      }
    }
    return value;
  };
  SelftestData data;
  for (int index = 0; index < count; ++index) {
    const auto& image = tensor("image_" + std::to_string(index), "U8", {-1, -1, 3});
    if (image.shape[0] == 0 || image.shape[1] == 0) throw fail("tensor 'image_" + std::to_string(index) + "' is empty");
    RgbImage rgb;
    rgb.height = static_cast<int>(image.shape[0]);
    rgb.width = static_cast<int>(image.shape[1]);
    rgb.pixels.assign(image.data, image.data + image.size_bytes);
    data.images.push_back(std::move(rgb));
  }
  if (file.has("image_" + std::to_string(count))) {
    throw fail("holds more images than the manifest's selftest.images (" + std::to_string(count) + ")");
  }
  const int64_t n = count;
  const int64_t h = info.input.height;
  const int64_t w = info.input.width;
  data.input = tensor("input", "F32", {n, 3, h, w}).to_float();
  data.expected["logits"] = from_tensor(tensor("logits", "F32", {n, classes}));
  data.expected["class_index"] = from_tensor(tensor("class_index", "I64", {n}));
  data.expected["cam"] = from_tensor(tensor("cam", "F32", {n, h, w}));
  data.expected["channel_weights"] = from_tensor(tensor("channel_weights", "F32", {n, channels}));
  data.expected["channel_activation"] = from_tensor(tensor("channel_activation", "F32", {n, channels}));
  for (const double value : data.expected["class_index"].data) {
    if (value < 0 || value >= static_cast<double>(classes)) {
      throw fail("tensor 'class_index' holds a class outside 0.." + std::to_string(classes - 1));
    }
  }
  if (info.selftest->concepts) {
    if (!info.semantics) throw fail("has concepts but the bundle has no channel semantics");
    if (meta("semantics_sha256") != info.semantics->store.sha256) {
      throw fail("was computed with other channel semantics (semantics_sha256 differs from " +
                 info.semantics->store.file + "'s)");
    }
    const auto& ids = tensor("concept_ids", "I64", {n, -1});
    data.expected["concept_ids"] = from_tensor(ids);
    data.expected["concept_scores"] = from_tensor(tensor("concept_scores", "F32", {n, ids.shape[1]}));
    const int vocabulary = info.semantics->vocabulary_size;
    for (const double id : data.expected["concept_ids"].data) {
      if (id < 0 || id >= vocabulary) {
        throw fail("tensor 'concept_ids' holds ids outside the vocabulary (0.." + std::to_string(vocabulary - 1) + ")");
      }
    }
    try {
      const auto stored = nlohmann::json::parse(meta("concept_settings"));
      if (!stored.is_object()) throw Error("not an object");
      data.settings = ConceptSettings::resolve(stored, ConceptOptions());
    } catch (const std::exception& exc) {
      throw fail(std::string("damaged concept_settings metadata (") + exc.what() + ")");
    }
    const int listed = std::min({data.settings->top_k, data.settings->candidates, vocabulary});
    if (ids.shape[1] != listed) {
      throw fail("tensor 'concept_ids' has " + std::to_string(ids.shape[1]) +
                 " phrases per image; its concept_settings list " + std::to_string(listed));
    }
  } else if (file.has("concept_ids")) {
    throw fail("has concepts but the manifest's selftest.concepts is false");
  }
  data.tolerances = info.selftest->tolerances;
  std::vector<std::string> missing;
  std::vector<std::string> needed = {"input"};
  for (const auto& [name, _] : data.expected) needed.push_back(name);
  for (const auto& [name, _] : data.expected) needed.push_back("end_to_end." + name);
  for (const auto& key : needed) {
    if (data.tolerances.count(key) == 0) missing.push_back(key);
  }
  if (!missing.empty()) {
    std::string listed;
    for (size_t i = 0; i < missing.size(); ++i) listed += (i ? ", " : "") + missing[i];
    throw Error(bundle.path() + "/manifest.json: 'selftest.tolerances' lacks " + listed + "; " + kHint);
  }
  return data;
}

// The host's graph on `batch` (predicted classes) in batch_size chunks, plus its selection.
std::map<std::string, Values> graph_and_concepts(const Pipeline& pipeline, const std::vector<float>& batch,
                                                 int64_t count, const std::optional<ConceptSettings>& settings) {
  const auto& input = pipeline.bundle->info().input;
  const int64_t image_size = 3 * int64_t{input.height} * input.width;
  std::map<std::string, Values> result;
  for (int64_t start = 0; start < count; start += pipeline.options.batch_size) {
    const int64_t size = std::min<int64_t>(pipeline.options.batch_size, count - start);
    const std::vector<int64_t> classes(static_cast<size_t>(size), -1);
    const Outputs outputs =
        pipeline.runner->run(batch.data() + start * image_size, size, 3, input.height, input.width, classes.data());
    for (const char* name : kGraphOutputs) {
      if (outputs.count(name) == 0) {
        throw Error("backend '" + pipeline.options.backend + "': the graph returned no " + name +
                    "; it does not run the bundle's graph");
      }
      append(result[name], from_output(outputs.at(name)));
    }
    if (settings) {
      const Selection selection = pipeline.select(outputs, size, *settings);
      Values ids{{size, selection.k}, {}};
      Values scores{{size, selection.k}, {}};
      for (const int64_t id : selection.ids) ids.data.push_back(static_cast<double>(id));
      for (const float score : selection.scores) scores.data.push_back(static_cast<double>(score));
      append(result["concept_ids"], ids);
      append(result["concept_scores"], scores);
    }
  }
  return result;
}

void compare(const std::string& stage, const std::map<std::string, Values>& reference,
             const std::map<std::string, Values>& candidate, const std::map<std::string, double>& tolerances,
             std::vector<SelftestRow>& rows) {
  for (const char* name : {"input", "logits", "class_index", "cam", "channel_weights", "channel_activation",
                           "concept_ids", "concept_scores"}) {
    const auto expected = reference.find(name);
    if (expected == reference.end()) continue;
    const std::string key =
        (stage == "end-to-end" && std::string(name) != "input") ? std::string("end_to_end.") + name : std::string(name);
    const auto found = candidate.find(name);
    SelftestRow row;
    row.stage = stage;
    row.output = name;
    row.measure = measures().at(name);
    row.value = found == candidate.end() ? std::numeric_limits<double>::infinity()
                                         : measure(name, expected->second, found->second);
    row.tolerance = tolerances.at(key);
    row.passed = row.value <= row.tolerance;
    rows.push_back(row);
  }
}

}  // namespace

SelftestReport run_selftest(const Pipeline& pipeline) {
  const SelftestData data = read_selftest(pipeline);
  if (data.settings && !pipeline.semantics) {
    throw Error(pipeline.bundle->path() + ": the self-test checks concepts but the host loaded no semantics");
  }
  const auto count = static_cast<int64_t>(data.images.size());
  const auto graph = graph_and_concepts(pipeline, data.input, count, data.settings);
  const auto& input = pipeline.bundle->info().input;
  const size_t image_size = 3 * static_cast<size_t>(input.height) * static_cast<size_t>(input.width);
  std::vector<float> batch(image_size * data.images.size());
  for (size_t i = 0; i < data.images.size(); ++i) preprocess(data.images[i], input, batch.data() + i * image_size);
  const auto end_to_end = graph_and_concepts(pipeline, batch, count, data.settings);
  std::map<std::string, Values> outputs = data.expected;
  const Values stored_input{{count, 3, input.height, input.width},
                            std::vector<double>(data.input.begin(), data.input.end())};
  const Values own_input{{count, 3, input.height, input.width}, std::vector<double>(batch.begin(), batch.end())};
  SelftestReport report;
  report.images = static_cast<int>(count);
  compare("preprocess", {{"input", stored_input}}, {{"input", own_input}}, data.tolerances, report.rows);
  compare("graph", outputs, graph, data.tolerances, report.rows);
  compare("end-to-end", outputs, end_to_end, data.tolerances, report.rows);
  return report;
}

}  // namespace detail

bool SelftestReport::passed() const {
  return !rows.empty() && std::all_of(rows.begin(), rows.end(), [](const SelftestRow& row) { return row.passed; });
}

std::string SelftestReport::table() const {
  std::ostringstream out;
  char line[160];
  std::snprintf(line, sizeof line, "%-11s %-19s %-11s %12s %12s  %s\n", "stage", "output", "measure", "value",
                "tolerance", "result");
  out << line;
  for (const auto& row : rows) {
    std::snprintf(line, sizeof line, "%-11s %-19s %-11s %12.3g %12.3g  %s\n", row.stage.c_str(), row.output.c_str(),
                  row.measure.c_str(), row.value, row.tolerance, row.passed ? "ok" : "FAIL");
    out << line;
  }
  out << (passed() ? "self-test passed" : "self-test FAILED") << "\n";
  return out.str();
}

}  // namespace textcam
