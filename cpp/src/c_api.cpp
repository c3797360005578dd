// The C API (textcam.h) over the C++ API: exceptions become status codes plus a per-thread message.
#include "textcam/textcam.h"

#include <cstring>
#include <new>
#include <string>

#include "textcam/textcam.hpp"

struct TextcamOptions {
  textcam::Options options;
};
struct TextcamExplainer {
  textcam::Explainer explainer;
};
struct TextcamExplanation {
  textcam::Explanation explanation;
};

namespace {

thread_local std::string last_error;

TextcamStatus fail(TextcamStatus status, const std::string& message) {
  last_error = message;
  return status;
}

template <typename Body>
TextcamStatus guarded(Body&& body) {
  try {
    body();
    return TEXTCAM_OK;
  } catch (const textcam::Error& error) {
    return fail(TEXTCAM_ERROR, error.what());
  } catch (const std::bad_alloc&) {
    return fail(TEXTCAM_ERROR_INTERNAL, "out of memory");
  } catch (const std::exception& error) {
    return fail(TEXTCAM_ERROR_INTERNAL, std::string("internal error: ") + error.what());
  } catch (...) {
    return fail(TEXTCAM_ERROR_INTERNAL, "internal error");
  }
}

bool parse_bool(const std::string& key, const std::string& value) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  throw textcam::Error(key + "=" + value + ": expected true or false");
}

long long parse_integer(const std::string& key, const std::string& value) {
  size_t used = 0;
  long long result = 0;
  try {
    result = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size()) throw textcam::Error(key + "=" + value + ": expected an integer");
  return result;
}

int parse_int(const std::string& key, const std::string& value) {
  const long long result = parse_integer(key, value);
  if (result < -2147483647LL || result > 2147483647LL) throw textcam::Error(key + "=" + value + ": out of range");
  return static_cast<int>(result);
}

double parse_number(const std::string& key, const std::string& value) {
  size_t used = 0;
  double result = 0;
  try {
    result = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size()) throw textcam::Error(key + "=" + value + ": expected a number");
  return result;
}

// Sets one option from text; false for an unknown key, textcam::Error for a bad value.
bool set_option(textcam::Options& o, const std::string& k, const std::string& v) {
  auto& c = o.concepts;
  if (k == "backend") {
    o.backend = v;
  } else if (k == "onnxruntime_library") {
    o.onnxruntime_library = v;
  } else if (k == "tensorrt_precision") {
    o.tensorrt_precision = v;
  } else if (k == "beta") {
    c.beta = v;
  } else if (k == "intra_op_threads") {
    o.intra_op_threads = parse_int(k, v);
  } else if (k == "allow_spinning") {
    o.allow_spinning = parse_bool(k, v);
  } else if (k == "batch_size") {
    o.batch_size = parse_int(k, v);
  } else if (k == "max_pixels") {
    o.max_pixels = parse_integer(k, v);
  } else if (k == "use_fused") {
    o.use_fused = parse_bool(k, v);
  } else if (k == "verify_checksums") {
    o.verify_checksums = parse_bool(k, v);
  } else if (k == "top_k") {
    c.top_k = parse_int(k, v);
  } else if (k == "candidates") {
    c.candidates = parse_int(k, v);
  } else if (k == "steps") {
    c.steps = parse_int(k, v);
  } else if (k == "group_channels") {
    c.group_channels = parse_int(k, v);
  } else if (k == "l1") {
    c.l1 = parse_number(k, v);
  } else if (k == "l2") {
    c.l2 = parse_number(k, v);
  } else if (k == "center") {
    c.center = parse_bool(k, v);
  } else {
    return false;
  }
  return true;
}

const textcam::Concept* concept_at(const TextcamExplanation* explanation, size_t index) {
  if (explanation == nullptr || index >= explanation->explanation.concepts.size()) return nullptr;
  return &explanation->explanation.concepts[index];
}

}  // namespace

extern "C" {

const char* textcam_version(void) { return textcam::version(); }

const char* textcam_last_error(void) { return last_error.c_str(); }

TextcamStatus textcam_options_create(TextcamOptions** out) {
  if (out == nullptr) return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, "textcam_options_create: out is NULL");
  return guarded([&] { *out = new TextcamOptions(); });
}

TextcamStatus textcam_options_set(TextcamOptions* options, const char* key, const char* value) {
  if (options == nullptr || key == nullptr || value == nullptr) {
    return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, "textcam_options_set: options, key and value must not be NULL");
  }
  bool known = true;
  const TextcamStatus status = guarded([&] { known = set_option(options->options, key, value); });
  if (!known) return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, std::string("textcam_options_set: no option '") + key + "'");
  return status;
}

void textcam_options_destroy(TextcamOptions* options) { delete options; }

TextcamStatus textcam_explainer_create(const char* bundle_dir, const TextcamOptions* options, TextcamExplainer** out) {
  if (bundle_dir == nullptr || out == nullptr) {
    return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, "textcam_explainer_create: bundle_dir and out must not be NULL");
  }
  *out = nullptr;
  return guarded([&] {
    *out = new TextcamExplainer{textcam::Explainer(bundle_dir, options ? options->options : textcam::Options())};
  });
}

void textcam_explainer_destroy(TextcamExplainer* explainer) { delete explainer; }

TextcamStatus textcam_explain_file(const TextcamExplainer* explainer, const char* path, int64_t class_index,
                                   TextcamExplanation** out) {
  if (explainer == nullptr || path == nullptr || out == nullptr) {
    return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, "textcam_explain_file: explainer, path and out must not be NULL");
  }
  *out = nullptr;
  return guarded([&] { *out = new TextcamExplanation{explainer->explainer.explain_file(path, class_index)}; });
}

TextcamStatus textcam_explain_pixels(const TextcamExplainer* explainer, const uint8_t* pixels, int height, int width,
                                     int channels, int64_t class_index, TextcamExplanation** out) {
  if (explainer == nullptr || pixels == nullptr || out == nullptr) {
    return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, "textcam_explain_pixels: explainer, pixels and out must not be NULL");
  }
  *out = nullptr;
  return guarded([&] {
    const textcam::ImageView view{pixels, height, width, channels};
    *out = new TextcamExplanation{explainer->explainer.explain_image(view, class_index)};
  });
}

TextcamStatus textcam_selftest(const TextcamExplainer* explainer, int* passed, char** table) {
  if (explainer == nullptr || passed == nullptr) {
    return fail(TEXTCAM_ERROR_INVALID_ARGUMENT, "textcam_selftest: explainer and passed must not be NULL");
  }
  return guarded([&] {
    const auto report = explainer->explainer.selftest();
    *passed = report.passed() ? 1 : 0;
    if (table != nullptr) {
      const std::string text = report.table();
      *table = new char[text.size() + 1];
      std::memcpy(*table, text.c_str(), text.size() + 1);
    }
  });
}

int64_t textcam_explanation_class_index(const TextcamExplanation* explanation) {
  return explanation ? explanation->explanation.class_index : -1;
}

const char* textcam_explanation_label(const TextcamExplanation* explanation) {
  return explanation ? explanation->explanation.label.c_str() : nullptr;
}

double textcam_explanation_score(const TextcamExplanation* explanation) {
  return explanation ? explanation->explanation.score : 0.0;
}

const float* textcam_explanation_logits(const TextcamExplanation* explanation, size_t* count) {
  if (explanation == nullptr) return nullptr;
  if (count != nullptr) *count = explanation->explanation.logits.size();
  return explanation->explanation.logits.data();
}

const float* textcam_explanation_heatmap(const TextcamExplanation* explanation, int* height, int* width) {
  if (explanation == nullptr) return nullptr;
  if (height != nullptr) *height = explanation->explanation.height;
  if (width != nullptr) *width = explanation->explanation.width;
  return explanation->explanation.heatmap.data();
}

size_t textcam_explanation_concept_count(const TextcamExplanation* explanation) {
  return explanation ? explanation->explanation.concepts.size() : 0;
}

const char* textcam_explanation_concept_phrase(const TextcamExplanation* explanation, size_t index) {
  const auto* found = concept_at(explanation, index);
  return found ? found->phrase.c_str() : nullptr;
}

int64_t textcam_explanation_concept_id(const TextcamExplanation* explanation, size_t index) {
  const auto* found = concept_at(explanation, index);
  return found ? found->phrase_id : -1;
}

float textcam_explanation_concept_score(const TextcamExplanation* explanation, size_t index) {
  const auto* found = concept_at(explanation, index);
  return found ? found->score : 0.0F;
}

double textcam_explanation_concept_weight(const TextcamExplanation* explanation, size_t index) {
  const auto* found = concept_at(explanation, index);
  return found ? found->weight : 0.0;
}

char* textcam_explanation_json(const TextcamExplanation* explanation) {
  if (explanation == nullptr) return nullptr;
  try {
    const std::string text = textcam::to_json(explanation->explanation);
    char* copy = new char[text.size() + 1];
    std::memcpy(copy, text.c_str(), text.size() + 1);
    return copy;
  } catch (...) {
    last_error = "textcam_explanation_json: out of memory";
    return nullptr;
  }
}

void textcam_explanation_destroy(TextcamExplanation* explanation) { delete explanation; }

void textcam_string_destroy(char* text) { delete[] text; }

}  // extern "C"
