/* libtextcam from C (textcam.h): explain one image, print the label, the score and the phrases.
 *
 *   textcam_c_example BUNDLE IMAGE
 */
#include <stdio.h>

#include "textcam/textcam.h"

int main(int argc, char** argv) {
  TextcamExplainer* explainer = NULL;
  TextcamExplanation* result = NULL;
  TextcamOptions* options = NULL;
  size_t i;
  int status = 1;
  if (argc != 3) {
    fprintf(stderr, "usage: %s BUNDLE IMAGE\n", argv[0]);
    return 2;
  }
  if (textcam_options_create(&options) != TEXTCAM_OK || textcam_options_set(options, "top_k", "3") != TEXTCAM_OK) {
    fprintf(stderr, "textcam: %s\n", textcam_last_error());
    textcam_options_destroy(options);
    return 1;
  }
  if (textcam_explainer_create(argv[1], options, &explainer) != TEXTCAM_OK) {
    fprintf(stderr, "textcam: %s\n", textcam_last_error());
  } else if (textcam_explain_file(explainer, argv[2], -1, &result) != TEXTCAM_OK) {
    fprintf(stderr, "textcam: %s\n", textcam_last_error());
  } else {
    int height = 0, width = 0;
    textcam_explanation_heatmap(result, &height, &width);
    printf("%s %.4f (heatmap %dx%d)\n", textcam_explanation_label(result), textcam_explanation_score(result), width,
           height);
    for (i = 0; i < textcam_explanation_concept_count(result); ++i) {
      printf("  %s %.4f\n", textcam_explanation_concept_phrase(result, i),
             textcam_explanation_concept_score(result, i));
    }
    status = 0;
  }
  textcam_explanation_destroy(result);
  textcam_explainer_destroy(explainer);
  textcam_options_destroy(options);
  return status;
}
