// The channel semantics store (semantics-*.safetensors), read and checked as
// textcam.runtime.semantics_file.read_store does.
#pragma once

#include <string>
#include <vector>

namespace textcam::detail {

struct SemanticsStore {
  int channels = 0;                      // C
  int dim = 0;                           // D
  std::vector<float> channel_semantics;  // [C, D], unit rows
  std::vector<float> text_embeddings;    // [V, D], unit rows
  std::vector<std::string> phrases;      // V
  int vocabulary() const { return static_cast<int>(phrases.size()); }
};

SemanticsStore read_store(const std::string& path, const std::string& model_sha256, int channels);

}  // namespace textcam::detail
