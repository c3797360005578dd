// textcam.runtime.concepts in C++. Bit-for-bit with numpy where numpy's order of operations is
// known (checked against numpy 2.x on x86-64, SSE baseline):
// - np.einsum with a contiguous reduction axis (cosines, b, G, the solver's M y): one SIMD
//   accumulator of 4 float32 (2 float64) lanes, 4 vectors per step taken in the order 3, 2, 1, 0,
//   a zero-padded tail, then ((l0 + l1) + (l2 + l3)); separate multiply and add (no FMA);
// - np.einsum with a contiguous output axis (beta @ S, sum_j w_j A_j): row after row;
// - np.add.reduce along a contiguous axis (norms, sums): numpy's pairwise summation;
// - T.mean(axis=0): rows added one after another in float32, then divided by V in float32.
// Keep this file free of -ffast-math and FMA contraction (the default x86-64 target has no FMA).
#include "concepts.hpp"
#include "python_text.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>

namespace textcam::detail {
namespace {

using nlohmann::json;

constexpr double kTiny = 1e-12;
constexpr float kTinyF = 1e-12F;
constexpr double kAlphaCap = 10.0;
constexpr int kMaxSteps = 10000;
constexpr int kMaxCandidates = 4096;
constexpr int kMaxTopK = 256;
constexpr int kMaxGroupChannels = 65536;
constexpr double kMaxL1 = 10.0;
constexpr double kMaxL2 = 10.0;
const char* const kBetaModes[] = {"contribution", "weights"};
const char* const kChannelWeightMethods[] = {"gradcam", "gradcam++", "xgradcam", "cam"};

// ---- numpy's arithmetic ---------------------------------------------------------------------

// np.einsum float32 dot over a contiguous axis (sum_of_products_contig_contig_outstride0_two):
// one accumulator of 4 lanes; each step of 16 adds x*y of the 4-lane groups 3, 2, 1, 0 in that
// order; the tail in zero-padded groups of 4; then (l0 + l1) + (l2 + l3). R dots of the same x
// at once (independent accumulators, so the add latency overlaps); each is exactly dot_f32.
typedef float F4 __attribute__((vector_size(16)));
typedef double D2 __attribute__((vector_size(16)));

inline F4 load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline D2 load2(const double* p) {
  D2 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int R>
void dots_f32(const float* x, const float* const* ys, int n, float* out) {
  F4 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = F4{0.0F, 0.0F, 0.0F, 0.0F};
  int i = 0;
  for (; n - i >= 16; i += 16) {
    for (int u = 3; u >= 0; --u) {
      const int at = i + 4 * u;
      const F4 xv = load4(x + at);
      for (int r = 0; r < R; ++r) {
        const F4 p = xv * load4(ys[r] + at);
        acc[r] = p + acc[r];
      }
    }
  }
  for (; i < n; i += 4) {
    float xt[4] = {0.0F, 0.0F, 0.0F, 0.0F};
    for (int l = 0; l < 4 && i + l < n; ++l) xt[l] = x[i + l];
    const F4 xv = load4(xt);
    for (int r = 0; r < R; ++r) {
      float yt[4] = {0.0F, 0.0F, 0.0F, 0.0F};
      for (int l = 0; l < 4 && i + l < n; ++l) yt[l] = ys[r][i + l];
      const F4 p = xv * load4(yt);
      acc[r] = p + acc[r];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
}

float dot_f32(const float* x, const float* y, int n) {
  float out;
  dots_f32<1>(x, &y, n, &out);
  return out;
}

// x . rows[k] for k < count (rows of a contiguous matrix with `stride`), 4 at a time.
void dot_rows_f32(const float* x, const float* rows, size_t stride, int count, int n, float* out) {
  int k = 0;
  for (; k + 4 <= count; k += 4) {
    const float* ys[4] = {rows + static_cast<size_t>(k) * stride, rows + static_cast<size_t>(k + 1) * stride,
                          rows + static_cast<size_t>(k + 2) * stride, rows + static_cast<size_t>(k + 3) * stride};
    dots_f32<4>(x, ys, n, out + k);
  }
  for (; k < count; ++k) out[k] = dot_f32(x, rows + static_cast<size_t>(k) * stride, n);
}

// The same kernel for float64 (2 lanes, steps of 8, then l0 + l1).
template <int R>
void dots_f64(const double* const* xs, const double* y, int n, double* out) {
  D2 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = D2{0.0, 0.0};
  int i = 0;
  for (; n - i >= 8; i += 8) {
    for (int u = 3; u >= 0; --u) {
      const int at = i + 2 * u;
      const D2 yv = load2(y + at);
      for (int r = 0; r < R; ++r) {
        const D2 p = load2(xs[r] + at) * yv;
        acc[r] = p + acc[r];
      }
    }
  }
  for (; i < n; i += 2) {
    double yt[2] = {y[i], i + 1 < n ? y[i + 1] : 0.0};
    const D2 yv = load2(yt);
    for (int r = 0; r < R; ++r) {
      double xt[2] = {xs[r][i], i + 1 < n ? xs[r][i + 1] : 0.0};
      const D2 p = load2(xt) * yv;
      acc[r] = p + acc[r];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r][0] + acc[r][1];
}

double dot_f64(const double* x, const double* y, int n) {
  double out;
  dots_f64<1>(&x, y, n, &out);
  return out;
}

// M y for a row-major [n, n] M, 4 rows at a time.
void matvec_f64(const double* M, const double* y, int n, double* out) {
  const size_t N = static_cast<size_t>(n);
  int k = 0;
  for (; k + 4 <= n; k += 4) {
    const double* xs[4] = {M + static_cast<size_t>(k) * N, M + static_cast<size_t>(k + 1) * N,
                           M + static_cast<size_t>(k + 2) * N, M + static_cast<size_t>(k + 3) * N};
    dots_f64<4>(xs, y, n, out + k);
  }
  for (; k < n; ++k) out[k] = dot_f64(M + static_cast<size_t>(k) * N, y, n);
}

// np.add.reduce over a contiguous axis: numpy's pairwise summation (blocks of 128, 8 accumulators).
template <typename F>
F pairwise_sum(const F* a, int n) {
  if (n < 8) {
    F res = F(0);
    for (int i = 0; i < n; ++i) res = res + a[i];
    return res;
  }
  if (n <= 128) {
    F r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) r[j] = r[j] + a[i + j];
    }
    F res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res = res + a[i];
    return res;
  }
  int n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// np.linalg.norm of a float32 row: sqrt of the pairwise sum of squares, in float32.
float norm_f32(const float* x, int n, std::vector<float>& scratch) {
  scratch.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) scratch[static_cast<size_t>(i)] = x[i] * x[i];
  return std::sqrt(pairwise_sum(scratch.data(), n));
}

std::string py_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

bool is_int(const json& v) { return v.is_number_integer(); }  // false for booleans and floats

// `low <= v <= high` for a JSON integer (signed or unsigned).
bool int_in(const json& v, int64_t low, int64_t high) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    return low <= 0 ? u <= static_cast<uint64_t>(high)
                    : (u >= static_cast<uint64_t>(low) && u <= static_cast<uint64_t>(high));
  }
  const auto s = v.get<int64_t>();
  return low <= s && s <= high;
}

// ConceptSettings.check on the merged values (a JSON object holding every setting).
void check_values(const json& values) {
  const json& beta = values.at("beta");
  bool beta_ok = false;
  if (beta.is_string()) {
    for (const char* mode : kBetaModes) beta_ok = beta_ok || beta.get<std::string>() == mode;
  }
  if (!beta_ok) throw Error("beta=" + python_repr(beta) + ": choose one of contribution, weights");
  struct Limit {
    const char* name;
    int64_t low, high;
  };
  const Limit limits[] = {{"top_k", 1, kMaxTopK},
                          {"candidates", 1, kMaxCandidates},
                          {"steps", 0, kMaxSteps},
                          {"group_channels", 1, kMaxGroupChannels}};
  for (const Limit& limit : limits) {
    const json& value = values.at(limit.name);
    if (!is_int(value) || !int_in(value, limit.low, limit.high)) {
      throw Error(std::string(limit.name) + "=" + python_repr(value) + ": expected an integer from " +
                  with_commas(limit.low) + " to " + with_commas(limit.high));
    }
  }
  const auto top_k = values.at("top_k").get<int64_t>();
  const auto candidates = values.at("candidates").get<int64_t>();
  if (top_k > candidates) {
    throw Error("top_k=" + std::to_string(top_k) + ": expected at most candidates=" + std::to_string(candidates) +
                " (the phrases are chosen among them)");
  }
  const json& center = values.at("center");
  if (!center.is_boolean()) throw Error("center=" + python_repr(center) + ": expected true or false");
  const std::pair<const char*, double> reals[] = {{"l1", kMaxL1}, {"l2", kMaxL2}};
  for (const auto& [name, high] : reals) {
    const json& value = values.at(name);
    bool ok = value.is_number();  // is_number is false for booleans
    if (ok) {
      const double v = value.get<double>();
      ok = std::isfinite(v) && 0.0 <= v && v <= high;
    }
    if (!ok) {
      throw Error(std::string(name) + "=" + python_repr(value) + ": expected a finite number from 0 to " + py_g(high));
    }
  }
}

json settings_json(const ConceptSettings& s) {
  return json{{"beta", s.beta}, {"top_k", s.top_k}, {"candidates", s.candidates},         {"l1", s.l1},
              {"l2", s.l2},     {"steps", s.steps}, {"group_channels", s.group_channels}, {"center", s.center}};
}

// ---- the selection ---------------------------------------------------------------------------

void check_finite(const float* values, int rows, int cols, const std::string& what) {
  int first = -1;
  int count = 0;
  for (int r = 0; r < rows; ++r) {
    const float* row = values + static_cast<size_t>(r) * static_cast<size_t>(cols);
    bool finite = true;
    for (int c = 0; c < cols; ++c) finite = finite && std::isfinite(row[c]);
    if (!finite) {
      if (first < 0) first = r;
      ++count;
    }
  }
  if (first >= 0) {
    const std::string more = count > 1 ? " (and " + std::to_string(count - 1) + " more)" : "";
    throw Error("the graph produced non-finite " + what + " for image row " + std::to_string(first) + more +
                " of the batch: NaN or Inf, so no phrase can be ranked; check that image's input values and the "
                "exported model");
  }
}

int vocabulary_size(const std::vector<float>& T, int dim) {
  if (dim <= 0 || T.size() % static_cast<size_t>(dim) != 0 || T.empty()) {
    throw Error("concepts: the phrase embeddings are not a non-empty [V, " + std::to_string(dim) + "] matrix");
  }
  return static_cast<int>(T.size() / static_cast<size_t>(dim));
}

// (score desc, id asc), NaN last (np.lexsort on -score puts NaN last); stable for equal keys.
struct ScoreOrder {
  const float* scores;
  const int64_t* ids;
  bool operator()(int a, int b) const {
    const float sa = scores[a], sb = scores[b];
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return nb;
    if (!na && sa != sb) return sa > sb;
    return ids[a] < ids[b];
  }
};

std::vector<double> fista_momentum(int steps) {
  std::vector<double> coefficients(static_cast<size_t>(steps) + 1);
  double t = 1.0;
  for (auto& c : coefficients) {
    const double t_next = 0.5 * (1.0 + std::sqrt(1.0 + 4.0 * t * t));
    c = (t - 1.0) / t_next;
    t = t_next;
  }
  return coefficients;
}

// Per-call buffers of select_diverse.
struct SolverWork {
  std::vector<float> E, scratch;
  std::vector<double> b, G, M, c, x, xn, y, step, diff, absrow;
  std::vector<int> order;
};

// One row of select_diverse over `ids` (sorted by id); writes top rows of ids/scores/weights.
void select_row(const float* q, const std::vector<float>& T, int dim, const float* full_row, const int64_t* ids, int n,
                double l1, double l2, int steps, int top, const float* mean, const std::vector<double>& momentum,
                SolverWork& w, int64_t* out_ids, float* out_scores, double* out_weights, double* alpha_out,
                std::vector<float>& scores) {
  const size_t N = static_cast<size_t>(n), Dz = static_cast<size_t>(dim);
  scores.resize(N);
  for (size_t k = 0; k < N; ++k) {
    const float* t = T.data() + static_cast<size_t>(ids[k]) * Dz;
    scores[k] = full_row == nullptr ? dot_f32(q, t, dim) : full_row[static_cast<size_t>(ids[k])];
  }
  for (size_t k = 0; k < N; ++k) {
    if (!std::isfinite(scores[k])) {
      throw Error("select_diverse: non-finite candidate scores (NaN or Inf); no phrase can be ranked");
    }
  }
  w.E.resize(N * Dz);
  w.b.resize(N);
  for (size_t k = 0; k < N; ++k) {
    const float* t = T.data() + static_cast<size_t>(ids[k]) * Dz;
    float* e = w.E.data() + k * Dz;
    if (mean != nullptr) {
      for (size_t d = 0; d < Dz; ++d) e[d] = t[d] - mean[d];
      const float norm = std::max(norm_f32(e, dim, w.scratch), kTinyF);
      for (size_t d = 0; d < Dz; ++d) e[d] = e[d] / norm;
      w.b[k] = static_cast<double>(dot_f32(e, q, dim));
    } else {
      std::copy(t, t + Dz, e);
      w.b[k] = static_cast<double>(scores[k]);
    }
  }
  // H = (1 + 2 l2) G - 2 l2 I, G from float32 E
  w.G.resize(N * N);
  const double scale = 1.0 + 2.0 * l2;
  w.scratch.resize(N);
  for (size_t i = 0; i < N; ++i) {
    dot_rows_f32(w.E.data() + i * Dz, w.E.data() + i * Dz, Dz, n - static_cast<int>(i), dim, w.scratch.data());
    for (size_t j = i; j < N; ++j) {
      const double g = static_cast<double>(w.scratch[j - i]);
      w.G[i * N + j] = scale * g;
      w.G[j * N + i] = scale * g;
    }
  }
  for (size_t i = 0; i < N; ++i) w.G[i * N + i] -= 2.0 * l2;
  double lipschitz = 0.0;
  w.absrow.resize(N);
  for (size_t i = 0; i < N; ++i) {
    for (size_t j = 0; j < N; ++j) w.absrow[j] = std::fabs(w.G[i * N + j]);
    const double row = pairwise_sum(w.absrow.data(), n);
    lipschitz = i == 0 ? row : std::max(lipschitz, row);  // numpy's max: NaN would propagate; H is finite
  }
  lipschitz = std::max(lipschitz, kTiny);
  const double neg_l = -lipschitz;
  w.M.resize(N * N);
  for (size_t i = 0; i < N * N; ++i) w.M[i] = w.G[i] / neg_l;
  for (size_t i = 0; i < N; ++i) w.M[i * N + i] += 1.0;
  double best = w.b[0];
  for (size_t k = 1; k < N; ++k) best = std::max(best, w.b[k]);
  best = std::max(best, kTiny);
  const double l1_abs = l1 * best;
  w.c.resize(N);
  for (size_t k = 0; k < N; ++k) w.c[k] = (w.b[k] - l1_abs) / lipschitz;
  w.x.assign(N, 0.0);
  w.y.assign(N, 0.0);
  w.xn.resize(N);
  w.step.resize(N);
  w.diff.resize(N);
  int64_t since_restart = -1;
  for (int s = 0; s < steps; ++s) {
    matvec_f64(w.M.data(), w.y.data(), n, w.xn.data());
    for (size_t i = 0; i < N; ++i) {
      const double v = w.xn[i] + w.c[i];
      w.xn[i] = std::min(std::max(v, 0.0), kAlphaCap);
    }
    for (size_t i = 0; i < N; ++i) {
      w.step[i] = w.xn[i] - w.x[i];
      w.diff[i] = w.y[i] - w.xn[i];
    }
    const bool uphill = dot_f64(w.diff.data(), w.step.data(), n) > 0.0;
    since_restart = uphill ? 0 : since_restart + 1;
    const double mom = momentum[static_cast<size_t>(since_restart)];
    for (size_t i = 0; i < N; ++i) {
      const double m = mom * w.step[i];
      w.y[i] = w.xn[i] + m;
    }
    std::swap(w.x, w.xn);
  }
  const std::vector<double>& alpha = w.x;
  if (alpha_out != nullptr) std::copy(alpha.begin(), alpha.end(), alpha_out);
  // order: chosen first, by alpha desc; then cosine desc; then id asc; then position (stable)
  w.order.resize(N);
  std::iota(w.order.begin(), w.order.end(), 0);
  std::stable_sort(w.order.begin(), w.order.end(), [&](int a, int bb) {
    const size_t ua = static_cast<size_t>(a), ub = static_cast<size_t>(bb);
    const bool ca = alpha[ua] > 0.0, cb = alpha[ub] > 0.0;
    if (ca != cb) return ca;
    const double aa = ca ? alpha[ua] : 0.0, ab = cb ? alpha[ub] : 0.0;
    if (aa != ab) return aa > ab;
    const double sa = static_cast<double>(scores[ua]), sb = static_cast<double>(scores[ub]);
    if (sa != sb) return sa > sb;
    return ids[ua] < ids[ub];
  });
  const double total = std::max(pairwise_sum(alpha.data(), n), kTiny);
  for (int r = 0; r < top; ++r) {
    const size_t k = static_cast<size_t>(w.order[static_cast<size_t>(r)]);
    out_ids[r] = ids[k];
    out_scores[r] = scores[k];
    out_weights[r] = alpha[k] > 0.0 ? alpha[k] / total : 0.0;
  }
}

Selection select_impl(const float* q, int batch, const std::vector<float>& T, int dim, const int64_t* candidate_ids,
                      int n, double l1, double l2, int steps, int top_k, bool center, const std::vector<float>& mean_in,
                      const std::vector<float>* full_scores, std::vector<double>* alpha) {
  const int V = vocabulary_size(T, dim);
  if (n <= 0) throw Error("select_diverse: no candidates");
  const size_t N = static_cast<size_t>(n);
  for (size_t i = 0; i < static_cast<size_t>(batch) * N; ++i) {
    if (candidate_ids[i] < 0 || candidate_ids[i] >= V) {
      throw Error("select_diverse: candidate ids outside the vocabulary (0.." + std::to_string(V - 1) + ")");
    }
  }
  std::vector<float> mean;
  if (center) {
    mean = mean_in.empty() ? vocabulary_mean(T, V, dim) : mean_in;
    if (mean.size() != static_cast<size_t>(dim)) {
      throw Error("select_diverse: the vocabulary mean has " + std::to_string(mean.size()) + " values, expected " +
                  std::to_string(dim));
    }
  }
  const int top = std::max(1, std::min(top_k, n));
  Selection out;
  out.rows = batch;
  out.k = top;
  const size_t K = static_cast<size_t>(top);
  out.ids.resize(static_cast<size_t>(batch) * K);
  out.scores.resize(static_cast<size_t>(batch) * K);
  out.weights.resize(static_cast<size_t>(batch) * K);
  if (alpha != nullptr) alpha->assign(static_cast<size_t>(batch) * N, 0.0);
  const std::vector<double> momentum = fista_momentum(std::max(steps, 0));
  SolverWork work;
  std::vector<int64_t> ids(N);
  std::vector<int> canonical(N);
  std::vector<double> row_alpha(N);
  std::vector<float> scores;
  for (int r = 0; r < batch; ++r) {
    const int64_t* given = candidate_ids + static_cast<size_t>(r) * N;
    std::iota(canonical.begin(), canonical.end(), 0);
    std::stable_sort(canonical.begin(), canonical.end(), [&](int a, int b) { return given[a] < given[b]; });
    for (size_t k = 0; k < N; ++k) ids[k] = given[canonical[k]];
    const float* qr = q + static_cast<size_t>(r) * static_cast<size_t>(dim);
    const float* full_row =
        full_scores == nullptr ? nullptr : full_scores->data() + static_cast<size_t>(r) * static_cast<size_t>(V);
    select_row(qr, T, dim, full_row, ids.data(), n, l1, l2, steps, top, center ? mean.data() : nullptr, momentum, work,
               out.ids.data() + static_cast<size_t>(r) * K, out.scores.data() + static_cast<size_t>(r) * K,
               out.weights.data() + static_cast<size_t>(r) * K, row_alpha.data(), scores);
    if (alpha != nullptr) {
      for (size_t k = 0; k < N; ++k)
        (*alpha)[static_cast<size_t>(r) * N + static_cast<size_t>(canonical[k])] = row_alpha[k];
    }
  }
  return out;
}

// rank() on precomputed cosines [B, V].
Ranking rank_impl(const std::vector<float>& full, int batch, int V, int n_asked, const int64_t* among, int among_n) {
  Ranking out;
  out.rows = batch;
  const int n = std::max(1, std::min(n_asked, V));
  out.n = n;
  const size_t Nz = static_cast<size_t>(n), Vz = static_cast<size_t>(V);
  out.ids.resize(static_cast<size_t>(batch) * Nz);
  out.scores.resize(static_cast<size_t>(batch) * Nz);
  std::vector<int64_t> vocabulary(Vz);
  std::iota(vocabulary.begin(), vocabulary.end(), 0);
  std::vector<int> order;
  std::vector<float> sub_scores;
  std::vector<char> inside;
  if (among != nullptr) {
    for (size_t i = 0; i < static_cast<size_t>(batch) * static_cast<size_t>(among_n); ++i) {
      if (among[i] < 0 || among[i] >= V) {
        throw Error("select_diverse: candidate ids outside the vocabulary (0.." + std::to_string(V - 1) + ")");
      }
    }
  }
  for (int r = 0; r < batch; ++r) {
    const float* row = full.data() + static_cast<size_t>(r) * Vz;
    int64_t* ids_out = out.ids.data() + static_cast<size_t>(r) * Nz;
    float* scores_out = out.scores.data() + static_cast<size_t>(r) * Nz;
    auto full_top = [&]() {
      order.resize(Vz);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + n, order.end(), ScoreOrder{row, vocabulary.data()});
      for (size_t k = 0; k < Nz; ++k) {
        ids_out[k] = order[k];
        scores_out[k] = row[order[k]];
      }
    };
    if (among == nullptr || among_n < n) {
      full_top();
      continue;
    }
    const int64_t* cand = among + static_cast<size_t>(r) * static_cast<size_t>(among_n);
    const size_t M = static_cast<size_t>(among_n);
    sub_scores.resize(M);
    for (size_t k = 0; k < M; ++k) sub_scores[k] = row[cand[k]];
    order.resize(M);
    std::iota(order.begin(), order.end(), 0);
    // stable: equal (score, id) pairs (repeated ids) keep their positions, as np.lexsort
    std::stable_sort(order.begin(), order.end(), ScoreOrder{sub_scores.data(), cand});
    for (size_t k = 0; k < Nz; ++k) {
      ids_out[k] = cand[order[k]];
      scores_out[k] = sub_scores[static_cast<size_t>(order[k])];
    }
    inside.assign(Vz, 0);
    for (size_t k = 0; k < M; ++k) inside[static_cast<size_t>(cand[k])] = 1;
    const float last_score = scores_out[Nz - 1];
    const int64_t last_id = ids_out[Nz - 1];
    bool beaten = false;
    for (size_t v = 0; v < Vz && !beaten; ++v) {
      beaten = !inside[v] && (row[v] > last_score || (row[v] == last_score && static_cast<int64_t>(v) < last_id));
    }
    if (beaten) full_top();
  }
  return out;
}

}  // namespace

// ---- settings --------------------------------------------------------------------------------

ConceptSettings ConceptSettings::resolve(const nlohmann::json& defaults, const ConceptOptions& overrides) {
  const ConceptSettings builtin;
  json values = settings_json(builtin);
  if (!defaults.is_null() && !defaults.is_object()) {
    throw Error("semantics.defaults: expected an object, got " + python_repr(defaults));
  }
  if (defaults.is_object()) {
    for (auto it = defaults.begin(); it != defaults.end(); ++it) {
      if (values.contains(it.key()) && !it.value().is_null()) values[it.key()] = it.value();
    }
  }
  if (overrides.beta) values["beta"] = *overrides.beta;
  if (overrides.top_k) values["top_k"] = *overrides.top_k;
  if (overrides.candidates) values["candidates"] = *overrides.candidates;
  if (overrides.l1) values["l1"] = *overrides.l1;
  if (overrides.l2) values["l2"] = *overrides.l2;
  if (overrides.steps) values["steps"] = *overrides.steps;
  if (overrides.group_channels) values["group_channels"] = *overrides.group_channels;
  if (overrides.center) values["center"] = *overrides.center;
  check_values(values);
  ConceptSettings s;
  s.beta = values["beta"].get<std::string>();
  s.top_k = static_cast<int>(values["top_k"].get<int64_t>());
  s.candidates = static_cast<int>(values["candidates"].get<int64_t>());
  s.l1 = values["l1"].get<double>();
  s.l2 = values["l2"].get<double>();
  s.steps = static_cast<int>(values["steps"].get<int64_t>());
  s.group_channels = static_cast<int>(values["group_channels"].get<int64_t>());
  s.center = values["center"].get<bool>();
  return s;
}

void ConceptSettings::check() const { check_values(settings_json(*this)); }

// ---- selection -------------------------------------------------------------------------------

std::vector<float> vocabulary_mean(const std::vector<float>& T, int vocabulary, int dim) {
  if (vocabulary <= 0 || dim <= 0 || T.size() != static_cast<size_t>(vocabulary) * static_cast<size_t>(dim)) {
    throw Error("vocabulary_mean: the phrase embeddings are not a non-empty [V, D] matrix");
  }
  const size_t Dz = static_cast<size_t>(dim);
  std::vector<float> mean(T.begin(), T.begin() + static_cast<std::ptrdiff_t>(Dz));
  for (size_t v = 1; v < static_cast<size_t>(vocabulary); ++v) {
    const float* row = T.data() + v * Dz;
    for (size_t d = 0; d < Dz; ++d) mean[d] = mean[d] + row[d];
  }
  const auto count = static_cast<float>(vocabulary);
  for (float& m : mean) m = m / count;
  return mean;
}

std::vector<float> aggregate(const float* weights, const float* activation, int batch, int channels,
                             const std::vector<float>& S, int dim, const std::string& beta) {
  if (beta != "contribution" && beta != "weights") {
    throw Error("beta " + python_str_repr(beta) + ": choose one of contribution, weights");
  }
  const size_t Cz = static_cast<size_t>(channels), Dz = static_cast<size_t>(dim);
  if (S.size() != Cz * Dz) {
    throw Error("concepts: channel embeddings hold " + std::to_string(S.size()) + " values, expected [" +
                std::to_string(channels) + ", " + std::to_string(dim) + "]");
  }
  const bool contribution = beta == "contribution";
  if (contribution && activation == nullptr && batch > 0 && channels > 0) {
    throw Error("concepts: beta contribution needs the channel activations");
  }
  check_finite(weights, batch, channels, "channel weights (channel_weights)");
  if (contribution) check_finite(activation, batch, channels, "channel activations (channel_activation)");
  std::vector<float> q(static_cast<size_t>(batch) * Dz, 0.0F);
  for (size_t r = 0; r < static_cast<size_t>(batch); ++r) {
    float* out = q.data() + r * Dz;
    const float* wr = weights + r * Cz;
    const float* ar = activation == nullptr ? nullptr : activation + r * Cz;
    for (size_t c = 0; c < Cz; ++c) {
      float value = wr[c];
      if (contribution) {
        const float p = wr[c] * ar[c];
        value = p >= 0.0F ? p : 0.0F;
      }
      const float* s = S.data() + c * Dz;
      for (size_t d = 0; d < Dz; ++d) {
        const float p = value * s[d];
        out[d] = p + out[d];
      }
    }
  }
  check_finite(q.data(), batch, dim,
               "an evidence direction beta @ S that overflowed float32 (channel weights too large)");
  std::vector<float> scratch;
  for (size_t r = 0; r < static_cast<size_t>(batch); ++r) {
    float* row = q.data() + r * Dz;
    const float norm = std::max(norm_f32(row, dim, scratch), kTinyF);
    for (size_t d = 0; d < Dz; ++d) row[d] = row[d] / norm;
  }
  return q;
}

std::vector<float> cosines(const float* q, int batch, const std::vector<float>& T, int dim) {
  const int V = vocabulary_size(T, dim);
  const size_t Vz = static_cast<size_t>(V), Dz = static_cast<size_t>(dim);
  std::vector<float> out(static_cast<size_t>(batch) * Vz);
  for (size_t r = 0; r < static_cast<size_t>(batch); ++r) {
    const float* qr = q + r * Dz;
    float* o = out.data() + r * Vz;
    dot_rows_f32(qr, T.data(), Dz, V, dim, o);
  }
  return out;
}

Ranking rank(const float* q, int batch, const std::vector<float>& T, int dim, int n, const int64_t* among,
             int among_n) {
  const int V = vocabulary_size(T, dim);
  return rank_impl(cosines(q, batch, T, dim), batch, V, n, among, among_n);
}

Selection select_diverse(const float* q, int batch, const std::vector<float>& T, int dim, const int64_t* candidate_ids,
                         int n, double l1, double l2, int steps, int top_k, bool center, const std::vector<float>& mean,
                         std::vector<double>* alpha) {
  return select_impl(q, batch, T, dim, candidate_ids, n, l1, l2, steps, top_k, center, mean, nullptr, alpha);
}

Selection select_for_outputs(const float* weights, const float* activation, int batch, int channels,
                             const std::vector<float>& S, const std::vector<float>& T, int dim,
                             const ConceptSettings& settings, const std::vector<float>& vocabulary_mean_in,
                             const int64_t* among, int among_n) {
  const int V = vocabulary_size(T, dim);
  const std::vector<float> q = aggregate(weights, activation, batch, channels, S, dim, settings.beta);
  const std::vector<float> full = cosines(q.data(), batch, T, dim);
  const Ranking ranked = rank_impl(full, batch, V, settings.candidates, among, among_n);
  return select_impl(q.data(), batch, T, dim, ranked.ids.data(), ranked.n, settings.l1, settings.l2, settings.steps,
                     settings.top_k, settings.center, vocabulary_mean_in, &full, nullptr);
}

// ---- channel groups --------------------------------------------------------------------------

void check_group_method(const std::string& method) {
  for (const char* m : kChannelWeightMethods) {
    if (method == m) return;
  }
  throw Error(
      "channel groups need a channel-weight CAM method (gradcam, gradcam++, xgradcam, cam), whose map is "
      "sum_j w_j A_j; this bundle uses " +
      python_str_repr(method) +
      ", whose map does not split by channel: "
      "re-export with --method gradcam (or another channel-weight method)");
}

namespace {

// sum_{c in members} w_c A_c in float64, as np.einsum("c,chw->hw") adds them (member after member;
// a 1x1 map reduces over the members with the dot kernel instead).
std::vector<double> weighted_sum(const std::vector<double>& w, const float* activations, size_t hw,
                                 const std::vector<int64_t>& members) {
  std::vector<double> out(hw, 0.0);
  if (hw == 1 && !members.empty()) {
    std::vector<double> wm(members.size()), am(members.size());
    for (size_t i = 0; i < members.size(); ++i) {
      wm[i] = w[static_cast<size_t>(members[i])];
      am[i] = static_cast<double>(activations[static_cast<size_t>(members[i])]);
    }
    out[0] = dot_f64(wm.data(), am.data(), static_cast<int>(members.size()));
    return out;
  }
  for (const int64_t c : members) {
    const double wc = w[static_cast<size_t>(c)];
    const float* a = activations + static_cast<size_t>(c) * hw;
    for (size_t i = 0; i < hw; ++i) {
      const double p = wc * static_cast<double>(a[i]);
      out[i] = p + out[i];
    }
  }
  return out;
}

}  // namespace

GroupSplit channel_groups_split(const float* weights_row, const float* activation_row, const float* activations,
                                int channels, int h, int w, const std::vector<float>& S, const std::vector<float>& T,
                                int dim, const std::vector<int64_t>& selected, int max_channels, double coverage) {
  const size_t Cz = static_cast<size_t>(channels), Dz = static_cast<size_t>(dim);
  const size_t hw = static_cast<size_t>(h) * static_cast<size_t>(w);
  if (S.size() != Cz * Dz) {
    throw Error("channel groups: channel embeddings hold " + std::to_string(S.size()) + " values, expected [" +
                std::to_string(channels) + ", " + std::to_string(dim) + "]");
  }
  const int V = vocabulary_size(T, dim);
  for (const int64_t id : selected) {
    if (id < 0 || id >= V) {
      throw Error("channel groups: phrase id " + std::to_string(id) + " outside the vocabulary (0.." +
                  std::to_string(V - 1) + ")");
    }
  }
  std::vector<double> wv(Cz), contribution(Cz);
  for (size_t c = 0; c < Cz; ++c) {
    wv[c] = static_cast<double>(weights_row[c]);
    const double p = wv[c] * static_cast<double>(activation_row[c]);
    contribution[c] = p >= 0.0 ? p : 0.0;
  }
  const double total = pairwise_sum(contribution.data(), channels);
  std::vector<int64_t> order(Cz);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return contribution[static_cast<size_t>(a)] > contribution[static_cast<size_t>(b)];
  });
  size_t positive = 0;
  while (positive < Cz && contribution[static_cast<size_t>(order[positive])] > 0.0) ++positive;
  order.resize(positive);
  if (!order.empty() && total > 0.0) {
    const double target = coverage * total - 1e-12 * total;
    double cumsum = 0.0;
    size_t below = 0;  // np.searchsorted(cumsum, target, side="left")
    for (const int64_t c : order) {
      cumsum += contribution[static_cast<size_t>(c)];
      if (cumsum < target)
        ++below;
      else
        break;
    }
    const int64_t needed = static_cast<int64_t>(below) + 1;
    int64_t stop = std::min<int64_t>(needed, max_channels);
    const auto size = static_cast<int64_t>(order.size());
    if (stop < 0) stop = std::max<int64_t>(size + stop, 0);  // Python's slice order[:stop]
    order.resize(static_cast<size_t>(std::min(stop, size)));
  }
  std::vector<int64_t> owner(Cz, -1);
  const size_t K = selected.size();
  if (!order.empty() && K > 0) {
    for (const int64_t c : order) {
      const float* s = S.data() + static_cast<size_t>(c) * Dz;
      int64_t arg = 0;
      float best = 0.0F;
      for (size_t k = 0; k < K; ++k) {
        const float cosine = dot_f32(s, T.data() + static_cast<size_t>(selected[k]) * Dz, dim);
        if (k == 0 || (!std::isnan(best) && (cosine > best || std::isnan(cosine)))) {
          best = cosine;
          arg = static_cast<int64_t>(k);
        }
      }
      owner[static_cast<size_t>(c)] = arg;
    }
  }
  GroupSplit out;
  std::vector<double> member_contribution;
  for (size_t k = 0; k < K; ++k) {
    std::vector<int64_t> members;
    for (size_t c = 0; c < Cz; ++c) {
      if (owner[c] == static_cast<int64_t>(k)) members.push_back(static_cast<int64_t>(c));
    }
    if (members.empty()) continue;
    GroupResult g;
    g.phrase_id = selected[k];
    g.saliency_f64 = weighted_sum(wv, activations, hw, members);
    g.saliency.resize(hw);
    for (size_t i = 0; i < hw; ++i) g.saliency[i] = static_cast<float>(g.saliency_f64[i]);
    member_contribution.resize(members.size());
    for (size_t i = 0; i < members.size(); ++i) member_contribution[i] = contribution[static_cast<size_t>(members[i])];
    g.share = total > 0.0 ? pairwise_sum(member_contribution.data(), static_cast<int>(members.size())) / total : 0.0;
    g.channels = members;
    std::stable_sort(g.channels.begin(), g.channels.end(), [&](int64_t a, int64_t b) {
      return contribution[static_cast<size_t>(a)] > contribution[static_cast<size_t>(b)];
    });
    out.groups.push_back(std::move(g));
  }
  std::stable_sort(out.groups.begin(), out.groups.end(),
                   [](const GroupResult& a, const GroupResult& b) { return -a.share < -b.share; });
  std::vector<int64_t> rest_members;
  for (size_t c = 0; c < Cz; ++c) {
    if (owner[c] < 0) rest_members.push_back(static_cast<int64_t>(c));
  }
  const std::vector<double> rest = weighted_sum(wv, activations, hw, rest_members);
  out.rest.resize(hw);
  for (size_t i = 0; i < hw; ++i) out.rest[i] = static_cast<float>(rest[i]);
  return out;
}

std::vector<GroupResult> channel_groups(const float* weights_row, const float* activation_row, const float* activations,
                                        int channels, int h, int w, const std::vector<float>& S,
                                        const std::vector<float>& T, int dim, const std::vector<int64_t>& selected,
                                        int max_channels) {
  return channel_groups_split(weights_row, activation_row, activations, channels, h, w, S, T, dim, selected,
                              max_channels)
      .groups;
}

}  // namespace textcam::detail
