/* A stand-in for an ONNX Runtime older than libtextcam's headers: it exports OrtGetApiBase, says it
 * is version 1.10.0 and has no API at any level the headers ask for. */
#include <stddef.h>

typedef struct OrtApi OrtApi;
typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(unsigned int version);
  const char* (*GetVersionString)(void);
} OrtApiBase;

static const OrtApi* get_api(unsigned int version) {
  (void)version;
  return NULL;
}

static const char* get_version(void) { return "1.10.0"; }

static const OrtApiBase base = {get_api, get_version};

const OrtApiBase* OrtGetApiBase(void) { return &base; }
