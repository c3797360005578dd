// The Explainer's state and pipeline steps, shared by explainer.cpp, selftest.cpp and the C API.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "concepts.hpp"
#include "preprocess.hpp"
#include "runner.hpp"
#include "semantics.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {

struct Pipeline {
  Pipeline(const std::string& bundle_dir, const Options& options);
  ~Pipeline();

  Options options;
  std::unique_ptr<Bundle> bundle;
  std::unique_ptr<SemanticsStore> semantics;
  ConceptSettings settings;
  std::vector<float> mean;  // the vocabulary's mean embedding (centering)
  bool fused = false;
  std::unique_ptr<GraphRunner> runner;
  BundleSummary summary;

  std::vector<int64_t> check_class_index(const std::vector<int64_t>& class_index, size_t count) const;
  void check_groups() const;
  void check_outputs(const Outputs& outputs, int64_t batch) const;
  Selection select(const Outputs& outputs, int64_t batch, const ConceptSettings& chosen) const;
  // batch: float32 [count, 3, H, W]; geometries: nullptr keeps a map at graph resolution.
  std::vector<Explanation> run(const float* batch, const std::vector<const Geometry*>& geometries,
                               const std::vector<int64_t>& classes, const std::vector<std::string>& sources,
                               bool groups) const;
  std::vector<Group> split(const Outputs& outputs, size_t row, const Selection& selection,
                           const Geometry* geometry) const;
};

SelftestReport run_selftest(const Pipeline& pipeline);

// The bundle's TensorRT engine (tensorrt_runner.cpp, in builds with TensorRT only).
std::unique_ptr<GraphRunner> make_tensorrt_runner(const Bundle& bundle, const Options& options);

}  // namespace textcam::detail
