// The interface every graph runner implements: a preprocessed float32 [B, 3, H, W] batch and the
// requested classes in, the joint graph's outputs by name out. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace textcam::detail {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> floats;  // float outputs (logits, cam, ...)
  std::vector<int64_t> ints;  // int64 outputs (class_index, concept_ids)
  bool is_int = false;
};

using Outputs = std::map<std::string, Tensor>;

class GraphRunner {
 public:
  virtual ~GraphRunner() = default;
  virtual Outputs run(const float* images, int64_t batch, int64_t channels, int64_t height, int64_t width,
                      const int64_t* target_class) const = 0;
  virtual std::string name() const = 0;
};

struct OrtOptions {
  std::string backend = "onnxruntime";  // onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt
  int intra_op_threads = 0;
  bool allow_spinning = true;
  std::string library;  // explicit libonnxruntime path or empty
};

// Loads libonnxruntime at run time (never linked) and opens `model_path`; `expected_inputs` are the
// manifest's graph inputs (the graph must take exactly those).
std::unique_ptr<GraphRunner> make_onnxruntime_runner(const std::string& model_path,
                                                     const std::vector<std::string>& expected_inputs,
                                                     const OrtOptions& options);

// "1.32.0": the version of the library make_onnxruntime_runner loaded (empty before).
std::string onnxruntime_version();

}  // namespace textcam::detail
