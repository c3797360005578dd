// From channel weights to words, as textcam.runtime.concepts (same ids in the same order,
// scores within float rounding): aggregate q = normalize(beta @ S), rank by (cosine desc, id asc),
// diverse selection (FISTA on the centered candidates, Gershgorin step, gradient restart,
// alpha in [0, 10], l1 relative to the best cosine), channel groups.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "textcam/textcam.hpp"

namespace textcam::detail {

struct ConceptSettings {
  std::string beta = "contribution";
  int top_k = 5;
  int candidates = 64;
  double l1 = 0.3;
  double l2 = 0.2;
  int steps = 100;
  int group_channels = 64;
  bool center = true;

  // Built-in defaults, then the manifest's `defaults` object, then the caller's options; checked
  // with the Python messages ("top_k=0: expected an integer from 1 to 256").
  static ConceptSettings resolve(const nlohmann::json& defaults, const ConceptOptions& overrides);
  void check() const;
};

struct Selection {
  int rows = 0;
  int k = 0;
  std::vector<int64_t> ids;     // [rows, k]
  std::vector<float> scores;    // [rows, k]
  std::vector<double> weights;  // [rows, k]
};

// The phrases for a batch of graph outputs. weights/activation: [B, C]; S: [C, D]; T: [V, D];
// vocabulary_mean: [D] (T's row mean, float32 as numpy computes it); among: the fused graph's
// concept_ids [B, among_n] or nullptr.
Selection select_for_outputs(const float* weights, const float* activation, int batch, int channels,
                             const std::vector<float>& S, const std::vector<float>& T, int dim,
                             const ConceptSettings& settings, const std::vector<float>& vocabulary_mean,
                             const int64_t* among, int among_n);

// T's row mean in float32 (numpy's T.mean(axis=0) on float32: pairwise sums).
std::vector<float> vocabulary_mean(const std::vector<float>& T, int vocabulary, int dim);

struct GroupResult {
  int64_t phrase_id = 0;
  std::vector<int64_t> channels;
  double share = 0.0;
  std::vector<float> saliency;       // [h, w]
  std::vector<double> saliency_f64;  // [h, w]: the same sum before the float32 cast (finish_map's input)
};

// One image's map split by the selected phrases (runtime.concepts.channel_groups, without the map
// finish): groups by share, largest first. activations: [C, h, w].
std::vector<GroupResult> channel_groups(const float* weights_row, const float* activation_row, const float* activations,
                                        int channels, int h, int w, const std::vector<float>& S,
                                        const std::vector<float>& T, int dim, const std::vector<int64_t>& selected,
                                        int max_channels);

// channel_groups with everything Python returns: the groups, and `rest` (float32 [h, w]: the
// sum w_j A_j over the channels no group took), for a given coverage (Python's default 0.95).
struct GroupSplit {
  std::vector<GroupResult> groups;
  std::vector<float> rest;
};
GroupSplit channel_groups_split(const float* weights_row, const float* activation_row, const float* activations,
                                int channels, int h, int w, const std::vector<float>& S, const std::vector<float>& T,
                                int dim, const std::vector<int64_t>& selected, int max_channels,
                                double coverage = 0.95);

// The steps of select_for_outputs, for tests and bindings (runtime.concepts functions of the same
// names). q: [B, D] float32 unit rows; cosines: float32 [B, V].
std::vector<float> aggregate(const float* weights, const float* activation, int batch, int channels,
                             const std::vector<float>& S, int dim, const std::string& beta);
std::vector<float> cosines(const float* q, int batch, const std::vector<float>& T, int dim);

struct Ranking {
  int rows = 0;
  int n = 0;
  std::vector<int64_t> ids;   // [rows, n]
  std::vector<float> scores;  // [rows, n]
};
// rank(q, T, n, among): n >= V means all; among [B, among_n] or nullptr.
Ranking rank(const float* q, int batch, const std::vector<float>& T, int dim, int n, const int64_t* among, int among_n);

// select_diverse(q, T, candidate_ids, l1, l2, steps, top_k, center): candidate_ids [B, n];
// center: `mean` is used when `center` is true (empty: T's row mean computed here).
// alpha (optional, [B, n]): the solver's weights in the order the candidates were given.
Selection select_diverse(const float* q, int batch, const std::vector<float>& T, int dim, const int64_t* candidate_ids,
                         int n, double l1, double l2, int steps, int top_k, bool center, const std::vector<float>& mean,
                         std::vector<double>* alpha = nullptr);

// Refuses CAM methods whose map does not split by channel (the Python message).
void check_group_method(const std::string& method);

}  // namespace textcam::detail
