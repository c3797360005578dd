// textcam::Explainer: the pipeline of textcam.runtime.explainer.Explainer in C++ (decode,
// preprocess, graph, output checks, softmax, concepts, map back, groups).
#include <algorithm>
#include <cmath>
#include <sstream>

#include "bundle.hpp"
#include "concepts.hpp"
#include "explainer_impl.hpp"
#include "heatmap.hpp"
#include "image_decode.hpp"
#include "preprocess.hpp"
#include "python_text.hpp"
#include "runner.hpp"
#include "semantics.hpp"
#include "textcam/textcam.hpp"

namespace textcam {
namespace detail {
namespace {

constexpr int kMaxBatchSize = 4096;
constexpr double kMapSlack = 1e-3;  // reduced-precision engines may overshoot [0, 1] by rounding
const char* const kBackends[] = {"onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"};
const char* const kChannelOutputs[] = {"logits", "class_index", "cam", "channel_weights", "channel_activation"};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string check_backend(const std::string& backend) {
  const bool known = std::find(std::begin(kBackends), std::end(kBackends), backend) != std::end(kBackends);
  if (!known) {
    throw Error("backend '" + backend +
                "': unknown; choose one of onnxruntime, onnxruntime-cuda, "
                "onnxruntime-tensorrt, tensorrt");
  }
#ifndef TEXTCAM_WITH_TENSORRT
  if (backend == "tensorrt") {
    throw Error(
        "backend 'tensorrt': not available here (this libtextcam was built without TensorRT; rebuild with "
        "-DTEXTCAM_WITH_TENSORRT=ON where TensorRT's headers are installed); available here: onnxruntime");
  }
#endif
  return backend;
}

}  // namespace

#ifndef TEXTCAM_WITH_TENSORRT
std::unique_ptr<GraphRunner> make_tensorrt_runner(const Bundle& /*bundle*/, const Options& /*options*/) {
  throw Error("backend 'tensorrt': this libtextcam was built without TensorRT");
}
#endif

Pipeline::Pipeline(const std::string& bundle_dir, const Options& opts) : options(opts) {
  check_backend(options.backend);
  if (options.batch_size < 1 || options.batch_size > kMaxBatchSize) {
    throw Error("batch_size=" + std::to_string(options.batch_size) + ": expected an integer from 1 to " +
                std::to_string(kMaxBatchSize));
  }
  if (options.max_pixels < 1) {
    throw Error("max_pixels=" + std::to_string(options.max_pixels) + ": expected a positive whole number of pixels");
  }
  bundle = std::make_unique<Bundle>(Bundle::open(bundle_dir, options.verify_checksums));
  const Manifest& info = bundle->info();
  if (info.semantics) {
    semantics = std::make_unique<SemanticsStore>(read_store(bundle->file(info.semantics->store, FileKind::kSemantics),
                                                            info.model.sha256, info.target_layer.channels));
    settings = ConceptSettings::resolve(info.semantics->defaults, options.concepts);
    mean = vocabulary_mean(semantics->text_embeddings, semantics->vocabulary(), semantics->dim);
  } else {
    settings = ConceptSettings::resolve(nlohmann::json::object(), options.concepts);
  }
  std::string graph = bundle->model_path();
  const auto& fused_section = info.fused_graph;
  if (semantics && fused_section && options.use_fused && options.backend == "onnxruntime" &&
      fused_section->beta == settings.beta &&
      fused_section->candidates >= std::min(settings.candidates, semantics->vocabulary())) {
    graph = bundle->file(fused_section->graph, FileKind::kFusedGraph);
    fused = true;
  }
  if (options.backend == "tensorrt") {
    runner = make_tensorrt_runner(*bundle, options);
  } else {
    OrtOptions ort;
    ort.backend = options.backend;
    ort.intra_op_threads = options.intra_op_threads;
    ort.allow_spinning = options.allow_spinning;
    ort.library = options.onnxruntime_library;
    runner = make_onnxruntime_runner(graph, info.graph.inputs, ort);
  }
  summary.path = bundle->path();
  summary.classes = info.classes;
  summary.method = info.method;
  summary.layer = info.target_layer.name;
  summary.channels = info.target_layer.channels;
  summary.input_height = info.input.height;
  summary.input_width = info.input.width;
  summary.has_semantics = semantics != nullptr;
  summary.fused = fused;
  summary.backend = options.backend;
  summary.onnxruntime_version = onnxruntime_version();
}

Pipeline::~Pipeline() = default;

std::vector<int64_t> Pipeline::check_class_index(const std::vector<int64_t>& class_index, size_t count) const {
  const auto classes = static_cast<int64_t>(bundle->info().classes.size());
  std::vector<int64_t> values;
  if (class_index.empty()) {
    values.assign(count, -1);
  } else if (class_index.size() == 1) {
    values.assign(count, class_index[0]);
  } else if (class_index.size() != count) {
    throw Error("class_index: " + std::to_string(class_index.size()) + " values for " + std::to_string(count) +
                " images");
  } else {
    values = class_index;
  }
  for (const int64_t value : values) {
    if (value < -1 || value >= classes) {
      throw Error("class_index " + std::to_string(value) + " out of range: the model has " + std::to_string(classes) +
                  " classes (0.." + std::to_string(classes - 1) + "; -1 or omitted = predicted)");
    }
  }
  return values;
}

void Pipeline::check_groups() const {
  if (!semantics) {
    throw Error(bundle->path() + ": channel groups need channel semantics; run `textcam semantics` on the bundle");
  }
  check_group_method(bundle->info().method);
  if (!bundle->info().graph.has_activations) {
    throw Error(bundle->path() +
                ": channel groups need the layer's activation maps, which this graph does not "
                "output; re-export with with_activations=True (textcam export --with-activations)");
  }
}

void Pipeline::check_outputs(const Outputs& outputs, int64_t batch) const {
  const Manifest& info = bundle->info();
  const std::string where = bundle->path() + ": the graph";
  const auto classes = static_cast<int64_t>(info.classes.size());
  const int64_t channels = info.target_layer.channels;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"logits", {batch, classes}},
      {"class_index", {batch}},
      {"cam", {batch, info.input.height, info.input.width}},
      {"channel_weights", {batch, channels}},
      {"channel_activation", {batch, channels}},
  };
  for (const auto& [name, shape] : expected) {
    const auto found = outputs.find(name);
    if (found == outputs.end()) {
      std::string message = where;
      message.append(" returned no '").append(name).append("' output; re-export the bundle");
      throw Error(message);
    }
    if (found->second.shape != shape) {
      std::string message = where;
      message.append(" returned ").append(name).append(" of shape ").append(shape_text(found->second.shape));
      message.append(", expected ").append(shape_text(shape)).append("; re-export the bundle");
      throw Error(message);
    }
  }
  const Tensor& index = outputs.at("class_index");
  bool bad_index = !index.is_int;
  for (const int64_t value : index.ints) bad_index = bad_index || value < 0 || value >= classes;
  if (bad_index) {
    std::ostringstream listed;
    listed << "[";
    for (size_t i = 0; i < index.ints.size(); ++i) listed << (i ? ", " : "") << index.ints[i];
    listed << "]";
    throw Error(where + " returned class index " + listed.str() + " outside 0.." + std::to_string(classes - 1) +
                "; re-export the bundle");
  }
  for (const char* name : {"logits", "channel_weights", "channel_activation", "cam"}) {
    const Tensor& tensor = outputs.at(name);
    const size_t per_row = batch ? tensor.floats.size() / static_cast<size_t>(batch) : 0;
    std::vector<int64_t> rows;
    for (int64_t row = 0; row < batch; ++row) {
      const float* begin = tensor.floats.data() + static_cast<size_t>(row) * per_row;
      if (!std::all_of(begin, begin + per_row, [](float v) { return std::isfinite(v); })) rows.push_back(row);
    }
    if (!rows.empty()) {
      if (rows.size() > 5) rows.resize(5);
      throw Error(where + " returned NaN or Inf in " + name + " for image(s) " + shape_text(rows) +
                  " of the batch (non-finite input, or a numerically broken graph/engine)");
    }
  }
  const auto& cam = outputs.at("cam").floats;
  if (!cam.empty()) {
    const auto [low, high] = std::minmax_element(cam.begin(), cam.end());
    if (*low < -kMapSlack || *high > 1 + kMapSlack) {
      char text[96];
      std::snprintf(text, sizeof text, "(%.3g..%.3g)", static_cast<double>(*low), static_cast<double>(*high));
      throw Error(where + " returned a heatmap outside [0, 1] " + text + "; re-export the bundle");
    }
  }
  const auto activations = outputs.find("activations");
  if (activations != outputs.end()) {
    const auto& shape = activations->second.shape;
    if (shape.size() != 4 || shape[0] != batch || shape[1] != channels) {
      throw Error(where + " returned activations of shape " + shape_text(shape) + "; re-export the bundle");
    }
  }
}

Selection Pipeline::select(const Outputs& outputs, int64_t batch, const ConceptSettings& chosen) const {
  const auto among = outputs.find("concept_ids");
  const int64_t* among_ids = nullptr;
  int among_n = 0;
  if (among != outputs.end() && among->second.is_int && among->second.shape.size() == 2 &&
      among->second.shape[0] == batch) {
    among_ids = among->second.ints.data();
    among_n = static_cast<int>(among->second.shape[1]);
  }
  return select_for_outputs(outputs.at("channel_weights").floats.data(), outputs.at("channel_activation").floats.data(),
                            static_cast<int>(batch), semantics->channels, semantics->channel_semantics,
                            semantics->text_embeddings, semantics->dim, chosen, mean, among_ids, among_n);
}

std::vector<Explanation> Pipeline::run(const float* batch, const std::vector<const Geometry*>& geometries,
                                       const std::vector<int64_t>& classes, const std::vector<std::string>& sources,
                                       bool groups) const {
  const Manifest& info = bundle->info();
  const int64_t height = info.input.height;
  const int64_t width = info.input.width;
  const int64_t image_size = 3 * height * width;
  const auto count = static_cast<int64_t>(classes.size());
  std::vector<Explanation> results;
  results.reserve(static_cast<size_t>(count));
  for (int64_t start = 0; start < count; start += options.batch_size) {
    const int64_t size = std::min<int64_t>(options.batch_size, count - start);
    Outputs outputs = runner->run(batch + start * image_size, size, 3, height, width, classes.data() + start);
    check_outputs(outputs, size);
    std::optional<Selection> selection;
    if (semantics) selection = select(outputs, size, settings);
    const auto& logits = outputs.at("logits").floats;
    const auto& cam = outputs.at("cam").floats;
    const auto& weights = outputs.at("channel_weights").floats;
    const auto& activation = outputs.at("channel_activation").floats;
    const size_t num_classes = info.classes.size();
    const auto channels = static_cast<size_t>(info.target_layer.channels);
    const auto map_size = static_cast<size_t>(height * width);
    for (int64_t row = 0; row < size; ++row) {
      const auto r = static_cast<size_t>(row);
      const auto at = static_cast<size_t>(start + row);
      Explanation result;
      result.class_index = outputs.at("class_index").ints[r];
      result.label = info.classes[static_cast<size_t>(result.class_index)];
      result.logits.assign(logits.begin() + static_cast<std::ptrdiff_t>(r * num_classes),
                           logits.begin() + static_cast<std::ptrdiff_t>((r + 1) * num_classes));
      double top = -INFINITY;
      for (const float value : result.logits) top = std::max(top, static_cast<double>(value));
      double total = 0.0;
      for (const float value : result.logits) total += std::exp(static_cast<double>(value) - top);
      result.score =
          std::exp(static_cast<double>(result.logits[static_cast<size_t>(result.class_index)]) - top) / total;
      const float* map = cam.data() + r * map_size;
      if (geometries[at] != nullptr) {
        result.heatmap = map_to_original(map, static_cast<int>(height), static_cast<int>(width), *geometries[at]);
        result.height = geometries[at]->height;
        result.width = geometries[at]->width;
      } else {
        result.heatmap.assign(map, map + map_size);
        result.height = static_cast<int>(height);
        result.width = static_cast<int>(width);
      }
      result.channel_weights.assign(weights.begin() + static_cast<std::ptrdiff_t>(r * channels),
                                    weights.begin() + static_cast<std::ptrdiff_t>((r + 1) * channels));
      result.channel_activation.assign(activation.begin() + static_cast<std::ptrdiff_t>(r * channels),
                                       activation.begin() + static_cast<std::ptrdiff_t>((r + 1) * channels));
      result.source = sources[at];
      if (selection) {
        const auto k = static_cast<size_t>(selection->k);
        for (size_t j = 0; j < k; ++j) {
          Concept concept_;
          concept_.phrase_id = selection->ids[r * k + j];
          concept_.phrase = semantics->phrases[static_cast<size_t>(concept_.phrase_id)];
          concept_.score = selection->scores[r * k + j];
          concept_.weight = selection->weights[r * k + j];
          result.concepts.push_back(std::move(concept_));
        }
        if (groups) result.groups = split(outputs, r, *selection, geometries[at]);
      }
      results.push_back(std::move(result));
    }
  }
  return results;
}

std::vector<Group> Pipeline::split(const Outputs& outputs, size_t row, const Selection& selection,
                                   const Geometry* geometry) const {
  const auto found = outputs.find("activations");
  if (found == outputs.end()) {
    throw Error(bundle->path() +
                ": the graph returned no activations; re-export with with_activations=True "
                "(textcam export --with-activations)");
  }
  const auto& shape = found->second.shape;
  const int channels = static_cast<int>(shape[1]);
  const int h = static_cast<int>(shape[2]);
  const int w = static_cast<int>(shape[3]);
  const size_t per_row = static_cast<size_t>(channels) * static_cast<size_t>(h) * static_cast<size_t>(w);
  const auto k = static_cast<size_t>(selection.k);
  std::vector<int64_t> selected(selection.ids.begin() + static_cast<std::ptrdiff_t>(row * k),
                                selection.ids.begin() + static_cast<std::ptrdiff_t>((row + 1) * k));
  const auto parts =
      channel_groups(outputs.at("channel_weights").floats.data() + row * static_cast<size_t>(channels),
                     outputs.at("channel_activation").floats.data() + row * static_cast<size_t>(channels),
                     found->second.floats.data() + row * per_row, channels, h, w, semantics->channel_semantics,
                     semantics->text_embeddings, semantics->dim, selected, settings.group_channels);
  const Manifest& info = bundle->info();
  std::vector<Group> groups;
  for (const auto& part : parts) {
    Group group;
    group.phrase_id = part.phrase_id;
    group.phrase = semantics->phrases[static_cast<size_t>(part.phrase_id)];
    group.channels = part.channels;
    group.share = part.share;
    group.saliency_height = h;
    group.saliency_width = w;
    group.saliency = part.saliency;
    auto heat = finish_map(part.saliency_f64, h, w, info.input.height, info.input.width);
    group.heatmap =
        geometry ? map_to_original(heat.data(), info.input.height, info.input.width, *geometry) : std::move(heat);
    groups.push_back(std::move(group));
  }
  return groups;
}

}  // namespace detail

// ---- the public class -----------------------------------------------------------------------

struct Explainer::Impl {
  detail::Pipeline pipeline;
  Impl(const std::string& dir, const Options& options) : pipeline(dir, options) {}
};

Explainer::Explainer(const std::string& bundle_dir, const Options& options)
    : impl_(std::make_unique<Impl>(bundle_dir, options)) {}
Explainer::~Explainer() = default;
Explainer::Explainer(Explainer&&) noexcept = default;
Explainer& Explainer::operator=(Explainer&&) noexcept = default;

const BundleSummary& Explainer::summary() const { return impl_->pipeline.summary; }

Explanation Explainer::explain_file(const std::string& path, int64_t class_index, bool groups) const {
  auto results = explain_files({path}, {class_index}, groups);
  if (!results[0].explanation) throw Error(results[0].error);
  return std::move(*results[0].explanation);
}

Explanation Explainer::explain_image(const ImageView& image, int64_t class_index, bool groups) const {
  return std::move(explain_images({image}, {class_index}, groups)[0]);
}

std::vector<Explanation> Explainer::explain_images(const std::vector<ImageView>& images,
                                                   const std::vector<int64_t>& class_index, bool groups) const {
  const auto& p = impl_->pipeline;
  if (groups) p.check_groups();
  if (images.empty()) return {};
  const auto classes = p.check_class_index(class_index, images.size());
  const auto& input = p.bundle->info().input;
  const size_t image_size = 3 * static_cast<size_t>(input.height) * static_cast<size_t>(input.width);
  std::vector<float> batch(image_size * images.size());
  std::vector<detail::Geometry> geometries(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const auto rgb = detail::from_view(images[i], p.options.max_pixels);
    geometries[i] = detail::preprocess(rgb, input, batch.data() + i * image_size);
  }
  std::vector<const detail::Geometry*> pointers;
  pointers.reserve(geometries.size());
  for (const auto& geometry : geometries) pointers.push_back(&geometry);
  return p.run(batch.data(), pointers, classes, std::vector<std::string>(images.size()), groups);
}

std::vector<FileResult> Explainer::explain_files(const std::vector<std::string>& paths,
                                                 const std::vector<int64_t>& class_index, bool groups) const {
  const auto& p = impl_->pipeline;
  if (groups) p.check_groups();
  const auto classes = p.check_class_index(class_index, paths.size());
  const auto& input = p.bundle->info().input;
  const size_t image_size = 3 * static_cast<size_t>(input.height) * static_cast<size_t>(input.width);
  std::vector<FileResult> results(paths.size());
  const auto batch_size = static_cast<size_t>(p.options.batch_size);
  for (size_t start = 0; start < paths.size(); start += batch_size) {
    const size_t stop = std::min(paths.size(), start + batch_size);
    std::vector<float> batch;
    std::vector<detail::Geometry> geometries;
    std::vector<size_t> kept;
    std::vector<int64_t> kept_classes;
    std::vector<std::string> sources;
    geometries.reserve(stop - start);
    for (size_t i = start; i < stop; ++i) {
      results[i].path = paths[i];
      try {
        const auto rgb = detail::load_image(paths[i], p.options.max_pixels);
        batch.resize(batch.size() + image_size);
        geometries.push_back(detail::preprocess(rgb, input, batch.data() + batch.size() - image_size));
        kept.push_back(i);
        kept_classes.push_back(classes[i]);
        sources.push_back(paths[i]);
      } catch (const Error& error) {
        results[i].error = error.what();
      }
    }
    if (kept.empty()) continue;
    std::vector<const detail::Geometry*> pointers;
    pointers.reserve(geometries.size());
    for (const auto& geometry : geometries) pointers.push_back(&geometry);
    auto explained = p.run(batch.data(), pointers, kept_classes, sources, groups);
    for (size_t j = 0; j < kept.size(); ++j) results[kept[j]].explanation = std::move(explained[j]);
  }
  return results;
}

std::vector<Explanation> Explainer::explain_batch(const float* batch, int64_t count,
                                                  const std::vector<int64_t>& class_index, bool groups) const {
  const auto& p = impl_->pipeline;
  if (groups) p.check_groups();
  if (count < 0 || (count > 0 && batch == nullptr)) throw Error("batch: expected count >= 0 and a non-null buffer");
  const auto classes = p.check_class_index(class_index, static_cast<size_t>(count));
  const auto& input = p.bundle->info().input;
  const size_t values =
      3 * static_cast<size_t>(input.height) * static_cast<size_t>(input.width) * static_cast<size_t>(count);
  std::vector<int64_t> bad;
  const size_t per_image = values / std::max<size_t>(1, static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const float* begin = batch + static_cast<size_t>(i) * per_image;
    if (!std::all_of(begin, begin + per_image, [](float v) { return std::isfinite(v); })) bad.push_back(i);
  }
  if (!bad.empty()) {
    std::ostringstream listed;
    for (size_t i = 0; i < std::min<size_t>(bad.size(), 5); ++i) listed << (i ? ", " : "") << bad[i];
    throw Error("float batch holds NaN or Inf values (image " + listed.str() + (bad.size() > 5 ? " ..." : "") + " of " +
                std::to_string(count) + "); the graph would return a meaningless label");
  }
  return p.run(batch, std::vector<const detail::Geometry*>(static_cast<size_t>(count), nullptr), classes,
               std::vector<std::string>(static_cast<size_t>(count)), groups);
}

SelftestReport Explainer::selftest() const { return detail::run_selftest(impl_->pipeline); }

const char* version() { return TEXTCAM_VERSION; }

}  // namespace textcam
