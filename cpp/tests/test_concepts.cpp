// concepts.cpp: settings (Python's messages), selection on hand-derivable cases, ranking
// properties (ties by id, the `among` fallback), channel groups. Parity with numpy on random
// inputs is checked by the Python tests through the bindings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "concepts.hpp"

namespace {

using nlohmann::json;
using textcam::ConceptOptions;
using textcam::Error;
using textcam::detail::ConceptSettings;
using textcam::detail::select_for_outputs;
using textcam::detail::Selection;

std::string resolve_error(const json& defaults, const ConceptOptions& overrides = {}) {
  try {
    ConceptSettings::resolve(defaults, overrides);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::vector<float> identity(int n) {
  std::vector<float> m(static_cast<size_t>(n) * static_cast<size_t>(n), 0.0F);
  for (int i = 0; i < n; ++i) m[static_cast<size_t>(i) * static_cast<size_t>(n) + static_cast<size_t>(i)] = 1.0F;
  return m;
}

std::vector<float> random_unit_rows(int rows, int dim, std::mt19937& gen) {
  std::normal_distribution<float> normal;
  std::vector<float> m(static_cast<size_t>(rows) * static_cast<size_t>(dim));
  for (int r = 0; r < rows; ++r) {
    float* row = m.data() + static_cast<size_t>(r) * static_cast<size_t>(dim);
    double sq = 0.0;
    for (int d = 0; d < dim; ++d) {
      row[d] = normal(gen);
      sq += static_cast<double>(row[d]) * static_cast<double>(row[d]);
    }
    const auto norm = static_cast<float>(std::sqrt(sq));
    for (int d = 0; d < dim; ++d) row[d] /= norm;
  }
  return m;
}

ConceptSettings settings(int top_k, int candidates, double l1, double l2, int steps, bool center) {
  ConceptSettings s;
  s.top_k = top_k;
  s.candidates = candidates;
  s.l1 = l1;
  s.l2 = l2;
  s.steps = steps;
  s.center = center;
  s.check();
  return s;
}

// ---- settings --------------------------------------------------------------------------------

TEST(ConceptSettings, BuiltInThenManifestThenCaller) {
  const ConceptSettings builtin = ConceptSettings::resolve(json(nullptr), {});
  EXPECT_EQ(builtin.beta, "contribution");
  EXPECT_EQ(builtin.top_k, 5);
  EXPECT_EQ(builtin.candidates, 64);
  EXPECT_DOUBLE_EQ(builtin.l1, 0.3);
  EXPECT_DOUBLE_EQ(builtin.l2, 0.2);
  EXPECT_EQ(builtin.steps, 100);
  EXPECT_EQ(builtin.group_channels, 64);
  EXPECT_TRUE(builtin.center);

  const json manifest = {{"top_k", 7},        {"l1", 1},        {"steps", nullptr},
                         {"beta", "weights"}, {"unknown", "x"}, {"center", false}};
  const ConceptSettings from_manifest = ConceptSettings::resolve(manifest, {});
  EXPECT_EQ(from_manifest.top_k, 7);
  EXPECT_DOUBLE_EQ(from_manifest.l1, 1.0);  // an integer is a number
  EXPECT_EQ(from_manifest.steps, 100);      // null: not given
  EXPECT_EQ(from_manifest.beta, "weights");
  EXPECT_FALSE(from_manifest.center);

  ConceptOptions overrides;
  overrides.top_k = 3;
  overrides.center = true;
  overrides.l2 = 0.5;
  const ConceptSettings mixed = ConceptSettings::resolve(manifest, overrides);
  EXPECT_EQ(mixed.top_k, 3);
  EXPECT_TRUE(mixed.center);
  EXPECT_DOUBLE_EQ(mixed.l2, 0.5);
  EXPECT_DOUBLE_EQ(mixed.l1, 1.0);
}

TEST(ConceptSettings, PythonMessages) {
  EXPECT_EQ(resolve_error({{"top_k", 0}}), "top_k=0: expected an integer from 1 to 256");
  EXPECT_EQ(resolve_error({{"beta", "x"}}), "beta='x': choose one of contribution, weights");
  EXPECT_EQ(resolve_error({{"beta", 5}}), "beta=5: choose one of contribution, weights");
  EXPECT_EQ(resolve_error({{"l1", -1.0}}), "l1=-1.0: expected a finite number from 0 to 10");
  EXPECT_EQ(resolve_error({{"l2", 12.5}}), "l2=12.5: expected a finite number from 0 to 10");
  EXPECT_EQ(resolve_error({{"l1", 11}}), "l1=11: expected a finite number from 0 to 10");
  EXPECT_EQ(resolve_error({{"l2", true}}), "l2=True: expected a finite number from 0 to 10");
  EXPECT_EQ(resolve_error({{"l1", "0.3"}}), "l1='0.3': expected a finite number from 0 to 10");
  EXPECT_EQ(resolve_error({{"top_k", 9}, {"candidates", 4}}),
            "top_k=9: expected at most candidates=4 (the phrases are chosen among them)");
  EXPECT_EQ(resolve_error({{"top_k", "5"}}), "top_k='5': expected an integer from 1 to 256");
  EXPECT_EQ(resolve_error({{"top_k", true}}), "top_k=True: expected an integer from 1 to 256");
  EXPECT_EQ(resolve_error({{"top_k", 5.0}}), "top_k=5.0: expected an integer from 1 to 256");
  EXPECT_EQ(resolve_error({{"candidates", 5000}}), "candidates=5000: expected an integer from 1 to 4,096");
  EXPECT_EQ(resolve_error({{"steps", -1}}), "steps=-1: expected an integer from 0 to 10,000");
  EXPECT_EQ(resolve_error({{"group_channels", 0}}), "group_channels=0: expected an integer from 1 to 65,536");
  EXPECT_EQ(resolve_error({{"center", 1}}), "center=1: expected true or false");
  EXPECT_EQ(resolve_error({{"center", "yes"}}), "center='yes': expected true or false");
  EXPECT_EQ(resolve_error({{"top_k", json::array({1, "a"})}}), "top_k=[1, 'a']: expected an integer from 1 to 256");
  // Python's check order: beta first, then the integers in the order top_k, candidates, steps, ...
  EXPECT_EQ(resolve_error({{"steps", -1}, {"beta", "x"}}), "beta='x': choose one of contribution, weights");
  EXPECT_EQ(resolve_error({{"steps", -1}, {"top_k", 0}}), "top_k=0: expected an integer from 1 to 256");

  ConceptOptions overrides;
  overrides.l1 = std::nan("");
  EXPECT_EQ(resolve_error(json::object(), overrides), "l1=nan: expected a finite number from 0 to 10");
  overrides.l1 = 1e-5;
  EXPECT_EQ(resolve_error(json::object(), overrides), "(no error)");
  overrides.l1 = 1e20;
  EXPECT_EQ(resolve_error(json::object(), overrides), "l1=1e+20: expected a finite number from 0 to 10");

  ConceptSettings s;
  s.top_k = 300;
  s.candidates = 400;
  try {
    s.check();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "top_k=300: expected an integer from 1 to 256");
  }
}

// ---- selection -------------------------------------------------------------------------------

TEST(ConceptSelection, VocabularyMean) {
  const std::vector<float> T = {1.0F, 2.0F, 3.0F, 6.0F, 5.0F, 1.0F};
  EXPECT_EQ(textcam::detail::vocabulary_mean(T, 3, 2), (std::vector<float>{3.0F, 3.0F}));
}

// Orthogonal phrases, no centering, l2 = 0: G = I, the Gershgorin step is 1, M = 0, so one FISTA
// step lands on alpha = max(b - l1 * max(b), 0), where b are the cosines.
TEST(ConceptSelection, OrthogonalPhrasesGiveAlphaBMinusL1) {
  const std::vector<float> S = identity(4), T = identity(4);
  const std::vector<float> w = {4.0F, 3.0F, 0.0F, 0.0F}, a = {1.0F, 1.0F, 1.0F, 1.0F};
  const Selection sel =
      select_for_outputs(w.data(), a.data(), 1, 4, S, T, 4, settings(3, 64, 0.3, 0.0, 5, false), {}, nullptr, 0);
  ASSERT_EQ(sel.k, 3);                                  // top_k 3 of 4 candidates (64 capped to V = 4)
  EXPECT_EQ(sel.ids, (std::vector<int64_t>{0, 1, 2}));  // 2 and 3 tie at cosine 0: id order
  EXPECT_NEAR(sel.scores[0], 0.8F, 1e-7);
  EXPECT_NEAR(sel.scores[1], 0.6F, 1e-7);
  EXPECT_EQ(sel.scores[2], 0.0F);
  const double b0 = static_cast<double>(sel.scores[0]), b1 = static_cast<double>(sel.scores[1]);
  const double alpha0 = b0 - 0.3 * b0, alpha1 = b1 - 0.3 * b0;
  EXPECT_NEAR(sel.weights[0], alpha0 / (alpha0 + alpha1), 1e-12);
  EXPECT_NEAR(sel.weights[1], alpha1 / (alpha0 + alpha1), 1e-12);
  EXPECT_EQ(sel.weights[2], 0.0);

  // l1 = 1: every alpha is 0 and the list is the plain ranking with zero weights
  const Selection plain =
      select_for_outputs(w.data(), a.data(), 1, 4, S, T, 4, settings(4, 4, 1.0, 0.0, 5, false), {}, nullptr, 0);
  EXPECT_EQ(plain.ids, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(plain.weights, (std::vector<double>(4, 0.0)));
}

TEST(ConceptSelection, BetaModes) {
  const std::vector<float> S = identity(3), T = identity(3);
  // contribution: ReLU(w * a) drops channel 0 (negative); weights: w alone keeps the largest w
  const std::vector<float> w = {5.0F, 1.0F, 2.0F}, a = {-1.0F, 1.0F, 0.1F};
  ConceptSettings s = settings(1, 3, 0.3, 0.2, 100, false);
  Selection sel = select_for_outputs(w.data(), a.data(), 1, 3, S, T, 3, s, {}, nullptr, 0);
  EXPECT_EQ(sel.ids, (std::vector<int64_t>{1}));
  s.beta = "weights";
  sel = select_for_outputs(w.data(), a.data(), 1, 3, S, T, 3, s, {}, nullptr, 0);
  EXPECT_EQ(sel.ids, (std::vector<int64_t>{0}));
}

TEST(ConceptSelection, SingleCandidateIsTheBestCosine) {
  std::mt19937 gen(7);
  const int C = 40, D = 16, V = 30, B = 3;
  const std::vector<float> S = random_unit_rows(C, D, gen), T = random_unit_rows(V, D, gen);
  std::normal_distribution<float> normal;
  std::vector<float> w(B * C), a(B * C);
  for (auto& x : w) x = normal(gen);
  for (auto& x : a) x = std::fabs(normal(gen));
  const Selection sel =
      select_for_outputs(w.data(), a.data(), B, C, S, T, D, settings(1, 1, 0.3, 0.2, 100, true), {}, nullptr, 0);
  const std::vector<float> q = textcam::detail::aggregate(w.data(), a.data(), B, C, S, D, "contribution");
  for (int r = 0; r < B; ++r) {
    int best = 0;
    double best_cos = -2.0;
    for (int v = 0; v < V; ++v) {
      double c = 0.0;
      for (int d = 0; d < D; ++d) {
        c += static_cast<double>(q[static_cast<size_t>(r * D + d)]) *
             static_cast<double>(T[static_cast<size_t>(v * D + d)]);
      }
      if (c > best_cos) {
        best_cos = c;
        best = v;
      }
    }
    EXPECT_EQ(sel.ids[static_cast<size_t>(r)], best);
    EXPECT_NEAR(sel.scores[static_cast<size_t>(r)], best_cos, 1e-6);
    // one candidate: its b is the best, alpha = (1 - l1) b / L > 0 after centering keeps it positive or 0
    EXPECT_TRUE(sel.weights[static_cast<size_t>(r)] == 1.0 || sel.weights[static_cast<size_t>(r)] == 0.0);
  }
}

TEST(ConceptSelection, IdenticalDuplicatesShareWeightAndTieByCosineThenId) {
  // phrases 1 and 3 are the same embedding; q points between phrase 0 and the duplicate pair
  const int D = 3;
  const std::vector<float> T = {1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0};
  const std::vector<float> S = identity(3);
  const std::vector<float> w = {1.0F, 1.0F, 0.0F}, a = {1.0F, 1.0F, 1.0F};
  const Selection sel =
      select_for_outputs(w.data(), a.data(), 1, 3, S, T, D, settings(4, 4, 0.3, 0.0, 100, false), {}, nullptr, 0);
  ASSERT_EQ(sel.k, 4);
  // alpha: phrase 0 and the pair (sharing it) are chosen, phrase 2 is a fill-in (cosine 0)
  EXPECT_EQ(sel.ids[3], 2);
  EXPECT_EQ(sel.weights[3], 0.0);
  std::vector<int64_t> first(sel.ids.begin(), sel.ids.begin() + 3);
  std::sort(first.begin(), first.end());
  EXPECT_EQ(first, (std::vector<int64_t>{0, 1, 3}));
  double w1 = 0.0, w3 = 0.0, w0 = 0.0;
  for (int i = 0; i < 3; ++i) {
    const auto id = sel.ids[static_cast<size_t>(i)];
    (id == 0 ? w0 : id == 1 ? w1 : w3) = sel.weights[static_cast<size_t>(i)];
  }
  EXPECT_NEAR(w1, w3, 1e-12);
  EXPECT_NEAR(w0, w1 + w3, 1e-6);  // the pair together weighs what phrase 0 does (symmetric q)
  EXPECT_NEAR(w0 + w1 + w3, 1.0, 1e-12);

  // plain ranking (l1 = 1): equal cosines list by phrase id
  const Selection plain =
      select_for_outputs(w.data(), a.data(), 1, 3, S, T, D, settings(4, 4, 1.0, 0.0, 10, false), {}, nullptr, 0);
  EXPECT_EQ(plain.ids, (std::vector<int64_t>{0, 1, 3, 2}));
}

TEST(ConceptSelection, AmongGivesTheSameSelectionOrFallsBack) {
  std::mt19937 gen(11);
  const int C = 64, D = 32, V = 200, B = 4, N = 16;
  const std::vector<float> S = random_unit_rows(C, D, gen), T = random_unit_rows(V, D, gen);
  std::normal_distribution<float> normal;
  std::vector<float> w(B * C), a(B * C);
  for (auto& x : w) x = normal(gen);
  for (auto& x : a) x = std::fabs(normal(gen));
  const ConceptSettings s = settings(5, N, 0.3, 0.2, 100, true);
  const Selection reference = select_for_outputs(w.data(), a.data(), B, C, S, T, D, s, {}, nullptr, 0);
  const std::vector<float> q = textcam::detail::aggregate(w.data(), a.data(), B, C, S, D, s.beta);
  const auto top = textcam::detail::rank(q.data(), B, T, D, N + 2, nullptr, 0);

  // the graph's candidates, shuffled and with two extra: the same selection
  std::vector<int64_t> among = top.ids;
  for (int r = 0; r < B; ++r) std::shuffle(among.begin() + r * (N + 2), among.begin() + (r + 1) * (N + 2), gen);
  Selection sel = select_for_outputs(w.data(), a.data(), B, C, S, T, D, s, {}, among.data(), N + 2);
  EXPECT_EQ(sel.ids, reference.ids);
  EXPECT_EQ(sel.scores, reference.scores);
  EXPECT_EQ(sel.weights, reference.weights);

  // candidates missing a phrase of the true top N (the graph swapped a near-tie): the full ranking
  std::vector<int64_t> beaten(static_cast<size_t>(B * N));
  for (int r = 0; r < B; ++r) {
    for (int k = 0; k < N; ++k)
      beaten[static_cast<size_t>(r * N + k)] = top.ids[static_cast<size_t>(r * (N + 2) + k + 1)];
  }
  sel = select_for_outputs(w.data(), a.data(), B, C, S, T, D, s, {}, beaten.data(), N);
  EXPECT_EQ(sel.ids, reference.ids);
  EXPECT_EQ(sel.weights, reference.weights);

  // fewer candidates than asked: ranked over the whole vocabulary
  sel = select_for_outputs(w.data(), a.data(), B, C, S, T, D, s, {}, beaten.data(), 3);
  EXPECT_EQ(sel.ids, reference.ids);

  // a precomputed vocabulary mean gives the same result as computing it
  sel = select_for_outputs(w.data(), a.data(), B, C, S, T, D, s, textcam::detail::vocabulary_mean(T, V, D), nullptr, 0);
  EXPECT_EQ(sel.weights, reference.weights);
}

TEST(ConceptSelection, OrderAndWeightProperties) {
  std::mt19937 gen(3);
  const int C = 128, D = 64, V = 500, B = 6;
  const std::vector<float> S = random_unit_rows(C, D, gen), T = random_unit_rows(V, D, gen);
  std::normal_distribution<float> normal;
  std::vector<float> w(B * C), a(B * C);
  for (auto& x : w) x = normal(gen);
  for (auto& x : a) x = std::fabs(normal(gen));
  const ConceptSettings s = settings(10, 64, 0.3, 0.2, 100, true);
  const Selection sel = select_for_outputs(w.data(), a.data(), B, C, S, T, D, s, {}, nullptr, 0);
  const std::vector<float> q = textcam::detail::aggregate(w.data(), a.data(), B, C, S, D, s.beta);
  const std::vector<float> cos = textcam::detail::cosines(q.data(), B, T, D);
  ASSERT_EQ(sel.k, 10);
  for (int r = 0; r < B; ++r) {
    double total = 0.0;
    bool filling = false;
    for (int k = 0; k < sel.k; ++k) {
      const size_t i = static_cast<size_t>(r * sel.k + k);
      const auto id = sel.ids[i];
      EXPECT_EQ(sel.scores[i], cos[static_cast<size_t>(r * V) + static_cast<size_t>(id)]);
      EXPECT_GE(sel.weights[i], 0.0);
      if (sel.weights[i] == 0.0) filling = true;
      if (filling) {
        EXPECT_EQ(sel.weights[i], 0.0);                                  // chosen phrases come first
        if (k + 1 < sel.k) EXPECT_GE(sel.scores[i], sel.scores[i + 1]);  // fill-ins by cosine
      } else if (k > 0) {
        EXPECT_LE(sel.weights[i], sel.weights[i - 1]);
      }
      total += sel.weights[i];
    }
    EXPECT_LE(total, 1.0 + 1e-12);
    EXPECT_GT(sel.weights[static_cast<size_t>(r * sel.k)], 0.0);
  }
}

TEST(ConceptSelection, NonFiniteOutputsNameTheRow) {
  const std::vector<float> S = identity(2), T = identity(2);
  const std::vector<float> w = {1.0F, 0.0F, NAN, 1.0F, 1.0F, INFINITY}, a = {1, 1, 1, 1, 1, 1};
  try {
    select_for_outputs(w.data(), a.data(), 3, 2, S, T, 2, settings(1, 2, 0.3, 0.2, 10, true), {}, nullptr, 0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "the graph produced non-finite channel weights (channel_weights) for image row 1 (and 1 more) of the "
              "batch: NaN or Inf, so no phrase can be ranked; check that image's input values and the exported model");
  }
  const std::vector<float> big = {3e38F, 3e38F};
  const std::vector<float> same = {1, 0, 1, 0};
  EXPECT_THROW(
      select_for_outputs(big.data(), a.data(), 1, 2, same, T, 2, settings(1, 2, 0.3, 0.2, 10, true), {}, nullptr, 0),
      Error);
}

// ---- channel groups --------------------------------------------------------------------------

TEST(ConceptGroups, HandDerived) {
  // channels 0 and 2 point at phrase 0, channel 1 at phrase 1; channel 3 contributes negatively
  const std::vector<float> S = {1, 0, 0, 1, 1, 0, 0.6F, 0.8F}, T = {1, 0, 0, 1};
  const std::vector<float> w = {1.0F, 2.0F, 3.0F, 1.0F}, a = {1.0F, 1.0F, 1.0F, -1.0F};
  const std::vector<float> A = {1, 2, 10, 20, 100, 200, 1000, 2000};  // [4, 1, 2]
  auto split = textcam::detail::channel_groups_split(w.data(), a.data(), A.data(), 4, 1, 2, S, T, 2, {0, 1}, 64);
  ASSERT_EQ(split.groups.size(), 2U);
  EXPECT_EQ(split.groups[0].phrase_id, 0);
  EXPECT_EQ(split.groups[0].channels, (std::vector<int64_t>{2, 0}));
  EXPECT_DOUBLE_EQ(split.groups[0].share, 4.0 / 6.0);
  EXPECT_EQ(split.groups[0].saliency, (std::vector<float>{301.0F, 602.0F}));
  EXPECT_EQ(split.groups[1].phrase_id, 1);
  EXPECT_EQ(split.groups[1].channels, (std::vector<int64_t>{1}));
  EXPECT_DOUBLE_EQ(split.groups[1].share, 2.0 / 6.0);
  EXPECT_EQ(split.groups[1].saliency, (std::vector<float>{20.0F, 40.0F}));
  EXPECT_EQ(split.rest, (std::vector<float>{1000.0F, 2000.0F}));  // the negative channel

  // max_channels 1: only the largest contribution is assigned, the rest keeps the others
  split = textcam::detail::channel_groups_split(w.data(), a.data(), A.data(), 4, 1, 2, S, T, 2, {1, 0}, 1);
  ASSERT_EQ(split.groups.size(), 1U);
  EXPECT_EQ(split.groups[0].phrase_id, 0);
  EXPECT_EQ(split.groups[0].channels, (std::vector<int64_t>{2}));
  EXPECT_DOUBLE_EQ(split.groups[0].share, 0.5);
  EXPECT_EQ(split.rest, (std::vector<float>{1021.0F, 2042.0F}));

  // coverage: contributions 10, 1, 1 of 12 -> 95% needs all three; 0.8 needs only the first
  const std::vector<float> w2 = {10.0F, 1.0F, 1.0F}, a2 = {1.0F, 1.0F, 1.0F};
  const std::vector<float> S2 = {1, 0, 1, 0, 1, 0};
  const std::vector<float> A2 = {1, 1, 1};
  auto cov = textcam::detail::channel_groups_split(w2.data(), a2.data(), A2.data(), 3, 1, 1, S2, T, 2, {0}, 64);
  EXPECT_EQ(cov.groups.at(0).channels, (std::vector<int64_t>{0, 1, 2}));
  cov = textcam::detail::channel_groups_split(w2.data(), a2.data(), A2.data(), 3, 1, 1, S2, T, 2, {0}, 64, 0.8);
  EXPECT_EQ(cov.groups.at(0).channels, (std::vector<int64_t>{0}));

  // a channel equally close to both phrases goes to the first selected (np.argmax)
  const std::vector<float> S3 = {0.6F, 0.6F};
  const std::vector<float> w3 = {1.0F}, a3 = {1.0F}, A3 = {5.0F};
  auto tie = textcam::detail::channel_groups_split(w3.data(), a3.data(), A3.data(), 1, 1, 1, S3, T, 2, {1, 0}, 64);
  ASSERT_EQ(tie.groups.size(), 1U);
  EXPECT_EQ(tie.groups[0].phrase_id, 1);
  EXPECT_EQ(
      textcam::detail::channel_groups(w3.data(), a3.data(), A3.data(), 1, 1, 1, S3, T, 2, {1, 0}, 64)[0].phrase_id, 1);
}

TEST(ConceptGroups, MethodCheck) {
  EXPECT_NO_THROW(textcam::detail::check_group_method("gradcam"));
  EXPECT_NO_THROW(textcam::detail::check_group_method("gradcam++"));
  try {
    textcam::detail::check_group_method("scorecam");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "channel groups need a channel-weight CAM method (gradcam, gradcam++, xgradcam, cam), whose map is "
              "sum_j w_j A_j; this bundle uses 'scorecam', whose map does not split by channel: re-export with "
              "--method gradcam (or another channel-weight method)");
  }
}

}  // namespace
