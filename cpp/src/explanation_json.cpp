// Explanation -> JSON, the same keys as textcam.runtime.explanation.Explanation.to_dict.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "textcam/textcam.hpp"

namespace textcam {

std::string to_json(const Explanation& explanation) {
  nlohmann::json data;
  data["source"] = explanation.source.empty() ? nlohmann::json(nullptr) : nlohmann::json(explanation.source);
  data["class_index"] = explanation.class_index;
  data["label"] = explanation.label;
  data["score"] = explanation.score;
  data["heatmap_shape"] = {explanation.height, explanation.width};
  const auto& heat = explanation.heatmap;
  const auto peak = heat.empty() ? 0 : std::max_element(heat.begin(), heat.end()) - heat.begin();
  const int width = std::max(explanation.width, 1);
  data["heatmap_peak_xy"] = {peak % width, peak / width};
  data["concepts"] = nlohmann::json::array();
  for (const auto& found : explanation.concepts) {
    data["concepts"].push_back({{"phrase", found.phrase}, {"score", found.score}, {"weight", found.weight}});
  }
  data["groups"] = nlohmann::json::array();
  for (const auto& group : explanation.groups) {
    data["groups"].push_back({{"phrase", group.phrase}, {"channels", group.channels}, {"share", group.share}});
  }
  data["logits"] = explanation.logits;
  return data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace textcam
