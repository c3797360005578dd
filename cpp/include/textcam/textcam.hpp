// libtextcam: the whole textcam explanation in C++17 (bundle, decode, preprocessing, graph,
// heatmap, concepts), for services that embed it. The Python runtime (textcam.runtime) is the
// reference; this core gives the same answers (same classes and phrase ids in the same order,
// numbers within float rounding) and the same one-line error messages.
//
//   textcam::Explainer explainer("color.textcam");
//   textcam::Explanation result = explainer.explain_file("cat.jpg");
//   std::cout << result.label << " " << result.score << "\n";
//   for (const auto& concept : result.concepts) std::cout << concept.phrase << "\n";
//
// An Explainer is safe to share between threads once constructed: every explain call reads it
// only, and ONNX Runtime sessions may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace textcam {

// The one exception type: a single line naming the input (file, argument) and what to do.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concept-selection settings; unset fields come from the bundle's manifest
// (semantics.defaults), then from the built-in defaults (top_k 5, candidates 64, l1 0.3, l2 0.2,
// steps 100, beta "contribution", group_channels 64, center true).
struct ConceptOptions {
  std::optional<std::string> beta;
  std::optional<int> top_k;
  std::optional<int> candidates;
  std::optional<double> l1;
  std::optional<double> l2;
  std::optional<int> steps;
  std::optional<int> group_channels;
  std::optional<bool> center;
};

struct Options {
  // "onnxruntime" (CPU), "onnxruntime-cuda", "onnxruntime-tensorrt" (execution providers of the
  // loaded onnxruntime), "tensorrt" (the bundle's engine; only in builds with TensorRT).
  std::string backend = "onnxruntime";
  int intra_op_threads = 0;         // 0: ONNX Runtime's default
  bool allow_spinning = true;       // false: idle ORT threads do not busy-wait
  std::string onnxruntime_library;  // libonnxruntime.so to load; empty: see docs (search order)
  std::string tensorrt_precision;   // backend "tensorrt": fp32, fp16 or bf16 engine; empty: the best built
  int batch_size = 16;              // images per graph call, 1..4096
  int64_t max_pixels = 72000000;    // largest image decoded (width * height)
  bool use_fused = true;            // use the bundle's fused ranking graph when it ranks as asked
  bool verify_checksums = true;     // sha256 of every bundle file read (false: a caller that checked them)
  ConceptOptions concepts;
};

struct Concept {
  std::string phrase;
  int64_t phrase_id = 0;
  float score = 0.0F;   // cosine with the image's evidence direction q
  double weight = 0.0;  // share of the selection weights alpha; 0 for fill-ins
};

struct Group {
  std::string phrase;
  int64_t phrase_id = 0;
  std::vector<int64_t> channels;  // largest contribution first
  double share = 0.0;
  int saliency_height = 0, saliency_width = 0;
  std::vector<float> saliency;  // [saliency_height, saliency_width], pre-ReLU
  std::vector<float> heatmap;   // [height, width] of the Explanation, in [0, 1]
};

struct Explanation {
  int64_t class_index = 0;
  std::string label;
  double score = 0.0;  // softmax probability of class_index
  std::vector<float> logits;
  int height = 0, width = 0;   // the original image's size (the graph input's for batches)
  std::vector<float> heatmap;  // [height, width] row-major, in [0, 1]
  std::vector<float> channel_weights;
  std::vector<float> channel_activation;
  std::vector<Concept> concepts;  // selection order (see the Python docs)
  std::vector<Group> groups;      // with groups = true
  std::string source;             // the file, for file inputs
};

// One file of explain_files: its explanation, or the one-line error that kept it out.
struct FileResult {
  std::string path;
  std::optional<Explanation> explanation;
  std::string error;
};

// A decoded 8-bit image: height x width x channels (1 gray, 3 RGB, 4 RGBA), rows contiguous.
struct ImageView {
  const uint8_t* pixels = nullptr;
  int height = 0;
  int width = 0;
  int channels = 3;
};

struct SelftestRow {
  std::string stage;    // "preprocess", "graph" or "end-to-end"
  std::string output;   // "input", "logits", ..., "concept_ids"
  std::string measure;  // "max abs", "max rel", "mismatches"
  double value = 0.0;
  double tolerance = 0.0;
  bool passed = false;
};

struct SelftestReport {
  int images = 0;
  std::vector<SelftestRow> rows;
  bool passed() const;
  std::string table() const;
};

struct BundleSummary {
  std::string path;
  std::vector<std::string> classes;
  std::string method;
  std::string layer;
  int channels = 0;
  int input_height = 0, input_width = 0;
  bool has_semantics = false;
  bool fused = false;  // the fused ranking graph runs
  std::string backend;
  std::string onnxruntime_version;
};

class Explainer {
 public:
  explicit Explainer(const std::string& bundle_dir, const Options& options = Options());
  ~Explainer();
  Explainer(Explainer&&) noexcept;
  Explainer& operator=(Explainer&&) noexcept;
  Explainer(const Explainer&) = delete;
  Explainer& operator=(const Explainer&) = delete;

  // class_index -1: the predicted class. groups: also split the map by phrase.
  Explanation explain_file(const std::string& path, int64_t class_index = -1, bool groups = false) const;
  Explanation explain_image(const ImageView& image, int64_t class_index = -1, bool groups = false) const;
  std::vector<Explanation> explain_images(const std::vector<ImageView>& images,
                                          const std::vector<int64_t>& class_index = {}, bool groups = false) const;
  // Bad files do not stop the others: each gets its error line.
  std::vector<FileResult> explain_files(const std::vector<std::string>& paths,
                                        const std::vector<int64_t>& class_index = {}, bool groups = false) const;
  // A preprocessed float32 [count, 3, H, W] batch (heatmaps stay at H x W).
  std::vector<Explanation> explain_batch(const float* batch, int64_t count,
                                         const std::vector<int64_t>& class_index = {}, bool groups = false) const;

  // The bundle's conformance self-test on this explainer.
  SelftestReport selftest() const;

  const BundleSummary& summary() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The explanation as JSON, as `textcam explain --json` prints one (no heatmap): source,
// class_index, label, score, heatmap_shape, heatmap_peak_xy, concepts, groups, logits.
std::string to_json(const Explanation& explanation);

// The library's version string ("0.1.0").
const char* version();

}  // namespace textcam
