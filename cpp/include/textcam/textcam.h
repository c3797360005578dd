/* libtextcam's C API: opaque handles, status codes and a per-thread error message; no C++ types
 * cross it, so hosts in C, Go (cgo), Rust (bindgen) and C# (P/Invoke) can call it.
 *
 *   TextcamExplainer* explainer = NULL;
 *   if (textcam_explainer_create("color.textcam", NULL, &explainer) != TEXTCAM_OK) {
 *     fprintf(stderr, "%s\n", textcam_last_error());
 *     return 1;
 *   }
 *   TextcamExplanation* result = NULL;
 *   if (textcam_explain_file(explainer, "cat.jpg", -1, &result) == TEXTCAM_OK) {
 *     printf("%s %.3f\n", textcam_explanation_label(result), textcam_explanation_score(result));
 *     textcam_explanation_destroy(result);
 *   }
 *   textcam_explainer_destroy(explainer);
 *
 * Every function that can fail returns a TextcamStatus; on failure textcam_last_error() holds the
 * one-line message (the same text as the Python runtime's TextcamError) until the calling thread's
 * next failing call. An explainer may be used from many threads at once. Strings and arrays
 * returned by an explanation live as long as the explanation.
 */
#ifndef TEXTCAM_H_
#define TEXTCAM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum TextcamStatus {
  TEXTCAM_OK = 0,
  TEXTCAM_ERROR = 1,                  /* bad input (bundle, image, option value): see textcam_last_error */
  TEXTCAM_ERROR_INVALID_ARGUMENT = 2, /* a NULL handle or pointer, or an unknown option key */
  TEXTCAM_ERROR_INTERNAL = 3          /* out of memory or an unexpected failure */
} TextcamStatus;

typedef struct TextcamOptions TextcamOptions;
typedef struct TextcamExplainer TextcamExplainer;
typedef struct TextcamExplanation TextcamExplanation;

const char* textcam_version(void);
const char* textcam_last_error(void);

/* Options, set by key as text: "backend", "intra_op_threads", "allow_spinning" (true/false),
 * "onnxruntime_library", "tensorrt_precision", "batch_size", "max_pixels", "use_fused", "verify_checksums", and the
 * concept settings "top_k", "candidates", "l1", "l2", "steps", "beta", "group_channels", "center". */
TextcamStatus textcam_options_create(TextcamOptions** out);
TextcamStatus textcam_options_set(TextcamOptions* options, const char* key, const char* value);
void textcam_options_destroy(TextcamOptions* options);

/* options may be NULL (defaults). */
TextcamStatus textcam_explainer_create(const char* bundle_dir, const TextcamOptions* options, TextcamExplainer** out);
void textcam_explainer_destroy(TextcamExplainer* explainer);

/* class_index -1: the predicted class. */
TextcamStatus textcam_explain_file(const TextcamExplainer* explainer, const char* path, int64_t class_index,
                                   TextcamExplanation** out);
/* pixels: height x width x channels bytes (1 gray, 3 RGB, 4 RGBA), rows contiguous. */
TextcamStatus textcam_explain_pixels(const TextcamExplainer* explainer, const uint8_t* pixels, int height, int width,
                                     int channels, int64_t class_index, TextcamExplanation** out);
/* The bundle's self-test; *passed is 1 or 0, *table (free with textcam_string_destroy) the report. */
TextcamStatus textcam_selftest(const TextcamExplainer* explainer, int* passed, char** table);

int64_t textcam_explanation_class_index(const TextcamExplanation* explanation);
const char* textcam_explanation_label(const TextcamExplanation* explanation);
double textcam_explanation_score(const TextcamExplanation* explanation);
const float* textcam_explanation_logits(const TextcamExplanation* explanation, size_t* count);
/* [height x width] row-major in [0, 1], at the original image's resolution. */
const float* textcam_explanation_heatmap(const TextcamExplanation* explanation, int* height, int* width);
size_t textcam_explanation_concept_count(const TextcamExplanation* explanation);
const char* textcam_explanation_concept_phrase(const TextcamExplanation* explanation, size_t index);
int64_t textcam_explanation_concept_id(const TextcamExplanation* explanation, size_t index);
float textcam_explanation_concept_score(const TextcamExplanation* explanation, size_t index);
double textcam_explanation_concept_weight(const TextcamExplanation* explanation, size_t index);
/* The explanation as JSON (as textcam explain --json prints it, without the heatmap); free it with
 * textcam_string_destroy. NULL on failure. */
char* textcam_explanation_json(const TextcamExplanation* explanation);
void textcam_explanation_destroy(TextcamExplanation* explanation);

void textcam_string_destroy(char* text);

#ifdef __cplusplus
}
#endif

#endif /* TEXTCAM_H_ */
